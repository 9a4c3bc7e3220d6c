//! The multi-cloud testbed itself (`wgmesh_testbed::multicloud`): its NATs, its
//! internet and its Node objects behave like the real ones they stand for, and its
//! connectivity matrix tells working pod pairs from broken ones. These hold whatever
//! the product does across sites; the product's own tests on this topology build on
//! them. Needs root.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use wgmesh_testbed::addressing::INTERNET_IP;
use wgmesh_testbed::connectivity::ordered_pairs;
use wgmesh_testbed::multicloud::{MultiCloud, NatKind, REGION_LABEL};
use wgmesh_testbed::probe::{source_seen, udp_socket};
use wgmesh_testbed::{Exec, connectivity_matrix, wait_for_connectivity};
use wgmesh_testkit::{require_root, run, wait_until};

const COUNTER_WAIT: Duration = Duration::from_secs(5);

fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

/// A UDP socket on node `node` at `port`.
fn node_socket(mc: &MultiCloud, node: &str, port: u16) -> UdpSocket {
    udp_socket(
        &mc.node(node).host_netns_path(),
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
    )
}

/// A UDP socket on the internet host at `port` (0: any).
fn internet_socket(mc: &MultiCloud, port: u16) -> UdpSocket {
    udp_socket(
        &mc.internet().host_netns_path(),
        SocketAddrV4::new(INTERNET_IP, port),
    )
}

/// What each of the internet host's `ports` sees as the source of a datagram from
/// `from`.
fn seen_on_the_internet(mc: &MultiCloud, from: &UdpSocket, ports: &[u16]) -> Vec<SocketAddr> {
    ports
        .iter()
        .map(|&port| {
            let receiver = internet_socket(mc, port);
            source_seen(from, SocketAddr::from((INTERNET_IP, port)), &receiver)
        })
        .collect()
}

/// When process `pid` started (field 22 of /proc/<pid>/stat): tells a process from a
/// later one that got its pid.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; it ends at the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19).map(str::to_string)
}

#[test]
fn every_node_reaches_the_api_server_through_its_nat_and_is_registered_with_its_site_and_addresses()
{
    require_root!();
    let mc = MultiCloud::build();
    // build() waited for every agent to publish its annotations: each reached the API
    // server at its public address through its gateway. kubectl inside each node shows
    // it once more, with the agents' own kubeconfig.
    let kubeconfig = mc.node_kubeconfig().to_string_lossy().into_owned();
    let home = format!("HOME={}", mc.dir().display());
    for node in mc.nodes() {
        let out = node.exec_ok(&[
            "env",
            &home,
            "kubectl",
            "--kubeconfig",
            &kubeconfig,
            "get",
            "node",
            node.name(),
            "-o",
            "name",
        ]);
        assert_eq!(out.trim(), format!("node/{}", node.name()));
    }

    let objects = mc.node_objects();
    let names: Vec<&str> = objects.keys().map(String::as_str).collect();
    assert_eq!(names, ["a1", "a2", "b1", "h1", "h2"]);
    let expected = [
        (
            "a1",
            "cloud-a",
            ip(172, 31, 1, 2),
            Some(ip(203, 0, 113, 101)),
            "10.244.0.0/24",
        ),
        (
            "a2",
            "cloud-a",
            ip(172, 31, 1, 3),
            Some(ip(203, 0, 113, 102)),
            "10.244.1.0/24",
        ),
        (
            "b1",
            "cloud-b",
            ip(172, 31, 2, 2),
            Some(ip(203, 0, 113, 111)),
            "10.244.2.0/24",
        ),
        ("h1", "home1", ip(192, 168, 1, 2), None, "10.244.3.0/24"),
        ("h2", "home2", ip(192, 168, 2, 2), None, "10.244.4.0/24"),
    ];
    for (name, region, internal, external, cidr) in expected {
        let node = &objects[name];
        let labels = node.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(REGION_LABEL).map(String::as_str),
            Some(region),
            "{name}"
        );
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.clone())
            .unwrap_or_default();
        let of = |kind: &str| -> Vec<String> {
            addresses
                .iter()
                .filter(|a| a.type_ == kind)
                .map(|a| a.address.clone())
                .collect()
        };
        assert_eq!(of("InternalIP"), [internal.to_string()], "{name}");
        assert_eq!(
            of("ExternalIP"),
            external
                .map(|e| e.to_string())
                .into_iter()
                .collect::<Vec<_>>(),
            "{name}"
        );
        let spec = node.spec.clone().unwrap_or_default();
        assert_eq!(spec.pod_cidrs, Some(vec![cidr.to_string()]), "{name}");
        assert_eq!(mc.node(name).external_ip(), external);
        assert_eq!(mc.region_of(name), region);
    }
}

#[test]
fn a_cloud_gateway_maps_each_node_to_its_public_address_both_ways_and_does_not_hairpin() {
    require_root!();
    let mc = MultiCloud::builder().without_agents().build();

    // Outbound: each cloud node appears at its own public address, with its own port.
    for (node, public) in [
        ("a1", ip(203, 0, 113, 101)),
        ("a2", ip(203, 0, 113, 102)),
        ("b1", ip(203, 0, 113, 111)),
    ] {
        let socket = node_socket(&mc, node, 40000);
        let seen = seen_on_the_internet(&mc, &socket, &[5000]);
        assert_eq!(seen, [SocketAddr::from((public, 40000))], "{node}");
        assert_eq!(mc.public_ip(node), public);
    }

    // Inbound, unasked: the internet reaches a2 at its public address, on any port,
    // and a2 sees the internet host's own address.
    let from_internet = internet_socket(&mc, 0);
    let a2 = node_socket(&mc, "a2", 6000);
    let seen = source_seen(
        &from_internet,
        SocketAddr::from((ip(203, 0, 113, 102), 6000)),
        &a2,
    );
    assert_eq!(seen, from_internet.local_addr().unwrap());
    assert!(
        mc.internet().ping(ip(203, 0, 113, 111)),
        "the internet cannot ping b1"
    );

    // No hairpin: a1 cannot reach a2's public address from inside the VPC; gw-a drops
    // it. On the LAN, a1 reaches a2 at its private address, and that traffic never
    // leaves cloud-a's LAN.
    let gw_a = mc.gateway("gw-a");
    let hairpins = gw_a.hairpin_drops();
    let a1 = mc.node("a1");
    let mut links = mc.lan_links("cloud-a");
    links.push("gw-a/wan".to_string());
    let ((to_public, to_private), capture) = mc.capture(&links, "icmp", || {
        (
            a1.ping_once(ip(203, 0, 113, 102), Duration::from_secs(1)),
            a1.ping(ip(172, 31, 1, 3)),
        )
    });
    assert!(
        !to_public,
        "gw-a hairpinned a1's packet to a2's public address"
    );
    assert!(to_private, "a1 cannot reach a2 on cloud-a's LAN");
    wait_until(COUNTER_WAIT, "gw-a to count the hairpin drop", || {
        (gw_a.hairpin_drops() > hairpins).then_some(())
    });
    assert_eq!(links, ["gw-a/a1", "gw-a/a2", "gw-a/wan"]);
    let lines = capture.lines();
    for port in ["gw-a/a1", "gw-a/a2"] {
        for kind in ["echo request", "echo reply"] {
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with(port) && l.contains(kind)),
                "no ICMP {kind} on {port}:\n{capture}"
            );
        }
    }
    assert!(
        !lines.iter().any(|l| l.starts_with("gw-a/wan")),
        "traffic inside cloud-a left its LAN:\n{capture}"
    );
}

#[test]
fn a_port_preserving_home_nat_keeps_the_source_port_for_every_destination_and_lets_in_only_replies()
{
    require_root!();
    let mc = MultiCloud::builder().without_agents().build();
    let gw = mc.gateway("gw-h1");
    assert_eq!(gw.nat(), NatKind::PortPreserving);
    let h1 = node_socket(&mc, "h1", 40001);
    let seen = seen_on_the_internet(&mc, &h1, &[5001, 5002, 5003]);
    assert_eq!(
        seen,
        [SocketAddr::from((ip(203, 0, 113, 121), 40001)); 3],
        "h1 behind its port-preserving NAT"
    );
    assert_eq!(mc.public_ip("h1"), ip(203, 0, 113, 121));

    // The mapping is no port forward: a datagram from an address h1 never sent to is
    // dropped at the gateway...
    let dropped = gw.unsolicited_drops();
    let stranger = internet_socket(&mc, 0);
    stranger
        .send_to(b"unasked", (ip(203, 0, 113, 121), 40001))
        .unwrap();
    wait_until(COUNTER_WAIT, "gw-h1 to drop the unasked datagram", || {
        (gw.unsolicited_drops() > dropped).then_some(())
    });
    // ...while a reply from a destination h1 did send to gets through.
    let destination = internet_socket(&mc, 5001);
    let seen = source_seen(
        &destination,
        SocketAddr::from((ip(203, 0, 113, 121), 40001)),
        &h1,
    );
    assert_eq!(seen, SocketAddr::from((INTERNET_IP, 5001)));
}

#[test]
fn a_symmetric_home_nat_gives_each_destination_its_own_port_until_it_is_switched_to_port_preserving()
 {
    require_root!();
    let mc = MultiCloud::builder().without_agents().build();
    let gw = mc.gateway("gw-h2");
    let h2 = node_socket(&mc, "h2", 40002);
    let destinations = [5001, 5002, 5003];

    // Fully random ports: three destinations see one port about once in 4 billion runs.
    let distinct_ports = |seen: &[SocketAddr]| -> BTreeSet<u16> {
        for s in seen {
            assert_eq!(
                s.ip(),
                ip(203, 0, 113, 131),
                "h2's public address: {seen:?}"
            );
        }
        seen.iter().map(SocketAddr::port).collect()
    };
    let seen = seen_on_the_internet(&mc, &h2, &destinations);
    println!("symmetric NAT: h2:40002 seen as {seen:?}");
    assert_eq!(gw.nat(), NatKind::Symmetric);
    assert!(
        distinct_ports(&seen).len() >= 2,
        "one port for every destination: {seen:?}"
    );

    // Switched: the same flows (conntrack flushed) keep h2's port for every destination.
    gw.set_nat(NatKind::PortPreserving);
    assert_eq!(gw.nat(), NatKind::PortPreserving);
    let seen = seen_on_the_internet(&mc, &h2, &destinations);
    assert_eq!(
        seen,
        [SocketAddr::from((ip(203, 0, 113, 131), 40002)); 3],
        "port-preserving after the switch"
    );

    // And back.
    gw.set_nat(NatKind::Symmetric);
    let seen = seen_on_the_internet(&mc, &h2, &destinations);
    println!("symmetric again: h2:40002 seen as {seen:?}");
    assert!(distinct_ports(&seen).len() >= 2, "{seen:?}");
}

#[test]
fn a_home_gateway_readdressed_by_its_isp_sends_from_its_new_address_with_its_mappings_gone() {
    require_root!();
    let mc = MultiCloud::builder().without_agents().build();
    let gw = mc.gateway("gw-h1");
    let h1 = node_socket(&mc, "h1", 40003);
    let seen = seen_on_the_internet(&mc, &h1, &[5004]);
    assert_eq!(seen, [SocketAddr::from((ip(203, 0, 113, 121), 40003))]);
    assert!(
        gw.conntrack_count() > 0,
        "the mapping is in gw-h1's conntrack table"
    );

    gw.readdress(ip(203, 0, 113, 122));
    assert_eq!(gw.conntrack_count(), 0, "the restart flushed the mappings");
    assert_eq!(gw.wan_ip(), ip(203, 0, 113, 122));
    assert_eq!(mc.public_ip("h1"), ip(203, 0, 113, 122));
    let addresses = gw.exec_ok(&["ip", "-4", "-o", "addr", "show", "dev", "wan"]);
    assert!(
        addresses.contains("203.0.113.122/29") && !addresses.contains("203.0.113.121"),
        "{addresses}"
    );
    // The same socket, to the same destination: a new mapping, from the new address.
    let seen = seen_on_the_internet(&mc, &h1, &[5004]);
    assert_eq!(seen, [SocketAddr::from((ip(203, 0, 113, 122), 40003))]);
}

#[test]
fn private_and_pod_addresses_never_cross_the_internet_router_and_are_counted() {
    require_root!();
    let mc = MultiCloud::builder().without_agents().build();
    let router = mc.internet_router();
    let internet = mc.internet();
    let (private, pods) = (router.private_drops(), router.pod_range_drops());

    let ((), capture) = mc.capture(&mc.lan_links("cloud-b"), "icmp", || {
        // A node sending to another site's private address: its gateway forwards it,
        // the internet drops it.
        assert!(
            !mc.node("a1")
                .ping_once(ip(172, 31, 2, 2), Duration::from_secs(1))
        );
        wait_until(COUNTER_WAIT, "a drop of a private destination", || {
            (router.private_drops() > private).then_some(())
        });
        // A private source, and a pod-range source (counted twice), from the internet.
        for source in ["192.168.77.1", "10.244.255.254"] {
            internet.exec_ok(&["ip", "addr", "add", &format!("{source}/32"), "dev", "lo"]);
            let sent =
                internet.exec(&["ping", "-c", "1", "-W", "1", "-I", source, "203.0.113.111"]);
            assert!(!sent.status.success(), "{source} crossed the internet");
        }
    });
    wait_until(
        COUNTER_WAIT,
        "three private drops, one of the pod range",
        || (router.private_drops() >= private + 3 && router.pod_range_drops() > pods).then_some(()),
    );
    assert_eq!(router.pod_range_drops(), pods + 1);
    assert!(
        capture.is_empty(),
        "private traffic reached cloud-b:\n{capture}"
    );
    // The same path with public addresses works.
    assert!(internet.ping(ip(203, 0, 113, 111)));
    assert!(mc.node("a1").ping(ip(203, 0, 113, 111)));
}

#[test]
fn the_connectivity_matrix_has_the_twenty_ordered_pod_pairs_and_marks_the_broken_ones() {
    require_root!();
    let mc = MultiCloud::build();
    let pods = mc.add_pod_per_node("p");
    assert_eq!(ordered_pairs(&pods).len(), 20);
    let names: Vec<&str> = pods.iter().map(|p| p.node_name()).collect();
    assert_eq!(names, ["a1", "a2", "b1", "h1", "h2"]);

    // wait_for_connectivity: a1 and a2 reach each other on their LAN, whatever the
    // product does across sites.
    assert!(
        wait_for_connectivity(&pods[..2], Duration::from_secs(30)).is_ok(),
        "a1 and a2 do not reach each other"
    );

    // h2 loses its internet link: every pair with h2 breaks.
    let gw_h2 = mc.gateway("gw-h2");
    gw_h2.exec_ok(&["ip", "link", "set", "wan", "down"]);
    let matrix = connectivity_matrix(&pods);
    print!("{matrix}");
    assert_eq!(matrix.len(), 20);
    assert_eq!(matrix.nodes(), ["a1", "a2", "b1", "h1", "h2"]);
    assert_eq!(matrix.get("a1", "a2"), Some(true), "{matrix}");
    assert_eq!(matrix.get("a2", "a1"), Some(true), "{matrix}");
    for other in ["a1", "a2", "b1", "h1"] {
        assert_eq!(matrix.get(other, "h2"), Some(false), "{matrix}");
        assert_eq!(matrix.get("h2", other), Some(false), "{matrix}");
    }
    assert!(matrix.lines().contains(&"a1→a2 ok".to_string()));
    assert!(matrix.lines().contains(&"h2→a1 FAILED".to_string()));
    assert!(!matrix.all_ok());
    let stuck = wait_for_connectivity(&pods[3..], Duration::from_secs(2))
        .expect_err("h2 has no internet link");
    assert_eq!(stuck.len(), 2);
    assert_eq!(stuck.get("h2", "h1"), Some(false));
    assert_eq!(stuck.get("h1", "h2"), Some(false));
    gw_h2.exec_ok(&["ip", "link", "set", "wan", "up"]);
}

#[test]
fn a_multicloud_testbed_is_torn_down_when_its_test_panics_and_keeps_the_logs() {
    require_root!();
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::panic::catch_unwind(|| {
        let mc = MultiCloud::build();
        let _pod = mc.add_pod("h2", "bystander");
        let pids: Vec<(u32, String)> = mc
            .nodes()
            .flat_map(|n| [Some(n.holder_pid()), n.agent_pid()])
            .flatten()
            .map(|pid| (pid, start_time(pid).expect("a running process")))
            .collect();
        tx.send((
            mc.run_id().to_string(),
            mc.netns_names(),
            pids,
            mc.dir().to_path_buf(),
        ))
        .expect("the test thread listens");
        panic!("a test failing while its testbed runs");
    });
    assert!(outcome.is_err());
    let (run_id, netns, pids, dir) = rx.recv().expect("the footprint was sent");
    assert_eq!(
        netns.len(),
        12,
        "router, internet, api, 4 gateways, 5 nodes: {netns:?}"
    );
    assert_eq!(pids.len(), 10, "a holder and an agent per node");
    let listed = run("ip", ["netns", "list"]);
    assert!(
        !listed.contains(&run_id),
        "{run_id} left namespaces:\n{listed}"
    );
    for (pid, started) in pids {
        assert_ne!(
            start_time(pid),
            Some(started),
            "process {pid} of the testbed is still running"
        );
    }
    let log = std::fs::read_to_string(dir.join("h2-agent.log"))
        .expect("the agents' logs are kept after a panic");
    assert!(log.contains("starting the agent"), "{log}");
    std::fs::remove_dir_all(&dir).expect("remove the kept logs");
}
