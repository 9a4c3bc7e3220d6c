//! The fast data path's edges, end to end: datagrams of every size up to the tunnel MTU
//! and beyond it, interleaved so that the batches (UDP GSO/GRO, TUN super-packets) mix
//! sizes; TCP streams hashed both ways with each offload switched off on one side; and
//! the fallback when offloads are off, against wgmesh-wg with them on and against
//! wireguard-go. Needs root.

#[path = "wireguard_helpers.rs"]
mod helpers;

use std::time::Duration;

use helpers::*;
use wgmesh_testkit::{Proc, TestNs, require_root, wait_until};

const MB: usize = 1 << 20;
/// The tunnel MTU `wg`/`ip` leave on the interfaces (the userspace default).
const MTU: usize = 1420;
/// The largest UDP payload of one unfragmented IPv4 packet through the tunnel.
const MAX_UDP: usize = MTU - 20 - 8;

const ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind((sys.argv[1], 7000))
print("listening", flush=True)
while True:
    d, a = s.recvfrom(70000)
    s.sendto(d, a)
"#;

/// Sends datagrams of the given sizes in bursts of 64 (so batches hold mixed sizes),
/// each with its index and a pattern, and waits for each echo; missing ones are sent
/// again (UDP may drop). Then, with DF set (IP_PMTUDISC_DO), a datagram of exactly
/// MAX_UDP and one byte more. Prints what it saw.
const CLIENT: &str = r#"
import json, os, socket, sys, time
addr, max_udp = sys.argv[1], int(sys.argv[2])
sizes = [int(x) for x in sys.argv[3].split(",")]
def payload(i, n):
    head = i.to_bytes(4, "big")
    body = bytes((i * 7 + k) & 0xFF for k in range(max(0, n - 4)))
    return (head + body)[:n] if n >= 4 else head[:n]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.connect((addr, 7000))
s.settimeout(0.5)
want = {i: payload(i, n) for i, n in enumerate(sizes)}
# Datagrams shorter than 4 bytes carry no index: they are matched by content.
pending, wrong, rounds = dict(want), 0, 0
deadline = time.time() + 60
while pending and time.time() < deadline:
    rounds += 1
    items = list(pending.items())
    for start in range(0, len(items), 64):
        burst = items[start:start + 64]
        for _, d in burst:
            s.send(d)
        got = 0
        while got < len(burst):
            try:
                d = s.recv(70000)
            except socket.timeout:
                break
            got += 1
            match = [i for i, w in pending.items() if w == d] if len(d) < 4 else \
                [i for i in [int.from_bytes(d[:4], "big")] if pending.get(i) == d]
            if match:
                del pending[match[0]]
            elif len(d) >= 4 and int.from_bytes(d[:4], "big") not in want:
                wrong += 1
            elif len(d) >= 4 and want.get(int.from_bytes(d[:4], "big")) != d:
                wrong += 1
df = {}
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
for n in (max_udp, max_udp + 1):
    # Sent again on a timeout: the echo may be dropped or late, like any datagram.
    for _ in range(10):
        try:
            s.send(payload(1 << 30 | n, n))
            df[n] = "sent"
            while df[n] != "echoed":
                if s.recv(70000) == payload(1 << 30 | n, n):
                    df[n] = "echoed"
            break
        except socket.timeout:
            continue
        except OSError as e:
            df[n] = os.strerror(e.errno)
            break
print(json.dumps({"missing": sorted(len(want[i]) for i in pending), "wrong": wrong,
                  "rounds": rounds, "df": {str(k): v for k, v in df.items()}}), flush=True)
"#;

/// Every size from 0 to MAX_UDP, interleaved small and large, then sizes past the MTU
/// (fragmented by the sender's kernel, reassembled by the receiver's) up to 64 KiB.
fn sizes() -> Vec<usize> {
    let mut v: Vec<usize> = (0..=MAX_UDP).collect();
    // Interleave: 0, MAX, 1, MAX-1, ... so every burst mixes sizes.
    let n = v.len();
    v = (0..n)
        .map(|k| {
            if k % 2 == 0 {
                v[k / 2]
            } else {
                v[n - 1 - k / 2]
            }
        })
        .collect();
    v.extend([MAX_UDP + 1, MTU, 1500, 3000, 8972, 9000, 32_000, 65_000]);
    v
}

/// Runs the echo exchange from `from` to `to_addr` (an echo server in `to`).
fn echo_every_size(from: &TestNs, to: &TestNs, to_addr: &str) -> serde_json::Value {
    let mut cmd = to.command("python3");
    cmd.args(["-c", ECHO, to_addr])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    let mut server = Proc::spawn(cmd, "udp echo");
    let mut out = std::io::BufReader::new(server.child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("echo server start");
    assert_eq!(line.trim(), "listening");

    let list = sizes()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let out = from.exec(
        "python3",
        ["-c", CLIENT, to_addr, &MAX_UDP.to_string(), &list],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("client JSON")
}

fn assert_every_size_passes(pair: &Pair) {
    for (from, to, addr) in [
        (&pair.under.a, &pair.under.b, B_INNER),
        (&pair.under.b, &pair.under.a, A_INNER),
    ] {
        let r = echo_every_size(from, to, addr);
        eprintln!("{} -> {addr}: {r}", from.name());
        assert_eq!(r["missing"], serde_json::json!([]), "{r}");
        assert_eq!(r["wrong"], 0, "{r}");
        // Exactly the MTU passes with DF; one byte more is refused by the sender's
        // kernel (EMSGSIZE), as on any link of that MTU.
        assert_eq!(r["df"][MAX_UDP.to_string()], "echoed", "{r}");
        assert_eq!(
            r["df"][(MAX_UDP + 1).to_string()],
            "Message too long",
            "{r}"
        );
    }
}

/// The TUN's flags as the kernel has them (IFF_VNET_HDR = 0x4000).
fn tun_vnet_hdr(node: &Node, ns: &TestNs) -> bool {
    let out = ns.exec("cat", [format!("/sys/class/net/{}/tun_flags", node.ifname)]);
    let text = String::from_utf8_lossy(&out.stdout);
    let flags = u32::from_str_radix(text.trim().trim_start_matches("0x"), 16)
        .unwrap_or_else(|e| panic!("tun_flags {text:?}: {e}"));
    flags & 0x4000 != 0
}

/// Whether `ethtool -k` shows TCP segmentation offload on for the link.
fn tso(ns: &TestNs, link: &str) -> bool {
    let out = ns.exec("ethtool", ["-k", link]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("tcp-segmentation-offload:"))
        .unwrap_or_else(|| panic!("no TSO line in ethtool -k {link}: {text}"))
        .contains(": on")
}

fn offloads_log_line(node: &Node) -> String {
    wait_until(Duration::from_secs(5), "the offloads log line", || {
        node.logs()
            .lines()
            .find(|l| l.contains("offloads"))
            .map(str::to_string)
    })
}

#[test]
fn datagrams_of_every_size_pass_between_wgmesh_wg_with_offloads() {
    require_root!();
    let pair = Pair::new(Impl::WgmeshWg, Impl::WgmeshWg);
    assert!(tun_vnet_hdr(&pair.a, &pair.under.a));
    assert!(tso(&pair.under.a, &pair.a.ifname));
    assert_eq!(node_udp_gro(&pair.a, A_PORT), [true, true]);
    assert!(offloads_log_line(&pair.a).contains("offloads on"));
    assert_every_size_passes(&pair);
}

#[test]
fn datagrams_of_every_size_pass_between_wgmesh_wg_and_wireguard_go_with_offloads() {
    require_root!();
    let pair = Pair::new(Impl::WgmeshWg, Impl::WireguardGo);
    // Our side runs with its offloads, as the kernel has them: a TUN with
    // virtio_net_hdr and TSO, UDP GRO on both sockets, and UDP GSO runs on the wire.
    assert!(tun_vnet_hdr(&pair.a, &pair.under.a));
    assert!(tso(&pair.under.a, &pair.a.ifname));
    assert_eq!(node_udp_gro(&pair.a, A_PORT), [true, true]);
    let runs = gso_runs_sent(&pair.under.a, &pair.under.veth_a, A_PORT, || {
        both_ways(&pair, 16 * MB)
    });
    eprintln!("{runs} UDP GSO runs sent to wireguard-go");
    assert!(runs > 0, "no UDP GSO run was sent to wireguard-go");
    assert_every_size_passes(&pair);
}

#[test]
fn offloads_forced_off_fall_back_to_plain_packets_and_interoperate_with_offloads_on() {
    require_root!();
    let off = [("WGMESH_OFFLOADS", "off")];
    let pair = Pair::with_env((Impl::WgmeshWg, &off), (Impl::WgmeshWg, &[]));
    let line = offloads_log_line(&pair.a);
    assert!(line.contains("offloads off"), "{line}");
    // The kernel agrees: plain packets, no virtio_net_hdr, no TSO towards the TUN.
    assert!(!tun_vnet_hdr(&pair.a, &pair.under.a));
    assert!(!tso(&pair.under.a, &pair.a.ifname));
    assert!(tun_vnet_hdr(&pair.b, &pair.under.b));
    both_ways(&pair, 32 * MB);
    assert_every_size_passes(&pair);
}

#[test]
fn offloads_forced_off_interoperate_with_wireguard_go() {
    require_root!();
    let off = [("WGMESH_OFFLOADS", "off")];
    let pair = Pair::with_env((Impl::WgmeshWg, &off), (Impl::WireguardGo, &[]));
    both_ways(&pair, 16 * MB);
}

#[test]
fn each_offload_alone_is_the_only_one_on_and_carries_tcp_both_ways_intact() {
    require_root!();
    // One side with a single offload (or none of the UDP ones), the other with all: every
    // combination of a coalescing sender and a per-packet receiver, and the reverse.
    for only in ["tun", "gso", "gro", "gso,gro"] {
        let (tun, gso, gro) = (only == "tun", only.contains("gso"), only.contains("gro"));
        let env = [("WGMESH_OFFLOADS", only)];
        let pair = Pair::with_env((Impl::WgmeshWg, &env), (Impl::WgmeshWg, &[]));
        // What the kernel has: the TUN's flags and TSO, the sockets' UDP_GRO.
        assert_eq!(tun_vnet_hdr(&pair.a, &pair.under.a), tun, "{only}");
        assert_eq!(tso(&pair.under.a, &pair.a.ifname), tun, "{only}");
        assert_eq!(node_udp_gro(&pair.a, A_PORT), [gro, gro], "{only}");
        both_ways(&pair, 16 * MB);
        // And whether UDP GSO runs leave A. Without TUN offloads a run needs several
        // packets queued on the TUN at one read, which a TCP transfer gives only as the
        // scheduler pleases (about 1 device start in 6 here sent none): a burst queued
        // while the device is stopped gives it every time.
        let runs = gso_runs_for_a_burst(&pair, 200);
        eprintln!("{only}: {runs} UDP GSO runs sent for a burst of 200");
        assert_eq!(runs > 0, gso, "{only}: {runs} UDP GSO runs sent");
    }
}

#[test]
fn an_invalid_offloads_value_is_reported_and_means_all() {
    require_root!();
    let env = [("WGMESH_OFFLOADS", "turbo")];
    let pair = Pair::with_env((Impl::WgmeshWg, &env), (Impl::WgmeshWg, &[]));
    let logs = pair.a.logs();
    assert!(
        logs.contains("WGMESH_OFFLOADS=\"turbo\": expected on, off, or a list"),
        "{logs}"
    );
    assert!(tun_vnet_hdr(&pair.a, &pair.under.a));
}

#[test]
fn an_underlay_mtu_below_the_tunnel_packets_fragments_them_instead_of_dropping_gso_runs() {
    require_root!();
    let pair = Pair::new(Impl::WgmeshWg, Impl::WgmeshWg);
    // The tunnel MTU (1420) makes 1480-byte UDP packets; an underlay of 1400 (a
    // misconfigured MTU, or a PMTU exception after an ICMP "fragmentation needed") cannot
    // carry them whole. The kernel refuses a GSO run to such an endpoint (EMSGSIZE) but
    // fragments single datagrams, as it did before GSO.
    for (ns, veth) in [
        (&pair.under.a, &pair.under.veth_a),
        (&pair.under.b, &pair.under.veth_b),
    ] {
        ns.ip(["link", "set", veth, "mtu", "1400"]);
    }
    both_ways(&pair, 16 * MB);
    assert_every_size_passes(&pair);
}

#[test]
fn a_persistent_interface_is_left_without_offloads_when_its_device_stops() {
    require_root!();
    let ns = TestNs::new("wgpo");
    let ifname = wgmesh_testkit::unique_name("wgp");
    let start = |offloads| {
        in_ns(&ns, || {
            let mut cfg = wgmesh::wireguard::DeviceConfig::new(ifname.clone());
            cfg.persist = true;
            cfg.offloads = offloads;
            wgmesh::wireguard::Device::start(cfg)
        })
        .expect("device")
    };

    let device = start(wgmesh::wireguard::Offloads::ALL);
    assert!(tso(&ns, &ifname), "offloads negotiated");
    drop(device);
    // The interface stays (the agent's restart relies on it), its offloads do not: a
    // process attaching without a virtio_net_hdr must not be handed super-packets.
    assert!(link_exists(&ns, &ifname));
    assert!(!tso(&ns, &ifname));

    // The next device negotiates them again, or runs without.
    let device = start(wgmesh::wireguard::Offloads::ALL);
    assert!(tso(&ns, &ifname));
    drop(device);
    let device = start(wgmesh::wireguard::Offloads::NONE);
    assert!(!tso(&ns, &ifname));
    drop(device);
    ns.ip(["link", "del", &ifname]);
}
