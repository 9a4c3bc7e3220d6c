//! Encrypted datagrams waiting to go out, and how they are grouped into `sendmmsg`
//! messages. Pure.
//!
//! Datagrams are encrypted straight into one buffer, back to back, so consecutive
//! datagrams to the same endpoint are already laid out as a UDP GSO message wants them:
//! equal-sized segments, the last one possibly shorter. [`plan`] cuts the batch into
//! messages under the kernel's limits (64 segments, 64 KiB of payload); each message is
//! one `sendmmsg` entry, with a `UDP_SEGMENT` size when it holds several datagrams.

use std::net::SocketAddr;
use std::ops::Range;

/// `UDP_MAX_SEGMENTS` of older kernels (newer ones allow 128).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// The most UDP payload one IPv4 datagram (GSO or not) may carry: 65535 minus the IPv4
/// and UDP headers.
const MAX_V4_PAYLOAD: usize = 65535 - 20 - 8;
/// For IPv6 the payload length excludes the IPv6 header.
const MAX_V6_PAYLOAD: usize = 65535 - 8;

/// One datagram in the batch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    pub start: usize,
    pub len: usize,
    pub to: SocketAddr,
}

/// One `sendmmsg` entry: datagrams `datagrams` (contiguous in the buffer) to `to`, as
/// segments of `segment` bytes when there are several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub datagrams: Range<usize>,
    pub bytes: Range<usize>,
    pub segment: usize,
    pub to: SocketAddr,
}

impl Message {
    pub fn count(&self) -> usize {
        self.datagrams.len()
    }
}

/// A buffer of datagrams appended back to back.
#[derive(Debug)]
pub struct TxBatch {
    buf: Vec<u8>,
    used: usize,
    datagrams: Vec<Datagram>,
}

impl TxBatch {
    /// A batch holding `capacity` bytes.
    pub fn new(capacity: usize) -> TxBatch {
        TxBatch {
            buf: vec![0; capacity],
            used: 0,
            datagrams: Vec::new(),
        }
    }

    /// Free bytes at the end.
    pub fn room(&self) -> usize {
        self.buf.len() - self.used
    }

    /// The free space, where the next datagram is written.
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.buf[self.used..]
    }

    /// Records the `len` bytes just written at the start of [`TxBatch::space`] as a
    /// datagram to `to`.
    pub fn commit(&mut self, len: usize, to: SocketAddr) {
        let len = len.min(self.room());
        self.datagrams.push(Datagram {
            start: self.used,
            len,
            to,
        });
        self.used += len;
    }

    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    pub fn datagrams(&self) -> &[Datagram] {
        &self.datagrams
    }

    pub fn bytes(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    pub fn clear(&mut self) {
        self.used = 0;
        self.datagrams.clear();
    }
}

/// Groups `datagrams` into messages, IPv4 ones into `out[0]` and IPv6 ones into
/// `out[1]` (they go out on different sockets), each in batch order. Where `gso` says so
/// for the family, runs to the same endpoint of equal size (the last one may be shorter)
/// become one message within the kernel's limits; otherwise every datagram is one.
/// Datagrams must be contiguous in order (as [`TxBatch`] lays them out).
pub fn plan(datagrams: &[Datagram], gso: [bool; 2], out: &mut [Vec<Message>; 2]) {
    out[0].clear();
    out[1].clear();
    let mut i = 0;
    while i < datagrams.len() {
        let first = datagrams[i];
        let (family, max_payload) = if first.to.is_ipv4() {
            (0, MAX_V4_PAYLOAD)
        } else {
            (1, MAX_V6_PAYLOAD)
        };
        let mut end = i + 1;
        let mut bytes = first.len;
        if gso[family] {
            while end < datagrams.len() && end - i < MAX_GSO_SEGMENTS {
                let d = datagrams[end];
                let joins = d.to == first.to
                    && d.len <= first.len
                    && d.start == datagrams[end - 1].start + datagrams[end - 1].len
                    && bytes + d.len <= max_payload;
                if !joins {
                    break;
                }
                bytes += d.len;
                end += 1;
                if d.len < first.len {
                    break;
                }
            }
        }
        out[family].push(Message {
            datagrams: i..end,
            bytes: first.start..first.start + bytes,
            segment: if end - i > 1 { first.len } else { 0 },
            to: first.to,
        });
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(specs: &[(usize, &str)]) -> Vec<Datagram> {
        let mut start = 0;
        specs
            .iter()
            .map(|(len, to)| {
                let d = Datagram {
                    start,
                    len: *len,
                    to: to.parse().expect("address"),
                };
                start += len;
                d
            })
            .collect()
    }

    /// (first datagram, count, segment size) of each message, IPv4 then IPv6.
    fn shape(datagrams: &[Datagram], gso: bool) -> Vec<(usize, usize, usize)> {
        let mut out = [Vec::new(), Vec::new()];
        plan(datagrams, [gso, gso], &mut out);
        for (family, messages) in out.iter().enumerate() {
            for m in messages {
                let want: usize = datagrams[m.datagrams.clone()].iter().map(|d| d.len).sum();
                assert_eq!(m.bytes.len(), want);
                assert_eq!(m.to.is_ipv6(), family == 1);
            }
        }
        out.iter()
            .flatten()
            .map(|m| (m.datagrams.start, m.count(), m.segment))
            .collect()
    }

    const A: &str = "192.0.2.1:51820";
    const B: &str = "192.0.2.2:51820";
    const V6: &str = "[2001:db8::1]:51820";

    /// (name, datagrams as (length, endpoint), messages as (first, count, segment size))
    type Case = (
        &'static str,
        Vec<(usize, &'static str)>,
        Vec<(usize, usize, usize)>,
    );

    #[test]
    fn messages_follow_runs_of_equal_size_to_one_endpoint() {
        let cases: Vec<Case> = vec![
            ("empty", vec![], vec![]),
            ("one", vec![(100, A)], vec![(0, 1, 0)]),
            ("equal run", vec![(1452, A); 3], vec![(0, 3, 1452)]),
            (
                "shorter last closes the message",
                vec![(1452, A), (1452, A), (600, A), (1452, A)],
                vec![(0, 3, 1452), (3, 1, 0)],
            ),
            (
                "a larger one starts a new message",
                vec![(600, A), (1452, A), (1452, A)],
                vec![(0, 1, 0), (1, 2, 1452)],
            ),
            (
                "endpoints split runs",
                vec![(1452, A), (1452, B), (1452, B), (1452, A)],
                vec![(0, 1, 0), (1, 2, 1452), (3, 1, 0)],
            ),
            (
                "64 segments at most",
                vec![(100, A); 70],
                vec![(0, 64, 100), (64, 6, 100)],
            ),
            (
                "64 KiB at most (IPv4)",
                vec![(1452, A); 50],
                vec![(0, 45, 1452), (45, 5, 1452)],
            ),
            (
                "IPv6 allows a little more",
                vec![(1452, V6); 50],
                vec![(0, 45, 1452), (45, 5, 1452)],
            ),
            (
                "IPv6 limit",
                vec![(8000, V6); 9],
                vec![(0, 8, 8000), (8, 1, 0)],
            ),
        ];
        for (name, specs, want) in cases {
            assert_eq!(shape(&batch(&specs), true), want, "{name}");
        }
    }

    #[test]
    fn without_gso_every_datagram_is_a_message() {
        let d = batch(&[(1452, A), (1452, A), (100, A)]);
        assert_eq!(shape(&d, false), vec![(0, 1, 0), (1, 1, 0), (2, 1, 0)]);
    }

    #[test]
    fn families_are_planned_apart_and_gso_is_per_family() {
        let d = batch(&[(100, A), (100, V6), (100, V6), (100, A), (100, A)]);
        let mut out = [Vec::new(), Vec::new()];
        plan(&d, [true, false], &mut out);
        let v4: Vec<_> = out[0]
            .iter()
            .map(|m| (m.datagrams.clone(), m.segment))
            .collect();
        let v6: Vec<_> = out[1]
            .iter()
            .map(|m| (m.datagrams.clone(), m.segment))
            .collect();
        assert_eq!(v4, vec![(0..1, 0), (3..5, 100)]);
        assert_eq!(v6, vec![(1..2, 0), (2..3, 0)]);
    }

    #[test]
    fn the_batch_lays_datagrams_back_to_back() {
        let mut b = TxBatch::new(1000);
        b.space()[..3].copy_from_slice(b"abc");
        b.commit(3, A.parse().expect("address"));
        b.space()[..2].copy_from_slice(b"de");
        b.commit(2, A.parse().expect("address"));
        assert_eq!(b.len(), 2);
        assert_eq!(b.room(), 995);
        let mut out = [Vec::new(), Vec::new()];
        plan(b.datagrams(), [true, false], &mut out);
        assert_eq!(b.bytes(out[0][0].bytes.clone()), b"abcde");
        assert_eq!(out[0][0].segment, 3);
        // A commit longer than the room is clamped, never out of bounds.
        b.commit(5000, A.parse().expect("address"));
        assert_eq!(b.room(), 0);
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.room(), 1000);
    }
}
