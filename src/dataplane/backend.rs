//! Which WireGuard implementation carries the node's traffic, and one handle over
//! both: the userspace device in this process ([`crate::wireguard::Device`]) or the
//! kernel's ([`crate::wgkernel::KernelDevice`]). The plan never knows which: both take
//! the same [`ConfigUpdate`] and report the same [`DeviceStatus`]. Adapter.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::key::{PrivateKey, PublicKey};
use crate::netlink::Netlink;
use crate::wgkernel::KernelDevice;
use crate::wireguard::{ConfigUpdate, Device, DeviceStatus, DropCounters, PeerStats, ThreadHealth};

use super::Error;

/// What `--wireguard-backend` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// The kernel's when this kernel has WireGuard (loaded or loadable), else userspace.
    Auto,
    Kernel,
    Userspace,
}

/// The backend in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `wireguard.ko`, configured over generic netlink.
    Kernel,
    /// wgmesh's own data plane, in the agent (persistent TUN, UAPI socket, offloads).
    Userspace,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Kernel => "kernel",
            Backend::Userspace => "userspace",
        }
    }
}

/// Resolves `choice` on this kernel and says why (for the log). `kernel` on a kernel
/// without WireGuard is an error: the operator asked for it, falling back would hide
/// the misconfiguration.
pub async fn choose(choice: BackendChoice, nl: &Netlink) -> Result<(Backend, String), Error> {
    match choice {
        BackendChoice::Userspace => {
            Ok((Backend::Userspace, "--wireguard-backend userspace".into()))
        }
        BackendChoice::Kernel => match crate::wgkernel::probe(nl).await {
            Ok(why) => Ok((
                Backend::Kernel,
                format!("--wireguard-backend kernel; {why}"),
            )),
            Err(why) => Err(Error::Other(format!(
                "--wireguard-backend kernel, but {why}"
            ))),
        },
        BackendChoice::Auto => match crate::wgkernel::probe(nl).await {
            Ok(why) => Ok((Backend::Kernel, format!("auto: {why}"))),
            Err(why) => Ok((Backend::Userspace, format!("auto: {why}"))),
        },
    }
}

/// The node's WireGuard device, whichever backend runs it. Cheap to clone.
#[derive(Clone)]
pub enum WgDevice {
    Userspace(Arc<Device>),
    Kernel(Arc<KernelDevice>),
}

impl std::fmt::Debug for WgDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgDevice({})", self.backend().as_str())
    }
}

impl WgDevice {
    pub fn backend(&self) -> Backend {
        match self {
            WgDevice::Userspace(_) => Backend::Userspace,
            WgDevice::Kernel(_) => Backend::Kernel,
        }
    }

    /// Key, port and peers with their counters.
    pub fn status(&self) -> Result<DeviceStatus, Error> {
        match self {
            WgDevice::Userspace(d) => Ok(d.status()),
            WgDevice::Kernel(k) => k.status().map_err(|e| Error::Other(e.to_string())),
        }
    }

    /// Applies a transaction (atomically on the userspace device; in batches on the
    /// kernel, see `wgkernel::encode`).
    pub fn apply(&self, update: &ConfigUpdate) -> Result<(), Error> {
        match self {
            WgDevice::Userspace(d) => d.apply(update).map_err(|e| Error::Other(e.to_string())),
            WgDevice::Kernel(k) => k.apply(update).map_err(|e| Error::Other(e.to_string())),
        }
    }

    pub fn set_private_key(&self, key: &PrivateKey) -> Result<(), Error> {
        self.apply(&ConfigUpdate {
            private_key: Some(Some(key.clone())),
            ..ConfigUpdate::default()
        })
    }

    /// Every peer's counters, for metrics; empty when the kernel cannot be read.
    pub fn peer_stats(&self) -> BTreeMap<PublicKey, PeerStats> {
        match self.status() {
            Ok(s) => s
                .peers
                .into_iter()
                .map(|p| (p.config.public_key, p.stats))
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the WireGuard peers for metrics");
                BTreeMap::new()
            }
        }
    }

    /// Packets dropped by the userspace data plane; the kernel counts its own drops
    /// in the interface's statistics.
    pub fn drops(&self) -> Option<&DropCounters> {
        match self {
            WgDevice::Userspace(d) => Some(d.drops()),
            WgDevice::Kernel(_) => None,
        }
    }

    /// Restarts of the userspace packet threads; the kernel has none.
    pub fn threads(&self) -> Option<&ThreadHealth> {
        match self {
            WgDevice::Userspace(d) => Some(d.threads()),
            WgDevice::Kernel(_) => None,
        }
    }

    /// For readiness: every userspace packet thread runs; always true for the kernel.
    pub fn threads_alive(&self) -> bool {
        match self {
            WgDevice::Userspace(d) => d.threads_alive(),
            WgDevice::Kernel(_) => true,
        }
    }
}
