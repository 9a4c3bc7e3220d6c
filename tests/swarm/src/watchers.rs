//! Many real agents that only watch (test infrastructure): `wgmesh agent --dataplane
//! none` processes, each for a Node of its own, to measure what the API server sends to
//! a cluster of agents. They run in the host's namespace and reach the API server on its
//! loopback address; without a data plane they change nothing in the kernel (no guard,
//! no device, `--mtu` given so no underlay lookup), and write only under their own
//! temporary directory.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wgmesh_testkit::{Proc, workspace_bin};

use crate::nodes::{Cluster, NodeSpec};
use crate::swarm::{MAX_SLOTS, pod_cidr};

/// The Node name of watcher `k`.
pub fn watcher_name(k: usize) -> String {
    format!("watcher-{k:03}")
}

/// Running watcher agents; stopped (by pid) and their Nodes left in place on drop.
pub struct Watchers {
    procs: Vec<Proc>,
    _dir: tempfile::TempDir,
}

impl Watchers {
    /// Creates `k` Nodes (pod CIDRs from the top of the swarm's range, InternalIPs in
    /// 198.51.100.100+) and starts an agent for each with the API server's `kubeconfig`;
    /// returns once every one has published its key.
    pub fn start(k: usize, cluster: &Cluster, kubeconfig: &std::path::Path) -> Watchers {
        assert!(
            k <= 100,
            "at most 100 watchers (their InternalIPs), not {k}"
        );
        let specs: Vec<NodeSpec> = (0..k)
            .map(|i| NodeSpec {
                name: watcher_name(i),
                internal_ip: Ipv4Addr::new(198, 51, 100, 100 + i as u8),
                pod_cidr: pod_cidr(MAX_SLOTS - 1 - i),
                advertisement: None,
            })
            .collect();
        cluster.register(&specs);
        let dir = tempfile::Builder::new()
            .prefix("wgmesh-watchers-")
            .tempdir()
            .expect("a temporary directory");
        let procs = (0..k)
            .map(|i| {
                let home = dir.path().join(watcher_name(i));
                let log =
                    std::fs::File::create(dir.path().join(format!("{}.log", watcher_name(i))))
                        .expect("a log file");
                let mut cmd = Command::new(workspace_bin("wgmesh"));
                cmd.args([
                    "agent",
                    "--node-name",
                    &watcher_name(i),
                    "--dataplane",
                    "none",
                ])
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .arg("--state-dir")
                .arg(home.join("state"))
                .arg("--cni-conf-dir")
                .arg(home.join("cni"))
                .args(["--cluster-cidr", "10.244.0.0/16", "--mtu", "1420"])
                .args(["--metrics-addr", "127.0.0.1:0"])
                .env("RUST_LOG", "warn")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log));
                Proc::spawn(cmd, "a watcher agent")
            })
            .collect();
        let watchers = Watchers { procs, _dir: dir };
        let start = Instant::now();
        for i in 0..k {
            while cluster
                .annotation(&watcher_name(i), wgmesh::model::annotation::PUBLIC_KEY)
                .is_none()
            {
                assert!(
                    start.elapsed() < Duration::from_secs(120),
                    "watcher {i} did not publish its key within 2 minutes"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        watchers
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Total resident memory of the watchers, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.procs
            .iter()
            .map(|p| crate::measure::rss_bytes(p.pid()))
            .sum()
    }
}
