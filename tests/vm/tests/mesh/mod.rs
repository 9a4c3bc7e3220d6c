//! The VM as a kernel-WireGuard node of a testbed whose other nodes run the userspace
//! backend: one mesh against test-apiserver, pods in the VM and on this machine
//! reaching each other, only WireGuard on the router between them; switching the VM
//! node between backends, and its kernel device deleted under the agent, without a
//! pod packet in clear. The VM has one `wgmesh0`: these tests take turns (see
//! `wgmesh_vm::node`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wgmesh_testbed::capture::Capture;
use wgmesh_testbed::{Exec, Pod, Testbed, annotation};
use wgmesh_testkit::wait_until;
use wgmesh_vm::Vm;
use wgmesh_vm::flow::Flow;
use wgmesh_vm::node::VmNode;

/// The mesh converging, a pod answering: seconds on the host, more with a node under
/// TCG; generous.
const WAIT: Duration = Duration::from_secs(120);
/// What crosses the router, besides WireGuard: ARP, and the nodes' API traffic.
const UNDERLAY_FILTER: &str = "not arp and not port 6443";
/// A ping payload pattern (`ping -p`, "wgmesh-vm") that must never cross the router.
const PATTERN: &str = "77676d6573682d766d";
const KERNEL: &[&str] = &["--wireguard-backend", "kernel"];
const USERSPACE: &[&str] = &["--wireguard-backend", "userspace"];

/// The VM as node "vm" of `tb` (whose nodes run the userspace backend) in the slot after
/// theirs, its agent started with `backend`; waits until every node lists every other.
fn mesh<'a>(vm: &'a Vm, tb: &'a Testbed, backend: &[&str]) -> VmNode<'a> {
    let node = VmNode::join(vm, tb, tb.nodes().count());
    let started = Instant::now();
    node.start_agent(backend);
    let hosts: Vec<&str> = tb.nodes().map(|n| n.name()).collect();
    node.wait_for_peers(&hosts, WAIT);
    for n in tb.nodes() {
        let mut others: Vec<&str> = hosts.iter().copied().filter(|h| *h != n.name()).collect();
        others.push(node.name());
        n.wait_for_peers(&others, WAIT);
    }
    eprintln!(
        "the VM node's agent joined the mesh {:?} after its start",
        started.elapsed()
    );
    node
}

/// The kind of the node's `wgmesh0` as `ip -d link` shows it: "wireguard" (the
/// kernel's) or "tun" (the userspace backend's).
fn link_kind(place: &impl Exec) -> &'static str {
    try_link_kind(place).unwrap_or_else(|| {
        let out = place.exec(&["ip", "-d", "-o", "link", "show", "wgmesh0"]);
        panic!(
            "wgmesh0 in {} is neither: {}{}",
            place.place(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Like [`link_kind`]; None while there is no wgmesh0 (or it is something else).
fn try_link_kind(place: &impl Exec) -> Option<&'static str> {
    let out = place.exec(&["ip", "-d", "-o", "link", "show", "wgmesh0"]);
    let out = String::from_utf8_lossy(&out.stdout);
    if out.contains(" wireguard ") {
        Some("wireguard")
    } else if out.contains(" tun ") {
        Some("tun")
    } else {
        None
    }
}

/// Waits until `from` reaches `to` (a ping answered).
fn wait_reach(from: &impl Exec, to: Ipv4Addr) {
    wait_until(WAIT, &format!("{} to reach {to}", from.place()), || {
        from.ping(to).then_some(())
    });
}

/// Every packet of `capture` is a WireGuard message between two of `nodes` on port
/// 51820 (or an ICMP error about one: a port closed while a device is replaced), and
/// none shows a pod address or the ping pattern.
fn assert_only_wireguard(capture: &Capture, nodes: &[Ipv4Addr]) {
    let pattern: Vec<u8> = (0..PATTERN.len() / 2)
        .map(|i| u8::from_str_radix(&PATTERN[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert!(
        !capture.contains_bytes(&pattern),
        "a ping payload crossed the router in clear:\n{capture}"
    );
    let pods = wgmesh_testbed::addressing::cluster_cidr();
    let clear = capture.packets_with_addresses_in(pods);
    assert!(
        clear.is_empty(),
        "{} packets on the router show a pod address, e.g. {}",
        clear.len(),
        clear[0]
    );
    for p in &capture.packets {
        let addrs = p.ipv4_addresses();
        assert!(
            addrs.iter().all(|a| nodes.contains(a)),
            "a packet not between nodes: {p}"
        );
        let b = p.bytes();
        let icmp_error = b.len() > 20 && b[9] == 1 && matches!(b[usize::from(b[0] & 0x0f) * 4], 3);
        if icmp_error {
            continue;
        }
        assert!(p.is_wireguard(), "not WireGuard: {p}");
        assert!(
            p.summary.contains(".51820 > ") && p.summary.contains(".51820:"),
            "not between WireGuard ports: {p}"
        );
    }
}

/// `wg show wgmesh0 dump` of `place`: the device's public key, and per peer key its
/// (latest handshake, rx bytes, tx bytes).
fn wg_dump(place: &impl Exec) -> (String, BTreeMap<String, (u64, u64, u64)>) {
    let dump = place.exec_ok(&["wg", "show", "wgmesh0", "dump"]);
    let mut lines = dump.lines();
    let own = lines
        .next()
        .and_then(|l| l.split('\t').nth(1))
        .unwrap_or_else(|| panic!("no interface line from wg in {}: {dump}", place.place()))
        .to_string();
    let peers = lines
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let n = |i: usize| -> u64 { f[i].parse().unwrap_or_else(|_| panic!("{l}")) };
            (f[0].to_string(), (n(4), n(5), n(6)))
        })
        .collect();
    (own, peers)
}

/// `wg show` of `place` reports a handshake in the last 3 minutes and bytes both ways
/// with the peer `key`.
fn assert_wg_reports(place: &impl Exec, key: &str) {
    let (_, peers) = wg_dump(place);
    let (handshake, rx, tx) = *peers
        .get(key)
        .unwrap_or_else(|| panic!("{}: no peer {key} in wg show: {peers:?}", place.place()));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        handshake > 0 && now.abs_diff(handshake) < 180,
        "{}: no recent handshake with {key} ({handshake}, now {now})",
        place.place()
    );
    assert!(
        rx > 0 && tx > 0,
        "{}: no bytes with {key}: rx {rx}, tx {tx}",
        place.place()
    );
}

/// `/metrics` (`body`) reports a handshake in the last 3 minutes and bytes both ways
/// with node `peer`.
fn assert_metrics_report(body: &str, peer: &str, place: &str) {
    let value = |name: &str| -> f64 {
        let prefix = format!("{name}{{node=\"{peer}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{place}: no {prefix} in:\n{body}"))
            .parse()
            .unwrap()
    };
    assert!(
        value("wgmesh_peer_last_handshake_age_seconds") < 180.0,
        "{place}"
    );
    assert!(value("wgmesh_peer_receive_bytes_total") > 0.0, "{place}");
    assert!(value("wgmesh_peer_transmit_bytes_total") > 0.0, "{place}");
}

fn public_key(tb: &Testbed, i: usize) -> String {
    tb.node_annotations(i)
        .remove(annotation::PUBLIC_KEY)
        .unwrap_or_else(|| panic!("node{i} advertises no key"))
}

#[test]
fn a_kernel_node_and_userspace_nodes_form_one_mesh_with_only_wireguard_between_them_and_a_deleted_node_leaves_the_kernel_peers()
 {
    let vm = Vm::shared();
    let tb = Testbed::builder().nodes(2).build();
    let node = mesh(vm, &tb, KERNEL);
    assert_eq!(
        link_kind(&node),
        "wireguard",
        "the VM node runs the kernel's"
    );
    for n in tb.nodes() {
        assert_eq!(
            link_kind(n),
            "tun",
            "{} runs the userspace backend",
            n.name()
        );
    }
    let in_vm = node.add_pod("v0");
    let hosts: Vec<Pod> = (0..2).map(|i| tb.add_pod(i, &format!("h{i}"))).collect();
    for h in &hosts {
        wait_reach(h, in_vm.ip());
        wait_reach(&in_vm, h.ip());
    }

    let ((), capture) = tb.router().capture(UNDERLAY_FILTER, || {
        for h in &hosts {
            let (a, b) = (in_vm.ip().to_string(), h.ip().to_string());
            h.exec_ok(&["ping", "-c", "3", "-i", "0.2", "-p", PATTERN, &a]);
            in_vm.exec_ok(&["ping", "-c", "3", "-i", "0.2", "-p", PATTERN, &b]);
        }
    });
    let mut nodes: Vec<Ipv4Addr> = tb.nodes().map(|n| n.underlay_ip()).collect();
    nodes.push(node.underlay_ip());
    assert_only_wireguard(&capture, &nodes);
    let vm_link = node.router_link();
    assert!(
        capture
            .packets
            .iter()
            .filter(|p| p.interface == vm_link)
            .count()
            >= 12,
        "the capture saw the pings to and from the VM on its link:\n{}",
        capture.lines().join("\n")
    );
    tb.router().assert_no_pod_traffic_in_clear(&[&capture]);

    // wg show: the kernel's device in the VM (over netlink), the userspace devices here
    // (over UAPI), each with a recent handshake and bytes both ways with the other.
    let vm_key = node.advertised_key().expect("the VM node advertises a key");
    let (own, _) = wg_dump(&node);
    assert_eq!(own, vm_key, "the kernel device has the advertised key");
    for (i, n) in tb.nodes().enumerate() {
        assert_wg_reports(&node, &public_key(&tb, i));
        assert_wg_reports(n, &vm_key);
    }
    // /metrics: the VM's agent reads the kernel's device.
    let (code, body) = node.agent_http("/metrics");
    assert_eq!(code, "200", "{body}");
    for n in tb.nodes() {
        assert_metrics_report(&body, n.name(), "the VM node");
        let (code, body) = n.agent_http("/metrics");
        assert_eq!(code, "200", "{body}");
        assert_metrics_report(&body, node.name(), n.name());
    }

    // node1 is deleted: it leaves the kernel device's peers; node0 stays, and reachable.
    let (key0, key1) = (public_key(&tb, 0), public_key(&tb, 1));
    tb.delete_node_object(1);
    wait_until(WAIT, "node1 to leave the kernel device's peers", || {
        let (_, peers) = wg_dump(&node);
        (!peers.contains_key(&key1)).then_some(())
    });
    let (_, peers) = wg_dump(&node);
    assert_eq!(
        peers.keys().collect::<Vec<_>>(),
        [&key0],
        "only node0 is left"
    );
    assert!(in_vm.ping(hosts[0].ip()));
}

// Bounds on the outages (the longest time without a reply in a 100 pps ping), generous:
// the VM runs under software emulation on a shared machine.
/// The VM node's switch from the userspace to the kernel backend. Most of it is the
/// protocol's: boringtun stamps its handshake initiations 27 s ahead of the kernel
/// (TAI64N from 2^62 + 37 instead of + 10), so a peer that received one from the
/// userspace device in the last 27 s takes the kernel device's for replays, and
/// handshakes itself only once its packets have gone unanswered for 15 s. Measured
/// 15–16.5 s (the agent's restart under TCG included).
const TO_KERNEL_OUTAGE: Duration = Duration::from_secs(90);
/// The switch back: the kernel's device carries the traffic until the new agent
/// replaces it with its own. Measured 0.6–0.8 s.
const TO_USERSPACE_OUTAGE: Duration = Duration::from_secs(10);
/// From `ip link del wgmesh0` in the VM to pods answering both ways again. Measured
/// 0.6–1.0 s.
const RECREATE: Duration = Duration::from_secs(10);
/// How long one probe of a timed change waits for its answer.
const PROBE: Duration = Duration::from_millis(300);

/// Polls `cond` until it holds, up to `timeout`; returns when, or None.
fn poll(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Polls until `a` and `b` answer each other, up to `timeout`; returns when, or None.
fn reach_both_ways(
    a: &impl Exec,
    a_ip: Ipv4Addr,
    b: &impl Exec,
    b_ip: Ipv4Addr,
    timeout: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if a.ping_once(b_ip, PROBE) && b.ping_once(a_ip, PROBE) {
            return Some(start.elapsed());
        }
    }
    None
}

#[test]
fn switching_the_vm_node_between_backends_keeps_its_key_sends_no_pod_packet_in_clear_and_loses_a_bounded_time()
 {
    let vm = Vm::shared();
    let tb = Testbed::builder().nodes(1).build();
    let node = mesh(vm, &tb, USERSPACE);
    assert_eq!(link_kind(&node), "tun");
    let in_vm = node.add_pod("v0");
    let host = tb.add_pod(0, "h0");
    wait_reach(&host, in_vm.ip());
    wait_reach(&in_vm, host.ip());
    let key = node.advertised_key().expect("the VM node advertises a key");
    assert_eq!(wg_dump(&node).0, key);
    let nodes = [tb.node(0).underlay_ip(), node.underlay_ip()];
    for (backend, kind, bound) in [
        (KERNEL, "wireguard", TO_KERNEL_OUTAGE),
        (USERSPACE, "tun", TO_USERSPACE_OUTAGE),
    ] {
        let ((inbound, outbound, back), capture) = tb.router().capture(UNDERLAY_FILTER, || {
            // Long enough to show an outage past the bound; stopped once traffic is back.
            let seconds = bound.as_secs() as u32 + 30;
            let inbound = Flow::start(&host, in_vm.ip(), seconds);
            let outbound = Flow::start(&in_vm, host.ip(), seconds);
            std::thread::sleep(Duration::from_secs(1));
            let switched = Instant::now();
            node.stop_agent();
            node.start_agent(backend);
            // The new agent has replaced the device, then the pods answer again (the
            // kernel's device carries traffic until it is replaced).
            let replaced = poll(bound, || try_link_kind(&node) == Some(kind));
            let back = replaced
                .and_then(|_| reach_both_ways(&host, host.ip(), &in_vm, in_vm.ip(), bound))
                .map(|_| switched.elapsed());
            std::thread::sleep(Duration::from_secs(1));
            (inbound.stop(), outbound.stop(), back)
        });
        eprintln!(
            "FIGURE backend switch to {}: host pod -> VM pod {inbound}; VM pod -> host pod {outbound} (at 100 pps); both ways again {back:?} after the agent's stop",
            backend[1]
        );
        for (flow, seen) in [
            ("host pod -> VM pod", &inbound),
            ("VM pod -> host pod", &outbound),
        ] {
            assert!(
                seen.longest_gap().is_some_and(|gap| gap < bound),
                "{flow}: {seen} across the switch to {} (bound {bound:?})",
                backend[1]
            );
        }
        assert_only_wireguard(&capture, &nodes);
        tb.router().assert_no_pod_traffic_in_clear(&[&capture]);
        assert_eq!(
            link_kind(&node),
            kind,
            "the {} backend's device",
            backend[1]
        );
        assert_eq!(wg_dump(&node).0, key, "the device has the node's key");
        assert_eq!(
            node.advertised_key().as_ref(),
            Some(&key),
            "the advertised key"
        );
        assert!(
            node.agent_log_since_start().contains("(backend switch)"),
            "the agent says it replaced the {} backend's device",
            if kind == "tun" { "kernel" } else { "userspace" }
        );
    }
}

#[test]
fn a_kernel_device_deleted_under_the_agent_comes_back_with_its_peers_and_nothing_leaves_in_clear_meanwhile()
 {
    let vm = Vm::shared();
    let tb = Testbed::builder().nodes(1).build();
    let node = mesh(vm, &tb, KERNEL);
    let in_vm = node.add_pod("v0");
    let host = tb.add_pod(0, "h0");
    wait_reach(&host, in_vm.ip());
    wait_reach(&in_vm, host.ip());
    let ifindex = |n: &VmNode| -> String {
        let line = n.exec_ok(&["ip", "-o", "link", "show", "wgmesh0"]);
        line.split(':').next().unwrap_or_default().to_string()
    };
    let before = ifindex(&node);
    let key = wg_dump(&node).0;
    let ((inbound, outbound, back), capture) = tb.router().capture(UNDERLAY_FILTER, || {
        let seconds = RECREATE.as_secs() as u32 + 30;
        let inbound = Flow::start(&host, in_vm.ip(), seconds);
        // Pod packets leaving the VM while its device is gone: the guard must hold them.
        let outbound = Flow::start(&in_vm, host.ip(), seconds);
        std::thread::sleep(Duration::from_secs(1));
        node.exec_ok(&["ip", "link", "del", "wgmesh0"]);
        let back = reach_both_ways(&host, host.ip(), &in_vm, in_vm.ip(), RECREATE);
        std::thread::sleep(Duration::from_secs(1));
        (inbound.stop(), outbound.stop(), back)
    });
    eprintln!(
        "FIGURE kernel device deleted: pods answer both ways again {back:?} later; host pod -> VM pod {inbound}; VM pod -> host pod {outbound} (at 100 pps)"
    );
    assert!(
        back.is_some(),
        "pods did not answer each other within {RECREATE:?} of the device's deletion"
    );
    for (flow, seen) in [
        ("host pod -> VM pod", &inbound),
        ("VM pod -> host pod", &outbound),
    ] {
        assert!(
            seen.longest_gap().is_some_and(|gap| gap < RECREATE),
            "{flow}: {seen} across the device's deletion (bound {RECREATE:?})"
        );
    }
    assert_only_wireguard(&capture, &[tb.node(0).underlay_ip(), node.underlay_ip()]);
    tb.router().assert_no_pod_traffic_in_clear(&[&capture]);
    assert_eq!(link_kind(&node), "wireguard");
    assert_ne!(ifindex(&node), before, "a new device");
    assert_eq!(wg_dump(&node).0, key, "with the node's key");
    assert_wg_reports(&node, &public_key(&tb, 0));
}
