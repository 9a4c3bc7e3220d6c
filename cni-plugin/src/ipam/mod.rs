//! Built-in IPAM: one address per pod from each of the node's subnets.
//!
//! [`allocator`] decides (pure), [`store`] remembers (files + lock).

pub mod allocator;
pub mod store;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use wgmesh::cni::NetworkConfig;

pub use store::{Owner, Store};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("IPAM {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("IPAM lock {path} still held by another invocation after {waited:?}")]
    LockTimeout { path: PathBuf, waited: Duration },
    #[error("no free address left in {subnet} ({capacity} pod addresses, all allocated)")]
    Exhausted { subnet: IpNet, capacity: u128 },
}

/// An address given to a pod, with its subnet's prefix and gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// Address with the subnet's prefix length, e.g. 10.244.1.7/24.
    pub address: IpNet,
    pub gateway: IpAddr,
}

/// Allocates one address per subnet of `cfg` for `owner`. On error nothing stays
/// allocated.
pub fn allocate(
    store: &Store,
    cfg: &NetworkConfig,
    owner: &Owner,
) -> Result<Vec<Allocation>, Error> {
    let mut used = store.used()?;
    let mut out: Vec<Allocation> = Vec::new();
    for (family, subnet) in cfg.subnets.nets().enumerate() {
        let result = allocate_one(store, subnet, family, &mut used, owner);
        match result {
            Ok(ip) => out.push(Allocation {
                address: IpNet::new(ip, subnet.prefix_len()).unwrap_or(subnet),
                gateway: cfg.subnets.gateway_of(subnet),
            }),
            Err(e) => {
                for a in &out {
                    let _ = store.release(a.address.addr());
                }
                return Err(e);
            }
        }
    }
    Ok(out)
}

fn allocate_one(
    store: &Store,
    subnet: IpNet,
    family: usize,
    used: &mut HashSet<IpAddr>,
    owner: &Owner,
) -> Result<IpAddr, Error> {
    let mut last = store.last_reserved(family);
    loop {
        let Some(ip) = allocator::next_free(subnet, used, last) else {
            return Err(Error::Exhausted {
                subnet,
                capacity: allocator::capacity(subnet),
            });
        };
        // The file is the source of truth: a stray file the listing missed makes
        // `reserve` fail, and we move on to the next candidate.
        if store.reserve(ip, owner)? {
            used.insert(ip);
            store.set_last_reserved(family, ip)?;
            return Ok(ip);
        }
        used.insert(ip);
        last = Some(ip);
    }
}

/// Releases every address held by `owner`; returns what was released.
pub fn release(store: &Store, owner: &Owner) -> Result<Vec<IpAddr>, Error> {
    let mut released = Vec::new();
    for lease in store.leases()? {
        if lease.owner.as_ref() == Some(owner) {
            store.release(lease.ip)?;
            released.push(lease.ip);
        }
    }
    Ok(released)
}

/// True when every subnet of `cfg` still has a free pod address.
pub fn has_free_addresses(store: &Store, cfg: &NetworkConfig) -> Result<bool, Error> {
    let used = store.used()?;
    Ok(cfg
        .subnets
        .nets()
        .all(|subnet| allocator::next_free(subnet, &used, None).is_some()))
}

#[cfg(test)]
mod tests;
