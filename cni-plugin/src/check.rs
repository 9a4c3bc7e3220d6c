//! CNI CHECK: is the pod's network still what ADD returned (prevResult)?

use std::collections::HashSet;
use std::net::IpAddr;

use rscni_plugin::types::{Args, CNIResult};
use wgmesh::netlink::{NetNs, Netlink};

use crate::error::Error;
use crate::ipam::{Owner, Store};
use crate::{config, names};

pub async fn run(args: &Args) -> Result<(), Error> {
    let cfg = config::network(args)?;
    let owner = config::owner(args);
    let prev = args
        .config()
        .prev_result
        .as_ref()
        .ok_or(Error::NoPrevResult)?;
    let netns_path = args.netns().map(|p| p.to_path_buf()).unwrap_or_default();
    let pod_ns = NetNs::open(&netns_path).map_err(Error::Netns)?;

    let pod = Netlink::connect_in(&pod_ns)?;
    let link = pod
        .link_by_name(&owner.ifname)
        .await?
        .ok_or_else(|| Error::Drift(format!("interface {} is gone from the pod", owner.ifname)))?;
    let (index_in_result, want_mac) = pod_interface(prev, &owner.ifname)?;
    if let Some(mac) = want_mac
        && !mac.eq_ignore_ascii_case(&link.mac_string())
    {
        return Err(Error::Drift(format!(
            "{} has MAC {}, prevResult says {mac}",
            owner.ifname,
            link.mac_string()
        )));
    }
    if !link.up {
        return Err(Error::Drift(format!("{} is down", owner.ifname)));
    }
    if link.mtu != cfg.mtu {
        return Err(Error::Drift(format!(
            "{} has MTU {}, the network's is {}",
            owner.ifname, link.mtu, cfg.mtu
        )));
    }
    let have = pod.addresses(link.index).await?;
    let want_ips: Vec<_> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == index_in_result))
        .collect();
    for ip in &want_ips {
        if !have.contains(&ip.address) {
            return Err(Error::Drift(format!(
                "address {} is missing from {}",
                ip.address, owner.ifname
            )));
        }
    }
    for want in &prev.routes {
        let routes = pod.routes(want.dst.addr().is_ipv6()).await?;
        let found = routes
            .iter()
            .any(|r| r.dst == want.dst && (want.gw.is_none() || r.gateway == want.gw));
        if !found {
            return Err(Error::Drift(format!(
                "route to {} via {:?} is missing in the pod",
                want.dst, want.gw
            )));
        }
    }

    let host = Netlink::connect()?;
    let host_name = names::host_veth(&owner.container_id, &owner.ifname);
    let bridge = host
        .link_by_name(&cfg.bridge)
        .await?
        .ok_or_else(|| Error::Drift(format!("bridge {} is gone", cfg.bridge)))?;
    let host_link = host
        .link_by_name(&host_name)
        .await?
        .ok_or_else(|| Error::Drift(format!("host veth {host_name} is gone")))?;
    if host_link.controller != Some(bridge.index) {
        return Err(Error::Drift(format!(
            "host veth {host_name} is not on bridge {}",
            cfg.bridge
        )));
    }

    let leased = leased_by(
        &Store::lock(&cfg.ipam_dir(), cfg.ipam_lock_timeout)?,
        &owner,
    )?;
    for ip in &want_ips {
        if !leased.contains(&ip.address.addr()) {
            return Err(Error::Drift(format!(
                "address {} is not allocated to this container",
                ip.address.addr()
            )));
        }
    }
    Ok(())
}

/// Index in prevResult.interfaces and MAC of the pod's interface (the one with a
/// sandbox and our name).
fn pod_interface(prev: &CNIResult, ifname: &str) -> Result<(u32, Option<String>), Error> {
    prev.interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == ifname && i.sandbox.is_some())
        .map(|(idx, i)| (idx as u32, Some(i.mac.clone()).filter(|m| !m.is_empty())))
        .ok_or_else(|| Error::Drift(format!("prevResult has no interface {ifname} in a sandbox")))
}

fn leased_by(store: &Store, owner: &Owner) -> Result<HashSet<IpAddr>, Error> {
    Ok(store
        .leases()?
        .into_iter()
        .filter(|l| l.owner.as_ref() == Some(owner))
        .map(|l| l.ip)
        .collect())
}
