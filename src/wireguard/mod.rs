//! A userspace WireGuard data plane on boringtun's protocol core (`boringtun::noise`),
//! embedded in the agent and run standalone as `wgmesh-wg`.
//!
//! Pure core, unit-tested without root:
//! - [`allowed_ips`]: longest-prefix match of addresses to peers;
//! - [`tunnel`]: one peer's session state over boringtun's `Tunn` (sans-IO);
//! - [`config`]: configuration transactions and the configured model;
//! - [`uapi`]: the wg(8) text protocol;
//! - [`peer`], [`drops`], [`error`]: data types.
//!
//! I/O adapters, thin: [`tun`] (the TUN interface), [`udp`] (the sockets), [`device`] (the
//! configuration API and threads), `control` (applying configuration), `dataplane` (the packet loops), `uapi_server` (the
//! unix socket) and [`daemon`] (the `wgmesh-wg` process contract).

pub mod allowed_ips;
pub mod config;
mod control;
pub mod daemon;
mod dataplane;
pub mod device;
pub mod drops;
pub mod error;
pub mod peer;
mod sys;
pub mod tun;
pub mod tunnel;
pub mod uapi;
pub mod uapi_client;
mod uapi_server;
pub mod udp;

pub use config::{ConfigUpdate, DeviceStatus, PeerUpdate};
pub use dataplane::CloseReason;
pub use device::{Closer, DEFAULT_MTU, Device, DeviceConfig, UAPI_DIR};
pub use drops::{DropCounters, DropReason};
pub use error::{DeviceError, TunError, UapiError};
pub use peer::{PeerConfig, PeerStats, PeerStatus, PresharedKey};
