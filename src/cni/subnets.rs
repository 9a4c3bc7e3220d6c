//! A node's pod subnets: at most one per address family, at least one (IPv4-only,
//! dual-stack and IPv6-only clusters). Pure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Why a list of CIDRs is not a usable set of pod subnets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    #[error("{0:?} is not a CIDR (expected e.g. 10.244.1.0/24)")]
    NotACidr(String),
    #[error("{0} has host bits set (did you mean {1}?)")]
    HostBitsSet(IpNet, IpNet),
    #[error("no subnet given (at least one: an IPv4 and/or an IPv6 CIDR)")]
    Empty,
    #[error("more than one {0} subnet given ({1} and {2}); at most one per address family")]
    TwoOfAFamily(&'static str, IpNet, IpNet),
    #[error("{0} is too small for pods (need at least /{1})")]
    TooSmall(IpNet, u8),
}

/// The pod subnets of one node, at most one per address family.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct PodSubnets {
    pub v4: Option<Ipv4Net>,
    pub v6: Option<Ipv6Net>,
}

/// Smallest IPv4 pod subnet: network, gateway, one pod and broadcast.
const MAX_V4_PREFIX: u8 = 30;
/// Smallest IPv6 pod subnet: subnet-router anycast, gateway and pods.
const MAX_V6_PREFIX: u8 = 126;

impl PodSubnets {
    /// Parses and validates CIDR strings such as those of `spec.podCIDRs`.
    pub fn parse<S: AsRef<str>>(cidrs: &[S]) -> Result<Self, SubnetError> {
        let nets = cidrs
            .iter()
            .map(|s| {
                let s = s.as_ref().trim();
                let net: IpNet = s
                    .parse()
                    .map_err(|_| SubnetError::NotACidr(s.to_string()))?;
                if net.trunc() != net {
                    return Err(SubnetError::HostBitsSet(net, net.trunc()));
                }
                Ok(net)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_nets(&nets)
    }

    /// Validates already-parsed networks.
    pub fn from_nets(nets: &[IpNet]) -> Result<Self, SubnetError> {
        let mut v4: Option<Ipv4Net> = None;
        let mut v6: Option<Ipv6Net> = None;
        for net in nets {
            match *net {
                IpNet::V4(n) => {
                    if let Some(prev) = v4 {
                        return Err(SubnetError::TwoOfAFamily("IPv4", prev.into(), n.into()));
                    }
                    if n.prefix_len() > MAX_V4_PREFIX {
                        return Err(SubnetError::TooSmall(n.into(), MAX_V4_PREFIX));
                    }
                    v4 = Some(n);
                }
                IpNet::V6(n) => {
                    if let Some(prev) = v6 {
                        return Err(SubnetError::TwoOfAFamily("IPv6", prev.into(), n.into()));
                    }
                    if n.prefix_len() > MAX_V6_PREFIX {
                        return Err(SubnetError::TooSmall(n.into(), MAX_V6_PREFIX));
                    }
                    v6 = Some(n);
                }
            }
        }
        if v4.is_none() && v6.is_none() {
            return Err(SubnetError::Empty);
        }
        Ok(Self { v4, v6 })
    }

    /// Every subnet, IPv4 first.
    pub fn nets(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.v4
            .map(IpNet::V4)
            .into_iter()
            .chain(self.v6.map(IpNet::V6))
    }

    /// The IPv4 gateway: the first usable address of the subnet, held by the bridge.
    pub fn gateway_v4(&self) -> Option<Ipv4Addr> {
        self.v4.map(first_host_v4)
    }

    /// The IPv6 gateway.
    pub fn gateway_v6(&self) -> Option<Ipv6Addr> {
        self.v6.map(first_host_v6)
    }

    /// The gateway address of each subnet with its prefix, as configured on the bridge.
    pub fn gateways(&self) -> Vec<IpNet> {
        self.nets()
            .map(|net| {
                IpNet::new(self.gateway_of(net), net.prefix_len()).expect("prefix of a valid net")
            })
            .collect()
    }

    /// The gateway for a given subnet of this node.
    pub fn gateway_of(&self, net: IpNet) -> IpAddr {
        match net {
            IpNet::V4(n) => IpAddr::V4(first_host_v4(n)),
            IpNet::V6(n) => IpAddr::V6(first_host_v6(n)),
        }
    }

    /// A stable locally administered MAC for the node's bridge, derived from the IPv4
    /// gateway (the `0a:58` convention of OVN-Kubernetes), so pods' neighbour entries for
    /// the gateway stay valid when the bridge is recreated and ports come and go.
    pub fn bridge_mac(&self) -> [u8; 6] {
        // IPv6-only: the XOR of the prefix's 32-bit words (nodes' /64s of one /56
        // differ only in their upper half), so each node's bridge gets its own MAC.
        let o = match (self.gateway_v4(), self.v6) {
            (Some(gw), _) => gw.octets(),
            (None, Some(net)) => {
                let n = u128::from(net.network());
                let folded = ((n >> 64) as u32) ^ ((n >> 96) as u32) ^ (n as u32) ^ 1;
                folded.to_be_bytes()
            }
            (None, None) => [0; 4],
        };
        [0x0a, 0x58, o[0], o[1], o[2], o[3]]
    }

    /// Comma-separated, as in the `wgmesh.io/pod-cidrs` annotation.
    pub fn to_annotation(&self) -> String {
        self.nets()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn first_host_v4(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

fn first_host_v6(net: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_the_documented_shapes() {
        let cases: &[(&[&str], Option<&str>, Option<&str>)] = &[
            (&["10.244.1.0/24"], Some("10.244.1.0/24"), None),
            (
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
                Some("10.244.1.0/24"),
                Some("fd00:10:244:1::/64"),
            ),
            (
                &["fd00:10:244:1::/64", "10.244.1.0/24"],
                Some("10.244.1.0/24"),
                Some("fd00:10:244:1::/64"),
            ),
            (&[" 10.244.0.0/30 "], Some("10.244.0.0/30"), None),
            (&["fd00:10:244:1::/64"], None, Some("fd00:10:244:1::/64")),
        ];
        for (input, v4, v6) in cases {
            let s = PodSubnets::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(s.v4.map(|n| n.to_string()).as_deref(), *v4, "{input:?}");
            assert_eq!(s.v6.map(|n| n.to_string()).as_deref(), *v6, "{input:?}");
        }
    }

    #[test]
    fn parse_rejects_what_cannot_be_a_node_subnet() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "no subnet given"),
            (&["10.244.1.0"], "is not a CIDR"),
            (&["10.244.1.0/33"], "is not a CIDR"),
            (&["banana"], "is not a CIDR"),
            (&["10.244.1.1/24"], "host bits set"),
            (&["10.244.1.0/24", "10.244.2.0/24"], "more than one IPv4"),
            (
                &["10.244.1.0/24", "fd00::/64", "fd01::/64"],
                "more than one IPv6",
            ),
            (&["10.244.1.0/31"], "too small"),
            (&["10.244.1.0/24", "fd00::/127"], "too small"),
        ];
        for (input, want) in cases {
            let err = PodSubnets::parse(input).expect_err(&format!("{input:?} must be rejected"));
            assert!(
                err.to_string().contains(want),
                "{input:?}: {err} does not say {want:?}"
            );
        }
    }

    #[test]
    fn gateways_are_the_first_usable_addresses() {
        let s = PodSubnets::parse(&["10.244.7.0/24", "fd00:10:244:7::/64"]).unwrap();
        assert_eq!(s.gateway_v4(), Some(Ipv4Addr::new(10, 244, 7, 1)));
        assert_eq!(s.gateway_v6(), Some("fd00:10:244:7::1".parse().unwrap()));
        let gws: Vec<String> = s.gateways().iter().map(|g| g.to_string()).collect();
        assert_eq!(gws, ["10.244.7.1/24", "fd00:10:244:7::1/64"]);
        assert_eq!(s.bridge_mac(), [0x0a, 0x58, 10, 244, 7, 1]);
        assert_eq!(s.to_annotation(), "10.244.7.0/24,fd00:10:244:7::/64");
        let v6 = PodSubnets::parse(&["fd00:10:244:7::/64"]).unwrap();
        assert_eq!(v6.gateway_v4(), None);
        let gws: Vec<String> = v6.gateways().iter().map(|g| g.to_string()).collect();
        assert_eq!(gws, ["fd00:10:244:7::1/64"]);
        let other = PodSubnets::parse(&["fd00:10:244:8::/64"]).unwrap();
        assert_ne!(v6.bridge_mac(), other.bridge_mac(), "one MAC per node");
        assert_eq!(v6.bridge_mac()[..2], [0x0a, 0x58]);
    }
}
