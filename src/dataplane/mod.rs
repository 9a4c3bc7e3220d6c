//! Adapters that put a node's desired network state into the kernel. Each owns what it
//! creates and is idempotent: run it again and it changes nothing.

pub mod bridge;
