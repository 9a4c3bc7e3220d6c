//! Domain types of wgmesh, free of Kubernetes and netlink types. Pure.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Annotations a node agent publishes on its own Node, and the ones users set.
pub mod annotation {
    /// base64 of the node's 32-byte WireGuard public key.
    pub const PUBLIC_KEY: &str = "wgmesh.io/public-key";
    /// `IP:port` (or `[v6]:port`) where peers reach this node.
    pub const ENDPOINT: &str = "wgmesh.io/endpoint";
    /// Comma-separated pod CIDRs of the node (informational when spec.podCIDRs is set).
    pub const POD_CIDRS: &str = "wgmesh.io/pod-cidrs";
    /// User-set endpoint override: IP or DNS name, with port.
    pub const FORCE_ENDPOINT: &str = "wgmesh.io/force-endpoint";
    /// User-set persistent keepalive in seconds for peers of this node (0 = off).
    pub const PERSISTENT_KEEPALIVE: &str = "wgmesh.io/persistent-keepalive";
    /// User-set: a new value asks the node's agent to rotate its key
    /// (`wgmesh rotate-key` sets it to the current time).
    pub const ROTATE_KEY: &str = "wgmesh.io/rotate-key";
    /// Agent-written when the node has endpoints of both families: all of them,
    /// comma-separated (`wgmesh.io/endpoint` holds the first, for older agents).
    pub const ENDPOINTS: &str = "wgmesh.io/endpoints";
    /// Agent-written: where nodes in other locations reach this one (its ExternalIP and
    /// the listen port), when it has a public address.
    pub const PUBLIC_ENDPOINT: &str = "wgmesh.io/public-endpoint";
    /// Agent-written: the endpoints this node saw other nodes' authenticated packets come
    /// from, where that differs from what they publish (a NAT in between). JSON: public
    /// key (base64) to `IP:port`.
    pub const DISCOVERED_ENDPOINTS: &str = "wgmesh.io/discovered-endpoints";
    /// Agent-written: nodes this node cannot reach directly (both behind NAT, no direct
    /// handshake): that pair goes through a relay. JSON list of node names.
    pub const NO_DIRECT_PATH: &str = "wgmesh.io/no-direct-path";
    /// Prefix of every wgmesh annotation.
    pub const PREFIX: &str = "wgmesh.io/";
}

/// Node labels the mesh reads.
pub mod label {
    /// Admin-set: the node's location (nodes of one location reach each other on their
    /// private addresses).
    pub const LOCATION: &str = "wgmesh.io/location";
    /// Set by cloud providers and admins: the node's region, its location when
    /// `wgmesh.io/location` is not set.
    pub const REGION: &str = "topology.kubernetes.io/region";
}

/// What the mesh needs to know of one Kubernetes Node, as plain data (built from the
/// API object by `k8s::translate`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    /// Only the `wgmesh.io/*` annotations.
    pub annotations: BTreeMap<String, String>,
    /// spec.podCIDRs, or `[spec.podCIDR]` on clusters that only set the old field.
    pub pod_cidrs: Vec<String>,
    /// status.addresses as (type, address), in API order.
    pub addresses: Vec<(String, String)>,
    /// Only the labels in [`label`].
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl NodeView {
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }

    /// The node's location: `wgmesh.io/location`, else its region; `None` when it has
    /// neither (a location of its own).
    pub fn location(&self) -> Option<&str> {
        [label::LOCATION, label::REGION]
            .iter()
            .find_map(|k| self.labels.get(*k))
            .map(String::as_str)
            .filter(|l| !l.is_empty())
    }
}

/// Which of a node's status.addresses peers should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AddressType {
    #[default]
    InternalIP,
    ExternalIP,
}

impl AddressType {
    pub fn as_str(&self) -> &'static str {
        match self {
            AddressType::InternalIP => "InternalIP",
            AddressType::ExternalIP => "ExternalIP",
        }
    }
}

impl FromStr for AddressType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "InternalIP" => Ok(AddressType::InternalIP),
            "ExternalIP" => Ok(AddressType::ExternalIP),
            other => Err(format!("{other:?} is not InternalIP or ExternalIP")),
        }
    }
}

/// Which address family of the nodes' addresses carries the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum EndpointFamily {
    /// Every family the node has; a pair uses the one both nodes have, IPv6 when both
    /// have both.
    #[default]
    Auto,
    Ipv4,
    Ipv6,
}

impl EndpointFamily {
    /// Whether an endpoint address of this family may be used.
    pub fn allows(self, ip: &IpAddr) -> bool {
        match self {
            EndpointFamily::Auto => true,
            EndpointFamily::Ipv4 => ip.is_ipv4(),
            EndpointFamily::Ipv6 => ip.is_ipv6(),
        }
    }
}

impl FromStr for EndpointFamily {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(EndpointFamily::Auto),
            "ipv4" => Ok(EndpointFamily::Ipv4),
            "ipv6" => Ok(EndpointFamily::Ipv6),
            other => Err(format!("{other:?} is not ipv4, ipv6 or auto")),
        }
    }
}

/// The host part of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Host {
    Ip(IpAddr),
    /// A DNS name, resolved by the data plane (allowed in `wgmesh.io/force-endpoint`).
    Dns(String),
}

/// Where a WireGuard peer is reached: host and UDP port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    pub host: Host,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("{0:?} has no port (expected HOST:PORT, or [IPv6]:PORT)")]
    NoPort(String),
    #[error("{0:?} has an invalid port (1-65535)")]
    BadPort(String),
    #[error("{0:?} is not an IP address or DNS name")]
    BadHost(String),
    #[error("{0:?}: a DNS name is not allowed here, only an IP address")]
    DnsNotAllowed(String),
}

impl Endpoint {
    pub fn ip(addr: SocketAddr) -> Self {
        Endpoint {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        }
    }

    /// Parses `IP:port`, `[v6]:port` or, when `allow_dns`, `name:port`.
    pub fn parse(s: &str, allow_dns: bool) -> Result<Self, EndpointError> {
        let s = s.trim();
        if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(EndpointError::BadPort(s.to_string()));
            }
            return Ok(Endpoint::ip(addr));
        }
        // Not a socket address: an IP without a port, a bracketed IPv6 without a
        // port, or a DNS name with a port.
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(EndpointError::NoPort(s.to_string()));
        };
        if s.parse::<IpAddr>().is_ok() || (s.starts_with('[') && s.ends_with(']')) {
            return Err(EndpointError::NoPort(s.to_string()));
        }
        if host.contains(':') || host.starts_with('[') {
            return Err(EndpointError::BadHost(s.to_string()));
        }
        let port: u16 = match port.parse() {
            Ok(p) if p > 0 => p,
            _ => return Err(EndpointError::BadPort(s.to_string())),
        };
        if host.parse::<IpAddr>().is_ok() {
            // `1.2.3.4:x` with a bad port was handled above; an IP here means a bad port.
            return Err(EndpointError::BadPort(s.to_string()));
        }
        if !is_dns_name(host) {
            return Err(EndpointError::BadHost(s.to_string()));
        }
        if !allow_dns {
            return Err(EndpointError::DnsNotAllowed(s.to_string()));
        }
        Ok(Endpoint {
            host: Host::Dns(host.to_ascii_lowercase()),
            port,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(ip) => write!(f, "{}", SocketAddr::new(*ip, self.port)),
            Host::Dns(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens, at
/// most 63 bytes each and 253 in all, not all-numeric at the top level.
fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    let labels_ok = s.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    let tld_numeric = s
        .rsplit('.')
        .next()
        .is_some_and(|t| t.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && !tld_numeric
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_strictly() {
        let ok: &[(&str, bool, &str)] = &[
            ("192.0.2.10:51820", false, "192.0.2.10:51820"),
            ("[2001:db8::1]:51820", false, "[2001:db8::1]:51820"),
            (" 198.51.100.7:1 ", false, "198.51.100.7:1"),
            ("node-a.example.com:51820", true, "node-a.example.com:51820"),
            ("Node-A.Example.COM.:443", true, "node-a.example.com.:443"),
        ];
        for (input, dns, want) in ok {
            let e = Endpoint::parse(input, *dns).unwrap_or_else(|err| panic!("{input}: {err}"));
            assert_eq!(e.to_string(), *want);
        }
        type Check = fn(&EndpointError) -> bool;
        let bad: &[(&str, bool, Check)] = &[
            ("192.0.2.10", false, |e| {
                matches!(e, EndpointError::NoPort(_))
            }),
            ("2001:db8::1", false, |e| {
                matches!(e, EndpointError::NoPort(_))
            }),
            ("[2001:db8::1]", false, |e| {
                matches!(e, EndpointError::NoPort(_))
            }),
            ("2001:db8::1:51820x", false, |e| {
                matches!(e, EndpointError::BadHost(_))
            }),
            ("192.0.2.10:0", false, |e| {
                matches!(e, EndpointError::BadPort(_))
            }),
            ("192.0.2.10:65536", false, |e| {
                matches!(e, EndpointError::BadPort(_))
            }),
            ("192.0.2.10:port", false, |e| {
                matches!(e, EndpointError::BadPort(_))
            }),
            ("node.example.com:51820", false, |e| {
                matches!(e, EndpointError::DnsNotAllowed(_))
            }),
            ("bad_name!:51820", true, |e| {
                matches!(e, EndpointError::BadHost(_))
            }),
            ("-lead.example:51820", true, |e| {
                matches!(e, EndpointError::BadHost(_))
            }),
            ("1.2.3:51820", true, |e| {
                matches!(e, EndpointError::BadHost(_))
            }),
            (":51820", true, |e| matches!(e, EndpointError::BadHost(_))),
            ("", true, |e| matches!(e, EndpointError::NoPort(_))),
        ];
        for (input, dns, check) in bad {
            let err = Endpoint::parse(input, *dns).expect_err(input);
            assert!(check(&err), "{input:?}: unexpected {err:?}");
        }
    }
}
