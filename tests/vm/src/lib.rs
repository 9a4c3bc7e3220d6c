//! A Linux VM for tests that need the kernel's WireGuard (test infrastructure; needs
//! root, `qemu-system-x86` and `linux-image-amd64`, which `hack/install-deps.sh`
//! installs).
//!
//! This machine's kernel has no WireGuard and KVM hangs here, so the VM is Debian's
//! kernel (6.1, with `wireguard.ko`) under QEMU's software emulation (TCG). It boots
//! in about 15 s, so every test of a process shares one VM ([`Vm::shared`]), started
//! on first use and stopped when the process exits.
//!
//! - **Root filesystem**: this machine's `/`, read-only over 9p, under an overlay whose
//!   writable layer is in the VM's memory: the VM runs the workspace's binaries, `ip`,
//!   `nft`, `wg`, `modprobe` (with the VM kernel's modules from `/lib/modules`) at the
//!   same paths as the host, and writes only to its own memory. `/run`, `/tmp`,
//!   `/etc/cni/net.d`, `/var/lib/cni` and `/var/lib/wgmesh` start empty.
//! - **Network**: the VM's `eth0` is a tap on a bridge in a network namespace of its
//!   own (`wgvm…`, deleted at exit); [`Vm::attach`] wires that bridge to a testbed
//!   router's node link, so the VM becomes one more node of a testbed.
//! - **Control**: a virtio-serial port to a guest agent (`wgmesh-vm-guest`) running
//!   commands; a relay socket in the test process lets `wgmesh-vm-exec` (what
//!   [`Exec`] for the VM runs) reach it. Commands inside the VM see `WGMESH_VM=1`.
//!
//! Tests that must run inside the VM are ordinary `#[ignore]`d tests of the same test
//! binary, run there by [`Vm::run_test`]: the binary is on the shared root.

pub mod flow;
pub mod initramfs;
pub mod node;
pub mod protocol;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use wgmesh_testbed::addressing::NodeAddresses;
use wgmesh_testbed::{Exec, Router};
use wgmesh_testkit::{Proc, TestNs, workspace_bin};

use crate::initramfs::Entry;
use crate::protocol::{Request, Response};

/// How long the VM may take to boot and answer (15 s typical, under load much more).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// The modules the initramfs loads, in order, to mount the host's root: virtio PCI,
/// 9p over virtio, overlayfs.
const INITRAMFS_MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci",
    "net/9p/9pnet",
    "fs/netfs/netfs",
    "fs/fscache/fscache",
    "net/9p/9pnet_virtio",
    "fs/9p/9p",
    "fs/overlayfs/overlay",
];
/// The VM's network interface (a virtio NIC on the tap).
pub const VM_LINK: &str = "eth0";
/// The bridge in the VM's host namespace that the tap and testbed links join.
const BRIDGE: &str = "vmbr";
const TAP: &str = "vmtap";

/// The running VM; see the crate documentation.
pub struct Vm {
    exec_socket: PathBuf,
    netns: String,
    relay: Arc<Relay>,
    kernel_release: String,
    boot_time: Duration,
    console_log: PathBuf,
}

/// What goes when the process exits: QEMU (by pid), the namespace, the files.
struct Owned {
    #[allow(dead_code, reason = "held to be killed (by pid) on drop")]
    qemu: Proc,
    netns: TestNs,
    dir: tempfile::TempDir,
}

static VM: OnceLock<Vm> = OnceLock::new();
static OWNED: Mutex<Option<Owned>> = Mutex::new(None);

extern "C" fn stop_vm_at_exit() {
    let owned = OWNED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(mut o) = owned {
        if std::env::var_os("WGMESH_VM_KEEP").is_some() {
            o.dir.disable_cleanup(true);
            eprintln!("wgmesh-vm: kept {}", o.dir.path().display());
        }
        drop(o);
    }
}

impl Vm {
    /// The VM of this process, booted on first use. Panics (with the console log) when
    /// it cannot boot.
    pub fn shared() -> &'static Vm {
        VM.get_or_init(Vm::boot)
    }

    fn boot() -> Vm {
        wgmesh_testkit::require_root!();
        let started = Instant::now();
        let (kernel, release) = find_kernel();
        let dir = tempfile::Builder::new()
            .prefix("wgmesh-vm-")
            .tempdir()
            .expect("a temporary directory for the VM");
        let initrd = dir.path().join("initrd.cpio");
        std::fs::write(&initrd, build_initramfs(&release)).expect("writing the initramfs");
        let netns = TestNs::new("wgvm");
        netns.ip(["link", "add", BRIDGE, "type", "bridge"]);
        let sysctl = |k: &str| {
            let out = netns.exec("sysctl", ["-qw", &format!("{k}=1")]);
            assert!(out.status.success(), "sysctl {k} in {}", netns.name());
        };
        sysctl("net.ipv6.conf.all.disable_ipv6");
        sysctl("net.ipv6.conf.default.disable_ipv6");
        let ctl = dir.path().join("ctl.sock");
        let console_log = dir.path().join("console.log");
        let mut qemu = Command::new("nsenter");
        qemu.arg(format!("--net=/run/netns/{}", netns.name()))
            .args(["--", "qemu-system-x86_64"])
            .args([
                "-machine", "q35", "-accel", "tcg", "-m", "1536", "-smp", "2",
            ])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", console_log.display()))
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=4"])
            .args([
                "-virtfs",
                "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            ])
            .args(["-device", "virtio-rng-pci"])
            .args(["-device", "virtio-serial-pci", "-chardev"])
            .arg(format!(
                "socket,id=ctl,path={},server=on,wait=off",
                ctl.display()
            ))
            .args(["-device", "virtserialport,chardev=ctl,name=wgmesh.ctl"])
            .args([
                "-netdev",
                &format!("tap,id=n0,ifname={TAP},script=no,downscript=no"),
            ])
            .args(["-device", "virtio-net-pci,netdev=n0,mac=52:54:00:77:67:01"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("qemu.log")).expect("qemu.log"),
            ));
        let qemu = spawn_tied_to_process(qemu);
        // From here on the process's exit stops QEMU and removes what it used.
        *OWNED.lock().unwrap_or_else(|e| e.into_inner()) = Some(Owned { qemu, netns, dir });
        // SAFETY: registering a plain extern "C" function without arguments.
        unsafe {
            libc::atexit(stop_vm_at_exit);
        }
        let (netns_name, dir_path) = {
            let owned = OWNED.lock().unwrap_or_else(|e| e.into_inner());
            let o = owned.as_ref().expect("just stored");
            (o.netns.name().to_string(), o.dir.path().to_path_buf())
        };
        let stream =
            wgmesh_testkit::wait_until(Duration::from_secs(30), "QEMU's control socket", || {
                UnixStream::connect(&ctl).ok()
            });
        let relay = Relay::start(stream);
        let exec_socket = dir_path.join("exec.sock");
        Relay::serve(&relay, &exec_socket);
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let answered = relay.call(
                Request {
                    id: 0,
                    argv: vec!["true".into()],
                    stdin: String::new(),
                },
                Duration::from_secs(2),
            );
            if answered.is_some_and(|r| r.code == 0) {
                break;
            }
            assert!(
                !relay.gone.load(Ordering::SeqCst),
                "QEMU exited before the VM answered; qemu.log:\n{}\nconsole:\n{}",
                std::fs::read_to_string(dir_path.join("qemu.log")).unwrap_or_default(),
                std::fs::read_to_string(&console_log).unwrap_or_default()
            );
            // A request the guest cannot take yet may come back at once: no busy loop.
            std::thread::sleep(Duration::from_millis(100));
            assert!(
                Instant::now() < deadline,
                "the VM did not answer within {BOOT_TIMEOUT:?}; console:\n{}",
                std::fs::read_to_string(&console_log).unwrap_or_default()
            );
        }
        let boot_time = started.elapsed();
        let run = |args: &[&str]| {
            let out = wgmesh_testkit::run_output("ip", args);
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "-n",
            &netns_name,
            "link",
            "set",
            TAP,
            "master",
            BRIDGE,
            "up",
        ]);
        run(&["-n", &netns_name, "link", "set", BRIDGE, "up"]);
        eprintln!(
            "wgmesh-vm: Linux {release} booted and answering in {:.1} s (netns {netns_name}, files in {})",
            boot_time.as_secs_f64(),
            dir_path.display()
        );
        Vm {
            exec_socket,
            netns: netns_name,
            relay,
            kernel_release: release,
            boot_time,
            console_log,
        }
    }

    /// The VM kernel's release, e.g. `6.1.0-57-amd64`.
    pub fn kernel_release(&self) -> &str {
        &self.kernel_release
    }

    /// From QEMU's start to the guest's first answer.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The network namespace holding the VM's tap and bridge.
    pub fn host_netns(&self) -> &str {
        &self.netns
    }

    /// What the VM's kernel printed on its console.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console_log).unwrap_or_default()
    }

    /// How a person runs a command in the VM while the test process runs.
    pub fn enter_command(&self) -> String {
        format!(
            "{} {} sh",
            workspace_bin("wgmesh-vm-exec").display(),
            self.exec_socket.display()
        )
    }

    /// Runs `argv` in the VM with `stdin`; panics only when the VM does not answer
    /// within `timeout`.
    pub fn run(&self, argv: &[&str], stdin: &str, timeout: Duration) -> Output {
        let req = Request {
            id: 0,
            argv: argv.iter().map(|a| a.to_string()).collect(),
            stdin: stdin.to_string(),
        };
        let resp = self.relay.call(req, timeout).unwrap_or_else(|| {
            panic!(
                "the VM did not answer {argv:?} within {timeout:?}; console tail:\n{}",
                tail(&self.console(), 30)
            )
        });
        Output {
            status: std::process::ExitStatus::from_raw((resp.code & 0xff) << 8),
            stdout: resp.stdout.into_bytes(),
            stderr: resp.stderr.into_bytes(),
        }
    }

    /// Writes `contents` to `path` in the VM (its memory).
    pub fn write_file(&self, path: &str, contents: &str) {
        let out = self.run(
            &[
                "sh",
                "-c",
                "mkdir -p \"$(dirname \"$0\")\" && cat > \"$0\"",
                path,
            ],
            contents,
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "writing {path} in the VM: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs test `name` of the calling test binary inside the VM (an `#[ignore]`d test
    /// that checks `WGMESH_VM`) and panics with its output unless it passed.
    pub fn run_test(&self, name: &str) -> String {
        let exe = std::env::current_exe().expect("the test binary's path");
        let exe = exe.to_string_lossy();
        let out = self.run(
            &[
                &exe,
                "--exact",
                name,
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ],
            "",
            Duration::from_secs(300),
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{name} failed inside the VM:\n{text}"
        );
        text
    }

    /// Puts the VM on `router`'s node link of slot `addresses.index`, as a testbed node
    /// there: a veth from the VM's bridge to the router (named as the router's other
    /// node links, and tapped by the router's captures like them), the router's and the
    /// VM's addresses, the VM's default route via the router. Undone on drop (the VM
    /// keeps no address).
    pub fn attach<'a>(&'a self, router: &'a Router, addresses: &NodeAddresses) -> Attachment<'a> {
        let router_link = wgmesh_testbed::underlay::node_link(addresses.index);
        let here = format!("vmr{}", addresses.index);
        let ip = |args: &[&str]| {
            let mut all = vec!["-n", &self.netns];
            all.extend_from_slice(args);
            wgmesh_testkit::run("ip", all);
        };
        ip(&[
            "link",
            "add",
            &here,
            "type",
            "veth",
            "peer",
            "name",
            &router_link,
            "netns",
            router.netns_name(),
        ]);
        ip(&["link", "set", &here, "master", BRIDGE, "up"]);
        router.exec_ok(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{router_link}.disable_ipv6=1"),
        ]);
        let cidr = |a| format!("{a}/{}", wgmesh_testbed::addressing::NODE_PREFIX_LEN);
        router.exec_ok(&[
            "ip",
            "addr",
            "add",
            &cidr(addresses.router_ip),
            "dev",
            &router_link,
        ]);
        router.exec_ok(&["ip", "link", "set", &router_link, "up"]);
        self.exec_ok(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{VM_LINK}.disable_ipv6=1"),
        ]);
        self.exec_ok(&["ip", "addr", "flush", "dev", VM_LINK]);
        self.exec_ok(&[
            "ip",
            "addr",
            "add",
            &cidr(addresses.underlay_ip),
            "dev",
            VM_LINK,
        ]);
        self.exec_ok(&["ip", "link", "set", VM_LINK, "up"]);
        self.exec_ok(&[
            "ip",
            "route",
            "replace",
            "default",
            "via",
            &addresses.router_ip.to_string(),
        ]);
        router.adopt_node_link(addresses);
        Attachment {
            vm: self,
            router,
            index: addresses.index,
            host_link: here,
            router_link,
            broadcast: addresses.broadcast,
        }
    }
}

/// The VM wired to a testbed router; see [`Vm::attach`].
pub struct Attachment<'a> {
    vm: &'a Vm,
    router: &'a Router,
    index: usize,
    host_link: String,
    router_link: String,
    broadcast: std::net::Ipv4Addr,
}

impl Attachment<'_> {
    /// The router's interface towards the VM, and its subnet's broadcast address
    /// (what a router capture needs).
    pub fn router_link(&self) -> (&str, std::net::Ipv4Addr) {
        (&self.router_link, self.broadcast)
    }
}

impl Drop for Attachment<'_> {
    fn drop(&mut self) {
        let _ = wgmesh_testkit::run_output(
            "ip",
            ["-n", &self.vm.netns, "link", "delete", &self.host_link],
        );
        let _ = self.vm.exec(&["ip", "addr", "flush", "dev", VM_LINK]);
        self.router.detach_node(self.index);
    }
}

/// Commands in the VM, through `wgmesh-vm-exec`.
impl Exec for Vm {
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(workspace_bin("wgmesh-vm-exec"));
        cmd.arg(&self.exec_socket).arg(program);
        cmd
    }

    fn place(&self) -> &str {
        "the VM"
    }
}

/// Starts `cmd` from a thread that never ends, with SIGKILL as its parent-death
/// signal: the kernel then kills it when this process dies however it dies (the signal
/// follows the thread that forked, not the process, hence the thread).
fn spawn_tied_to_process(mut cmd: Command) -> Proc {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("wgmesh-vm-parent".into())
        .spawn(move || {
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let _ = tx.send(Proc::spawn(cmd, "qemu-system-x86_64"));
            loop {
                std::thread::park();
            }
        })
        .expect("a thread to own QEMU");
    rx.recv().expect("QEMU started")
}

/// The newest Debian kernel image with a WireGuard module: `WGMESH_VM_KERNEL` (a
/// vmlinuz path) or `/boot/vmlinuz-*` whose `/lib/modules/<release>` holds
/// `wireguard.ko`. Returns its path and release.
fn find_kernel() -> (PathBuf, String) {
    let has_wireguard = |release: &str| {
        Path::new(&format!(
            "/lib/modules/{release}/kernel/drivers/net/wireguard/wireguard.ko"
        ))
        .exists()
    };
    if let Some(path) = std::env::var_os("WGMESH_VM_KERNEL") {
        let path = PathBuf::from(path);
        let release = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .unwrap_or_else(|| {
                panic!(
                    "WGMESH_VM_KERNEL={} is not a vmlinuz-<release>",
                    path.display()
                )
            })
            .to_string();
        return (path, release);
    }
    let mut found: Vec<String> = std::fs::read_dir("/boot")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("vmlinuz-")
                        .map(String::from)
                })
                .filter(|r| has_wireguard(r))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    let release = found.pop().unwrap_or_else(|| {
        panic!(
            "no /boot/vmlinuz-<release> with /lib/modules/<release>/.../wireguard.ko: \
             install linux-image-amd64 and qemu-system-x86 (hack/install-deps.sh does)"
        )
    });
    (PathBuf::from(format!("/boot/vmlinuz-{release}")), release)
}

/// The initramfs: busybox, the modules of [`INITRAMFS_MODULES`], `/init` (mounts the
/// host's root under an overlay and switches to it) and the second stage it hands
/// over to (mounts, the control port's module, the guest agent).
fn build_initramfs(release: &str) -> Vec<u8> {
    let read = |p: &str| std::fs::read(p).unwrap_or_else(|e| panic!("cannot read {p}: {e}"));
    let modules: Vec<&str> = INITRAMFS_MODULES
        .iter()
        .map(|m| m.rsplit('/').next().unwrap_or(m))
        .collect();
    let init = format!(
        r#"#!/bin/busybox sh
export PATH=/bin
busybox mount -t proc proc /proc
busybox mount -t sysfs sys /sys
busybox mount -t devtmpfs dev /dev
for m in {modules}; do
  busybox insmod /modules/$m.ko || {{ echo "wgmesh-vm: insmod $m failed"; busybox poweroff -f; }}
done
busybox mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /lower \
  || {{ echo "wgmesh-vm: cannot mount the host's root"; busybox poweroff -f; }}
busybox mount -t tmpfs rw /rw
busybox mkdir -p /rw/upper /rw/work
busybox cp /stage2 /rw/upper/wgmesh-vm-stage2
busybox mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work root /newroot \
  || {{ echo "wgmesh-vm: overlay failed"; busybox poweroff -f; }}
exec busybox switch_root /newroot /bin/sh /wgmesh-vm-stage2
"#,
        modules = modules.join(" ")
    );
    let guest = workspace_bin("wgmesh-vm-guest");
    // Directories that start empty in the VM, except one holding the workspace (a
    // checkout under /tmp would otherwise hide the binaries the VM runs).
    let fresh: Vec<&str> = [
        "/run",
        "/tmp",
        "/etc/cni/net.d",
        "/var/lib/cni",
        "/var/lib/wgmesh",
    ]
    .into_iter()
    .filter(|d| !guest.starts_with(d))
    .collect();
    // The host's own shell and tools (busybox's shell runs its applets instead).
    let stage2 = format!(
        r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts
# What udev would add: nft -f /dev/stdin (the nftables crate) needs it.
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
for d in {fresh}; do
  mkdir -p $d && mount -t tmpfs tmpfs $d
done
hostname wgmesh-vm
ip link set lo up
# tun: the userspace WireGuard backend's device (no udev here to load it on demand).
for m in virtio_console virtio_net virtio_rng tun; do modprobe $m; done
{guest} 2>/dev/console &
# PID 1 reaps every orphan.
while :; do wait; sleep 1; done
"#,
        guest = guest.display(),
        fresh = fresh.join(" ")
    );
    let mut entries = vec![
        Entry::Dir("bin"),
        Entry::Dir("dev"),
        Entry::Dir("proc"),
        Entry::Dir("sys"),
        Entry::Dir("lower"),
        Entry::Dir("rw"),
        Entry::Dir("newroot"),
        Entry::Dir("modules"),
        Entry::File {
            path: "bin/busybox".into(),
            mode: 0o755,
            data: read("/bin/busybox"),
        },
        Entry::File {
            path: "init".into(),
            mode: 0o755,
            data: init.into_bytes(),
        },
        Entry::File {
            path: "stage2".into(),
            mode: 0o755,
            data: stage2.into_bytes(),
        },
    ];
    for m in INITRAMFS_MODULES {
        let name = m.rsplit('/').next().unwrap_or(m);
        entries.push(Entry::File {
            path: format!("modules/{name}.ko"),
            mode: 0o644,
            data: read(&format!("/lib/modules/{release}/kernel/{m}.ko")),
        });
    }
    initramfs::newc(&entries)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Requests to the guest agent, answers matched by id; also serves `wgmesh-vm-exec`
/// clients on a unix socket.
struct Relay {
    writer: Mutex<UnixStream>,
    pending: Mutex<HashMap<u64, mpsc::Sender<Response>>>,
    next: AtomicU64,
    gone: AtomicBool,
}

impl Relay {
    fn start(stream: UnixStream) -> Arc<Relay> {
        let reader = stream.try_clone().expect("a reader on the control socket");
        let relay = Arc::new(Relay {
            writer: Mutex::new(stream),
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            gone: AtomicBool::new(false),
        });
        let r = Arc::clone(&relay);
        std::thread::Builder::new()
            .name("wgmesh-vm-reader".into())
            .spawn(move || {
                for line in BufReader::new(reader).lines() {
                    let Ok(line) = line else { break };
                    let Ok(resp) = serde_json::from_str::<Response>(&line) else {
                        continue;
                    };
                    let waiter = r
                        .pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&resp.id);
                    if let Some(tx) = waiter {
                        let _ = tx.send(resp);
                    }
                }
                // QEMU is gone: nobody waits for an answer that cannot come.
                r.gone.store(true, Ordering::SeqCst);
                r.pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
            })
            .expect("the VM reader thread");
        relay
    }

    /// Sends `req` (with a fresh id) and waits up to `timeout` for its answer.
    fn call(&self, mut req: Request, timeout: Duration) -> Option<Response> {
        if self.gone.load(Ordering::SeqCst) {
            return None;
        }
        req.id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req.id, tx);
        let text = serde_json::to_string(&req).expect("a request serializes");
        {
            let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            if writeln!(w, "{text}").is_err() {
                return None;
            }
        }
        let answer = rx.recv_timeout(timeout).ok();
        if answer.is_none() {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&req.id);
        }
        answer
    }

    /// Accepts `wgmesh-vm-exec` clients at `path`: one request, one answer each.
    fn serve(relay: &Arc<Relay>, path: &Path) {
        let listener = UnixListener::bind(path)
            .unwrap_or_else(|e| panic!("cannot listen on {}: {e}", path.display()));
        let relay = Arc::clone(relay);
        std::thread::Builder::new()
            .name("wgmesh-vm-relay".into())
            .spawn(move || {
                for client in listener.incoming().flatten() {
                    let relay = Arc::clone(&relay);
                    std::thread::spawn(move || {
                        let mut line = String::new();
                        let Ok(mut reader) = client.try_clone().map(BufReader::new) else {
                            return;
                        };
                        if reader.read_line(&mut line).is_err() {
                            return;
                        }
                        let Ok(req) = serde_json::from_str::<Request>(&line) else {
                            return;
                        };
                        // Generous: an agent's whole test run may go through one command.
                        if let Some(resp) = relay.call(req, Duration::from_secs(600)) {
                            let text = serde_json::to_string(&resp).expect("a response serializes");
                            let mut client = client;
                            let _ = writeln!(client, "{text}");
                        }
                    });
                }
            })
            .expect("the VM relay thread");
    }
}
