//! TUN → encrypt → UDP: the outbound packet loop, one thread per TUN queue. Adapter.
//!
//! The loop reads packets until the queue is empty or the batch is full, then sends the
//! batch with one `sendmmsg` and waits only if the queue was empty: nothing ever waits
//! for a batch to fill, so a lone ping goes out at once. A super-packet from the TUN
//! (TSO/USO) is cut into MTU-sized segments ([`Segmenter`]), each encrypted straight into
//! the batch buffer, so a 64 KiB TCP write becomes ~45 datagrams sent as one UDP GSO
//! message. A peer's tunnel lock is taken once per run of segments, never across a
//! system call.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::batch::{self, Message, TxBatch};
use super::dataplane::{CloseReason, Peer, Shared, Snapshot, View};
use super::drops::DropReason;
use super::gso::{Segmenter, complete_checksum};
use super::mmsg::SendBatch;
use super::supervisor::ThreadKind;
use super::sys::{lock, wait_readable};
use super::tun::is_gone;
use super::tunnel::{DATA_OVERHEAD, Encap, INIT_LEN, MAX_PACKET, ip_destination, padded_len};
use super::udp::{Family, UdpSockets};
use super::vnet::{GSO_NONE, VNET_HDR_LEN, VnetHdr};

/// The largest packet a TUN read returns (a 64 KiB super-packet), after its header.
const MAX_READ: usize = VNET_HDR_LEN + 65535;
/// Bytes of encrypted datagrams per batch: a few super-packets' worth, in L2 cache.
const BATCH_BYTES: usize = 256 * 1024;
/// Datagrams per batch.
const BATCH_DATAGRAMS: usize = 256;
/// What one more datagram may need in the batch: the largest segment, padding, overhead,
/// or a handshake initiation.
const DATAGRAM_ROOM: usize = MAX_PACKET + 16;

struct Outbound {
    /// One TUN read, with room for padding after the packet.
    read: Vec<u8>,
    /// One segment of a super-packet, with room for padding.
    segment: Vec<u8>,
    batch: Batch,
    vnet_hdr: bool,
}

/// Encrypted datagrams and what sends them.
struct Batch {
    tx: TxBatch,
    plans: [Vec<Message>; 2],
    send: SendBatch,
}

/// Reads one TUN queue, encrypts, sends.
pub(crate) fn tun_loop(shared: &Shared, queue: usize) {
    let Some(q) = shared.tun.queues().get(queue) else {
        return;
    };
    let _span = tracing::debug_span!("tun", device = shared.tun.name(), queue).entered();
    let mut view = View::new(shared);
    let mut ob = Outbound {
        read: vec![0u8; MAX_READ + 32],
        segment: vec![0u8; MAX_PACKET + 32],
        batch: Batch {
            tx: TxBatch::new(BATCH_BYTES + DATAGRAM_ROOM),
            plans: [Vec::new(), Vec::new()],
            send: SendBatch::default(),
        },
        vnet_hdr: shared.tun.vnet_hdr(),
    };
    while !shared.stop.is_set() {
        shared.threads.check_fault(ThreadKind::Tun);
        let mut empty = false;
        while ob.batch.tx.len() < BATCH_DATAGRAMS && ob.batch.tx.room() >= BATCH_BYTES / 2 {
            match q.read(&mut ob.read[..MAX_READ]) {
                Ok(n) => {
                    view.refresh(shared);
                    let snap = Arc::clone(&view.snap);
                    shared.guarded(|| ob.packet(shared, &snap, n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    empty = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    ob.batch.flush(shared, &view.snap.sockets);
                    if !read_error(shared, e) {
                        return;
                    }
                }
            }
        }
        ob.batch.flush(shared, &view.snap.sockets);
        if empty
            && let Err(e) = wait_readable(q.raw_fd(), &shared.stop)
            && !read_error(shared, e)
        {
            return;
        }
    }
}

/// Handles a failed read or wait; false when the loop must end.
fn read_error(shared: &Shared, e: io::Error) -> bool {
    if is_gone(&e) {
        shared.close(CloseReason::InterfaceRemoved);
        return false;
    }
    tracing::warn!(device = shared.tun.name(), error = %e, "TUN read failed");
    !shared.stop.sleep(Duration::from_millis(100))
}

impl Outbound {
    /// Handles the `n` bytes of one TUN read.
    fn packet(&mut self, shared: &Shared, snap: &Snapshot, n: usize) {
        let Outbound {
            read,
            segment,
            batch,
            vnet_hdr,
        } = self;
        let (hdr, start) = if *vnet_hdr {
            match VnetHdr::decode(&read[..n]) {
                Some(h) => (h, VNET_HDR_LEN),
                None => return shared.drop_packet(DropReason::Malformed),
            }
        } else {
            (VnetHdr::default(), 0)
        };
        // Every segment of a super-packet has the same destination: route once.
        let Some(dst) = read.get(start..n).and_then(ip_destination) else {
            return shared.drop_packet(DropReason::Malformed);
        };
        let Some(peer) = snap.routes.lookup(dst) else {
            return shared.drop_packet(DropReason::NoRoute);
        };
        let mtu = shared.mtu.load(Ordering::Relaxed);
        if hdr.gso_kind() == GSO_NONE {
            let packet = &mut read[start..n];
            if hdr.needs_csum() && complete_checksum(&hdr, packet).is_err() {
                return shared.drop_packet(DropReason::Malformed);
            }
            let len = padded_len(n - start, mtu);
            read[n..start + len].fill(0);
            batch.ensure_room(shared, &snap.sockets);
            return encrypt_one(shared, peer, &read[start..start + len], &mut batch.tx);
        }
        let mut segments = match Segmenter::new(&hdr, &read[start..n]) {
            Ok(s) => s,
            Err(e) => {
                tracing::trace!(error = %e, "bad super-packet from the TUN");
                return shared.drop_packet(DropReason::Malformed);
            }
        };
        while segments.remaining() > 0 {
            batch.ensure_room(shared, &snap.sockets);
            let before = segments.remaining();
            let mut t = lock(&peer.tunnel);
            let Some(endpoint) = t.endpoint() else {
                drop(t);
                (0..before).for_each(|_| shared.drop_packet(DropReason::NoEndpoint));
                return;
            };
            // Up to the batch's room, under one lock; the rest after a flush.
            let tx = &mut batch.tx;
            while tx.room() >= DATAGRAM_ROOM && tx.len() < BATCH_DATAGRAMS {
                let Some(len) = segments.next_into(segment) else {
                    break;
                };
                let padded = padded_len(len, mtu);
                segment[len..padded].fill(0);
                match t.encapsulate(&segment[..padded], tx.space()) {
                    Encap::Send(m) => tx.commit(m, endpoint),
                    Encap::Queued => {}
                    Encap::Dropped(r) => shared.drop_packet(r),
                }
            }
            if segments.remaining() == before {
                // No progress (cannot happen with our buffer sizes): never spin.
                return shared.drop_packet(DropReason::TooLarge);
            }
        }
    }
}

impl Batch {
    /// Makes room for one more datagram, sending the batch if needed.
    fn ensure_room(&mut self, shared: &Shared, sockets: &UdpSockets) {
        if self.tx.room() < DATAGRAM_ROOM || self.tx.len() >= BATCH_DATAGRAMS {
            self.flush(shared, sockets);
        }
    }

    /// Sends the batch: per family, one `sendmmsg` (more if the kernel takes fewer).
    fn flush(&mut self, shared: &Shared, sockets: &UdpSockets) {
        if self.tx.is_empty() {
            return;
        }
        let Batch { tx, plans, send } = self;
        let gso = [sockets.gso(Family::V4), sockets.gso(Family::V6)];
        batch::plan(tx.datagrams(), gso, plans);
        for (family, messages) in [Family::V4, Family::V6].into_iter().zip(plans.iter()) {
            if messages.is_empty() {
                continue;
            }
            let Some(fd) = sockets.get(family).map(super::udp::raw_fd) else {
                let count: usize = messages.iter().map(Message::count).sum();
                (0..count).for_each(|_| shared.drop_packet(DropReason::SendFailed));
                continue;
            };
            let mut i = 0;
            while i < messages.len() {
                match send.send(fd, tx, &messages[i..]) {
                    Ok(k) => i += k.max(1),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let sender = Sender {
                            shared,
                            sockets,
                            fd,
                            family,
                        };
                        sender.failed(send, tx, &messages[i], e);
                        i += 1;
                    }
                }
            }
        }
        tx.clear();
    }
}

/// Where a batch is being sent.
struct Sender<'a> {
    shared: &'a Shared,
    sockets: &'a UdpSockets,
    fd: RawFd,
    family: Family,
}

impl Sender<'_> {
    /// The first message of a `sendmmsg` failed with `e`. A GSO message refused with
    /// `EIO` means the route cannot do UDP GSO: stop using it and send the datagrams one
    /// by one. With `EMSGSIZE` (`EINVAL` before Linux 6.x) a segment is larger than the
    /// path MTU to that endpoint: the kernel fragments single datagrams but not GSO runs,
    /// so send these one by one and keep GSO for the rest. Anything else drops the
    /// message's datagrams.
    fn failed(&self, send: &mut SendBatch, tx: &TxBatch, m: &Message, e: io::Error) {
        let errno = e.raw_os_error();
        if m.segment > 0 && matches!(errno, Some(libc::EIO | libc::EMSGSIZE | libc::EINVAL)) {
            if errno == Some(libc::EIO) && self.sockets.disable_gso(self.family) {
                tracing::warn!(
                    device = self.shared.tun.name(),
                    family = self.family.name(),
                    "UDP GSO send failed (EIO): falling back to one datagram per message"
                );
            }
            for d in &tx.datagrams()[m.datagrams.clone()] {
                let one = single(d.start, d.len, d.to);
                if send.send(self.fd, tx, std::slice::from_ref(&one)).is_err() {
                    self.shared.drop_packet(DropReason::SendFailed);
                }
            }
            return;
        }
        tracing::trace!(to = %m.to, error = %e, "send failed");
        (0..m.count()).for_each(|_| self.shared.drop_packet(DropReason::SendFailed));
    }
}

fn single(start: usize, len: usize, to: SocketAddr) -> Message {
    Message {
        datagrams: 0..1,
        bytes: start..start + len,
        segment: 0,
        to,
    }
}

/// Encrypts one (padded) packet to `peer` into the batch.
fn encrypt_one(shared: &Shared, peer: &Peer, packet: &[u8], tx: &mut TxBatch) {
    let mut t = lock(&peer.tunnel);
    let Some(endpoint) = t.endpoint() else {
        drop(t);
        return shared.drop_packet(DropReason::NoEndpoint);
    };
    if tx.room() < (packet.len() + DATA_OVERHEAD).max(INIT_LEN) {
        drop(t);
        return shared.drop_packet(DropReason::TooLarge);
    }
    match t.encapsulate(packet, tx.space()) {
        Encap::Send(m) => tx.commit(m, endpoint),
        Encap::Queued => {}
        Encap::Dropped(r) => shared.drop_packet(r),
    }
}
