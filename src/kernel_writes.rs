//! Counts of the changes this process asked the kernel (and its own WireGuard device) to
//! make, by kind, for `/metrics` (`wgmesh_kernel_writes_total{kind}`).
//!
//! A pass that finds everything as planned must write nothing: these counters are how a
//! benchmark or an operator sees that it does. They count requests sent, successful or
//! not (an "already exists" answer is still a write attempted). Process-wide, like the
//! kernel state they describe.

use std::sync::atomic::{AtomicU64, Ordering};

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A route added, replaced or deleted (rtnetlink).
    Route,
    /// A link created, changed or deleted (rtnetlink).
    Link,
    /// An address added or removed (rtnetlink).
    Address,
    /// An nftables transaction (the wgmesh table replaced or removed).
    Nftables,
    /// A value written under /proc/sys.
    Sysctl,
    /// A peer added, changed or removed on the in-process WireGuard device.
    WireguardPeer,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Route,
        Kind::Link,
        Kind::Address,
        Kind::Nftables,
        Kind::Sysctl,
        Kind::WireguardPeer,
    ];

    /// The `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Route => "route",
            Kind::Link => "link",
            Kind::Address => "address",
            Kind::Nftables => "nftables",
            Kind::Sysctl => "sysctl",
            Kind::WireguardPeer => "wireguard_peer",
        }
    }
}

static COUNTS: [AtomicU64; Kind::ALL.len()] = [const { AtomicU64::new(0) }; Kind::ALL.len()];

/// Records `n` writes of `kind`.
pub fn record(kind: Kind, n: u64) {
    COUNTS[kind as usize].fetch_add(n, Ordering::Relaxed);
}

/// Writes of `kind` so far.
pub fn count(kind: Kind) -> u64 {
    COUNTS[kind as usize].load(Ordering::Relaxed)
}
