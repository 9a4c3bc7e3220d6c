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
    step("state directory", remove_state_dir(&u.state_dir));
    failed
}

/// Empties the state directory, then removes it unless it is a mount point (a hostPath
/// volume in the DaemonSet): the key and everything else go either way.
fn remove_state_dir(dir: &std::path::Path) -> Result<(), String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| format!("{}: {e}", path.display()))?;
    }
    match std::fs::remove_dir(dir) {
        Err(e)
            if e.raw_os_error() != Some(libc::EBUSY)
                && e.kind() != std::io::ErrorKind::NotFound =>
        {
            Err(format!("{}: {e}", dir.display()))
        }
        _ => Ok(()),
    }
}

fn remove_file(path: PathBuf) -> Result<(), String> {
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("{}: {e}", path.display()))
        }
        _ => Ok(()),
    }
}
