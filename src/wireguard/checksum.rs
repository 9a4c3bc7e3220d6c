//! The Internet checksum (RFC 1071) of IP, TCP and UDP headers, fast enough to run over
//! every byte the offload paths move. Pure.
//!
//! Sums are kept unfolded in a `u64` of little-endian 32-bit words, which the compiler
//! vectorizes; the one's-complement sum does not depend on byte order (RFC 1071 §2(B)),
//! so one byte swap at the end gives the big-endian result. Partial sums
//! ([`Sum`]) combine by addition, so a pseudo-header is summed once per packet and
//! reused for every segment.

/// A partial one's-complement sum, in network byte order once folded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sum(u32);

impl Sum {
    /// The 16-bit folded sum (not complemented).
    pub fn fold(self) -> u16 {
        fold(u64::from(self.0))
    }

    /// The checksum to store: the complement of the folded sum.
    pub fn checksum(self) -> u16 {
        !self.fold()
    }

    /// Adds a big-endian 16-bit word (a length, a protocol number).
    pub fn add_u16(self, word: u16) -> Sum {
        Sum(u32::from(fold(u64::from(self.0) + u64::from(word))))
    }

    /// Adds another partial sum.
    pub fn plus(self, other: Sum) -> Sum {
        Sum(u32::from(fold(u64::from(self.0) + u64::from(other.0))))
    }
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The one's-complement sum of `data` as big-endian 16-bit words (an odd last byte is
/// padded with zero).
pub fn sum(data: &[u8]) -> Sum {
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_le_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last);
    }
    Sum(u32::from(fold(acc).swap_bytes()))
}

/// The checksum of `data` with its own checksum field zeroed: what goes in the field.
pub fn checksum(data: &[u8]) -> u16 {
    sum(data).checksum()
}

/// The sum of a TCP/UDP pseudo-header without its length (addresses and protocol):
/// the part that is the same for every segment of a packet. `src` and `dst` are both
/// 4 or both 16 bytes.
pub fn pseudo_header(src: &[u8], dst: &[u8], protocol: u8) -> Sum {
    sum(src).plus(sum(dst)).add_u16(u16::from(protocol))
}

/// A transport checksum ready to store: never 0, since 0 means "no checksum" to UDP and
/// 0xffff is the same value to TCP.
pub fn transport_checksum(s: Sum) -> u16 {
    match s.checksum() {
        0 => 0xffff,
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 1071's reference algorithm, word by word.
    fn reference(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            s += u32::from(w);
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn known_headers_and_edge_lengths() {
        // An IPv4 header (checksum zeroed) whose checksum is 0xb861 (the usual example).
        let ip = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&ip), 0xb861);
        let cases: &[(&[u8], u16)] = &[
            (&[], 0xffff),
            (&[0x01], !0x0100),
            (&[0x01, 0x02], !0x0102),
            (&[0x01, 0x02, 0x03], !(0x0102 + 0x0300)),
            (&[0xff, 0xff, 0xff, 0xff, 0x00, 0x01], !0x0001),
        ];
        for (data, want) in cases {
            assert_eq!(checksum(data), *want, "{data:?}");
            assert_eq!(checksum(data), reference(data), "{data:?}");
        }
    }

    #[test]
    fn a_header_with_its_checksum_in_place_sums_to_zero() {
        let mut ip = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&ip), 0);
    }

    #[test]
    fn transport_checksums_are_never_zero() {
        assert_eq!(transport_checksum(Sum(0xffff)), 0xffff);
        assert_eq!(transport_checksum(Sum(0x1234)), !0x1234);
    }

    proptest! {
        #[test]
        fn matches_the_reference_on_any_data(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            prop_assert_eq!(checksum(&data), reference(&data));
        }

        #[test]
        fn partial_sums_combine_at_even_offsets(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            cut in 0usize..300,
        ) {
            let cut = (cut * 2).min(data.len() & !1);
            let (a, b) = data.split_at(cut);
            prop_assert_eq!(sum(a).plus(sum(b)).checksum(), reference(&data));
        }
    }
}
