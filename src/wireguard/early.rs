//! Initiations from keys that are not peers yet, kept for a moment. Pure.
//!
//! A node that joins a mesh starts handshaking the moment it sees its peers' Node
//! objects, usually a little before they see its own: its first initiation reaches a
//! device that does not know the key yet and is dropped, and WireGuard's retry comes
//! only REKEY_TIMEOUT (5 s) later. Behind a NAT, only that node can start the
//! handshake. Kept here, the initiation is handed to the peer when it is added within
//! that time, as if it had arrived then; the peer's `Tunnel` authenticates it fully
//! (this only parsed who claims to send it), so a forged one is dropped there.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::tunnel::{INIT_LEN, REKEY_TIMEOUT};
use crate::key::PublicKey;

/// Kept at most this long: the initiator's retry replaces it after REKEY_TIMEOUT.
pub const KEEP_FOR: Duration = REKEY_TIMEOUT;
/// Kept at most this many (the oldest go first): a flood of unknown keys costs a
/// bounded 10 KiB.
pub const CAPACITY: usize = 64;

/// An initiation kept: where it came from, and the datagram.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EarlyInit {
    pub from: SocketAddr,
    pub datagram: [u8; INIT_LEN],
}

#[derive(Default)]
pub struct EarlyInits {
    kept: VecDeque<(Instant, PublicKey, EarlyInit)>,
}

impl EarlyInits {
    /// Keeps the latest initiation from `key` (replacing an earlier one from it).
    pub fn keep(&mut self, now: Instant, key: PublicKey, from: SocketAddr, datagram: &[u8]) {
        let Ok(datagram) = <[u8; INIT_LEN]>::try_from(datagram) else {
            return;
        };
        self.expire(now);
        self.kept.retain(|(_, k, _)| *k != key);
        if self.kept.len() == CAPACITY {
            self.kept.pop_front();
        }
        self.kept
            .push_back((now, key, EarlyInit { from, datagram }));
    }

    /// The initiation `key` sent less than [`KEEP_FOR`] ago, if any; it is not kept
    /// any longer.
    pub fn take(&mut self, now: Instant, key: &PublicKey) -> Option<EarlyInit> {
        self.expire(now);
        let at = self.kept.iter().position(|(_, k, _)| k == key)?;
        self.kept.remove(at).map(|(_, _, init)| init)
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while self
            .kept
            .front()
            .is_some_and(|(at, _, _)| now.saturating_duration_since(*at) >= KEEP_FOR)
        {
            self.kept.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        PublicKey::from_bytes([n; 32])
    }

    fn init(n: u8) -> [u8; INIT_LEN] {
        let mut d = [n; INIT_LEN];
        d[0] = 1;
        d
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn an_initiation_is_taken_once_and_only_within_keep_for() {
        let t0 = Instant::now();
        let mut e = EarlyInits::default();
        e.keep(t0, key(1), addr(1), &init(1));
        e.keep(t0, key(2), addr(2), &init(2));
        let got = e.take(t0 + Duration::from_secs(1), &key(1));
        assert_eq!(
            got,
            Some(EarlyInit {
                from: addr(1),
                datagram: init(1)
            })
        );
        assert_eq!(e.take(t0 + Duration::from_secs(1), &key(1)), None, "taken");
        assert_eq!(e.take(t0 + KEEP_FOR, &key(2)), None, "too old");
        assert!(e.is_empty());
    }

    #[test]
    fn the_latest_initiation_of_a_key_replaces_the_earlier() {
        let t0 = Instant::now();
        let mut e = EarlyInits::default();
        e.keep(t0, key(1), addr(1), &init(1));
        e.keep(t0 + Duration::from_secs(1), key(1), addr(9), &init(9));
        assert_eq!(e.len(), 1);
        let got = e.take(t0 + Duration::from_secs(2), &key(1));
        assert_eq!(got.map(|i| (i.from, i.datagram)), Some((addr(9), init(9))));
    }

    #[test]
    fn a_flood_of_unknown_keys_keeps_the_latest_capacity_and_wrong_sizes_nothing() {
        let t0 = Instant::now();
        let mut e = EarlyInits::default();
        for n in 0..=255u8 {
            e.keep(t0, key(n), addr(n.into()), &init(n));
        }
        assert_eq!(e.len(), CAPACITY);
        assert_eq!(e.take(t0, &key(0)), None, "the oldest went first");
        assert!(e.take(t0, &key(255)).is_some());
        e.keep(t0, key(1), addr(1), &[1u8; 10]);
        assert_eq!(e.take(t0, &key(1)), None, "not an initiation's size");
    }
}
