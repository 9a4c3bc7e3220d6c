//! `struct virtio_net_hdr`: the 10-byte header before every packet on a TUN opened with
//! `IFF_VNET_HDR`, saying whether the packet is a GSO super-packet and whether its
//! transport checksum is still to be completed. Pure.
//!
//! The kernel fills `hdr_len` with the length of the linear part of its buffer, not the
//! length of the headers, so readers compute the header length themselves (as
//! wireguard-go does).

/// `sizeof(struct virtio_net_hdr)`, the TUN's default `TUNSETVNETHDRSZ`.
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` holds the
/// pseudo-header sum; the rest is to be added (CHECKSUM_PARTIAL).
pub const F_NEEDS_CSUM: u8 = 1;

pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
/// Set with a TCP type when the first segment carries CWR (only it may).
pub const GSO_ECN: u8 = 0x80;

/// A decoded virtio_net_hdr (little-endian on the wire: TUN is in virtio 1.0 mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Decodes the first [`VNET_HDR_LEN`] bytes; `None` if there are fewer.
    pub fn decode(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `b`; false if `b` is
    /// shorter.
    pub fn encode(&self, b: &mut [u8]) -> bool {
        let Some(b) = b.get_mut(..VNET_HDR_LEN) else {
            return false;
        };
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        true
    }

    /// The GSO type without the ECN bit.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }

    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_little_endian() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 0x0102,
            gso_size: 1388,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut b = [0u8; VNET_HDR_LEN];
        assert!(h.encode(&mut b));
        assert_eq!(b, [1, 0x81, 0x02, 0x01, 0x6c, 0x05, 20, 0, 16, 0]);
        assert_eq!(VnetHdr::decode(&b), Some(h));
        assert_eq!(h.gso_kind(), GSO_TCPV4);
        assert!(h.needs_csum());
    }

    #[test]
    fn short_buffers_are_refused() {
        assert_eq!(VnetHdr::decode(&[0; 9]), None);
        assert!(!VnetHdr::default().encode(&mut [0; 9]));
    }
}
