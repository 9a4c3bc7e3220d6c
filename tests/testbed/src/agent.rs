//! `wgmesh agent` on a testbed node (test infrastructure).
//!
//! The built `wgmesh` binary runs inside the node's namespaces with the production
//! defaults for everything but what a DaemonSet would set: `--node-name`,
//! `--kubeconfig` (a copy whose server is the API address nodes reach through the
//! router) and `--cluster-cidr` (the pod range of each family of the node's layout). Its stderr goes to a per-node log file that survives
//! restarts (each start is marked in it). Stopped with SIGTERM by pid, so the agent
//! shuts down as it would under a kubelet.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use wgmesh_testkit::{Proc, workspace_bin};

use crate::holder::Holder;

/// Log filter of testbed agents: the agent's own debug lines, its libraries' info.
const RUST_LOG: &str = "debug,kube=info,hyper=info,hyper_util=info,rustls=info,tower=info,h2=info";
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent of one node: how to start it, and the running process if any.
#[derive(Debug)]
pub struct Agent {
    node_name: String,
    kubeconfig: PathBuf,
    log: PathBuf,
    /// The DaemonSet's `--cluster-cidr` (comma-separated).
    cluster_cidr: String,
    proc: Mutex<Option<Proc>>,
}

impl Agent {
    /// An agent for `node_name` (not started yet), with `--cluster-cidr cluster_cidr`.
    pub fn new(node_name: &str, kubeconfig: PathBuf, log: PathBuf, cluster_cidr: String) -> Agent {
        Agent {
            node_name: node_name.to_string(),
            kubeconfig,
            log,
            cluster_cidr,
            proc: Mutex::new(None),
        }
    }

    /// Starts the agent inside the node with `extra` arguments after the defaults.
    /// Panics if it is already running.
    pub fn start(&self, holder: &Holder, extra: &[&str]) {
        let mut running = self.proc.lock().expect("agent lock");
        assert!(
            running.is_none(),
            "the agent of {} is already running",
            self.node_name
        );
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let _ = writeln!(
            log,
            "=== testbed: starting the agent (extra args {extra:?}) ==="
        );
        let mut cmd = holder.command(workspace_bin("wgmesh"));
        cmd.args(["agent", "--node-name", &self.node_name])
            .arg("--kubeconfig")
            .arg(&self.kubeconfig);
        // The DaemonSet's --cluster-cidr, unless the test passes its own
        // (`--cluster-cidr=` for an empty ConfigMap value).
        if !extra.iter().any(|a| a.starts_with("--cluster-cidr")) {
            cmd.args(["--cluster-cidr", &self.cluster_cidr]);
        }
        // The testbed's nodes share the host's kernel: its tests are of the userspace
        // data plane (persistent TUN, offloads) even on a host with the module.
        if !extra.iter().any(|a| a.starts_with("--wireguard-backend")) {
            cmd.args(["--wireguard-backend", "userspace"]);
        }
        cmd.args(extra)
            .env("RUST_LOG", RUST_LOG)
            // A log file, not a terminal: no colour codes.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        *running = Some(Proc::spawn(cmd, "wgmesh agent"));
    }

    /// Stops the agent with SIGTERM and waits for it to exit (SIGKILL after 10 s). A
    /// no-op when it is not running.
    pub fn stop(&self) {
        let Some(mut proc) = self.proc.lock().expect("agent lock").take() else {
            return;
        };
        proc.signal(libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while proc.is_running() {
            if Instant::now() > deadline {
                eprintln!(
                    "testbed: the agent of {} ignored SIGTERM for {STOP_TIMEOUT:?}; killing it",
                    self.node_name
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Proc's drop kills it if it still runs and reaps it.
    }

    /// Kills the agent with SIGKILL and reaps it: no shutdown code runs. A no-op when
    /// it is not running.
    pub fn kill(&self) {
        if let Some(proc) = self.proc.lock().expect("agent lock").take() {
            proc.signal(libc::SIGKILL);
            // Proc's drop reaps it.
            drop(proc);
        }
    }

    /// True while the agent process runs (false after it crashed or was stopped).
    pub fn is_running(&self) -> bool {
        self.proc
            .lock()
            .expect("agent lock")
            .as_mut()
            .is_some_and(|p| p.is_running())
    }

    /// True when the agent was started and exited on its own (not stopped or killed
    /// by the testbed): a crash, or a refused argument.
    pub fn crashed(&self) -> bool {
        self.proc
            .lock()
            .expect("agent lock")
            .as_mut()
            .is_some_and(|p| !p.is_running())
    }

    /// The agent's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc
            .lock()
            .expect("agent lock")
            .as_ref()
            .map(Proc::pid)
    }

    /// Everything the agent logged so far (all starts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}
