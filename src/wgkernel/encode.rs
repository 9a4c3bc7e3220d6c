//! Between wgmesh's configuration types and the kernel's WireGuard netlink messages.
//! Pure.
//!
//! A [`ConfigUpdate`] becomes `WG_CMD_SET_DEVICE` messages of at most [`MESSAGE_BUDGET`]
//! bytes each, split as wireguard-tools' `ipc-linux.c` splits them: device settings and
//! `WGDEVICE_F_REPLACE_PEERS` in the first message only; peers in order; a peer whose
//! allowed IPs do not fit goes on in the next message as its public key and the rest of
//! its allowed IPs (without `WGPEER_F_REPLACE_ALLOWEDIPS`, which would drop the first
//! part). The kernel applies each message on its own, so a large transaction is not
//! atomic as it is on the userspace device; peers are ordered as the caller ordered
//! them (the peer diff puts removals first).
//!
//! The kernel has no "handshake now" request. Raising a peer's persistent keepalive
//! from 0 sends a keepalive at once, which starts a handshake when there is no session
//! (`drivers/net/wireguard/netlink.c`, `set_peer`), so `handshake_now` becomes extra
//! blocks for the same peer: keepalive 0, then on, then back to the planned value.
//!
//! `WG_CMD_GET_DEVICE` dump parts become a [`DeviceStatus`]; a peer whose allowed IPs
//! spill into the next part continues there under the same public key.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use netlink_packet_core::Emitable;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardDeviceFlags, WireguardMessage, WireguardPeer, WireguardPeerAttribute,
    WireguardPeerFlags,
};

use crate::key::{PrivateKey, PublicKey};
use crate::wireguard::{ConfigUpdate, DeviceStatus, PeerConfig, PeerStats, PeerStatus, PeerUpdate};

/// The largest `WG_CMD_SET_DEVICE` message built, headers included: one page, what
/// wireguard-tools uses (`MNL_SOCKET_BUFFER_SIZE` on x86-64).
pub const MESSAGE_BUDGET: usize = 4096;
/// The netlink (16 bytes) and generic netlink (4 bytes) headers.
const HEADERS: usize = 20;

/// The messages that apply `update` to interface `ifname`, each within `budget` bytes
/// (headers included). Always at least one message (device settings alone).
pub fn set_messages(ifname: &str, update: &ConfigUpdate, budget: usize) -> Vec<WireguardMessage> {
    let mut first = vec![WireguardAttribute::IfName(ifname.to_string())];
    if let Some(key) = &update.private_key {
        // All zeros removes the key (as `wg set private-key /dev/null`).
        first.push(WireguardAttribute::PrivateKey(
            key.as_ref().map_or([0; 32], |k| *k.as_bytes()),
        ));
    }
    if let Some(port) = update.listen_port {
        first.push(WireguardAttribute::ListenPort(port));
    }
    if let Some(mark) = update.fwmark {
        first.push(WireguardAttribute::Fwmark(mark));
    }
    if update.replace_peers {
        first.push(WireguardAttribute::Flags(
            WireguardDeviceFlags::ReplacePeers,
        ));
    }
    let mut batcher = Batcher {
        ifname,
        budget,
        done: Vec::new(),
        attrs: first,
        peers: Vec::new(),
    };
    for p in &update.peers {
        for (head, ips) in peer_blocks(p) {
            batcher.push_peer(p.public_key, head, ips);
        }
    }
    batcher.finish()
}

/// The blocks of one peer update: its own block (attributes and allowed IPs), then the
/// keepalive blocks that start a handshake (see the module documentation).
fn peer_blocks(p: &PeerUpdate) -> Vec<(Vec<WireguardPeerAttribute>, Vec<WireguardAllowedIp>)> {
    let key = WireguardPeerAttribute::PublicKey(*p.public_key.as_bytes());
    if p.remove {
        return vec![(
            vec![
                key,
                WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
            ],
            Vec::new(),
        )];
    }
    let mut head = vec![key.clone()];
    let mut flags = WireguardPeerFlags::empty();
    if p.update_only {
        flags |= WireguardPeerFlags::UpdateOnly;
    }
    if p.replace_allowed_ips {
        flags |= WireguardPeerFlags::ReplaceAllowedIps;
    }
    if !flags.is_empty() {
        head.push(WireguardPeerAttribute::Flags(flags));
    }
    if let Some(psk) = &p.preshared_key {
        head.push(WireguardPeerAttribute::PresharedKey(
            psk.as_ref().map_or([0; 32], |k| *k.as_bytes()),
        ));
    }
    if let Some(endpoint) = p.endpoint {
        head.push(WireguardPeerAttribute::Endpoint(endpoint));
    }
    if let Some(secs) = p.persistent_keepalive {
        head.push(WireguardPeerAttribute::PersistentKeepalive(secs));
    }
    let ips = p.allowed_ips.iter().map(allowed_ip).collect();
    let mut blocks = vec![(head, ips)];
    if p.handshake_now {
        // After this update the peer's keepalive is `planned` (or what it was, which the
        // caller did not say: then it stays off after the handshake starts).
        let planned = p.persistent_keepalive.unwrap_or(0);
        let mut steps = vec![0, planned.max(1)];
        if planned == 0 {
            steps.push(0);
        }
        for secs in steps {
            blocks.push((
                vec![
                    key.clone(),
                    // Never re-create a peer that an earlier block of the update removed.
                    WireguardPeerAttribute::Flags(WireguardPeerFlags::UpdateOnly),
                    WireguardPeerAttribute::PersistentKeepalive(secs),
                ],
                Vec::new(),
            ));
        }
    }
    blocks
}

fn allowed_ip(net: &IpNet) -> WireguardAllowedIp {
    let family = match net {
        IpNet::V4(_) => WireguardAddressFamily::Ipv4,
        IpNet::V6(_) => WireguardAddressFamily::Ipv6,
    };
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(net.addr()),
        WireguardAllowedIpAttr::Cidr(net.prefix_len()),
    ])
}

/// Fills messages peer by peer.
struct Batcher<'a> {
    ifname: &'a str,
    budget: usize,
    done: Vec<WireguardMessage>,
    /// Device attributes of the message being filled (interface name at least).
    attrs: Vec<WireguardAttribute>,
    peers: Vec<WireguardPeer>,
}

impl Batcher<'_> {
    /// The size of the message being filled, with `extra` more bytes of peers.
    fn size_with(&self, extra: usize) -> usize {
        let peers: usize = self.peers.iter().map(Emitable::buffer_len).sum::<usize>() + extra;
        // The peers list is one nested attribute: a 4-byte header around its entries.
        HEADERS
            + self.attrs.as_slice().buffer_len()
            + if peers > 0 || extra > 0 { 4 + peers } else { 0 }
    }

    fn fits(&self, extra: usize) -> bool {
        self.size_with(extra) <= self.budget
    }

    fn flush(&mut self) {
        let mut attributes = std::mem::replace(
            &mut self.attrs,
            vec![WireguardAttribute::IfName(self.ifname.to_string())],
        );
        let peers = std::mem::take(&mut self.peers);
        if !peers.is_empty() {
            attributes.push(WireguardAttribute::Peers(peers));
        }
        self.done.push(WireguardMessage {
            cmd: WireguardCmd::SetDevice,
            attributes,
        });
    }

    fn push_peer(
        &mut self,
        key: PublicKey,
        mut head: Vec<WireguardPeerAttribute>,
        ips: Vec<WireguardAllowedIp>,
    ) {
        let mut rest = ips.as_slice();
        loop {
            // As many allowed IPs as fit after what the message already holds.
            let mut take = rest.len();
            while take > 0 && !self.fits(peer_len(&head, &rest[..take])) {
                take -= 1;
            }
            let whole_head_fits = self.fits(peer_len(&head, &[]));
            if ((take == 0 && !rest.is_empty()) || !whole_head_fits) && !self.peers.is_empty() {
                // Not even one allowed IP (or the head) fits here: a new message.
                self.flush();
                continue;
            }
            // An empty message takes at least the head and one allowed IP, whatever the
            // budget, so every update makes progress.
            let take = take.max(usize::from(!rest.is_empty()));
            let (now, later) = rest.split_at(take);
            let mut attrs = head.clone();
            if !now.is_empty() {
                attrs.push(WireguardPeerAttribute::AllowedIps(now.to_vec()));
            }
            self.peers.push(WireguardPeer(attrs));
            rest = later;
            if rest.is_empty() {
                return;
            }
            self.flush();
            // The continuation: the same peer, adding to what the first part set.
            head = vec![WireguardPeerAttribute::PublicKey(*key.as_bytes())];
        }
    }

    fn finish(mut self) -> Vec<WireguardMessage> {
        if !self.peers.is_empty() || self.done.is_empty() {
            self.flush();
        }
        self.done
    }
}

fn peer_len(head: &[WireguardPeerAttribute], ips: &[WireguardAllowedIp]) -> usize {
    let mut attrs = head.to_vec();
    if !ips.is_empty() {
        attrs.push(WireguardPeerAttribute::AllowedIps(ips.to_vec()));
    }
    WireguardPeer(attrs).buffer_len()
}

/// The `WG_CMD_GET_DEVICE` dump request for `ifname`.
pub fn get_message(ifname: &str) -> WireguardMessage {
    WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::IfName(ifname.to_string())],
    }
}

/// The device as the dump parts describe it.
pub fn device_status(parts: &[WireguardMessage]) -> DeviceStatus {
    let mut status = DeviceStatus::default();
    for part in parts {
        for attr in &part.attributes {
            match attr {
                WireguardAttribute::PrivateKey(k) => {
                    let key = PrivateKey::from_bytes(*k);
                    status.private_key = (!key.is_zero()).then_some(key);
                }
                WireguardAttribute::ListenPort(p) => status.listen_port = *p,
                WireguardAttribute::Fwmark(m) => status.fwmark = *m,
                WireguardAttribute::Peers(peers) => {
                    for peer in peers {
                        add_peer(&mut status.peers, peer);
                    }
                }
                _ => {}
            }
        }
    }
    status
}

/// Adds `peer` to `peers`, or continues the last peer when it has the same key.
fn add_peer(peers: &mut Vec<PeerStatus>, peer: &WireguardPeer) {
    let Some(key) = peer.0.iter().find_map(|a| match a {
        WireguardPeerAttribute::PublicKey(k) => Some(PublicKey::from_bytes(*k)),
        _ => None,
    }) else {
        return;
    };
    if peers.last().is_none_or(|p| p.config.public_key != key) {
        peers.push(PeerStatus {
            config: PeerConfig::new(key),
            stats: PeerStats::default(),
        });
    }
    let Some(status) = peers.last_mut() else {
        return;
    };
    for attr in &peer.0 {
        match attr {
            WireguardPeerAttribute::PresharedKey(k) => {
                let psk = PrivateKey::from_bytes(*k);
                status.config.preshared_key = (!psk.is_zero()).then_some(psk);
            }
            WireguardPeerAttribute::Endpoint(e) => {
                status.config.endpoint = Some(*e).filter(|e| !is_unset(e));
                status.stats.endpoint = status.config.endpoint;
            }
            WireguardPeerAttribute::PersistentKeepalive(s) => {
                status.config.persistent_keepalive = *s;
            }
            WireguardPeerAttribute::LastHandshake(t) => {
                status.stats.last_handshake = (t.seconds > 0 || t.nano_seconds > 0)
                    .then(|| {
                        SystemTime::UNIX_EPOCH.checked_add(Duration::new(
                            u64::try_from(t.seconds).ok()?,
                            u32::try_from(t.nano_seconds).ok()?.min(999_999_999),
                        ))
                    })
                    .flatten();
            }
            WireguardPeerAttribute::RxBytes(n) => status.stats.rx_bytes = *n,
            WireguardPeerAttribute::TxBytes(n) => status.stats.tx_bytes = *n,
            WireguardPeerAttribute::AllowedIps(ips) => {
                status
                    .config
                    .allowed_ips
                    .extend(ips.iter().filter_map(allowed_ip_net));
            }
            _ => {}
        }
    }
}

/// An endpoint the kernel reports for a peer that has none (an all-zero address).
fn is_unset(e: &SocketAddr) -> bool {
    e.ip().is_unspecified() && e.port() == 0
}

fn allowed_ip_net(ip: &WireguardAllowedIp) -> Option<IpNet> {
    let mut addr: Option<IpAddr> = None;
    let mut cidr: Option<u8> = None;
    for a in &ip.0 {
        match a {
            WireguardAllowedIpAttr::IpAddr(a) => addr = Some(*a),
            WireguardAllowedIpAttr::Cidr(c) => cidr = Some(*c),
            _ => {}
        }
    }
    IpNet::new(addr?, cidr?).ok()
}

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;
