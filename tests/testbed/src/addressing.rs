//! The testbed's address plan (pure; test infrastructure).
//!
//! Only documentation ranges (RFC 5737, RFC 3849) are used for the underlay, so nothing
//! the testbed sends could ever mean a real host, and the pod ranges are the usual
//! 10.244.0.0/16 and a ULA /56 with one /64 per node:
//!
//! | what                 | IPv4 subnet            | IPv4 address                 | IPv6 subnet            | IPv6 address           |
//! |----------------------|------------------------|------------------------------|------------------------|------------------------|
//! | node `i` (0..16)     | 192.0.2.(16·i)/28      | .(16·i+2); router .(16·i+1)  | 2001:db8:0:i::/64      | ::2; router ::1        |
//! | "internet"           | 203.0.113.0/24         | .10; router .1               | 2001:db8:203::/64      | ::10; router ::1       |
//! | API server           | 198.51.100.0/24        | .10:6443; router .1          | 2001:db8:198::/64      | ::10 port 6443; router ::1 |
//! | pods of node `i`     | 10.244.i.0/24          | handed out by wgmesh-cni     | fd00:10:244:i::/64     | handed out by wgmesh-cni |
//!
//! A [`Layout`] says which of the two plans a testbed uses: for its underlay (one
//! family) and for its pods (one or both).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The whole IPv4 pod range (`--cluster-cidr` of every agent); the router drops it.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The whole IPv6 pod range: one /64 per node; the router drops it.
pub const CLUSTER_CIDR6: &str = "fd00:10:244::/56";
/// How many node slots the underlay plan has (one /28 of 192.0.2.0/24 each).
pub const MAX_NODES: usize = 16;
/// The UDP port every agent advertises (the agent's default `--listen-port`).
pub const WIREGUARD_PORT: u16 = 51820;

/// The "internet" host behind the router.
pub const INTERNET_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The router's address on the internet side.
pub const INTERNET_ROUTER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const INTERNET_PREFIX_LEN: u8 = 24;

/// Where nodes reach the API server (a relay in its own namespace behind the router).
pub const API_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The API server's port as nodes see it.
pub const API_PORT: u16 = 6443;
/// The router's address on the API server's side.
pub const API_ROUTER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const API_PREFIX_LEN: u8 = 24;

/// Prefix length of every node's IPv4 underlay subnet.
pub const NODE_PREFIX_LEN: u8 = 28;

/// The internet host's IPv6 address.
pub const INTERNET_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 0x10);
/// The router's IPv6 address on the internet side.
pub const INTERNET_ROUTER_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 1);
/// Where nodes of an IPv6 underlay reach the API server.
pub const API_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x198, 0, 0, 0, 0, 0x10);
/// The router's IPv6 address on the API server's side.
pub const API_ROUTER_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x198, 0, 0, 0, 0, 1);
/// Prefix length of every IPv6 underlay subnet (nodes', internet's, API server's).
pub const PREFIX_LEN6: u8 = 64;

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    /// "IPv4" or "IPv6".
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }

    /// The whole pod range of the family.
    pub fn cluster_cidr(self) -> IpNet {
        match self {
            Family::Ipv4 => cluster_cidr().into(),
            Family::Ipv6 => cluster_cidr6().into(),
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which families a testbed's underlay and pods use. The underlay has one family (every
/// node's InternalIP, the router's links, the internet host, the API server's address
/// as nodes reach it); pods have one or both (spec.podCIDRs, `--cluster-cidr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// IPv4 pods over an IPv4 underlay.
    #[default]
    Ipv4,
    /// Dual-stack pods (IPv4 first) over an IPv4 underlay.
    DualStackOverIpv4,
    /// Dual-stack pods (IPv4 first) over an IPv6 underlay.
    DualStackOverIpv6,
    /// IPv6 pods over an IPv6 underlay.
    Ipv6,
}

impl Layout {
    /// Every layout.
    pub const ALL: [Layout; 4] = [
        Layout::Ipv4,
        Layout::DualStackOverIpv4,
        Layout::DualStackOverIpv6,
        Layout::Ipv6,
    ];

    /// The underlay's family.
    pub fn underlay(self) -> Family {
        match self {
            Layout::Ipv4 | Layout::DualStackOverIpv4 => Family::Ipv4,
            Layout::DualStackOverIpv6 | Layout::Ipv6 => Family::Ipv6,
        }
    }

    /// The pods' families, in spec.podCIDRs order (IPv4 first, as Kubernetes'
    /// dual-stack clusters usually have it).
    pub fn pod_families(self) -> &'static [Family] {
        match self {
            Layout::Ipv4 => &[Family::Ipv4],
            Layout::DualStackOverIpv4 | Layout::DualStackOverIpv6 => &[Family::Ipv4, Family::Ipv6],
            Layout::Ipv6 => &[Family::Ipv6],
        }
    }

    /// True when pods have an address of `family`.
    pub fn has_pods_of(self, family: Family) -> bool {
        self.pod_families().contains(&family)
    }

    /// The agents' `--cluster-cidr`: the pod range of each pod family.
    pub fn cluster_cidrs(self) -> Vec<IpNet> {
        self.pod_families()
            .iter()
            .map(|f| f.cluster_cidr())
            .collect()
    }

    /// `--cluster-cidr` as a DaemonSet passes it: comma-separated.
    pub fn cluster_cidr_arg(self) -> String {
        join(self.cluster_cidrs())
    }

    /// The API server's address as nodes reach it.
    pub fn api_ip(self) -> IpAddr {
        match self.underlay() {
            Family::Ipv4 => API_IP.into(),
            Family::Ipv6 => API_IP6.into(),
        }
    }

    /// The API server's URL as nodes reach it.
    pub fn api_url(self) -> String {
        format!("https://{}", SocketAddr::new(self.api_ip(), API_PORT))
    }

    /// The internet host's address.
    pub fn internet_ip(self) -> IpAddr {
        match self.underlay() {
            Family::Ipv4 => INTERNET_IP.into(),
            Family::Ipv6 => INTERNET_IP6.into(),
        }
    }

    /// The name on the command line (`wgmesh-testbed demo dualstack`...).
    pub fn name(self) -> &'static str {
        match self {
            Layout::Ipv4 => "ipv4",
            Layout::DualStackOverIpv4 => "dualstack-over-ipv4",
            Layout::DualStackOverIpv6 => "dualstack",
            Layout::Ipv6 => "ipv6",
        }
    }

    /// What the layout is, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Layout::Ipv4 => "IPv4 pods over an IPv4 underlay",
            Layout::DualStackOverIpv4 => "dual-stack pods over an IPv4 underlay",
            Layout::DualStackOverIpv6 => "dual-stack pods over an IPv6 underlay",
            Layout::Ipv6 => "IPv6 pods over an IPv6 underlay",
        }
    }
}

/// Networks (or addresses) comma-separated, as annotations and flags take them.
pub fn join<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The addresses of node slot `index`: the slot's IPv4 and IPv6 plans, and the
/// [`Layout`] saying which of them the node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAddresses {
    pub index: usize,
    /// The node's own IPv4 address (its Node's InternalIP over an IPv4 underlay).
    pub underlay_ip: Ipv4Addr,
    /// The router's IPv4 address in the node's subnet: the node's default gateway.
    pub router_ip: Ipv4Addr,
    /// The directed broadcast address of the node's IPv4 subnet.
    pub broadcast: Ipv4Addr,
    /// The node's IPv4 pod CIDR (in spec.podCIDRs when its pods have IPv4).
    pub pod_cidr: Ipv4Net,
    /// The node's public address, if a cloud provider gives it one (its Node's
    /// ExternalIP); none in a [`crate::Testbed`].
    pub external_ip: Option<Ipv4Addr>,
    /// The node's own IPv6 address (its InternalIP over an IPv6 underlay).
    pub underlay_ip6: Ipv6Addr,
    /// The router's IPv6 address in the node's subnet.
    pub router_ip6: Ipv6Addr,
    /// The node's IPv6 pod CIDR (in spec.podCIDRs when its pods have IPv6).
    pub pod_cidr6: Ipv6Net,
    /// Which of the plans the node uses.
    pub layout: Layout,
}

impl NodeAddresses {
    /// The plan for slot `index` in the IPv4 layout; panics past [`MAX_NODES`].
    pub fn for_index(index: usize) -> Self {
        Self::for_layout(index, Layout::Ipv4)
    }

    /// The plan for slot `index` in `layout`; panics past [`MAX_NODES`].
    pub fn for_layout(index: usize, layout: Layout) -> Self {
        assert!(
            index < MAX_NODES,
            "node slot {index} is outside the address plan (at most {MAX_NODES} nodes)"
        );
        let base = (16 * index) as u8;
        let slot = index as u16;
        NodeAddresses {
            index,
            underlay_ip: Ipv4Addr::new(192, 0, 2, base + 2),
            router_ip: Ipv4Addr::new(192, 0, 2, base + 1),
            broadcast: Ipv4Addr::new(192, 0, 2, base + 15),
            pod_cidr: pod_cidr(index),
            external_ip: None,
            underlay_ip6: Ipv6Addr::new(0x2001, 0xdb8, 0, slot, 0, 0, 0, 2),
            router_ip6: Ipv6Addr::new(0x2001, 0xdb8, 0, slot, 0, 0, 0, 1),
            pod_cidr6: pod_cidr6(index),
            layout,
        }
    }

    /// The node's underlay address: its Node's InternalIP, of the layout's underlay
    /// family.
    pub fn internal_ip(&self) -> IpAddr {
        match self.layout.underlay() {
            Family::Ipv4 => self.underlay_ip.into(),
            Family::Ipv6 => self.underlay_ip6.into(),
        }
    }

    /// The router's address in the node's subnet (the node's default gateway), of the
    /// underlay's family.
    pub fn gateway_ip(&self) -> IpAddr {
        match self.layout.underlay() {
            Family::Ipv4 => self.router_ip.into(),
            Family::Ipv6 => self.router_ip6.into(),
        }
    }

    /// The prefix length of the node's underlay subnet.
    pub fn prefix_len(&self) -> u8 {
        match self.layout.underlay() {
            Family::Ipv4 => NODE_PREFIX_LEN,
            Family::Ipv6 => PREFIX_LEN6,
        }
    }

    /// The node's pod CIDR of `family`, whether or not its layout's pods have it.
    pub fn pod_cidr_of(&self, family: Family) -> IpNet {
        match family {
            Family::Ipv4 => self.pod_cidr.into(),
            Family::Ipv6 => self.pod_cidr6.into(),
        }
    }

    /// The node's spec.podCIDRs: one per pod family of its layout, IPv4 first.
    pub fn pod_cidrs(&self) -> Vec<IpNet> {
        self.layout
            .pod_families()
            .iter()
            .map(|f| self.pod_cidr_of(*f))
            .collect()
    }

    /// The endpoint the node's agent should publish (`wgmesh.io/endpoint`).
    pub fn endpoint(&self) -> String {
        SocketAddr::new(self.internal_ip(), WIREGUARD_PORT).to_string()
    }
}

/// The pod CIDR of the node with index `index` (below 256): `10.244.<index>.0/24`.
pub fn pod_cidr(index: usize) -> Ipv4Net {
    let i = u8::try_from(index).expect("a node index below 256");
    Ipv4Net::new(Ipv4Addr::new(10, 244, i, 0), 24).expect("a /24 is valid")
}

/// The IPv6 pod CIDR of the node with index `index` (below 256): `fd00:10:244:<index>::/64`.
pub fn pod_cidr6(index: usize) -> Ipv6Net {
    let i = u8::try_from(index).expect("a node index below 256");
    Ipv6Net::new(Ipv6Addr::new(0xfd00, 0x10, 0x244, i.into(), 0, 0, 0, 0), 64)
        .expect("a /64 is valid")
}

/// The IPv4 pod range as a network.
pub fn cluster_cidr() -> Ipv4Net {
    CLUSTER_CIDR.parse().expect("a valid CIDR constant")
}

/// The IPv6 pod range as a network.
pub fn cluster_cidr6() -> Ipv6Net {
    CLUSTER_CIDR6.parse().expect("a valid CIDR constant")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_slots_get_disjoint_documentation_subnets_and_their_own_pod_cidr() {
        let first = NodeAddresses::for_index(0);
        assert_eq!(first.underlay_ip, Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(first.router_ip, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(first.broadcast, Ipv4Addr::new(192, 0, 2, 15));
        assert_eq!(first.pod_cidr.to_string(), "10.244.0.0/24");
        assert_eq!(first.endpoint(), "192.0.2.2:51820");
        assert_eq!(first.external_ip, None);

        let last = NodeAddresses::for_index(MAX_NODES - 1);
        assert_eq!(last.underlay_ip, Ipv4Addr::new(192, 0, 2, 242));
        assert_eq!(last.broadcast, Ipv4Addr::new(192, 0, 2, 255));
        assert_eq!(last.pod_cidr.to_string(), "10.244.15.0/24");

        let doc: Ipv4Net = "192.0.2.0/24".parse().unwrap();
        for i in 0..MAX_NODES {
            let a = NodeAddresses::for_index(i);
            let subnet = Ipv4Net::new(a.underlay_ip, NODE_PREFIX_LEN)
                .unwrap()
                .trunc();
            assert!(doc.contains(&subnet), "{subnet}");
            assert!(subnet.contains(&a.router_ip) && subnet.contains(&a.broadcast));
            assert!(cluster_cidr().contains(&a.pod_cidr));
        }
    }

    #[test]
    fn ipv6_slots_get_disjoint_documentation_subnets_and_their_own_pod_64() {
        let first = NodeAddresses::for_layout(0, Layout::Ipv6);
        assert_eq!(first.internal_ip().to_string(), "2001:db8::2");
        assert_eq!(first.gateway_ip().to_string(), "2001:db8::1");
        assert_eq!(first.prefix_len(), 64);
        assert_eq!(first.endpoint(), "[2001:db8::2]:51820");
        assert_eq!(
            first.pod_cidrs(),
            ["fd00:10:244::/64".parse::<IpNet>().unwrap()]
        );

        let doc: Ipv6Net = "2001:db8::/32".parse().unwrap();
        let mut subnets = std::collections::BTreeSet::new();
        for i in 0..MAX_NODES {
            let a = NodeAddresses::for_layout(i, Layout::DualStackOverIpv6);
            let subnet = Ipv6Net::new(a.underlay_ip6, PREFIX_LEN6).unwrap().trunc();
            assert!(
                doc.contains(&subnet) && subnet.contains(&a.router_ip6),
                "{subnet}"
            );
            assert!(subnets.insert(subnet), "{subnet} twice");
            assert!(cluster_cidr6().contains(&a.pod_cidr6));
            assert_eq!(a.pod_cidr6.prefix_len(), 64);
        }
        assert_eq!(
            NodeAddresses::for_layout(10, Layout::Ipv6)
                .pod_cidr6
                .to_string(),
            "fd00:10:244:a::/64"
        );
        for other in [INTERNET_IP6, API_IP6] {
            let subnet = Ipv6Net::new(other, PREFIX_LEN6).unwrap().trunc();
            assert!(
                doc.contains(&subnet) && !subnets.contains(&subnet),
                "{subnet}"
            );
        }
    }

    #[test]
    fn each_layout_has_its_underlay_family_and_pod_families_ipv4_first() {
        let cases = [
            (
                Layout::Ipv4,
                "192.0.2.18",
                "10.244.1.0/24",
                "10.244.0.0/16",
                "https://198.51.100.10:6443",
            ),
            (
                Layout::DualStackOverIpv4,
                "192.0.2.18",
                "10.244.1.0/24,fd00:10:244:1::/64",
                "10.244.0.0/16,fd00:10:244::/56",
                "https://198.51.100.10:6443",
            ),
            (
                Layout::DualStackOverIpv6,
                "2001:db8:0:1::2",
                "10.244.1.0/24,fd00:10:244:1::/64",
                "10.244.0.0/16,fd00:10:244::/56",
                "https://[2001:db8:198::10]:6443",
            ),
            (
                Layout::Ipv6,
                "2001:db8:0:1::2",
                "fd00:10:244:1::/64",
                "fd00:10:244::/56",
                "https://[2001:db8:198::10]:6443",
            ),
        ];
        for (layout, internal_ip, pod_cidrs, cluster_cidrs, api) in cases {
            let a = NodeAddresses::for_layout(1, layout);
            assert_eq!(a.internal_ip().to_string(), internal_ip, "{layout:?}");
            assert_eq!(join(a.pod_cidrs()), pod_cidrs, "{layout:?}");
            assert_eq!(layout.cluster_cidr_arg(), cluster_cidrs, "{layout:?}");
            assert_eq!(layout.api_url(), api, "{layout:?}");
            assert_eq!(
                Family::of(layout.internet_ip()),
                layout.underlay(),
                "{layout:?}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "outside the address plan")]
    fn a_slot_past_the_plan_is_refused() {
        NodeAddresses::for_index(MAX_NODES);
    }
}
