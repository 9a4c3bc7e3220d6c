//! CNI DEL: detach a pod. Idempotent: it succeeds when called twice, when the pod's
//! namespace is gone, and for a container this plugin never saw. When it returns, the
//! address is free and the pod is off the bridge; the veth itself disappears a few
//! tens of milliseconds later (see [`crate::reap`]).

use rscni_plugin::types::Args;
use wgmesh::netlink::Netlink;

use crate::error::Error;
use crate::ipam::{self, Store};
use crate::{config, names, reap};

pub async fn run(args: &Args) -> Result<(), Error> {
    let cfg = config::network(args)?;
    let owner = config::owner(args);
    // The lease goes first, whatever state the namespace is in, so an address is never
    // leaked by a DEL that fails later.
    {
        let store = Store::lock(&cfg.ipam_dir(), cfg.ipam_lock_timeout)?;
        ipam::release(&store, &owner)?;
    }
    // The host end is all DEL needs: deleting it removes the pair, pod end included,
    // without entering the pod's namespace (which may already be gone, taking the pair
    // with it). Cut the pod off now; the slow deletion runs detached (see `reap`).
    let host = Netlink::connect()?;
    let name = names::host_veth(&owner.container_id, &owner.ifname);
    if let Some(link) = host.link_by_name(&name).await? {
        host.detach_and_down(link.index).await?;
        if reap::spawn(link.index, &name).is_err() {
            // No reaper (e.g. the binary was replaced under us): delete in line.
            host.delete_link(link.index).await?;
        }
    }
    Ok(())
}
