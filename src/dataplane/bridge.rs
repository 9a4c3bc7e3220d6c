//! The node's pod bridge (`wgmesh-br`): created up, with a stable MAC, the pod MTU and
//! the gateway address of each pod subnet. Adapter, shared by wgmesh-cni (which
//! ensures it on every ADD) and the agent (which creates it at start-up, before the
//! first pod).

use crate::cni::PodSubnets;
use crate::netlink::{BridgeSpec, Link, Netlink, Result};

/// Ensures the bridge `name` exists, is up, has the stable MAC and MTU, and holds the
/// gateway of every subnet. Only what is missing is changed; racing callers are fine.
pub async fn ensure(nl: &Netlink, name: &str, subnets: &PodSubnets, mtu: u32) -> Result<Link> {
    let link = nl
        .ensure_bridge(&BridgeSpec {
            name,
            mac: subnets.bridge_mac(),
            mtu,
        })
        .await?;
    let have = nl.addresses(link.index).await?;
    for gw in subnets.gateways() {
        if !have.contains(&gw) {
            nl.ensure_address(link.index, gw).await?;
        }
    }
    Ok(link)
}
