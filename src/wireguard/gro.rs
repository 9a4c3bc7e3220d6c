//! The inbound half of the TUN offloads: consecutive decrypted TCP segments of one flow
//! are coalesced into one super-packet, written to the TUN once with a virtio_net_hdr
//! (GSO TCPV4/TCPV6, partial checksum), so the kernel's stack handles 64 KiB at a time
//! instead of 1.4. Pure.
//!
//! Packets stay where they were decrypted (an arena, with [`VNET_HDR_LEN`] bytes free in
//! front of each); coalescing is bookkeeping: the first packet of a run is the head, the
//! payloads of the segments appended to it are listed, and [`Coalescer::finish`] patches
//! the head's headers (lengths, IPv4 checksum, PSH, the pseudo-header sum in the TCP
//! checksum field) and its virtio_net_hdr. The writer then sends the head and the
//! payloads in one `writev`, with no copy here.
//!
//! Rules (the kernel's GRO rules, as wireguard-go applies them): IPv4 without options
//! and unfragmented, or IPv6 without extension headers; flags ACK or ACK|PSH with a
//! payload; the same addresses, ports, ACK number, TCP options, IPv4 TOS/TTL/DF or IPv6
//! first word and hop limit; the next sequence number exactly; no segment larger than
//! the first, nothing after a shorter one or after PSH; at most 64 segments and 64 KiB.
//! A packet of a flow that cannot be appended ends that flow's run, so a flow's packets
//! are written in the order they arrived. Checksums are not verified: the packets were
//! just authenticated by WireGuard, and the kernel's WireGuard likewise marks them
//! CHECKSUM_UNNECESSARY.

use super::checksum;
use super::vnet::{F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, VNET_HDR_LEN, VnetHdr};

const PROTO_TCP: u8 = 6;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
/// Segments per super-packet (so a write needs at most 65 iovecs).
pub const MAX_SEGMENTS: usize = 64;
/// The IPv4 total length (and IPv6 payload length) limit.
const MAX_LEN: usize = 65535;
/// Runs kept open at once; more flows in one batch close the oldest.
const MAX_OPEN: usize = 32;
const NONE: u32 = u32::MAX;

/// A decrypted packet in the arena: `start..start + len`, with [`VNET_HDR_LEN`] free
/// bytes before `start` for its virtio_net_hdr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub start: usize,
    pub len: usize,
}

/// One TUN write: a head packet and the payloads appended to it.
#[derive(Debug, Clone, Copy)]
struct Write {
    head: Slot,
    /// First and last appended payload in `segs` (NONE: a plain packet).
    first: u32,
    last: u32,
    merged: u16,
    gso_size: u16,
    l4: u8,
    l4_len: u8,
    v6: bool,
    /// Total IP length with everything appended.
    total: usize,
    psh: bool,
    /// A segment shorter than `gso_size` was appended: nothing may follow it.
    short: bool,
}

#[derive(Debug, Clone, Copy)]
struct Seg {
    start: usize,
    len: usize,
    next: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    addrs: [u8; 32],
    ports: u32,
    v6: bool,
}

/// A run still accepting segments.
#[derive(Debug, Clone, Copy)]
struct Open {
    key: FlowKey,
    write: u32,
    next_seq: u32,
    ack: u32,
}

/// A parsed TCP/IP header.
#[derive(Debug, Clone, Copy)]
struct Tcp {
    key: FlowKey,
    v6: bool,
    l4: usize,
    l4_len: usize,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: usize,
    /// May start or extend a run (see the rules).
    coalescable: bool,
}

/// Coalesces one batch of packets; reusable (no allocation once warm).
#[derive(Debug, Default)]
pub struct Coalescer {
    writes: Vec<Write>,
    segs: Vec<Seg>,
    open: Vec<Open>,
}

impl Coalescer {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Forgets the batch (after it was written).
    pub fn clear(&mut self) {
        self.writes.clear();
        self.segs.clear();
        self.open.clear();
    }

    /// Adds the packet at `slot` of `arena`, appending it to an open run if it can.
    pub fn push(&mut self, arena: &[u8], slot: Slot) {
        let Some(packet) = arena.get(slot.start..slot.start + slot.len) else {
            return self.plain(slot);
        };
        let Some(t) = parse(packet) else {
            return self.plain(slot);
        };
        if let Some(i) = self.open.iter().position(|o| o.key == t.key) {
            if t.coalescable && self.can_append(arena, &self.open[i], &t, packet) {
                return self.append(i, slot, &t);
            }
            // Anything later of this flow must not overtake this packet.
            self.open.remove(i);
        }
        if !t.coalescable {
            return self.plain(slot);
        }
        if self.open.len() == MAX_OPEN {
            self.open.remove(0);
        }
        self.open.push(Open {
            key: t.key,
            write: self.writes.len() as u32,
            next_seq: t.seq.wrapping_add(t.payload as u32),
            ack: t.ack,
        });
        self.writes.push(Write {
            head: slot,
            first: NONE,
            last: NONE,
            merged: 0,
            gso_size: t.payload as u16,
            l4: t.l4 as u8,
            l4_len: t.l4_len as u8,
            v6: t.v6,
            total: slot.len,
            psh: t.flags & TCP_PSH != 0,
            short: false,
        });
    }

    fn plain(&mut self, slot: Slot) {
        self.writes.push(Write {
            head: slot,
            first: NONE,
            last: NONE,
            merged: 0,
            gso_size: 0,
            l4: 0,
            l4_len: 0,
            v6: false,
            total: slot.len,
            psh: false,
            short: false,
        });
    }

    fn can_append(&self, arena: &[u8], open: &Open, t: &Tcp, packet: &[u8]) -> bool {
        let w = &self.writes[open.write as usize];
        let Some(head) = arena.get(w.head.start..w.head.start + w.head.len) else {
            return false;
        };
        let (l4, l4_len) = (usize::from(w.l4), usize::from(w.l4_len));
        t.seq == open.next_seq
            && t.ack == open.ack
            && !w.psh
            && !w.short
            && t.l4 == l4
            && t.l4_len == l4_len
            && t.payload <= usize::from(w.gso_size)
            && usize::from(w.merged) + 1 < MAX_SEGMENTS
            && w.total + t.payload <= MAX_LEN
            && ip_headers_match(head, packet, w.v6)
            && head[l4 + 20..l4 + l4_len] == packet[l4 + 20..l4 + l4_len]
    }

    fn append(&mut self, open: usize, slot: Slot, t: &Tcp) {
        let seg = self.segs.len() as u32;
        self.segs.push(Seg {
            start: slot.start + t.l4 + t.l4_len,
            len: t.payload,
            next: NONE,
        });
        let o = &mut self.open[open];
        o.next_seq = o.next_seq.wrapping_add(t.payload as u32);
        let w = &mut self.writes[o.write as usize];
        match w.last {
            NONE => w.first = seg,
            last => self.segs[last as usize].next = seg,
        }
        w.last = seg;
        w.merged += 1;
        w.total += t.payload;
        w.psh |= t.flags & TCP_PSH != 0;
        w.short |= t.payload < usize::from(w.gso_size);
    }

    /// Patches the heads of coalesced runs and writes every packet's virtio_net_hdr into
    /// the bytes before it. Call once, after the last `push` of the batch.
    pub fn finish(&mut self, arena: &mut [u8]) {
        for w in &self.writes {
            let Some(hdr_at) = w.head.start.checked_sub(VNET_HDR_LEN) else {
                continue;
            };
            let hdr = match arena.get_mut(w.head.start..w.head.start + w.head.len) {
                Some(head) if w.merged > 0 => patch_head(head, w),
                _ => VnetHdr::default(),
            };
            if let Some(b) = arena.get_mut(hdr_at..) {
                hdr.encode(b);
            }
        }
    }

    /// The writes of the batch, in order: each is the head (with its virtio_net_hdr in
    /// the [`VNET_HDR_LEN`] bytes before it) and the payloads to append.
    pub fn writes(&self) -> impl Iterator<Item = (Slot, Payloads<'_>)> {
        self.writes.iter().map(|w| {
            (
                w.head,
                Payloads {
                    segs: &self.segs,
                    next: w.first,
                },
            )
        })
    }
}

/// The payloads appended to one head, in order, as arena ranges.
#[derive(Debug, Clone)]
pub struct Payloads<'c> {
    segs: &'c [Seg],
    next: u32,
}

impl Iterator for Payloads<'_> {
    type Item = Slot;

    fn next(&mut self) -> Option<Slot> {
        let s = self.segs.get(self.next as usize)?;
        self.next = s.next;
        Some(Slot {
            start: s.start,
            len: s.len,
        })
    }
}

/// Makes the head describe the whole run; returns its virtio_net_hdr.
fn patch_head(head: &mut [u8], w: &Write) -> VnetHdr {
    let (l4, l4_len) = (usize::from(w.l4), usize::from(w.l4_len));
    let (addrs, gso_type) = if w.v6 {
        head[4..6].copy_from_slice(&((w.total - 40) as u16).to_be_bytes());
        (8..40, GSO_TCPV6)
    } else {
        head[2..4].copy_from_slice(&(w.total as u16).to_be_bytes());
        head[10..12].fill(0);
        let c = checksum::checksum(&head[..20]);
        head[10..12].copy_from_slice(&c.to_be_bytes());
        (12..20, GSO_TCPV4)
    };
    if w.psh {
        head[l4 + 13] |= TCP_PSH;
    }
    let half = addrs.len() / 2;
    let (src, dst) = head[addrs].split_at(half);
    let pseudo = checksum::pseudo_header(src, dst, PROTO_TCP).add_u16((w.total - l4) as u16);
    let partial = pseudo.fold();
    head[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type,
        hdr_len: (l4 + l4_len) as u16,
        gso_size: w.gso_size,
        csum_start: l4 as u16,
        csum_offset: 16,
    }
}

fn ip_headers_match(a: &[u8], b: &[u8], v6: bool) -> bool {
    if v6 {
        a[..4] == b[..4] && a[7] == b[7]
    } else {
        a[1] == b[1] && a[6] >> 5 == b[6] >> 5 && a[8] == b[8]
    }
}

/// Parses an IPv4/IPv6 TCP packet; `None` for anything else (or anything malformed).
fn parse(p: &[u8]) -> Option<Tcp> {
    let version = p.first()? >> 4;
    let mut addrs = [0u8; 32];
    let (v6, l4, options) = match version {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let fragment = u16::from_be_bytes([*p.get(6)?, *p.get(7)?]) & 0x3fff != 0;
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            if p.len() < 20 || ihl < 20 || p[9] != PROTO_TCP || fragment || total != p.len() {
                return None;
            }
            addrs[..8].copy_from_slice(&p[12..20]);
            (false, ihl, ihl != 20)
        }
        6 => {
            if p.len() < 40 || p[6] != PROTO_TCP {
                return None;
            }
            if usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 != p.len() {
                return None;
            }
            addrs.copy_from_slice(&p[8..40]);
            (true, 40, false)
        }
        _ => return None,
    };
    let tcp = p.get(l4..l4 + 20)?;
    let l4_len = usize::from(tcp[12] >> 4) * 4;
    if l4_len < 20 || l4 + l4_len > p.len() {
        return None;
    }
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let flags = tcp[13];
    let payload = p.len() - l4 - l4_len;
    Some(Tcp {
        key: FlowKey {
            addrs,
            ports: be32(&tcp[0..4]),
            v6,
        },
        v6,
        l4,
        l4_len,
        seq: be32(&tcp[4..8]),
        ack: be32(&tcp[8..12]),
        flags,
        payload,
        coalescable: !options
            && payload > 0
            && payload <= usize::from(u16::MAX)
            && (flags == TCP_ACK || flags == TCP_ACK | TCP_PSH),
    })
}

#[cfg(test)]
#[path = "gro_tests.rs"]
mod tests;
