//! The desired state of one node's mesh, computed from every node. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::MeshConfig;
use super::conflicts::{self, Holder};
use super::node::ParsedNode;
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
    /// Pod destinations that may leave only through `allowed_interfaces`: the cluster
    /// CIDRs, or every known pod CIDR when none are configured.
    pub guarded: BTreeSet<IpNet>,
    /// The mesh interface, the pod bridge and loopback.
    pub allowed_interfaces: BTreeSet<String>,
    /// The local pod CIDRs, masqueraded to the node's address towards anything outside
    /// `guarded` (the internet, other nodes' underlay addresses).
    pub masquerade_from: BTreeSet<IpNet>,
    /// The bridge: traffic staying on it is never masqueraded.
    pub bridge: String,
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
    /// Nodes (and `peer/<name>` external peers) left out, and why.
    #[serde(skip)]
    pub rejected: BTreeMap<String, Vec<Problem>>,
    /// Nodes used with a caveat.
    #[serde(skip)]
    pub warnings: BTreeMap<String, Vec<Warning>>,
}

impl MeshPlan {
    /// This node's CNI configuration, once it has pod CIDRs.
    pub fn cni_config(&self, cfg: &MeshConfig) -> Option<NetworkConfig> {
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
}

/// Computes the plan of node `local_name` from every node's and every external peer's
/// parsed view. `local_key` is this node's own public key: anyone else publishing it is
/// refused.
pub fn plan<'a>(
    local_name: &str,
    local_key: Option<&PublicKey>,
    nodes: impl IntoIterator<Item = &'a ParsedNode>,
    peers: impl IntoIterator<Item = &'a ParsedPeer>,
    cfg: &MeshConfig,
) -> MeshPlan {
    let nodes: Vec<&ParsedNode> = nodes.into_iter().collect();
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
    let node_cidrs = members
        .iter()
        .filter(|m| is_node(m))
        .flat_map(|m| {
            m.allowed
                .iter()
                .map(move |c| (Holder::Node(m.id.as_ref()), *c))
        })
        .chain(local_holders());
    file_conflicts(
        &mut rejected,
        dups,
        conflicts::overlapping_cidrs(node_cidrs),
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

    for m in members {
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
        let peer = PeerPlan {
            public_key: m.public_key,
            endpoint: m.endpoint,
            allowed_ips: m.allowed,
            persistent_keepalive: m.persistent_keepalive,
        };
        match m.external {
            None => out.peers.insert(m.id.into_owned(), peer),
            Some(p) => out.external.insert(p.name.clone(), peer),
        };
    }
    out.rejected = rejected;
    out.unreachable = cfg.cluster_cidrs.iter().copied().collect();
    out.mtu = cfg.mtu;
    out.firewall = firewall(&out, cfg);
    out
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

fn firewall(plan: &MeshPlan, cfg: &MeshConfig) -> FirewallPlan {
    let local_nets: Vec<IpNet> = plan
        .local
        .iter()
        .flat_map(|l| l.pod_subnets.nets())
        .collect();
    // External peers' ranges are guarded like pod ranges: never sent in clear, never
    // masqueraded.
    let external = plan
        .external
        .values()
        .flat_map(|p| p.allowed_ips.iter().copied());
    let guarded = if cfg.cluster_cidrs.is_empty() {
        plan.peers
            .values()
            .flat_map(|p| p.allowed_ips.iter().copied())
            .chain(local_nets.iter().copied())
            .chain(external)
            .collect()
    } else {
        cfg.cluster_cidrs.iter().copied().chain(external).collect()
    };
    FirewallPlan {
        guarded,
        allowed_interfaces: [cfg.interface.clone(), cfg.bridge.clone(), "lo".to_string()]
            .into_iter()
            .collect(),
        masquerade_from: local_nets.into_iter().collect(),
        bridge: cfg.bridge.clone(),
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
