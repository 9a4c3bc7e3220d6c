//! Helpers for the agent's integration tests: Node objects as the kubelet and the
//! controller-manager create them, and `wgmesh agent` processes with private state.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use wgmesh_testkit::apiserver::TestApiServer;
use wgmesh_testkit::{Proc, wait_until, workspace_bin};

pub const WAIT: Duration = Duration::from_secs(20);

/// A Node as the kubelet registers it (status.addresses) with the pod CIDR the
/// controller-manager assigns (spec.podCIDRs).
pub fn node(name: &str, internal_ip: &str, pod_cidr: &str) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": internal_ip}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]
        }
    }))
    .expect("a Node")
}

/// `n` as its agent would have published it: a fresh public key and `endpoint`.
pub fn published(mut n: Node, endpoint: &str) -> Node {
    let key = wgmesh::key::PrivateKey::generate()
        .expect("a key")
        .public_key();
    n.metadata.annotations = Some(std::collections::BTreeMap::from([
        ("wgmesh.io/public-key".to_string(), key.to_base64()),
        ("wgmesh.io/endpoint".to_string(), endpoint.to_string()),
    ]));
    n
}

pub async fn create_node(api: &Api<Node>, n: &Node) {
    api.create(&PostParams::default(), n)
        .await
        .expect("create node");
}

/// Nodes n1..=n`count`: InternalIP 192.0.2.i, pod CIDR 10.244.i.0/24.
pub async fn create_nodes(api: &Api<Node>, count: u8) {
    for i in 1..=count {
        let n = node(
            &format!("n{i}"),
            &format!("192.0.2.{i}"),
            &format!("10.244.{i}.0/24"),
        );
        create_node(api, &n).await;
    }
}

/// One `wgmesh agent` process with its own state and CNI directories.
pub struct Agent {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub proc: Option<Proc>,
}

impl Agent {
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn cni_dir(&self) -> PathBuf {
        self.dir.path().join("cni")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Starts `wgmesh agent` for node `name` against `api`.
    pub fn start(api: &TestApiServer, name: &str, extra: &[&str]) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("wgmesh-agent-")
            .tempdir()
            .expect("tempdir");
        let mut a = Agent {
            name: name.to_string(),
            dir,
            proc: None,
        };
        a.spawn(api, extra);
        a
    }

    pub fn spawn(&mut self, api: &TestApiServer, extra: &[&str]) {
        self.spawn_in(api, extra, &[]);
    }

    /// Like [`Agent::spawn`], with `wrapper` (a command and its arguments, e.g.
    /// `unshare --pid --fork`) running the agent.
    pub fn spawn_in(&mut self, api: &TestApiServer, extra: &[&str], wrapper: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("log");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(workspace_bin("wgmesh"));
                c
            }
            None => Command::new(workspace_bin("wgmesh")),
        };
        cmd.args(["agent", "--node-name", &self.name])
            .arg("--kubeconfig")
            .arg(api.kubeconfig())
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--cni-conf-dir")
            .arg(self.cni_dir())
            .args([
                "--cluster-cidr",
                "10.244.0.0/16",
                "--resync-interval",
                "5s",
                "--dataplane",
                "none",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env(
                "RUST_LOG",
                "debug,kube=info,hyper=info,rustls=info,tower=info",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        self.proc = Some(Proc::spawn(cmd, "wgmesh agent"));
    }

    /// Stops the agent with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal(libc::SIGTERM);
            wait_until(Duration::from_secs(10), "the agent to exit", || {
                p.child.try_wait().ok().flatten()
            });
        }
    }

    /// The last-known-good plan the agent saved, as JSON.
    pub fn mesh(&self) -> Option<Value> {
        let text = std::fs::read(self.state_dir().join("mesh.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Node names in the agent's current peers.
    pub fn peers(&self) -> Vec<String> {
        self.mesh()
            .and_then(|m| m["peers"].as_object().map(|p| p.keys().cloned().collect()))
            .unwrap_or_default()
    }

    /// Waits until the agent's peers are exactly `want` (sorted names).
    pub fn wait_for_peers(&self, want: &[&str], timeout: Duration) {
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        let mut last = Vec::new();
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(timeout, "the agent's peers", || {
                last = self.peers();
                (last == want).then_some(())
            })
        }));
        if ok.is_err() {
            panic!(
                "{}: peers {:?}, want {:?}; log:\n{}",
                self.name,
                self.peers(),
                want,
                self.log()
            );
        }
    }
}
