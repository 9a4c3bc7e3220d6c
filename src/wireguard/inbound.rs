//! UDP → decrypt → TUN: the inbound packet loop, one thread per UDP socket. Adapter.
//!
//! One `recvmmsg` takes whatever is queued (each message possibly a UDP GRO run of
//! datagrams from one sender); every datagram is decrypted into an arena, with room for
//! a virtio_net_hdr in front; then, with TUN offloads, consecutive TCP segments of a
//! flow are coalesced ([`Coalescer`]) and each run is written with one `writev`. Without
//! them every packet is one `write`. The arena is written out whenever it fills and at
//! the end of every receive, so nothing waits for more traffic.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::dataplane::{CloseReason, Shared, Snapshot, View, find_peer};
use super::drops::DropReason;
use super::gro::{Coalescer, MAX_SEGMENTS, Slot};
use super::mmsg::RecvBatch;
use super::supervisor::ThreadKind;
use super::sys::{lock, wait_readable};
use super::tun::{TunQueue, is_gone};
use super::tunnel::{Decap, INIT_LEN, MSG_INIT, MSG_RESPONSE, Outbox};
use super::udp::{self, Family, UdpSockets};
use super::vnet::VNET_HDR_LEN;

/// Messages per `recvmmsg`; each may be a GRO run of up to 64 KiB.
const RECV_MESSAGES: usize = 32;
/// Decrypted bytes held before writing to the TUN.
const ARENA: usize = 1 << 20;
/// The arena room one more datagram may need: the largest plaintext (a datagram is at
/// most 64 KiB), its header room, and what a handshake needs.
const DATAGRAM_ROOM: usize = 65536 + VNET_HDR_LEN + INIT_LEN;

struct Inbound {
    arena: Vec<u8>,
    used: usize,
    /// Packets in the arena, when the TUN has no offloads.
    plain: Vec<Slot>,
    gro: Coalescer,
    coalesce: bool,
    outbox: Outbox,
}

/// Receives on one UDP socket, decrypts, writes to the TUN. Ends when the sockets are
/// closed (rebind) or the device stops.
pub(crate) fn udp_loop(shared: &Shared, sockets: &UdpSockets, family: Family, queue: usize) {
    let (Some(socket), Some(tun)) = (sockets.get(family), shared.tun.queues().get(queue)) else {
        return;
    };
    let fd = udp::raw_fd(socket);
    let name = family.name();
    let _span = tracing::debug_span!("udp", device = shared.tun.name(), family = name).entered();
    let kind = ThreadKind::from(family);
    let mut view = View::new(shared);
    let mut rx = RecvBatch::new(RECV_MESSAGES);
    let mut ib = Inbound {
        arena: vec![0u8; ARENA + DATAGRAM_ROOM],
        used: 0,
        plain: Vec::new(),
        gro: Coalescer::default(),
        coalesce: shared.tun.vnet_hdr(),
        outbox: Outbox::default(),
    };
    while !shared.stop.is_set() && !sockets.is_closed() {
        shared.threads.check_fault(kind);
        match rx.recv(fd) {
            Ok(n) => {
                view.refresh(shared);
                let snap = Arc::clone(&view.snap);
                for i in 0..n {
                    let Some(m) = rx.get(i) else { break };
                    // A shut-down socket reads as empty with no address.
                    let Some(from) = m.from else { continue };
                    if m.truncated {
                        shared.drop_packet(DropReason::TooLarge);
                        continue;
                    }
                    // An empty datagram is still one (and dropped as malformed).
                    let size = if m.segment == 0 {
                        m.data.len()
                    } else {
                        m.segment
                    };
                    let mut chunks = m.data.chunks(size.max(1));
                    let empty: &[u8] = &[];
                    let first = chunks.next().unwrap_or(empty);
                    for datagram in std::iter::once(first).chain(chunks) {
                        shared.guarded(|| ib.datagram(shared, &snap, tun, from, datagram));
                    }
                }
                ib.flush(shared, tun);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(e) = wait_readable(fd, &shared.stop) {
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

impl Inbound {
    /// Decrypts one datagram into the arena (writing the arena out first if full).
    fn datagram(
        &mut self,
        shared: &Shared,
        snap: &Snapshot,
        tun: &TunQueue,
        from: SocketAddr,
        datagram: &[u8],
    ) {
        let peer = match find_peer(shared, snap, from, datagram) {
            Ok(p) => p,
            Err(r) => return shared.drop_packet(r),
        };
        if self.arena.len() - self.used < DATAGRAM_ROOM {
            self.flush(shared, tun);
        }
        self.outbox.clear();
        let at = self.used + VNET_HDR_LEN;
        let out = &mut self.arena[at..];
        let base = out.as_ptr() as usize;
        let decap = lock(&peer.tunnel).decapsulate(from, datagram, out, &mut self.outbox);
        for reply in self.outbox.iter() {
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
                // boringtun decrypts at the start of `out`; measured, not assumed.
                let slot = Slot {
                    start: at + (packet.as_ptr() as usize - base),
                    len: packet.len(),
                };
                self.used = slot.start + slot.len;
                if self.coalesce {
                    self.gro.push(&self.arena, slot);
                } else {
                    self.plain.push(slot);
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

    /// Writes every packet in the arena to the TUN, coalesced when it can be.
    fn flush(&mut self, shared: &Shared, tun: &TunQueue) {
        if self.coalesce {
            self.gro.finish(&mut self.arena);
            let mut parts = [IoSlice::new(&[]); MAX_SEGMENTS + 1];
            for (head, payloads) in self.gro.writes() {
                let mut k = 0;
                let with_header = head.start.checked_sub(VNET_HDR_LEN);
                if let Some(h) = with_header.and_then(|s| self.arena.get(s..head.start + head.len))
                {
                    parts[0] = IoSlice::new(h);
                    k = 1;
                }
                for p in payloads {
                    if let (Some(b), Some(slot)) =
                        (self.arena.get(p.start..p.start + p.len), parts.get_mut(k))
                    {
                        *slot = IoSlice::new(b);
                        k += 1;
                    }
                }
                write_result(shared, tun.write_vectored(&parts[..k]));
            }
            self.gro.clear();
        } else {
            for slot in self.plain.drain(..) {
                if let Some(p) = self.arena.get(slot.start..slot.start + slot.len) {
                    write_result(shared, tun.write(p));
                }
            }
        }
        self.used = 0;
    }
}

fn write_result(shared: &Shared, r: io::Result<usize>) {
    if let Err(e) = r {
        if is_gone(&e) {
            shared.close(CloseReason::InterfaceRemoved);
        }
        shared.drop_packet(DropReason::TunWriteFailed);
    }
}
