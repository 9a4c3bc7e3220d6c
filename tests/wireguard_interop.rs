//! wgmesh-wg against itself and against wireguard-go, over a veth underlay between two
//! network namespaces, configured only with `wg` and `ip`. Needs root.

#[path = "wireguard_helpers.rs"]
mod helpers;

use std::process::Stdio;
use std::time::{Duration, Instant};

use helpers::*;
use wgmesh_testkit::{Proc, TestNs, require_root, wait_until};

const MB: usize = 1 << 20;

#[test]
fn wgmesh_wg_and_wgmesh_wg_ping_and_carry_50_mb_both_ways_intact() {
    require_root!();
    let pair = Pair::new(Impl::WgmeshWg, Impl::WgmeshWg);
    assert!(pair.under.b.ping(A_INNER));
    both_ways(&pair, 50 * MB);
}

#[test]
fn wgmesh_wg_and_wireguard_go_ping_and_carry_50_mb_both_ways_intact() {
    require_root!();
    let pair = Pair::new(Impl::WgmeshWg, Impl::WireguardGo);
    assert!(pair.under.b.ping(A_INNER));
    both_ways(&pair, 50 * MB);
}

#[test]
fn wg_show_on_both_sides_agrees_on_the_handshake_and_the_bytes() {
    require_root!();
    let pair = Pair::new(Impl::WgmeshWg, Impl::WireguardGo);
    both_ways(&pair, 10 * MB);
    // TCP's closing packets may still cross after the transfers: compare the counters
    // once two readings of both sides in a row agree.
    let mut last = None;
    let (a, b) = wait_until(Duration::from_secs(10), "the counters to settle", || {
        let now = (pair.a.dump()[0].clone(), pair.b.dump()[0].clone());
        let counters = (now.0.tx, now.0.rx, now.1.tx, now.1.rx);
        let settled = last == Some(counters);
        last = Some(counters);
        settled.then_some(now)
    });
    let (a, b) = (&a, &b);
    let now = unix_now();
    for (side, p) in [("wgmesh-wg", a), ("wireguard-go", b)] {
        assert!(
            p.latest_handshake > 0 && now.abs_diff(p.latest_handshake) < 60,
            "{side}: handshake at {} is not within a minute of {now}",
            p.latest_handshake
        );
    }
    assert!(
        a.latest_handshake.abs_diff(b.latest_handshake) <= 2,
        "{a:?} vs {b:?}"
    );
    // Both count WireGuard datagram bytes, so what one received the other sent. The
    // receiver can count less: Debian's wireguard-go overflows its UDP receive buffer at
    // these rates (UdpRcvbufErrors in nstat) and TCP resends, so a gap is real loss.
    for (sent, received) in [(a.tx, b.rx), (b.tx, a.rx)] {
        assert!(received >= 10 * MB as u64, "{a:?} {b:?}");
        assert!(received <= sent, "received {received} > sent {sent}");
        assert!(
            received as f64 >= 0.5 * sent as f64,
            "sent {sent} vs received {received}"
        );
    }
    // Within the handshake's own second wg prints "Now": look one second later.
    wait_until(
        Duration::from_secs(5),
        "a second past the handshake",
        || (unix_now() > a.latest_handshake).then_some(()),
    );
    let human = pair.a.wg(&["show", &pair.a.ifname]);
    assert!(human.contains("second") && human.contains("ago"), "{human}");
    assert!(!human.contains("year"), "{human}");
}

#[test]
fn wg_set_endpoint_and_allowed_ips_mid_transfer_keep_the_session_and_removing_the_peer_stops_it() {
    require_root!();
    let pair = Pair::new(Impl::WgmeshWg, Impl::WireguardGo);
    let (a, b) = (&pair.a, &pair.b);
    // B is reachable on a second underlay address too.
    pair.under
        .b
        .ip(["addr", "add", "198.51.100.2/24", "dev", &pair.under.veth_b]);
    pair.under
        .a
        .ip(["addr", "add", "198.51.100.1/24", "dev", &pair.under.veth_a]);
    let before = a.dump()[0].clone();

    let t = Transfer::start(&pair.under.a, &pair.under.b, B_INNER, 16 * MB, 4 * MB);
    std::thread::sleep(Duration::from_secs(1));
    // Roaming follows every authenticated packet (as in kernel WireGuard), so one of B's
    // packets still in flight on the old path would rightly move A back, and with B
    // following A, for good. B leaves the old path for A's traffic before A is told.
    let rule = format!(
        "table inet moved {{ chain input {{ type filter hook input priority 0; \
         ip saddr {B_UNDER} meta l4proto udp drop; }}; }}"
    );
    let out = pair.under.a.exec("nft", [&rule]);
    assert!(out.status.success(), "nft {rule}: {out:?}");
    a.wg(&[
        "set",
        &a.ifname,
        "peer",
        &b.public(),
        "endpoint",
        &format!("198.51.100.2:{B_PORT}"),
    ]);
    std::thread::sleep(Duration::from_secs(1));
    let ips = format!("{B_INNER}/32,10.244.7.0/24");
    a.wg(&["set", &a.ifname, "peer", &b.public(), "allowed-ips", &ips]);
    t.finish(Duration::from_secs(60));

    let after = a.dump()[0].clone();
    assert_eq!(after.endpoint, format!("198.51.100.2:{B_PORT}"));
    assert_eq!(after.allowed_ips, "10.244.0.2/32,10.244.7.0/24");
    assert_eq!(
        after.latest_handshake, before.latest_handshake,
        "the session was kept"
    );
    assert!(
        after.tx > before.tx + 16 * MB as u64,
        "counters kept counting"
    );
    // wireguard-go followed A's packets to B's new address: they come from A's new one.
    assert_eq!(b.dump()[0].endpoint, format!("198.51.100.1:{A_PORT}"));

    a.wg(&["set", &a.ifname, "peer", &b.public(), "remove"]);
    assert!(a.dump().is_empty());
    assert!(!pair.under.a.ping(B_INNER), "traffic stops with the peer");
}

#[test]
fn a_peer_that_moves_to_a_new_underlay_address_mid_transfer_is_followed() {
    require_root!();
    let pair = Pair::new(Impl::WgmeshWg, Impl::WgmeshWg);
    pair.under
        .b
        .ip(["addr", "add", "198.51.100.2/24", "dev", &pair.under.veth_b]);

    let t = Transfer::start(&pair.under.a, &pair.under.b, B_INNER, 24 * MB, 6 * MB);
    std::thread::sleep(Duration::from_millis(1500));
    // A moves: its old address goes away, the new one reaches B's old one on the link.
    let (ns, veth) = (&pair.under.a, &pair.under.veth_a);
    ns.ip(["addr", "add", "198.51.100.1/24", "dev", veth]);
    ns.ip(["addr", "del", &format!("{A_UNDER}/24"), "dev", veth]);
    ns.ip([
        "route",
        "add",
        "192.0.2.0/24",
        "dev",
        veth,
        "src",
        "198.51.100.1",
    ]);
    t.finish(Duration::from_secs(60));

    let b_view = pair.b.dump()[0].clone();
    assert_eq!(b_view.endpoint, format!("198.51.100.1:{A_PORT}"));
    assert!(pair.under.b.ping(A_INNER), "B reaches A at its new address");
}

#[test]
fn the_underlay_carries_only_udp_between_the_listen_ports_never_the_payload() {
    require_root!();
    let pair = Pair::new(Impl::WgmeshWg, Impl::WgmeshWg);
    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = dir.path().join("underlay.pcap");
    let mut cmd = pair.under.b.command("tcpdump");
    cmd.args([
        "-i",
        &pair.under.veth_b,
        "-s",
        "0",
        "-U",
        "--immediate-mode",
        "-n",
        // 32 MiB of ring buffer: the whole transfer fits even if tcpdump is starved.
        "-B",
        "32768",
        "-w",
    ])
    .arg(&pcap)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut tcpdump = Proc::spawn(cmd, "tcpdump");
    wait_for_capture(&pcap);

    // Paced so that tcpdump keeps up and sees every packet.
    let t = Transfer::start(&pair.under.a, &pair.under.b, B_INNER, 8 * MB, 8 * MB);
    t.finish(Duration::from_secs(60));
    let t = Transfer::start(&pair.under.b, &pair.under.a, A_INNER, 8 * MB, 8 * MB);
    t.finish(Duration::from_secs(60));
    // Control: a datagram sent in clear over the underlay shows up in the capture.
    let control = "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\
        .sendto(b'CONTROL-' + b'WGMESH', ('192.0.2.2', 9))";
    let sent = pair.under.a.exec("python3", ["-c", control]);
    assert!(sent.status.success());
    let contains = |raw: &[u8], needle: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
    let captured = |needle: &[u8]| contains(&std::fs::read(&pcap).unwrap_or_default(), needle);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !captured(b"CONTROL-WGMESH") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    tcpdump.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tcpdump.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut summary = String::new();
    if let Some(mut err) = tcpdump.child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut summary);
    }
    let raw = std::fs::read(&pcap).expect("capture");
    assert!(
        contains(&raw, b"CONTROL-WGMESH"),
        "the capture holds payloads: {summary}"
    );
    let leaked = contains(&raw, helpers::MARKER.as_bytes());
    assert!(!leaked, "inner payload visible on the underlay");

    let text = wgmesh_testkit::run("tcpdump", ["-r", pcap.to_str().unwrap_or(""), "-n", "-q"]);
    let ports = [
        format!("{A_UNDER}.{A_PORT} > {B_UNDER}.{B_PORT}: UDP"),
        format!("{B_UNDER}.{B_PORT} > {A_UNDER}.{A_PORT}: UDP"),
    ];
    // With UDP GSO (and GRO) a capture on the veth holds runs of datagrams as one
    // record ("length" is the run's payload), as it holds TCP super-packets with TSO:
    // count bytes, not records.
    let mut tunnel_bytes = 0usize;
    for line in text.lines() {
        let control = line.contains(".9: UDP") || line.contains("udp port 9 unreachable");
        if line.contains(" ARP,") || control {
            continue;
        }
        assert!(
            ports.iter().any(|p| line.contains(p.as_str())),
            "unexpected packet: {line}"
        );
        tunnel_bytes += line
            .rsplit("length ")
            .next()
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or(0);
    }
    assert!(
        tunnel_bytes > 16 * MB,
        "only {tunnel_bytes} bytes of tunnel traffic captured for 16 MiB carried ({summary})"
    );
}

#[test]
fn ipv6_endpoints_complete_a_handshake_over_the_ipv6_socket() {
    require_root!();
    // Both ends in one namespace, talking over [::1]: only the handshake is checked.
    let ns = TestNs::new("wgt6");
    let a = Node::start(Impl::WgmeshWg, &ns);
    let b = Node::start(Impl::WgmeshWg, &ns);
    a.set_key_and_port(A_PORT);
    b.set_key_and_port(B_PORT);
    for (me, peer, port) in [(&a, &b, B_PORT), (&b, &a, A_PORT)] {
        let ep = format!("[::1]:{port}");
        me.wg(&[
            "set",
            &me.ifname,
            "peer",
            &peer.public(),
            "endpoint",
            &ep,
            "persistent-keepalive",
            "1",
        ]);
    }
    wait_until(Duration::from_secs(10), "a handshake over IPv6", || {
        let (da, db) = (a.dump(), b.dump());
        (da[0].latest_handshake > 0 && db[0].latest_handshake > 0).then_some(())
    });
    assert_eq!(b.dump()[0].endpoint, format!("[::1]:{A_PORT}"));
}

#[test]
fn wg_showconf_setconf_and_syncconf_round_trip_the_configuration() {
    require_root!();
    let pair = Pair::new(Impl::WgmeshWg, Impl::WireguardGo);
    let a = &pair.a;
    let dir = tempfile::tempdir().expect("tempdir");
    let shown = a.wg(&["showconf", &a.ifname]);
    for want in [
        "PrivateKey = ",
        "ListenPort = 51820",
        "PublicKey = ",
        "AllowedIPs = 10.244.0.2/32",
    ] {
        assert!(shown.contains(want), "{want} missing from\n{shown}");
    }
    assert!(
        shown.contains(&format!("Endpoint = {B_UNDER}:{B_PORT}")),
        "{shown}"
    );
    let original = dir.path().join("original.conf");
    std::fs::write(&original, &shown).expect("write");
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();

    // setconf replaces everything with the same configuration: traffic resumes.
    a.wg(&["setconf", &a.ifname, &path(&original)]);
    assert_eq!(a.wg(&["showconf", &a.ifname]), shown);
    pair.wait_for_ping();

    // syncconf changes only the difference: the existing peer keeps its session.
    let handshake = a.dump()[0].latest_handshake;
    let extra = wgmesh::key::PrivateKey::generate().unwrap().public_key();
    let changed = shown.replace(
        "AllowedIPs = 10.244.0.2/32",
        "AllowedIPs = 10.244.0.2/32, 10.244.7.0/24",
    ) + &format!("\n[Peer]\nPublicKey = {extra}\nAllowedIPs = 10.244.9.0/24\n");
    let changed_path = dir.path().join("changed.conf");
    std::fs::write(&changed_path, changed).expect("write");
    a.wg(&["syncconf", &a.ifname, &path(&changed_path)]);
    let peers = a.dump();
    assert_eq!(peers.len(), 2);
    let b_peer = peers
        .iter()
        .find(|p| p.public_key == pair.b.public())
        .expect("peer B");
    assert_eq!(b_peer.allowed_ips, "10.244.0.2/32,10.244.7.0/24");
    assert_eq!(b_peer.latest_handshake, handshake, "the session was kept");
    assert!(pair.under.a.ping(B_INNER));

    a.wg(&["syncconf", &a.ifname, &path(&original)]);
    assert_eq!(a.wg(&["showconf", &a.ifname]), shown);
}

#[test]
fn an_interface_set_down_and_up_again_keeps_its_device_running() {
    require_root!();
    let mut pair = Pair::new(Impl::WgmeshWg, Impl::WgmeshWg);
    let b_if = pair.b.ifname.clone();
    pair.under.b.ip(["link", "set", &b_if, "down"]);
    assert!(!pair.under.a.ping(B_INNER));
    assert!(pair.b.proc.is_running(), "{}", pair.b.logs());
    pair.under.b.ip(["link", "set", &b_if, "up"]);
    pair.wait_for_ping();
    assert!(pair.b.proc.is_running());
}

/// A node that joins sends its initiation as soon as it knows a peer, often before the
/// peer knows it: that initiation is answered when the peer is added (within
/// REKEY_TIMEOUT), not only the initiator's retry 5 s later. The initiator here is
/// wireguard-go; the capture shows it needed only the one initiation.
#[test]
fn an_initiation_that_came_before_its_peer_was_added_is_answered_when_it_is() {
    require_root!();
    let under = Underlay::new();
    let a = Node::start(Impl::WgmeshWg, &under.a);
    let b = Node::start(Impl::WireguardGo, &under.b);
    a.set_key_and_port(A_PORT);
    bring_up(&a, &under.a, A_INNER);
    let a_endpoint = format!("{A_UNDER}:{A_PORT}");
    configure(
        &b,
        &under.b,
        B_PORT,
        B_INNER,
        &a.public(),
        &a_endpoint,
        A_INNER,
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = dir.path().join("underlay.pcap");
    let mut cmd = under.a.command("tcpdump");
    cmd.args(["-i", &under.veth_a, "-n", "-U", "--immediate-mode", "-w"])
        .arg(&pcap)
        .arg("udp")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let tcpdump = Proc::spawn(cmd, "tcpdump");
    wait_for_capture(&pcap);
    let count = |filter: &str| {
        let text =
            wgmesh_testkit::run("tcpdump", ["-r", pcap.to_str().unwrap_or(""), "-n", filter]);
        text.lines().count()
    };
    let initiations = format!("src host {B_UNDER} and udp[8] = 1");
    let responses = format!("src host {A_UNDER} and udp[8] = 2");

    // B's packet starts its handshake; A does not know B yet and drops it.
    let mut ping = under.b.command("ping");
    ping.args(["-c", "1", "-W", "20", A_INNER])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let ping = Proc::spawn(ping, "ping");
    wait_until(
        Duration::from_secs(10),
        "B's initiation on the wire",
        || (count(&initiations) >= 1).then_some(()),
    );
    assert_eq!(count(&responses), 0, "A answered a key it does not know");

    add_peer(&a, &b.public(), &format!("{B_UNDER}:{B_PORT}"), B_INNER);
    wait_until(Duration::from_secs(20), "a handshake on B", || {
        (b.dump().first()?.latest_handshake > 0).then_some(())
    });
    // The capture may write the answer a moment after B has it.
    wait_until(Duration::from_secs(10), "A's answer in the capture", || {
        (count(&responses) >= 1).then_some(())
    });
    let (sent, answered) = (count(&initiations), count(&responses));
    ping.signal(libc::SIGTERM);
    tcpdump.signal(libc::SIGTERM);
    assert_eq!(
        (sent, answered),
        (1, 1),
        "B's first initiation was answered, no retry was needed\nA: {}",
        a.logs()
    );
}
