//! `wgmesh uninstall` (also `wgmesh agent --cleanup`): removes everything the agent
//! created on this node. Adapter. Each step runs even when an earlier one failed, and
//! everything already absent counts as done, so it can be run again.

use std::path::PathBuf;

use crate::agent::CONFLIST;
use crate::dataplane::{firewall, routes};
use crate::netlink::Netlink;

/// What to remove.
#[derive(Debug, Clone)]
pub struct Uninstall {
    pub interface: String,
    pub bridge: String,
    pub cni_conf_dir: PathBuf,
    pub state_dir: PathBuf,
}

/// Removes the nftables table, wgmesh's routes, the mesh interface, the bridge, the CNI
/// conflist and the state directory (private key included). Returns what failed.
pub async fn run(u: &Uninstall) -> Vec<String> {
    let mut failed = Vec::new();
    let mut step = |what: &str, r: Result<(), String>| match r {
        Ok(()) => tracing::info!("removed {what}"),
        Err(e) => {
            tracing::error!(error = %e, "could not remove {what}");
            failed.push(format!("{what}: {e}"));
        }
    };
    step(
        "nftables table inet wgmesh",
        firewall::remove().map_err(|e| e.to_string()),
    );
    match Netlink::connect() {
        Ok(nl) => {
            step(
                "routes (proto 87)",
                routes::remove_all(&nl)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
            );
            for link in [&u.interface, &u.bridge] {
                step(
                    link,
                    nl.delete_link_by_name(link)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string()),
                );
            }
        }
        Err(e) => step("routes and links", Err(e.to_string())),
    }
    step("CNI config", remove_file(u.cni_conf_dir.join(CONFLIST)));
    step(
        "state directory",
        match std::fs::remove_dir_all(&u.state_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
            _ => Ok(()),
        },
    );
    failed
}

fn remove_file(path: PathBuf) -> Result<(), String> {
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("{}: {e}", path.display()))
        }
        _ => Ok(()),
    }
}
