//! The kernel's WireGuard (`wireguard.ko`), driven over generic netlink: the second
//! backend of the node's data plane, next to the userspace device of [`crate::wireguard`].
//!
//! The same configuration types serve both: a [`ConfigUpdate`] transaction goes in, a
//! [`DeviceStatus`] (peers with their counters) comes out, so the peer diff of
//! `dataplane::peers` and everything that reads peer stats work unchanged.
//!
//! - [`encode`]: transactions to `WG_CMD_SET_DEVICE` messages, split into batches within
//!   netlink's message size as wireguard-tools does, and `WG_CMD_GET_DEVICE` dumps back
//!   to a device status (pure);
//! - [`genl`]: the generic-netlink socket: family lookup, requests, acks, dumps (adapter);
//! - [`KernelDevice`]: one kernel WireGuard interface: create, configure, read (adapter).
//!
//! The message layout is `include/uapi/linux/wireguard.h`; the types come from the
//! rust-netlink family (`netlink-packet-wireguard`, `netlink-packet-generic`) on a plain
//! blocking `netlink-sys` socket: every request is a short, local kernel call.

mod device;
pub mod encode;
pub mod genl;

pub use device::{KernelDevice, LINK_KIND, create_link, probe};

#[cfg(doc)]
use crate::wireguard::{ConfigUpdate, DeviceStatus};

/// A kernel WireGuard operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening a generic netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error(
        "the kernel has no WireGuard (generic netlink family \"wireguard\" unknown; module not loaded and not loadable)"
    )]
    NoKernelSupport,
    #[error("{op} {interface}: {source}")]
    Kernel {
        op: &'static str,
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op}: malformed netlink answer: {detail}")]
    Decode { op: &'static str, detail: String },
}

impl Error {
    /// The errno of a kernel-rejected request (positive, e.g. `libc::ENODEV`).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Socket(e) | Error::Kernel { source: e, .. } => e.raw_os_error(),
            _ => None,
        }
    }
}
