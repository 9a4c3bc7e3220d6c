//! Which path each pair of nodes takes across clouds, home networks and NATs. Pure.
//!
//! Locations only choose addresses; the mesh stays full and encrypted everywhere:
//! - **same location** (both nodes carry the same `wgmesh.io/location`, else the same
//!   `topology.kubernetes.io/region`): the private endpoint (`wgmesh.io/endpoint`);
//! - **different locations**: the public endpoint, in this order: the administrator's
//!   `wgmesh.io/force-endpoint`, the node's `wgmesh.io/public-endpoint` (its ExternalIP),
//!   where this node itself sees its packets come from (observed), where other nodes
//!   published they see them (discovered), and last the private endpoint;
//! - **both behind NAT** (no public endpoint on either side, different locations): the
//!   two try each other's discovered endpoints (hole punching); when either side
//!   publishes that it cannot reach the other directly (`wgmesh.io/no-direct-path`),
//!   both send through a relay: a node with a public endpoint that both sides, and the
//!   relay itself, choose the same way ([`relay_for`]).
//!
//! A node is behind NAT when another node published a discovered endpoint for it: it
//! then keeps a [`NAT_KEEPALIVE`] towards nodes in other locations, so its NAT mappings
//! stay open and a new public address (an ISP's reconnect) is learnt within seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::node::ParsedNode;
use super::problem::{Problem, Warning};
use crate::key::PublicKey;
use crate::model::{Endpoint, EndpointFamily, NodeView, annotation};

/// The largest path annotation read (`wgmesh.io/discovered-endpoints`,
/// `wgmesh.io/no-direct-path`); a bigger one is ignored.
pub const MAX_ANNOTATION_BYTES: usize = 64 * 1024;
/// The most entries such an annotation holds (a node publishes at most these).
pub const MAX_ENTRIES: usize = 256;
/// Keepalive of a node behind NAT towards nodes in other locations, seconds: short
/// enough that a NAT gateway's new public address reaches every peer within seconds.
pub const NAT_KEEPALIVE: u16 = 5;
/// How long two nodes behind NAT try each other directly before using a relay.
pub const HOLE_PUNCH_WAIT: Duration = Duration::from_secs(5);
/// A direct path that received nothing for this long is not working (keepalives come
/// every [`NAT_KEEPALIVE`] seconds).
pub const DIRECT_SILENCE: Duration = Duration::from_secs(15);

/// A direct session with a handshake this recent is working: WireGuard rekeys a
/// session in use (keepalives count) after 120 s, and retries every 5 s.
pub const DIRECT_SESSION: Duration = Duration::from_secs(135);

/// Where a peer's endpoint came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointSource {
    /// `wgmesh.io/endpoint`, the node's own address.
    #[default]
    Private,
    /// `wgmesh.io/public-endpoint`, its public address.
    Public,
    /// `wgmesh.io/force-endpoint`, set by an administrator.
    Forced,
    /// Where this node sees the peer's authenticated packets come from.
    Observed,
    /// Where other nodes published they see them (`wgmesh.io/discovered-endpoints`).
    Discovered,
    /// An external peer's `spec.endpoint`.
    External,
}

impl EndpointSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointSource::Private => "private",
            EndpointSource::Public => "public",
            EndpointSource::Forced => "forced",
            EndpointSource::Observed => "observed",
            EndpointSource::Discovered => "discovered",
            EndpointSource::External => "external",
        }
    }

    /// Learnt from packets (this node's or others'): a working session is better proof.
    pub fn is_discovered(self) -> bool {
        matches!(self, EndpointSource::Observed | EndpointSource::Discovered)
    }
}

/// What the local node's data plane sees: where each peer's authenticated packets come
/// from, for peers with a recent handshake.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observations {
    pub endpoints: BTreeMap<PublicKey, SocketAddr>,
}

/// `wgmesh.io/discovered-endpoints` of a node: public key to `IP:port`, bounded.
pub fn parse_discovered(
    view: &NodeView,
    warnings: &mut Vec<Warning>,
) -> BTreeMap<PublicKey, SocketAddr> {
    let key = annotation::DISCOVERED_ENDPOINTS;
    let Some(entries) = bounded_json::<BTreeMap<String, String>>(view, key, warnings) else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    let mut bad = 0;
    for (k, v) in entries.iter().take(MAX_ENTRIES) {
        match (PublicKey::from_base64(k), v.trim().parse::<SocketAddr>()) {
            (Ok(k), Ok(a)) if !k.is_zero() && a.port() != 0 => {
                out.insert(k, a);
            }
            _ => bad += 1,
        }
    }
    if bad > 0 || entries.len() > MAX_ENTRIES {
        warnings.push(Warning::InvalidAnnotation {
            key,
            error: format!(
                "{bad} malformed entries and {} over the limit of {MAX_ENTRIES} ignored",
                entries.len().saturating_sub(MAX_ENTRIES)
            ),
        });
    }
    out
}

/// `wgmesh.io/no-direct-path` of a node: node names, bounded.
pub fn parse_no_direct(view: &NodeView, warnings: &mut Vec<Warning>) -> BTreeSet<String> {
    let key = annotation::NO_DIRECT_PATH;
    let Some(names) = bounded_json::<Vec<String>>(view, key, warnings) else {
        return BTreeSet::new();
    };
    if names.len() > MAX_ENTRIES {
        warnings.push(Warning::InvalidAnnotation {
            key,
            error: format!("over the limit of {MAX_ENTRIES} entries; the rest ignored"),
        });
    }
    names
        .into_iter()
        .take(MAX_ENTRIES)
        .filter(|n| !n.is_empty() && n.len() <= 253)
        .collect()
}

fn bounded_json<T: serde::de::DeserializeOwned>(
    view: &NodeView,
    key: &'static str,
    warnings: &mut Vec<Warning>,
) -> Option<T> {
    let text = view.annotation(key)?;
    if text.len() > MAX_ANNOTATION_BYTES {
        warnings.push(Warning::InvalidAnnotation {
            key,
            error: format!(
                "{} bytes, over the limit of {MAX_ANNOTATION_BYTES}",
                text.len()
            ),
        });
        return None;
    }
    match serde_json::from_str(text) {
        Ok(v) => Some(v),
        Err(e) => {
            warnings.push(Warning::InvalidAnnotation {
                key,
                error: super::bounded(&e.to_string()).into_owned(),
            });
            None
        }
    }
}

/// The annotation text of a node's discoveries (at most [`MAX_ENTRIES`], the given
/// order's first), or `None` when there are none.
pub fn discovered_annotation(found: &BTreeMap<PublicKey, SocketAddr>) -> Option<String> {
    if found.is_empty() {
        return None;
    }
    let map: BTreeMap<String, String> = found
        .iter()
        .take(MAX_ENTRIES)
        .map(|(k, a)| (k.to_base64(), a.to_string()))
        .collect();
    serde_json::to_string(&map).ok()
}

/// The annotation text of a node's no-direct-path list, or `None` when empty.
pub fn no_direct_annotation(names: &BTreeSet<String>) -> Option<String> {
    if names.is_empty() {
        return None;
    }
    let list: Vec<&String> = names.iter().take(MAX_ENTRIES).collect();
    serde_json::to_string(&list).ok()
}

/// Every node's published discoveries, by the key they are about: for each key, the
/// address most observers saw (ties: the one the alphabetically first observer saw).
/// Built once per plan: O(total entries).
#[derive(Debug, Default)]
pub struct Discoveries {
    best: BTreeMap<PublicKey, SocketAddr>,
}

impl Discoveries {
    pub fn collect<'a>(nodes: impl IntoIterator<Item = &'a ParsedNode>) -> Self {
        // key -> address -> (how many saw it, first observer's name)
        let mut votes: BTreeMap<PublicKey, BTreeMap<SocketAddr, (usize, &'a str)>> =
            BTreeMap::new();
        for n in nodes {
            for (key, addr) in &n.discovered {
                // Nobody's word about itself counts.
                if n.public_key.as_ref() == Some(key) {
                    continue;
                }
                let v = votes
                    .entry(*key)
                    .or_default()
                    .entry(*addr)
                    .or_insert((0, n.name.as_str()));
                v.0 += 1;
                v.1 = v.1.min(n.name.as_str());
            }
        }
        let best = votes
            .into_iter()
            .filter_map(|(key, addrs)| {
                addrs
                    .into_iter()
                    .max_by(|a, b| {
                        (a.1.0, std::cmp::Reverse(a.1.1)).cmp(&(b.1.0, std::cmp::Reverse(b.1.1)))
                    })
                    .map(|(addr, _)| (key, addr))
            })
            .collect();
        Discoveries { best }
    }

    /// Where other nodes see `key`'s packets come from.
    pub fn of(&self, key: &PublicKey) -> Option<SocketAddr> {
        self.best.get(key).copied()
    }
}

/// Whether two nodes are in one location (both labelled, with the same value).
pub fn same_location(a: &ParsedNode, b: &ParsedNode) -> bool {
    a.location.is_some() && a.location == b.location
}

/// A node others can reach at a public address of its own.
pub fn has_public_endpoint(n: &ParsedNode) -> bool {
    n.forced_endpoint.is_some() || n.public_endpoint.is_some()
}

/// The endpoint `local` uses for `peer`, and where it came from; a problem when the
/// pair has no address family in common.
pub fn endpoint_for(
    local: Option<&ParsedNode>,
    peer: &ParsedNode,
    own: &Observations,
    published: &Discoveries,
    family: EndpointFamily,
) -> Result<(Option<Endpoint>, EndpointSource), Problem> {
    if local.is_some_and(|l| same_location(l, peer)) {
        if let Some(e) = private_endpoint(local, peer, family)? {
            return Ok((Some(e), EndpointSource::Private));
        }
    }
    if let Some(e) = &peer.forced_endpoint {
        return Ok((Some(e.clone()), EndpointSource::Forced));
    }
    if let Some(e) = &peer.public_endpoint {
        return Ok((Some(e.clone()), EndpointSource::Public));
    }
    if let Some(key) = &peer.public_key {
        if let Some(a) = own.endpoints.get(key) {
            return Ok((Some(Endpoint::ip(*a)), EndpointSource::Observed));
        }
        if let Some(a) = published.of(key) {
            return Ok((Some(Endpoint::ip(a)), EndpointSource::Discovered));
        }
    }
    Ok((
        private_endpoint(local, peer, family)?,
        EndpointSource::Private,
    ))
}

/// The peer's own endpoint of a family both nodes have: IPv6 when both have both (with
/// `family` auto), else IPv4; a problem when they have none in common.
pub fn private_endpoint(
    local: Option<&ParsedNode>,
    peer: &ParsedNode,
    family: EndpointFamily,
) -> Result<Option<Endpoint>, Problem> {
    let ip_of = |e: &Endpoint| match e.host {
        crate::model::Host::Ip(ip) => Some(ip),
        crate::model::Host::Dns(_) => None,
    };
    let theirs: Vec<&Endpoint> = peer.endpoints.iter().collect();
    if theirs.is_empty() {
        return Ok(None);
    }
    let families = |list: &[&Endpoint]| -> (bool, bool) {
        let ips: Vec<IpAddr> = list.iter().filter_map(|e| ip_of(e)).collect();
        (
            ips.iter().any(|ip| ip.is_ipv4() && family.allows(ip)),
            ips.iter().any(|ip| ip.is_ipv6() && family.allows(ip)),
        )
    };
    let (peer_v4, peer_v6) = families(&theirs);
    let (local_v4, local_v6) = match local.map(|l| l.endpoints.iter().collect::<Vec<_>>()) {
        // Without its own published endpoints yet, the local node takes what it may.
        Some(mine) if !mine.is_empty() => families(&mine),
        _ => (
            family != EndpointFamily::Ipv6,
            family != EndpointFamily::Ipv4,
        ),
    };
    let v6 = if peer_v6 && local_v6 {
        true
    } else if peer_v4 && local_v4 {
        false
    } else {
        let name = |v4: bool, v6: bool| match (v4, v6) {
            (true, true) => "IPv4 and IPv6",
            (true, false) => "IPv4",
            (false, true) => "IPv6",
            (false, false) => "no usable",
        };
        return Err(Problem::NoCommonAddressFamily {
            peer: name(peer_v4, peer_v6).into(),
            local: name(local_v4, local_v6).into(),
        });
    };
    Ok(theirs
        .into_iter()
        .find(|e| ip_of(e).is_some_and(|ip| ip.is_ipv6() == v6))
        .cloned())
}

/// Whether `local` is behind NAT: another node published a discovered endpoint for it.
pub fn behind_nat(local: &ParsedNode, published: &Discoveries) -> bool {
    local
        .public_key
        .as_ref()
        .is_some_and(|k| published.of(k).is_some())
}

/// Both nodes behind NAT (others published where they see them, neither has a public
/// endpoint), in different locations: they punch holes, or use a relay. Decided from
/// published data only, so every node (and the relay) agrees; a cluster where nobody is
/// seen behind a NAT has no such pair.
pub fn nat_to_nat(a: &ParsedNode, b: &ParsedNode, published: &Discoveries) -> bool {
    !same_location(a, b)
        && !has_public_endpoint(a)
        && !has_public_endpoint(b)
        && behind_nat(a, published)
        && behind_nat(b, published)
}

/// Whether the pair goes through a relay: either side published that it cannot
/// reach the other directly.
pub fn relayed(a: &ParsedNode, b: &ParsedNode, published: &Discoveries) -> bool {
    nat_to_nat(a, b, published) && (a.no_direct.contains(&b.name) || b.no_direct.contains(&a.name))
}

/// The relay of the pair (`a`, `b`) among `candidates` (nodes with a public endpoint):
/// one in either node's location if there is one, else any; among those, the lowest
/// hash of the pair and the candidate, so pairs spread over relays. The same answer on
/// both sides and on the relay: it depends on names and locations only.
pub fn relay_for<'a>(
    a: &ParsedNode,
    b: &ParsedNode,
    candidates: impl IntoIterator<Item = &'a ParsedNode>,
) -> Option<&'a ParsedNode> {
    let (first, second) = if a.name <= b.name {
        (a.name.as_str(), b.name.as_str())
    } else {
        (b.name.as_str(), a.name.as_str())
    };
    let rank = |c: &ParsedNode| {
        let near = same_location(c, a) || same_location(c, b);
        let digest = Sha256::new()
            .chain_update(first.as_bytes())
            .chain_update([0])
            .chain_update(second.as_bytes())
            .chain_update([0])
            .chain_update(c.name.as_bytes())
            .finalize();
        (!near, digest, c.name.clone())
    };
    candidates
        .into_iter()
        .filter(|c| c.name != a.name && c.name != b.name && has_public_endpoint(c))
        .min_by_key(|c| rank(c))
}

/// What the local data plane saw of a direct path to a peer behind NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectPath {
    /// How long the local node has been trying this path (it had an endpoint to try).
    pub trying_for: Duration,
    /// How long since something last arrived from the peer on it (`None`: never).
    pub since_received: Option<Duration>,
    /// How long since the last handshake with the peer on it (`None`: none). One side
    /// of a quiet pair may receive nothing: WireGuard's persistent keepalive is sent
    /// only by a side that neither sent nor received for its interval, and the other
    /// side's keepalives count as received. A handshake proves both directions.
    pub since_handshake: Option<Duration>,
    /// There is an endpoint to try at all.
    pub has_endpoint: bool,
}

/// The peers (behind NAT, like the local node) that the local node cannot reach
/// directly: no working session (a handshake within [`DIRECT_SESSION`]) and nothing
/// received for [`DIRECT_SILENCE`], after trying for [`HOLE_PUNCH_WAIT`]; or nothing
/// to try. A peer stays listed until a direct handshake succeeds or something arrives
/// directly (the relayed pair keeps probing).
pub fn no_direct_paths(
    current: &BTreeSet<String>,
    paths: &BTreeMap<String, DirectPath>,
) -> BTreeSet<String> {
    paths
        .iter()
        .filter(|(name, p)| {
            let alive = p.since_received.is_some_and(|d| d < DIRECT_SILENCE)
                || p.since_handshake.is_some_and(|d| d < DIRECT_SESSION);
            if alive {
                return false;
            }
            !p.has_endpoint || current.contains(*name) || p.trying_for >= HOLE_PUNCH_WAIT
        })
        .map(|(name, _)| name.clone())
        .collect()
}

#[cfg(test)]
#[path = "paths_tests.rs"]
mod tests;
