//! One peer's WireGuard state over boringtun's protocol core (`Tunn`). Pure (sans-IO):
//! packets in, packets out, no sockets.
//!
//! Around `Tunn` this adds what a data plane needs and boringtun leaves out: the endpoint
//! and its roaming (it follows authenticated packets), wire byte counters, the wall-clock
//! time of the last handshake (boringtun only knows a monotonic "time since"), a persistent
//! keepalive that can change without recreating the `Tunn` (boringtun fixes it at
//! construction), and a mapping of every outcome to a [`DropReason`].

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;

use super::drops::DropReason;
use super::peer::{PeerStats, PresharedKey};
use crate::key::{PrivateKey, PublicKey};

/// Handshake messages a second the device takes before it demands cookies (proof of the
/// sender's address, WireGuard paper §5.3) from the rest.
///
/// A whole mesh handshaking at once (a node's agent restarting, a pod sending to every
/// node, every agent greeting a node that joins) must fit: beyond the budget, senders
/// get a cookie and complete on their retry 5 s later (REKEY_TIMEOUT). At boringtun's 50
/// a second, a 100-node mesh already waited those 5 s (`hack/bench-scale.sh`). A
/// handshake costs the receiving thread about 0.55 ms on the development VM, so the
/// budget also bounds what a flood of unproven handshakes can take: about half a core of
/// that VM; senders that proved their address with a cookie are never limited.
pub const HANDSHAKES_PER_SECOND: u64 = 1000;

/// The count boringtun's limiter is given: each handshake message is counted twice (once
/// by the device's check before it looks up the peer, once inside `Tunn`), with the
/// same limiter, so one cookie secret answers both checks.
pub const HANDSHAKE_RATE_LIMIT: u64 = 2 * HANDSHAKES_PER_SECOND;

pub(crate) const MSG_INIT: u8 = 1;
pub(crate) const MSG_RESPONSE: u8 = 2;
pub(crate) const MSG_COOKIE: u8 = 3;
pub(crate) const MSG_DATA: u8 = 4;
pub(crate) const INIT_LEN: usize = 148;
pub(crate) const RESPONSE_LEN: usize = 92;
pub(crate) const COOKIE_LEN: usize = 64;
/// Header (16) plus AEAD tag (16) of a data message.
pub(crate) const DATA_OVERHEAD: usize = 32;
/// How long a tunnel without a persistent keepalive must be quiet before its timers stop
/// running: past WireGuard's longest timer (REJECT_AFTER_TIME × 3 = 540 s, when every
/// key is erased), nothing is left to time.
pub const DORMANT_AFTER: Duration = Duration::from_secs(600);
/// WireGuard's REKEY_TIMEOUT: a peer starts at most one initiation in this time, except
/// the retransmissions of its timers (the kernel's rule; boringtun lacks it).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Packets held while a new initiation must wait (the kernel stages 128 per peer).
const HELD_PACKETS: usize = 128;

/// The largest datagram or IP packet the data plane handles, plus room for the overhead.
pub const MAX_PACKET: usize = 65536 + DATA_OVERHEAD;

/// This device's static key as boringtun wants it, with the rate limiter shared by all
/// peers (it is keyed by our public key, so it changes with the private key).
pub struct Identity {
    pub(crate) public_key: PublicKey,
    pub(crate) secret: x25519::StaticSecret,
    pub(crate) public: x25519::PublicKey,
    pub(crate) rate_limiter: Arc<RateLimiter>,
}

impl Identity {
    pub fn new(private_key: &PrivateKey) -> Self {
        let secret = private_key.to_static_secret();
        let public = x25519::PublicKey::from(&secret);
        Identity {
            public_key: PublicKey::from_bytes(public.to_bytes()),
            secret,
            public,
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
        }
    }

    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }
}

/// Datagrams produced while handling one event (handshake replies, packets that waited
/// for a session, timer messages), in one reusable buffer: no allocation once warm.
pub struct Outbox {
    data: Vec<u8>,
    ends: Vec<usize>,
    scratch: Box<[u8]>,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            data: Vec::new(),
            ends: Vec::new(),
            scratch: vec![0u8; MAX_PACKET].into_boxed_slice(),
        }
    }
}

impl Outbox {
    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter()).map(|(s, e)| &self.data[s..*e])
    }

    fn push(data: &mut Vec<u8>, ends: &mut Vec<usize>, datagram: &[u8]) {
        data.extend_from_slice(datagram);
        ends.push(data.len());
    }

    fn mark(&self) -> (usize, usize) {
        (self.ends.len(), self.data.len())
    }
}

/// What became of an outbound packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Encap {
    /// Send the first `n` bytes of the output buffer to the endpoint.
    Send(usize),
    /// Queued inside `Tunn` until the handshake completes (an initiation may have gone out
    /// through an earlier call).
    Queued,
    Dropped(DropReason),
}

/// What became of an inbound datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Decap<'o> {
    /// An authenticated inner IP packet, and its source address.
    ToTun {
        packet: &'o [u8],
        source: IpAddr,
    },
    /// Nothing for the TUN (handshake, keepalive, cookie); the outbox may hold replies.
    Nothing,
    Dropped(DropReason),
}

/// One peer: boringtun's `Tunn` (absent while the device has no private key) and the
/// state the data plane keeps beside it.
pub struct Tunnel {
    tunn: Option<Box<Tunn>>,
    peer: PublicKey,
    index: u32,
    preshared_key: Option<PresharedKey>,
    endpoint: Option<SocketAddr>,
    keepalive: u16,
    last_handshake: Option<SystemTime>,
    rx_bytes: u64,
    tx_bytes: u64,
    /// Authenticated datagrams sent or received, and the count and time when a tick
    /// last saw it change (for the persistent keepalive and dormancy).
    traffic: u64,
    quiet: (u64, Instant),
    /// Quiet for [`DORMANT_AFTER`]: ticks skip it until a packet comes or goes.
    dormant: bool,
    /// When our last initiation went out (until a session is there to send with), and
    /// the packets that wait, without a session, for [`REKEY_TIMEOUT`] to pass since
    /// then (see [`Tunnel::encapsulate`]).
    initiated_at: Option<Instant>,
    held: VecDeque<Vec<u8>>,
    /// We answered the peer's initiation without a session to send `Tunn`'s queued
    /// packets with; answering ended our own initiation, so nothing in `Tunn` will.
    stalled: bool,
}

impl Tunnel {
    /// `index` (24 bits) identifies the peer in receiver indices: boringtun puts it in
    /// the upper 24 bits of each session index.
    pub fn new(
        identity: Option<&Identity>,
        peer: PublicKey,
        preshared_key: Option<PresharedKey>,
        index: u32,
        now: Instant,
    ) -> Self {
        let mut t = Tunnel {
            tunn: None,
            peer,
            index,
            preshared_key,
            endpoint: None,
            keepalive: 0,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            traffic: 0,
            quiet: (0, now),
            dormant: false,
            initiated_at: None,
            held: VecDeque::new(),
            stalled: false,
        };
        t.tunn = identity.map(|id| t.make_tunn(id));
        t
    }

    fn make_tunn(&self, id: &Identity) -> Box<Tunn> {
        Box::new(Tunn::new(
            id.secret.clone(),
            x25519::PublicKey::from(*self.peer.as_bytes()),
            self.preshared_key.as_ref().map(|k| *k.as_bytes()),
            // Persistent keepalive is ours (see `tick`), so it can change in place.
            None,
            self.index,
            Some(Arc::clone(&id.rate_limiter)),
        ))
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// The device's private key changed (or went away): sessions end, the peer stays.
    pub fn set_identity(&mut self, identity: Option<&Identity>) {
        self.handshake_restarts();
        match (self.tunn.as_mut(), identity) {
            (Some(tunn), Some(id)) => {
                tunn.set_static_private(id.secret.clone(), id.public, Some(id.rate_limiter.clone()))
            }
            (None, Some(id)) => self.tunn = Some(self.make_tunn(id)),
            (_, None) => {
                self.tunn = None;
                self.held.clear();
            }
        }
    }

    /// boringtun cannot change a preshared key in place: a different key starts a new
    /// `Tunn` (a new handshake follows); the same key keeps the session.
    pub fn set_preshared_key(&mut self, identity: Option<&Identity>, key: Option<PresharedKey>) {
        if self.preshared_key == key {
            return;
        }
        self.preshared_key = key;
        self.tunn = identity.map(|id| self.make_tunn(id));
        self.handshake_restarts();
    }

    /// Sessions and handshake state are gone: the next packet initiates at once.
    fn handshake_restarts(&mut self) {
        self.initiated_at = None;
        self.stalled = false;
    }

    pub fn preshared_key(&self) -> Option<&PresharedKey> {
        self.preshared_key.as_ref()
    }

    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    pub fn set_endpoint(&mut self, endpoint: SocketAddr) {
        self.endpoint = Some(endpoint);
    }

    pub fn persistent_keepalive(&self) -> u16 {
        self.keepalive
    }

    pub fn set_persistent_keepalive(&mut self, seconds: u16, now: Instant) {
        self.keepalive = seconds;
        self.quiet = (self.traffic, now);
    }

    pub fn stats(&self) -> PeerStats {
        PeerStats {
            rx_bytes: self.rx_bytes,
            tx_bytes: self.tx_bytes,
            last_handshake: self.last_handshake,
            endpoint: self.endpoint,
        }
    }

    /// Encrypts one IP packet into `out` (at least `packet.len() + 32` and 148 bytes).
    #[inline]
    pub fn encapsulate(&mut self, packet: &[u8], out: &mut [u8]) -> Encap {
        if self.dormant {
            self.wake();
        }
        let Some(tunn) = self.tunn.as_mut() else {
            return Encap::Dropped(DropReason::NoKey);
        };
        if out.len() < (packet.len() + DATA_OVERHEAD).max(INIT_LEN) {
            return Encap::Dropped(DropReason::TooLarge);
        }
        // Without a session, boringtun starts an initiation whenever none is in progress,
        // and answering the peer's initiation ends ours: it would start a new one and
        // forget the old, and the peer's answer to the old one, already in flight, is
        // rejected. Two peers with packets waiting did that to each other forever. So,
        // as the kernel does, no new initiation within REKEY_TIMEOUT of the last: the
        // packet waits for the session the peer's initiation is making, or for the
        // timeout (see `tick`), behind the packets that waited before it.
        // (Nothing to check, and no clock to read, on the path of a working session.)
        let waiting = !self.held.is_empty();
        if (waiting || self.initiated_at.is_some())
            && !has_session(tunn)
            && (waiting || recent(self.initiated_at, Instant::now()))
        {
            if self.held.len() < HELD_PACKETS {
                self.held.push_back(packet.to_vec());
            }
            return Encap::Queued;
        }
        match tunn.encapsulate(packet, out) {
            TunnResult::WriteToNetwork(datagram) => {
                let n = datagram.len();
                if datagram[0] == MSG_INIT {
                    self.initiated_at = Some(Instant::now());
                }
                self.tx_bytes += n as u64;
                self.traffic += 1;
                Encap::Send(n)
            }
            TunnResult::Err(e) => Encap::Dropped(e.into()),
            _ => Encap::Queued,
        }
    }

    /// Handles one datagram from `from`: decrypts data into `out` (at least as long as the
    /// datagram), answers handshakes through `outbox` (all replies go back to `from`).
    #[inline]
    pub fn decapsulate<'o>(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        out: &'o mut [u8],
        outbox: &mut Outbox,
    ) -> Decap<'o> {
        if self.dormant {
            self.wake();
        }
        let Some(tunn) = self.tunn.as_mut() else {
            return Decap::Dropped(DropReason::NoKey);
        };
        if out.len() < datagram.len().max(INIT_LEN) {
            return Decap::Dropped(DropReason::TooLarge);
        }
        let in_type = datagram.first().copied().unwrap_or(0);
        let mark = outbox.mark();
        let Outbox {
            data,
            ends,
            scratch,
        } = outbox;
        let (decap, authenticated) = match tunn.decapsulate(Some(from.ip()), datagram, out) {
            TunnResult::WriteToNetwork(reply) => {
                let out_type = reply.first().copied().unwrap_or(0);
                Outbox::push(data, ends, reply);
                // A cookie reply means "prove your address first": nothing was authenticated.
                let authenticated = out_type != MSG_COOKIE;
                if (in_type == MSG_INIT && out_type == MSG_RESPONSE)
                    || (in_type == MSG_RESPONSE && out_type == MSG_DATA)
                {
                    self.last_handshake = Some(SystemTime::now());
                }
                if authenticated {
                    self.stalled |= !flush_queue(
                        tunn,
                        &mut self.held,
                        &mut self.initiated_at,
                        data,
                        ends,
                        scratch,
                    );
                }
                (Decap::Nothing, authenticated)
            }
            TunnResult::WriteToTunnelV4(packet, source) => {
                self.stalled |= !flush_queue(
                    tunn,
                    &mut self.held,
                    &mut self.initiated_at,
                    data,
                    ends,
                    scratch,
                );
                let packet: &'o [u8] = packet;
                (
                    Decap::ToTun {
                        packet,
                        source: source.into(),
                    },
                    true,
                )
            }
            TunnResult::WriteToTunnelV6(packet, source) => {
                self.stalled |= !flush_queue(
                    tunn,
                    &mut self.held,
                    &mut self.initiated_at,
                    data,
                    ends,
                    scratch,
                );
                let packet: &'o [u8] = packet;
                (
                    Decap::ToTun {
                        packet,
                        source: source.into(),
                    },
                    true,
                )
            }
            // A keepalive (authenticated; it may confirm the session our packets wait
            // for), or a cookie reply we stored (not a roam).
            TunnResult::Done if in_type == MSG_DATA => {
                self.stalled |= !flush_queue(
                    tunn,
                    &mut self.held,
                    &mut self.initiated_at,
                    data,
                    ends,
                    scratch,
                );
                (Decap::Nothing, true)
            }
            TunnResult::Done => (Decap::Nothing, false),
            TunnResult::Err(e) => return Decap::Dropped(e.into()),
        };
        if authenticated {
            // Roaming: the endpoint follows the peer's latest authenticated packet.
            self.endpoint = Some(from);
            self.rx_bytes += datagram.len() as u64;
            self.traffic += 1;
        }
        self.account_sent(outbox, mark);
        decap
    }

    /// Runs the timers (call every 100-250 ms): handshake retransmission and rekey,
    /// keepalives, session expiry, then the persistent keepalive. Datagrams produced go to
    /// the endpoint. A tunnel without a persistent keepalive that has been quiet for
    /// [`DORMANT_AFTER`] has nothing left to time and is skipped (a mesh of a thousand
    /// mostly idle peers spent its idle CPU here), until its next packet.
    pub fn tick(&mut self, now: Instant, outbox: &mut Outbox) {
        let active = self.traffic != self.quiet.0;
        if active {
            self.quiet = (self.traffic, now);
        } else if self.keepalive == 0 && now.duration_since(self.quiet.1) >= DORMANT_AFTER {
            self.dormant = true;
            return;
        }
        if self.dormant {
            self.wake();
        }
        let mark = outbox.mark();
        let Some(tunn) = self.tunn.as_mut() else {
            return;
        };
        let Outbox {
            data,
            ends,
            scratch,
        } = outbox;
        // An expired connection reports an error here until the next handshake: not ours
        // to act on.
        if let TunnResult::WriteToNetwork(datagram) = tunn.update_timers(scratch) {
            Outbox::push(data, ends, datagram);
        }
        // The responder's packets wait until the initiator's first data message confirms
        // the session: send them as soon as there is one. Without one, once REKEY_TIMEOUT
        // has passed since our last initiation, the oldest waiting packet starts the next.
        if has_session(tunn) {
            flush_queue(
                tunn,
                &mut self.held,
                &mut self.initiated_at,
                data,
                ends,
                scratch,
            );
            self.stalled = false;
        } else if (self.stalled || !self.held.is_empty()) && !recent(self.initiated_at, now) {
            if self.stalled {
                // `Tunn` re-sends its oldest queued packet: without a session, that
                // queues it again and starts an initiation.
                if let TunnResult::WriteToNetwork(d) = tunn.decapsulate(None, &[], scratch) {
                    Outbox::push(data, ends, d);
                }
                self.stalled = false;
            }
            while let Some(packet) = self.held.pop_front() {
                if let TunnResult::WriteToNetwork(d) = tunn.encapsulate(&packet, scratch) {
                    Outbox::push(data, ends, d);
                }
            }
        }
        // Without an endpoint there is nowhere to send a keepalive (nor a handshake).
        if self.keepalive > 0
            && self.endpoint.is_some()
            && !active
            && now.duration_since(self.quiet.1) >= Duration::from_secs(self.keepalive.into())
        {
            if may_send(tunn, self.initiated_at, now) {
                keepalive(tunn, data, ends, scratch);
            }
            self.quiet = (self.traffic + 1, now);
        }
        self.account_sent(outbox, mark);
    }

    /// True while ticks skip this tunnel (see [`Tunnel::tick`]).
    pub fn is_dormant(&self) -> bool {
        self.dormant
    }

    /// A packet for a dormant tunnel: boringtun's clock (which only its timers advance)
    /// catches up first, so the packet is judged at the right time (its sessions, long
    /// expired, are cleared) and the timers it starts run from now.
    fn wake(&mut self) {
        self.dormant = false;
        if let Some(tunn) = self.tunn.as_mut() {
            // Nothing can be due after ten quiet minutes (every handshake attempt gave
            // up after 90 s): whatever it says is dropped.
            let mut scratch = [0u8; INIT_LEN + DATA_OVERHEAD];
            let _ = tunn.update_timers(&mut scratch);
        }
    }

    /// Sends a keepalive now (starting a handshake if there is no session), as wg does
    /// when a persistent keepalive is switched on. Nothing without an endpoint.
    pub fn keepalive_now(&mut self, outbox: &mut Outbox) {
        if self.dormant {
            self.wake();
        }
        let mark = outbox.mark();
        if self.endpoint.is_none() {
            return;
        }
        if let Some(tunn) = self.tunn.as_mut()
            && may_send(tunn, self.initiated_at, Instant::now())
        {
            let Outbox {
                data,
                ends,
                scratch,
            } = outbox;
            keepalive(tunn, data, ends, scratch);
        }
        self.account_sent(outbox, mark);
    }

    fn account_sent(&mut self, outbox: &Outbox, (count, bytes): (usize, usize)) {
        self.traffic += (outbox.ends.len() - count) as u64;
        self.tx_bytes += (outbox.data.len() - bytes) as u64;
        if outbox.iter().skip(count).any(|d| d[0] == MSG_INIT) {
            self.initiated_at = Some(Instant::now());
        }
    }
}

/// Whether `Tunn` has a session to send data with.
fn has_session(tunn: &Tunn) -> bool {
    tunn.time_since_last_handshake().is_some()
}

/// Whether an initiation went out less than REKEY_TIMEOUT before `now`.
fn recent(initiated_at: Option<Instant>, now: Instant) -> bool {
    initiated_at.is_some_and(|t| now.saturating_duration_since(t) < REKEY_TIMEOUT)
}

/// Whether a keepalive may go out: it is data with a session, an initiation without.
fn may_send(tunn: &Tunn, initiated_at: Option<Instant>, now: Instant) -> bool {
    !recent(initiated_at, now) || has_session(tunn)
}

fn keepalive(tunn: &mut Tunn, data: &mut Vec<u8>, ends: &mut Vec<usize>, scratch: &mut [u8]) {
    if let TunnResult::WriteToNetwork(datagram) = tunn.encapsulate(&[], scratch) {
        Outbox::push(data, ends, datagram);
    }
}

/// Sends what waited for a session, `Tunn`'s queue (boringtun's "repeat with an empty
/// datagram until Done" contract) and then ours, oldest first; with a session there,
/// the last initiation no longer holds anything back (`initiated_at` is cleared).
/// Returns false, sending nothing, without a session: `Tunn` would queue its packet
/// again and start an initiation.
fn flush_queue(
    tunn: &mut Tunn,
    held: &mut VecDeque<Vec<u8>>,
    initiated_at: &mut Option<Instant>,
    data: &mut Vec<u8>,
    ends: &mut Vec<usize>,
    scratch: &mut [u8],
) -> bool {
    if !has_session(tunn) {
        return false;
    }
    *initiated_at = None;
    while let TunnResult::WriteToNetwork(datagram) = tunn.decapsulate(None, &[], scratch) {
        Outbox::push(data, ends, datagram);
    }
    while let Some(packet) = held.pop_front() {
        if let TunnResult::WriteToNetwork(datagram) = tunn.encapsulate(&packet, scratch) {
            Outbox::push(data, ends, datagram);
        }
    }
    true
}

/// The length to encrypt for an IP packet of `len` bytes: WireGuard pads the plaintext to
/// a multiple of 16 so lengths leak less, but never beyond the interface MTU.
pub fn padded_len(len: usize, mtu: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let padded = len.div_ceil(16) * 16;
    if mtu == 0 {
        padded
    } else {
        padded.min(mtu.max(len))
    }
}

/// The destination of an IP packet, if it is one.
#[inline]
pub fn ip_destination(packet: &[u8]) -> Option<IpAddr> {
    Tunn::dst_address(packet)
}

#[cfg(test)]
#[path = "tunnel_tests.rs"]
mod tests;
