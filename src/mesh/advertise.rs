//! What this node publishes about itself on its Node object. Pure.

use std::collections::BTreeMap;

use super::MeshConfig;
use super::problem::Problem;
use crate::cni::PodSubnets;
use crate::key::PublicKey;
use crate::model::{Endpoint, Host, NodeView, annotation};

/// The three annotations of a node's advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    pub public_key: PublicKey,
    pub endpoint: Endpoint,
    pub pod_subnets: PodSubnets,
}

impl Advertisement {
    /// The annotations exactly as published.
    pub fn annotations(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            (annotation::PUBLIC_KEY, self.public_key.to_base64()),
            (annotation::ENDPOINT, self.endpoint.to_string()),
            (annotation::POD_CIDRS, self.pod_subnets.to_annotation()),
        ])
    }

    /// True when the node already carries exactly these annotations.
    pub fn is_published_on(&self, view: &NodeView) -> bool {
        self.annotations()
            .iter()
            .all(|(k, v)| view.annotation(k) == Some(v.as_str()))
    }
}

/// The advertisement of the local node: its key; its endpoint (the user's
/// `wgmesh.io/force-endpoint`, else its first status address of the configured type on
/// the listen port); its pod CIDRs from spec.podCIDRs.
pub fn advertise(
    view: &NodeView,
    key: &PublicKey,
    cfg: &MeshConfig,
) -> Result<Advertisement, Problem> {
    let endpoint = match view.annotation(annotation::FORCE_ENDPOINT) {
        Some(forced) => Endpoint::parse(forced, true)
            .map_err(|e| Problem::bad_endpoint(annotation::FORCE_ENDPOINT, forced, e))?,
        None => {
            let wanted = cfg.address_type.as_str();
            let ip = view
                .addresses
                .iter()
                .filter(|(t, _)| t == wanted)
                .find_map(|(_, a)| a.parse().ok())
                .ok_or(Problem::NoNodeAddress {
                    address_type: wanted,
                })?;
            Endpoint {
                host: Host::Ip(ip),
                port: cfg.listen_port,
            }
        }
    };
    if view.pod_cidrs.is_empty() {
        return Err(Problem::NoPodCidrs);
    }
    let pod_subnets =
        PodSubnets::parse(&view.pod_cidrs).map_err(|e| Problem::bad_cidrs("spec.podCIDRs", e))?;
    Ok(Advertisement {
        public_key: *key,
        endpoint,
        pod_subnets,
    })
}
