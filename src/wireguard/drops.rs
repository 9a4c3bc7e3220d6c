//! Why packets are dropped, and the device's counters of it (for metrics). Pure.

use std::sync::atomic::{AtomicU64, Ordering};

use boringtun::noise::errors::WireGuardError;

/// Why the data plane dropped a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Outbound: the destination is in no peer's AllowedIPs.
    NoRoute,
    /// Outbound: the peer has no endpoint (configured or learned) yet.
    NoEndpoint,
    /// The device has no private key.
    NoKey,
    /// Inbound: the inner source address is not in the sending peer's AllowedIPs.
    BadSource,
    /// Not a WireGuard message, or not an IP packet.
    Malformed,
    /// The receiver index or the initiator's key belongs to no peer of ours.
    UnknownPeer,
    /// A data packet whose counter was already seen or is too old, or a replayed handshake.
    Replayed,
    /// Authentication failed: AEAD tag, MAC or handshake decryption.
    Unauthenticated,
    /// A data packet for a session we do not have (expired, or never established).
    NoSession,
    /// A handshake refused under load (a cookie reply was sent instead).
    UnderLoad,
    /// The peer's connection expired and no new handshake was started yet.
    Expired,
    /// A packet larger than the device's buffers.
    TooLarge,
    /// Sending the UDP datagram failed.
    SendFailed,
    /// Writing to the TUN interface failed.
    TunWriteFailed,
    /// Processing the packet panicked (a bug); the worker went on.
    Panic,
}

impl DropReason {
    pub const ALL: [DropReason; 15] = [
        DropReason::NoRoute,
        DropReason::NoEndpoint,
        DropReason::NoKey,
        DropReason::BadSource,
        DropReason::Malformed,
        DropReason::UnknownPeer,
        DropReason::Replayed,
        DropReason::Unauthenticated,
        DropReason::NoSession,
        DropReason::UnderLoad,
        DropReason::Expired,
        DropReason::TooLarge,
        DropReason::SendFailed,
        DropReason::TunWriteFailed,
        DropReason::Panic,
    ];

    /// A stable snake_case name, for metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NoRoute => "no_route",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::NoKey => "no_key",
            DropReason::BadSource => "bad_source",
            DropReason::Malformed => "malformed",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::Replayed => "replayed",
            DropReason::Unauthenticated => "unauthenticated",
            DropReason::NoSession => "no_session",
            DropReason::UnderLoad => "under_load",
            DropReason::Expired => "expired",
            DropReason::TooLarge => "too_large",
            DropReason::SendFailed => "send_failed",
            DropReason::TunWriteFailed => "tun_write_failed",
            DropReason::Panic => "panic",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

impl From<WireGuardError> for DropReason {
    fn from(e: WireGuardError) -> Self {
        use WireGuardError as E;
        match e {
            E::DuplicateCounter | E::InvalidCounter | E::WrongTai64nTimestamp => {
                DropReason::Replayed
            }
            E::NoCurrentSession | E::WrongIndex => DropReason::NoSession,
            E::UnderLoad => DropReason::UnderLoad,
            E::ConnectionExpired => DropReason::Expired,
            E::InvalidMac
            | E::InvalidAeadTag
            | E::WrongKey
            | E::InvalidTai64nTimestamp
            | E::UnexpectedPacket => DropReason::Unauthenticated,
            E::DestinationBufferTooSmall => DropReason::TooLarge,
            E::IncorrectPacketLength | E::WrongPacketType | E::InvalidPacket | E::LockFailed => {
                DropReason::Malformed
            }
        }
    }
}

/// Device-wide drop counters; an increment is one relaxed atomic add, on drops only.
#[derive(Debug, Default)]
pub struct DropCounters {
    slots: [AtomicU64; DropReason::ALL.len()],
}

impl DropCounters {
    #[inline]
    pub fn count(&self, reason: DropReason) {
        self.slots[reason.slot()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.slots[reason.slot()].load(Ordering::Relaxed)
    }

    /// Every reason with its count, in [`DropReason::ALL`] order.
    pub fn snapshot(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL.iter().map(|r| (*r, self.get(*r))).collect()
    }

    pub fn total(&self) -> u64 {
        DropReason::ALL.iter().map(|r| self.get(*r)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_slot_and_name() {
        let counters = DropCounters::default();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.slot(), i);
            for _ in 0..=i {
                counters.count(*r);
            }
        }
        for (i, (r, n)) in counters.snapshot().into_iter().enumerate() {
            assert_eq!(n, i as u64 + 1, "{}", r.as_str());
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
    }

    #[test]
    fn replays_and_forgeries_map_to_distinct_reasons() {
        assert_eq!(
            DropReason::from(WireGuardError::DuplicateCounter),
            DropReason::Replayed
        );
        assert_eq!(
            DropReason::from(WireGuardError::InvalidAeadTag),
            DropReason::Unauthenticated
        );
        assert_eq!(
            DropReason::from(WireGuardError::InvalidPacket),
            DropReason::Malformed
        );
    }
}
