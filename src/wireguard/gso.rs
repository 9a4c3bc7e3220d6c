//! The outbound half of the TUN offloads: a packet read from the TUN with its
//! virtio_net_hdr becomes the MTU-sized IP packets WireGuard encrypts one by one. Pure.
//!
//! With TSO/USO on, the kernel hands the TUN whole TCP (or UDP GSO) super-packets of up
//! to 64 KiB, one header in front of many segments' worth of payload, and leaves the
//! transport checksum partial. [`Segmenter`] cuts such a packet into segments of
//! `gso_size` payload bytes exactly as the kernel's own GSO would: the IPv4 total length,
//! identification (+1 per segment) and header checksum, the IPv6 payload length, the
//! TCP sequence number (FIN and PSH only on the last segment, CWR only on the first), the
//! UDP length, and a full transport checksum per segment. A packet that is not GSO but
//! has a partial checksum is completed in place by [`complete_checksum`].
//!
//! Input comes from the kernel, but nothing here trusts it: every offset is checked and a
//! packet that does not add up is refused with a [`GsoError`] (the caller counts and
//! drops it).

use super::checksum::{self, Sum};
use super::vnet::{GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VnetHdr};

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Why a packet from the TUN could not be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GsoError {
    #[error("unsupported GSO type {0}")]
    UnsupportedType(u8),
    #[error("GSO size 0")]
    ZeroSize,
    #[error("the IP header does not match the GSO type")]
    BadIpHeader,
    #[error("checksum start or offset outside the packet")]
    BadChecksumOffset,
    #[error("the transport header is truncated or malformed")]
    BadTransportHeader,
}

/// Completes a partial transport checksum (`F_NEEDS_CSUM` without GSO): the field holds
/// the pseudo-header sum; add the rest from `csum_start` on.
pub fn complete_checksum(hdr: &VnetHdr, packet: &mut [u8]) -> Result<(), GsoError> {
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if at + 2 > packet.len() {
        return Err(GsoError::BadChecksumOffset);
    }
    let partial = Sum::default().add_u16(u16::from_be_bytes([packet[at], packet[at + 1]]));
    packet[at..at + 2].fill(0);
    let c = checksum::transport_checksum(partial.plus(checksum::sum(&packet[start..])));
    packet[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Cuts one GSO super-packet into segments; see the module documentation.
#[derive(Debug)]
pub struct Segmenter<'p> {
    packet: &'p [u8],
    v6: bool,
    tcp: bool,
    /// Where the transport header starts (the IP header, and IPv6 extension headers).
    l4: usize,
    /// IP and transport headers: copied in front of every segment.
    hdr_len: usize,
    gso_size: usize,
    /// The pseudo-header sum without the length.
    pseudo: Sum,
    first_seq: u32,
    first_id: u16,
    next: usize,
    index: u32,
}

impl<'p> Segmenter<'p> {
    /// Checks `packet` (the bytes after the virtio_net_hdr) against `hdr`. A header with
    /// `GSO_NONE` yields the packet itself as its only segment.
    pub fn new(hdr: &VnetHdr, packet: &'p [u8]) -> Result<Segmenter<'p>, GsoError> {
        let kind = hdr.gso_kind();
        let version = packet.first().map(|b| b >> 4);
        let (v6, tcp) = match (kind, version) {
            (GSO_NONE, _) => {
                return Ok(Segmenter::whole(packet));
            }
            (GSO_TCPV4, Some(4)) => (false, true),
            (GSO_TCPV6, Some(6)) => (true, true),
            (GSO_UDP_L4, Some(4)) => (false, false),
            (GSO_UDP_L4, Some(6)) => (true, false),
            (GSO_TCPV4 | GSO_TCPV6 | GSO_UDP_L4, _) => return Err(GsoError::BadIpHeader),
            (other, _) => return Err(GsoError::UnsupportedType(other)),
        };
        if hdr.gso_size == 0 {
            return Err(GsoError::ZeroSize);
        }
        let l4 = usize::from(hdr.csum_start);
        let proto = if tcp { PROTO_TCP } else { PROTO_UDP };
        let (addrs, min_l4) = if v6 { (8..40, 40) } else { (12..20, 20) };
        if packet.len() < min_l4 || l4 < min_l4 {
            return Err(GsoError::BadIpHeader);
        }
        if !v6 && (usize::from(packet[0] & 0x0f) * 4 != l4 || packet[9] != proto) {
            return Err(GsoError::BadIpHeader);
        }
        // Without extension headers the next header must be the transport; with them
        // (csum_start past 40) the kernel found the transport for us.
        if v6 && l4 == 40 && packet[6] != proto {
            return Err(GsoError::BadIpHeader);
        }
        let want_offset = if tcp { 16 } else { 6 };
        if usize::from(hdr.csum_offset) != want_offset {
            return Err(GsoError::BadChecksumOffset);
        }
        let l4_len = if tcp {
            let doff = packet.get(l4 + 12).ok_or(GsoError::BadTransportHeader)? >> 4;
            usize::from(doff) * 4
        } else {
            8
        };
        let hdr_len = l4 + l4_len;
        if l4_len < if tcp { 20 } else { 8 } || hdr_len >= packet.len() {
            return Err(GsoError::BadTransportHeader);
        }
        let half = addrs.len() / 2;
        let (src, dst) = packet[addrs].split_at(half);
        let be32 = |at: usize| {
            u32::from_be_bytes([packet[at], packet[at + 1], packet[at + 2], packet[at + 3]])
        };
        Ok(Segmenter {
            packet,
            v6,
            tcp,
            l4,
            hdr_len,
            gso_size: usize::from(hdr.gso_size),
            pseudo: checksum::pseudo_header(src, dst, proto),
            first_seq: if tcp { be32(l4 + 4) } else { 0 },
            first_id: if v6 {
                0
            } else {
                u16::from_be_bytes([packet[4], packet[5]])
            },
            next: hdr_len,
            index: 0,
        })
    }

    /// The packet as its own single segment.
    fn whole(packet: &'p [u8]) -> Segmenter<'p> {
        Segmenter {
            packet,
            v6: false,
            tcp: false,
            l4: 0,
            hdr_len: 0,
            gso_size: packet.len().max(1),
            pseudo: Sum::default(),
            first_seq: 0,
            first_id: 0,
            next: 0,
            index: 0,
        }
    }

    fn is_whole(&self) -> bool {
        self.hdr_len == 0
    }

    /// How many segments remain.
    pub fn remaining(&self) -> usize {
        if self.is_whole() {
            return usize::from(self.next == 0);
        }
        (self.packet.len().saturating_sub(self.next)).div_ceil(self.gso_size)
    }

    /// The largest segment: what `out` of [`Segmenter::next_into`] must hold.
    pub fn max_segment(&self) -> usize {
        if self.is_whole() {
            self.packet.len()
        } else {
            self.hdr_len + self.gso_size
        }
    }

    /// Writes the next segment into `out` and returns its length; `None` when there are
    /// no more, or `out` is shorter than [`Segmenter::max_segment`].
    pub fn next_into(&mut self, out: &mut [u8]) -> Option<usize> {
        if self.is_whole() {
            if self.next != 0 || out.len() < self.packet.len() {
                return None;
            }
            self.next = 1;
            out[..self.packet.len()].copy_from_slice(self.packet);
            return Some(self.packet.len());
        }
        if self.next >= self.packet.len() || out.len() < self.max_segment() {
            return None;
        }
        let end = (self.next + self.gso_size).min(self.packet.len());
        let payload = &self.packet[self.next..end];
        let last = end == self.packet.len();
        let (h, l4) = (self.hdr_len, self.l4);
        let total = h + payload.len();
        out[..h].copy_from_slice(&self.packet[..h]);
        out[h..total].copy_from_slice(payload);
        let i = self.index;
        if self.v6 {
            put16(out, 4, (total - 40) as u16);
        } else {
            put16(out, 2, total as u16);
            put16(out, 4, self.first_id.wrapping_add(i as u16));
            put16(out, 10, 0);
            let c = checksum::checksum(&out[..l4]);
            put16(out, 10, c);
        }
        let l4_len = total - l4;
        let csum_at = if self.tcp {
            let seq = self
                .first_seq
                .wrapping_add(i.wrapping_mul(self.gso_size as u32));
            out[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
            if !last {
                out[l4 + 13] &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                out[l4 + 13] &= !TCP_CWR;
            }
            l4 + 16
        } else {
            put16(out, l4 + 4, l4_len as u16);
            l4 + 6
        };
        put16(out, csum_at, 0);
        let s = self
            .pseudo
            .add_u16(l4_len as u16)
            .plus(checksum::sum(&out[l4..total]));
        put16(out, csum_at, checksum::transport_checksum(s));
        self.next = end;
        self.index += 1;
        Some(total)
    }
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
#[path = "gso_tests.rs"]
mod tests;
