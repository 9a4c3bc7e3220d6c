//! The process that holds a node's namespaces (test infrastructure).
//!
//! A node is a network namespace plus a private mount namespace in which `/run`,
//! `/etc/cni`, `/var/lib/wgmesh` and `/var/lib/cni` are fresh tmpfs mounts, so the agent
//! and the plugin run with their production default paths (`/etc/cni/net.d`,
//! `/var/lib/wgmesh`, `/var/lib/cni/networks`, `/var/run/wireguard`, and the node's own
//! `/run/netns` for pod namespaces) without seeing the host's or another node's files.
//!
//! The holder is `nsenter --net=<node netns> -- unshare --mount --propagation slave --
//! sh -c '<mounts>; exec sleep infinity'` (neither nsenter nor unshare forks, so its pid
//! is the pid of every stage). Everything else enters the node with
//! `nsenter --target <holder pid> --mount --net`, and the testbed reads the node's files
//! through `/proc/<holder pid>/root/...`.
//!
//! Slave propagation, not private: the new mount namespace starts with copies of the
//! host's `/run/netns/*` mounts (other tests' namespaces among them). As slaves they are
//! unmounted when the host unmounts them (`ip netns delete`), so a node never keeps
//! another test's namespace alive; nothing mounted inside a node propagates back.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wgmesh_testkit::Proc;

use crate::exec;

/// The directories a node gets privately, with the tmpfs mode of each.
pub const PRIVATE_DIRS: [(&str, &str); 4] = [
    ("/run", "0755"),
    ("/etc/cni", "0755"),
    ("/var/lib/wgmesh", "0700"),
    ("/var/lib/cni", "0700"),
];

/// The holder process of one node.
#[derive(Debug)]
pub struct Holder {
    proc: Option<Proc>,
    pid: u32,
    /// (device, inode) of the node's mount namespace: identifies processes inside it.
    mount_ns: (u64, u64),
    /// Keeps the mount namespace alive as long as this value: a dead namespace's inode
    /// number is reused by new namespaces, and `terminate` must never match another
    /// testbed's node.
    _mount_ns_pin: std::fs::File,
}

impl Holder {
    /// Starts the holder inside the network namespace at `netns_path` and waits until its
    /// mounts are in place. `label` names the tmpfs mounts; stderr goes to `log`.
    pub fn start(netns_path: &Path, label: &str, log: &Path) -> Holder {
        ensure_host_mount_points();
        let mut script = String::from("set -e\n");
        for (dir, mode) in PRIVATE_DIRS {
            let source = format!("{label}{}", dir.replace('/', "-"));
            script.push_str(&format!("mount -t tmpfs -o mode={mode} {source} {dir}\n"));
        }
        // The conflist directory lives inside the private /etc/cni.
        script.push_str("mkdir -p /etc/cni/net.d\necho ready\nexec sleep infinity\n");

        let stderr = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let mut cmd = exec::in_net(netns_path, "unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "slave",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr));
        let mut proc = Proc::spawn(cmd, "node holder");
        let pid = proc.pid();
        let mut line = String::new();
        if let Some(stdout) = proc.child.stdout.take() {
            // EOF (the script failed) ends the read; no timeout is needed.
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        assert!(
            line.trim() == "ready",
            "the holder of {label} did not come up (said {line:?}): {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        let pin = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
            .unwrap_or_else(|e| panic!("cannot open the mount namespace of holder {pid}: {e}"));
        let mount_ns = pin
            .metadata()
            .map(|m| (m.dev(), m.ino()))
            .unwrap_or_else(|e| panic!("cannot stat the mount namespace of holder {pid}: {e}"));
        let host = ns_id("/proc/self/ns/mnt").expect("our own mount namespace");
        assert_ne!(
            mount_ns, host,
            "holder {pid} of {label} is still in the host's mount namespace"
        );
        Holder {
            proc: Some(proc),
            pid,
            mount_ns,
            _mount_ns_pin: pin,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A command running `program` inside the node (its mount and network namespaces).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        exec::in_node(self.pid, program)
    }

    /// Where the node's `path` (absolute, as seen inside the node) is reachable from the
    /// host: through the holder's root, which resolves in the node's mount namespace.
    pub fn host_path(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        let relative = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(relative)
    }

    /// Pids of processes inside this node other than the holder (agents, daemons they
    /// started, CNI reapers, shells of a person who entered the node).
    pub fn processes_inside(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != self.pid)
            .filter(|pid| ns_id(&format!("/proc/{pid}/ns/mnt")) == Some(self.mount_ns))
            .collect()
    }

    /// Ends every process still inside the node, then the holder. The mount namespace
    /// exists only because the testbed created it, so whatever runs in it belongs to this
    /// node (e.g. a daemonized wireguard-go would otherwise outlive the node).
    pub fn terminate(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let inside = self.processes_inside();
            if inside.is_empty() || Instant::now() > deadline {
                if !inside.is_empty() {
                    eprintln!("testbed: processes {inside:?} survived SIGKILL in a node");
                }
                break;
            }
            for pid in inside {
                // SAFETY: kill(2) on a pid inside this node's private mount namespace.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Proc's drop: SIGTERM (sleep dies of it), reaped.
        self.proc.take();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// (device, inode) of a namespace file, None when the process is gone.
fn ns_id(path: &str) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// tmpfs needs an existing directory to mount on. A missing one is created empty on the
/// host (e.g. `/var/lib/wgmesh` on a machine that never ran the agent) and left there:
/// removing it could detach the mounts of a testbed running in parallel.
fn ensure_host_mount_points() {
    for (dir, _) in PRIVATE_DIRS {
        if !Path::new(dir).is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .unwrap_or_else(|e| panic!("cannot create mount point {dir} on the host: {e}"));
        }
    }
}
