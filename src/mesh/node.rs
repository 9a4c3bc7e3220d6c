//! One node's annotations and spec, validated: what the mesh may use of it. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use ipnet::IpNet;
use serde::Serialize;

use super::MeshConfig;
use super::problem::{Problem, Warning};
use crate::cni::PodSubnets;
use crate::key::PublicKey;
use crate::model::{Endpoint, NodeView, annotation};

/// A node after validation. It can peer only if `problems` is empty, and then every
/// field is `Some`. The local node uses `pod_subnets` even while its own annotations
/// are not published yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParsedNode {
    pub name: String,
    pub public_key: Option<PublicKey>,
    /// `wgmesh.io/endpoint`: the node's own address (private inside its location).
    pub endpoint: Option<Endpoint>,
    /// Every own address it publishes (`wgmesh.io/endpoints`, else just `endpoint`),
    /// one per family at most.
    pub endpoints: Vec<Endpoint>,
    /// `wgmesh.io/force-endpoint`: the administrator's override for other locations.
    pub forced_endpoint: Option<Endpoint>,
    /// `wgmesh.io/public-endpoint`: its public address, for other locations.
    pub public_endpoint: Option<Endpoint>,
    /// Its location (`wgmesh.io/location`, else its region); `None`: its own.
    pub location: Option<String>,
    /// The endpoints it observed for other nodes (by public key).
    pub discovered: BTreeMap<PublicKey, SocketAddr>,
    /// Nodes it cannot reach directly (their pair goes through a relay).
    pub no_direct: BTreeSet<String>,
    pub pod_subnets: Option<PodSubnets>,
    /// `pod_subnets` come from spec.podCIDRs (the controller-manager's allocation), not
    /// only from the `wgmesh.io/pod-cidrs` annotation that any Node writer can set.
    pub pod_subnets_from_spec: bool,
    /// Every entry of spec.podCIDRs that parses as a CIDR, valid pod subnets or not:
    /// the node's guard covers them whatever else is wrong with the node.
    pub spec_cidrs: Vec<IpNet>,
    /// Persistent keepalive for the peer of this node, seconds; `None` = off.
    pub persistent_keepalive: Option<u16>,
    pub problems: Vec<Problem>,
    pub warnings: Vec<Warning>,
}

impl ParsedNode {
    pub fn is_usable(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Validates everything the mesh reads from a node. Every problem is reported, not
/// just the first, so one Event tells the operator all that is wrong.
pub fn parse(view: &NodeView, cfg: &MeshConfig) -> ParsedNode {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let published = [
        annotation::PUBLIC_KEY,
        annotation::ENDPOINT,
        annotation::FORCE_ENDPOINT,
    ]
    .iter()
    .any(|k| view.annotation(k).is_some());

    let public_key = match view.annotation(annotation::PUBLIC_KEY) {
        None => {
            problems.push(Problem::MissingAnnotation {
                key: annotation::PUBLIC_KEY,
            });
            None
        }
        Some(s) => match PublicKey::from_base64(s) {
            Ok(k) if k.is_zero() => {
                problems.push(Problem::InvalidPublicKey {
                    key: annotation::PUBLIC_KEY,
                    error: "the all-zero key is not a usable key".into(),
                });
                None
            }
            Ok(k) => Some(k),
            Err(e) => {
                problems.push(Problem::bad_key(annotation::PUBLIC_KEY, e));
                None
            }
        },
    };

    // The agent publishes an IP address; only an administrator's force-endpoint may
    // name a host (resolved by the data plane, off the reconcile path).
    let forced = endpoint_annotation(view, annotation::FORCE_ENDPOINT, true, &mut problems);
    let endpoint = endpoint_annotation(view, annotation::ENDPOINT, false, &mut problems);
    if forced.is_none()
        && endpoint.is_none()
        && view.annotation(annotation::FORCE_ENDPOINT).is_none()
        && view.annotation(annotation::ENDPOINT).is_none()
    {
        problems.push(Problem::MissingAnnotation {
            key: annotation::ENDPOINT,
        });
    }
    // What only guides the choice of a path: a bad value is ignored with a warning,
    // never a reason to leave the node out.
    let public_endpoint = match view.annotation(annotation::PUBLIC_ENDPOINT) {
        None => None,
        Some(s) => match Endpoint::parse(s, false) {
            Ok(e) => Some(e),
            Err(e) => {
                warnings.push(Warning::InvalidAnnotation {
                    key: annotation::PUBLIC_ENDPOINT,
                    error: super::bounded(&e.to_string()).into_owned(),
                });
                None
            }
        },
    };
    let endpoints = match view.annotation(annotation::ENDPOINTS) {
        None => endpoint.iter().cloned().collect(),
        Some(list) => {
            let mut all = Vec::new();
            for s in list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .take(8)
            {
                match Endpoint::parse(s, false) {
                    Ok(e) => all.push(e),
                    Err(e) => warnings.push(Warning::InvalidAnnotation {
                        key: annotation::ENDPOINTS,
                        error: super::bounded(&e.to_string()).into_owned(),
                    }),
                }
            }
            if let Some(primary) = &endpoint
                && !all.contains(primary)
            {
                all.insert(0, primary.clone());
            }
            all
        }
    };
    let discovered = super::paths::parse_discovered(view, &mut warnings);
    let no_direct = super::paths::parse_no_direct(view, &mut warnings);

    let pod_subnets = pod_subnets(view, &mut problems, &mut warnings);
    if let Some(subnets) = &pod_subnets {
        for cidr in subnets.nets() {
            if !cfg.cluster_cidrs.is_empty() && !cfg.cluster_cidrs.iter().any(|c| c.contains(&cidr))
            {
                problems.push(Problem::PodCidrOutsideCluster { cidr });
            }
        }
    }

    let persistent_keepalive = match view.annotation(annotation::PERSISTENT_KEEPALIVE) {
        None => cfg.persistent_keepalive,
        Some(v) => match v.trim().parse::<u16>() {
            Ok(0) => None,
            Ok(s) => Some(s),
            Err(_) => {
                warnings.push(Warning::InvalidPersistentKeepalive {
                    value: super::bounded(v).into_owned(),
                });
                cfg.persistent_keepalive
            }
        },
    };

    if !published {
        // Only "not yet": the individual missing annotations would just be noise.
        problems.retain(|p| !matches!(p, Problem::MissingAnnotation { .. }));
        problems.insert(0, Problem::NotPublished);
    }
    ParsedNode {
        name: view.name.clone(),
        public_key,
        endpoint,
        endpoints,
        forced_endpoint: forced,
        public_endpoint,
        location: view.location().map(String::from),
        discovered,
        no_direct,
        pod_subnets,
        pod_subnets_from_spec: pod_subnets.is_some() && !view.pod_cidrs.is_empty(),
        spec_cidrs: view
            .pod_cidrs
            .iter()
            .filter_map(|c| c.trim().parse::<IpNet>().ok())
            .map(|n| n.trunc())
            .collect(),
        persistent_keepalive,
        problems,
        warnings,
    }
}

/// An endpoint annotation, if present and valid (a bad one is a problem).
fn endpoint_annotation(
    view: &NodeView,
    key: &'static str,
    allow_dns: bool,
    problems: &mut Vec<Problem>,
) -> Option<Endpoint> {
    let s = view.annotation(key)?;
    match Endpoint::parse(s, allow_dns) {
        Ok(e) => Some(e),
        Err(e) => {
            problems.push(Problem::bad_endpoint(key, s, e));
            None
        }
    }
}

/// spec.podCIDRs when set (the controller-manager assigns them, so a node cannot
/// claim another's range by annotation); the annotation otherwise.
fn pod_subnets(
    view: &NodeView,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Warning>,
) -> Option<PodSubnets> {
    let from_annotation: Option<Vec<&str>> = view.annotation(annotation::POD_CIDRS).map(|a| {
        a.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    });
    if !view.pod_cidrs.is_empty() {
        let spec = match PodSubnets::parse(&view.pod_cidrs) {
            Ok(s) => s,
            Err(e) => {
                problems.push(Problem::bad_cidrs("spec.podCIDRs", e));
                return None;
            }
        };
        if let Some(list) = from_annotation {
            let agrees = PodSubnets::parse(&list).is_ok_and(|a| a == spec);
            if !agrees {
                warnings.push(Warning::PodCidrAnnotationDisagrees {
                    annotation: super::bounded(&list.join(",")).into_owned(),
                    spec: spec.to_annotation(),
                });
            }
        }
        return Some(spec);
    }
    match from_annotation {
        None => {
            problems.push(Problem::NoPodCidrs);
            None
        }
        Some(list) => match PodSubnets::parse(&list) {
            Ok(s) => {
                warnings.push(Warning::PodCidrsFromAnnotation);
                Some(s)
            }
            Err(e) => {
                problems.push(Problem::bad_cidrs(annotation::POD_CIDRS, e));
                None
            }
        },
    }
}
