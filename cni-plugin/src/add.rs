//! CNI ADD: attach a pod to the node bridge.
//!
//! Order matters for "bad input changes nothing": everything that can be refused
//! without side effects (config, netns, the node's guard, an existing CNI_IFNAME) is
//! checked before an address is allocated; after that, any failure releases the address and removes the
//! veth before the error is returned.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use rscni_plugin::types::{Args, CNIResult, Interface, IpConfig, Route as CniRoute};
use wgmesh::cni::NetworkConfig;
use wgmesh::netlink::{Link, NetNs, Netlink, PROTO_BOOT, Route, VethSpec};

use crate::error::Error;
use crate::ipam::{self, Allocation, Owner, Store};
use crate::{config, names};

/// Index of the pod's interface in the result's `interfaces` (bridge, host veth, pod).
const POD_INTERFACE: u32 = 2;

pub async fn run(args: &Args) -> Result<CNIResult, Error> {
    let cfg = config::network(args)?;
    let owner = config::owner(args);
    let netns_path = args.netns().map(|p| p.to_path_buf()).unwrap_or_default();
    let pod_ns = NetNs::open(&netns_path).map_err(Error::Netns)?;
    let host = Netlink::connect()?;
    let pod = Netlink::connect_in(&pod_ns)?;

    // No network for a pod whose traffic could leave in clear: after a reboot the
    // conflist is still on disk while the agent has not put the guard back yet.
    wgmesh::dataplane::guard::check(&host, cfg.subnets.nets())
        .await
        .map_err(Error::GuardMissing)?;

    let host_name = names::host_veth(&owner.container_id, &owner.ifname);
    if pod.link_by_name(&owner.ifname).await?.is_some()
        && !remove_del_leftover(&host, &host_name).await?
    {
        return Err(Error::InterfaceExists {
            ifname: owner.ifname,
        });
    }
    let bridge =
        wgmesh::dataplane::bridge::ensure(&host, &cfg.bridge, &cfg.subnets, cfg.mtu).await?;
    enable_forwarding(&cfg)?;

    let allocations = {
        let store = Store::lock(&cfg.ipam_dir(), cfg.ipam_lock_timeout)?;
        ipam::allocate(&store, &cfg, &owner)?
        // The lock is released here: the kernel work below needs no IPAM exclusion.
    };
    let attached = Attachment {
        cfg: &cfg,
        host: &host,
        pod: &pod,
        pod_ns: &pod_ns,
        bridge: &bridge,
        host_name: &host_name,
        owner: &owner,
    };
    match attached.wire(&allocations).await {
        Ok(result) => Ok(result),
        Err(e) => {
            undo(&host, &cfg, &owner, &host_name).await;
            Err(e)
        }
    }
}

/// Everything an ADD touches after allocation.
struct Attachment<'a> {
    cfg: &'a NetworkConfig,
    host: &'a Netlink,
    pod: &'a Netlink,
    pod_ns: &'a NetNs,
    bridge: &'a Link,
    host_name: &'a str,
    owner: &'a Owner,
}

impl Attachment<'_> {
    async fn wire(&self, allocations: &[Allocation]) -> Result<CNIResult, Error> {
        let spec = VethSpec {
            host_name: self.host_name,
            peer_name: &self.owner.ifname,
            mtu: self.cfg.mtu,
            bridge_index: self.bridge.index,
            peer_ns: self.pod_ns,
        };
        if let Err(e) = self.host.add_veth(&spec).await {
            // The host name derives from this very attachment, so a link holding it is
            // a leftover of an earlier ADD of the same pod that never got its DEL.
            if e.errno() == Some(libc::EEXIST)
                && self.host.delete_link_by_name(self.host_name).await?
            {
                self.host.add_veth(&spec).await?;
            } else {
                return Err(e.into());
            }
        }
        let host_link = self
            .host
            .link_by_name(self.host_name)
            .await?
            .ok_or_else(|| missing(self.host_name))?;
        self.host.set_hairpin(host_link.index, true).await?;

        let pod_link = self
            .pod
            .link_by_name(&self.owner.ifname)
            .await?
            .ok_or_else(|| missing(&self.owner.ifname))?;
        self.pod.set_up(pod_link.index).await?;
        for a in allocations {
            self.pod.ensure_address(pod_link.index, a.address).await?;
        }
        let routes = default_routes(allocations);
        for (dst, gw) in &routes {
            let route = Route::unicast(*dst, Some(*gw), Some(pod_link.index), PROTO_BOOT);
            self.pod.ensure_route(&route).await?;
        }

        Ok(CNIResult {
            interfaces: vec![
                interface(self.bridge, None),
                interface(&host_link, None),
                interface(
                    &Link {
                        up: true,
                        ..pod_link
                    },
                    Some(self.pod_ns.path().to_string_lossy().into_owned()),
                ),
            ],
            ips: allocations
                .iter()
                .map(|a| IpConfig {
                    interface: Some(POD_INTERFACE),
                    address: a.address,
                    gateway: Some(a.gateway),
                })
                .collect(),
            routes: routes
                .into_iter()
                .map(|(dst, gw)| CniRoute {
                    dst,
                    gw: Some(gw),
                    mtu: None,
                    advmss: None,
                    priority: None,
                    table: None,
                    scope: None,
                })
                .collect(),
            dns: None,
        })
    }
}

/// A DEL of this very attachment may have just run: its veth is down and off the
/// bridge, waiting for the reaper. Remove it now (and with it the pod end that holds
/// CNI_IFNAME) so a quick DEL+ADD works; anything else holding the name is not ours.
async fn remove_del_leftover(host: &Netlink, host_name: &str) -> Result<bool, Error> {
    match host.link_by_name(host_name).await? {
        Some(link) if !link.up && link.controller.is_none() => {
            host.delete_link(link.index).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// A default route per address family, via that family's gateway.
fn default_routes(allocations: &[Allocation]) -> Vec<(IpNet, IpAddr)> {
    allocations
        .iter()
        .map(|a| {
            let any = match a.gateway {
                IpAddr::V4(_) => IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
                IpAddr::V6(_) => IpNet::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
            };
            (any.unwrap_or_default(), a.gateway)
        })
        .collect()
}

fn interface(link: &Link, sandbox: Option<String>) -> Interface {
    Interface {
        name: link.name.clone(),
        mac: link.mac_string(),
        mtu: Some(link.mtu),
        sandbox,
        socket_path: None,
        pci_id: None,
    }
}

fn missing(name: &str) -> Error {
    Error::Kernel(wgmesh::netlink::Error::NotFound {
        what: "link",
        name: name.to_string(),
    })
}

/// Pods reach beyond the node only if the node forwards.
fn enable_forwarding(cfg: &NetworkConfig) -> Result<(), Error> {
    wgmesh::sysctl::write("net.ipv4.ip_forward", "1")?;
    if cfg.subnets.v6.is_some() {
        wgmesh::sysctl::write("net.ipv6.conf.all.forwarding", "1")?;
    }
    Ok(())
}

/// Best-effort rollback of a failed ADD: the address goes back to the pool and the veth
/// (both ends) goes away. Errors here are not reported over the original one.
async fn undo(host: &Netlink, cfg: &NetworkConfig, owner: &Owner, host_name: &str) {
    let _ = host.delete_link_by_name(host_name).await;
    if let Ok(store) = Store::lock(&cfg.ipam_dir(), cfg.ipam_lock_timeout) {
        let _ = ipam::release(&store, owner);
    }
}
