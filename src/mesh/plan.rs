//! The desired state of one node's mesh, computed from every node. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::MeshConfig;
use super::conflicts::{self, Holder};
use super::node::{ParsedNode, nets_of};
use super::problem::{Problem, Warning};
use crate::cni::{NetworkConfig, PodSubnets};
use crate::key::PublicKey;
use crate::model::Endpoint;

/// One WireGuard peer: another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPlan {
    pub public_key: PublicKey,
    pub endpoint: Endpoint,
    /// That node's pod CIDRs.
    pub allowed_ips: Vec<IpNet>,
    /// Seconds; `None` = off.
    pub persistent_keepalive: Option<u16>,
}

/// A route this node needs: a remote pod CIDR through the mesh interface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RoutePlan {
    pub dst: IpNet,
    pub dev: String,
    /// The local gateway of the same family, so host-originated packets carry a pod
    /// source address and pass the remote side's AllowedIPs check.
    pub src: Option<IpAddr>,
    /// The node whose pods live there.
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
    pub routes: BTreeSet<RoutePlan>,
    /// An unreachable route for each cluster CIDR, under the more specific routes: pod
    /// traffic with no route through the mesh is dropped here, never sent on the
    /// underlay.
    pub unreachable: BTreeSet<IpNet>,
    pub firewall: FirewallPlan,
    /// MTU of the mesh interface, the bridge and pod interfaces.
    pub mtu: u32,
    /// Nodes left out, and why.
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

/// Computes the plan of node `local_name` from every node's parsed view.
/// `local_key` is this node's own public key: a remote node publishing it is refused.
pub fn plan<'a>(
    local_name: &str,
    local_key: Option<&PublicKey>,
    nodes: impl IntoIterator<Item = &'a ParsedNode>,
    cfg: &MeshConfig,
) -> MeshPlan {
    let nodes: Vec<&ParsedNode> = nodes.into_iter().collect();
    let mut out = MeshPlan::default();
    let local = nodes.iter().find(|n| n.name == local_name);
    let local_subnets = local.and_then(|n| n.pod_subnets);
    out.local = local_subnets.map(|pod_subnets| LocalPlan {
        name: local_name.to_string(),
        pod_subnets,
    });

    let mut rejected: BTreeMap<&str, Vec<Problem>> = BTreeMap::new();
    let mut usable: Vec<&ParsedNode> = Vec::new();
    for node in nodes.iter().copied().filter(|n| n.name != local_name) {
        if !node.warnings.is_empty() {
            out.warnings
                .insert(node.name.clone(), node.warnings.clone());
        }
        if node.is_usable() {
            usable.push(node);
        } else {
            rejected.insert(&node.name, node.problems.clone());
        }
    }

    let dups = conflicts::duplicate_keys(
        usable
            .iter()
            .filter_map(|n| Some((n.name.as_str(), n.public_key?))),
        local_key,
    );
    for (name, p) in dups {
        rejected.entry(name).or_default().push(p);
    }
    usable.retain(|n| !rejected.contains_key(n.name.as_str()));

    let cidrs = usable
        .iter()
        .flat_map(|n| {
            nets_of(n)
                .into_iter()
                .map(move |c| (Holder::Node(n.name.as_str()), c))
        })
        .chain(
            local_subnets
                .into_iter()
                .flat_map(|s| s.nets().map(|c| (Holder::Local, c)).collect::<Vec<_>>()),
        );
    for (name, keys) in conflicts::overlapping_cidrs(cidrs) {
        rejected
            .entry(name)
            .or_default()
            .extend(keys.into_iter().map(|k| k.into_problem()));
    }
    usable.retain(|n| !rejected.contains_key(n.name.as_str()));

    for node in usable {
        // `is_usable` guarantees these are set.
        let (Some(public_key), Some(endpoint), Some(subnets)) =
            (node.public_key, node.endpoint.clone(), node.pod_subnets)
        else {
            continue;
        };
        for dst in subnets.nets() {
            let src = local_subnets.and_then(|l| {
                l.nets()
                    .find(|n| n.addr().is_ipv6() == dst.addr().is_ipv6())
                    .map(|n| l.gateway_of(n))
            });
            out.routes.insert(RoutePlan {
                dst,
                dev: cfg.interface.clone(),
                src,
                node: node.name.clone(),
            });
        }
        out.peers.insert(
            node.name.clone(),
            PeerPlan {
                public_key,
                endpoint,
                allowed_ips: subnets.nets().collect(),
                persistent_keepalive: node.persistent_keepalive,
            },
        );
    }
    out.rejected = rejected
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    out.unreachable = cfg.cluster_cidrs.iter().copied().collect();
    out.mtu = cfg.mtu;
    out.firewall = firewall(&out, cfg);
    out
}

fn firewall(plan: &MeshPlan, cfg: &MeshConfig) -> FirewallPlan {
    let local_nets: Vec<IpNet> = plan
        .local
        .iter()
        .flat_map(|l| l.pod_subnets.nets())
        .collect();
    let guarded = if cfg.cluster_cidrs.is_empty() {
        plan.peers
            .values()
            .flat_map(|p| p.allowed_ips.iter().copied())
            .chain(local_nets.iter().copied())
            .collect()
    } else {
        cfg.cluster_cidrs.iter().copied().collect()
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
