//! CNI GC: release everything that belongs to no valid attachment.

use std::collections::HashSet;

use rscni_plugin::types::Args;
use serde::Deserialize;
use wgmesh::netlink::Netlink;

use crate::error::Error;
use crate::ipam::{Owner, Store};
use crate::{config, names};

#[derive(Deserialize)]
struct Attachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// The attachments the runtime still knows: `cni.dev/valid-attachments` (spec 1.1),
/// or `cni.dev/attachments` as some runtimes spell it.
fn valid_attachments(args: &Args) -> Result<HashSet<Owner>, Error> {
    let conf = args.config();
    let mut valid: HashSet<Owner> = conf
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| Owner {
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
        })
        .collect();
    if let Some(v) = conf.custom.get("cni.dev/attachments") {
        let list = Vec::<Attachment>::deserialize(v)
            .map_err(|e| Error::Config(wgmesh::cni::ConfigError::Decode(e)))?;
        valid.extend(list.into_iter().map(|a| Owner {
            container_id: a.container_id,
            ifname: a.ifname,
        }));
    }
    Ok(valid)
}

pub async fn run(args: &Args) -> Result<(), Error> {
    let cfg = config::network(args)?;
    let valid = valid_attachments(args)?;
    let stale: Vec<_> = {
        let store = Store::lock(&cfg.ipam_dir(), cfg.ipam_lock_timeout)?;
        let mut stale = Vec::new();
        for lease in store.leases()? {
            if lease.owner.as_ref().is_some_and(|o| valid.contains(o)) {
                continue;
            }
            store.release(lease.ip)?;
            stale.extend(lease.owner);
        }
        stale
    };
    // A pod that vanished without DEL may have left its host veth behind (if its
    // namespace is still pinned somewhere); remove it too.
    let host = Netlink::connect()?;
    for owner in stale {
        host.delete_link_by_name(&names::host_veth(&owner.container_id, &owner.ifname))
            .await?;
    }
    Ok(())
}
