//! IPv6 as a first-class citizen, end to end (issue #15): the testbed in its three
//! layouts beyond IPv4 — dual-stack pods over an IPv4 underlay, dual-stack pods over an
//! IPv6 underlay, IPv6-only pods over an IPv6 underlay — with the real agents, routes,
//! nftables and WireGuard device. Each layout runs two testbeds: one for what pods see
//! (each other in every family with their own addresses, the internet masqueraded to
//! their node, only WireGuard on the underlay, the MTU), one for what happens around it
//! (wgmesh0 gone: nothing of either family leaks; a node joining). Needs root.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use wgmesh_testbed::addressing::{WIREGUARD_PORT, join};
use wgmesh_testbed::capture::UNDERLAY_FILTER;
use wgmesh_testbed::{Capture, Exec, Family, Layout, Pod, Testbed, transfer};
use wgmesh_testkit::{require_root, wait_until};

const WAIT: Duration = Duration::from_secs(20);
const MB: usize = 1024 * 1024;
/// How long one probe of a timed change waits for its answer.
const PROBE: Duration = Duration::from_millis(200);
/// A new node's join, from its Node object to pod traffic both ways with every pod in
/// every family (issue #15 asks for 2 s; see the FIGURE lines for what it takes).
const JOIN: Duration = Duration::from_secs(2);

/// `nodes` nodes of `layout` with `per_node` pods each: pods[node][k].
fn cluster(layout: Layout, nodes: usize, per_node: usize) -> (Testbed, Vec<Vec<Pod>>) {
    let tb = Testbed::builder().nodes(nodes).layout(layout).build();
    let pods = (0..nodes)
        .map(|n| {
            (0..per_node)
                .map(|k| tb.add_pod(n, &format!("p{n}{k}")))
                .collect()
        })
        .collect();
    (tb, pods)
}

/// `pod`'s address of `family` (the layout gives every pod one).
fn ip(pod: &Pod, family: Family) -> IpAddr {
    pod.ip_of(family)
        .unwrap_or_else(|| panic!("pod {} has no {family} address", pod.name()))
}

/// The nodes' InternalIPs: the only addresses the underlay may carry.
fn node_addresses(tb: &Testbed) -> Vec<IpAddr> {
    tb.nodes().flat_map(|n| n.underlay_ips()).collect()
}

/// Every packet of a router capture is WireGuard between two node addresses (or an ICMP
/// error about such a datagram), and none shows a pod address of either family; the
/// router dropped nothing from or to a pod range.
fn assert_only_wireguard_between_nodes(tb: &Testbed, capture: &Capture) {
    let nodes = node_addresses(tb);
    let other = capture.packets_other_than_wireguard_between(&nodes, WIREGUARD_PORT);
    assert!(
        other.is_empty(),
        "{} of {} packets on the underlay are not WireGuard between node addresses {nodes:?}, e.g. {}",
        other.len(),
        capture.len(),
        other[0]
    );
    tb.router().assert_no_pod_traffic_in_clear(&[capture]);
}

/// Pods reach each other on one node and across nodes in every family of the layout,
/// and TCP keeps the sender pod's own address (`pods`: two on node0, two on node1).
fn assert_pods_reach_each_other_keeping_their_addresses(tb: &Testbed, pods: &[Vec<Pod>]) {
    let all: Vec<&Pod> = pods.iter().flatten().collect();
    for &family in tb.layout().pod_families() {
        for a in &all {
            for b in &all {
                if a.name() != b.name() {
                    assert!(
                        a.ping(ip(b, family)),
                        "{family}: {} cannot ping {} at {}\n{}",
                        a.name(),
                        b.name(),
                        ip(b, family),
                        tb.diagnostics()
                    );
                }
            }
        }
        let cases = [
            (&pods[0][0], &pods[0][1]),
            (&pods[0][0], &pods[1][0]),
            (&pods[1][1], &pods[0][1]),
        ];
        for (i, (from, to)) in cases.into_iter().enumerate() {
            let port = 7000 + i as u16 + if family == Family::Ipv6 { 100 } else { 0 };
            let t = transfer::tcp(
                &to.host_netns_path(),
                SocketAddr::new(ip(to, family), port),
                &from.host_netns_path(),
                MB,
            );
            assert!(
                t.intact,
                "{family}: {} -> {}: data corrupted",
                from.name(),
                to.name()
            );
            assert_eq!(
                t.seen_source.ip(),
                ip(from, family),
                "{family}: {} -> {}: the receiver does not see the sender pod's own address",
                from.name(),
                to.name()
            );
        }
    }
}

/// Pods reach the internet host (in the underlay's family, the only one a node has an
/// address of) masqueraded to their node's address.
fn assert_egress_is_masqueraded_to_the_node(tb: &Testbed, pods: &[Vec<Pod>]) {
    let family = tb.layout().underlay();
    let whoami = tb
        .internet()
        .start_whoami_at(tb.layout().internet_ip(), 8080);
    for (n, node_pods) in pods.iter().enumerate() {
        let pod = &node_pods[0];
        // -g: the brackets of an IPv6 URL are not a glob.
        let seen = pod.exec_ok(&["curl", "-g", "-sS", "--max-time", "5", &whoami.url()]);
        assert_eq!(
            seen.trim(),
            tb.node(n).internal_ip().to_string(),
            "{family}: pod {} ({}) is not masqueraded to node{n}'s address",
            pod.name(),
            join(pod.ips())
        );
    }
}

/// wgmesh0, the bridge, the conflist and pods have the underlay's MTU minus the
/// tunnel's overhead over that family: 80 bytes over IPv6 (40 + 8 + 32), 60 over IPv4.
fn assert_mtu_follows_the_underlay_family(tb: &Testbed, pods: &[Vec<Pod>]) {
    let mtu_in = |out: String| -> u32 {
        let words: Vec<&str> = out.split_whitespace().collect();
        let i = words
            .iter()
            .position(|w| *w == "mtu")
            .expect("mtu in `ip link` output");
        words[i + 1].parse().unwrap()
    };
    let overhead = match tb.layout().underlay() {
        Family::Ipv4 => 60,
        Family::Ipv6 => 80,
    };
    for (n, node) in tb.nodes().enumerate() {
        let mtu = |dev: &str| mtu_in(node.exec_ok(&["ip", "-o", "link", "show", "dev", dev]));
        let want = mtu("eth0") - overhead;
        assert_eq!(mtu("wgmesh0"), want, "{}: wgmesh0", node.name());
        assert_eq!(mtu("wgmesh-br"), want, "{}: the bridge", node.name());
        let conflist: serde_json::Value =
            serde_json::from_str(&node.conflist().expect("a conflist")).unwrap();
        assert_eq!(
            conflist["plugins"][0]["mtu"],
            want,
            "{}: conflist",
            node.name()
        );
        let subnets: Vec<String> = node.pod_cidrs().iter().map(|c| c.to_string()).collect();
        assert_eq!(
            conflist["plugins"][0]["subnets"],
            serde_json::json!(subnets),
            "{}: the conflist's subnets are the node's pod CIDRs",
            node.name()
        );
        let pod = &pods[n][0];
        assert_eq!(
            mtu_in(pod.exec_ok(&["ip", "-o", "link", "show", "dev", "eth0"])),
            want,
            "pod {}",
            pod.name()
        );
    }
}

/// Pods in every family, egress, the underlay, the MTU: one testbed of `layout`.
fn pods_talk_in_every_family_and_only_wireguard_crosses_the_underlay(layout: Layout) {
    let (tb, pods) = cluster(layout, 2, 2);
    assert_eq!(tb.layout(), layout);
    let ((), capture) = tb.router().capture(UNDERLAY_FILTER, || {
        assert_pods_reach_each_other_keeping_their_addresses(&tb, &pods);
    });
    assert!(
        capture.len() > 100,
        "MB transfers across nodes crossed the router: {} packets",
        capture.len()
    );
    assert_only_wireguard_between_nodes(&tb, &capture);
    assert!(
        !capture.contains_bytes(&transfer::payload(MB)[MB / 2..MB / 2 + 64]),
        "a transferred payload crossed the underlay in clear"
    );
    assert_egress_is_masqueraded_to_the_node(&tb, &pods);
    assert_mtu_follows_the_underlay_family(&tb, &pods);
}

/// Takes node0's wgmesh0 away (holding the name, so the agent cannot put it back):
/// nothing of either family leaves node0 or enters it in clear, same-node traffic goes
/// on; then lets the agent restore it. `pods`: two on node0, one on node1.
fn assert_nothing_leaks_without_wgmesh0(tb: &Testbed, pods: &[Vec<Pod>]) {
    let node0 = tb.node(0);
    let families = tb.layout().pod_families();
    let (local, neighbour, remote) = (&pods[0][0], &pods[0][1], &pods[1][0]);
    for &family in families {
        assert!(local.ping(ip(remote, family)), "{family} before");
    }
    let ((), capture) = tb.router().capture(UNDERLAY_FILTER, || {
        // Renamed away rather than deleted, so the name is free at once: a deletion
        // returns only once the device's last references are gone (tens of
        // milliseconds with IPv6 routes on it), and the agent puts its device back
        // before that. One `ip` process: the requests go back to back.
        let mut tries = Vec::new();
        let held = (0..20).any(|_| {
            let out = node0.sh(
                "printf 'link set wgmesh0 down\\nlink set wgmesh0 name wgmesh0-gone\\n\
                 link add wgmesh0 type bridge\\nlink del wgmesh0-gone\\n' | ip -batch -",
            );
            tries.push(String::from_utf8_lossy(&out.stderr).into_owned());
            out.status.success()
        });
        assert!(held, "could not take wgmesh0 over: {tries:?}");
        assert!(
            !node0
                .exec(&["ip", "link", "show", "wgmesh0-gone"])
                .status
                .success(),
            "the WireGuard device is gone"
        );
        for &family in families {
            assert!(
                !local.ping(ip(remote, family)),
                "{family}: cross-node traffic flowed without the WireGuard device"
            );
            assert!(
                !remote.ping(ip(local, family)),
                "{family}: traffic into node0 flowed without its device"
            );
            assert!(
                !node0.ping(ip(remote, family)),
                "{family}: node0's own traffic to a remote pod flowed without its device"
            );
            assert!(
                local.ping(ip(neighbour, family)),
                "{family}: same-node traffic does not need the mesh"
            );
        }
        assert_eq!(
            node0.agent_http("/readyz").0,
            "503",
            "/readyz without wgmesh0"
        );
        node0.exec_ok(&["ip", "link", "del", "wgmesh0"]);
    });
    for &family in families {
        wait_until(WAIT, "the agent to restore cross-node traffic", || {
            local.ping(ip(remote, family)).then_some(())
        });
    }
    assert_only_wireguard_between_nodes(tb, &capture);
}

/// A third node joins: its pod and every pod reach each other in every family within
/// [`JOIN`] of its Node object's creation. `pods`: those of the first two nodes.
fn assert_a_joining_node_is_reachable_in_every_family(tb: &mut Testbed, pods: &[Vec<Pod>]) {
    let layout = tb.layout();
    // The clock starts when the Node object is created (the agent starts right after),
    // not once the mesh has converged.
    let (joined, registered) = tb.add_node_without_waiting();
    // A runtime starts pods on the node once its agent has written the CNI config.
    let newcomer = tb.add_pod(joined, "p20");
    let attached = registered.elapsed();
    for &family in layout.pod_families() {
        for p in pods.iter().flatten() {
            let (there, back) = (ip(p, family), ip(&newcomer, family));
            wait_until(
                WAIT,
                &format!(
                    "{family}: the new node's pod and {} to reach each other",
                    p.name()
                ),
                || (newcomer.ping_once(there, PROBE) && p.ping_once(back, PROBE)).then_some(()),
            );
        }
    }
    let took = registered.elapsed();
    eprintln!(
        "FIGURE node join ({}): the new node's pod (attached {attached:?} after the Node object was created) and all {} pods reached each other in every family {took:?} after it",
        layout.describe(),
        pods.iter().flatten().count()
    );
    assert!(
        took < JOIN,
        "{}: the third node took {took:?} (more than {JOIN:?}) from registering to pod traffic both ways with every pod in every family\n{}",
        layout.describe(),
        tb.diagnostics()
    );
    tb.wait_for_mesh();
}

/// wgmesh0 gone, then a node joining: one testbed of `layout`.
fn nothing_leaks_without_wgmesh0_and_a_new_node_joins_in_every_family(layout: Layout) {
    let (mut tb, mut pods) = cluster(layout, 2, 1);
    pods[0].push(tb.add_pod(0, "p01"));
    let started = Instant::now();
    assert_nothing_leaks_without_wgmesh0(&tb, &pods);
    eprintln!(
        "{}: wgmesh0 taken and restored in {:?}",
        layout.describe(),
        started.elapsed()
    );
    assert_a_joining_node_is_reachable_in_every_family(&mut tb, &pods);
}

#[test]
fn dual_stack_pods_over_an_ipv4_underlay_talk_in_both_families_with_their_own_addresses_and_only_wireguard_crosses_the_underlay()
 {
    require_root!();
    pods_talk_in_every_family_and_only_wireguard_crosses_the_underlay(Layout::DualStackOverIpv4);
}

#[test]
fn dual_stack_pods_over_an_ipv6_underlay_talk_in_both_families_with_their_own_addresses_and_only_wireguard_crosses_the_underlay()
 {
    require_root!();
    pods_talk_in_every_family_and_only_wireguard_crosses_the_underlay(Layout::DualStackOverIpv6);
}

#[test]
fn ipv6_only_pods_over_an_ipv6_underlay_talk_with_their_own_addresses_and_only_wireguard_crosses_the_underlay()
 {
    require_root!();
    pods_talk_in_every_family_and_only_wireguard_crosses_the_underlay(Layout::Ipv6);
}

#[test]
fn dual_stack_over_an_ipv4_underlay_leaks_nothing_without_wgmesh0_and_a_joining_node_is_reachable_in_both_families_within_two_seconds()
 {
    require_root!();
    nothing_leaks_without_wgmesh0_and_a_new_node_joins_in_every_family(Layout::DualStackOverIpv4);
}

#[test]
fn dual_stack_over_an_ipv6_underlay_leaks_nothing_without_wgmesh0_and_a_joining_node_is_reachable_in_both_families_within_two_seconds()
 {
    require_root!();
    nothing_leaks_without_wgmesh0_and_a_new_node_joins_in_every_family(Layout::DualStackOverIpv6);
}

#[test]
fn ipv6_only_leaks_nothing_without_wgmesh0_and_a_joining_node_is_reachable_within_two_seconds() {
    require_root!();
    nothing_leaks_without_wgmesh0_and_a_new_node_joins_in_every_family(Layout::Ipv6);
}
