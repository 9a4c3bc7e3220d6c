//! The desired state of one node's mesh, computed from every node. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::MeshConfig;
use super::conflicts::{self, Holder};
use super::node::ParsedNode;
use super::paths::{self, Discoveries, EndpointSource, Observations};
use super::peer::ParsedPeer;
use super::problem::{Problem, Warning};
use crate::cni::{NetworkConfig, PodSubnets};
use crate::key::PublicKey;
use crate::model::Endpoint;

/// One WireGuard peer: another node, or an external peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPlan {
    pub public_key: PublicKey,
    /// Always set for nodes; `None` for an external peer that connects out.
    pub endpoint: Option<Endpoint>,
    /// That node's pod CIDRs, or the external peer's allowedIPs.
    pub allowed_ips: Vec<IpNet>,
    /// Seconds; `None` = off.
    pub persistent_keepalive: Option<u16>,
    /// External peers only: destinations beyond the pod ranges this peer may reach
    /// (`spec.allowedDestinations`); everything else it sends is dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_destinations: Vec<IpNet>,
    /// Where the endpoint came from (see [`super::paths`]).
    #[serde(default)]
    pub endpoint_source: EndpointSource,
    /// The relay this peer's traffic goes through (its ranges are on the relay's peer);
    /// the peer keeps its entry to probe the direct path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// A route this node needs: a remote pod CIDR through the mesh interface
/// (`MeshConfig::interface`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RoutePlan {
    pub dst: IpNet,
    /// The local gateway of the same family, so host-originated packets carry a pod
    /// source address and pass the remote side's AllowedIPs check.
    pub src: Option<IpAddr>,
    /// The node whose pods live there (`peer/<name>` for an external peer).
    pub node: String,
}

/// The node's packet filter and egress NAT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallPlan {
    /// Destinations that may leave only through `allowed_interfaces`: the cluster
    /// CIDRs, every pod range the node knows of and external peers' ranges (see
    /// [`guarded`]).
    pub guarded: BTreeSet<IpNet>,
    /// The mesh interface, the pod bridge and loopback.
    pub allowed_interfaces: BTreeSet<String>,
    /// The local pod CIDRs, masqueraded to the node's address towards anything outside
    /// `guarded` (the internet, other nodes' underlay addresses).
    pub masquerade_from: BTreeSet<IpNet>,
    /// The bridge: traffic staying on it is never masqueraded.
    pub bridge: String,
    /// The mesh interface, where external peers' packets come in.
    #[serde(default)]
    pub mesh_interface: String,
    /// What external peers may reach through the mesh interface.
    #[serde(default)]
    pub peer_ingress: PeerIngressPlan,
}

/// Packets from external peers (laptops joining with wg-quick) may reach pods only:
/// not the node itself (kubelet, metrics) and nothing outside the pod ranges, unless a
/// Peer lists the destination in `spec.allowedDestinations`. Replies to connections
/// opened from the cluster always pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerIngressPlan {
    /// Every external peer's allowed IPs: a packet decrypted with such a source came
    /// from an external peer (WireGuard checks the source against the sender's).
    pub sources: BTreeSet<IpNet>,
    /// The pod ranges: the cluster CIDRs and every node's pod CIDRs.
    pub pod_ranges: BTreeSet<IpNet>,
    /// Per opted-in peer (by name): its sources and the extra destinations it may reach.
    pub extra: BTreeMap<String, (BTreeSet<IpNet>, BTreeSet<IpNet>)>,
}

/// The local node's part of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalPlan {
    pub name: String,
    pub pod_subnets: PodSubnets,
}

/// Everything the data plane of one node should look like. A plain value: the same
/// input gives the same plan whatever the order of the nodes, and two plans diff with
/// `==` and the ordered maps inside.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshPlan {
    /// `None` until the local node has a usable pod CIDR.
    pub local: Option<LocalPlan>,
    /// One peer per other usable node, by node name.
    pub peers: BTreeMap<String, PeerPlan>,
    /// External peers (`Peer` objects), by object name.
    #[serde(default)]
    pub external: BTreeMap<String, PeerPlan>,
    pub routes: BTreeSet<RoutePlan>,
    /// An unreachable route for each cluster CIDR, under the more specific routes: pod
    /// traffic with no route through the mesh is dropped here, never sent on the
    /// underlay.
    pub unreachable: BTreeSet<IpNet>,
    pub firewall: FirewallPlan,
    /// MTU of the mesh interface, the bridge and pod interfaces.
    pub mtu: u32,
    /// Why this node must not give pods a network: its own configuration is wrong
    /// (e.g. its pod CIDR is outside `--cluster-cidr`). Empty when all is well.
    #[serde(skip)]
    pub local_problems: Vec<Problem>,
    /// Nodes (and `peer/<name>` external peers) left out, and why.
    #[serde(skip)]
    pub rejected: BTreeMap<String, Vec<Problem>>,
    /// Nodes used with a caveat.
    #[serde(skip)]
    pub warnings: BTreeMap<String, Vec<Warning>>,
}

impl MeshPlan {
    /// This node's CNI configuration, once it has pod CIDRs and no local problem.
    pub fn cni_config(&self, cfg: &MeshConfig) -> Option<NetworkConfig> {
        if !self.local_problems.is_empty() {
            return None;
        }
        let local = self.local.as_ref()?;
        Some(cfg.cni_config(local.pod_subnets))
    }
}

/// A node or an external peer: what the conflict checks and the peer list need.
struct Member<'a> {
    /// Node name, or `peer/<name>` for an external peer.
    id: std::borrow::Cow<'a, str>,
    public_key: PublicKey,
    endpoint: Option<Endpoint>,
    allowed: Vec<IpNet>,
    persistent_keepalive: Option<u16>,
    external: Option<&'a ParsedPeer>,
    /// The node itself (`None` for an external peer).
    node: Option<&'a ParsedNode>,
    /// A node whose CIDRs are spec.podCIDRs (not only an annotation).
    spec_backed: bool,
}

/// Computes the plan of node `local_name` from every node's and every external peer's
/// parsed view. `local_key` is this node's own public key: anyone else publishing it is
/// refused. [`plan_with`] with nothing observed.
pub fn plan<'a>(
    local_name: &str,
    local_key: Option<&PublicKey>,
    nodes: impl IntoIterator<Item = &'a ParsedNode>,
    peers: impl IntoIterator<Item = &'a ParsedPeer>,
    cfg: &MeshConfig,
) -> MeshPlan {
    plan_with(
        local_name,
        local_key,
        nodes,
        peers,
        cfg,
        &Observations::default(),
    )
}

/// [`plan`], with what the local data plane observed: where peers' packets come from,
/// which decides endpoints across NATs (see [`super::paths`]).
pub fn plan_with<'a>(
    local_name: &str,
    local_key: Option<&PublicKey>,
    nodes: impl IntoIterator<Item = &'a ParsedNode>,
    peers: impl IntoIterator<Item = &'a ParsedPeer>,
    cfg: &MeshConfig,
    observed: &Observations,
) -> MeshPlan {
    let nodes: Vec<&ParsedNode> = nodes.into_iter().collect();
    let local_node = nodes.iter().copied().find(|n| n.name == local_name);
    let discoveries = Discoveries::collect(nodes.iter().copied());
    let local_behind_nat = local_node.is_some_and(|l| paths::behind_nat(l, &discoveries));
    let mut out = MeshPlan::default();
    let local_subnets = nodes
        .iter()
        .find(|n| n.name == local_name)
        .and_then(|n| n.pod_subnets);
    out.local = local_subnets.map(|pod_subnets| LocalPlan {
        name: local_name.to_string(),
        pod_subnets,
    });

    let mut rejected: BTreeMap<String, Vec<Problem>> = BTreeMap::new();
    let mut members: Vec<Member> = Vec::new();
    for node in nodes.iter().copied().filter(|n| n.name != local_name) {
        if !node.warnings.is_empty() {
            out.warnings
                .insert(node.name.clone(), node.warnings.clone());
        }
        match (node.is_usable(), node.public_key, node.pod_subnets) {
            (true, Some(public_key), Some(subnets)) => members.push(Member {
                id: node.name.as_str().into(),
                public_key,
                endpoint: node.endpoint.clone(),
                allowed: subnets.nets().collect(),
                persistent_keepalive: node.persistent_keepalive,
                external: None,
                node: Some(node),
                spec_backed: node.pod_subnets_from_spec,
            }),
            _ => {
                rejected.insert(node.name.clone(), node.problems.clone());
            }
        }
    }
    for peer in peers {
        match (peer.problems.is_empty(), peer.public_key) {
            (true, Some(public_key)) => members.push(Member {
                id: peer.id().into(),
                public_key,
                endpoint: peer.endpoint.clone(),
                allowed: peer.allowed_ips.clone(),
                persistent_keepalive: peer.persistent_keepalive,
                external: Some(peer),
                node: None,
                spec_backed: false,
            }),
            _ => {
                rejected.insert(peer.id(), peer.problems.clone());
            }
        }
    }

    // Nodes among themselves (and the local node): every party to a conflict is out.
    let is_node = |m: &Member| m.external.is_none();
    let dups = conflicts::duplicate_keys(
        members
            .iter()
            .filter(|m| is_node(m))
            .map(|m| (m.id.as_ref(), m.public_key)),
        local_key,
    );
    let local_holders = || {
        local_subnets
            .into_iter()
            .flat_map(|s| s.nets().map(|c| (Holder::Local, c)).collect::<Vec<_>>())
    };
    // Ranges the controller-manager allocated (spec.podCIDRs) exclude each other.
    let spec_cidrs = members
        .iter()
        .filter(|m| is_node(m) && m.spec_backed)
        .flat_map(|m| {
            m.allowed
                .iter()
                .map(move |c| (Holder::Node(m.id.as_ref()), *c))
        })
        .chain(local_holders());
    file_conflicts(
        &mut rejected,
        dups,
        conflicts::overlapping_cidrs(spec_cidrs),
    );
    // A range claimed only by an annotation (any Node writer can set one) never beats
    // nor knocks out an allocated one, usable or not: only the claimant is left out.
    let annotation_cidrs = members
        .iter()
        .filter(|m| is_node(m) && !m.spec_backed)
        .flat_map(|m| {
            m.allowed
                .iter()
                .map(move |c| (Holder::Node(m.id.as_ref()), *c))
        })
        .chain(reserved_spec_cidrs(&nodes, local_name))
        .chain(local_holders());
    file_conflicts(
        &mut rejected,
        BTreeMap::new(),
        conflicts::overlapping_cidrs(annotation_cidrs),
    );

    if members.iter().any(|m| !is_node(m)) {
        external_conflicts(
            &members,
            &nodes,
            local_name,
            local_key,
            local_subnets,
            &mut rejected,
        );
    }
    members.retain(|m| !rejected.contains_key(m.id.as_ref()));

    // Pairs of nodes both behind NAT that cannot reach each other directly go through
    // a relay: the peer keeps its entry (direct probes), its ranges move to the relay's.
    let mut relayed: BTreeMap<String, String> = BTreeMap::new();
    if let Some(local) = local_node {
        let candidates: Vec<&ParsedNode> = members.iter().filter_map(|m| m.node).collect();
        for peer in &candidates {
            if paths::relayed(local, peer, &discoveries)
                && let Some(relay) = paths::relay_for(local, peer, candidates.iter().copied())
            {
                relayed.insert(peer.name.clone(), relay.name.clone());
            }
        }
    }
    let mut moved: BTreeMap<String, Vec<IpNet>> = BTreeMap::new();
    for (peer, relay) in &relayed {
        if let Some(m) = members.iter().find(|m| m.id == peer.as_str()) {
            moved
                .entry(relay.clone())
                .or_default()
                .extend(m.allowed.iter().copied());
        }
    }

    let mut unreachable_pairs: BTreeMap<String, Vec<Problem>> = BTreeMap::new();
    for m in members {
        let (endpoint, endpoint_source, keepalive) = match m.node {
            Some(node) => {
                let (endpoint, source) = match paths::endpoint_for(
                    local_node,
                    node,
                    observed,
                    &discoveries,
                    cfg.endpoint_family,
                ) {
                    Ok(choice) => choice,
                    Err(problem) => {
                        // No path from here: the pair is left out, its traffic dropped.
                        unreachable_pairs.insert(node.name.clone(), vec![problem]);
                        continue;
                    }
                };
                // Behind NAT, towards other locations: keep the mappings open.
                let nat =
                    local_behind_nat && !local_node.is_some_and(|l| paths::same_location(l, node));
                let keepalive = m
                    .persistent_keepalive
                    .or(nat.then_some(paths::NAT_KEEPALIVE));
                (endpoint, source, keepalive)
            }
            None => (m.endpoint, EndpointSource::External, m.persistent_keepalive),
        };
        for dst in &m.allowed {
            let src = local_subnets.and_then(|l| {
                l.nets()
                    .find(|n| n.addr().is_ipv6() == dst.addr().is_ipv6())
                    .map(|n| l.gateway_of(n))
            });
            out.routes.insert(RoutePlan {
                dst: *dst,
                src,
                node: m.id.to_string(),
            });
        }
        let via = relayed.get(m.id.as_ref()).cloned();
        let mut allowed_ips = if via.is_some() { Vec::new() } else { m.allowed };
        if let Some(extra) = moved.get(m.id.as_ref()) {
            allowed_ips.extend(extra.iter().copied());
        }
        let peer = PeerPlan {
            public_key: m.public_key,
            endpoint,
            allowed_ips,
            persistent_keepalive: keepalive,
            allowed_destinations: m
                .external
                .map(|p| p.allowed_destinations.clone())
                .unwrap_or_default(),
            endpoint_source,
            via,
        };
        match m.external {
            None => out.peers.insert(m.id.into_owned(), peer),
            Some(p) => out.external.insert(p.name.clone(), peer),
        };
    }
    rejected.extend(unreachable_pairs);
    out.rejected = rejected;
    out.local_problems = local_problems(local_subnets, cfg);
    let pod_ranges = pod_ranges(&nodes, &out, cfg);
    let guarded = aggregate(
        pod_ranges.iter().copied().chain(
            out.external
                .values()
                .flat_map(|p| p.allowed_ips.iter().copied()),
        ),
    );
    out.unreachable = guarded.clone();
    out.mtu = cfg.mtu;
    out.firewall = firewall(&out, cfg, guarded, pod_ranges);
    out
}

/// spec.podCIDRs of every other node, usable or not, as ranges that win any overlap.
fn reserved_spec_cidrs<'a>(
    nodes: &[&'a ParsedNode],
    local_name: &str,
) -> impl Iterator<Item = (Holder<'a>, IpNet)> {
    nodes
        .iter()
        .copied()
        .filter(move |n| n.name != local_name && n.pod_subnets_from_spec)
        .flat_map(|n| {
            n.pod_subnets
                .iter()
                .flat_map(|s| s.nets())
                .map(move |c| (Holder::Reserved(n.name.as_str()), c))
                .collect::<Vec<_>>()
        })
}

/// The local node's own configuration problems: a pod CIDR that no cluster CIDR
/// covers (a ConfigMap copied from another cluster, an IPv4-only `--cluster-cidr` on a
/// dual-stack cluster; without cluster CIDRs there is nothing to check against), or an
/// MTU under IPv6's minimum with an IPv6 pod range.
fn local_problems(local: Option<PodSubnets>, cfg: &MeshConfig) -> Vec<Problem> {
    let mut out: Vec<Problem> = Vec::new();
    if !cfg.cluster_cidrs.is_empty() {
        out.extend(
            local
                .iter()
                .flat_map(|s| s.nets())
                .filter(|c| !cfg.cluster_cidrs.iter().any(|cc| cc.contains(c)))
                .map(|cidr| Problem::LocalPodCidrOutsideCluster {
                    cidr,
                    cluster_cidrs: cfg.cluster_cidrs.clone(),
                }),
        );
    }
    if local.is_some_and(|s| s.v6.is_some()) && cfg.mtu < IPV6_MIN_MTU {
        out.push(Problem::MtuTooSmallForIpv6 { mtu: cfg.mtu });
    }
    out
}

/// IPv6's minimum link MTU (RFC 8200 section 5).
const IPV6_MIN_MTU: u32 = 1280;

/// Every pod range this node knows of: the cluster CIDRs, its own pod CIDRs, every
/// node's spec.podCIDRs (usable or not) and the ranges of the nodes it peers with.
/// Covering them all, not only the cluster CIDRs, keeps a wrong or empty
/// `--cluster-cidr` from opening a path in clear.
fn pod_ranges(nodes: &[&ParsedNode], plan: &MeshPlan, cfg: &MeshConfig) -> BTreeSet<IpNet> {
    aggregate(
        cfg.cluster_cidrs
            .iter()
            .copied()
            .chain(plan.local.iter().flat_map(|l| l.pod_subnets.nets()))
            .chain(nodes.iter().flat_map(|n| n.spec_cidrs.iter().copied()))
            .chain(
                plan.peers
                    .values()
                    .flat_map(|p| p.allowed_ips.iter().copied()),
            ),
    )
}

/// The smallest set of prefixes covering the same addresses (nested and adjacent
/// prefixes merged), so a correct `--cluster-cidr` leaves one prefix per family.
fn aggregate(nets: impl IntoIterator<Item = IpNet>) -> BTreeSet<IpNet> {
    let all: Vec<IpNet> = nets.into_iter().map(|n| n.trunc()).collect();
    IpNet::aggregate(&all).into_iter().collect()
}

/// External peers against every node, usable or not (spec.podCIDRs and node keys are
/// authoritative: a Peer can neither take nor knock out a node's range or key), then
/// among themselves (neither party of a conflict is used).
fn external_conflicts(
    members: &[Member],
    nodes: &[&ParsedNode],
    local_name: &str,
    local_key: Option<&PublicKey>,
    local_subnets: Option<PodSubnets>,
    rejected: &mut BTreeMap<String, Vec<Problem>>,
) {
    let peers: Vec<&Member> = members.iter().filter(|m| m.external.is_some()).collect();
    let remote_nodes = || nodes.iter().filter(|n| n.name != local_name);
    // Several nodes may publish one key: name the first by name, whatever their order.
    let mut node_keys: BTreeMap<PublicKey, &str> = BTreeMap::new();
    for n in remote_nodes() {
        if let Some(key) = n.public_key {
            let holder = node_keys.entry(key).or_insert(n.name.as_str());
            *holder = (*holder).min(n.name.as_str());
        }
    }
    for m in &peers {
        if local_key == Some(&m.public_key) {
            rejected
                .entry(m.id.to_string())
                .or_default()
                .push(Problem::PublicKeyOfThisNode);
        } else if let Some(node) = node_keys.get(&m.public_key) {
            rejected
                .entry(m.id.to_string())
                .or_default()
                .push(Problem::PublicKeyOfNode {
                    node: node.to_string(),
                });
        }
    }
    let dups = conflicts::duplicate_keys(
        peers
            .iter()
            .filter(|m| !rejected.contains_key(m.id.as_ref()))
            .map(|m| (m.id.as_ref(), m.public_key)),
        None,
    );
    let cidrs = peers
        .iter()
        .flat_map(|m| {
            m.allowed
                .iter()
                .map(move |c| (Holder::Node(m.id.as_ref()), *c))
        })
        .chain(remote_nodes().flat_map(|n| {
            n.pod_subnets
                .iter()
                .flat_map(|s| s.nets())
                .map(move |c| (Holder::Reserved(n.name.as_str()), c))
                .collect::<Vec<_>>()
        }))
        .chain(
            local_subnets
                .into_iter()
                .flat_map(|s| s.nets().map(|c| (Holder::Local, c)).collect::<Vec<_>>()),
        );
    file_conflicts(rejected, dups, conflicts::overlapping_cidrs(cidrs));
}

fn firewall(
    plan: &MeshPlan,
    cfg: &MeshConfig,
    guarded: BTreeSet<IpNet>,
    pod_ranges: BTreeSet<IpNet>,
) -> FirewallPlan {
    let peer_ingress = PeerIngressPlan {
        sources: aggregate(
            plan.external
                .values()
                .flat_map(|p| p.allowed_ips.iter().copied()),
        ),
        pod_ranges: if plan.external.is_empty() {
            BTreeSet::new()
        } else {
            pod_ranges
        },
        extra: plan
            .external
            .iter()
            .filter(|(_, p)| !p.allowed_destinations.is_empty())
            .map(|(name, p)| {
                (
                    name.clone(),
                    (
                        p.allowed_ips.iter().copied().collect(),
                        p.allowed_destinations.iter().copied().collect(),
                    ),
                )
            })
            .collect(),
    };
    FirewallPlan {
        guarded,
        allowed_interfaces: [cfg.interface.clone(), cfg.bridge.clone(), "lo".to_string()]
            .into_iter()
            .collect(),
        masquerade_from: plan
            .local
            .iter()
            .flat_map(|l| l.pod_subnets.nets())
            .filter(|n| cfg.masquerade_ipv6 || n.addr().is_ipv4())
            .collect(),
        bridge: cfg.bridge.clone(),
        mesh_interface: cfg.interface.clone(),
        peer_ingress,
    }
}

/// Files the problems of duplicate keys and overlapping CIDRs under their holders.
fn file_conflicts(
    rejected: &mut BTreeMap<String, Vec<Problem>>,
    dups: BTreeMap<&str, Problem>,
    overlaps: BTreeMap<&str, BTreeSet<conflicts::ProblemKey>>,
) {
    for (id, p) in dups {
        rejected.entry(id.to_string()).or_default().push(p);
    }
    for (id, keys) in overlaps {
        rejected
            .entry(id.to_string())
            .or_default()
            .extend(keys.into_iter().map(|k| k.into_problem()));
    }
}
