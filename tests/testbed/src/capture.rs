//! Packet captures on the testbed's links (test infrastructure), e.g. to show that only
//! UDP between node addresses crosses the underlay, never a pod address or a plaintext
//! payload.
//!
//! One `tcpdump` per tapped link (a link of some namespace: a router's, a
//! gateway's) writes a pcap file while the caller's work runs; the capture starts only
//! once tcpdump says it is listening. To know that every packet of the work has been
//! written (no sleep-and-hope), each tapped namespace then sends a UDP marker with a
//! unique token to each tapped subnet's broadcast address, or on an IPv6-only link to
//! all nodes (`ff02::1`; neither draws a reply), and the capture ends when every file
//! holds its marker. The files are decoded with `tcpdump -r -n -tt -X`; marker packets
//! are left out. Packets of both families are decoded ([`Packet::addresses`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use wgmesh_testkit::{Proc, wait_until};

use crate::exec;

/// The UDP port markers are sent to ("discard").
const MARKER_PORT: u16 = 9;
const MARKER_TIMEOUT: Duration = Duration::from_secs(10);

static CAPTURES: AtomicU32 = AtomicU32::new(0);

/// The tcpdump filter of [`NEIGHBOUR_DISCOVERY`], as a literal for `concat!`.
macro_rules! neighbour_discovery {
    () => {
        "(icmp6 and ip6[40] >= 133 and ip6[40] <= 137) \
         or (ip6[6] == 0 and ip6[40] == 58 and ip6[48] >= 130 and ip6[48] <= 143)"
    };
}

/// A tcpdump filter matching IPv6 neighbour discovery (router and neighbour
/// solicitations and advertisements, redirects: ICMPv6 types 133 to 137) and MLD
/// (ICMPv6 types 130 to 143 behind a hop-by-hop header): IPv6's ARP, which hosts send
/// on their own. `not (...)` it, as `not arp`, to see what else crosses a link.
pub const NEIGHBOUR_DISCOVERY: &str = neighbour_discovery!();

/// Everything between the testbed's hosts but what hosts say to their neighbours (ARP,
/// IPv6 neighbour discovery, MLD) and the agents' API traffic: "what crosses the
/// underlay", in every layout.
pub const UNDERLAY_FILTER: &str = concat!(
    "not arp and not port 6443 and not (",
    neighbour_discovery!(),
    ")"
);

/// The all-nodes multicast address: where markers go on an IPv6-only link.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// One captured packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// The link it was seen on: the router's interface name in a [`crate::Testbed`]
    /// (`node0`), `<namespace>/<interface>` in a [`crate::MultiCloud`] (`gw-a/wan`).
    pub interface: String,
    /// Seconds since the epoch.
    pub time: f64,
    /// tcpdump's one-line summary, e.g. `IP 192.0.2.2.51820 > 192.0.2.18.51820: UDP,
    /// length 148` or `IP6 2001:db8::2.51820 > 2001:db8:0:1::2.51820: UDP, length 148`.
    pub summary: String,
    /// tcpdump's hex and ASCII dump of the IP packet (`-X`), one line per 16 bytes.
    pub hex: Vec<String>,
    /// The bytes of `hex`, decoded once (a capture's checks read them many times, and
    /// a GSO packet's dump is 64 KiB).
    raw: Vec<u8>,
}

impl std::fmt::Display for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.interface, self.summary)
    }
}

impl Packet {
    /// A packet seen on `interface` at `time`, from tcpdump's `summary` line and `hex`
    /// dump.
    pub fn new(interface: String, time: f64, summary: String, hex: Vec<String>) -> Packet {
        let raw = decode_hex(&hex);
        Packet {
            interface,
            time,
            summary,
            hex,
            raw,
        }
    }

    /// The packet's bytes from the hex dump (IP header onwards).
    pub fn bytes(&self) -> Vec<u8> {
        self.raw.clone()
    }

    /// The packet's bytes, borrowed.
    pub fn data(&self) -> &[u8] {
        &self.raw
    }

    /// The IPv4 source and destination addresses of the packet, and of the packet an
    /// ICMP error quotes (if it is one): every IPv4 address the packet shows in clear.
    pub fn ipv4_addresses(&self) -> Vec<Ipv4Addr> {
        self.addresses()
            .into_iter()
            .filter_map(|a| match a {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            })
            .collect()
    }

    /// The source and destination addresses of the packet (IPv4 or IPv6), and of the
    /// packet an ICMP or ICMPv6 error quotes (if it is one): every address the packet
    /// shows in clear.
    pub fn addresses(&self) -> Vec<IpAddr> {
        let b = self.data();
        let mut out = Vec::new();
        let Some((src, dst)) = header_addresses(b) else {
            return out;
        };
        out.extend([src, dst]);
        // ICMP destination unreachable, time exceeded, parameter problem (ICMPv6: also
        // packet too big): the 8-byte ICMP header, then the offending IP header.
        if let Some((protocol, start)) = transport(b) {
            let quoting = match (protocol, b.get(start)) {
                (1, Some(3 | 11 | 12)) => b[0] >> 4 == 4,
                (58, Some(1..=4)) => b[0] >> 4 == 6,
                _ => false,
            };
            if quoting && let Some((qsrc, qdst)) = b.get(start + 8..).and_then(header_addresses) {
                out.extend([qsrc, qdst]);
            }
        }
        out
    }

    /// The IP protocol (next header) of the packet and where its payload starts, for
    /// IPv4 and for IPv6 without extension headers.
    pub fn transport(&self) -> Option<(u8, usize)> {
        transport(self.data())
    }

    /// The UDP source and destination ports of an IPv4 or IPv6 UDP packet.
    pub fn udp_ports(&self) -> Option<(u16, u16)> {
        let b = self.data();
        match transport(b)? {
            (17, start) if b.len() >= start + 8 => Some((
                u16::from_be_bytes([b[start], b[start + 1]]),
                u16::from_be_bytes([b[start + 2], b[start + 3]]),
            )),
            _ => None,
        }
    }

    /// The UDP payload of an IPv4 or IPv6 UDP packet (None for anything else).
    pub fn udp_payload(&self) -> Option<Vec<u8>> {
        self.udp_payload_slice().map(<[u8]>::to_vec)
    }

    fn udp_payload_slice(&self) -> Option<&[u8]> {
        let b = self.data();
        match transport(b)? {
            (17, start) => b.get(start + 8..),
            _ => None,
        }
    }

    /// True when the packet is a WireGuard message, whatever its ports (NATs change
    /// them): UDP whose payload starts with a message type 1 to 4 and three reserved
    /// zero bytes (WireGuard paper, section 5.4).
    pub fn is_wireguard(&self) -> bool {
        self.udp_payload_slice()
            .is_some_and(|p| p.len() >= 4 && (1..=4).contains(&p[0]) && p[1..4] == [0, 0, 0])
    }
}

/// The packets of one capture, in time order across interfaces.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    pub packets: Vec<Packet>,
}

impl Capture {
    /// `<interface>: <summary>` per packet.
    pub fn lines(&self) -> Vec<String> {
        self.packets
            .iter()
            .map(|p| format!("{}: {}", p.interface, p.summary))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// The packets showing an address of `range` (e.g. a pod range, of either family)
    /// in their IP header or in the header an ICMP error quotes.
    pub fn packets_with_addresses_in(&self, range: impl Into<IpNet>) -> Vec<&Packet> {
        let range = range.into();
        self.packets
            .iter()
            .filter(|p| p.addresses().iter().any(|a| range.contains(a)))
            .collect()
    }

    /// The packets that are neither a WireGuard message over UDP from `port` to `port`
    /// between two of `hosts`, nor an ICMP or ICMPv6 "unreachable" between two of
    /// `hosts` quoting a UDP datagram between two of them (e.g. a closed WireGuard port
    /// while a device is being replaced): on an underlay that carries only WireGuard
    /// between nodes, that is everything that should not be there.
    pub fn packets_other_than_wireguard_between(
        &self,
        hosts: &[IpAddr],
        port: u16,
    ) -> Vec<&Packet> {
        let between = |b: &[u8]| {
            header_addresses(b)
                .is_some_and(|(src, dst)| hosts.contains(&src) && hosts.contains(&dst))
        };
        self.packets
            .iter()
            .filter(|p| {
                let b = p.data();
                let expected = between(b)
                    && match transport(b) {
                        Some((17, _)) => p.udp_ports() == Some((port, port)) && p.is_wireguard(),
                        Some((1, start)) if b.get(start) == Some(&3) => b
                            .get(start + 8..)
                            .is_some_and(|q| quotes_udp_between(q, between)),
                        Some((58, start)) if b.get(start) == Some(&1) => b
                            .get(start + 8..)
                            .is_some_and(|q| quotes_udp_between(q, between)),
                        _ => false,
                    };
                !expected
            })
            .collect()
    }

    /// True if any packet's bytes contain `needle` (e.g. a plaintext payload).
    pub fn contains_bytes(&self, needle: &[u8]) -> bool {
        let Some((&first, _)) = needle.split_first() else {
            return false;
        };
        self.packets.iter().any(|p| {
            let b = p.data();
            // Compare only where the first byte matches: a capture holds megabytes.
            b.iter().enumerate().any(|(i, &x)| {
                x == first && b.get(i..i + needle.len()).is_some_and(|w| w == needle)
            })
        })
    }
}

impl std::fmt::Display for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.packets {
            writeln!(f, "{}: {}", p.interface, p.summary)?;
            for line in &p.hex {
                writeln!(f, "    {}", line.trim())?;
            }
        }
        Ok(())
    }
}

/// A link to capture on: interface `link` of the namespace at `netns`, `label` in the
/// captured packets, and where the end marker goes: the directed broadcast address of
/// its IPv4 subnet (the namespace must have an address in that subnet), or on an
/// IPv6-only link the all-nodes address [`ALL_NODES`] (the link must have IPv6 on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tap {
    pub netns: PathBuf,
    pub link: String,
    pub label: String,
    pub marker: IpAddr,
}

/// The links of one namespace that captures can tap, each with where its marker goes.
#[derive(Debug, Default)]
pub(crate) struct Taps(Mutex<BTreeMap<String, IpAddr>>);

impl Taps {
    /// A link with an IPv4 subnet: markers go to its `broadcast` address.
    pub fn add(&self, link: &str, broadcast: Ipv4Addr) {
        self.add_marker(link, broadcast.into());
    }

    /// An IPv6-only link: markers go to all nodes on it.
    pub fn add_ipv6_only(&self, link: &str) {
        self.add_marker(link, ALL_NODES.into());
    }

    fn add_marker(&self, link: &str, marker: IpAddr) {
        self.0
            .lock()
            .expect("tap list")
            .insert(link.to_string(), marker);
    }

    pub fn remove(&self, link: &str) {
        self.0.lock().expect("tap list").remove(link);
    }

    /// The tappable links, sorted.
    pub fn names(&self) -> Vec<String> {
        self.0.lock().expect("tap list").keys().cloned().collect()
    }

    /// A tap on `link` of the namespace at `netns`, labelled `label`; panics when the
    /// link is not tappable.
    pub fn tap(&self, netns: &Path, link: &str, label: String) -> Tap {
        let taps = self.0.lock().expect("tap list");
        let marker = *taps.get(link).unwrap_or_else(|| {
            panic!(
                "no link {link} to capture on in {} (there are {:?})",
                netns.display(),
                taps.keys().collect::<Vec<_>>()
            )
        });
        Tap {
            netns: netns.to_path_buf(),
            link: link.to_string(),
            label,
            marker,
        }
    }
}

/// One running tcpdump.
struct Tcpdump {
    tap: Tap,
    file: PathBuf,
    proc: Proc,
}

/// Captures on `taps` the packets matching the tcpdump `filter` (empty: all) while
/// `work` runs. pcap files go to `dir`.
pub(crate) fn during<R>(
    taps: &[Tap],
    filter: &str,
    dir: &Path,
    work: impl FnOnce() -> R,
) -> (R, Capture) {
    let n = CAPTURES.fetch_add(1, Ordering::Relaxed);
    let token = format!("wgmesh-testbed-end-of-capture-{}-{n}", std::process::id());
    let dumps: Vec<Tcpdump> = taps
        .iter()
        .map(|tap| {
            let file = dir.join(format!("capture-{n}-{}.pcap", tap.label.replace('/', "_")));
            start_tcpdump(tap, filter, file)
        })
        .collect();

    let result = work();

    // One marker per tapped subnet, sent from each namespace that taps it.
    let mut markers: BTreeMap<&Path, BTreeSet<(IpAddr, String)>> = BTreeMap::new();
    for tap in taps {
        markers
            .entry(tap.netns.as_path())
            .or_default()
            .insert((tap.marker, tap.link.clone()));
    }
    for (netns, destinations) in markers {
        let marker = token.clone().into_bytes();
        let place = netns.display().to_string();
        exec::in_netns_thread(netns, move || {
            for (destination, link) in destinations {
                send_marker(&marker, destination, &link)
                    .unwrap_or_else(|e| {
                        panic!(
                            "cannot send the capture marker to {destination} on {link} from {place}: {e}"
                        )
                    });
            }
        });
    }
    let mut packets = Vec::new();
    for dump in dumps {
        wait_until(
            MARKER_TIMEOUT,
            &format!(
                "the end-of-capture marker in the capture on {}",
                dump.tap.label
            ),
            || {
                let bytes = std::fs::read(&dump.file).ok()?;
                bytes
                    .windows(token.len())
                    .any(|w| w == token.as_bytes())
                    .then_some(())
            },
        );
        // SIGTERM: tcpdump flushes and exits; the marker proves everything is written.
        drop(dump.proc);
        packets.extend(decode(&dump.file, &dump.tap.label, dump.tap.marker));
    }
    packets.sort_by(|a, b| a.time.total_cmp(&b.time));
    (result, Capture { packets })
}

/// Sends the end marker to `destination` (a broadcast address, or all nodes on `link`)
/// from the calling thread's namespace.
fn send_marker(marker: &[u8], destination: IpAddr, link: &str) -> std::io::Result<()> {
    match destination {
        IpAddr::V4(broadcast) => {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_broadcast(true)?;
            socket.send_to(marker, (broadcast, MARKER_PORT))?;
        }
        IpAddr::V6(group) => {
            let index = nix::net::if_::if_nametoindex(link).map_err(std::io::Error::from)?;
            let socket = UdpSocket::bind("[::]:0")?;
            socket.send_to(marker, SocketAddrV6::new(group, MARKER_PORT, 0, index))?;
        }
    }
    Ok(())
}

fn start_tcpdump(tap: &Tap, filter: &str, file: PathBuf) -> Tcpdump {
    let (interface, marker) = (&tap.link, tap.marker);
    let mut cmd = exec::in_net(&tap.netns, "tcpdump");
    // -U and --immediate-mode: every packet reaches the file at once; -Z root: write
    // the file as root (Debian's tcpdump drops to its own user otherwise).
    cmd.args([
        "-i",
        interface,
        "-n",
        "-U",
        "--immediate-mode",
        "-Z",
        "root",
        "-w",
    ])
    .arg(&file);
    if !filter.trim().is_empty() {
        cmd.arg(format!(
            "({filter}) or (udp dst port {MARKER_PORT} and dst host {marker})"
        ));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut proc = Proc::spawn(cmd, "tcpdump");
    let stderr = proc.child.stderr.take().expect("piped stderr");
    let mut reader = BufReader::new(stderr);
    let mut said = String::new();
    loop {
        let mut line = String::new();
        // EOF (tcpdump exited) ends the loop; no timeout is needed.
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("tcpdump on {} did not start: {said}", tap.label);
        }
        said.push_str(&line);
        if line.contains("listening on") {
            break;
        }
    }
    // tcpdump writes its statistics to stderr on exit; keep the pipe readable.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    Tcpdump {
        tap: tap.clone(),
        file,
        proc,
    }
}

/// The source and destination of the IPv4 or IPv6 header at the start of `b`.
fn header_addresses(b: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match b.first()? >> 4 {
        4 if b.len() >= 20 => {
            let at = |i: usize| IpAddr::from([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            Some((at(12), at(16)))
        }
        6 if b.len() >= 40 => {
            let at = |i: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&b[i..i + 16]);
                IpAddr::from(octets)
            };
            Some((at(8), at(24)))
        }
        _ => None,
    }
}

/// The protocol of the IPv4 or IPv6 packet `b` and where its payload starts (IPv6: the
/// fixed header's next header; extension headers are not followed).
fn transport(b: &[u8]) -> Option<(u8, usize)> {
    match b.first()? >> 4 {
        4 if b.len() >= 20 => Some((b[9], usize::from(b[0] & 0x0f) * 4)),
        6 if b.len() >= 40 => Some((b[6], 40)),
        _ => None,
    }
}

/// True when `quoted` (what an ICMP error quotes) is a UDP datagram `between` hosts.
fn quotes_udp_between(quoted: &[u8], between: impl Fn(&[u8]) -> bool) -> bool {
    between(quoted) && transport(quoted).is_some_and(|(protocol, _)| protocol == 17)
}

/// Decodes a pcap file, leaving out the end marker (sent to `marker`).
fn decode(file: &Path, interface: &str, marker: IpAddr) -> Vec<Packet> {
    let mut cmd = Command::new("tcpdump");
    cmd.args(["-r"]).arg(file).args(["-n", "-tt", "-X"]);
    let text = exec::output_ok(cmd, None);
    let marker = format!("> {marker}.{MARKER_PORT}: UDP");
    parse(&text, interface)
        .into_iter()
        .filter(|p| !p.summary.contains(&marker))
        .collect()
}

/// Parses `tcpdump -tt -X` output: a packet is a line starting with its timestamp,
/// followed by indented hex lines.
fn parse(text: &str, interface: &str) -> Vec<Packet> {
    let mut heads: Vec<(f64, String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if line.starts_with(char::is_whitespace) {
            if let Some((_, _, hex)) = heads.last_mut() {
                hex.push(line.to_string());
            }
            continue;
        }
        let (time, summary) = line.split_once(' ').unwrap_or((line, ""));
        heads.push((time.parse().unwrap_or(0.0), summary.to_string(), Vec::new()));
    }
    heads
        .into_iter()
        .map(|(time, summary, hex)| Packet::new(interface.to_string(), time, summary, hex))
        .collect()
}

/// The bytes of tcpdump `-X` lines: "\t0x0000:  4500 0054 ...  E..T", the hex groups
/// between the offset and two spaces before the ASCII column.
fn decode_hex(lines: &[String]) -> Vec<u8> {
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(lines.len() * 16);
    for line in lines {
        let after_offset = line.split_once(':').map_or("", |(_, rest)| rest);
        let hex_part = after_offset.trim_start().split("  ").next().unwrap_or("");
        for group in hex_part.split_whitespace() {
            for pair in group.as_bytes().chunks_exact(2) {
                if let (Some(high), Some(low)) = (nibble(pair[0]), nibble(pair[1])) {
                    out.push(high << 4 | low);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "\
1764160000.123456 IP 192.0.2.2 > 192.0.2.18: ICMP echo request, id 7, seq 1, length 64
\t0x0000:  4500 0054 1234 4000 4001 a1b2 c000 0202  E..T.4@.@.......
\t0x0010:  c000 0212 0800 f7ff 0007 0001 6869 6869  ............hihi
1764160000.223456 IP 192.0.2.1.40000 > 192.0.2.15.9: UDP, length 5
\t0x0000:  4500 0021 0000 4000 4011 0000 c000 0201  E..!..@.@.......
";

    #[test]
    fn tcpdump_output_becomes_packets_with_their_bytes() {
        let packets = parse(DUMP, "node0");
        assert_eq!(packets.len(), 2);
        assert_eq!(packets[0].interface, "node0");
        assert_eq!(packets[0].time, 1764160000.123456);
        assert_eq!(
            packets[0].summary,
            "IP 192.0.2.2 > 192.0.2.18: ICMP echo request, id 7, seq 1, length 64"
        );
        let bytes = packets[0].bytes();
        assert_eq!(bytes.len(), 32);
        assert_eq!(&bytes[..4], &[0x45, 0x00, 0x00, 0x54]);
        assert_eq!(&bytes[28..], b"hihi");
        let capture = Capture { packets };
        assert!(capture.contains_bytes(b"hihi"));
        assert!(!capture.contains_bytes(b"secret"));
        assert_eq!(
            capture.lines()[1],
            "node0: IP 192.0.2.1.40000 > 192.0.2.15.9: UDP, length 5"
        );
    }

    /// An IPv4 header (protocol `proto`, no options) from `src` to `dst`, then `rest`.
    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], rest: &[u8]) -> Vec<u8> {
        let mut b = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
        b.extend(src);
        b.extend(dst);
        b.extend(rest);
        b
    }

    /// A tcpdump `-X` style packet holding `bytes`.
    fn packet(bytes: &[u8]) -> Packet {
        let hex = bytes
            .chunks(16)
            .enumerate()
            .map(|(i, chunk)| {
                let groups: Vec<String> = chunk
                    .chunks(2)
                    .map(|g| g.iter().map(|b| format!("{b:02x}")).collect())
                    .collect();
                format!(
                    "\t0x{:04x}:  {}  ................",
                    i * 16,
                    groups.join(" ")
                )
            })
            .collect();
        Packet::new("node0".into(), 0.0, String::new(), hex)
    }

    #[test]
    fn pod_addresses_are_found_in_headers_and_in_quoted_headers_of_icmp_errors() {
        let pods: ipnet::Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let (node0, node1, pod) = ([192, 0, 2, 2], [192, 0, 2, 18], [10, 244, 1, 5]);
        let wireguard = packet(&ipv4(
            17,
            node0,
            node1,
            &[0xca, 0x6c, 0xca, 0x6c, 0, 8, 0, 0],
        ));
        let plain = packet(&ipv4(1, pod, node1, &[8, 0, 0, 0, 0, 0, 0, 0]));
        let quoted = ipv4(1, node1, pod, &[8, 0, 0, 0, 0, 0, 0, 0]);
        let mut icmp_error = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp_error.extend(&quoted);
        let unreachable = packet(&ipv4(1, node1, node0, &icmp_error));
        // An echo request's payload may hold anything: only errors quote a header.
        let mut echo = vec![8, 0, 0, 0, 0, 0, 0, 0];
        echo.extend(&quoted);
        let echo = packet(&ipv4(1, node0, node1, &echo));

        assert_eq!(
            wireguard.ipv4_addresses(),
            [Ipv4Addr::from(node0), Ipv4Addr::from(node1)]
        );
        assert_eq!(unreachable.ipv4_addresses().len(), 4);
        let capture = Capture {
            packets: vec![wireguard, plain.clone(), unreachable.clone(), echo],
        };
        assert_eq!(
            capture.packets_with_addresses_in(pods),
            [&plain, &unreachable]
        );
    }

    /// An IPv6 header (next header `next`) from `src` to `dst`, then `rest`.
    fn ipv6(next: u8, src: &str, dst: &str, rest: &[u8]) -> Vec<u8> {
        let (src, dst): (Ipv6Addr, Ipv6Addr) = (src.parse().unwrap(), dst.parse().unwrap());
        let len = u16::try_from(rest.len()).unwrap().to_be_bytes();
        let mut b = vec![0x60, 0, 0, 0, len[0], len[1], next, 64];
        b.extend(src.octets());
        b.extend(dst.octets());
        b.extend(rest);
        b
    }

    #[test]
    fn ipv6_pod_addresses_are_found_in_headers_and_in_quoted_headers_of_icmpv6_errors() {
        let pods: IpNet = "fd00:10:244::/56".parse().unwrap();
        let (node0, node1, pod) = ("2001:db8::2", "2001:db8:0:1::2", "fd00:10:244:1::5");
        let udp = [0xca, 0x6c, 0xca, 0x6c, 0, 12, 0, 0, 4, 0, 0, 0];
        let wireguard = packet(&ipv6(17, node0, node1, &udp));
        // An ICMPv6 echo request from a pod, in clear.
        let plain = packet(&ipv6(58, pod, node1, &[128, 0, 0, 0, 0, 1, 0, 1]));
        // Destination unreachable quoting a pod's packet.
        let quoted = ipv6(58, node1, pod, &[128, 0, 0, 0, 0, 1, 0, 1]);
        let mut icmp_error = vec![1, 3, 0, 0, 0, 0, 0, 0];
        icmp_error.extend(&quoted);
        let unreachable = packet(&ipv6(58, node1, node0, &icmp_error));
        // An echo request's payload may hold anything: only errors quote a header.
        let mut echo = vec![128, 0, 0, 0, 0, 1, 0, 1];
        echo.extend(&quoted);
        let echo = packet(&ipv6(58, node0, node1, &echo));

        assert_eq!(
            wireguard.addresses(),
            [node0.parse::<IpAddr>().unwrap(), node1.parse().unwrap()]
        );
        assert!(wireguard.ipv4_addresses().is_empty());
        assert_eq!(wireguard.udp_ports(), Some((51820, 51820)));
        assert!(wireguard.is_wireguard());
        assert_eq!(unreachable.addresses().len(), 4);
        assert_eq!(echo.addresses().len(), 2);
        assert_eq!(echo.udp_ports(), None);
        let capture = Capture {
            packets: vec![wireguard, plain.clone(), unreachable.clone(), echo],
        };
        assert_eq!(
            capture.packets_with_addresses_in(pods),
            [&plain, &unreachable]
        );
        // The IPv4 pod range matches none of them.
        assert!(
            capture
                .packets_with_addresses_in(crate::addressing::cluster_cidr())
                .is_empty()
        );
    }

    #[test]
    fn only_wireguard_between_the_given_hosts_and_errors_about_it_pass_as_wireguard() {
        let hosts: Vec<IpAddr> = ["2001:db8::2", "2001:db8:0:1::2", "192.0.2.2", "192.0.2.18"]
            .iter()
            .map(|h| h.parse().unwrap())
            .collect();
        let udp = |sport: u16, dport: u16, payload: &[u8]| {
            let mut u = sport.to_be_bytes().to_vec();
            u.extend(dport.to_be_bytes());
            u.extend([0, 0, 0, 0]);
            u.extend(payload);
            u
        };
        let handshake = [1, 0, 0, 0, 7, 7];
        let wg6 = ipv6(
            17,
            "2001:db8::2",
            "2001:db8:0:1::2",
            &udp(51820, 51820, &handshake),
        );
        let wg4 = ipv4(
            17,
            [192, 0, 2, 2],
            [192, 0, 2, 18],
            &udp(51820, 51820, &handshake),
        );
        let mut port_unreachable6 = vec![1, 4, 0, 0, 0, 0, 0, 0];
        port_unreachable6.extend(&wg6);
        let mut port_unreachable4 = vec![3, 3, 0, 0, 0, 0, 0, 0];
        port_unreachable4.extend(&wg4);
        let fine = [
            packet(&wg6),
            packet(&wg4),
            packet(&ipv6(
                58,
                "2001:db8:0:1::2",
                "2001:db8::2",
                &port_unreachable6,
            )),
            packet(&ipv4(
                1,
                [192, 0, 2, 18],
                [192, 0, 2, 2],
                &port_unreachable4,
            )),
        ];
        let mut echo_quoting = vec![128, 0, 0, 0];
        echo_quoting.extend(&wg6);
        let wrong = [
            // Another port, not WireGuard, a host outside the list, not UDP.
            packet(&ipv6(
                17,
                "2001:db8::2",
                "2001:db8:0:1::2",
                &udp(51820, 53, &handshake),
            )),
            packet(&ipv6(
                17,
                "2001:db8::2",
                "2001:db8:0:1::2",
                &udp(51820, 51820, b"GET /"),
            )),
            packet(&ipv6(
                17,
                "2001:db8::2",
                "2001:db8:203::10",
                &udp(51820, 51820, &handshake),
            )),
            packet(&ipv6(6, "2001:db8::2", "2001:db8:0:1::2", &[0; 20])),
            packet(&ipv6(58, "2001:db8::2", "2001:db8:0:1::2", &echo_quoting)),
            packet(&ipv4(
                1,
                [192, 0, 2, 2],
                [192, 0, 2, 18],
                &[8, 0, 0, 0, 0, 0, 0, 0],
            )),
        ];
        let capture = Capture {
            packets: fine.iter().chain(&wrong).cloned().collect(),
        };
        let flagged: Vec<Packet> = capture
            .packets_other_than_wireguard_between(&hosts, 51820)
            .into_iter()
            .cloned()
            .collect();
        assert_eq!(flagged, wrong);
    }

    #[test]
    fn wireguard_messages_are_told_apart_by_their_header_whatever_the_ports() {
        let (a, b) = ([203, 0, 113, 101], [203, 0, 113, 131]);
        // UDP 51820 -> 41055 (a NAT's port), then a WireGuard handshake initiation.
        let udp = |payload: &[u8]| {
            let mut u = vec![0xca, 0x6c, 0xa0, 0x5f, 0, 0, 0, 0];
            u.extend(payload);
            u
        };
        let initiation = packet(&ipv4(17, a, b, &udp(&[1, 0, 0, 0, 0xaa, 0xbb])));
        let transport = packet(&ipv4(17, a, b, &udp(&[4, 0, 0, 0, 1, 2, 3, 4])));
        let other_udp = packet(&ipv4(17, a, b, &udp(b"hello, plaintext")));
        let bad_reserved = packet(&ipv4(17, a, b, &udp(&[1, 0, 1, 0])));
        let icmp = packet(&ipv4(1, a, b, &[4, 0, 0, 0, 0, 0, 0, 0]));
        assert!(initiation.is_wireguard());
        assert!(transport.is_wireguard());
        assert!(!other_udp.is_wireguard());
        assert!(!bad_reserved.is_wireguard());
        assert!(!icmp.is_wireguard());
        assert_eq!(icmp.udp_payload(), None);
        assert_eq!(transport.udp_payload().unwrap(), [4, 0, 0, 0, 1, 2, 3, 4]);
    }
}
