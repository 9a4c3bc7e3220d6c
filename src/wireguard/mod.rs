//! A userspace WireGuard data plane on boringtun's protocol core (`boringtun::noise`),
//! embedded in the agent and run standalone as `wgmesh-wg`.
//!
//! Pure core, unit-tested without root:
//! - [`allowed_ips`]: longest-prefix match of addresses to peers;
//! - [`tunnel`]: one peer's session state over boringtun's `Tunn` (sans-IO);
//! - [`config`]: configuration transactions and the configured model;
//! - [`uapi`]: the wg(8) text protocol;
//! - the fast path's packet logic: [`checksum`], [`vnet`] (virtio_net_hdr), [`gso`]
//!   (cutting TUN super-packets into segments), [`gro`] (coalescing TCP segments for the
//!   TUN), [`batch`] (grouping datagrams into UDP GSO messages), [`offloads`] (what to
//!   ask the kernel for, and falling back);
//! - [`early`]: initiations from keys that are not peers yet, kept for a moment;
//! - [`peer`], [`drops`], [`error`]: data types.
//!
//! I/O adapters, thin: [`tun`] (the TUN interface), [`udp`] (the sockets), `mmsg`
//! (recvmmsg/sendmmsg), [`device`] (the configuration API and threads), `control`
//! (applying configuration), `dataplane` (what the loops share, timers), `outbound` and
//! `inbound` (the packet loops), [`supervisor`] (restarting a loop that dies),
//! `uapi_server` and `uapi_socket` (the unix socket) and [`daemon`] (the `wgmesh-wg`
//! process contract). docs/performance.md explains the fast path.

pub mod allowed_ips;
pub mod batch;
pub mod checksum;
pub mod config;
mod control;
pub mod daemon;
mod dataplane;
pub mod device;
pub mod drops;
pub mod early;
pub mod error;
pub mod gro;
pub mod gso;
mod inbound;
mod mmsg;
pub mod offloads;
mod outbound;
pub mod peer;
pub mod supervisor;
mod sys;
#[cfg(test)]
mod testpkt;
pub mod tun;
pub mod tunnel;
pub mod uapi;
pub mod uapi_client;
mod uapi_server;
mod uapi_socket;
pub mod udp;
pub mod vnet;

/// How long a WireGuard session may be used after its handshake (the protocol's
/// Reject-After-Time): a handshake more recent than this means a working session.
pub const SESSION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(180);

pub use config::{ConfigUpdate, DeviceStatus, PeerUpdate};
pub use dataplane::CloseReason;
pub use device::{Closer, DEFAULT_MTU, Device, DeviceConfig, UAPI_DIR};
pub use drops::{DropCounters, DropReason};
pub use error::{DeviceError, TunError, UapiError};
pub use offloads::Offloads;
pub use peer::{PeerConfig, PeerStats, PeerStatus, PresharedKey};
pub use supervisor::{ThreadHealth, ThreadKind};
