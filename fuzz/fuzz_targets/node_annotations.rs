//! What nodes and external peers publish, through the mesh's real parsers and planner.
//!
//! An input is either JSON (its first non-blank byte is `{` or `[`):
//! - a `Node` object, as the API server sends it;
//! - an array of `Node` objects;
//! - `{"nodes": [Node, ...], "peers": [Peer, ...]}` with `Peer` objects
//!   (`peers.wgmesh.io`) as the API server sends them;
//!
//! or plain text, records separated by lines `--`, one `key=value` per line: `name=`,
//! any `wgmesh.io/...=` annotation, `spec.podCIDRs=a,b`, `status.<Type>=<address>` for a
//! node; a record with a `peer=<name>` line is a `Peer` (`publicKey=`, `allowedIPs=a,b`,
//! `endpoint=`, `persistentKeepalive=`). Every value of every line also goes straight to
//! `PublicKey::from_base64`, `Endpoint::parse` and `PodSubnets::parse`.
//!
//! Nodes go through `k8s::translate::node_view` (JSON), `mesh::parse` and
//! `mesh::advertise`, peers through `k8s::peers::peer_view` (JSON) and `mesh::parse_peer`,
//! and all of them through `mesh::plan`, as the local node (the first one) computes it.
//! Checked: nothing panics; parse, advertise and the value parsers round-trip; and the
//! plan's invariants: no peer with the zero key, no two peers with one key, no two
//! peers' allowed IPs overlapping (nor the local pod CIDRs), the same plan whatever the
//! order of nodes and peers, each node's endpoint one published for it as its source
//! says, and a relayed node's ranges on its relay's peer (and its routes through it).

#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::api::DynamicObject;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use wgmesh::cni::PodSubnets;
use wgmesh::k8s::peers::peer_view;
use wgmesh::k8s::translate::node_view;
use wgmesh::key::PublicKey;
use wgmesh::mesh::{
    self, EndpointSource, MeshConfig, MeshPlan, ParsedNode, ParsedPeer, PeerView, Problem,
};
use wgmesh::model::{AddressType, Endpoint, Host, NodeView, annotation};

/// The local node's own key (base64 `BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=`): a
/// seed can make another node or a peer publish it.
const LOCAL_KEY: PublicKey = PublicKey::from_bytes([7; 32]);
/// Nodes and peers are few in a case: the plan's checks here are quadratic.
const MAX_MEMBERS: usize = 16;

/// The JSON form with nodes and peers.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Cluster {
    #[serde(default)]
    nodes: Vec<Node>,
    #[serde(default)]
    peers: Vec<DynamicObject>,
}

fuzz_target!(|data: &[u8]| {
    let (mut nodes, mut peers) = match data.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{' | b'[') => from_json(data),
        _ => from_text(&String::from_utf8_lossy(data)),
    };
    nodes.truncate(MAX_MEMBERS);
    peers.truncate(MAX_MEMBERS);
    unique_names(nodes.iter_mut().map(|n| &mut n.name), "node");
    unique_names(peers.iter_mut().map(|p| &mut p.name), "peer");

    let parsed_peers: Vec<ParsedPeer> = peers.iter().map(parse_peer).collect();
    // With and without cluster CIDRs (both branches of the checks and of the firewall),
    // endpoints from ExternalIP or InternalIP addresses.
    let with_cluster = MeshConfig {
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/48".parse().unwrap(),
        ],
        persistent_keepalive: Some(25),
        address_type: AddressType::ExternalIP,
        ..MeshConfig::default()
    };
    for cfg in [with_cluster, MeshConfig::default()] {
        let parsed: Vec<ParsedNode> = nodes.iter().map(|v| parse_node(v, &cfg)).collect();
        if let Some(local) = nodes.first() {
            check_plan(&local.name, &parsed, &parsed_peers, &cfg);
        }
    }
});

fn from_json(data: &[u8]) -> (Vec<NodeView>, Vec<PeerView>) {
    // Every annotation value straight into the value parsers too (text inputs do it
    // line by line).
    let views = |nodes: Vec<Node>| {
        let views: Vec<NodeView> = nodes.iter().map(node_view).collect();
        for v in views.iter().flat_map(|v| v.annotations.values()) {
            values(v);
        }
        views
    };
    if let Ok(cluster) = serde_json::from_slice::<Cluster>(data) {
        let peers = cluster.peers.iter().map(peer_view).collect();
        return (views(cluster.nodes), peers);
    }
    if let Ok(nodes) = serde_json::from_slice::<Vec<Node>>(data) {
        return (views(nodes), Vec::new());
    }
    match serde_json::from_slice::<Node>(data) {
        Ok(node) => (views(vec![node]), Vec::new()),
        Err(_) => (Vec::new(), Vec::new()),
    }
}

fn from_text(text: &str) -> (Vec<NodeView>, Vec<PeerView>) {
    let mut nodes = Vec::new();
    let mut peers = Vec::new();
    for record in text.split("\n--\n") {
        let mut node = NodeView::default();
        // A `peer=` line makes the record a Peer.
        let mut peer_name: Option<String> = None;
        let mut peer = PeerView::default();
        for line in record.lines() {
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            values(value);
            match key {
                "name" => node.name = value.to_string(),
                "spec.podCIDRs" => node.pod_cidrs = list(value),
                "peer" => peer_name = Some(value.to_string()),
                "publicKey" => peer.public_key = Some(value.to_string()),
                "allowedIPs" => peer.allowed_ips = list(value),
                "endpoint" => peer.endpoint = Some(value.to_string()),
                "persistentKeepalive" => peer.persistent_keepalive = value.parse().ok(),
                "allowedDestinations" => peer.allowed_destinations = list(value),
                _ => {
                    if let Some(kind) = key.strip_prefix("status.") {
                        node.addresses.push((kind.to_string(), value.to_string()));
                    } else if let Some(label) = key.strip_prefix("label.") {
                        node.labels.insert(label.to_string(), value.to_string());
                    } else if key.starts_with(annotation::PREFIX) {
                        node.annotations.insert(key.to_string(), value.to_string());
                    }
                }
            }
        }
        match peer_name {
            Some(name) => peers.push(PeerView { name, ..peer }),
            None => nodes.push(node),
        }
    }
    (nodes, peers)
}

fn list(value: &str) -> Vec<String> {
    value.split(',').map(String::from).collect()
}

/// Node and peer names are unique in a cluster and never contain '/' (which keeps
/// `peer/<name>` apart from nodes); arbitrary inputs are made to agree.
fn unique_names<'a>(names: impl Iterator<Item = &'a mut String>, prefix: &str) {
    let mut seen = BTreeSet::new();
    for (i, name) in names.enumerate() {
        if name.contains('/') || !seen.insert(name.clone()) {
            // The input may already hold the new name (corpus entries are such inputs).
            let fresh = (0..)
                .map(|k| format!("{prefix}-{i}-renamed-{k}"))
                .find(|n| !seen.contains(n))
                .unwrap_or_default();
            seen.insert(fresh.clone());
            *name = fresh;
        }
    }
}

/// Any string straight into the value parsers; what they accept must round-trip.
fn values(value: &str) {
    if let Ok(key) = PublicKey::from_base64(value) {
        assert_eq!(PublicKey::from_base64(&key.to_base64()), Ok(key));
        assert_eq!(PublicKey::from_hex(&key.to_hex()), Ok(key));
    }
    match Endpoint::parse(value, true) {
        Ok(e) => {
            assert_eq!(Endpoint::parse(&e.to_string(), true).as_ref(), Ok(&e));
            let ip_only = Endpoint::parse(value, false);
            match e.host {
                Host::Ip(_) => assert_eq!(ip_only, Ok(e)),
                Host::Dns(_) => assert!(ip_only.is_err(), "{value:?}: a name without allow_dns"),
            }
        }
        Err(_) => assert!(Endpoint::parse(value, false).is_err(), "{value:?}"),
    }
    if let Ok(subnets) = PodSubnets::parse(&list(value)) {
        check_subnets(&subnets);
        let text = subnets.to_annotation();
        assert_eq!(PodSubnets::parse(&list(&text)), Ok(subnets), "{text}");
    }
}

fn check_subnets(s: &PodSubnets) {
    assert!(s.v4.is_some() || s.v6.is_some(), "at least one family");
    assert!(s.v4.is_none_or(|n| n.prefix_len() <= 30));
    assert!(s.v6.is_none_or(|n| n.prefix_len() <= 126));
    for (net, gw) in s.nets().zip(s.gateways()) {
        assert_eq!(net.trunc(), net, "host bits");
        assert!(net.contains(&gw.addr()) && gw.addr() != net.network());
        assert_eq!(s.gateway_of(net), gw.addr());
    }
}

fn parse_node(view: &NodeView, cfg: &MeshConfig) -> ParsedNode {
    let parsed = mesh::parse(view, cfg);
    assert_eq!(parsed.name, view.name);
    if parsed.is_usable() {
        assert!(parsed.public_key.is_some_and(|k| !k.is_zero()));
        // Its own endpoint, or only an administrator's (a DNS name resolved later).
        assert!(parsed.endpoint.is_some() || parsed.forced_endpoint.is_some());
        let subnets = parsed.pod_subnets.expect("usable without pod subnets");
        check_subnets(&subnets);
        if !cfg.cluster_cidrs.is_empty() {
            for net in subnets.nets() {
                assert!(cfg.cluster_cidrs.iter().any(|c| c.contains(&net)), "{net}");
            }
        }
    }
    if let Some(subnets) = &parsed.pod_subnets {
        check_subnets(subnets);
    }

    // What this node would publish, were it the local node, reads back the same.
    if let Ok(adv) = mesh::advertise(view, &LOCAL_KEY, cfg) {
        // The agent's merge patch: its annotations set or removed, the others kept.
        let mut annotations = view.annotations.clone();
        for (k, v) in adv.annotations() {
            match v {
                Some(v) => annotations.insert(k.to_string(), v),
                None => annotations.remove(k),
            };
        }
        let published = NodeView {
            annotations,
            ..view.clone()
        };
        assert!(adv.is_published_on(&published));
        let back = mesh::parse(&published, cfg);
        assert_eq!(back.public_key, Some(adv.public_key));
        assert_eq!(back.endpoint, adv.endpoint);
        assert_eq!(back.public_endpoint, adv.public_endpoint);
        assert_eq!(back.pod_subnets, Some(adv.pod_subnets));
        assert!(
            back.problems
                .iter()
                .all(|p| matches!(p, Problem::PodCidrOutsideCluster { .. })),
            "{:?}",
            back.problems
        );
    }
    parsed
}

fn parse_peer(view: &PeerView) -> ParsedPeer {
    let parsed = mesh::parse_peer(view);
    assert_eq!(parsed.name, view.name);
    if parsed.problems.is_empty() {
        assert!(parsed.public_key.is_some_and(|k| !k.is_zero()));
        assert!(!parsed.allowed_ips.is_empty());
        assert!(parsed.allowed_ips.iter().all(|n| n.trunc() == *n));
    }
    parsed
}

fn check_plan(local: &str, nodes: &[ParsedNode], peers: &[ParsedPeer], cfg: &MeshConfig) {
    let local_key = Some(&LOCAL_KEY);
    let plan = mesh::plan(local, local_key, nodes, peers, cfg);
    let reversed = mesh::plan(
        local,
        local_key,
        nodes.iter().rev(),
        peers.iter().rev(),
        cfg,
    );
    assert_eq!(plan, reversed, "the plan depends on the order of nodes");

    let local_nets: Vec<IpNet> = plan
        .local
        .iter()
        .flat_map(|l| l.pod_subnets.nets())
        .collect();
    let members: Vec<(String, &mesh::PeerPlan)> = plan
        .peers
        .iter()
        .map(|(n, p)| (n.clone(), p))
        .chain(plan.external.iter().map(|(n, p)| (format!("peer/{n}"), p)))
        .collect();
    let mut keys = BTreeMap::new();
    for (id, p) in &members {
        assert!(!p.public_key.is_zero(), "{id}: the zero key");
        assert_ne!(Some(&p.public_key), local_key, "{id}: the local key");
        if let Some(other) = keys.insert(p.public_key, id) {
            panic!("{id} and {other} share the key {}", p.public_key);
        }
        assert!(!plan.rejected.contains_key(id), "{id} is used and rejected");
        for net in &p.allowed_ips {
            for l in &local_nets {
                assert!(!overlap(net, l), "{id}: {net} overlaps the local {l}");
            }
        }
    }
    for (i, (a, pa)) in members.iter().enumerate() {
        for (b, pb) in &members[i + 1..] {
            for x in &pa.allowed_ips {
                for y in &pb.allowed_ips {
                    assert!(!overlap(x, y), "{a}: {x} overlaps {b}: {y}");
                }
            }
        }
    }
    for (name, p) in &plan.peers {
        assert_ne!(name, local, "the local node is its own peer");
        let node = nodes
            .iter()
            .find(|n| &n.name == name)
            .expect("a peer of no node");
        assert!(node.is_usable());
        check_endpoint(name, p, node, nodes);
        let own: Vec<IpNet> = node.pod_subnets.expect("a usable node").nets().collect();
        match &p.via {
            // A relayed node's ranges are on its relay's peer, which is direct.
            Some(relay) => {
                assert!(p.allowed_ips.is_empty(), "{name} relayed with {p:?}");
                let r = plan.peers.get(relay).expect("a relay that is no peer");
                assert!(r.via.is_none(), "{name}'s relay {relay} is itself relayed");
                assert!(
                    own.iter().all(|n| r.allowed_ips.contains(n)),
                    "{name} via {relay}"
                );
            }
            // Its own ranges, then those of the nodes it relays for.
            None => {
                let mut want = own;
                for (relayed, q) in &plan.peers {
                    if q.via.as_ref() == Some(name) {
                        let n = nodes.iter().find(|n| &n.name == relayed);
                        want.extend(n.and_then(|n| n.pod_subnets).iter().flat_map(|s| s.nets()));
                    }
                }
                let mut got = p.allowed_ips.clone();
                got.sort();
                want.sort();
                assert_eq!(got, want, "{name}: its ranges and those it relays");
            }
        }
    }
    check_routes(&plan);
}

/// The endpoint of node `name`'s peer is one that node, an administrator or an
/// observer published, as its source says (no observations here).
fn check_endpoint(name: &str, p: &mesh::PeerPlan, node: &ParsedNode, nodes: &[ParsedNode]) {
    let endpoint = p.endpoint.as_ref().expect("a node's peer has an endpoint");
    let ok = match p.endpoint_source {
        EndpointSource::Private => {
            node.endpoint.as_ref() == Some(endpoint) || node.endpoints.contains(endpoint)
        }
        EndpointSource::Public => node.public_endpoint.as_ref() == Some(endpoint),
        EndpointSource::Forced => node.forced_endpoint.as_ref() == Some(endpoint),
        EndpointSource::Discovered => nodes.iter().any(|n| {
            n.public_key != Some(p.public_key)
                && n.discovered.get(&p.public_key).map(|a| a.to_string())
                    == Some(endpoint.to_string())
        }),
        EndpointSource::Observed | EndpointSource::External => false,
    };
    assert!(
        ok,
        "{name}: endpoint {endpoint} from {:?}",
        p.endpoint_source
    );
}

fn check_routes(plan: &MeshPlan) {
    for r in &plan.routes {
        let peer = match r.node.strip_prefix("peer/") {
            Some(name) => plan.external.get(name),
            None => plan.peers.get(&r.node),
        };
        let peer = peer.unwrap_or_else(|| panic!("route {r:?} to no peer"));
        // Through the relay when the node is relayed.
        let carrier = match &peer.via {
            Some(relay) => plan.peers.get(relay).expect("a relay that is no peer"),
            None => peer,
        };
        assert!(carrier.allowed_ips.contains(&r.dst), "{r:?}");
        if let Some(src) = r.src {
            assert_eq!(src.is_ipv6(), r.dst.addr().is_ipv6(), "{r:?}");
        }
    }
}

fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}
