//! CNI STATUS: can this plugin serve an ADD right now?

use rscni_plugin::types::Args;

use crate::config;
use crate::error::Error;
use crate::ipam::{self, Store};

pub fn run(args: &Args) -> Result<(), Error> {
    let cfg = config::network(args)?;
    let store = Store::lock(&cfg.ipam_dir(), cfg.ipam_lock_timeout)?;
    if !ipam::has_free_addresses(&store, &cfg)? {
        return Err(Error::Unavailable(format!(
            "no free pod address left in {}",
            cfg.subnets.to_annotation()
        )));
    }
    Ok(())
}
