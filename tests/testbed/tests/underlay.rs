//! The testbed's underlay: the router forwards node, internet and API traffic but drops
//! the pod range, and its captures show what crossed it. Needs root.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use wgmesh_testbed::addressing::{API_IP, API_PORT};
use wgmesh_testbed::underlay::{INTERNET_LINK, node_link};
use wgmesh_testbed::{Exec, Testbed};
use wgmesh_testkit::{require_root, wait_until};

#[test]
fn the_router_drops_packets_from_or_to_the_pod_range_and_counts_them() {
    require_root!();
    let tb = Testbed::builder().nodes(2).build();
    let target = tb.add_pod(1, "target");
    let router = tb.router();
    let (n0, n1) = (tb.node(0), tb.node(1));

    // Pod-addressed packets leaking from node0 onto the underlay (hand-made frames: the
    // node's own egress guard would stop routed ones): one to a pod on node1, one from a
    // pod address to node1 itself. The router drops and counts both; node1's link sees
    // neither.
    let before = router.pod_range_drops();
    let ((), on_node1_link) = router.capture_on(&[&node_link(1)], "udp port 9999", || {
        let to_pod = SocketAddrV4::new(target.ip(), 9999);
        n0.send_raw_udp(
            SocketAddrV4::new(n0.underlay_ip(), 4000),
            to_pod,
            b"to a pod",
        );
        let from_pod = SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 5), 4000);
        n0.send_raw_udp(
            from_pod,
            SocketAddrV4::new(n1.underlay_ip(), 9999),
            b"from a pod",
        );
        wait_until(
            Duration::from_secs(5),
            "the router to count two drops",
            || (router.pod_range_drops() >= before + 2).then_some(()),
        );
    });
    assert!(
        on_node1_link.is_empty(),
        "the router forwarded pod-range packets:\n{on_node1_link}"
    );

    // From the internet, pods are unreachable too.
    let internet = tb.internet();
    let before = router.pod_range_drops();
    let to_pod = internet.exec(&["ping", "-c", "1", "-W", "1", &target.ip().to_string()]);
    assert!(
        !to_pod.status.success(),
        "the internet reached a pod address"
    );
    assert!(router.pod_range_drops() > before);

    // A pod-range source from the internet is dropped as well...
    internet.exec_ok(&["ip", "addr", "add", "10.244.255.254/32", "dev", "lo"]);
    let before = router.pod_range_drops();
    let n1_ip = n1.underlay_ip().to_string();
    let from_pod_range =
        internet.exec(&["ping", "-c", "1", "-W", "1", "-I", "10.244.255.254", &n1_ip]);
    assert!(
        !from_pod_range.status.success(),
        "a pod-range source crossed the router"
    );
    assert!(router.pod_range_drops() > before);
    internet.exec_ok(&["ip", "addr", "delete", "10.244.255.254/32", "dev", "lo"]);

    // ...while the same path between underlay addresses works.
    let plain = internet.exec(&["ping", "-c", "1", "-W", "1", &n1_ip]);
    assert!(plain.status.success(), "the internet cannot reach node1");
}

#[test]
fn the_router_forwards_node_to_node_node_to_internet_and_node_to_api_traffic() {
    require_root!();
    let tb = Testbed::builder().nodes(3).build();
    for a in tb.nodes() {
        for b in tb.nodes().filter(|b| b.index() != a.index()) {
            assert!(
                a.ping(b.underlay_ip()),
                "{} cannot reach {}",
                a.name(),
                b.name()
            );
        }
        assert!(
            a.ping(tb.internet().ip()),
            "{} cannot reach the internet",
            a.name()
        );
    }

    // The internet sees a node's own underlay address.
    let whoami = tb.internet().start_whoami(8080);
    for node in tb.nodes() {
        let seen = node.exec_ok(&["curl", "-sS", "--max-time", "5", &whoami.url()]);
        assert_eq!(seen.trim(), node.underlay_ip().to_string());
    }

    // The API server answers at 198.51.100.10:6443 from inside a node (any HTTP status:
    // TCP and TLS made it through the router and the relay).
    let api = format!("https://{API_IP}:{API_PORT}/version");
    let status = tb.node(0).exec_ok(&[
        "curl",
        "-sk",
        "--max-time",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &api,
    ]);
    assert!(
        status.starts_with('2') || status.starts_with('4'),
        "{status}"
    );
    assert_eq!(
        tb.router().pod_range_drops(),
        0,
        "no pod-range packet was sent"
    );
}

#[test]
fn a_router_capture_shows_what_crossed_between_node_addresses() {
    require_root!();
    let tb = Testbed::builder().nodes(2).build();
    let (n0, n1) = (tb.node(0), tb.node(1));
    let probe = "wgmesh-testbed-plaintext-probe";
    let ((), capture) = tb.router().capture("udp port 9999 or icmp", || {
        assert!(n0.ping(n1.underlay_ip()));
        let sent = n0.exec(&[
            "bash",
            "-c",
            &format!("echo {probe} > /dev/udp/{}/9999", n1.underlay_ip()),
        ]);
        assert!(sent.status.success(), "{sent:?}");
    });
    let lines = capture.lines();
    let request = format!(
        "IP {} > {}: ICMP echo request",
        n0.underlay_ip(),
        n1.underlay_ip()
    );
    for link in [node_link(0), node_link(1)] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{link}: {request}"))),
            "no echo request on {link}:\n{capture}"
        );
    }
    assert!(capture.contains_bytes(probe.as_bytes()), "{capture}");
    assert!(
        lines
            .iter()
            .all(|l| !l.contains("10.244.") && !l.contains(".9: UDP")),
        "pod addresses or the end marker in:\n{capture}"
    );

    // Only what matches the filter, on the chosen links.
    let ((), internet_only) = tb.router().capture_on(&[INTERNET_LINK], "icmp", || {
        assert!(n0.ping(tb.internet().ip()))
    });
    assert!(
        internet_only
            .lines()
            .iter()
            .all(|l| l.starts_with("internet: IP ")),
        "{internet_only}"
    );
    assert_eq!(
        internet_only.len(),
        2,
        "request and reply:\n{internet_only}"
    );
}
