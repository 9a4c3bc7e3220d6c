//! Adapter over rtnetlink and network namespaces, shared by wgmesh-cni and the agent.
//!
//! [`Netlink`] is a connection bound to one network namespace (the namespace of the
//! thread that opened its socket). Operations return wgmesh's own small value types
//! ([`Link`], addresses as [`ipnet::IpNet`], [`Route`]), never raw netlink messages, and
//! the `ensure_*` operations treat "already as wanted" as success, so callers can be
//! retried and can race each other.

mod addr;
mod link;
mod netns;
pub mod nftables;
mod route;

pub use link::{BridgeSpec, Link, VethSpec};
pub use netns::NetNs;
pub use route::{PROTO_BOOT, PROTO_KERNEL, Route, RouteKind};

use std::io;
use std::path::PathBuf;

use netlink_sys::TokioSocket;
use tokio::task::JoinHandle;

/// A netlink or namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink {op} {target}: {source}")]
    Netlink {
        op: &'static str,
        target: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("{what} {name:?} not found")]
    NotFound { what: &'static str, name: String },
    #[error("{0}")]
    Unexpected(String),
}

impl Error {
    /// The errno of a kernel-rejected request (positive, e.g. `libc::EEXIST`).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { source, .. } => errno(source),
            Error::Netns { source, .. } | Error::Socket(source) => source.raw_os_error(),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The errno carried by a netlink error reply.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

pub(crate) fn nl_err(
    op: &'static str,
    target: impl Into<String>,
) -> impl FnOnce(rtnetlink::Error) -> Error {
    let target = target.into();
    move |source| Error::Netlink { op, target, source }
}

/// A route-netlink connection bound to one network namespace. The connection task
/// stops when the `Netlink` is dropped.
pub struct Netlink {
    handle: rtnetlink::Handle,
    task: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Netlink {
    /// Connects in the calling thread's current network namespace. Needs a tokio runtime.
    pub fn connect() -> Result<Self> {
        let socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)
            .map_err(Error::Socket)?;
        Self::from_socket(socket)
    }

    /// Connects inside `ns`: the socket is opened on a short-lived thread that entered
    /// the namespace, and stays bound to it; this thread never changes namespace.
    pub fn connect_in(ns: &NetNs) -> Result<Self> {
        let socket = ns.run(|| netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE))?;
        Self::from_socket(socket.map_err(Error::Socket)?)
    }

    fn from_socket(socket: netlink_sys::Socket) -> Result<Self> {
        use std::os::fd::IntoRawFd;
        socket.set_non_blocking(true).map_err(Error::Socket)?;
        // SAFETY: the fd is a freshly opened netlink socket whose ownership moves here.
        let socket =
            unsafe { <TokioSocket as std::os::fd::FromRawFd>::from_raw_fd(socket.into_raw_fd()) };
        let (conn, handle, _messages) = rtnetlink::from_socket(socket);
        let task = tokio::spawn(conn);
        Ok(Self { handle, task })
    }

    pub(crate) fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }
}
