//! Why a node is left out of the mesh, or used with a caveat. Pure.

use std::fmt;

use ipnet::IpNet;
use serde::Serialize;

use super::bounded;
use crate::cni::SubnetError;
use crate::key::KeyError;
use crate::model::EndpointError;

/// A reason to leave a node out of the mesh. Reported as a Kubernetes Event on that
/// Node (reason [`Problem::reason`], message its `Display`) and a log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "camelCase")]
pub enum Problem {
    /// No wgmesh annotation at all: the node's agent has not published yet (or the
    /// node does not run wgmesh). Expected while a node joins; not worth an Event.
    NotPublished,
    MissingAnnotation {
        key: &'static str,
    },
    /// A `Peer` object's spec is unusable.
    InvalidPeerSpec {
        field: &'static str,
        error: String,
    },
    /// The local node has no status address of the configured type.
    NoNodeAddress {
        address_type: &'static str,
    },
    InvalidPublicKey {
        key: &'static str,
        error: String,
    },
    InvalidEndpoint {
        key: &'static str,
        value: String,
        error: String,
    },
    NoPodCidrs,
    InvalidPodCidrs {
        source: &'static str,
        error: String,
    },
    PodCidrOutsideCluster {
        cidr: IpNet,
    },
    /// The node's pod network has an IPv6 range but its MTU is under IPv6's minimum.
    MtuTooSmallForIpv6 {
        mtu: u32,
    },
    /// The node publishes endpoints only of families this node cannot use.
    NoCommonAddressFamily {
        peer: String,
        local: String,
    },
    /// The local node's own pod CIDR is outside `--cluster-cidr`: the agent's
    /// configuration is wrong, so it gives no pod a network.
    LocalPodCidrOutsideCluster {
        cidr: IpNet,
        cluster_cidrs: Vec<IpNet>,
    },
    /// Two or more nodes publish this key; none of them is used.
    DuplicatePublicKey {
        others: Vec<String>,
    },
    /// The node publishes this node's own public key.
    PublicKeyOfThisNode,
    /// Its pod CIDR overlaps another node's; neither is used.
    OverlappingPodCidr {
        cidr: IpNet,
        other: String,
        other_cidr: IpNet,
    },
    /// An external peer claims (part of) a node's pod CIDR; the node keeps it.
    PodCidrOfNode {
        cidr: IpNet,
        node: String,
        node_cidr: IpNet,
    },
    /// An external peer uses a node's public key; the node keeps it.
    PublicKeyOfNode {
        node: String,
    },
    /// Its pod CIDR overlaps this node's own, which always wins here.
    PodCidrOfThisNode {
        cidr: IpNet,
        local_cidr: IpNet,
    },
}

impl Problem {
    // Values and errors quoting them are bounded (`super::bounded`): a Node writer
    // chooses them.
    pub(crate) fn bad_key(key: &'static str, e: KeyError) -> Self {
        Problem::InvalidPublicKey {
            key,
            error: bounded(&e.to_string()).into_owned(),
        }
    }

    pub(crate) fn bad_endpoint(key: &'static str, value: &str, e: EndpointError) -> Self {
        // The error quotes the value again: say only what is wrong with it.
        let error = match e {
            EndpointError::NoPort(_) => "no port (expected IP:PORT, or [IPv6]:PORT)",
            EndpointError::BadPort(_) => "invalid port (1-65535)",
            EndpointError::BadHost(_) => "not an IP address or DNS name",
            EndpointError::DnsNotAllowed(_) => {
                "a DNS name is not allowed here, only an IP address (names are for wgmesh.io/force-endpoint)"
            }
        };
        Problem::InvalidEndpoint {
            key,
            value: bounded(value).into_owned(),
            error: error.to_string(),
        }
    }

    pub(crate) fn bad_cidrs(source: &'static str, e: SubnetError) -> Self {
        Problem::InvalidPodCidrs {
            source,
            error: bounded(&e.to_string()).into_owned(),
        }
    }

    /// Whether the problem deserves an Event (a node still joining does not).
    pub fn is_reportable(&self) -> bool {
        !matches!(self, Problem::NotPublished)
    }

    /// The Event reason: a short CamelCase word, stable for alerting.
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::NotPublished => "NotPublished",
            Problem::InvalidPeerSpec { .. } => "InvalidPeerSpec",
            Problem::MissingAnnotation { .. } => "MissingAnnotation",
            Problem::NoNodeAddress { .. } => "NoNodeAddress",
            Problem::InvalidPublicKey { .. } => "InvalidPublicKey",
            Problem::InvalidEndpoint { .. } => "InvalidEndpoint",
            Problem::NoPodCidrs => "NoPodCIDRs",
            Problem::InvalidPodCidrs { .. } => "InvalidPodCIDRs",
            Problem::PodCidrOutsideCluster { .. } => "PodCIDROutsideCluster",
            Problem::LocalPodCidrOutsideCluster { .. } => "ClusterCIDRMisconfigured",
            Problem::NoCommonAddressFamily { .. } => "NoCommonAddressFamily",
            Problem::MtuTooSmallForIpv6 { .. } => "MTUTooSmallForIPv6",
            Problem::DuplicatePublicKey { .. } => "DuplicatePublicKey",
            Problem::PublicKeyOfThisNode | Problem::PublicKeyOfNode { .. } => "DuplicatePublicKey",
            Problem::OverlappingPodCidr { .. }
            | Problem::PodCidrOfThisNode { .. }
            | Problem::PodCidrOfNode { .. } => "OverlappingPodCIDR",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::InvalidPeerSpec { field, error } => write!(f, "{field}: {error}"),
            Problem::NotPublished => write!(
                f,
                "node has not published its WireGuard key and endpoint (is wgmesh running there?)"
            ),
            Problem::MissingAnnotation { key } => write!(f, "annotation {key} is missing"),
            Problem::NoNodeAddress { address_type } => {
                write!(
                    f,
                    "node has no {address_type} in status.addresses (set wgmesh.io/force-endpoint)"
                )
            }
            Problem::InvalidPublicKey { key, error } => write!(f, "annotation {key}: {error}"),
            Problem::InvalidEndpoint { key, value, error } => {
                write!(f, "annotation {key}={value:?}: {error}")
            }
            Problem::NoPodCidrs => write!(
                f,
                "node has no pod CIDR (spec.podCIDRs and wgmesh.io/pod-cidrs are empty)"
            ),
            Problem::InvalidPodCidrs { source, error } => write!(f, "{source}: {error}"),
            Problem::PodCidrOutsideCluster { cidr } => {
                write!(f, "pod CIDR {cidr} is outside the cluster CIDRs")
            }
            Problem::MtuTooSmallForIpv6 { mtu } => write!(
                f,
                "the mesh MTU would be {mtu}, under the 1280 bytes IPv6 needs (RFC 8200), and this node's pods have an IPv6 range: raise the underlay's MTU or --mtu; no pod gets a network on this node meanwhile"
            ),
            Problem::NoCommonAddressFamily { peer, local } => write!(
                f,
                "node publishes {peer} endpoints only, and this node can use {local} ones only (--endpoint-family, or its addresses): no path between them"
            ),
            Problem::LocalPodCidrOutsideCluster {
                cidr,
                cluster_cidrs,
            } => {
                let family = if cidr.addr().is_ipv6() {
                    "IPv6"
                } else {
                    "IPv4"
                };
                let list = cluster_cidrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                let same_family = cluster_cidrs
                    .iter()
                    .any(|c| c.addr().is_ipv6() == cidr.addr().is_ipv6());
                let why = if same_family {
                    "is not inside".to_string()
                } else {
                    format!("has no {family} prefix in")
                };
                write!(
                    f,
                    "this node's pod CIDR {cidr} (spec.podCIDRs) {why} --cluster-cidr {list}: \
                     no pod gets a network on this node until --cluster-cidr covers every pod \
                     range (the wgmesh-config ConfigMap's cluster-cidr)"
                )
            }
            Problem::DuplicatePublicKey { others } => {
                write!(
                    f,
                    "public key is also published by {}; none of them is used",
                    others.join(", ")
                )
            }
            Problem::PublicKeyOfThisNode => {
                write!(f, "node publishes the public key of the local node")
            }
            Problem::PublicKeyOfNode { node } => {
                write!(f, "uses the public key of node {node}; the node keeps it")
            }
            Problem::PodCidrOfNode {
                cidr,
                node,
                node_cidr,
            } => {
                write!(
                    f,
                    "{cidr} overlaps pod CIDR {node_cidr} of node {node}; the node keeps it"
                )
            }
            Problem::OverlappingPodCidr {
                cidr,
                other,
                other_cidr,
            } => {
                write!(
                    f,
                    "pod CIDR {cidr} overlaps {other_cidr} of node {other}; neither is used"
                )
            }
            Problem::PodCidrOfThisNode { cidr, local_cidr } => {
                write!(f, "pod CIDR {cidr} overlaps the local node's {local_cidr}")
            }
        }
    }
}

/// Something odd about a node that is still used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "camelCase")]
pub enum Warning {
    /// The annotation's CIDRs differ from spec.podCIDRs, which wins.
    PodCidrAnnotationDisagrees { annotation: String, spec: String },
    /// No spec.podCIDRs: the CIDRs come from the annotation.
    PodCidrsFromAnnotation,
    /// Unusable `wgmesh.io/persistent-keepalive`; the agent's default applies.
    InvalidPersistentKeepalive { value: String },
    /// An annotation that only guides path choice is malformed or too big: ignored.
    InvalidAnnotation { key: &'static str, error: String },
}

impl Warning {
    pub fn reason(&self) -> &'static str {
        match self {
            Warning::PodCidrAnnotationDisagrees { .. } => "PodCIDRAnnotationIgnored",
            Warning::PodCidrsFromAnnotation => "PodCIDRsFromAnnotation",
            Warning::InvalidPersistentKeepalive { .. } => "InvalidPersistentKeepalive",
            Warning::InvalidAnnotation { .. } => "InvalidAnnotation",
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::PodCidrAnnotationDisagrees { annotation, spec } => write!(
                f,
                "annotation wgmesh.io/pod-cidrs={annotation:?} disagrees with spec.podCIDRs {spec:?}; spec.podCIDRs is used"
            ),
            Warning::PodCidrsFromAnnotation => {
                write!(
                    f,
                    "node has no spec.podCIDRs; using annotation wgmesh.io/pod-cidrs"
                )
            }
            Warning::InvalidPersistentKeepalive { value } => write!(
                f,
                "annotation wgmesh.io/persistent-keepalive={value:?} is not 0-65535 seconds; using the default"
            ),
            Warning::InvalidAnnotation { key, error } => {
                write!(f, "annotation {key} ignored: {error}")
            }
        }
    }
}
