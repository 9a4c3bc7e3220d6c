//! wgmesh: a Kubernetes pod network over an encrypted WireGuard full mesh.
//!
//! The library holds everything the binaries share:
//! - [`key`]: WireGuard keys, strictly parsed (pure);
//! - [`cni`]: the wgmesh-cni network configuration (pure), read by the plugin and written by the agent;
//! - [`netlink`]: adapters over rtnetlink and network namespaces, used by the plugin and the agent;
//! - [`sysctl`]: the few kernel knobs a node needs;
//! - [`wireguard`]: the userspace WireGuard data plane (agent-embedded and `wgmesh-wg`).

pub mod cni;
pub mod key;
pub mod netlink;
pub mod sysctl;
pub mod wireguard;
