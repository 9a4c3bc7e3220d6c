//! Shared scaffolding of the WireGuard integration tests (included with `#[path]`; as its
//! own test target it has no tests). Test-only code.
//!
//! Underlay: two namespaces joined by a veth, 192.0.2.1/24 (A) and 192.0.2.2/24 (B),
//! IPv6 off so captures hold only what the tunnel sends. Tunnels use 10.244.0.1 (A) and
//! 10.244.0.2 (B). Everything is configured with the real `wg` and `ip` tools.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wgmesh::key::PrivateKey;
use wgmesh_testkit::{Proc, TestNs, run, run_output, unique_name, wait_until};

pub const A_UNDER: &str = "192.0.2.1";
pub const B_UNDER: &str = "192.0.2.2";
pub const A_PORT: u16 = 51820;
pub const B_PORT: u16 = 51821;
pub const A_INNER: &str = "10.244.0.1";
pub const B_INNER: &str = "10.244.0.2";

pub fn wgmesh_wg() -> &'static str {
    env!("CARGO_BIN_EXE_wgmesh-wg")
}

/// Two namespaces and the veth between them.
pub struct Underlay {
    pub a: TestNs,
    pub b: TestNs,
    pub veth_a: String,
    pub veth_b: String,
}

impl Default for Underlay {
    fn default() -> Self {
        Self::new()
    }
}

impl Underlay {
    pub fn new() -> Underlay {
        let a = TestNs::new("wgta");
        let b = TestNs::new("wgtb");
        let veth_a = unique_name("va");
        let veth_b = unique_name("vb");
        run(
            "ip",
            [
                "link",
                "add",
                &veth_a,
                "netns",
                a.name(),
                "type",
                "veth",
                "peer",
                "name",
                &veth_b,
                "netns",
                b.name(),
            ],
        );
        for ns in [&a, &b] {
            sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1");
            sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1");
        }
        a.ip(["addr", "add", &format!("{A_UNDER}/24"), "dev", &veth_a]);
        b.ip(["addr", "add", &format!("{B_UNDER}/24"), "dev", &veth_b]);
        a.ip(["link", "set", &veth_a, "up"]);
        b.ip(["link", "set", &veth_b, "up"]);
        Underlay {
            a,
            b,
            veth_a,
            veth_b,
        }
    }
}

pub fn sysctl(ns: &TestNs, key: &str, value: &str) {
    let out = ns.exec("sysctl", ["-q", "-w", &format!("{key}={value}")]);
    assert!(
        out.status.success(),
        "sysctl {key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    WgmeshWg,
    WireguardGo,
}

/// A userspace WireGuard process in a namespace, in the foreground, and its keys.
pub struct Node {
    pub ns: String,
    pub ifname: String,
    pub key: PrivateKey,
    pub proc: Proc,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Node {
    pub fn start(imp: Impl, ns: &TestNs) -> Node {
        Node::start_with_env(imp, ns, &[])
    }

    /// Starts with extra environment variables (e.g. `WGMESH_OFFLOADS`).
    pub fn start_with_env(imp: Impl, ns: &TestNs, env: &[(&str, &str)]) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let ifname = unique_name("wg");
        let log = dir.path().join("stderr.log");
        let mut cmd = ns.command(match imp {
            Impl::WgmeshWg => wgmesh_wg(),
            Impl::WireguardGo => "wireguard-go",
        });
        cmd.arg("-f")
            .arg(&ifname)
            .env("RUST_LOG", "info")
            .env("LOG_LEVEL", "error")
            .env("WG_PROCESS_FOREGROUND", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let mut proc = Proc::spawn(cmd, &format!("{imp:?} {ifname}"));
        let sock = uapi_path(&ifname);
        wait_until(Duration::from_secs(10), "the UAPI socket", || {
            assert!(proc.is_running(), "{imp:?} exited: {}", read(&log));
            UnixStream::connect(&sock).ok().map(|_| ())
        });
        Node {
            ns: ns.name().to_string(),
            ifname,
            key: PrivateKey::generate().expect("key"),
            proc,
            log,
            _dir: dir,
        }
    }

    pub fn public(&self) -> String {
        self.key.public_key().to_base64()
    }

    /// Runs `wg <args>` in the node's namespace and returns stdout; panics on failure.
    pub fn wg(&self, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", self.ns.as_str(), "wg"];
        all.extend_from_slice(args);
        run("ip", all)
    }

    /// Sets the private key from a file, as wg wants it.
    pub fn set_key_and_port(&self, port: u16) {
        let path = self._dir.path().join("key");
        std::fs::write(&path, self.key.to_base64().as_str()).expect("key file");
        let path = path.to_string_lossy().into_owned();
        self.wg(&[
            "set",
            &self.ifname,
            "private-key",
            &path,
            "listen-port",
            &port.to_string(),
        ]);
    }

    pub fn dump(&self) -> Vec<PeerDump> {
        parse_dump(&self.wg(&["show", &self.ifname, "dump"]))
    }

    pub fn logs(&self) -> String {
        read(&self.log)
    }
}

pub fn uapi_path(ifname: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"))
}

fn read(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// One peer line of `wg show IF dump`.
#[derive(Debug, Clone)]
pub struct PeerDump {
    pub public_key: String,
    pub endpoint: String,
    pub allowed_ips: String,
    pub latest_handshake: u64,
    pub rx: u64,
    pub tx: u64,
}

pub fn parse_dump(text: &str) -> Vec<PeerDump> {
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert!(f.len() >= 8, "unexpected dump line {l:?}");
            PeerDump {
                public_key: f[0].into(),
                endpoint: f[2].into(),
                allowed_ips: f[3].into(),
                latest_handshake: f[4].parse().expect("handshake"),
                rx: f[5].parse().expect("rx"),
                tx: f[6].parse().expect("tx"),
            }
        })
        .collect()
}

/// Runs `f` on a thread inside `ns` (what the in-process `Device` API needs).
pub fn in_ns<T: Send>(ns: &TestNs, f: impl FnOnce() -> T + Send) -> T {
    wgmesh::netlink::NetNs::open(ns.path())
        .expect("netns")
        .run(f)
        .expect("thread")
}

/// Waits until a `tcpdump -U -w pcap` captures: it writes the file header only then.
pub fn wait_for_capture(pcap: &Path) {
    wait_until(Duration::from_secs(10), "tcpdump to start", || {
        std::fs::metadata(pcap)
            .ok()
            .filter(|m| m.len() > 0)
            .map(|_| ())
    });
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Two nodes on an underlay, peered and addressed, with a first ping through.
pub struct Pair {
    pub under: Underlay,
    pub a: Node,
    pub b: Node,
}

impl Pair {
    pub fn new(ia: Impl, ib: Impl) -> Pair {
        Pair::with_env((ia, &[]), (ib, &[]))
    }

    /// Like [`Pair::new`], each side started with its own extra environment.
    pub fn with_env(a: (Impl, &[(&str, &str)]), b: (Impl, &[(&str, &str)])) -> Pair {
        let under = Underlay::new();
        let a = Node::start_with_env(a.0, &under.a, a.1);
        let b = Node::start_with_env(b.0, &under.b, b.1);
        configure(
            &a,
            &under.a,
            A_PORT,
            A_INNER,
            &b.public(),
            &format!("{B_UNDER}:{B_PORT}"),
            B_INNER,
        );
        configure(
            &b,
            &under.b,
            B_PORT,
            B_INNER,
            &a.public(),
            &format!("{A_UNDER}:{A_PORT}"),
            A_INNER,
        );
        let pair = Pair { under, a, b };
        pair.wait_for_ping();
        pair
    }

    pub fn wait_for_ping(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.under.a.ping(B_INNER) {
            assert!(
                Instant::now() < deadline,
                "no ping through the tunnel\nA: {}\nB: {}",
                self.a.logs(),
                self.b.logs()
            );
        }
    }
}

/// A hashed TCP transfer of `bytes` from A to B, then from B to A.
pub fn both_ways(pair: &Pair, bytes: usize) {
    let t = Transfer::start(&pair.under.a, &pair.under.b, B_INNER, bytes, 0);
    assert_eq!(t.finish(Duration::from_secs(120)), bytes);
    let t = Transfer::start(&pair.under.b, &pair.under.a, A_INNER, bytes, 0);
    assert_eq!(t.finish(Duration::from_secs(120)), bytes);
}

/// Gives `node` its key and port, one peer, and its tunnel address.
pub fn configure(
    node: &Node,
    ns: &TestNs,
    port: u16,
    inner: &str,
    peer_public: &str,
    endpoint: &str,
    peer_inner: &str,
) {
    node.set_key_and_port(port);
    add_peer(node, peer_public, endpoint, peer_inner);
    bring_up(node, ns, inner);
}

/// Adds the peer at `endpoint` whose tunnel address is `peer_inner`.
pub fn add_peer(node: &Node, peer_public: &str, endpoint: &str, peer_inner: &str) {
    let allowed = format!("{peer_inner}/32");
    node.wg(&[
        "set",
        &node.ifname,
        "peer",
        peer_public,
        "endpoint",
        endpoint,
        "allowed-ips",
        &allowed,
    ]);
}

/// Gives `node`'s interface its tunnel address and sets it up.
pub fn bring_up(node: &Node, ns: &TestNs, inner: &str) {
    ns.ip(["addr", "add", &format!("{inner}/24"), "dev", &node.ifname]);
    ns.ip(["link", "set", &node.ifname, "up"]);
}

const SERVER: &str = r#"
import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
h, n = hashlib.sha256(), 0
while True:
    d = c.recv(1 << 20)
    if not d:
        break
    h.update(d)
    n += len(d)
print(n, h.hexdigest(), flush=True)
"#;

const CLIENT: &str = r#"
import hashlib, random, socket, sys, time
addr, port, total, rate, marker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5].encode()
rng, h, sent, t0 = random.Random(4), hashlib.sha256(), 0, time.time()
s = socket.create_connection((addr, port), timeout=60)
while sent < total:
    d = bytearray(rng.randbytes(min(65536, total - sent)))
    d[:len(marker)] = marker[:len(d)]
    s.sendall(d)
    h.update(d)
    sent += len(d)
    if rate > 0:
        ahead = sent / rate - (time.time() - t0)
        if ahead > 0:
            time.sleep(ahead)
s.shutdown(socket.SHUT_WR)
s.recv(1)
print(sent, h.hexdigest(), flush=True)
"#;

/// A TCP transfer of pseudo-random bytes (with `marker` at the start of every 64 KiB)
/// from one namespace to an address in another, checked by SHA-256 at both ends.
pub struct Transfer {
    server: Proc,
    client: Proc,
    server_out: BufReader<std::process::ChildStdout>,
    port: u16,
}

pub const MARKER: &str = "WGMESH-CLEARTEXT-MARKER-7f3a9c";

impl Transfer {
    /// `rate` in bytes per second, 0 = as fast as possible.
    pub fn start(from: &TestNs, to: &TestNs, to_addr: &str, bytes: usize, rate: usize) -> Transfer {
        let port = 5201;
        let mut cmd = to.command("python3");
        cmd.args(["-c", SERVER, to_addr, &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut server = Proc::spawn(cmd, "transfer server");
        let stdout = server.child.stdout.take().expect("server stdout");
        let mut server_out = BufReader::new(stdout);
        let mut line = String::new();
        server_out.read_line(&mut line).expect("server start");
        assert_eq!(line.trim(), "listening");
        let mut cmd = from.command("python3");
        cmd.args([
            "-c",
            CLIENT,
            to_addr,
            &port.to_string(),
            &bytes.to_string(),
            &rate.to_string(),
            MARKER,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
        let client = Proc::spawn(cmd, "transfer client");
        Transfer {
            server,
            client,
            server_out,
            port,
        }
    }

    /// Waits for both ends and checks that what arrived is what was sent.
    pub fn finish(mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        while self.client.is_running() {
            assert!(
                Instant::now() < deadline,
                "transfer did not finish in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut sent = String::new();
        if let Some(mut out) = self.client.child.stdout.take() {
            let _ = out.read_to_string(&mut sent);
        }
        let mut received = String::new();
        let _ = self.server_out.read_line(&mut received);
        assert!(!sent.trim().is_empty(), "the client failed");
        assert_eq!(sent.trim(), received.trim(), "bytes and SHA-256 differ");
        let _ = self.port;
        sent.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

/// One raw UAPI request; returns the whole answer.
pub fn uapi_request(ifname: &str, request: &str) -> String {
    let mut s = UnixStream::connect(uapi_path(ifname)).expect("connect to UAPI");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("write request");
    let mut reader = BufReader::new(s);
    let mut answer = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        answer.push_str(&line);
        if line.starts_with("errno=") {
            let mut blank = String::new();
            let _ = reader.read_line(&mut blank);
            answer.push_str(&blank);
            break;
        }
    }
    answer
}

/// The pid of the wgmesh-wg process serving `ifname` (for daemons we did not start).
pub fn find_daemon(ifname: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_ours = args.first().is_some_and(|a| a.ends_with(b"wgmesh-wg"))
            && args.contains(&ifname.as_bytes());
        is_ours.then_some(pid)
    })
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            state != Some("Z")
        })
        .unwrap_or(false)
}

pub fn link_exists(ns: &TestNs, ifname: &str) -> bool {
    run_output("ip", ["-n", ns.name(), "link", "show", ifname])
        .status
        .success()
}

pub fn command_in(ns: &TestNs, program: &str) -> Command {
    ns.command(program)
}

/// The UDP sockets process `pid` has bound to `port`, duplicated into this process with
/// pidfd_getfd(2) (root), so the kernel can be asked about them.
pub fn udp_sockets_of(pid: u32, port: u16) -> Vec<OwnedFd> {
    // SAFETY: pidfd_open has no memory preconditions; the result is checked.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(
        pidfd >= 0,
        "pidfd_open {pid}: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor we own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("/proc/PID/fd") {
        let entry = entry.expect("fd entry");
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
        let Some(target) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: pidfd_getfd has no memory preconditions; the result is checked.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
        if fd < 0 {
            continue;
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let s = socket2::SockRef::from(&fd);
        let udp = s.protocol().ok().flatten() == Some(socket2::Protocol::UDP);
        let bound = s
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|a| a.port() == port);
        if udp && bound {
            found.push(fd);
        }
    }
    found
}

/// Whether UDP_GRO is on for a UDP socket, as the kernel has it.
pub fn udp_gro_on(socket: &OwnedFd) -> bool {
    const SOL_UDP: libc::c_int = 17;
    const UDP_GRO: libc::c_int = 104;
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into a live c_int.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            SOL_UDP,
            UDP_GRO,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(
        r,
        0,
        "getsockopt UDP_GRO: {}",
        std::io::Error::last_os_error()
    );
    v != 0
}

/// UDP_GRO on each of the node's sockets on `port` (IPv4 and IPv6).
pub fn node_udp_gro(node: &Node, port: u16) -> Vec<bool> {
    let sockets = udp_sockets_of(node.proc.pid(), port);
    assert_eq!(sockets.len(), 2, "the node's UDP sockets on port {port}");
    sockets.iter().map(udp_gro_on).collect()
}

/// Counts the UDP packets longer than any single tunnel datagram (1480 bytes at the
/// userspace MTU) that `ns` sends from `port` out of `link` while `during` runs. Only UDP
/// GSO makes them: the veth hands a GSO run on unsegmented, so the capture sees it whole.
pub fn gso_runs_sent(ns: &TestNs, link: &str, port: u16, during: impl FnOnce()) -> usize {
    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = dir.path().join("gso.pcap");
    let filter = format!("udp and src port {port} and greater 1600");
    let mut cmd = ns.command("tcpdump");
    // Immediate mode: otherwise packets wait in the capture buffer for up to a second,
    // and a short burst would be lost when tcpdump is stopped.
    cmd.args(["-i", link, "-s", "64", "-U", "--immediate-mode", "-w"])
        .arg(&pcap)
        .arg(&filter)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut tcpdump = Proc::spawn(cmd, "tcpdump");
    wait_for_capture(&pcap);
    during();
    tcpdump.signal(libc::SIGINT);
    wait_until(Duration::from_secs(10), "tcpdump to exit", || {
        tcpdump.child.try_wait().ok().flatten()
    });
    pcap_records(&std::fs::read(&pcap).expect("pcap"))
}

const BURST: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    s.sendto(b"x" * 1200, (sys.argv[1], 9))
"#;

/// The UDP GSO runs A sends for a burst of `count` datagrams (1,200 bytes to B's
/// discard port) queued on its TUN while its device is stopped (SIGSTOP): then the
/// burst is there at one read, whatever the scheduling, and with UDP GSO it leaves as
/// runs. Returns once A has sent the whole burst.
pub fn gso_runs_for_a_burst(pair: &Pair, count: usize) -> usize {
    let sent_before = pair.a.dump()[0].tx;
    gso_runs_sent(&pair.under.a, &pair.under.veth_a, A_PORT, || {
        pair.a.proc.signal(libc::SIGSTOP);
        let queued = pair
            .under
            .a
            .exec("python3", ["-c", BURST, B_INNER, &count.to_string()]);
        pair.a.proc.signal(libc::SIGCONT);
        assert!(
            queued.status.success(),
            "{}",
            String::from_utf8_lossy(&queued.stderr)
        );
        let burst = (count * 1200) as u64;
        wait_until(Duration::from_secs(10), "A to send the burst", || {
            (pair.a.dump()[0].tx >= sent_before + burst).then_some(())
        });
    })
}

/// The number of packets in a pcap file.
pub fn pcap_records(pcap: &[u8]) -> usize {
    let mut n = 0;
    let mut off = 24;
    while off + 16 <= pcap.len() {
        let len = u32::from_le_bytes(pcap[off + 8..off + 12].try_into().expect("4 bytes"));
        off += 16 + len as usize;
        n += 1;
    }
    n
}
