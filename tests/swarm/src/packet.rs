//! The IPv4 packets an emulated node's pods exchange (test infrastructure; pure): they
//! answer ICMP echo requests and UDP datagrams to the echo port, and send echo requests
//! of their own.

use std::net::Ipv4Addr;

use wgmesh_testbed::raw::ipv4_checksum;

/// UDP port an emulated pod echoes datagrams on (RFC 862's echo service).
pub const ECHO_PORT: u16 = 7;

const ICMP: u8 = 1;
const UDP: u8 = 17;
const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;

/// The fields of an IPv4 packet an emulated pod looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4<'p> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub payload: &'p [u8],
}

/// Parses an IPv4 packet (without options checks beyond the header length).
pub fn parse(packet: &[u8]) -> Option<Ipv4<'_>> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let header = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if header < 20 || total < header || total > packet.len() {
        return None;
    }
    let addr =
        |at: usize| Ipv4Addr::new(packet[at], packet[at + 1], packet[at + 2], packet[at + 3]);
    Some(Ipv4 {
        src: addr(12),
        dst: addr(16),
        protocol: packet[9],
        payload: &packet[header..total],
    })
}

/// An IPv4 packet from `src` to `dst` carrying `payload` of `protocol`.
pub fn build(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0x00]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0x00, 0x00, 0x40, 0x00]); // id 0, don't fragment
    p.extend_from_slice(&[64, protocol, 0x00, 0x00]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = ipv4_checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// The Internet checksum of `data` (ICMP's).
fn checksum(data: &[u8]) -> u16 {
    ipv4_checksum(data)
}

/// An ICMP echo request from `src` to `dst`.
pub fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let mut icmp = vec![ECHO_REQUEST, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(b"wgmesh-swarm");
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    build(src, dst, ICMP, &icmp)
}

/// The (id, seq) of an ICMP echo reply to `to`.
pub fn echo_reply_to(packet: &[u8], to: Ipv4Addr) -> Option<(u16, u16)> {
    let ip = parse(packet)?;
    let icmp = ip.payload;
    (ip.dst == to && ip.protocol == ICMP && icmp.len() >= 8 && icmp[0] == ECHO_REPLY).then(|| {
        (
            u16::from_be_bytes([icmp[4], icmp[5]]),
            u16::from_be_bytes([icmp[6], icmp[7]]),
        )
    })
}

/// What a pod answers to `packet`, if anything: an ICMP echo reply to an echo request,
/// the same datagram back to a UDP datagram for [`ECHO_PORT`]. Only packets to an
/// address `ours` accepts are answered.
pub fn answer(packet: &[u8], ours: impl Fn(Ipv4Addr) -> bool) -> Option<Vec<u8>> {
    let ip = parse(packet)?;
    if !ours(ip.dst) {
        return None;
    }
    match ip.protocol {
        ICMP if ip.payload.len() >= 8 && ip.payload[0] == ECHO_REQUEST => {
            let mut icmp = ip.payload.to_vec();
            icmp[0] = ECHO_REPLY;
            icmp[2..4].fill(0);
            let sum = checksum(&icmp);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            Some(build(ip.dst, ip.src, ICMP, &icmp))
        }
        UDP if ip.payload.len() >= 8
            && u16::from_be_bytes([ip.payload[2], ip.payload[3]]) == ECHO_PORT =>
        {
            let mut udp = ip.payload.to_vec();
            udp.copy_within(0..2, 2);
            udp[0..2].copy_from_slice(&ECHO_PORT.to_be_bytes());
            // Checksum 0: none, allowed over IPv4 (the addresses changed places, so the
            // old one would still be right, but a zero is simpler to trust).
            udp[6..8].fill(0);
            Some(build(ip.dst, ip.src, UDP, &udp))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 16, 1);
    const PEER: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);

    fn udp(src_port: u16, dst_port: u16, data: &[u8]) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&src_port.to_be_bytes());
        u.extend_from_slice(&dst_port.to_be_bytes());
        u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(data);
        build(PEER, POD, UDP, &u)
    }

    #[test]
    fn an_echo_request_is_answered_with_a_valid_reply() {
        let request = echo_request(PEER, POD, 7, 9);
        assert_eq!(ipv4_checksum(&request[..20]), 0, "valid IP header");
        assert_eq!(checksum(&request[20..]), 0, "valid ICMP checksum");
        let reply = answer(&request, |ip| ip == POD).expect("answered");
        let ip = parse(&reply).unwrap();
        assert_eq!((ip.src, ip.dst, ip.protocol), (POD, PEER, ICMP));
        assert_eq!(ipv4_checksum(&reply[..20]), 0);
        assert_eq!(checksum(&reply[20..]), 0);
        assert_eq!(echo_reply_to(&reply, PEER), Some((7, 9)));
        assert_eq!(echo_reply_to(&reply, POD), None, "not a reply to POD");
        assert_eq!(echo_reply_to(&request, PEER), None, "a request is no reply");
    }

    #[test]
    fn a_datagram_to_the_echo_port_comes_back_and_others_do_not() {
        let reply = answer(&udp(40000, ECHO_PORT, b"probe 3"), |ip| ip == POD).expect("echoed");
        let ip = parse(&reply).unwrap();
        assert_eq!((ip.src, ip.dst, ip.protocol), (POD, PEER, UDP));
        assert_eq!(&ip.payload[0..4], &[0, 7, 0x9c, 0x40], "ports swapped");
        assert_eq!(&ip.payload[8..], b"probe 3");
        assert_eq!(answer(&udp(40000, 53, b"x"), |ip| ip == POD), None);
        assert_eq!(
            answer(&udp(40000, ECHO_PORT, b"x"), |_| false),
            None,
            "not ours"
        );
        assert_eq!(answer(&[0x45, 0, 0], |_| true), None, "truncated");
    }
}
