//! The device configuration as data: a [`ConfigUpdate`] transaction (what a UAPI `set=1`
//! or an agent call asks for) applied to a [`Model`] (what is configured). Pure.
//!
//! A transaction is applied to a copy of the model, in order, with wg's semantics
//! (wireguard-go's `device/uapi.go` is the reference); the result says what changed so the
//! device can apply it to the data plane in one step. Nothing here can fail: values were
//! validated when the transaction was built, and I/O (binding a port) happens in the device.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use ipnet::IpNet;

use super::allowed_ips::AllowedIps;
use super::peer::{PeerConfig, PeerStatus, PresharedKey};
use crate::key::{PrivateKey, PublicKey};

/// A configuration transaction: device settings, then peer blocks applied in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigUpdate {
    /// `Some(None)` removes the private key.
    pub private_key: Option<Option<PrivateKey>>,
    /// `Some(0)` picks a free port.
    pub listen_port: Option<u16>,
    /// `Some(0)` turns the mark off.
    pub fwmark: Option<u32>,
    /// Remove every peer first (the peers below are then created afresh).
    pub replace_peers: bool,
    pub peers: Vec<PeerUpdate>,
}

/// Changes to one peer; fields left `None`/false/empty leave that setting alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUpdate {
    pub public_key: PublicKey,
    /// Remove the peer (everything else in the block is ignored).
    pub remove: bool,
    /// Change the peer only if it exists; never create it.
    pub update_only: bool,
    /// `Some(None)` removes the preshared key.
    pub preshared_key: Option<Option<PresharedKey>>,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: Option<u16>,
    /// Clear the peer's allowed IPs before adding `allowed_ips`.
    pub replace_allowed_ips: bool,
    /// Added to the peer, taken from any other peer that had them.
    pub allowed_ips: Vec<IpNet>,
    /// Start a handshake now rather than at the first packet (not a UAPI key: the agent
    /// asks for it for new peers, so a peer whose key just rotated is reachable at once).
    pub handshake_now: bool,
}

impl PeerUpdate {
    pub fn new(public_key: PublicKey) -> Self {
        PeerUpdate {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
            handshake_now: false,
        }
    }

    pub fn remove(public_key: PublicKey) -> Self {
        PeerUpdate {
            remove: true,
            ..PeerUpdate::new(public_key)
        }
    }

    /// Sets the peer to exactly `config` (allowed IPs replaced); creates it if needed. An
    /// endpoint of `None` keeps the current one.
    pub fn from_config(config: PeerConfig) -> Self {
        PeerUpdate {
            public_key: config.public_key,
            remove: false,
            update_only: false,
            preshared_key: Some(config.preshared_key),
            endpoint: config.endpoint,
            persistent_keepalive: Some(config.persistent_keepalive),
            replace_allowed_ips: true,
            allowed_ips: config.allowed_ips,
            handshake_now: false,
        }
    }
}

/// A device as `get` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceStatus {
    pub private_key: Option<PrivateKey>,
    /// The bound port.
    pub listen_port: u16,
    /// 0 = off.
    pub fwmark: u32,
    pub peers: Vec<PeerStatus>,
}

/// What a peer is configured with, apart from its allowed IPs and endpoint (which live in
/// the route table and the data plane).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerModel {
    pub preshared_key: Option<PresharedKey>,
    pub persistent_keepalive: u16,
}

/// The configured state of a device.
#[derive(Clone, Default)]
pub struct Model {
    pub private_key: Option<PrivateKey>,
    /// The port asked for (0 = any); the device records the bound port here.
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: BTreeMap<PublicKey, PeerModel>,
    pub routes: AllowedIps<PublicKey>,
}

/// What a transaction changed, for the device to carry out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub private_key: bool,
    pub listen_port: Option<u16>,
    pub fwmark: Option<u32>,
    /// Peers removed at some point of the transaction: if they exist at the end, they
    /// were re-created and start with a fresh session.
    pub removed: BTreeSet<PublicKey>,
    /// Endpoints to set, last value wins.
    pub endpoints: BTreeMap<PublicKey, SocketAddr>,
    /// Peers that send a keepalive now (starting a handshake if there is no session):
    /// a persistent keepalive was switched on, or the update asked for a handshake.
    pub keepalive_on: BTreeSet<PublicKey>,
    pub routes: bool,
}

impl Model {
    pub fn public_key(&self) -> Option<PublicKey> {
        self.private_key.as_ref().map(PrivateKey::public_key)
    }

    /// Applies `update` in place and returns what changed.
    pub fn apply(&mut self, update: &ConfigUpdate) -> Changes {
        let mut ch = Changes::default();
        if let Some(key) = &update.private_key {
            let key = key.clone().filter(|k| !k.is_zero());
            if key != self.private_key {
                self.private_key = key;
                ch.private_key = true;
                // A peer with our own public key cannot exist (wireguard-go removes it).
                if let Some(own) = self.public_key() {
                    self.remove_peer(&own, &mut ch);
                }
            }
        }
        if let Some(port) = update.listen_port {
            ch.listen_port = Some(port);
        }
        if let Some(mark) = update.fwmark.filter(|m| *m != self.fwmark) {
            self.fwmark = mark;
            ch.fwmark = Some(mark);
        }
        if update.replace_peers {
            let all: Vec<_> = self.peers.keys().copied().collect();
            for key in all {
                self.remove_peer(&key, &mut ch);
            }
        }
        let own = self.public_key();
        for p in &update.peers {
            if Some(p.public_key) == own {
                continue;
            }
            self.apply_peer(p, &mut ch);
        }
        ch
    }

    fn apply_peer(&mut self, p: &PeerUpdate, ch: &mut Changes) {
        let key = p.public_key;
        if p.remove {
            self.remove_peer(&key, ch);
            return;
        }
        let existed = self.peers.contains_key(&key);
        if !existed && p.update_only {
            return;
        }
        let peer = self.peers.entry(key).or_default();
        if let Some(psk) = &p.preshared_key {
            peer.preshared_key = psk.clone().filter(|k| !k.is_zero());
        }
        if let Some(secs) = p.persistent_keepalive {
            if peer.persistent_keepalive == 0 && secs != 0 {
                ch.keepalive_on.insert(key);
            }
            peer.persistent_keepalive = secs;
        }
        if let Some(ep) = p.endpoint {
            ch.endpoints.insert(key, ep);
        }
        if p.handshake_now {
            ch.keepalive_on.insert(key);
        }
        if p.replace_allowed_ips {
            let before = self.routes.len();
            self.routes.retain(|_, owner| *owner != key);
            ch.routes |= self.routes.len() != before;
        }
        for net in &p.allowed_ips {
            if self.routes.insert(*net, key) != Some(key) {
                ch.routes = true;
            }
        }
    }

    fn remove_peer(&mut self, key: &PublicKey, ch: &mut Changes) {
        if self.peers.remove(key).is_some() {
            ch.removed.insert(*key);
            ch.endpoints.remove(key);
            ch.keepalive_on.remove(key);
            let before = self.routes.len();
            self.routes.retain(|_, owner| owner != key);
            ch.routes |= self.routes.len() != before;
        }
    }

    /// Each peer's allowed IPs, sorted (IPv4 first), in one pass over the table.
    pub fn allowed_ips(&self) -> BTreeMap<PublicKey, Vec<IpNet>> {
        let mut out: BTreeMap<PublicKey, Vec<IpNet>> = BTreeMap::new();
        for (net, key) in self.routes.iter() {
            out.entry(*key).or_default().push(net);
        }
        for nets in out.values_mut() {
            nets.sort();
        }
        out
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
