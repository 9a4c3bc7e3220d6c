//! The testbed's address plan (pure; test infrastructure).
//!
//! Only documentation ranges (RFC 5737) are used for the underlay, so nothing the testbed
//! sends could ever mean a real host, and the pod range is the usual 10.244.0.0/16:
//!
//! | what                 | subnet                 | address                      |
//! |----------------------|------------------------|------------------------------|
//! | node `i` (0..16)     | 192.0.2.(16·i)/28      | .(16·i+2); router .(16·i+1)  |
//! | "internet"           | 203.0.113.0/24         | .10; router .1               |
//! | API server           | 198.51.100.0/24        | .10:6443; router .1          |
//! | pods of node `i`     | 10.244.i.0/24          | handed out by wgmesh-cni     |

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The whole pod range (`--cluster-cidr` of every agent); the router drops it.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
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

/// Prefix length of every node's underlay subnet.
pub const NODE_PREFIX_LEN: u8 = 28;

/// The addresses of node slot `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAddresses {
    pub index: usize,
    /// The node's own address (its Node's InternalIP).
    pub underlay_ip: Ipv4Addr,
    /// The router's address in the node's subnet: the node's default gateway.
    pub router_ip: Ipv4Addr,
    /// The directed broadcast address of the node's subnet.
    pub broadcast: Ipv4Addr,
    /// spec.podCIDR of the node.
    pub pod_cidr: Ipv4Net,
    /// The node's public address, if a cloud provider gives it one (its Node's
    /// ExternalIP); none in a [`crate::Testbed`].
    pub external_ip: Option<Ipv4Addr>,
}

impl NodeAddresses {
    /// The plan for slot `index`; panics past [`MAX_NODES`].
    pub fn for_index(index: usize) -> Self {
        assert!(
            index < MAX_NODES,
            "node slot {index} is outside the address plan (at most {MAX_NODES} nodes)"
        );
        let base = (16 * index) as u8;
        NodeAddresses {
            index,
            underlay_ip: Ipv4Addr::new(192, 0, 2, base + 2),
            router_ip: Ipv4Addr::new(192, 0, 2, base + 1),
            broadcast: Ipv4Addr::new(192, 0, 2, base + 15),
            pod_cidr: pod_cidr(index),
            external_ip: None,
        }
    }

    /// The endpoint the node's agent should publish (`wgmesh.io/endpoint`).
    pub fn endpoint(&self) -> String {
        format!("{}:{WIREGUARD_PORT}", self.underlay_ip)
    }
}

/// The pod CIDR of the node with index `index` (below 256): `10.244.<index>.0/24`.
pub fn pod_cidr(index: usize) -> Ipv4Net {
    let i = u8::try_from(index).expect("a node index below 256");
    Ipv4Net::new(Ipv4Addr::new(10, 244, i, 0), 24).expect("a /24 is valid")
}

/// The pod range as a network.
pub fn cluster_cidr() -> Ipv4Net {
    CLUSTER_CIDR.parse().expect("a valid CIDR constant")
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
    #[should_panic(expected = "outside the address plan")]
    fn a_slot_past_the_plan_is_refused() {
        NodeAddresses::for_index(MAX_NODES);
    }
}
