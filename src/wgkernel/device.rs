//! One kernel WireGuard interface: created over rtnetlink (link kind "wireguard"),
//! configured and read over generic netlink. Adapter.

use std::sync::Mutex;

use rtnetlink::LinkWireguard;

use super::Error;
use super::encode::{self, MESSAGE_BUDGET};
use super::genl::Genl;
use crate::key::PublicKey;
use crate::netlink::Netlink;
use crate::wireguard::{ConfigUpdate, DeviceStatus, PeerStats};

/// The rtnetlink link kind of a kernel WireGuard interface.
pub const LINK_KIND: &str = "wireguard";

/// A kernel WireGuard interface, by name. Requests are serialized on one socket.
#[derive(Debug)]
pub struct KernelDevice {
    ifname: String,
    genl: Mutex<Genl>,
}

impl KernelDevice {
    /// Opens the generic netlink socket for `ifname` (in the calling thread's network
    /// namespace); the interface itself is looked up on every request.
    pub fn open(ifname: &str) -> Result<Self, Error> {
        Ok(KernelDevice {
            ifname: ifname.to_string(),
            genl: Mutex::new(Genl::open()?),
        })
    }

    pub fn name(&self) -> &str {
        &self.ifname
    }

    fn genl(&self) -> std::sync::MutexGuard<'_, Genl> {
        // A panic while holding the socket leaves nothing half-done on it: every
        // request reads its own answers to the end.
        self.genl.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device: key, port, peers with their counters, as `wg show` reports them.
    pub fn status(&self) -> Result<DeviceStatus, Error> {
        let parts = self
            .genl()
            .dump(encode::get_message(&self.ifname))
            .map_err(|source| Error::Kernel {
                op: "read WireGuard device",
                interface: self.ifname.clone(),
                source,
            })?;
        Ok(encode::device_status(&parts))
    }

    /// Each peer's counters and current endpoint, for metrics (one dump).
    pub fn peer_stats(&self) -> Result<Vec<(PublicKey, PeerStats)>, Error> {
        Ok(self
            .status()?
            .peers
            .into_iter()
            .map(|p| (p.config.public_key, p.stats))
            .collect())
    }

    /// Applies `update`, in as many messages as netlink's size needs (see
    /// [`encode`]). Stops at the first message the kernel refuses; the ones before it
    /// stay applied.
    pub fn apply(&self, update: &ConfigUpdate) -> Result<(), Error> {
        crate::kernel_writes::record(
            crate::kernel_writes::Kind::WireguardPeer,
            update.peers.len() as u64,
        );
        let messages = encode::set_messages(&self.ifname, update, MESSAGE_BUDGET);
        let total = messages.len();
        let mut genl = self.genl();
        for (i, m) in messages.into_iter().enumerate() {
            genl.set(m).map_err(|source| Error::Kernel {
                op: if total == 1 {
                    "configure WireGuard device"
                } else {
                    "configure WireGuard device (a batch of peers)"
                },
                interface: format!("{} (message {} of {total})", self.ifname, i + 1),
                source,
            })?;
        }
        Ok(())
    }
}

/// Creates a kernel WireGuard link `name` (down; the caller sets MTU and up). Fails
/// with EEXIST when the name is taken, EOPNOTSUPP when the kernel has no WireGuard and
/// cannot load it.
pub async fn create_link(nl: &Netlink, name: &str) -> Result<(), crate::netlink::Error> {
    crate::kernel_writes::record(crate::kernel_writes::Kind::Link, 1);
    nl.handle()
        .link()
        .add(LinkWireguard::new(name).build())
        .execute()
        .await
        .map_err(crate::netlink::nl_err("create WireGuard link", name))
}

/// Whether this kernel can run WireGuard, and why: the module is loaded
/// (`/sys/module/wireguard`), or creating a throw-away WireGuard link succeeds (which
/// makes the kernel load the module: `rtnl-link-wireguard`). `Err` says why not.
pub async fn probe(nl: &Netlink) -> Result<String, String> {
    if std::path::Path::new("/sys/module/wireguard").exists() {
        return Ok("the wireguard module is loaded (/sys/module/wireguard)".into());
    }
    let name = format!("wgmprobe{}", std::process::id() % 10_000_000);
    match create_link(nl, &name).await {
        Ok(()) => {
            if let Err(e) = nl.delete_link_by_name(&name).await {
                tracing::warn!(link = %name, error = %e, "cannot delete the WireGuard probe link");
            }
            Ok(
                "the kernel created a WireGuard link (the wireguard module loaded on demand)"
                    .into(),
            )
        }
        Err(e) => Err(format!(
            "no /sys/module/wireguard and the kernel cannot create a WireGuard link: {e}"
        )),
    }
}
