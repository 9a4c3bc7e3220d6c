//! Test-only builders and checkers of IPv4/IPv6 TCP/UDP packets with correct checksums,
//! for the offload tests (gso, gro).

use super::checksum;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ACK: u8 = 0x10;
pub const PSH: u8 = 0x08;
pub const FIN: u8 = 0x01;

/// What a test packet looks like.
#[derive(Debug, Clone)]
pub struct Spec {
    pub v6: bool,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// TCP option bytes (a multiple of 4).
    pub options: Vec<u8>,
    pub id: u16,
    pub ttl: u8,
    pub tos: u8,
    pub df: bool,
}

impl Spec {
    pub fn tcp4() -> Spec {
        Spec {
            v6: false,
            proto: TCP,
            src_port: 40000,
            dst_port: 5201,
            seq: 1000,
            ack: 77,
            flags: ACK,
            options: vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
            id: 0x1234,
            ttl: 64,
            tos: 0,
            df: true,
        }
    }

    pub fn tcp6() -> Spec {
        Spec {
            v6: true,
            ..Spec::tcp4()
        }
    }

    pub fn udp4() -> Spec {
        Spec {
            proto: UDP,
            options: Vec::new(),
            ..Spec::tcp4()
        }
    }

    pub fn udp6() -> Spec {
        Spec {
            v6: true,
            ..Spec::udp4()
        }
    }

    pub fn ip_len(&self) -> usize {
        if self.v6 { 40 } else { 20 }
    }

    pub fn l4_len(&self) -> usize {
        if self.proto == TCP {
            20 + self.options.len()
        } else {
            8
        }
    }

    /// A complete packet carrying `payload`, checksums filled in.
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let (ip, l4) = (self.ip_len(), self.l4_len());
        let total = ip + l4 + payload.len();
        let mut p = vec![0u8; total];
        if self.v6 {
            p[0] = 0x60 | (self.tos >> 4);
            p[1] = self.tos << 4;
            p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
            p[6] = self.proto;
            p[7] = self.ttl;
            p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        } else {
            p[0] = 0x45;
            p[1] = self.tos;
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            p[4..6].copy_from_slice(&self.id.to_be_bytes());
            p[6] = if self.df { 0x40 } else { 0 };
            p[8] = self.ttl;
            p[9] = self.proto;
            p[12..16].copy_from_slice(&[10, 244, 0, 1]);
            p[16..20].copy_from_slice(&[10, 244, 1, 2]);
            let c = checksum::checksum(&p[..20]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        p[ip..ip + 2].copy_from_slice(&self.src_port.to_be_bytes());
        p[ip + 2..ip + 4].copy_from_slice(&self.dst_port.to_be_bytes());
        if self.proto == TCP {
            p[ip + 4..ip + 8].copy_from_slice(&self.seq.to_be_bytes());
            p[ip + 8..ip + 12].copy_from_slice(&self.ack.to_be_bytes());
            p[ip + 12] = ((l4 / 4) as u8) << 4;
            p[ip + 13] = self.flags;
            p[ip + 14..ip + 16].copy_from_slice(&64240u16.to_be_bytes());
            p[ip + 20..ip + l4].copy_from_slice(&self.options);
        } else {
            p[ip + 4..ip + 6].copy_from_slice(&((l4 + payload.len()) as u16).to_be_bytes());
        }
        p[ip + l4..].copy_from_slice(payload);
        let at = ip + if self.proto == TCP { 16 } else { 6 };
        let c = checksum::transport_checksum(pseudo(&p, self.proto).plus(checksum::sum(&p[ip..])));
        p[at..at + 2].copy_from_slice(&c.to_be_bytes());
        p
    }
}

fn pseudo(p: &[u8], proto: u8) -> checksum::Sum {
    let v6 = p[0] >> 4 == 6;
    let (ip, addrs) = if v6 { (40, 8..40) } else { (20, 12..20) };
    let half = addrs.len() / 2;
    let (s, d) = p[addrs].split_at(half);
    checksum::pseudo_header(s, d, proto).add_u16((p.len() - ip) as u16)
}

/// True if the IPv4 header checksum (if any) and the transport checksum verify.
pub fn checksums_ok(p: &[u8]) -> bool {
    let v6 = p[0] >> 4 == 6;
    let (ip, proto) = if v6 { (40, p[6]) } else { (20, p[9]) };
    if !v6 && checksum::checksum(&p[..20]) != 0 {
        return false;
    }
    pseudo(p, proto).plus(checksum::sum(&p[ip..])).checksum() == 0
}

/// The pseudo-header sum for the whole of `p`, as a partial checksum field holds it.
pub fn partial_field(p: &[u8], proto: u8) -> u16 {
    pseudo(p, proto).fold()
}

/// Deterministic payload bytes.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
