//! wgmesh: a Kubernetes pod network over an encrypted WireGuard full mesh.
//!
//! The library holds everything the binaries share:
//! - [`model`]: domain types (nodes, endpoints, annotation names) (pure);
//! - [`mesh`]: cluster state in, desired data-plane state out, with all validation (pure);
//! - [`key`]: WireGuard keys, strictly parsed (pure);
//! - [`cni`]: the wgmesh-cni network configuration (pure), read by the plugin and written by the agent;
//! - [`dataplane`]: adapters applying node state (the pod bridge, later routes and nftables);
//! - [`netlink`]: adapters over rtnetlink and network namespaces, used by the plugin and the agent;
//! - [`sysctl`]: the few kernel knobs a node needs;
//! - [`kernel_writes`]: counts of the changes made to the kernel, for `/metrics`;
//! - [`wireguard`]: the userspace WireGuard data plane (agent-embedded and `wgmesh-wg`);
//! - [`wgkernel`]: the kernel's WireGuard over generic netlink (the other backend).

pub mod agent;
pub mod cni;
pub mod dataplane;
pub mod fsutil;
pub mod k8s;
pub mod kernel_writes;
pub mod key;
pub mod mesh;
pub mod model;
pub mod netlink;
pub mod peer_config;
pub mod retry;
pub mod status;
pub mod sysctl;
pub mod telemetry;
pub mod uninstall;
pub mod wgkernel;
pub mod wireguard;
