//! CNI STATUS: can this plugin serve an ADD right now?

use rscni_plugin::types::Args;

use crate::config;
use crate::error::Error;
use crate::ipam::{self, Store};

pub async fn run(args: &Args) -> Result<(), Error> {
    let cfg = config::network(args)?;
    let host = wgmesh::netlink::Netlink::connect()?;
    if let Err(missing) = wgmesh::dataplane::guard::check(&host, cfg.subnets.nets()).await {
        return Err(Error::Unavailable(format!(
            "{} (see ADD's error)",
            Error::GuardMissing(missing)
        )));
    }
    let store = Store::lock(&cfg.ipam_dir(), cfg.ipam_lock_timeout)?;
    if !ipam::has_free_addresses(&store, &cfg)? {
        return Err(Error::Unavailable(format!(
            "no free pod address left in {}",
            cfg.subnets.to_annotation()
        )));
    }
    Ok(())
}
