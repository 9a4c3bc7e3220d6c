//! The mesh: cluster state in, desired data-plane state out. Pure: no I/O, no async,
//! no clock. All validation of what nodes publish lives here.
//!
//! - [`node::parse`] validates one node (annotations, spec.podCIDRs);
//! - [`plan::plan`] combines every node into one node's [`MeshPlan`] (peers, routes,
//!   CNI config), leaving out conflicting nodes deterministically;
//! - [`advertise::advertise`] computes what the local node publishes about itself.

pub mod advertise;
pub mod conflicts;
pub mod node;
pub mod paths;
pub mod peer;
pub mod plan;
pub mod problem;

use std::borrow::Cow;

use ipnet::IpNet;

pub use advertise::{Advertisement, advertise};
pub use node::{ParsedNode, parse};
pub use paths::{EndpointSource, Observations};
pub use peer::{ParsedPeer, PeerView, parse_peer};
pub use plan::{
    FirewallPlan, LocalPlan, MeshPlan, PeerIngressPlan, PeerPlan, RoutePlan, plan, plan_with,
};
pub use problem::{Problem, Warning};

use crate::cni::{NetworkConfig, PodSubnets};
use crate::model::{AddressType, EndpointFamily};

/// The agent's settings that shape the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    /// The whole pod range; node CIDRs outside it are refused. Empty: no check.
    pub cluster_cidrs: Vec<IpNet>,
    /// Default persistent keepalive for peers (seconds, `None` = off).
    pub persistent_keepalive: Option<u16>,
    /// The WireGuard interface, e.g. `wgmesh0`.
    pub interface: String,
    pub listen_port: u16,
    pub address_type: AddressType,
    /// Which family of the nodes' addresses the tunnel uses.
    pub endpoint_family: EndpointFamily,
    /// Masquerade pods' IPv6 traffic leaving the cluster (ULA pod ranges are not
    /// routable); off for clusters whose IPv6 pod ranges are global.
    pub masquerade_ipv6: bool,
    /// CNI network name, bridge and MTU written into the node's conflist.
    pub cni_network: String,
    pub bridge: String,
    pub mtu: u32,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            cluster_cidrs: Vec::new(),
            persistent_keepalive: None,
            interface: "wgmesh0".into(),
            listen_port: 51820,
            address_type: AddressType::InternalIP,
            endpoint_family: EndpointFamily::Auto,
            masquerade_ipv6: true,
            cni_network: "wgmesh".into(),
            bridge: crate::cni::config::DEFAULT_BRIDGE.into(),
            mtu: crate::cni::config::DEFAULT_MTU,
        }
    }
}

impl MeshConfig {
    /// The CNI configuration of a node with these pod subnets.
    pub fn cni_config(&self, pod_subnets: PodSubnets) -> NetworkConfig {
        NetworkConfig {
            name: self.cni_network.clone(),
            bridge: self.bridge.clone(),
            mtu: self.mtu,
            subnets: pod_subnets,
            data_dir: crate::cni::config::DEFAULT_DATA_DIR.into(),
            ipam_lock_timeout: crate::cni::config::DEFAULT_IPAM_LOCK_TIMEOUT,
        }
    }
}

/// The tunnel's share of each packet: IPv6 (40) or IPv4 (20) + UDP (8) + WireGuard (32).
pub const fn tunnel_overhead(ipv6: bool) -> u32 {
    if ipv6 { 80 } else { 60 }
}

/// The MTU of the mesh interface, the bridge and pods from the underlay links the
/// tunnel may use, as (IPv6 underlay, link MTU): each link's MTU minus its family's
/// overhead, the smallest of them (so where both families are in use, the larger
/// overhead counts). `None` without a link.
pub fn mtu_from_underlay(links: &[(bool, u32)]) -> Option<u32> {
    links
        .iter()
        .map(|(v6, mtu)| mtu.saturating_sub(tunnel_overhead(*v6)))
        .min()
}

/// The most of a value from a Node or Peer that an Event or a log line quotes: any
/// Node writer chooses those values, and they must not inflate every message about them.
pub const QUOTE_LIMIT: usize = 256;

/// `s` cut to [`QUOTE_LIMIT`] bytes (at a character boundary), saying how long it was.
pub fn bounded(s: &str) -> Cow<'_, str> {
    if s.len() <= QUOTE_LIMIT {
        return Cow::Borrowed(s);
    }
    let mut end = QUOTE_LIMIT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}... ({} bytes)", &s[..end], s.len()))
}

#[cfg(test)]
mod tests;
