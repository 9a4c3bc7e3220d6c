//! CNI DEL: detach a pod. Idempotent: it succeeds when called twice, when the pod's
//! namespace is gone, and for a container this plugin never saw.

use rscni_plugin::types::Args;
use wgmesh::netlink::Netlink;

use crate::error::Error;
use crate::ipam::{self, Store};
use crate::{config, names};

pub async fn run(args: &Args) -> Result<(), Error> {
    let cfg = config::network(args)?;
    let owner = config::owner(args);
    // The lease goes first, whatever state the namespace is in, so an address is never
    // leaked by a DEL that fails later.
    {
        let store = Store::lock(&cfg.ipam_dir(), cfg.ipam_lock_timeout)?;
        ipam::release(&store, &owner)?;
    }
    // Deleting the host end removes the whole veth pair, pod end included, without
    // entering the pod's namespace (which may already be gone, taking the pair with it).
    let host = Netlink::connect()?;
    host.delete_link_by_name(&names::host_veth(&owner.container_id, &owner.ifname))
        .await?;
    Ok(())
}
