//! The wgmesh-cni network configuration. Pure: no I/O.
//!
//! The agent renders this configuration into the node's conflist and the plugin parses
//! it back on every invocation, so both sides share one definition of every key, its
//! default and its validation.

pub mod config;
mod subnets;

pub use config::{ConfigError, NetworkConfig, render_conflist};
pub use subnets::{PodSubnets, SubnetError};
