//! Links: bridges and veth pairs. Adapter.

use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::{LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth};

use super::{Error, NetNs, Netlink, Result, errno, nl_err};
use crate::kernel_writes as writes;

/// What wgmesh needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Hardware address (six bytes for Ethernet-like links; empty for TUN).
    pub mac: Vec<u8>,
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Index of the bridge (or other controller) this link is a port of.
    pub controller: Option<u32>,
    /// Link kind, e.g. "bridge", "veth", "tun".
    pub kind: Option<String>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: Vec::new(),
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            controller: None,
            kind: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) => link.mac = a.clone(),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Controller(c) => link.controller = Some(*c),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    /// The MAC in the usual `aa:bb:cc:dd:ee:ff` notation.
    pub fn mac_string(&self) -> String {
        format_mac(&self.mac)
    }
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A bridge as wgmesh wants it.
#[derive(Debug, Clone)]
pub struct BridgeSpec<'a> {
    pub name: &'a str,
    /// A fixed MAC, so the bridge does not take the lowest port MAC and change it as
    /// ports come and go (pods would hold a stale neighbour entry for the gateway).
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// A veth pair from this namespace into a pod's.
#[derive(Debug)]
pub struct VethSpec<'a> {
    /// Name of the end that stays here.
    pub host_name: &'a str,
    /// Name of the end created directly inside `peer_ns`.
    pub peer_name: &'a str,
    pub mtu: u32,
    /// Bridge the host end joins.
    pub bridge_index: u32,
    pub peer_ns: &'a NetNs,
}

const ENODEV: i32 = libc::ENODEV;
const EEXIST: i32 = libc::EEXIST;

impl Netlink {
    /// The link called `name`, if there is one.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let req = self
            .handle()
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        first_link(req, "get link", name).await
    }

    /// The link with this index, if there is one.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let req = self.handle().link().get().match_index(index).execute();
        first_link(req, "get link", index.to_string()).await
    }

    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self
            .handle()
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("list links", "all"))?;
        Ok(msgs.iter().map(Link::from_message).collect())
    }

    /// Creates the bridge if it is missing and brings it to the wanted MAC, MTU and up
    /// state. Safe to race with another caller doing the same.
    pub async fn ensure_bridge(&self, spec: &BridgeSpec<'_>) -> Result<Link> {
        let link = match self.link_by_name(spec.name).await? {
            Some(link) => link,
            None => {
                let msg = LinkBridge::new(spec.name)
                    .address(spec.mac.to_vec())
                    .mtu(spec.mtu)
                    .up()
                    .build();
                writes::record(writes::Kind::Link, 1);
                match self.handle().link().add(msg).execute().await {
                    Ok(()) => {}
                    Err(e) if errno(&e) == Some(EEXIST) => {}
                    Err(e) => return Err(nl_err("create bridge", spec.name)(e)),
                }
                self.link_by_name(spec.name)
                    .await?
                    .ok_or_else(|| Error::NotFound {
                        what: "bridge",
                        name: spec.name.to_string(),
                    })?
            }
        };
        if link.kind.as_deref() != Some("bridge") {
            return Err(Error::Unexpected(format!(
                "{} exists but is a {} link, not a bridge",
                spec.name,
                link.kind.as_deref().unwrap_or("unknown")
            )));
        }
        if link.mac != spec.mac || link.mtu != spec.mtu || !link.up {
            let msg = LinkUnspec::new_with_index(link.index)
                .address(spec.mac.to_vec())
                .mtu(spec.mtu)
                .up()
                .build();
            writes::record(writes::Kind::Link, 1);
            self.handle()
                .link()
                .set(msg)
                .execute()
                .await
                .map_err(nl_err("configure bridge", spec.name))?;
            return self
                .link_by_index(link.index)
                .await?
                .ok_or_else(|| Error::NotFound {
                    what: "bridge",
                    name: spec.name.to_string(),
                });
        }
        Ok(link)
    }

    /// Creates a veth pair in one request: the host end up, with its MTU, on the
    /// bridge; the peer end directly inside the pod namespace, with its final name and
    /// MTU, still down (the kernel refuses IFF_UP for a peer created in another
    /// namespace with ENOTCONN). Fails with EEXIST if either name is taken.
    pub async fn add_veth(&self, spec: &VethSpec<'_>) -> Result<()> {
        writes::record(writes::Kind::Link, 1);
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(spec.peer_name)
            .mtu(spec.mtu)
            .setns_by_fd(spec.peer_ns.fd().as_raw_fd())
            .build();
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(spec.host_name)
            .mtu(spec.mtu)
            .controller(spec.bridge_index)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.handle()
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl_err(
                "create veth",
                format!("{} <-> {}", spec.host_name, spec.peer_name),
            ))
    }

    /// Hairpin mode on a bridge port, so a pod can reach itself through a service IP.
    pub async fn set_hairpin(&self, index: u32, on: bool) -> Result<()> {
        writes::record(writes::Kind::Link, 1);
        let msg = LinkBridgePort::new(index).hairpin(on).build();
        self.handle()
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(nl_err("set hairpin", index.to_string()))
    }

    /// Sets a link's MTU and brings it up.
    pub async fn set_up_with_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        writes::record(writes::Kind::Link, 1);
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).up().build();
        self.handle()
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl_err("set link mtu and up", index.to_string()))
    }

    /// Brings a link up.
    pub async fn set_up(&self, index: u32) -> Result<()> {
        writes::record(writes::Kind::Link, 1);
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle()
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl_err("set link up", index.to_string()))
    }

    /// Takes a link down and off its bridge in one request: it stops carrying traffic
    /// at once, long before a (slow) deletion completes.
    pub async fn detach_and_down(&self, index: u32) -> Result<()> {
        writes::record(writes::Kind::Link, 1);
        let msg = LinkUnspec::new_with_index(index)
            .nocontroller()
            .down()
            .build();
        match self.handle().link().set(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(()),
            Err(e) => Err(nl_err("detach link", index.to_string())(e)),
        }
    }

    /// Deletes a link; `Ok(false)` when it was already gone.
    pub async fn delete_link(&self, index: u32) -> Result<bool> {
        writes::record(writes::Kind::Link, 1);
        match self.handle().link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
            Err(e) => Err(nl_err("delete link", index.to_string())(e)),
        }
    }

    /// Deletes the link called `name`; `Ok(false)` when there is none.
    pub async fn delete_link_by_name(&self, name: &str) -> Result<bool> {
        match self.link_by_name(name).await? {
            Some(link) => self.delete_link(link.index).await,
            None => Ok(false),
        }
    }
}

async fn first_link(
    stream: impl futures::Stream<Item = Result<LinkMessage, rtnetlink::Error>>,
    op: &'static str,
    target: impl Into<String>,
) -> Result<Option<Link>> {
    futures::pin_mut!(stream);
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(Some(Link::from_message(&msg))),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(nl_err(op, target)(e)),
    }
}
