//! What the packet loops share: the device state, the peer snapshot, peer lookup for
//! inbound datagrams, and the timer loop. Adapter over the pure tunnel and route table.
//! The loops themselves are `outbound` (TUN queue → encrypt → UDP) and `inbound`
//! (UDP → decrypt → TUN).
//!
//! Each loop runs packets to completion on its own thread with its own buffers (nothing
//! is allocated per packet). Loops read the peer table from an immutable [`Snapshot`]
//! they re-fetch only when the generation counter moved, so the only shared write per
//! packet is the peer's tunnel mutex, held for the crypto and never across a syscall.
//! Processing of each packet (or super-packet) is wrapped in `catch_unwind`: a panic
//! drops it, counts it, and the loop goes on; a loop that dies anyway is restarted
//! (`supervisor`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, TunnResult};

use super::allowed_ips::{AllowedIps, IntMap};
use super::drops::{DropCounters, DropReason};
use super::early::EarlyInits;
use super::supervisor::{ThreadHealth, ThreadKind};
use super::sys::{Stop, lock};
use super::tun::Tun;
use super::tunnel::{
    COOKIE_LEN, DATA_OVERHEAD, INIT_LEN, Identity, MSG_COOKIE, MSG_DATA, MSG_INIT, MSG_RESPONSE,
    Outbox, RESPONSE_LEN, Tunnel,
};
use super::udp::UdpSockets;
use crate::key::PublicKey;

/// How often peers' timers run (boringtun wants 100-250 ms).
pub(crate) const TICK: Duration = Duration::from_millis(100);

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
    /// Restarts of the loops, and whether they all run.
    pub threads: ThreadHealth,
    pub stop: Stop,
    /// The interface MTU, refreshed every second, for padding.
    pub mtu: AtomicUsize,
    /// Initiations from keys not (yet) peers, for a peer added a moment later.
    pub early_inits: Mutex<EarlyInits>,
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
            threads: ThreadHealth::default(),
            stop,
            mtu: AtomicUsize::new(mtu),
            early_inits: Mutex::new(EarlyInits::default()),
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
    pub(crate) fn drop_packet(&self, reason: DropReason) {
        self.drops.count(reason);
        tracing::trace!(reason = reason.as_str(), "packet dropped");
    }

    #[inline]
    pub(crate) fn send(&self, sockets: &UdpSockets, datagram: &[u8], to: SocketAddr) {
        if let Err(e) = sockets.send_to(datagram, to) {
            tracing::trace!(%to, error = %e, "send failed");
            self.drops.count(DropReason::SendFailed);
        }
    }

    /// Runs `f` for one packet; a panic drops the packet instead of the thread.
    #[inline]
    pub(crate) fn guarded(&self, f: impl FnOnce()) {
        if catch_unwind(AssertUnwindSafe(f)).is_err() {
            self.drops.count(DropReason::Panic);
        }
    }
}

/// A loop's cached snapshot, re-fetched when the generation moved.
pub(crate) struct View {
    pub snap: Arc<Snapshot>,
    generation: u64,
}

impl View {
    pub(crate) fn new(shared: &Shared) -> View {
        let generation = shared.generation.load(Ordering::Acquire);
        View {
            snap: shared.load(),
            generation,
        }
    }

    #[inline]
    pub(crate) fn refresh(&mut self, shared: &Shared) {
        let g = shared.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.snap = shared.load();
            self.generation = g;
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
pub(crate) fn find_peer<'s>(
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
            let key = PublicKey::from_bytes(half.peer_static_public);
            snap.by_key.get(&key).ok_or_else(|| {
                lock(&shared.early_inits).keep(Instant::now(), key, from, datagram);
                DropReason::UnknownPeer
            })
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
pub(crate) fn timer_loop(shared: &Shared) {
    let _span = tracing::debug_span!("timers", device = shared.tun.name()).entered();
    let mut view = View::new(shared);
    let mut outbox = Outbox::default();
    let mut last_slow = Instant::now();
    while !shared.stop.sleep(TICK) {
        shared.threads.check_fault(ThreadKind::Timers);
        view.refresh(shared);
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
