//! Table tests of path choice over the multi-cloud cluster of issue #14: a1, a2 in
//! cloud-a (1:1 public addresses), b1 in cloud-b, h1 and h2 at home behind NAT.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::mesh::{MeshConfig, MeshPlan, ParsedNode, parse, plan_with};
use crate::model::{NodeView, annotation, label};

const NONE: &[crate::mesh::ParsedPeer] = &[];

fn key(n: u8) -> PublicKey {
    let mut b = [n; 32];
    b[0] = 0x40 | n;
    PublicKey::from_bytes(b)
}

/// (name, key index, private address, public address, region)
const CLUSTER: &[(&str, u8, &str, Option<&str>, &str)] = &[
    ("a1", 1, "172.31.1.2", Some("203.0.113.101"), "cloud-a"),
    ("a2", 2, "172.31.1.3", Some("203.0.113.102"), "cloud-a"),
    ("b1", 3, "172.31.2.2", Some("203.0.113.111"), "cloud-b"),
    ("h1", 4, "192.168.1.2", None, "home1"),
    ("h2", 5, "192.168.2.2", None, "home2"),
];

fn view(name: &str) -> NodeView {
    let &(_, i, private, public, region) = CLUSTER
        .iter()
        .find(|c| c.0 == name)
        .expect("a node of the table");
    let mut annotations = BTreeMap::from([
        (annotation::PUBLIC_KEY.to_string(), key(i).to_base64()),
        (annotation::ENDPOINT.to_string(), format!("{private}:51820")),
        (
            annotation::POD_CIDRS.to_string(),
            format!("10.244.{i}.0/24"),
        ),
    ]);
    if let Some(p) = public {
        annotations.insert(annotation::PUBLIC_ENDPOINT.into(), format!("{p}:51820"));
    }
    NodeView {
        name: name.into(),
        annotations,
        pod_cidrs: vec![format!("10.244.{i}.0/24")],
        addresses: vec![("InternalIP".into(), private.into())],
        labels: BTreeMap::from([(label::REGION.into(), region.into())]),
    }
}

fn with_annotation(mut v: NodeView, k: &str, val: &str) -> NodeView {
    v.annotations.insert(k.into(), val.into());
    v
}

fn parsed(views: &[NodeView]) -> Vec<ParsedNode> {
    views
        .iter()
        .map(|v| parse(v, &MeshConfig::default()))
        .collect()
}

fn all() -> Vec<NodeView> {
    CLUSTER.iter().map(|c| view(c.0)).collect()
}

fn plan_of(local: &str, views: &[NodeView], observed: &Observations) -> MeshPlan {
    let nodes = parsed(views);
    let i = CLUSTER.iter().find(|c| c.0 == local).unwrap().1;
    plan_with(
        local,
        Some(&key(i)),
        &nodes,
        NONE,
        &MeshConfig::default(),
        observed,
    )
}

/// `h` seen behind its NAT at `addr` by the public nodes.
fn discovered_by_public_nodes(views: &mut [NodeView], h: &str, addr: &str) {
    let i = CLUSTER.iter().find(|c| c.0 == h).unwrap().1;
    for v in views
        .iter_mut()
        .filter(|v| v.name.starts_with('a') || v.name == "b1")
    {
        let mut map: BTreeMap<String, String> = v
            .annotation(annotation::DISCOVERED_ENDPOINTS)
            .map(|t| serde_json::from_str(t).unwrap())
            .unwrap_or_default();
        map.insert(key(i).to_base64(), addr.into());
        v.annotations.insert(
            annotation::DISCOVERED_ENDPOINTS.into(),
            serde_json::to_string(&map).unwrap(),
        );
    }
}

#[test]
fn each_pair_uses_the_endpoint_its_locations_call_for() {
    let mut views = all();
    discovered_by_public_nodes(&mut views, "h1", "203.0.113.121:51820");
    discovered_by_public_nodes(&mut views, "h2", "203.0.113.131:40001");
    // from, to, endpoint, source
    let table: &[(&str, &str, &str, EndpointSource)] = &[
        ("a1", "a2", "172.31.1.3:51820", EndpointSource::Private),
        ("a2", "a1", "172.31.1.2:51820", EndpointSource::Private),
        ("a1", "b1", "203.0.113.111:51820", EndpointSource::Public),
        ("b1", "a2", "203.0.113.102:51820", EndpointSource::Public),
        ("h1", "a1", "203.0.113.101:51820", EndpointSource::Public),
        (
            "a1",
            "h1",
            "203.0.113.121:51820",
            EndpointSource::Discovered,
        ),
        (
            "b1",
            "h2",
            "203.0.113.131:40001",
            EndpointSource::Discovered,
        ),
        (
            "h1",
            "h2",
            "203.0.113.131:40001",
            EndpointSource::Discovered,
        ),
        (
            "h2",
            "h1",
            "203.0.113.121:51820",
            EndpointSource::Discovered,
        ),
    ];
    for (from, to, endpoint, source) in table {
        let p = plan_of(from, &views, &Observations::default());
        let peer = &p.peers[*to];
        assert_eq!(
            (
                peer.endpoint.as_ref().unwrap().to_string().as_str(),
                peer.endpoint_source
            ),
            (*endpoint, *source),
            "{from} -> {to}"
        );
    }
}

#[test]
fn forced_beats_public_beats_observed_beats_discovered_beats_private_across_locations() {
    let observed_h2: SocketAddr = "203.0.113.131:40007".parse().unwrap();
    let own = Observations {
        endpoints: BTreeMap::from([(key(5), observed_h2)]),
    };
    let mut views = all();
    discovered_by_public_nodes(&mut views, "h2", "203.0.113.131:40001");
    let case = |views: &[NodeView], own: &Observations| {
        let p = plan_of("b1", views, own);
        let peer = &p.peers["h2"];
        (
            peer.endpoint.as_ref().unwrap().to_string(),
            peer.endpoint_source,
        )
    };
    // Nothing but the private address: the last resort.
    assert_eq!(
        case(&all(), &Observations::default()),
        ("192.168.2.2:51820".into(), EndpointSource::Private)
    );
    assert_eq!(
        case(&views, &Observations::default()),
        ("203.0.113.131:40001".into(), EndpointSource::Discovered)
    );
    assert_eq!(
        case(&views, &own),
        ("203.0.113.131:40007".into(), EndpointSource::Observed),
        "a node prefers its own observation"
    );
    views[4] = with_annotation(
        views[4].clone(),
        annotation::PUBLIC_ENDPOINT,
        "203.0.113.132:51820",
    );
    assert_eq!(
        case(&views, &own),
        ("203.0.113.132:51820".into(), EndpointSource::Public)
    );
    views[4] = with_annotation(
        views[4].clone(),
        annotation::FORCE_ENDPOINT,
        "home2.example.net:51820",
    );
    assert_eq!(
        case(&views, &own),
        ("home2.example.net:51820".into(), EndpointSource::Forced)
    );
    // Inside a location, the private address wins over all of them.
    let p = plan_of("a1", &views, &own);
    assert_eq!(p.peers["a2"].endpoint_source, EndpointSource::Private);
}

#[test]
fn the_published_discovery_is_the_majority_and_nobody_vouches_for_itself() {
    let mut views = all();
    discovered_by_public_nodes(&mut views, "h2", "203.0.113.131:40001");
    // One forger says otherwise; h2 itself claims a third address.
    views[3] = with_annotation(
        views[3].clone(),
        annotation::DISCOVERED_ENDPOINTS,
        &format!("{{\"{}\": \"198.51.100.66:666\"}}", key(5).to_base64()),
    );
    views[4] = with_annotation(
        views[4].clone(),
        annotation::DISCOVERED_ENDPOINTS,
        &format!("{{\"{}\": \"198.51.100.77:777\"}}", key(5).to_base64()),
    );
    let nodes = parsed(&views);
    let d = Discoveries::collect(&nodes);
    assert_eq!(d.of(&key(5)), Some("203.0.113.131:40001".parse().unwrap()));
    // A tie goes to the alphabetically first observer.
    let mut tie = all();
    tie[3] = with_annotation(
        tie[3].clone(),
        annotation::DISCOVERED_ENDPOINTS,
        &format!("{{\"{}\": \"203.0.113.131:1\"}}", key(5).to_base64()),
    );
    tie[2] = with_annotation(
        tie[2].clone(),
        annotation::DISCOVERED_ENDPOINTS,
        &format!("{{\"{}\": \"203.0.113.131:2\"}}", key(5).to_base64()),
    );
    let nodes = parsed(&tie);
    assert_eq!(
        Discoveries::collect(&nodes).of(&key(5)),
        Some("203.0.113.131:2".parse().unwrap()),
        "b1 before h1"
    );
}

#[test]
fn a_node_behind_nat_keeps_its_mappings_open_towards_other_locations_only() {
    let mut views = all();
    let flat = plan_of("h1", &views, &Observations::default());
    assert!(
        flat.peers
            .values()
            .all(|p| p.persistent_keepalive.is_none()),
        "not known to be behind NAT: no keepalive, as before"
    );
    discovered_by_public_nodes(&mut views, "h1", "203.0.113.121:51820");
    let p = plan_of("h1", &views, &Observations::default());
    for (name, peer) in &p.peers {
        assert_eq!(peer.persistent_keepalive, Some(NAT_KEEPALIVE), "{name}");
    }
    let p = plan_of("a1", &views, &Observations::default());
    assert!(
        p.peers.values().all(|p| p.persistent_keepalive.is_none()),
        "a node with a public address needs none"
    );
}

#[test]
fn a_cluster_without_locations_or_public_addresses_behaves_as_before() {
    // Today's flat cluster: no labels, no ExternalIP, nobody behind NAT.
    let views: Vec<NodeView> = all()
        .into_iter()
        .map(|mut v| {
            v.labels.clear();
            v.annotations.remove(annotation::PUBLIC_ENDPOINT);
            v
        })
        .collect();
    let p = plan_of("a1", &views, &Observations::default());
    for (name, peer) in &p.peers {
        assert_eq!(peer.endpoint_source, EndpointSource::Private, "{name}");
        assert_eq!(peer.persistent_keepalive, None, "{name}");
        assert_eq!(peer.via, None, "{name}");
        assert_eq!(peer.allowed_ips.len(), 1, "{name}");
    }
}

#[test]
fn a_pair_behind_nats_that_cannot_punch_through_is_relayed_the_same_way_by_everyone() {
    let mut views = all();
    discovered_by_public_nodes(&mut views, "h1", "203.0.113.121:51820");
    discovered_by_public_nodes(&mut views, "h2", "203.0.113.131:40001");
    let direct = plan_of("h1", &views, &Observations::default());
    assert_eq!(direct.peers["h2"].via, None, "hole punching first");
    assert_eq!(direct.peers["h2"].allowed_ips.len(), 1);

    // h2 published that it cannot reach h1 directly.
    views[4] = with_annotation(views[4].clone(), annotation::NO_DIRECT_PATH, "[\"h1\"]");
    let from_h1 = plan_of("h1", &views, &Observations::default());
    let from_h2 = plan_of("h2", &views, &Observations::default());
    let relay = from_h1.peers["h2"].via.clone().expect("relayed");
    assert_eq!(
        from_h2.peers["h1"].via.as_deref(),
        Some(relay.as_str()),
        "both agree"
    );
    assert!(["a1", "a2", "b1"].contains(&relay.as_str()));
    // h1 sends h2's range to the relay, and accepts h2's packets from it.
    assert!(from_h1.peers["h2"].allowed_ips.is_empty(), "probing only");
    let h2_range: ipnet::IpNet = "10.244.5.0/24".parse().unwrap();
    assert!(from_h1.peers[&relay].allowed_ips.contains(&h2_range));
    let h1_range: ipnet::IpNet = "10.244.4.0/24".parse().unwrap();
    assert!(from_h2.peers[&relay].allowed_ips.contains(&h1_range));
    // The relay's own plan is a plain full mesh: it forwards between its peers.
    let from_relay = plan_of(&relay, &views, &Observations::default());
    assert!(from_relay.peers.values().all(|p| p.via.is_none()));
    // Nobody else relays: a1 and b1 still reach h1 and h2 directly.
    let from_b1 = plan_of("b1", &views, &Observations::default());
    assert!(from_b1.peers.values().all(|p| p.via.is_none()));
    // Still no overlapping allowed IPs anywhere.
    for p in [&from_h1, &from_h2] {
        let mut all: Vec<ipnet::IpNet> = p
            .peers
            .values()
            .flat_map(|p| p.allowed_ips.clone())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}

#[test]
fn the_relay_is_in_one_of_the_pair_s_locations_when_possible_and_spread_otherwise() {
    let nodes = parsed(&all());
    let by = |n: &str| nodes.iter().find(|p| p.name == n).unwrap();
    // h1 joins cloud-a's location (say an office of the same site): a cloud-a relay.
    let mut h1_at_a = view("h1");
    h1_at_a
        .labels
        .insert(label::LOCATION.into(), "cloud-a".into());
    let h1_at_a = parse(&h1_at_a, &MeshConfig::default());
    let r = relay_for(&h1_at_a, by("h2"), &nodes).unwrap();
    assert!(r.name.starts_with('a'), "{}", r.name);
    // Without a shared location, any public node; the answer does not depend on the
    // order of candidates nor on which side asks.
    let forward = relay_for(by("h1"), by("h2"), &nodes).unwrap().name.clone();
    let mut reversed: Vec<&ParsedNode> = nodes.iter().collect();
    reversed.reverse();
    assert_eq!(
        relay_for(by("h2"), by("h1"), reversed).unwrap().name,
        forward
    );
    // Nobody with a public endpoint: no relay.
    let homes: Vec<&ParsedNode> = nodes.iter().filter(|n| n.name.starts_with('h')).collect();
    assert!(relay_for(by("h1"), by("h2"), homes).is_none());
    // Many pairs spread over the relays.
    let mut used = BTreeSet::new();
    for i in 0..40 {
        let mut a = by("h1").clone();
        a.name = format!("home-{i}");
        used.insert(relay_for(&a, by("h2"), &nodes).unwrap().name.clone());
    }
    assert_eq!(used.len(), 3, "{used:?}");
}

#[test]
fn path_annotations_are_bounded_and_garbage_is_ignored_with_a_warning() {
    let big: BTreeMap<String, String> = (0..2000u32)
        .map(|i| {
            let mut b = [7u8; 32];
            b[..4].copy_from_slice(&i.to_le_bytes());
            (
                PublicKey::from_bytes(b).to_base64(),
                "203.0.113.9:1".to_string(),
            )
        })
        .collect();
    let text = serde_json::to_string(&big).unwrap();
    let cases: Vec<(&str, String, usize)> = vec![
        ("too big", text.clone(), 0),
        ("not JSON", "{".into(), 0),
        ("wrong shape", "[1,2]".into(), 0),
        (
            "bad entries skipped",
            format!(
                "{{\"{}\": \"203.0.113.9:1\", \"x\": \"y\", \"{}\": \"nope\"}}",
                key(9).to_base64(),
                key(8).to_base64()
            ),
            1,
        ),
    ];
    for (what, value, kept) in cases {
        let v = with_annotation(view("a1"), annotation::DISCOVERED_ENDPOINTS, &value);
        let p = parse(&v, &MeshConfig::default());
        assert_eq!(p.discovered.len(), kept, "{what}");
        assert!(
            p.problems.is_empty(),
            "{what}: never a reason to leave a node out"
        );
        assert!(
            p.warnings.iter().any(|w| w.reason() == "InvalidAnnotation"),
            "{what}"
        );
    }
    assert!(text.len() > MAX_ANNOTATION_BYTES);
    // What a node publishes stays within the bounds.
    let found: BTreeMap<PublicKey, SocketAddr> = (0..2000u32)
        .map(|i| {
            let mut b = [7u8; 32];
            b[..4].copy_from_slice(&i.to_le_bytes());
            (
                PublicKey::from_bytes(b),
                "203.0.113.9:65535".parse().unwrap(),
            )
        })
        .collect();
    let published = discovered_annotation(&found).unwrap();
    assert!(
        published.len() <= MAX_ANNOTATION_BYTES,
        "{}",
        published.len()
    );
    let back = parse(
        &with_annotation(view("a1"), annotation::DISCOVERED_ENDPOINTS, &published),
        &MeshConfig::default(),
    );
    assert_eq!(back.discovered.len(), MAX_ENTRIES);
    let names: BTreeSet<String> = (0..1000).map(|i| format!("node-{i}")).collect();
    let list = no_direct_annotation(&names).unwrap();
    let back = parse(
        &with_annotation(view("a1"), annotation::NO_DIRECT_PATH, &list),
        &MeshConfig::default(),
    );
    assert_eq!(back.no_direct.len(), MAX_ENTRIES);
}

#[test]
fn direct_paths_are_given_up_after_the_wait_and_taken_again_when_packets_arrive() {
    let d = |trying: u64, since: Option<u64>, handshake: Option<u64>, has: bool| DirectPath {
        trying_for: Duration::from_secs(trying),
        since_received: since.map(Duration::from_secs),
        since_handshake: handshake.map(Duration::from_secs),
        has_endpoint: has,
    };
    // (what, path, listed before, listed after)
    let table: &[(&str, DirectPath, bool, bool)] = &[
        ("just started", d(1, None, None, true), false, false),
        ("tried long enough", d(5, None, None, true), false, true),
        ("nothing to try", d(0, None, None, false), false, true),
        ("working", d(60, Some(3), Some(50), true), false, false),
        (
            "the quiet side of a working pair: only its own keepalives go out",
            d(60, Some(40), Some(50), true),
            false,
            false,
        ),
        (
            "went silent, no rekey",
            d(300, Some(140), Some(140), true),
            false,
            true,
        ),
        ("relayed, still silent", d(60, None, None, true), true, true),
        (
            "relayed, a direct handshake succeeded",
            d(60, None, Some(2), true),
            true,
            false,
        ),
        ("relayed, answered", d(60, Some(1), None, true), true, false),
    ];
    for (what, path, before, after) in table {
        let current: BTreeSet<String> = if *before {
            BTreeSet::from(["x".to_string()])
        } else {
            BTreeSet::new()
        };
        let got = no_direct_paths(&current, &BTreeMap::from([("x".to_string(), *path)]));
        assert_eq!(got.contains("x"), *after, "{what}");
    }
}

#[test]
fn a_pair_uses_the_family_both_nodes_have_ipv6_first_or_says_there_is_none() {
    let node_with = |name: &str, i: u8, endpoints: &[&str]| {
        let mut v = view(name);
        v.labels.clear();
        v.annotations.remove(annotation::PUBLIC_ENDPOINT);
        v.annotations
            .insert(annotation::ENDPOINT.into(), endpoints[0].into());
        if endpoints.len() > 1 {
            v.annotations
                .insert(annotation::ENDPOINTS.into(), endpoints.join(","));
        }
        let _ = i;
        v
    };
    const V4: &[&str] = &["192.0.2.1:51820"];
    const V6: &[&str] = &["[2001:db8::1]:51820"];
    const BOTH: &[&str] = &["192.0.2.1:51820", "[2001:db8::1]:51820"];
    use EndpointFamily::{Auto, Ipv4, Ipv6};
    // local, peer, setting, the family used (None: a problem of the pair)
    type Case = (
        &'static [&'static str],
        &'static [&'static str],
        EndpointFamily,
        Option<&'static str>,
    );
    let table: &[Case] = &[
        (BOTH, BOTH, Auto, Some("[2001:db8::2]:51820")),
        (V4, BOTH, Auto, Some("192.0.2.2:51820")),
        (BOTH, V4, Auto, Some("192.0.2.2:51820")),
        (V6, BOTH, Auto, Some("[2001:db8::2]:51820")),
        (V6, V6, Auto, Some("[2001:db8::2]:51820")),
        (BOTH, BOTH, Ipv4, Some("192.0.2.2:51820")),
        (BOTH, BOTH, Ipv6, Some("[2001:db8::2]:51820")),
        (V4, V6, Auto, None),
        (V6, V4, Auto, None),
        (BOTH, V6, Ipv4, None),
    ];
    for (local, peer, family, want) in table {
        let local_eps: Vec<String> = local
            .iter()
            .map(|e| e.replace("::1]", "::3]").replace(".1:", ".3:"))
            .collect();
        let peer_eps: Vec<String> = peer
            .iter()
            .map(|e| e.replace("::1]", "::2]").replace(".1:", ".2:"))
            .collect();
        let l: Vec<&str> = local_eps.iter().map(String::as_str).collect();
        let p: Vec<&str> = peer_eps.iter().map(String::as_str).collect();
        let views = [node_with("a1", 1, &l), node_with("b1", 3, &p)];
        let cfg = MeshConfig {
            endpoint_family: *family,
            ..MeshConfig::default()
        };
        let nodes: Vec<ParsedNode> = views.iter().map(|v| parse(v, &cfg)).collect();
        let plan = plan_with(
            "a1",
            Some(&key(1)),
            &nodes,
            NONE,
            &cfg,
            &Observations::default(),
        );
        let what = format!("{local:?} -> {peer:?} with {family:?}");
        match want {
            Some(e) => assert_eq!(
                plan.peers["b1"]
                    .endpoint
                    .as_ref()
                    .map(ToString::to_string)
                    .as_deref(),
                Some(*e),
                "{what}"
            ),
            None => {
                assert!(!plan.peers.contains_key("b1"), "{what}");
                let problem = &plan.rejected["b1"][0];
                assert_eq!(problem.reason(), "NoCommonAddressFamily", "{what}");
                assert!(
                    plan.routes.is_empty(),
                    "{what}: no route, its traffic is dropped"
                );
            }
        }
    }
}

#[test]
fn the_mtu_subtracts_the_overhead_of_the_underlay_family_in_use() {
    use crate::mesh::mtu_from_underlay;
    assert_eq!(mtu_from_underlay(&[(false, 1500)]), Some(1440));
    assert_eq!(mtu_from_underlay(&[(true, 1500)]), Some(1420));
    assert_eq!(
        mtu_from_underlay(&[(false, 1500), (true, 1500)]),
        Some(1420),
        "the larger overhead"
    );
    assert_eq!(
        mtu_from_underlay(&[(false, 9000), (true, 1500)]),
        Some(1420)
    );
    assert_eq!(mtu_from_underlay(&[]), None);
    // Under IPv6's minimum with IPv6 pods: the node hosts no pods, and says why.
    let dual = |mut v: NodeView| {
        v.pod_cidrs.push("fd00:10:244:1::/64".into());
        v
    };
    for (mtu, pods_v6, problem) in [
        (1279, true, true),
        (1280, true, false),
        (1200, false, false),
    ] {
        let cfg = MeshConfig {
            mtu,
            ..MeshConfig::default()
        };
        let v = if pods_v6 {
            dual(view("a1"))
        } else {
            view("a1")
        };
        let nodes = vec![parse(&v, &cfg)];
        let plan = plan_with(
            "a1",
            Some(&key(1)),
            &nodes,
            NONE,
            &cfg,
            &Observations::default(),
        );
        let said = plan
            .local_problems
            .iter()
            .any(|p| p.reason() == "MTUTooSmallForIPv6");
        assert_eq!(said, problem, "mtu {mtu}, IPv6 pods {pods_v6}");
        assert_eq!(plan.cni_config(&cfg).is_none(), problem);
    }
}

#[test]
fn ipv6_egress_is_masqueraded_unless_switched_off() {
    let mut v = view("a1");
    v.pod_cidrs.push("fd00:10:244:1::/64".into());
    for (on, want) in [(true, 2), (false, 1)] {
        let cfg = MeshConfig {
            masquerade_ipv6: on,
            ..MeshConfig::default()
        };
        let nodes = vec![parse(&v, &cfg)];
        let plan = plan_with(
            "a1",
            Some(&key(1)),
            &nodes,
            NONE,
            &cfg,
            &Observations::default(),
        );
        assert_eq!(
            plan.firewall.masquerade_from.len(),
            want,
            "masquerade_ipv6={on}"
        );
    }
}
