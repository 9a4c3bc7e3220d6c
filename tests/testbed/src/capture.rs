//! Packet captures on the testbed's links (test infrastructure), e.g. to show that only
//! UDP between node addresses crosses the underlay, never a pod address or a plaintext
//! payload.
//!
//! One `tcpdump` per tapped link (a link of some namespace: a router's, a
//! gateway's) writes a pcap file while the caller's work runs; the capture starts only
//! once tcpdump says it is listening. To know that every packet of the work has been
//! written (no sleep-and-hope), each tapped namespace then sends a UDP marker with a
//! unique token to each tapped subnet's broadcast address (which draws no reply), and
//! the capture ends when every file holds its marker. The files are decoded with
//! `tcpdump -r -n -tt -X`; marker packets are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ipnet::Ipv4Net;
use wgmesh_testkit::{Proc, wait_until};

use crate::exec;

/// The UDP port markers are sent to ("discard").
const MARKER_PORT: u16 = 9;
const MARKER_TIMEOUT: Duration = Duration::from_secs(10);

static CAPTURES: AtomicU32 = AtomicU32::new(0);

/// One captured packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// The link it was seen on: the router's interface name in a [`crate::Testbed`]
    /// (`node0`), `<namespace>/<interface>` in a [`crate::MultiCloud`] (`gw-a/wan`).
    pub interface: String,
    /// Seconds since the epoch.
    pub time: f64,
    /// tcpdump's one-line summary, e.g. `IP 192.0.2.2.51820 > 192.0.2.18.51820: UDP, length 148`.
    pub summary: String,
    /// tcpdump's hex and ASCII dump of the IP packet (`-X`), one line per 16 bytes.
    pub hex: Vec<String>,
}

impl std::fmt::Display for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.interface, self.summary)
    }
}

impl Packet {
    /// The packet's bytes from the hex dump (IP header onwards).
    pub fn bytes(&self) -> Vec<u8> {
        self.hex
            .iter()
            .flat_map(|line| {
                // "\t0x0000:  4500 0054 ...  E..T" — the hex groups sit between the
                // offset and two spaces before the ASCII column.
                let after_offset = line.split_once(':').map_or("", |(_, rest)| rest);
                let hex_part = after_offset.trim_start().split("  ").next().unwrap_or("");
                hex_part
                    .split_whitespace()
                    .flat_map(|group| {
                        (0..group.len() / 2)
                            .filter_map(|i| u8::from_str_radix(&group[2 * i..2 * i + 2], 16).ok())
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The IPv4 source and destination addresses of the packet, and of the packet an
    /// ICMP error quotes (if it is one): every address the packet shows in clear.
    pub fn ipv4_addresses(&self) -> Vec<Ipv4Addr> {
        let b = self.bytes();
        let mut out = Vec::new();
        if b.len() < 20 || b[0] >> 4 != 4 {
            return out;
        }
        let at = |i: usize| Ipv4Addr::new(b[i], b[i + 1], b[i + 2], b[i + 3]);
        out.extend([at(12), at(16)]);
        let ihl = usize::from(b[0] & 0x0f) * 4;
        // ICMP destination unreachable, time exceeded, parameter problem: the 8-byte ICMP
        // header, then the offending IP header.
        let quoted = ihl + 8;
        if b[9] == 1 && b.len() >= quoted + 20 && matches!(b[ihl], 3 | 11 | 12) {
            out.extend([at(quoted + 12), at(quoted + 16)]);
        }
        out
    }

    /// The UDP payload of an IPv4/UDP packet (None for anything else).
    pub fn udp_payload(&self) -> Option<Vec<u8>> {
        let b = self.bytes();
        if b.len() < 20 || b[0] >> 4 != 4 || b[9] != 17 {
            return None;
        }
        let start = usize::from(b[0] & 0x0f) * 4 + 8;
        b.get(start..).map(<[u8]>::to_vec)
    }

    /// True when the packet is a WireGuard message, whatever its ports (NATs change
    /// them): UDP whose payload starts with a message type 1 to 4 and three reserved
    /// zero bytes (WireGuard paper, section 5.4).
    pub fn is_wireguard(&self) -> bool {
        self.udp_payload()
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

    /// The packets showing an address of `range` (e.g. the pod range) in their IPv4
    /// header or in the header an ICMP error quotes.
    pub fn packets_with_addresses_in(&self, range: Ipv4Net) -> Vec<&Packet> {
        self.packets
            .iter()
            .filter(|p| p.ipv4_addresses().iter().any(|a| range.contains(a)))
            .collect()
    }

    /// True if any packet's bytes contain `needle` (e.g. a plaintext payload).
    pub fn contains_bytes(&self, needle: &[u8]) -> bool {
        !needle.is_empty()
            && self
                .packets
                .iter()
                .any(|p| p.bytes().windows(needle.len()).any(|w| w == needle))
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
/// captured packets, and the directed broadcast address of its subnet (where the end
/// marker goes; the namespace must have an address in that subnet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tap {
    pub netns: PathBuf,
    pub link: String,
    pub label: String,
    pub broadcast: Ipv4Addr,
}

/// The links of one namespace that captures can tap, each with its subnet's broadcast
/// address.
#[derive(Debug, Default)]
pub(crate) struct Taps(Mutex<BTreeMap<String, Ipv4Addr>>);

impl Taps {
    pub fn add(&self, link: &str, broadcast: Ipv4Addr) {
        self.0
            .lock()
            .expect("tap list")
            .insert(link.to_string(), broadcast);
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
        let broadcast = *taps.get(link).unwrap_or_else(|| {
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
            broadcast,
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
    let mut markers: BTreeMap<&Path, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for tap in taps {
        markers
            .entry(tap.netns.as_path())
            .or_default()
            .insert(tap.broadcast);
    }
    for (netns, broadcasts) in markers {
        let marker = token.clone().into_bytes();
        let place = netns.display().to_string();
        exec::in_netns_thread(netns, move || {
            let socket = UdpSocket::bind("0.0.0.0:0")
                .unwrap_or_else(|e| panic!("a UDP socket in {place}: {e}"));
            socket.set_broadcast(true).expect("SO_BROADCAST");
            for b in broadcasts {
                socket
                    .send_to(&marker, (b, MARKER_PORT))
                    .unwrap_or_else(|e| {
                        panic!("cannot send the capture marker to {b} from {place}: {e}")
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
        packets.extend(decode(&dump.file, &dump.tap.label, dump.tap.broadcast));
    }
    packets.sort_by(|a, b| a.time.total_cmp(&b.time));
    (result, Capture { packets })
}

fn start_tcpdump(tap: &Tap, filter: &str, file: PathBuf) -> Tcpdump {
    let (interface, broadcast) = (&tap.link, tap.broadcast);
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
            "({filter}) or (udp dst port {MARKER_PORT} and dst host {broadcast})"
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

/// Decodes a pcap file, leaving out the end marker.
fn decode(file: &Path, interface: &str, broadcast: Ipv4Addr) -> Vec<Packet> {
    let mut cmd = Command::new("tcpdump");
    cmd.args(["-r"]).arg(file).args(["-n", "-tt", "-X"]);
    let text = exec::output_ok(cmd, None);
    let marker = format!("> {broadcast}.{MARKER_PORT}: UDP");
    parse(&text, interface)
        .into_iter()
        .filter(|p| !p.summary.contains(&marker))
        .collect()
}

/// Parses `tcpdump -tt -X` output: a packet is a line starting with its timestamp,
/// followed by indented hex lines.
fn parse(text: &str, interface: &str) -> Vec<Packet> {
    let mut packets: Vec<Packet> = Vec::new();
    for line in text.lines() {
        if line.starts_with(char::is_whitespace) {
            if let Some(p) = packets.last_mut() {
                p.hex.push(line.to_string());
            }
            continue;
        }
        let (time, summary) = line.split_once(' ').unwrap_or((line, ""));
        packets.push(Packet {
            interface: interface.to_string(),
            time: time.parse().unwrap_or(0.0),
            summary: summary.to_string(),
            hex: Vec::new(),
        });
    }
    packets
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
        Packet {
            interface: "node0".into(),
            time: 0.0,
            summary: String::new(),
            hex,
        }
    }

    #[test]
    fn pod_addresses_are_found_in_headers_and_in_quoted_headers_of_icmp_errors() {
        let pods: Ipv4Net = "10.244.0.0/16".parse().unwrap();
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
