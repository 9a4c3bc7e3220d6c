//! The address plan of the multi-cloud testbed (pure; test infrastructure).
//!
//! Public addresses are in documentation ranges only (RFC 5737), private ones in
//! 172.31.0.0/16 (the VPCs) and 192.168.0.0/16 (the homes), pods in 10.244.0.0/16:
//!
//! | site      | gateway | NAT                    | LAN             | node (private → public)            | gateway's public link                 |
//! |-----------|---------|------------------------|-----------------|-------------------------------------|----------------------------------------|
//! | `cloud-a` | `gw-a`  | 1:1, no hairpin        | 172.31.1.0/24   | a1 .2 → 203.0.113.101, a2 .3 → .102 | 203.0.113.16/29: router .17, gw .18   |
//! | `cloud-b` | `gw-b`  | 1:1, no hairpin        | 172.31.2.0/24   | b1 .2 → 203.0.113.111               | 203.0.113.24/29: router .25, gw .26   |
//! | `home1`   | `gw-h1` | port-preserving masq.  | 192.168.1.0/24  | h1 .2 → the gateway's address       | 203.0.113.120/29: gw .121, router .126 |
//! | `home2`   | `gw-h2` | symmetric masquerade   | 192.168.2.0/24  | h2 .2 → the gateway's address       | 203.0.113.128/29: gw .131, router .134 |
//!
//! Each gateway has `.1` on its LAN. The internet host is 203.0.113.10 (203.0.113.8/29,
//! router .9), the API server 198.51.100.10:6443 (198.51.100.0/24, router .1), as in
//! [`crate::addressing`]. Node `i` (a1 0, a2 1, b1 2, h1 3, h2 4) has pod CIDR
//! 10.244.i.0/24.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::addressing::{self, NodeAddresses};

/// The Node label cloud providers and admins set to a node's site.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";

/// The internet host's subnet (its address is [`addressing::INTERNET_IP`]).
pub const INTERNET_ROUTER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
pub const INTERNET_PREFIX_LEN: u8 = 29;

/// How a site's gateway translates addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// A cloud's NAT: each node has its own public address, translated statelessly
    /// both ways for every protocol and port; no hairpin (a node sending to a public
    /// address of its own gateway is dropped).
    OneToOne,
    /// A home router: every node behind the gateway's one public address (Linux
    /// `masquerade`, which keeps the source port when it is free); nothing comes in
    /// that was not sent out first, no port forward.
    PortPreserving,
    /// Like [`NatKind::PortPreserving`], but a new random source port for each
    /// destination (`masquerade random,fully-random`).
    Symmetric,
}

impl NatKind {
    /// True for the home routers' masquerade (one public address for the site).
    pub fn is_masquerade(self) -> bool {
        matches!(self, NatKind::PortPreserving | NatKind::Symmetric)
    }
}

impl std::fmt::Display for NatKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NatKind::OneToOne => "1:1 NAT, no hairpin",
            NatKind::PortPreserving => "port-preserving masquerade",
            NatKind::Symmetric => "symmetric NAT",
        })
    }
}

/// A node of a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePlan {
    /// The Kubernetes Node name.
    pub name: &'static str,
    /// Its index: pod CIDR 10.244.`index`.0/24.
    pub index: usize,
    /// Its private address on the site's LAN (its InternalIP).
    pub ip: Ipv4Addr,
    /// Its own public address on a [`NatKind::OneToOne`] gateway (its ExternalIP).
    pub public_ip: Option<Ipv4Addr>,
}

/// A site: a LAN of nodes behind a NAT gateway on the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SitePlan {
    /// The site's name: its nodes' `topology.kubernetes.io/region` label.
    pub region: &'static str,
    /// The gateway's name (also its link's name on the internet router).
    pub gateway: &'static str,
    /// The gateway's NAT when the testbed is built.
    pub nat: NatKind,
    /// The gateway's address on the LAN (the nodes' default gateway).
    pub lan_ip: Ipv4Addr,
    pub lan_prefix_len: u8,
    /// The internet router's address on the gateway's public link.
    pub wan_router_ip: Ipv4Addr,
    /// The gateway's own address on its public link (a home's one public address).
    pub wan_ip: Ipv4Addr,
    pub wan_prefix_len: u8,
    pub nodes: &'static [NodePlan],
}

const fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

const fn plan(
    name: &'static str,
    index: usize,
    ip: Ipv4Addr,
    public: Option<Ipv4Addr>,
) -> NodePlan {
    NodePlan {
        name,
        index,
        ip,
        public_ip: public,
    }
}

/// The four sites, in node order (a1, a2, b1, h1, h2).
pub const SITES: [SitePlan; 4] = [
    SitePlan {
        region: "cloud-a",
        gateway: "gw-a",
        nat: NatKind::OneToOne,
        lan_ip: ip(172, 31, 1, 1),
        lan_prefix_len: 24,
        wan_router_ip: ip(203, 0, 113, 17),
        wan_ip: ip(203, 0, 113, 18),
        wan_prefix_len: 29,
        nodes: &[
            plan("a1", 0, ip(172, 31, 1, 2), Some(ip(203, 0, 113, 101))),
            plan("a2", 1, ip(172, 31, 1, 3), Some(ip(203, 0, 113, 102))),
        ],
    },
    SitePlan {
        region: "cloud-b",
        gateway: "gw-b",
        nat: NatKind::OneToOne,
        lan_ip: ip(172, 31, 2, 1),
        lan_prefix_len: 24,
        wan_router_ip: ip(203, 0, 113, 25),
        wan_ip: ip(203, 0, 113, 26),
        wan_prefix_len: 29,
        nodes: &[plan("b1", 2, ip(172, 31, 2, 2), Some(ip(203, 0, 113, 111)))],
    },
    SitePlan {
        region: "home1",
        gateway: "gw-h1",
        nat: NatKind::PortPreserving,
        lan_ip: ip(192, 168, 1, 1),
        lan_prefix_len: 24,
        wan_router_ip: ip(203, 0, 113, 126),
        wan_ip: ip(203, 0, 113, 121),
        wan_prefix_len: 29,
        nodes: &[plan("h1", 3, ip(192, 168, 1, 2), None)],
    },
    SitePlan {
        region: "home2",
        gateway: "gw-h2",
        nat: NatKind::Symmetric,
        lan_ip: ip(192, 168, 2, 1),
        lan_prefix_len: 24,
        wan_router_ip: ip(203, 0, 113, 134),
        wan_ip: ip(203, 0, 113, 131),
        wan_prefix_len: 29,
        nodes: &[plan("h2", 4, ip(192, 168, 2, 2), None)],
    },
];

/// Every node name, in index order: `a1 a2 b1 h1 h2`.
pub fn node_names() -> Vec<&'static str> {
    nodes().map(|(_, n)| n.name).collect()
}

/// Every (site, node), in index order.
pub fn nodes() -> impl Iterator<Item = (&'static SitePlan, &'static NodePlan)> {
    SITES
        .iter()
        .flat_map(|s| s.nodes.iter().map(move |n| (s, n)))
}

/// The site and plan of node `name`; panics for an unknown name.
pub fn node(name: &str) -> (&'static SitePlan, &'static NodePlan) {
    nodes().find(|(_, n)| n.name == name).unwrap_or_else(|| {
        panic!(
            "there is no node {name} in the multi-cloud testbed ({:?})",
            node_names()
        )
    })
}

/// The site whose gateway is `gateway` (or whose region is `gateway`); panics for an
/// unknown name.
pub fn site(gateway: &str) -> &'static SitePlan {
    SITES
        .iter()
        .find(|s| s.gateway == gateway || s.region == gateway)
        .unwrap_or_else(|| {
            panic!(
                "there is no gateway or site {gateway} ({:?})",
                SITES.map(|s| s.gateway)
            )
        })
}

impl SitePlan {
    /// The LAN.
    pub fn lan(&self) -> Ipv4Net {
        Ipv4Net::new(self.lan_ip, self.lan_prefix_len)
            .expect("a valid prefix length")
            .trunc()
    }

    /// The gateway's public link's subnet.
    pub fn wan(&self) -> Ipv4Net {
        Ipv4Net::new(self.wan_ip, self.wan_prefix_len)
            .expect("a valid prefix length")
            .trunc()
    }

    /// The 1:1 public addresses of the site's nodes (none at home).
    pub fn public_ips(&self) -> Vec<Ipv4Addr> {
        self.nodes.iter().filter_map(|n| n.public_ip).collect()
    }
}

impl NodePlan {
    /// The node's addresses on `site`.
    pub fn addresses(&self, site: &SitePlan) -> NodeAddresses {
        NodeAddresses {
            index: self.index,
            underlay_ip: self.ip,
            router_ip: site.lan_ip,
            broadcast: site.lan().broadcast(),
            pod_cidr: addressing::pod_cidr(self.index),
            external_ip: self.public_ip,
            // IPv4 only: the IPv6 plan stays unused.
            ..NodeAddresses::for_index(self.index)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn nodes_come_in_index_order_with_their_own_pod_cidr() {
        assert_eq!(node_names(), ["a1", "a2", "b1", "h1", "h2"]);
        for (i, (_, n)) in nodes().enumerate() {
            assert_eq!(n.index, i);
        }
        let (cloud_a, a2) = node("a2");
        assert_eq!(cloud_a.region, "cloud-a");
        let addresses = a2.addresses(cloud_a);
        assert_eq!(addresses.underlay_ip, Ipv4Addr::new(172, 31, 1, 3));
        assert_eq!(addresses.router_ip, Ipv4Addr::new(172, 31, 1, 1));
        assert_eq!(addresses.broadcast, Ipv4Addr::new(172, 31, 1, 255));
        assert_eq!(addresses.pod_cidr, net("10.244.1.0/24"));
        assert_eq!(addresses.external_ip, Some(Ipv4Addr::new(203, 0, 113, 102)));
        let (home2, h2) = node("h2");
        assert_eq!(h2.addresses(home2).external_ip, None);
        assert_eq!(h2.addresses(home2).router_ip, Ipv4Addr::new(192, 168, 2, 1));
        assert_eq!(site("gw-h1").region, "home1");
        assert_eq!(site("home2").gateway, "gw-h2");
    }

    #[test]
    fn private_addresses_stay_in_private_ranges_and_public_ones_in_documentation_ranges() {
        let public = net("203.0.113.0/24");
        let private = [net("172.16.0.0/12"), net("192.168.0.0/16")];
        for site in &SITES {
            assert!(private.iter().any(|p| p.contains(&site.lan())), "{site:?}");
            assert!(public.contains(&site.wan()), "{site:?}");
            assert!(site.wan().contains(&site.wan_router_ip));
            assert_ne!(site.wan_ip, site.wan_router_ip);
            for n in site.nodes {
                assert!(site.lan().contains(&n.ip) && n.ip != site.lan_ip);
                assert_eq!(n.public_ip.is_some(), site.nat == NatKind::OneToOne);
                if let Some(p) = n.public_ip {
                    assert!(public.contains(&p));
                }
            }
        }
    }

    #[test]
    fn public_subnets_and_addresses_do_not_overlap() {
        let mut subnets: Vec<Ipv4Net> = SITES.iter().map(SitePlan::wan).collect();
        subnets.push(
            Ipv4Net::new(INTERNET_ROUTER_IP, INTERNET_PREFIX_LEN)
                .unwrap()
                .trunc(),
        );
        for (i, a) in subnets.iter().enumerate() {
            for b in &subnets[i + 1..] {
                assert!(!a.contains(b) && !b.contains(a), "{a} and {b} overlap");
            }
        }
        let internet = subnets.last().unwrap();
        assert!(internet.contains(&addressing::INTERNET_IP));
        // 1:1 addresses are routed to their gateway, so they sit in no link's subnet.
        for site in &SITES {
            for p in site.public_ips() {
                assert!(subnets.iter().all(|s| !s.contains(&p)), "{p}");
            }
        }
        let lans: Vec<Ipv4Net> = SITES.iter().map(SitePlan::lan).collect();
        for (i, a) in lans.iter().enumerate() {
            for b in &lans[i + 1..] {
                assert!(!a.contains(b) && !b.contains(a));
            }
        }
    }
}
