//! Hand-made frames on a node's underlay link (test infrastructure): what a leak would
//! look like on the wire.
//!
//! A frame sent on an AF_PACKET socket skips the node's routing and nftables (wgmesh's
//! own egress guard among them), so tests can put any IPv4/UDP packet, e.g. one from or
//! to a pod address, on the wire towards the router and watch what the router does.

use std::net::SocketAddrV4;
use std::path::Path;

use crate::exec;

/// A MAC address.
pub type Mac = [u8; 6];

/// An Ethernet frame holding an IPv4/UDP packet from `src` to `dst` with `payload`.
pub fn udp_frame(
    src_mac: Mac,
    dst_mac: Mac,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]); // IPv4
    let ip_start = f.len();
    f.extend_from_slice(&[0x45, 0x00]);
    f.extend_from_slice(&(ip_len as u16).to_be_bytes());
    f.extend_from_slice(&[0x00, 0x00, 0x40, 0x00]); // id 0, don't fragment
    f.extend_from_slice(&[64, 17, 0x00, 0x00]); // TTL, UDP, checksum below
    f.extend_from_slice(&src.ip().octets());
    f.extend_from_slice(&dst.ip().octets());
    let checksum = ipv4_checksum(&f[ip_start..ip_start + 20]);
    f[ip_start + 10..ip_start + 12].copy_from_slice(&checksum.to_be_bytes());
    f.extend_from_slice(&src.port().to_be_bytes());
    f.extend_from_slice(&dst.port().to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0x00, 0x00]); // no UDP checksum (allowed over IPv4)
    f.extend_from_slice(payload);
    f
}

/// The Internet checksum of an IPv4 header.
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<Mac> {
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

/// Formats `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: Mac) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Sends `frame` as is on interface `ifname` of the network namespace at `netns_path`.
pub fn send_frame(netns_path: &Path, ifname: &str, frame: Vec<u8>) {
    let ifname = ifname.to_string();
    exec::in_netns_thread(netns_path, move || {
        let name = std::ffi::CString::new(ifname.clone()).expect("an interface name");
        // SAFETY: plain syscalls on a socket this closure owns; pointers are to locals.
        unsafe {
            let index = libc::if_nametoindex(name.as_ptr());
            assert!(index != 0, "no interface {ifname}");
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = index as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            assert!(
                sent == frame.len() as isize,
                "sending a frame on {ifname}: {err}"
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn a_udp_frame_has_a_valid_ip_header_and_the_payload() {
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 5), 4000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 18), 9999);
        let f = udp_frame([2; 6], [4; 6], src, dst, b"leak");
        assert_eq!(f.len(), 14 + 20 + 8 + 4);
        assert_eq!(&f[..6], &[4; 6], "destination MAC first");
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(
            ipv4_checksum(&f[14..34]),
            0,
            "a correct checksum sums to zero"
        );
        assert_eq!(&f[26..30], &[10, 244, 0, 5]);
        assert_eq!(&f[30..34], &[192, 0, 2, 18]);
        assert_eq!(&f[36..38], &9999u16.to_be_bytes());
        assert_eq!(&f[42..], b"leak");
    }

    #[test]
    fn macs_parse_from_ip_s_notation() {
        assert_eq!(
            parse_mac("0a:58:0a:f4:00:01"),
            Some([0x0a, 0x58, 0x0a, 0xf4, 0x00, 0x01])
        );
        assert_eq!(parse_mac("0a:58"), None);
        assert_eq!(parse_mac("zz:58:0a:f4:00:01"), None);
        assert_eq!(
            format_mac([0x0a, 0x58, 0x0a, 0xf4, 0x00, 0x01]),
            "0a:58:0a:f4:00:01"
        );
    }
}
