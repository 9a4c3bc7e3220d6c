//! Table tests of the mesh over a small fixed cluster: nodes a–d with fixed keys.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::key::PublicKey;
use crate::model::{NodeView, annotation};

/// No external peers.
const NO_PEERS: &[crate::mesh::ParsedPeer] = &[];

fn key(n: u8) -> PublicKey {
    let mut b = [n; 32];
    b[0] = 0x40 | n;
    PublicKey::from_bytes(b)
}

/// A well-formed node `name` with key `k`, endpoint 192.0.2.<i>:51820, pod CIDR 10.244.<i>.0/24.
fn node(name: &str, i: u8) -> NodeView {
    let cidr = format!("10.244.{i}.0/24");
    NodeView {
        name: name.to_string(),
        annotations: BTreeMap::from([
            (annotation::PUBLIC_KEY.to_string(), key(i).to_base64()),
            (
                annotation::ENDPOINT.to_string(),
                format!("192.0.2.{i}:51820"),
            ),
            (annotation::POD_CIDRS.to_string(), cidr.clone()),
        ]),
        pod_cidrs: vec![cidr],
        addresses: vec![("InternalIP".into(), format!("192.0.2.{i}"))],
        labels: BTreeMap::new(),
    }
}

fn with(mut v: NodeView, f: impl FnOnce(&mut NodeView)) -> NodeView {
    f(&mut v);
    v
}

fn set(v: NodeView, k: &str, val: &str) -> NodeView {
    with(v, |v| {
        v.annotations.insert(k.to_string(), val.to_string());
    })
}

fn unset(v: NodeView, k: &str) -> NodeView {
    with(v, |v| {
        v.annotations.remove(k);
    })
}

fn cfg() -> MeshConfig {
    MeshConfig {
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/48".parse().unwrap(),
        ],
        ..MeshConfig::default()
    }
}

/// The plan of node "a" for these views.
fn plan_of(views: &[NodeView]) -> MeshPlan {
    let cfg = cfg();
    let parsed: Vec<ParsedNode> = views.iter().map(|v| parse(v, &cfg)).collect();
    plan("a", Some(&key(1)), &parsed, NO_PEERS, &cfg)
}

fn peers(p: &MeshPlan) -> Vec<&str> {
    p.peers.keys().map(String::as_str).collect()
}

fn reasons(p: &MeshPlan, node: &str) -> Vec<&'static str> {
    p.rejected
        .get(node)
        .map(|v| v.iter().map(Problem::reason).collect())
        .unwrap_or_default()
}

#[test]
fn a_full_mesh_has_one_peer_per_other_node_with_its_cidrs_and_routes() {
    let p = plan_of(&[node("a", 1), node("b", 2), node("c", 3), node("d", 4)]);
    assert_eq!(peers(&p), ["b", "c", "d"]);
    let b = &p.peers["b"];
    assert_eq!(b.public_key, key(2));
    assert_eq!(b.endpoint.as_ref().unwrap().to_string(), "192.0.2.2:51820");
    assert_eq!(
        b.allowed_ips,
        vec!["10.244.2.0/24".parse::<IpNet>().unwrap()]
    );
    assert_eq!(b.persistent_keepalive, None);
    let routes: Vec<String> = p
        .routes
        .iter()
        .map(|r| format!("{} dev wgmesh0 src {:?} ({})", r.dst, r.src, r.node))
        .collect();
    assert_eq!(
        routes,
        [
            "10.244.2.0/24 dev wgmesh0 src Some(10.244.1.1) (b)",
            "10.244.3.0/24 dev wgmesh0 src Some(10.244.1.1) (c)",
            "10.244.4.0/24 dev wgmesh0 src Some(10.244.1.1) (d)",
        ]
    );
    assert_eq!(
        p.local.as_ref().map(|l| l.pod_subnets.to_annotation()),
        Some("10.244.1.0/24".into())
    );
    let cni = p.cni_config(&cfg()).expect("local CNI config");
    assert_eq!(
        cni.subnets.v4.map(|n| n.to_string()).as_deref(),
        Some("10.244.1.0/24")
    );
    assert_eq!((cni.bridge.as_str(), cni.mtu), ("wgmesh-br", 1420));
    assert!(p.rejected.is_empty() && p.warnings.is_empty());
    let nets = |v: &[&str]| {
        v.iter()
            .map(|s| s.parse::<IpNet>().unwrap())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(p.unreachable, nets(&["10.244.0.0/16", "fd00:10:244::/48"]));
    assert_eq!(p.firewall.guarded, p.unreachable);
    assert_eq!(p.firewall.masquerade_from, nets(&["10.244.1.0/24"]));
    let ifaces: Vec<&str> = p
        .firewall
        .allowed_interfaces
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(ifaces, ["lo", "wgmesh-br", "wgmesh0"]);
}

fn strings<T: ToString>(set: &std::collections::BTreeSet<T>) -> Vec<String> {
    set.iter().map(ToString::to_string).collect()
}

#[test]
fn without_cluster_cidrs_every_known_pod_range_is_guarded_and_unreachable() {
    let cfg = MeshConfig::default();
    // d is left out (no key) and e's spec.podCIDRs are not valid pod subnets: their
    // allocated ranges are guarded all the same.
    let views = [
        node("a", 1),
        node("b", 2),
        node("c", 3),
        unset(node("d", 7), annotation::PUBLIC_KEY),
        with(node("e", 9), |v| {
            v.pod_cidrs = vec!["10.244.9.0/24".into(), "10.244.10.0/24".into()]
        }),
    ];
    let parsed: Vec<ParsedNode> = views.iter().map(|v| parse(v, &cfg)).collect();
    let p = plan("a", Some(&key(1)), &parsed, NO_PEERS, &cfg);
    assert_eq!(peers(&p), ["b", "c"]);
    assert_eq!(
        strings(&p.unreachable),
        [
            "10.244.1.0/24",
            "10.244.2.0/23",
            "10.244.7.0/24",
            "10.244.9.0/24",
            "10.244.10.0/24"
        ]
    );
    assert_eq!(p.firewall.guarded, p.unreachable);
    assert!(p.local_problems.is_empty(), "nothing to check against");
    assert!(p.cni_config(&cfg).is_some());
}

#[test]
fn the_guard_covers_the_cluster_cidrs_and_every_pod_range_even_outside_them() {
    // --cluster-cidr copied from another cluster: the guard still covers every pod
    // range, so nothing can leave in clear, and the node refuses to host pods.
    let cfg = MeshConfig {
        cluster_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
        ..MeshConfig::default()
    };
    let parsed: Vec<ParsedNode> = [node("a", 1), node("b", 2), node("c", 4)]
        .iter()
        .map(|v| parse(v, &cfg))
        .collect();
    let p = plan("a", Some(&key(1)), &parsed, NO_PEERS, &cfg);
    assert_eq!(
        strings(&p.unreachable),
        [
            "10.96.0.0/16",
            "10.244.1.0/24",
            "10.244.2.0/24",
            "10.244.4.0/24"
        ]
    );
    assert_eq!(p.firewall.guarded, p.unreachable);
    assert_eq!(
        p.local_problems
            .iter()
            .map(|p| (p.reason(), p.to_string()))
            .collect::<Vec<_>>(),
        [(
            "ClusterCIDRMisconfigured",
            "this node's pod CIDR 10.244.1.0/24 (spec.podCIDRs) is not inside --cluster-cidr \
             10.96.0.0/16: no pod gets a network on this node until --cluster-cidr covers \
             every pod range (the wgmesh-config ConfigMap's cluster-cidr)"
                .to_string()
        )]
    );
    assert!(
        p.cni_config(&cfg).is_none(),
        "no conflist on a misconfigured node"
    );
}

#[test]
fn a_pod_cidr_family_without_a_cluster_cidr_is_a_local_problem() {
    let dual = |v: NodeView, i: u8| with(v, |v| v.pod_cidrs.push(format!("fd00:10:244:{i}::/64")));
    type Case = (
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
    );
    let cases: &[Case] = &[
        (
            "both families covered",
            &["10.244.0.0/16", "fd00:10:244::/56"],
            &[],
        ),
        (
            "IPv4-only flag on a dual-stack cluster",
            &["10.244.0.0/16"],
            &[
                "fd00:10:244:1::/64 (spec.podCIDRs) has no IPv6 prefix in --cluster-cidr 10.244.0.0/16",
            ],
        ),
        (
            "IPv6 prefix of another cluster",
            &["10.244.0.0/16", "fd00:99::/56"],
            &[
                "fd00:10:244:1::/64 (spec.podCIDRs) is not inside --cluster-cidr 10.244.0.0/16,fd00:99::/56",
            ],
        ),
        ("no flag at all", &[], &[]),
    ];
    for (what, cluster, want) in cases {
        let cfg = MeshConfig {
            cluster_cidrs: cluster.iter().map(|c| c.parse().unwrap()).collect(),
            ..MeshConfig::default()
        };
        let parsed: Vec<ParsedNode> = [dual(node("a", 1), 1), dual(node("b", 2), 2)]
            .iter()
            .map(|v| parse(v, &cfg))
            .collect();
        let p = plan("a", Some(&key(1)), &parsed, NO_PEERS, &cfg);
        let got: Vec<String> = p.local_problems.iter().map(ToString::to_string).collect();
        assert_eq!(got.len(), want.len(), "{what}: {got:?}");
        for (g, w) in got.iter().zip(want.iter()) {
            assert!(g.contains(w), "{what}: {g:?} does not say {w:?}");
        }
        assert_eq!(p.cni_config(&cfg).is_none(), !want.is_empty(), "{what}");
        // Either way, both families of every pod range are guarded.
        for range in ["10.244.1.0/24", "fd00:10:244:1::/64", "fd00:10:244:2::/64"] {
            let range: IpNet = range.parse().unwrap();
            assert!(
                p.unreachable.iter().any(|u| u.contains(&range)),
                "{what}: {range} unguarded in {:?}",
                p.unreachable
            );
        }
    }
}

#[test]
fn an_annotation_only_range_never_beats_nor_knocks_out_an_allocated_one() {
    // A node without spec.podCIDRs (before the controller-manager allocated it, or a
    // hostile Node writer) claims ranges by annotation only.
    let spec_less = |name: &str, i: u8, claim: &str| {
        with(set(node(name, i), annotation::POD_CIDRS, claim), |v| {
            v.pod_cidrs.clear()
        })
    };
    type Case = (
        &'static str,
        Vec<NodeView>,
        &'static [&'static str],
        &'static [(&'static str, &'static str)],
    );
    let cases: Vec<Case> = vec![
        (
            "claims the whole cluster range",
            vec![
                node("a", 1),
                node("b", 2),
                node("c", 3),
                spec_less("x", 9, "10.244.0.0/16"),
            ],
            &["b", "c"],
            &[("x", "OverlappingPodCIDR")],
        ),
        (
            "claims a range allocated to a node that is not usable yet",
            vec![
                node("a", 1),
                unset(node("b", 2), annotation::PUBLIC_KEY),
                spec_less("x", 9, "10.244.2.0/25"),
            ],
            &[],
            &[("b", "MissingAnnotation"), ("x", "OverlappingPodCIDR")],
        ),
        (
            "claims a free range",
            vec![
                node("a", 1),
                node("b", 2),
                spec_less("x", 9, "10.244.9.0/24"),
            ],
            &["b", "x"],
            &[],
        ),
        (
            "two annotation-only claims of one range",
            vec![
                node("a", 1),
                spec_less("x", 8, "10.244.9.0/24"),
                spec_less("y", 9, "10.244.9.0/25"),
            ],
            &[],
            &[("x", "OverlappingPodCIDR"), ("y", "OverlappingPodCIDR")],
        ),
        (
            "two allocated ranges overlapping: both out, as before",
            vec![
                node("a", 1),
                node("b", 2),
                with(node("c", 3), |v| v.pod_cidrs = vec!["10.244.2.0/25".into()]),
            ],
            &[],
            &[("b", "OverlappingPodCIDR"), ("c", "OverlappingPodCIDR")],
        ),
    ];
    for (what, views, want_peers, want_rejected) in cases {
        let p = plan_of(&views);
        assert_eq!(peers(&p), *want_peers, "{what}");
        let rejected: Vec<(&str, &str)> = p
            .rejected
            .iter()
            .map(|(n, probs)| (n.as_str(), probs[0].reason()))
            .collect();
        assert_eq!(rejected, *want_rejected, "{what}");
    }
    // The message tells who keeps the range.
    let p = plan_of(&[
        node("a", 1),
        node("b", 2),
        spec_less("x", 9, "10.244.2.0/25"),
    ]);
    assert_eq!(
        p.rejected["x"][0].to_string(),
        "10.244.2.0/25 overlaps pod CIDR 10.244.2.0/24 of node b; the node keeps it"
    );
}

#[test]
fn values_quoted_in_problems_are_bounded() {
    let long = format!("{}:51820", "é".repeat(5_000));
    let p = plan_of(&[node("a", 1), set(node("b", 2), annotation::ENDPOINT, &long)]);
    let text = p.rejected["b"][0].to_string();
    assert!(text.len() < 2 * QUOTE_LIMIT, "{} bytes", text.len());
    assert!(text.contains("(10006 bytes)"), "{text}");
    let p = plan_of(&[
        node("a", 1),
        set(node("b", 2), annotation::POD_CIDRS, &"1".repeat(100_000)),
    ]);
    let warning = p.warnings["b"][0].to_string();
    assert!(warning.len() < 2 * QUOTE_LIMIT, "{} bytes", warning.len());
    let p = plan_of(&[
        node("a", 1),
        with(unset(node("b", 2), annotation::POD_CIDRS), |v| {
            v.pod_cidrs = vec!["x".repeat(100_000)]
        }),
    ]);
    assert!(p.rejected["b"][0].to_string().len() < 2 * QUOTE_LIMIT);
}

#[test]
fn malformed_nodes_are_left_out_with_the_reason_and_the_rest_is_unaffected() {
    type Case = (
        &'static str,
        NodeView,
        &'static [&'static str],
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "no key",
            unset(node("b", 2), annotation::PUBLIC_KEY),
            &["MissingAnnotation"],
            "wgmesh.io/public-key is missing",
        ),
        (
            "bad base64",
            set(node("b", 2), annotation::PUBLIC_KEY, "not*base64!"),
            &["InvalidPublicKey"],
            "not valid base64",
        ),
        (
            "short key",
            set(node("b", 2), annotation::PUBLIC_KEY, "AAECAwQFBgcICQ=="),
            &["InvalidPublicKey"],
            "has 10 bytes",
        ),
        (
            "zero key",
            set(
                node("b", 2),
                annotation::PUBLIC_KEY,
                &PublicKey::from_bytes([0; 32]).to_base64(),
            ),
            &["InvalidPublicKey"],
            "all-zero",
        ),
        (
            "no endpoint",
            unset(node("b", 2), annotation::ENDPOINT),
            &["MissingAnnotation"],
            "wgmesh.io/endpoint is missing",
        ),
        (
            "endpoint without port",
            set(node("b", 2), annotation::ENDPOINT, "192.0.2.2"),
            &["InvalidEndpoint"],
            "no port",
        ),
        (
            "DNS name in the agent-written endpoint",
            set(
                node("b", 2),
                annotation::ENDPOINT,
                "node-b.example.net:51820",
            ),
            &["InvalidEndpoint"],
            "DNS name is not allowed here",
        ),
        (
            "endpoint port 0",
            set(node("b", 2), annotation::ENDPOINT, "192.0.2.2:0"),
            &["InvalidEndpoint"],
            "invalid port",
        ),
        (
            "bad force-endpoint",
            set(node("b", 2), annotation::FORCE_ENDPOINT, "under_score:1"),
            &["InvalidEndpoint"],
            "force-endpoint",
        ),
        (
            "no CIDR anywhere",
            with(unset(node("b", 2), annotation::POD_CIDRS), |v| {
                v.pod_cidrs.clear()
            }),
            &["NoPodCIDRs"],
            "no pod CIDR",
        ),
        (
            "garbage spec CIDR",
            with(node("b", 2), |v| v.pod_cidrs = vec!["10.244.2.0/33".into()]),
            &["InvalidPodCIDRs"],
            "spec.podCIDRs",
        ),
        (
            "CIDR outside cluster",
            with(node("b", 2), |v| v.pod_cidrs = vec!["10.99.0.0/24".into()]),
            &["PodCIDROutsideCluster"],
            "10.99.0.0/24",
        ),
        (
            "everything wrong at once",
            with(
                set(
                    unset(node("b", 2), annotation::ENDPOINT),
                    annotation::PUBLIC_KEY,
                    "x",
                ),
                |v| v.pod_cidrs = vec!["nope".into()],
            ),
            &["InvalidPublicKey", "MissingAnnotation", "InvalidPodCIDRs"],
            "",
        ),
    ];
    for (what, bad_b, want, message) in cases {
        let p = plan_of(&[node("a", 1), bad_b, node("c", 3)]);
        assert_eq!(peers(&p), ["c"], "{what}");
        assert_eq!(reasons(&p, "b"), want, "{what}");
        let text = p.rejected["b"]
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        assert!(
            text.contains(message),
            "{what}: {text:?} does not mention {message:?}"
        );
        assert_eq!(p.routes.len(), 1, "{what}: only c's route");
    }
}

#[test]
fn ipv6_and_dns_endpoints_are_used_as_published() {
    let p = plan_of(&[
        // The local node has both families: an IPv6-only peer is reached over IPv6.
        set(
            node("a", 1),
            annotation::ENDPOINTS,
            "192.0.2.1:51820,[2001:db8::1]:51820",
        ),
        set(node("b", 2), annotation::ENDPOINT, "[2001:db8::2]:51820"),
        set(
            node("c", 3),
            annotation::FORCE_ENDPOINT,
            "node-c.example.net:4500",
        ),
    ]);
    assert_eq!(
        p.peers["b"].endpoint.as_ref().unwrap().to_string(),
        "[2001:db8::2]:51820"
    );
    assert_eq!(
        p.peers["c"].endpoint.as_ref().unwrap().to_string(),
        "node-c.example.net:4500",
        "force-endpoint wins"
    );
}

#[test]
fn overlapping_cidrs_exclude_both_nodes_and_never_the_local_one() {
    let p = plan_of(&[
        node("a", 1),
        node("b", 2),
        with(node("c", 3), |v| v.pod_cidrs = vec!["10.244.2.0/23".into()]),
        with(node("d", 4), |v| {
            v.pod_cidrs = vec!["10.244.1.128/25".into()]
        }),
        node("e", 5),
    ]);
    assert_eq!(peers(&p), ["e"]);
    assert_eq!(reasons(&p, "b"), ["OverlappingPodCIDR"]);
    assert_eq!(reasons(&p, "c"), ["OverlappingPodCIDR"]);
    assert_eq!(reasons(&p, "d"), ["OverlappingPodCIDR"]);
    assert!(p.rejected["d"][0].to_string().contains("local node"));
    assert!(p.local.is_some(), "the local node keeps its own CIDR");
}

#[test]
fn duplicate_keys_exclude_every_holder_including_a_copy_of_the_local_key() {
    let p = plan_of(&[
        node("a", 1),
        set(node("b", 2), annotation::PUBLIC_KEY, &key(3).to_base64()),
        node("c", 3),
        set(node("d", 4), annotation::PUBLIC_KEY, &key(1).to_base64()),
        node("e", 5),
    ]);
    assert_eq!(peers(&p), ["e"]);
    assert_eq!(reasons(&p, "b"), ["DuplicatePublicKey"]);
    assert_eq!(reasons(&p, "c"), ["DuplicatePublicKey"]);
    assert_eq!(p.rejected["d"], vec![Problem::PublicKeyOfThisNode]);
}

#[test]
fn spec_pod_cidrs_win_over_a_disagreeing_annotation() {
    let p = plan_of(&[
        node("a", 1),
        set(node("b", 2), annotation::POD_CIDRS, "10.244.1.0/24"),
    ]);
    assert_eq!(
        p.peers["b"].allowed_ips,
        vec!["10.244.2.0/24".parse::<IpNet>().unwrap()],
        "spec wins, no overlap with a"
    );
    assert_eq!(p.warnings["b"].len(), 1);
    assert_eq!(p.warnings["b"][0].reason(), "PodCIDRAnnotationIgnored");
    // Without spec.podCIDRs the annotation is used, with a warning.
    let p = plan_of(&[node("a", 1), with(node("b", 2), |v| v.pod_cidrs.clear())]);
    assert_eq!(
        p.peers["b"].allowed_ips,
        vec!["10.244.2.0/24".parse::<IpNet>().unwrap()]
    );
    assert_eq!(p.warnings["b"][0].reason(), "PodCIDRsFromAnnotation");
}

#[test]
fn persistent_keepalive_comes_from_the_annotation_or_the_default() {
    let cfg = MeshConfig {
        persistent_keepalive: Some(25),
        ..cfg()
    };
    let views = [
        node("a", 1),
        node("b", 2),
        set(node("c", 3), annotation::PERSISTENT_KEEPALIVE, "10"),
        set(node("d", 4), annotation::PERSISTENT_KEEPALIVE, "0"),
        set(node("e", 5), annotation::PERSISTENT_KEEPALIVE, "often"),
    ];
    let parsed: Vec<ParsedNode> = views.iter().map(|v| parse(v, &cfg)).collect();
    let p = plan("a", Some(&key(1)), &parsed, NO_PEERS, &cfg);
    let ka: Vec<Option<u16>> = p.peers.values().map(|p| p.persistent_keepalive).collect();
    assert_eq!(ka, [Some(25), Some(10), None, Some(25)]);
    assert_eq!(p.warnings["e"][0].reason(), "InvalidPersistentKeepalive");
}

#[test]
fn a_deleted_node_disappears_from_peers_and_routes() {
    let before = plan_of(&[node("a", 1), node("b", 2), node("c", 3)]);
    let after = plan_of(&[node("a", 1), node("c", 3)]);
    assert_eq!(peers(&before), ["b", "c"]);
    assert_eq!(peers(&after), ["c"]);
    assert!(after.routes.iter().all(|r| r.node != "b"));
    assert_ne!(before, after);
}

#[test]
fn dual_stack_nodes_get_a_route_per_family_with_a_matching_source() {
    let ds = |name: &str, i: u8| {
        with(node(name, i), |v| {
            v.pod_cidrs.push(format!("fd00:10:244:{i}::/64"))
        })
    };
    let p = plan_of(&[ds("a", 1), ds("b", 2), node("c", 3)]);
    let routes: Vec<String> = p
        .routes
        .iter()
        .map(|r| format!("{} {:?}", r.dst, r.src.map(|s| s.to_string())))
        .collect();
    assert_eq!(
        routes,
        [
            "10.244.2.0/24 Some(\"10.244.1.1\")",
            "10.244.3.0/24 Some(\"10.244.1.1\")",
            "fd00:10:244:2::/64 Some(\"fd00:10:244:1::1\")",
        ]
    );
    assert_eq!(p.peers["b"].allowed_ips.len(), 2);
}

#[test]
fn the_local_node_without_pod_cidrs_has_no_cni_config_yet() {
    let p = plan_of(&[with(node("a", 1), |v| v.pod_cidrs.clear()), node("b", 2)]);
    // The annotation fallback gives "a" a CIDR; with neither, it has none.
    assert!(p.local.is_some());
    let p = plan_of(&[
        with(unset(node("a", 1), annotation::POD_CIDRS), |v| {
            v.pod_cidrs.clear()
        }),
        node("b", 2),
    ]);
    assert!(p.local.is_none() && p.cni_config(&cfg()).is_none());
    assert_eq!(peers(&p), ["b"], "peers are still computed");
    assert!(p.routes.iter().all(|r| r.src.is_none()));
}

#[test]
fn the_advertisement_uses_the_address_type_the_external_ip_and_spec() {
    let cfg = cfg();
    let v = with(node("a", 1), |v| {
        v.addresses = vec![
            ("ExternalIP".into(), "203.0.113.1".into()),
            ("InternalIP".into(), "192.0.2.1".into()),
        ]
    });
    let ad = advertise(&v, &key(1), &cfg).unwrap();
    let get = |ad: &Advertisement, k: &str| ad.annotations()[k].clone();
    assert_eq!(
        get(&ad, annotation::ENDPOINT).as_deref(),
        Some("192.0.2.1:51820")
    );
    assert_eq!(
        get(&ad, annotation::PUBLIC_ENDPOINT).as_deref(),
        Some("203.0.113.1:51820"),
        "the ExternalIP is the public endpoint"
    );
    assert_eq!(
        get(&ad, annotation::POD_CIDRS).as_deref(),
        Some("10.244.1.0/24")
    );
    assert_eq!(get(&ad, annotation::PUBLIC_KEY), Some(key(1).to_base64()));
    assert_eq!(get(&ad, annotation::DISCOVERED_ENDPOINTS), None);
    let ext = MeshConfig {
        address_type: crate::model::AddressType::ExternalIP,
        listen_port: 4500,
        ..cfg.clone()
    };
    let endpoint = |ad: Advertisement| ad.endpoint.map(|e| e.to_string());
    assert_eq!(
        endpoint(advertise(&v, &key(1), &ext).unwrap()).as_deref(),
        Some("203.0.113.1:4500")
    );
    let v6 = with(v.clone(), |v| {
        v.addresses = vec![("InternalIP".into(), "2001:db8::1".into())]
    });
    assert_eq!(
        endpoint(advertise(&v6, &key(1), &cfg).unwrap()).as_deref(),
        Some("[2001:db8::1]:51820")
    );
    // The administrator's force-endpoint is read from its own annotation: the node keeps
    // publishing its own address, or none when it has none.
    let forced = set(v.clone(), annotation::FORCE_ENDPOINT, "vpn.example.org:443");
    assert_eq!(
        endpoint(advertise(&forced, &key(1), &cfg).unwrap()).as_deref(),
        Some("192.0.2.1:51820")
    );
    let forced_only = with(forced.clone(), |v| v.addresses.clear());
    assert_eq!(
        endpoint(advertise(&forced_only, &key(1), &cfg).unwrap()),
        None
    );
    let no_addr = with(v.clone(), |v| v.addresses.clear());
    assert_eq!(
        advertise(&no_addr, &key(1), &cfg).unwrap_err().reason(),
        "NoNodeAddress"
    );
    let no_spec = with(v.clone(), |v| v.pod_cidrs.clear());
    assert_eq!(
        advertise(&no_spec, &key(1), &cfg).unwrap_err().reason(),
        "NoPodCIDRs"
    );
    let published = set(v.clone(), annotation::PUBLIC_ENDPOINT, "203.0.113.1:51820");
    assert!(
        ad.is_published_on(&published),
        "the node carries exactly these annotations"
    );
    assert!(!ad.is_published_on(&v), "the public endpoint is missing");
    assert!(
        !ad.is_published_on(&set(
            published.clone(),
            annotation::NO_DIRECT_PATH,
            "[\"b\"]"
        )),
        "a stale annotation must go"
    );
}

proptest! {
    /// Whatever order the nodes arrive in (and whatever conflicts they carry), the plan
    /// is the same.
    #[test]
    fn the_plan_does_not_depend_on_node_order(
        specs in proptest::collection::vec((0u8..6, 0u8..6, any::<bool>()), 2..12),
        seed in any::<u64>(),
    ) {
        // Node i uses key k and CIDR c; small ranges force duplicate keys and overlaps.
        let views: Vec<NodeView> = specs.iter().enumerate().map(|(i, (k, c, bad))| {
            let v = node(&format!("n{i}"), 10 + k);
            let v = with(v, |v| v.pod_cidrs = vec![format!("10.244.{}.0/24", 20 + c)]);
            if *bad { set(v, annotation::ENDPOINT, "nope") } else { v }
        }).collect();
        let cfg = cfg();
        let compute = |order: &[NodeView]| {
            let parsed: Vec<ParsedNode> = order.iter().map(|v| parse(v, &cfg)).collect();
            plan("n0", Some(&key(99)), &parsed, NO_PEERS, &cfg)
        };
        let base = compute(&views);
        let mut shuffled = views.clone();
        // A cheap deterministic shuffle from the seed.
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let other = compute(&shuffled);
        prop_assert_eq!(&base, &other);
        prop_assert_eq!(&base.rejected, &other.rejected);
        // And no two peers share a key or an overlapping CIDR.
        let keys: std::collections::BTreeSet<_> = base.peers.values().map(|p| p.public_key).collect();
        prop_assert_eq!(keys.len(), base.peers.len());
    }
}

fn peer_view(
    name: &str,
    key_n: u8,
    allowed: &[&str],
    endpoint: Option<&str>,
) -> crate::mesh::PeerView {
    crate::mesh::PeerView {
        name: name.into(),
        public_key: Some(key(key_n).to_base64()),
        allowed_ips: allowed.iter().map(|s| s.to_string()).collect(),
        endpoint: endpoint.map(String::from),
        persistent_keepalive: Some(25),
        allowed_destinations: Vec::new(),
    }
}

#[test]
fn malformed_peer_specs_are_refused_with_the_field_and_reason() {
    use crate::mesh::parse_peer;
    let ok = parse_peer(&peer_view(
        "laptop",
        50,
        &["10.99.0.5/32", "fd00:99::5/128"],
        Some("laptop.example.com:51820"),
    ));
    assert!(ok.problems.is_empty(), "{:?}", ok.problems);
    assert_eq!(ok.persistent_keepalive, Some(25));
    let cases: Vec<(&str, crate::mesh::PeerView, &str)> = vec![
        (
            "no key",
            crate::mesh::PeerView {
                public_key: None,
                ..peer_view("p", 50, &["10.99.0.5/32"], None)
            },
            "spec.publicKey: missing",
        ),
        (
            "bad key",
            crate::mesh::PeerView {
                public_key: Some("abc".into()),
                ..peer_view("p", 50, &["10.99.0.5/32"], None)
            },
            "spec.publicKey",
        ),
        (
            "no CIDR",
            peer_view("p", 50, &[], None),
            "at least one CIDR",
        ),
        (
            "not a CIDR",
            peer_view("p", 50, &["10.99.0.5"], None),
            "is not a CIDR",
        ),
        (
            "host bits",
            peer_view("p", 50, &["10.99.0.5/24"], None),
            "host bits set",
        ),
        (
            "bad endpoint",
            peer_view("p", 50, &["10.99.0.5/32"], Some("nowhere")),
            "spec.endpoint",
        ),
        (
            "keepalive too large",
            crate::mesh::PeerView {
                persistent_keepalive: Some(70000),
                ..peer_view("p", 50, &["10.99.0.5/32"], None)
            },
            "spec.persistentKeepalive",
        ),
    ];
    for (what, view, want) in cases {
        let p = parse_peer(&view);
        let text: Vec<String> = p.problems.iter().map(ToString::to_string).collect();
        assert!(
            text.iter().any(|t| t.contains(want)),
            "{what}: {text:?} lacks {want:?}"
        );
    }
}

#[test]
fn external_peers_are_peers_routed_guarded_and_checked_against_nodes() {
    use crate::mesh::parse_peer;
    let cfg = cfg();
    let nodes: Vec<ParsedNode> = [node("a", 1), node("b", 2)]
        .iter()
        .map(|v| parse(v, &cfg))
        .collect();
    let peers: Vec<_> = [
        peer_view("laptop", 50, &["10.99.0.5/32"], Some("203.0.113.10:51820")),
        peer_view("roamer", 51, &["10.99.0.6/32"], None),
        peer_view("thief", 52, &["10.244.2.128/25"], None),
        peer_view("copycat", 2, &["10.99.0.7/32"], None),
        peer_view("me-too", 1, &["10.99.0.8/32"], None),
        peer_view("broken", 53, &[], None),
    ]
    .iter()
    .map(parse_peer)
    .collect();
    let p = plan("a", Some(&key(1)), &nodes, &peers, &cfg);
    assert_eq!(p.external.keys().collect::<Vec<_>>(), ["laptop", "roamer"]);
    assert_eq!(
        p.external["laptop"]
            .endpoint
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("203.0.113.10:51820")
    );
    assert_eq!(
        p.external["roamer"].endpoint, None,
        "a roaming peer is reached where it comes from"
    );
    assert!(
        p.routes
            .iter()
            .any(|r| r.dst.to_string() == "10.99.0.5/32" && r.node == "peer/laptop")
    );
    assert!(
        p.firewall
            .guarded
            .contains(&"10.99.0.5/32".parse().unwrap()),
        "never in clear, never masqueraded"
    );
    // Node ranges and keys are authoritative: a Peer claiming them is refused and the
    // node keeps them.
    assert_eq!(reasons(&p, "peer/thief"), ["OverlappingPodCIDR"]);
    assert!(
        p.rejected["peer/thief"][0]
            .to_string()
            .contains("node b; the node keeps it")
    );
    assert_eq!(reasons(&p, "peer/copycat"), ["DuplicatePublicKey"]);
    assert_eq!(
        p.rejected["peer/copycat"],
        vec![Problem::PublicKeyOfNode { node: "b".into() }]
    );
    assert!(
        p.peers.contains_key("b"),
        "the node is not knocked out by Peers"
    );
    assert_eq!(
        p.rejected["peer/me-too"],
        vec![Problem::PublicKeyOfThisNode]
    );
    assert_eq!(reasons(&p, "peer/broken"), ["InvalidPeerSpec"]);

    // Two Peers with one key, or overlapping ranges: neither is used.
    let twins: Vec<_> = [
        peer_view("x", 60, &["10.99.1.0/24"], None),
        peer_view("y", 60, &["10.99.2.0/24"], None),
        peer_view("z", 61, &["10.99.1.7/32"], None),
    ]
    .iter()
    .map(parse_peer)
    .collect();
    let p = plan("a", Some(&key(1)), &nodes, &twins, &cfg);
    assert!(p.external.is_empty(), "{:?}", p.external.keys());
    assert_eq!(
        reasons(&p, "peer/x"),
        ["DuplicatePublicKey", "OverlappingPodCIDR"]
    );
    assert_eq!(reasons(&p, "peer/z"), ["OverlappingPodCIDR"]);

    // Found by fuzzing: two nodes publishing one key (both refused) and a Peer using it.
    // The Peer is told the same node whatever the order the nodes come in.
    let shared = |name, i| set(node(name, i), annotation::PUBLIC_KEY, &key(9).to_base64());
    let thief = [parse_peer(&peer_view("t", 9, &["10.99.3.0/24"], None))];
    for (first, second) in [(("b", 2), ("c", 3)), (("c", 3), ("b", 2))] {
        let order = [first.0, second.0];
        let nodes: Vec<ParsedNode> = [
            node("a", 1),
            shared(first.0, first.1),
            shared(second.0, second.1),
        ]
        .iter()
        .map(|v| parse(v, &cfg))
        .collect();
        let p = plan("a", Some(&key(1)), &nodes, &thief, &cfg);
        assert_eq!(
            p.rejected["peer/t"],
            vec![Problem::PublicKeyOfNode { node: "b".into() }],
            "order {order:?}"
        );
    }
}

#[test]
fn a_node_with_both_families_publishes_an_endpoint_of_each_unless_told_one() {
    let v = with(node("a", 1), |v| {
        v.addresses = vec![
            ("InternalIP".into(), "192.0.2.1".into()),
            ("InternalIP".into(), "2001:db8::1".into()),
            ("InternalIP".into(), "2001:db8::99".into()),
        ]
    });
    let ad = advertise(&v, &key(1), &cfg()).unwrap();
    let ann = ad.annotations();
    assert_eq!(
        ann[annotation::ENDPOINT].as_deref(),
        Some("192.0.2.1:51820"),
        "API order, for older agents"
    );
    assert_eq!(
        ann[annotation::ENDPOINTS].as_deref(),
        Some("192.0.2.1:51820,[2001:db8::1]:51820"),
        "one per family"
    );
    for (family, want) in [
        (crate::model::EndpointFamily::Ipv6, "[2001:db8::1]:51820"),
        (crate::model::EndpointFamily::Ipv4, "192.0.2.1:51820"),
    ] {
        let c = MeshConfig {
            endpoint_family: family,
            ..cfg()
        };
        let ad = advertise(&v, &key(1), &c).unwrap();
        assert_eq!(
            ad.annotations()[annotation::ENDPOINT].as_deref(),
            Some(want)
        );
        assert_eq!(ad.annotations()[annotation::ENDPOINTS], None);
    }
    let v4_only = with(v.clone(), |v| v.addresses.truncate(1));
    let c = MeshConfig {
        endpoint_family: crate::model::EndpointFamily::Ipv6,
        ..cfg()
    };
    let err = advertise(&v4_only, &key(1), &c).unwrap_err();
    assert_eq!(err.reason(), "NoNodeAddress");
    assert!(err.to_string().contains("IPv6 InternalIP"), "{err}");
}
