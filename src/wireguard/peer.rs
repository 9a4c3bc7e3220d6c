//! What a peer is configured with ([`PeerConfig`]) and what it did ([`PeerStats`]). Pure.

use std::net::SocketAddr;
use std::time::SystemTime;

use ipnet::IpNet;

use crate::key::{PrivateKey, PublicKey};

/// A preshared key is a 32-byte symmetric secret: the private-key type fits it (redacted
/// `Debug`, zeroized on drop, strict parsing), so there is no separate type.
pub type PresharedKey = PrivateKey;

/// A peer's configuration, as the agent declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: PublicKey,
    pub preshared_key: Option<PresharedKey>,
    /// Where to send. `None` in an update leaves the current (possibly roamed) endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Inner addresses this peer may use as sources and receives traffic for.
    pub allowed_ips: Vec<IpNet>,
    /// Seconds of silence after which a keepalive is sent; 0 = off.
    pub persistent_keepalive: u16,
}

impl PeerConfig {
    /// A peer with no endpoint, no allowed IPs and no keepalive.
    pub fn new(public_key: PublicKey) -> Self {
        PeerConfig {
            public_key,
            preshared_key: None,
            endpoint: None,
            allowed_ips: Vec::new(),
            persistent_keepalive: 0,
        }
    }
}

/// A peer's counters and state, read from the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerStats {
    /// Bytes of WireGuard datagrams received from this peer and authenticated.
    pub rx_bytes: u64,
    /// Bytes of WireGuard datagrams sent to this peer.
    pub tx_bytes: u64,
    /// Wall-clock time of the last completed handshake; `None` if there was none.
    pub last_handshake: Option<SystemTime>,
    /// The current endpoint: configured, or learned from the peer's last authenticated packet.
    pub endpoint: Option<SocketAddr>,
}

/// A peer as `get` reports it: configuration (with the current endpoint) and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub config: PeerConfig,
    pub stats: PeerStats,
}
