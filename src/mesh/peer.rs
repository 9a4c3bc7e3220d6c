//! External peers (`Peer` objects, `peers.wgmesh.io`): laptops and VMs outside the
//! cluster that join the mesh with wg-quick. Validation. Pure.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::problem::Problem;
use crate::key::PublicKey;
use crate::model::Endpoint;

/// Prefix that keeps external peers apart from nodes in the plan's maps (a node name
/// cannot contain '/').
pub const PEER_PREFIX: &str = "peer/";

/// A `Peer` object's spec as plain data (built from the API object by `k8s::peers`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub name: String,
    pub public_key: Option<String>,
    pub allowed_ips: Vec<String>,
    pub endpoint: Option<String>,
    pub persistent_keepalive: Option<i64>,
    /// `spec.allowedDestinations`: CIDRs beyond the pod ranges the peer may reach.
    #[serde(default)]
    pub allowed_destinations: Vec<String>,
}

/// A validated external peer; usable only when `problems` is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParsedPeer {
    pub name: String,
    pub public_key: Option<PublicKey>,
    /// `None`: the peer connects out (behind NAT) and is reached where it comes from.
    pub endpoint: Option<Endpoint>,
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: Option<u16>,
    /// Destinations beyond the pod ranges (the node itself, other networks) this peer
    /// may reach; by default it reaches pods only.
    pub allowed_destinations: Vec<IpNet>,
    pub problems: Vec<Problem>,
}

impl ParsedPeer {
    /// The name in the plan's maps: `peer/<name>`.
    pub fn id(&self) -> String {
        format!("{PEER_PREFIX}{}", self.name)
    }
}

/// Validates a Peer's spec (the API server validates it too when the CRD is installed
/// with its schema; this is the agent's own line of defence).
pub fn parse_peer(view: &PeerView) -> ParsedPeer {
    let mut problems = Vec::new();
    let public_key = match view.public_key.as_deref() {
        None => {
            problems.push(Problem::InvalidPeerSpec {
                field: "spec.publicKey",
                error: "missing".into(),
            });
            None
        }
        Some(s) => match PublicKey::from_base64(s) {
            Ok(k) if !k.is_zero() => Some(k),
            Ok(_) => {
                problems.push(Problem::InvalidPeerSpec {
                    field: "spec.publicKey",
                    error: "the all-zero key".into(),
                });
                None
            }
            Err(e) => {
                problems.push(Problem::bad_key("spec.publicKey", e));
                None
            }
        },
    };
    let allowed_ips = cidrs("spec.allowedIPs", &view.allowed_ips, &mut problems);
    if view.allowed_ips.is_empty() {
        problems.push(Problem::InvalidPeerSpec {
            field: "spec.allowedIPs",
            error: "at least one CIDR is required".into(),
        });
    }
    let allowed_destinations = cidrs(
        "spec.allowedDestinations",
        &view.allowed_destinations,
        &mut problems,
    );
    let endpoint = view
        .endpoint
        .as_deref()
        .and_then(|s| match Endpoint::parse(s, true) {
            Ok(e) => Some(e),
            Err(e) => {
                problems.push(Problem::bad_endpoint("spec.endpoint", s, e));
                None
            }
        });
    let persistent_keepalive = match view.persistent_keepalive {
        None | Some(0) => None,
        Some(s) => match u16::try_from(s) {
            Ok(s) => Some(s),
            Err(_) => {
                problems.push(Problem::InvalidPeerSpec {
                    field: "spec.persistentKeepalive",
                    error: format!("{s} is not 0-65535 seconds"),
                });
                None
            }
        },
    };
    ParsedPeer {
        name: view.name.clone(),
        public_key,
        endpoint,
        allowed_ips,
        persistent_keepalive,
        allowed_destinations,
        problems,
    }
}

/// A list of CIDRs without host bits, sorted and deduplicated; each bad entry is a
/// problem of `field`.
fn cidrs(field: &'static str, list: &[String], problems: &mut Vec<Problem>) -> Vec<IpNet> {
    let mut out = Vec::new();
    for s in list {
        match s.trim().parse::<IpNet>() {
            Ok(n) if n.trunc() == n => out.push(n),
            Ok(n) => problems.push(Problem::InvalidPeerSpec {
                field,
                error: format!("{n} has host bits set (did you mean {}?)", n.trunc()),
            }),
            Err(_) => problems.push(Problem::InvalidPeerSpec {
                field,
                error: format!("{:?} is not a CIDR", super::bounded(s)),
            }),
        }
    }
    out.sort();
    out.dedup();
    out
}
