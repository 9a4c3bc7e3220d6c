//! The node data-plane adapters against the real kernel, each in namespaces the test
//! creates: mesh routes (reconciled by protocol number) and the nftables guard and
//! egress NAT. Needs root.

use std::collections::BTreeSet;
use std::future::Future;

use ipnet::IpNet;
use wgmesh::dataplane::{firewall, routes};
use wgmesh::mesh::{FirewallPlan, MeshPlan, PeerIngressPlan, RoutePlan};
use wgmesh::netlink::{NetNs, Netlink};
use wgmesh_testkit::{TestNs, require_root};

/// Runs async netlink work on a thread inside `ns`.
fn block_in<T: Send, F: Future<Output = T>>(ns: &TestNs, f: impl FnOnce() -> F + Send) -> T {
    NetNs::open(ns.path())
        .expect("netns")
        .run(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(f())
        })
        .expect("thread in netns")
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn plan_with(peers: &[(&str, &str)]) -> MeshPlan {
    MeshPlan {
        routes: peers
            .iter()
            .map(|(node, cidr)| RoutePlan {
                dst: net(cidr),
                src: Some("10.244.1.1".parse().unwrap()),
                node: node.to_string(),
            })
            .collect(),
        unreachable: BTreeSet::from([net("10.244.0.0/16")]),
        ..MeshPlan::default()
    }
}

/// A node namespace with a TUN `wgmesh0` and the bridge holding the gateway.
fn node_ns() -> TestNs {
    let ns = TestNs::new("dpn");
    ns.ip(["tuntap", "add", "wgmesh0", "mode", "tun"]);
    ns.ip(["link", "set", "wgmesh0", "up"]);
    ns.ip(["link", "add", "wgmesh-br", "type", "bridge"]);
    ns.ip(["addr", "add", "10.244.1.1/24", "dev", "wgmesh-br"]);
    ns.ip(["link", "set", "wgmesh-br", "up"]);
    ns
}

fn reconcile(ns: &TestNs, plan: &MeshPlan, with_mesh_interface: bool) -> routes::Changes {
    block_in(ns, || async {
        let nl = Netlink::connect().expect("netlink");
        let index = if with_mesh_interface {
            nl.link_by_name("wgmesh0").await.unwrap().map(|l| l.index)
        } else {
            None
        };
        routes::reconcile(&nl, &routes::desired(plan, index))
            .await
            .expect("reconcile")
    })
}

#[test]
fn mesh_routes_are_reconciled_and_repaired_and_foreign_routes_are_left_alone() {
    require_root!();
    let ns = node_ns();
    ns.ip(["route", "add", "10.99.0.0/16", "dev", "wgmesh-br"]);
    let plan = plan_with(&[("b", "10.244.2.0/24"), ("c", "10.244.3.0/24")]);

    let first = reconcile(&ns, &plan, true);
    assert_eq!(first.added.len(), 3, "{first:?}");
    let shown = ns.ip(["route", "show", "proto", "87"]);
    assert!(
        shown.contains("10.244.2.0/24 dev wgmesh0 scope link src 10.244.1.1"),
        "{shown}"
    );
    assert!(
        shown.contains("10.244.3.0/24 dev wgmesh0 scope link src 10.244.1.1"),
        "{shown}"
    );
    assert!(shown.contains("unreachable 10.244.0.0/16"), "{shown}");
    assert_eq!(
        reconcile(&ns, &plan, true),
        routes::Changes::default(),
        "idempotent"
    );

    // Drift: a deleted route comes back; nothing else changes.
    ns.ip(["route", "del", "10.244.3.0/24"]);
    assert_eq!(
        reconcile(&ns, &plan, true).added,
        vec![net("10.244.3.0/24")]
    );

    // A peer leaves: its route goes; the foreign route stays.
    let fewer = plan_with(&[("b", "10.244.2.0/24")]);
    assert_eq!(
        reconcile(&ns, &fewer, true).removed,
        vec![net("10.244.3.0/24")]
    );
    assert!(
        ns.ip(["route", "show"])
            .contains("10.99.0.0/16 dev wgmesh-br")
    );

    // Without the mesh interface only the unreachable route is left: traffic to any
    // other node's pods is refused, never routed elsewhere.
    reconcile(&ns, &fewer, false);
    let get = ns.exec("ip", ["route", "get", "10.244.2.7"]);
    assert!(
        !get.status.success(),
        "no route to a remote pod without wgmesh0"
    );
    // An unreachable route answers EHOSTUNREACH.
    assert!(
        String::from_utf8_lossy(&get.stderr).contains("No route to host"),
        "{get:?}"
    );
    let local = ns.ip(["route", "get", "10.244.1.7"]);
    assert!(
        local.contains("dev wgmesh-br"),
        "the local pod CIDR is more specific: {local}"
    );

    block_in(&ns, || async {
        routes::remove_all(&Netlink::connect().unwrap())
            .await
            .unwrap()
    });
    assert_eq!(ns.ip(["route", "show", "proto", "87"]).trim(), "");
}

/// node (bridge + pod) --- underlay --- outside (a host on the underlay, and a
/// "pod address" 10.244.2.5 it answers on, standing for a remote pod reached in clear).
struct Underlay {
    node: TestNs,
    pod: TestNs,
    outside: TestNs,
    /// The node's link to the outside.
    uplink: String,
}

fn underlay() -> Underlay {
    let node = node_ns();
    let outside = TestNs::new("dpo");
    let pod = TestNs::new("dpp");
    let (a, b) = (
        wgmesh_testkit::unique_name("dpa"),
        wgmesh_testkit::unique_name("dpb"),
    );
    wgmesh_testkit::run(
        "ip",
        [
            "link",
            "add",
            &a,
            "netns",
            node.name(),
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "netns",
            outside.name(),
        ],
    );
    node.ip(["addr", "add", "192.0.2.2/24", "dev", &a]);
    node.ip(["link", "set", &a, "up"]);
    node.ip(["route", "add", "default", "via", "192.0.2.1"]);
    outside.ip(["addr", "add", "192.0.2.1/24", "dev", &b]);
    outside.ip(["addr", "add", "10.244.2.5/32", "dev", "lo"]);
    outside.ip(["addr", "add", "203.0.113.10/32", "dev", "lo"]);
    outside.ip(["link", "set", &b, "up"]);
    // The outside knows the node, not the pod range: only masqueraded pods get answers.
    let (pa, pb) = (
        wgmesh_testkit::unique_name("dpc"),
        wgmesh_testkit::unique_name("dpd"),
    );
    wgmesh_testkit::run(
        "ip",
        [
            "link",
            "add",
            &pa,
            "netns",
            node.name(),
            "type",
            "veth",
            "peer",
            "name",
            &pb,
            "netns",
            pod.name(),
        ],
    );
    node.ip(["link", "set", &pa, "master", "wgmesh-br", "up"]);
    pod.ip(["addr", "add", "10.244.1.2/24", "dev", &pb]);
    pod.ip(["link", "set", &pb, "up"]);
    pod.ip(["route", "add", "default", "via", "10.244.1.1"]);
    node.exec("sysctl", ["-qw", "net.ipv4.ip_forward=1"]);
    Underlay {
        node,
        pod,
        outside,
        uplink: a,
    }
}

fn firewall_plan() -> FirewallPlan {
    FirewallPlan {
        guarded: BTreeSet::from([net("10.244.0.0/16")]),
        allowed_interfaces: ["lo", "wgmesh-br", "wgmesh0"]
            .into_iter()
            .map(String::from)
            .collect(),
        masquerade_from: BTreeSet::from([net("10.244.1.0/24")]),
        bridge: "wgmesh-br".into(),
        mesh_interface: "wgmesh0".into(),
        ..FirewallPlan::default()
    }
}

fn ensure(ns: &TestNs, plan: &FirewallPlan) -> bool {
    NetNs::open(ns.path())
        .unwrap()
        .run(|| firewall::ensure(plan))
        .unwrap()
        .expect("nft")
}

fn guard_drops(ns: &TestNs) -> u64 {
    let text = ns.exec(
        "nft",
        ["-j", "list", "chain", "inet", "wgmesh", "egress_guard"],
    );
    let v: serde_json::Value = serde_json::from_slice(&text.stdout).unwrap_or_default();
    let rules = v["nftables"].as_array().cloned().unwrap_or_default();
    let drop_rules = rules.iter().filter(|o| {
        o["rule"]["expr"]
            .as_array()
            .is_some_and(|e| e.iter().any(|s| s.get("drop").is_some()))
    });
    drop_rules
        .flat_map(|r| r["rule"]["expr"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s["counter"]["packets"].as_u64())
        .sum()
}

#[test]
fn pod_range_traffic_never_leaves_in_clear_through_the_underlay() {
    require_root!();
    let u = underlay();
    // Without the guard a route leak would carry pod traffic in clear: prove the test
    // setup would leak...
    assert!(
        u.node.ping("10.244.2.5"),
        "setup: the outside answers for 10.244.2.5"
    );
    // ...and that the guard stops it.
    assert!(
        ensure(&u.node, &firewall_plan()),
        "first apply installs the table"
    );
    assert!(
        !u.node.ping("10.244.2.5"),
        "pod-range traffic left through the underlay"
    );
    assert!(
        !u.pod.ping("10.244.2.5"),
        "a pod's traffic to another node's range left in clear"
    );
    assert!(guard_drops(&u.node) >= 2, "the guard counted its drops");
    assert!(u.node.ping("192.0.2.1"), "underlay traffic is not affected");
}

#[test]
fn pods_reach_the_outside_masqueraded_to_the_node_address() {
    require_root!();
    let u = underlay();
    assert!(
        !u.pod.ping("203.0.113.10"),
        "setup: without NAT the outside cannot answer a pod"
    );
    ensure(&u.node, &firewall_plan());
    assert!(
        u.pod.ping("203.0.113.10"),
        "masqueraded pod traffic gets its answer"
    );
    // Pod-to-pod on the bridge keeps its source: the pod sees the gateway answer from
    // its own subnet, not NAT'd.
    assert!(u.pod.ping("10.244.1.1"));
}

#[test]
fn the_table_is_applied_once_and_reapplied_when_it_drifts() {
    require_root!();
    let ns = node_ns();
    let plan = firewall_plan();
    assert!(ensure(&ns, &plan));
    assert!(!ensure(&ns, &plan), "unchanged: nothing to do");
    ns.exec("nft", ["flush", "chain", "inet", "wgmesh", "egress_guard"]);
    assert!(ensure(&ns, &plan), "a flushed chain is repaired");
    ns.exec("nft", ["delete", "table", "inet", "wgmesh"]);
    assert!(ensure(&ns, &plan), "a deleted table is repaired");
    let mut other = plan.clone();
    other.masquerade_from = BTreeSet::from([net("10.244.9.0/24")]);
    assert!(ensure(&ns, &other), "a new plan replaces the table");
    let listed =
        String::from_utf8_lossy(&ns.exec("nft", ["list", "table", "inet", "wgmesh"]).stdout)
            .into_owned();
    assert!(
        listed.contains("10.244.9.0/24") && !listed.contains("10.244.1.0/24"),
        "{listed}"
    );
    NetNs::open(ns.path())
        .unwrap()
        .run(firewall::remove)
        .unwrap()
        .unwrap();
    assert!(
        !ns.exec("nft", ["list", "table", "inet", "wgmesh"])
            .status
            .success()
    );
}

/// From `ns`, pings `dst` from source address `src` once; true on an answer.
fn ping_from(ns: &TestNs, src: &str, dst: &str) -> bool {
    ns.exec("ping", ["-c", "1", "-W", "1", "-I", src, dst])
        .status
        .success()
}

#[test]
fn external_peers_reach_pods_only_unless_their_peer_object_opts_in() {
    require_root!();
    let u = underlay();
    // The outside host stands for an external peer (a laptop, 10.99.0.5) whose packets
    // arrive decrypted on the mesh interface: here the node's uplink plays wgmesh0.
    u.outside.ip(["addr", "add", "10.99.0.5/32", "dev", "lo"]);
    u.outside
        .ip(["route", "add", "10.244.0.0/16", "via", "192.0.2.2"]);
    u.node
        .ip(["route", "add", "10.99.0.5/32", "via", "192.0.2.1"]);
    // A destination outside the pod ranges, reached through the pod's namespace.
    u.pod.ip(["addr", "add", "198.51.100.7/32", "dev", "lo"]);
    u.node
        .ip(["route", "add", "198.51.100.7/32", "via", "10.244.1.2"]);
    u.outside
        .ip(["route", "add", "198.51.100.7/32", "via", "192.0.2.2"]);
    let reach = |dst: &str| ping_from(&u.outside, "10.99.0.5", dst);
    for dst in ["10.244.1.2", "10.244.1.1", "192.0.2.2", "198.51.100.7"] {
        assert!(
            reach(dst),
            "setup: without the rules the peer reaches {dst}"
        );
    }

    let mut plan = firewall_plan();
    plan.mesh_interface = u.uplink.clone();
    plan.allowed_interfaces.insert(u.uplink.clone());
    plan.guarded.insert(net("10.99.0.5/32"));
    plan.peer_ingress = PeerIngressPlan {
        sources: BTreeSet::from([net("10.99.0.5/32")]),
        pod_ranges: BTreeSet::from([net("10.244.0.0/16")]),
        extra: Default::default(),
    };
    assert!(ensure(&u.node, &plan));
    assert!(reach("10.244.1.2"), "a pod is reachable");
    assert!(!reach("10.244.1.1"), "the node's bridge address is refused");
    assert!(!reach("192.0.2.2"), "the node's own address is refused");
    assert!(
        !reach("198.51.100.7"),
        "a destination outside the pod ranges is refused"
    );
    assert!(
        ping_from(&u.node, "192.0.2.2", "10.99.0.5"),
        "replies to a connection the node opened pass"
    );
    assert!(
        u.pod.ping("10.99.0.5"),
        "pods reach the peer and get answers"
    );

    // The Peer lists the node and the other network in spec.allowedDestinations.
    plan.peer_ingress.extra.insert(
        "laptop".into(),
        (
            BTreeSet::from([net("10.99.0.5/32")]),
            BTreeSet::from([net("192.0.2.2/32"), net("198.51.100.0/24")]),
        ),
    );
    assert!(ensure(&u.node, &plan));
    assert!(
        reach("192.0.2.2") && reach("198.51.100.7"),
        "opted-in destinations pass"
    );
    assert!(
        !reach("10.244.1.1"),
        "what the Peer did not list stays refused"
    );
}

/// The CNI plugin's question, asked in `ns`.
fn guard_check(ns: &TestNs, subnets: &[&str]) -> Result<(), wgmesh::dataplane::guard::Missing> {
    let subnets: Vec<IpNet> = subnets.iter().map(|s| net(s)).collect();
    block_in(ns, || async move {
        let nl = Netlink::connect().expect("netlink");
        wgmesh::dataplane::guard::check(&nl, subnets).await
    })
}

#[test]
fn the_guard_check_sees_the_unreachable_route_and_the_drop_rule_in_the_kernel() {
    use wgmesh::dataplane::guard::Missing;
    require_root!();
    let ns = node_ns();
    assert_eq!(
        guard_check(&ns, &["10.244.1.0/24"]),
        Err(Missing::Route {
            subnet: net("10.244.1.0/24")
        }),
        "a fresh node has no guard"
    );
    reconcile(&ns, &plan_with(&[]), true);
    assert_eq!(
        guard_check(&ns, &["10.244.1.0/24"]),
        Err(Missing::Firewall),
        "routes alone are not the guard"
    );
    assert!(ensure(&ns, &firewall_plan()));
    assert_eq!(guard_check(&ns, &["10.244.1.0/24"]), Ok(()));
    assert_eq!(
        guard_check(&ns, &["10.244.1.0/24", "fd00:10:244:1::/64"]),
        Err(Missing::Route {
            subnet: net("fd00:10:244:1::/64")
        }),
        "each family of the pod's subnets needs its guard"
    );
    // A flushed chain keeps its name but no longer drops anything.
    ns.exec("nft", ["flush", "chain", "inet", "wgmesh", "egress_guard"]);
    assert_eq!(guard_check(&ns, &["10.244.1.0/24"]), Err(Missing::Firewall));
    ns.exec("nft", ["delete", "table", "inet", "wgmesh"]);
    assert_eq!(guard_check(&ns, &["10.244.1.0/24"]), Err(Missing::Firewall));
    // Someone else's unreachable route is not wgmesh's guard.
    assert!(ensure(&ns, &firewall_plan()));
    ns.ip(["route", "flush", "proto", "87"]);
    ns.ip(["route", "add", "unreachable", "10.244.0.0/16"]);
    assert!(matches!(
        guard_check(&ns, &["10.244.1.0/24"]),
        Err(Missing::Route { .. })
    ));
}
