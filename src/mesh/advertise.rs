//! What this node publishes about itself on its Node object. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use super::MeshConfig;
use super::paths;
use super::problem::Problem;
use crate::cni::PodSubnets;
use crate::key::PublicKey;
use crate::model::{AddressType, Endpoint, EndpointFamily, Host, NodeView, annotation};

/// The annotations of a node's advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    pub public_key: PublicKey,
    /// Its own address (InternalIP by default); `None` when it has none and an
    /// administrator's `wgmesh.io/force-endpoint` stands in.
    pub endpoint: Option<Endpoint>,
    /// All its own endpoints, one per family (`wgmesh.io/endpoints` when more than one).
    pub endpoints: Vec<Endpoint>,
    pub pod_subnets: PodSubnets,
    /// Its ExternalIP, for nodes in other locations.
    pub public_endpoint: Option<Endpoint>,
    /// `wgmesh.io/discovered-endpoints` (see `paths`), when it discovered any.
    pub discovered: Option<String>,
    /// `wgmesh.io/no-direct-path`, when it has any.
    pub no_direct: Option<String>,
}

impl Advertisement {
    /// The annotations exactly as published; `None`: the annotation must be absent.
    pub fn annotations(&self) -> BTreeMap<&'static str, Option<String>> {
        BTreeMap::from([
            (annotation::PUBLIC_KEY, Some(self.public_key.to_base64())),
            (
                annotation::ENDPOINT,
                self.endpoint.as_ref().map(ToString::to_string),
            ),
            (
                annotation::ENDPOINTS,
                (self.endpoints.len() > 1).then(|| {
                    self.endpoints
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                }),
            ),
            (
                annotation::POD_CIDRS,
                Some(self.pod_subnets.to_annotation()),
            ),
            (
                annotation::PUBLIC_ENDPOINT,
                self.public_endpoint.as_ref().map(ToString::to_string),
            ),
            (annotation::DISCOVERED_ENDPOINTS, self.discovered.clone()),
            (annotation::NO_DIRECT_PATH, self.no_direct.clone()),
        ])
    }

    /// What the node saw of its peers: the endpoints it discovered behind NATs and the
    /// peers it cannot reach directly.
    pub fn with_paths(
        mut self,
        discovered: &BTreeMap<PublicKey, SocketAddr>,
        no_direct: &BTreeSet<String>,
    ) -> Self {
        self.discovered = paths::discovered_annotation(discovered);
        self.no_direct = paths::no_direct_annotation(no_direct);
        self
    }

    /// True when the node already carries exactly these annotations.
    pub fn is_published_on(&self, view: &NodeView) -> bool {
        self.annotations()
            .iter()
            .all(|(k, v)| view.annotation(k) == v.as_deref())
    }
}

/// The advertisement of the local node: its key; its own endpoint (its first status
/// address of the configured type on the listen port); its public endpoint (its first
/// ExternalIP on the listen port); its pod CIDRs from spec.podCIDRs.
pub fn advertise(
    view: &NodeView,
    key: &PublicKey,
    cfg: &MeshConfig,
) -> Result<Advertisement, Problem> {
    let address = |kind: &str| {
        view.addresses
            .iter()
            .filter(|(t, _)| t == kind)
            .find_map(|(_, a)| a.parse().ok())
            .map(|ip| Endpoint {
                host: Host::Ip(ip),
                port: cfg.listen_port,
            })
    };
    let wanted = cfg.address_type.as_str();
    // One address per family, in the API's order, of the families the tunnel may use.
    let mut own: Vec<Endpoint> = Vec::new();
    for ip in view
        .addresses
        .iter()
        .filter(|(t, _)| t == wanted)
        .filter_map(|(_, a)| a.parse::<std::net::IpAddr>().ok())
        .filter(|ip| cfg.endpoint_family.allows(ip))
    {
        if !own
            .iter()
            .any(|e| matches!(e.host, Host::Ip(o) if o.is_ipv6() == ip.is_ipv6()))
        {
            own.push(Endpoint {
                host: Host::Ip(ip),
                port: cfg.listen_port,
            });
        }
    }
    let endpoint = own.first().cloned();
    if endpoint.is_none() && view.annotation(annotation::FORCE_ENDPOINT).is_none() {
        return Err(Problem::NoNodeAddress {
            address_type: match cfg.endpoint_family {
                EndpointFamily::Auto => wanted,
                EndpointFamily::Ipv4 if wanted == "InternalIP" => "IPv4 InternalIP",
                EndpointFamily::Ipv4 => "IPv4 ExternalIP",
                EndpointFamily::Ipv6 if wanted == "InternalIP" => "IPv6 InternalIP",
                EndpointFamily::Ipv6 => "IPv6 ExternalIP",
            },
        });
    }
    if let Some(forced) = view.annotation(annotation::FORCE_ENDPOINT) {
        Endpoint::parse(forced, true)
            .map_err(|e| Problem::bad_endpoint(annotation::FORCE_ENDPOINT, forced, e))?;
    }
    if view.pod_cidrs.is_empty() {
        return Err(Problem::NoPodCidrs);
    }
    let pod_subnets =
        PodSubnets::parse(&view.pod_cidrs).map_err(|e| Problem::bad_cidrs("spec.podCIDRs", e))?;
    Ok(Advertisement {
        public_key: *key,
        endpoint,
        endpoints: own,
        pod_subnets,
        public_endpoint: address(AddressType::ExternalIP.as_str()),
        discovered: None,
        no_direct: None,
    })
}
