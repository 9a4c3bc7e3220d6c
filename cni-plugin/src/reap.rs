//! Background removal of a detached pod veth.
//!
//! Deleting a veth pair costs the kernel an RCU grace period: about 20 ms on these
//! machines, for every plugin (the reference bridge plugin's DEL spends its time
//! there too). DEL does not make the runtime wait for it: it releases the address and
//! takes the host end down and off the bridge (the pod is cut off at once), then hands
//! the deletion to a detached copy of this binary (`wgmesh-cni --reap-link INDEX NAME`)
//! and returns. The reaper deletes the link only if that index still carries that
//! name and is still down and detached, so a pod re-added meanwhile under the same name
//! is never touched. A reaper that never runs leaves a down, detached veth that the next
//! ADD of the same attachment or CNI GC removes.

use std::process::{Command, Stdio};

use wgmesh::netlink::Netlink;

pub const FLAG: &str = "--reap-link";

/// Starts the detached reaper for link `index` called `name`. Its stdio is /dev/null
/// so the runtime, which reads our stdout to EOF, does not wait for it.
pub fn spawn(index: u32, name: &str) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    Command::new(exe)
        .args([FLAG, &index.to_string(), name])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: signals aimed at the runtime's group do not reach it.
        .process_group(0)
        .spawn()
        .map(drop)
}

/// The reaper's work: delete link `index` if it is still the detached `name`.
pub async fn run(index: u32, name: &str) -> Result<(), wgmesh::netlink::Error> {
    let nl = Netlink::connect()?;
    match nl.link_by_index(index).await? {
        Some(link) if link.name == name && !link.up && link.controller.is_none() => {
            nl.delete_link(index).await?;
        }
        _ => {}
    }
    Ok(())
}
