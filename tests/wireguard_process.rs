//! The wgmesh-wg process contract (wg-quick, daemonizing, exiting, errors), the UAPI's
//! handling of bad input, its socket's mode and connection limit, the device's handling
//! of bad datagrams, its packet threads' restarts, and the in-process configuration API
//! the agent uses. Needs root.

#[path = "wireguard_helpers.rs"]
mod helpers;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use helpers::*;
use wgmesh::key::PrivateKey;
use wgmesh::telemetry::{Readiness, Telemetry};
use wgmesh::wireguard::{Device, DeviceConfig, DropReason, PeerConfig, ThreadKind};
use wgmesh_testkit::{Proc, TestNs, require_root, run_output, unique_name, wait_until};

/// Kills a daemon we did not spawn (by its pid only) if the test ends early.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            // SAFETY: kill(2) on the one pid this test started (through wg-quick).
            unsafe {
                libc::kill(self.0 as i32, libc::SIGKILL);
            }
        }
    }
}

fn exited(proc: &mut Proc, timeout: Duration) -> std::process::ExitStatus {
    wait_until(timeout, "the process to exit", || {
        proc.child.try_wait().ok().flatten()
    })
}

#[test]
fn wg_quick_brings_wgmesh_wg_up_as_its_userspace_implementation_and_down_again() {
    require_root!();
    let under = Underlay::new();
    let b = Node::start(Impl::WireguardGo, &under.b);
    let key = PrivateKey::generate().unwrap();
    let ifname = unique_name("wq");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join(format!("{ifname}.conf"));
    let text = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = {A_PORT}\nAddress = {A_INNER}/24\n\n\
         [Peer]\nPublicKey = {}\nEndpoint = {B_UNDER}:{B_PORT}\nAllowedIPs = {B_INNER}/32\n\
         PersistentKeepalive = 25\n",
        key.to_base64().as_str(),
        b.public()
    );
    std::fs::write(&conf, text).unwrap();
    let a_public = key.public_key().to_base64();
    configure(
        &b,
        &under.b,
        B_PORT,
        B_INNER,
        &a_public,
        &format!("{A_UNDER}:{A_PORT}"),
        A_INNER,
    );

    let bin_dir = std::path::Path::new(wgmesh_wg()).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let wg_quick = |verb: &str| {
        let out = under
            .a
            .command("wg-quick")
            .arg(verb)
            .arg(&conf)
            .env("WG_QUICK_USERSPACE_IMPLEMENTATION", "wgmesh-wg")
            .env("PATH", &path)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "wg-quick {verb} failed:\n{log}");
        log
    };
    let log = wg_quick("up");
    assert!(
        log.contains("wgmesh-wg"),
        "wg-quick did not use wgmesh-wg:\n{log}"
    );
    let pid = find_daemon(&ifname).expect("the wgmesh-wg daemon");
    let _guard = KillOnDrop(pid);
    wait_until(Duration::from_secs(15), "a ping through the tunnel", || {
        under.a.ping(B_INNER).then_some(())
    });
    assert!(b.dump()[0].latest_handshake > 0);

    wg_quick("down");
    assert!(!link_exists(&under.a, &ifname));
    wait_until(Duration::from_secs(5), "the daemon to exit", || {
        (!alive(pid)).then_some(())
    });
    assert!(!uapi_path(&ifname).exists());
}

#[test]
fn the_daemonizing_parent_exits_zero_only_once_the_interface_and_socket_are_ready() {
    require_root!();
    let ns = TestNs::new("wgtd");
    let ifname = unique_name("wd");
    let out = ns.exec(wgmesh_wg(), [ifname.as_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = find_daemon(&ifname).expect("the daemon");
    let _guard = KillOnDrop(pid);
    // No waiting: both must be there when the parent has exited.
    assert!(link_exists(&ns, &ifname));
    assert!(uapi_request(&ifname, "get=1\n\n").ends_with("errno=0\n\n"));
    ns.ip(["link", "del", &ifname]);
    wait_until(Duration::from_secs(5), "the daemon to exit", || {
        (!alive(pid)).then_some(())
    });
}

#[test]
fn the_daemonizing_parent_exits_non_zero_with_the_error_when_startup_fails() {
    require_root!();
    let ns = TestNs::new("wgte");
    let out = ns.exec(wgmesh_wg(), ["bad/name"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid interface name"), "{err}");
}

#[test]
fn wgmesh_wg_exits_and_removes_its_socket_when_its_interface_is_deleted() {
    require_root!();
    let ns = TestNs::new("wgtx");
    let mut node = Node::start(Impl::WgmeshWg, &ns);
    ns.ip(["link", "del", &node.ifname]);
    assert!(
        exited(&mut node.proc, Duration::from_secs(5)).success(),
        "{}",
        node.logs()
    );
    assert!(!uapi_path(&node.ifname).exists());
}

#[test]
fn wgmesh_wg_exits_and_removes_its_interface_when_its_uapi_socket_is_deleted() {
    require_root!();
    let ns = TestNs::new("wgtk");
    let mut node = Node::start(Impl::WgmeshWg, &ns);
    std::fs::remove_file(uapi_path(&node.ifname)).unwrap();
    assert!(
        exited(&mut node.proc, Duration::from_secs(5)).success(),
        "{}",
        node.logs()
    );
    assert!(!link_exists(&ns, &node.ifname));
}

#[test]
fn a_fwmark_set_with_wg_marks_both_udp_sockets_and_zero_clears_it() {
    require_root!();
    let ns = TestNs::new("wgtf");
    let node = Node::start(Impl::WgmeshWg, &ns);
    node.set_key_and_port(A_PORT);
    let sockets = || {
        let out = ns.exec("ss", ["-u", "-a", "-n", "-e", "sport", "=", ":51820"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    node.wg(&["set", &node.ifname, "fwmark", "0x1234"]);
    assert_eq!(node.wg(&["show", &node.ifname, "fwmark"]).trim(), "0x1234");
    let marked = sockets();
    assert_eq!(marked.matches("fwmark:0x1234").count(), 2, "{marked}");
    assert!(marked.contains("v6only:1"), "{marked}");
    node.wg(&["set", &node.ifname, "fwmark", "0"]);
    assert_eq!(node.wg(&["show", &node.ifname, "fwmark"]).trim(), "off");
    assert!(!sockets().contains("fwmark:"), "{}", sockets());
}

#[test]
fn wgmesh_wg_exits_and_removes_its_socket_and_interface_on_sigterm_and_sigint() {
    require_root!();
    let ns = TestNs::new("wgts");
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut node = Node::start(Impl::WgmeshWg, &ns);
        node.proc.signal(signal);
        assert!(
            exited(&mut node.proc, Duration::from_secs(5)).success(),
            "{}",
            node.logs()
        );
        assert!(!uapi_path(&node.ifname).exists());
        assert!(!link_exists(&ns, &node.ifname));
    }
}

#[test]
fn without_dev_net_tun_wgmesh_wg_fails_with_a_clear_error() {
    require_root!();
    let ns = TestNs::new("wgtn");
    let script = "mount -t tmpfs none /dev/net && exec \"$0\" -f wgnotun0";
    let out = ns.exec(
        "unshare",
        [
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            wgmesh_wg(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/dev/net/tun is not available"), "{err}");
}

#[test]
fn a_listen_port_in_use_is_refused_with_eaddrinuse_and_changes_nothing() {
    require_root!();
    let ns = TestNs::new("wgtp");
    let node = Node::start(Impl::WgmeshWg, &ns);
    node.set_key_and_port(A_PORT);
    let mut holder = ns.command("python3");
    holder
        .args([
            "-c",
            "import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
                s.bind(('0.0.0.0', 51900)); print('ok', flush=True); time.sleep(60)",
        ])
        .stdout(Stdio::piped());
    let mut holder = Proc::spawn(holder, "port holder");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let out = run_output(
        "ip",
        [
            "netns",
            "exec",
            ns.name(),
            "wg",
            "set",
            &node.ifname,
            "listen-port",
            "51900",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Address already in use"), "{err}");
    assert_eq!(
        node.wg(&["show", &node.ifname, "listen-port"]).trim(),
        A_PORT.to_string()
    );
}

#[test]
fn malformed_uapi_transactions_get_the_errno_and_change_nothing() {
    require_root!();
    let ns = TestNs::new("wgtu");
    let node = Node::start(Impl::WgmeshWg, &ns);
    node.set_key_and_port(A_PORT);
    let peer = PrivateKey::generate().unwrap().public_key();
    node.wg(&[
        "set",
        &node.ifname,
        "peer",
        &peer.to_base64(),
        "endpoint",
        "192.0.2.2:51821",
        "allowed-ips",
        "10.244.0.2/32",
    ]);
    let before = uapi_request(&node.ifname, "get=1\n\n");
    assert!(before.ends_with("errno=0\n\n"), "{before}");

    let pk = peer.to_hex();
    let cases = [
        // A base64 key where hex is expected.
        (
            format!("set=1\npublic_key={}\n\n", peer.to_base64()),
            "errno=-22\n\n",
        ),
        (
            format!("set=1\npublic_key={}\n\n", "zz".repeat(32)),
            "errno=-22\n\n",
        ),
        // A good line before a bad endpoint: neither applies.
        (
            format!("set=1\nlisten_port=1234\npublic_key={pk}\nendpoint=192.0.2.9\n\n"),
            "errno=-22\n\n",
        ),
        (
            format!("set=1\npublic_key={pk}\nendpoint=[2001:db8::1]\n\n"),
            "errno=-22\n\n",
        ),
        (
            "set=1\nlisten_port=1234\nno_such_key=1\n\n".to_string(),
            "errno=-22\n\n",
        ),
        (
            format!("set=1\npublic_key={pk}\nallowed_ip=10.244.9.0/24\nprotocol_version=2\n\n"),
            "errno=-22\n\n",
        ),
        (
            "set=1\nlisten_port=1234\nthis line has no equals sign\n\n".to_string(),
            "errno=-71\n\n",
        ),
    ];
    for (request, want) in &cases {
        assert_eq!(&uapi_request(&node.ifname, request), want, "{request:?}");
    }
    assert_eq!(
        uapi_request(&node.ifname, "get=1\n\n"),
        before,
        "the configuration changed"
    );
    // And the real tool still reads and changes it.
    node.wg(&["set", &node.ifname, "listen-port", "51830"]);
    assert_eq!(
        node.wg(&["show", &node.ifname, "listen-port"]).trim(),
        "51830"
    );
}

/// The UDP payloads of an Ethernet/IPv4 pcap file.
fn udp_payloads(pcap: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= pcap.len() {
        let len = u32::from_le_bytes(pcap[off + 8..off + 12].try_into().unwrap()) as usize;
        let frame = &pcap[off + 16..(off + 16 + len).min(pcap.len())];
        off += 16 + len;
        if frame.len() > 42 && frame[12..14] == [0x08, 0x00] {
            let udp = 14 + usize::from(frame[14] & 0x0f) * 4;
            out.push(frame[udp + 8..].to_vec());
        }
    }
    out
}

/// A device started in-process in A (as the agent does), peered through the API with a
/// wgmesh-wg in B that `wg` configures.
fn in_process_pair() -> (Underlay, Device, Node) {
    let under = Underlay::new();
    let b = Node::start(Impl::WgmeshWg, &under.b);
    let key = PrivateKey::generate().unwrap();
    let a_public = key.public_key().to_base64();
    let ifname = unique_name("wgi");
    let dev = in_ns(&under.a, || {
        let mut cfg = DeviceConfig::new(ifname.clone());
        cfg.listen_port = A_PORT;
        cfg.private_key = Some(key);
        Device::start(cfg)
    })
    .expect("device");
    dev.set_peer(PeerConfig {
        endpoint: Some(format!("{B_UNDER}:{B_PORT}").parse().unwrap()),
        allowed_ips: vec![format!("{B_INNER}/32").parse().unwrap()],
        ..PeerConfig::new(b.key.public_key())
    })
    .unwrap();
    under
        .a
        .ip(["addr", "add", &format!("{A_INNER}/24"), "dev", &ifname]);
    under.a.ip(["link", "set", &ifname, "up"]);
    configure(
        &b,
        &under.b,
        B_PORT,
        B_INNER,
        &a_public,
        &format!("{A_UNDER}:{A_PORT}"),
        A_INNER,
    );
    wait_until(Duration::from_secs(10), "a ping through the tunnel", || {
        under.a.ping(B_INNER).then_some(())
    });
    (under, dev, b)
}

#[test]
fn the_in_process_api_runs_a_device_that_a_wg_configured_peer_talks_to() {
    require_root!();
    let (under, dev, b) = in_process_pair();
    let peer = b.key.public_key();
    let first = dev.peer_stats(&peer).unwrap();
    assert!(first.last_handshake.is_some() && first.rx_bytes > 0 && first.tx_bytes > 0);

    // Update in place: new allowed IPs and the same endpoint keep the session.
    dev.set_peer(PeerConfig {
        endpoint: Some(format!("{B_UNDER}:{B_PORT}").parse().unwrap()),
        allowed_ips: vec![
            format!("{B_INNER}/32").parse().unwrap(),
            "10.244.8.0/24".parse().unwrap(),
        ],
        ..PeerConfig::new(peer)
    })
    .unwrap();
    assert!(under.a.ping(B_INNER));
    let status = dev.peer(&peer).unwrap();
    assert_eq!(
        status.stats.last_handshake, first.last_handshake,
        "session kept"
    );
    assert_eq!(status.config.allowed_ips.len(), 2);

    // A rebind asked from this (root-namespace) thread happens in the device's namespace.
    let port = dev.set_listen_port(A_PORT + 10).unwrap();
    assert_eq!(port, A_PORT + 10);
    let ep = format!("{A_UNDER}:{port}");
    b.wg(&[
        "set",
        &b.ifname,
        "peer",
        &dev.public_key().unwrap().to_base64(),
        "endpoint",
        &ep,
    ]);
    wait_until(Duration::from_secs(10), "a ping after the rebind", || {
        under.a.ping(B_INNER).then_some(())
    });
    // The old sockets' receivers ended as retired, not as dead threads.
    assert_eq!(
        dev.threads().snapshot().iter().map(|(_, n)| n).sum::<u64>(),
        0
    );
    assert!(dev.threads_alive());

    // A port in use is a clear error that names it.
    let taken = in_ns(&under.a, || {
        let mut cfg = DeviceConfig::new(unique_name("wgi"));
        cfg.listen_port = port;
        Device::start(cfg).err().map(|e| e.to_string())
    });
    assert_eq!(taken, Some(format!("UDP port {port} is already in use")));

    assert!(dev.remove_peer(&peer).unwrap());
    assert!(dev.status().peers.is_empty());
    assert!(!under.a.ping(B_INNER));
    wait_until(
        Duration::from_secs(10),
        "the ping counted as NoRoute",
        || (dev.drops().get(DropReason::NoRoute) > 0).then_some(()),
    );
}

#[test]
fn forged_replayed_and_garbage_datagrams_are_dropped_and_counted_and_the_device_keeps_working() {
    require_root!();
    let (under, dev, b) = in_process_pair();
    let peer = b.key.public_key();

    // Record a few genuine data messages from B to A.
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("b-to-a.pcap");
    let filter = format!("udp and src port {B_PORT} and greater 100");
    let mut cmd = under.b.command("tcpdump");
    cmd.args(["-i", &under.veth_b, "-s", "0", "-U", "-c", "3", "-w"])
        .arg(&pcap)
        .arg(&filter)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut tcpdump = Proc::spawn(cmd, "tcpdump");
    wait_for_capture(&pcap);
    wait_until(
        Duration::from_secs(20),
        "three data messages captured",
        || {
            under.a.ping(B_INNER);
            tcpdump.child.try_wait().ok().flatten()
        },
    );
    let genuine = udp_payloads(&std::fs::read(&pcap).unwrap());
    assert!(
        !genuine.is_empty() && genuine[0][0] == 4,
        "no data message captured"
    );

    let mut fresh_counter = genuine[0].clone();
    fresh_counter[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let mut unknown_index = genuine[0].clone();
    unknown_index[4..8].copy_from_slice(&[0xff; 4]);
    let mut fake_init = vec![0x5a; 148];
    fake_init[..4].copy_from_slice(&[1, 0, 0, 0]);
    let mut fake_response = vec![0x5a; 92];
    fake_response[..4].copy_from_slice(&[2, 0, 0, 0]);
    let datagrams: Vec<Vec<u8>> = vec![
        genuine[0].clone(), // replayed
        fresh_counter,      // forged: the tag does not match
        unknown_index,      // for no session of ours
        fake_init,          // handshake with a bad MAC
        fake_response,      // handshake with a bad MAC
        b"hello".to_vec(),  // garbage
        vec![0x77; 1000],   // garbage
        Vec::new(),         // empty
    ];
    let target: SocketAddr = format!("{A_UNDER}:{A_PORT}").parse().unwrap();
    let before = dev.drops().snapshot();
    in_ns(&under.b, || {
        let s = UdpSocket::bind("192.0.2.2:40000").unwrap();
        for d in &datagrams {
            s.send_to(d, target).unwrap();
        }
    });
    let counted = |r: DropReason| {
        let was = before.iter().find(|(x, _)| *x == r).map_or(0, |(_, n)| *n);
        dev.drops().get(r) - was
    };
    wait_until(Duration::from_secs(5), "the drops to be counted", || {
        (counted(DropReason::Malformed) >= 3).then_some(())
    });
    assert!(counted(DropReason::Replayed) >= 1);
    assert!(
        counted(DropReason::Unauthenticated) >= 3,
        "{:?}",
        dev.drops().snapshot()
    );
    assert!(counted(DropReason::UnknownPeer) >= 1);

    let stats = dev.peer_stats(&peer).unwrap();
    assert_eq!(
        stats.endpoint,
        Some(format!("{B_UNDER}:{B_PORT}").parse().unwrap()),
        "no roaming to a forger"
    );
    assert!(under.a.ping(B_INNER), "the device keeps working");
}

#[test]
fn a_packet_thread_that_panics_is_counted_and_restarted_and_traffic_flows_on() {
    require_root!();
    let (under, dev, _b) = in_process_pair();
    let dev = Arc::new(dev);
    let telemetry = Telemetry::new(
        Readiness::ControlPlaneOnly,
        "/nonexistent".into(),
        Duration::from_secs(30),
    );
    telemetry.set_device(Some(wgmesh::dataplane::backend::WgDevice::Userspace(
        Arc::clone(&dev),
    )));
    assert!(dev.threads_alive());
    // The IPv6 receiver wakes only for an IPv6 datagram: A's loopback gets IPv6 back.
    sysctl(&under.a, "net.ipv6.conf.lo.disable_ipv6", "0");
    let wake_udp6 = || {
        in_ns(&under.a, || {
            let s = UdpSocket::bind("[::1]:0").unwrap();
            s.send_to(b"wake up", ("::1", A_PORT)).unwrap();
        })
    };
    for kind in ThreadKind::ALL {
        let before = dev.threads().snapshot();
        // Traffic crosses every thread of A while one dies: a paced TCP stream to B.
        let transfer = Transfer::start(&under.a, &under.b, B_INNER, 2 << 20, 1 << 20);
        dev.inject_fault(kind);
        wait_until(Duration::from_secs(20), "the thread's restart", || {
            if kind == ThreadKind::Udp6 {
                wake_udp6();
            }
            (dev.threads().restarts(kind) > 0).then_some(())
        });
        wait_until(Duration::from_secs(10), "every thread running", || {
            dev.threads_alive().then_some(())
        });
        assert_eq!(
            transfer.finish(Duration::from_secs(60)),
            2 << 20,
            "{kind:?}"
        );
        assert!(under.a.ping(B_INNER), "{kind:?}");
        // That thread, once; no other.
        for ((k, was), (_, now)) in before.iter().zip(dev.threads().snapshot()) {
            assert_eq!(now, was + u64::from(*k == kind), "restarts of {k:?}");
        }
        let line = format!(
            "wgmesh_dataplane_thread_restarts_total{{thread=\"{}\"}} 1",
            kind.as_str()
        );
        // /metrics text is re-encoded at most once a second.
        wait_until(Duration::from_secs(5), &line, || {
            telemetry.encode().lines().any(|l| l == line).then_some(())
        });
    }
}

/// The threads of process `pid` named `name` (comm).
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim_end() == name)
                })
                .count()
        })
        .unwrap_or(0)
}

/// The threads of `pid` once it serves no UAPI connection. A connection thread is named
/// only once running: until then it has the accept thread's name, wg-uapi.
fn threads_without_connections(pid: u32) -> usize {
    wait_until(Duration::from_secs(20), "no UAPI connection served", || {
        let idle = threads_named(pid, "wg-uapi-conn") == 0 && threads_named(pid, "wg-uapi") == 1;
        idle.then(|| threads_of(pid))
    })
}

fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|t| t.count())
        .unwrap_or(0)
}

#[test]
fn serve_uapi_leaves_an_owner_only_socket_and_nothing_else() {
    require_root!();
    let ns = TestNs::new("wguo");
    let dir = tempfile::tempdir().unwrap();
    let dev = in_ns(&ns, || Device::start(DeviceConfig::new(unique_name("wgu")))).unwrap();
    let path = dev.serve_uapi(dir.path(), false).unwrap();
    // That it never had a wider mode is uapi_socket's unit test (inotify).
    let mode = std::fs::symlink_metadata(&path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o600);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(names, std::slice::from_ref(&path));
    assert!(uapi_request_at(&path, "get=1\n\n").ends_with("errno=0\n\n"));
}

/// One raw UAPI request to the socket at `path`; the whole answer.
fn uapi_request_at(path: &Path, request: &str) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    read_answer(s, Duration::from_secs(5))
}

/// Reads a UAPI answer up to its `errno=` line and the blank line after it.
fn read_answer(s: UnixStream, timeout: Duration) -> String {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut reader = BufReader::new(s);
    let mut answer = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(n) if n > 0 => answer.push_str(&line),
            other => panic!("answer cut short ({other:?}) after {answer:?}"),
        }
        if line.starts_with("errno=") {
            let mut blank = String::new();
            let _ = reader.read_line(&mut blank);
            answer.push_str(&blank);
            return answer;
        }
    }
}

#[test]
fn silent_uapi_clients_beyond_the_limit_wait_without_threads_and_a_client_is_served_once_slots_free()
 {
    require_root!();
    // uapi_server::MAX_CLIENTS.
    const LIMIT: usize = 16;
    let ns = TestNs::new("wgul");
    let node = Node::start(Impl::WgmeshWg, &ns);
    let sock = uapi_path(&node.ifname);
    let pid = node.proc.pid();
    // Node::start probed the socket: once a request of ours is answered, the server
    // accepted that earlier connection too (in order), and its thread goes.
    assert!(uapi_request_at(&sock, "get=1\n\n").ends_with("errno=0\n\n"));
    let idle_threads = threads_without_connections(pid);

    let mut silent: Vec<UnixStream> = (0..LIMIT + 5)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    wait_until(Duration::from_secs(10), "the first clients served", || {
        let settled = threads_named(pid, "wg-uapi") == 1;
        (settled && threads_named(pid, "wg-uapi-conn") >= LIMIT).then_some(())
    });
    // A well-behaved client, queued behind the silent ones: not answered while they
    // hold every slot (they time out only after 10 s).
    let mut client = UnixStream::connect(&sock).unwrap();
    client.write_all(b"get=1\n\n").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let early = client.read(&mut [0u8; 1]);
    assert!(
        early
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "answered while the server is full: {early:?}"
    );
    assert_eq!(threads_named(pid, "wg-uapi-conn"), LIMIT);
    assert_eq!(threads_of(pid), idle_threads + LIMIT);

    // The first six hang up: their slots go to the five silent ones queued next, then
    // to the client.
    silent.drain(..6);
    let answer = read_answer(client, Duration::from_secs(5));
    assert!(
        answer.contains("listen_port=") && answer.ends_with("errno=0\n\n"),
        "{answer}"
    );

    drop(silent);
    assert!(node.wg(&["show", &node.ifname]).contains("listening port"));
    assert_eq!(threads_without_connections(pid), idle_threads);
}

#[test]
fn with_net_admin_alone_the_listen_port_can_be_changed_over_the_uapi() {
    require_root!();
    // The agent's container has CAP_NET_ADMIN and nothing else: changing the port
    // rebinds the sockets in the device's namespace, which must not need setns(2)
    // (CAP_SYS_ADMIN) when the thread is in it already.
    let ns = TestNs::new("wgtc");
    let ifname = unique_name("wc");
    let caps = "-all,+net_admin";
    let out = ns.exec(
        "setpriv",
        [
            &format!("--inh-caps={caps}"),
            &format!("--ambient-caps={caps}"),
            &format!("--bounding-set={caps}"),
            "--",
            wgmesh_wg(),
            ifname.as_str(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = find_daemon(&ifname).expect("the daemon");
    let _guard = KillOnDrop(pid);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    assert_eq!(effective, "0000000000001000", "CAP_NET_ADMIN (bit 12) only");
    let answer = uapi_request(&ifname, "set=1\nlisten_port=51999\n\n");
    assert_eq!(answer, "errno=0\n\n");
    assert!(
        uapi_request(&ifname, "get=1\n\n").contains("listen_port=51999\n"),
        "the port changed"
    );
    ns.ip(["link", "del", &ifname]);
}
