//! Interface addresses. Adapter.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};

use super::{Netlink, Result, errno, nl_err};
use crate::kernel_writes as writes;

impl Netlink {
    /// The addresses configured on a link (IPv4 and IPv6, link-local included).
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>> {
        let msgs: Vec<AddressMessage> = self
            .handle()
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("list addresses", index.to_string()))?;
        Ok(msgs.iter().filter_map(address_of).collect())
    }

    /// Adds `addr` to a link unless it is already there. IPv6 addresses skip duplicate
    /// address detection: wgmesh owns the subnet, so no one else can hold the address,
    /// and DAD would leave the address unusable for a second or more.
    pub async fn ensure_address(&self, index: u32, addr: IpNet) -> Result<()> {
        writes::record(writes::Kind::Address, 1);
        let mut req = self
            .handle()
            .address()
            .add(index, addr.addr(), addr.prefix_len());
        if addr.addr().is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(nl_err("add address", format!("{addr} on {index}"))(e)),
        }
    }

    /// The link that holds address `ip`, if any (e.g. the node's underlay interface).
    pub async fn link_with_address(&self, ip: IpAddr) -> Result<Option<super::Link>> {
        let mut msgs = self
            .handle()
            .address()
            .get()
            .set_address_filter(ip)
            .execute();
        match msgs
            .try_next()
            .await
            .map_err(nl_err("find address", ip.to_string()))?
        {
            Some(msg) => self.link_by_index(msg.header.index).await,
            None => Ok(None),
        }
    }

    /// Removes `addr` from a link; `Ok(false)` when it was not there.
    pub async fn delete_address(&self, index: u32, addr: IpNet) -> Result<bool> {
        let mut msgs = self
            .handle()
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(addr.addr())
            .set_prefix_length_filter(addr.prefix_len())
            .execute();
        let Some(msg) = msgs
            .try_next()
            .await
            .map_err(nl_err("find address", addr.to_string()))?
        else {
            return Ok(false);
        };
        writes::record(writes::Kind::Address, 1);
        match self.handle().address().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => Ok(false),
            Err(e) => Err(nl_err("delete address", addr.to_string())(e)),
        }
    }
}

fn address_of(msg: &AddressMessage) -> Option<IpNet> {
    // IFA_LOCAL is the interface's own address on point-to-point links; IFA_ADDRESS
    // otherwise (and the peer on point-to-point links), so prefer LOCAL.
    let mut local: Option<IpAddr> = None;
    let mut address: Option<IpAddr> = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    IpNet::new(local.or(address)?, msg.header.prefix_len).ok()
}
