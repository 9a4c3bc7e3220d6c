//! The packet loops: TUN queue → encrypt → UDP, UDP → decrypt → TUN, and the timers.
//! Adapter over the pure tunnel and route table.
//!
//! Each loop runs packets to completion on its own thread with its own buffers (nothing
//! is allocated per packet). Loops read the peer table from an immutable [`Snapshot`]
//! they re-fetch only when the generation counter moved, so the only shared write per
//! packet is the peer's tunnel mutex, held for the crypto and never across a syscall.
//! Processing of each packet is wrapped in `catch_unwind`: a panic drops that packet,
//! counts it, and the loop goes on.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, TunnResult};

use super::allowed_ips::{AllowedIps, IntMap};
use super::drops::{DropCounters, DropReason};
use super::sys::{Stop, lock, wait_readable};
use super::tun::{Tun, TunQueue, is_gone};
use super::tunnel::{
    COOKIE_LEN, DATA_OVERHEAD, Decap, Encap, INIT_LEN, Identity, MAX_PACKET, MSG_COOKIE, MSG_DATA,
    MSG_INIT, MSG_RESPONSE, Outbox, RESPONSE_LEN, Tunnel, ip_destination, padded_len,
};
use super::udp::{self, Family, UdpSockets};
use crate::key::PublicKey;

/// How often peers' timers run (boringtun wants 100-250 ms).
pub(crate) const TICK: Duration = Duration::from_millis(100);
/// The largest IP packet read from the TUN: leaves room for 16 bytes of padding.
const MAX_INNER: usize = 65535;

/// A peer in the data plane: its index in receiver indices and its tunnel.
pub(crate) struct Peer {
    pub key: PublicKey,
    pub index: u32,
    pub tunnel: Mutex<Tunnel>,
}

/// What the loops read per packet; replaced whole on every configuration change.
pub(crate) struct Snapshot {
    pub identity: Option<Arc<Identity>>,
    pub by_index: IntMap<u32, Arc<Peer>>,
    pub by_key: HashMap<PublicKey, Arc<Peer>>,
    pub routes: AllowedIps<Arc<Peer>>,
    pub sockets: Arc<UdpSockets>,
}

/// Why a device stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// `close` or `shutdown` was called (e.g. on SIGTERM).
    Requested,
    /// The TUN interface was deleted.
    InterfaceRemoved,
    /// The UAPI socket file was deleted.
    UapiSocketRemoved,
}

/// State shared by the loops, the control API and the UAPI server.
pub(crate) struct Shared {
    pub tun: Tun,
    pub drops: DropCounters,
    pub stop: Stop,
    /// The interface MTU, refreshed every second, for padding.
    pub mtu: AtomicUsize,
    generation: AtomicU64,
    snapshot: Mutex<Arc<Snapshot>>,
    closed: Mutex<Option<CloseReason>>,
    closed_cv: Condvar,
}

impl Shared {
    pub fn new(tun: Tun, stop: Stop, snapshot: Snapshot) -> Shared {
        let mtu = tun.mtu().unwrap_or(0) as usize;
        Shared {
            tun,
            drops: DropCounters::default(),
            stop,
            mtu: AtomicUsize::new(mtu),
            generation: AtomicU64::new(0),
            snapshot: Mutex::new(Arc::new(snapshot)),
            closed: Mutex::new(None),
            closed_cv: Condvar::new(),
        }
    }

    pub fn publish(&self, snapshot: Snapshot) {
        let mut slot = lock(&self.snapshot);
        *slot = Arc::new(snapshot);
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn load(&self) -> Arc<Snapshot> {
        Arc::clone(&lock(&self.snapshot))
    }

    /// Stops the device (first reason wins) and wakes every loop and waiter.
    pub fn close(&self, reason: CloseReason) {
        let mut closed = lock(&self.closed);
        if closed.is_none() {
            tracing::info!(device = self.tun.name(), ?reason, "closing");
            *closed = Some(reason);
        }
        self.stop.trigger();
        self.closed_cv.notify_all();
    }

    pub fn wait_closed(&self, timeout: Option<Duration>) -> Option<CloseReason> {
        let mut closed = lock(&self.closed);
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(r) = closed.as_ref() {
                return Some(r.clone());
            }
            closed = match deadline {
                None => self
                    .closed_cv
                    .wait(closed)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now())?;
                    let (g, _) = self
                        .closed_cv
                        .wait_timeout(closed, left)
                        .unwrap_or_else(|e| e.into_inner());
                    g
                }
            };
        }
    }

    #[inline]
    fn drop_packet(&self, reason: DropReason) {
        self.drops.count(reason);
        tracing::trace!(reason = reason.as_str(), "packet dropped");
    }

    #[inline]
    fn send(&self, sockets: &UdpSockets, datagram: &[u8], to: SocketAddr) {
        if let Err(e) = sockets.send_to(datagram, to) {
            tracing::trace!(%to, error = %e, "send failed");
            self.drops.count(DropReason::SendFailed);
        }
    }

    /// Runs `f` for one packet; a panic drops the packet instead of the thread.
    #[inline]
    fn guarded(&self, f: impl FnOnce()) {
        if catch_unwind(AssertUnwindSafe(f)).is_err() {
            self.drops.count(DropReason::Panic);
        }
    }
}

/// A loop's cached snapshot, re-fetched when the generation moved.
struct View {
    snap: Arc<Snapshot>,
    generation: u64,
}

impl View {
    fn new(shared: &Shared) -> View {
        let generation = shared.generation.load(Ordering::Acquire);
        View {
            snap: shared.load(),
            generation,
        }
    }

    #[inline]
    fn refresh(&mut self, shared: &Shared) {
        let g = shared.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.snap = shared.load();
            self.generation = g;
        }
    }
}

/// Reads one TUN queue, encrypts, sends.
pub(crate) fn tun_loop(shared: Arc<Shared>, queue: usize) {
    let Some(q) = shared.tun.queues().get(queue) else {
        return;
    };
    let _span = tracing::debug_span!("tun", device = shared.tun.name(), queue).entered();
    let mut view = View::new(&shared);
    let mut buf = vec![0u8; MAX_PACKET];
    let mut out = vec![0u8; MAX_PACKET];
    while !shared.stop.is_set() {
        match q.read(&mut buf[..MAX_INNER]) {
            Ok(n) => {
                view.refresh(&shared);
                shared.guarded(|| outbound(&shared, &view.snap, &mut buf, n, &mut out));
            }
            Err(e) => {
                if !tun_error(&shared, q, e) {
                    break;
                }
            }
        }
    }
}

/// Handles a failed read or wait; false when the loop must end.
fn tun_error(shared: &Shared, q: &TunQueue, e: io::Error) -> bool {
    match e.kind() {
        io::ErrorKind::WouldBlock => match wait_readable(q.raw_fd(), &shared.stop) {
            Ok(()) => true,
            Err(e) => tun_error(shared, q, e),
        },
        io::ErrorKind::Interrupted => true,
        _ if is_gone(&e) => {
            shared.close(CloseReason::InterfaceRemoved);
            false
        }
        _ => {
            tracing::warn!(device = shared.tun.name(), error = %e, "TUN read failed");
            !shared.stop.sleep(Duration::from_millis(100))
        }
    }
}

#[inline]
fn outbound(shared: &Shared, snap: &Snapshot, buf: &mut [u8], n: usize, out: &mut [u8]) {
    let Some(dst) = ip_destination(&buf[..n]) else {
        return shared.drop_packet(DropReason::Malformed);
    };
    let Some(peer) = snap.routes.lookup(dst) else {
        return shared.drop_packet(DropReason::NoRoute);
    };
    let len = padded_len(n, shared.mtu.load(Ordering::Relaxed));
    buf[n..len].fill(0);
    let (result, endpoint) = {
        let mut t = lock(&peer.tunnel);
        let Some(endpoint) = t.endpoint() else {
            drop(t);
            return shared.drop_packet(DropReason::NoEndpoint);
        };
        (t.encapsulate(&buf[..len], out), endpoint)
    };
    match result {
        Encap::Send(m) => shared.send(&snap.sockets, &out[..m], endpoint),
        Encap::Queued => {}
        Encap::Dropped(r) => shared.drop_packet(r),
    }
}

/// Receives on one UDP socket, decrypts, writes to the TUN. Ends when the sockets are
/// closed (rebind) or the device stops.
pub(crate) fn udp_loop(
    shared: Arc<Shared>,
    sockets: Arc<UdpSockets>,
    family: Family,
    queue: usize,
) {
    let (Some(socket), Some(tun)) = (sockets.get(family), shared.tun.queues().get(queue)) else {
        return;
    };
    let name = family.name();
    let _span = tracing::debug_span!("udp", device = shared.tun.name(), family = name).entered();
    let mut view = View::new(&shared);
    let mut ctx = InboundCtx {
        out: vec![0u8; MAX_PACKET],
        outbox: Outbox::default(),
    };
    let mut buf = vec![0u8; MAX_PACKET];
    while !shared.stop.is_set() && !sockets.is_closed() {
        match udp::recv_from(socket, &mut buf) {
            Ok((n, Some(from))) => {
                view.refresh(&shared);
                shared.guarded(|| inbound(&shared, &view.snap, tun, &mut ctx, from, &buf[..n]));
            }
            // A shut-down socket reads as empty with no address.
            Ok((_, None)) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(e) = wait_readable(udp::raw_fd(socket), &shared.stop) {
                    tracing::warn!(error = %e, "poll failed");
                    shared.stop.sleep(Duration::from_millis(10));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // ICMP errors of earlier sends surface here on some kernels: not fatal.
            Err(e) => tracing::debug!(error = %e, "UDP receive error"),
        }
    }
}

struct InboundCtx {
    out: Vec<u8>,
    outbox: Outbox,
}

#[inline]
fn inbound(
    shared: &Shared,
    snap: &Snapshot,
    tun: &TunQueue,
    ctx: &mut InboundCtx,
    from: SocketAddr,
    datagram: &[u8],
) {
    let peer = match find_peer(shared, snap, from, datagram) {
        Ok(p) => p,
        Err(r) => return shared.drop_packet(r),
    };
    ctx.outbox.clear();
    let decap = lock(&peer.tunnel).decapsulate(from, datagram, &mut ctx.out, &mut ctx.outbox);
    for reply in ctx.outbox.iter() {
        shared.send(&snap.sockets, reply, from);
    }
    match decap {
        Decap::ToTun { packet, source } => {
            // Cryptokey routing: the inner source must be one this peer may use.
            let allowed = snap
                .routes
                .lookup(source)
                .is_some_and(|p| Arc::ptr_eq(p, peer));
            if !allowed {
                return shared.drop_packet(DropReason::BadSource);
            }
            if let Err(e) = tun.write(packet) {
                if is_gone(&e) {
                    shared.close(CloseReason::InterfaceRemoved);
                }
                shared.drop_packet(DropReason::TunWriteFailed);
            }
        }
        Decap::Nothing => {
            if matches!(datagram.first(), Some(&MSG_INIT) | Some(&MSG_RESPONSE)) {
                tracing::debug!(peer = %peer.key.short(), %from, "handshake message accepted");
            }
        }
        Decap::Dropped(r) => {
            tracing::trace!(peer = %peer.key.short(), %from, reason = r.as_str(), "datagram dropped");
            shared.drops.count(r);
        }
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// Finds the peer a datagram is for: by receiver index (its upper 24 bits are the peer's
/// index), or for an initiation by the initiator's static key. Handshake messages are
/// checked against the shared rate limiter first; under load that answers with a cookie.
fn find_peer<'s>(
    shared: &Shared,
    snap: &'s Snapshot,
    from: SocketAddr,
    datagram: &[u8],
) -> Result<&'s Arc<Peer>, DropReason> {
    let by_index = |at: usize| {
        snap.by_index
            .get(&(le32(datagram, at) >> 8))
            .ok_or(DropReason::UnknownPeer)
    };
    match (datagram.first().copied(), datagram.len()) {
        (Some(MSG_DATA), n) if n >= DATA_OVERHEAD => by_index(4),
        (Some(MSG_COOKIE), COOKIE_LEN) => by_index(4),
        (Some(MSG_RESPONSE), RESPONSE_LEN) => {
            verify_handshake(shared, snap, from, datagram)?;
            by_index(8)
        }
        (Some(MSG_INIT), INIT_LEN) => {
            let (id, packet) = verify_handshake(shared, snap, from, datagram)?;
            let Packet::HandshakeInit(init) = packet else {
                return Err(DropReason::Malformed);
            };
            let half =
                parse_handshake_anon(&id.secret, &id.public, &init).map_err(DropReason::from)?;
            snap.by_key
                .get(&PublicKey::from_bytes(half.peer_static_public))
                .ok_or(DropReason::UnknownPeer)
        }
        _ => Err(DropReason::Malformed),
    }
}

/// Checks a handshake message's MAC and the device-wide rate limit.
fn verify_handshake<'s, 'd>(
    shared: &Shared,
    snap: &'s Snapshot,
    from: SocketAddr,
    datagram: &'d [u8],
) -> Result<(&'s Arc<Identity>, Packet<'d>), DropReason> {
    let id = snap.identity.as_ref().ok_or(DropReason::NoKey)?;
    let mut cookie = [0u8; COOKIE_LEN];
    match id
        .rate_limiter
        .verify_packet(Some(from.ip()), datagram, &mut cookie)
    {
        Ok(packet) => Ok((id, packet)),
        Err(TunnResult::WriteToNetwork(reply)) => {
            shared.send(&snap.sockets, reply, from);
            Err(DropReason::UnderLoad)
        }
        Err(TunnResult::Err(e)) => Err(e.into()),
        Err(_) => Err(DropReason::Malformed),
    }
}

/// Runs every peer's timers each [`TICK`], resets the handshake rate limit, refreshes the
/// MTU and notices a deleted interface.
pub(crate) fn timer_loop(shared: Arc<Shared>) {
    let _span = tracing::debug_span!("timers", device = shared.tun.name()).entered();
    let mut view = View::new(&shared);
    let mut outbox = Outbox::default();
    let mut last_slow = Instant::now();
    while !shared.stop.sleep(TICK) {
        view.refresh(&shared);
        let now = Instant::now();
        if let Some(id) = &view.snap.identity {
            id.rate_limiter.reset_count();
        }
        for peer in view.snap.by_key.values() {
            outbox.clear();
            let mut endpoint = None;
            shared.guarded(|| {
                let mut t = lock(&peer.tunnel);
                t.tick(now, &mut outbox);
                endpoint = t.endpoint();
            });
            for datagram in outbox.iter() {
                match endpoint {
                    Some(ep) => shared.send(&view.snap.sockets, datagram, ep),
                    None => shared.drop_packet(DropReason::NoEndpoint),
                }
            }
        }
        if now.duration_since(last_slow) >= Duration::from_secs(1) {
            last_slow = now;
            if let Ok(mtu) = shared.tun.mtu() {
                shared.mtu.store(mtu as usize, Ordering::Relaxed);
            }
            if !shared.tun.exists() {
                shared.close(CloseReason::InterfaceRemoved);
            }
        }
    }
}
