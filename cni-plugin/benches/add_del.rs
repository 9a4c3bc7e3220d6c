//! ADD+DEL for 30 pods: wgmesh-cni against the reference `bridge` + `host-local`
//! plugins (Debian containernetworking-plugins, /usr/lib/cni), in the same run, same
//! node. A benchmark, not a test: it prints numbers and the ratio; run it with
//! `cargo bench -p wgmesh-cni --bench add_del` as root. `-- --smoke` runs one round of
//! 3 pods, only to show that the benchmark still works (`hack/test.sh` does).
//!
//! The bench process moves itself into a fresh node namespace first, so plugin runs are
//! plain execs (no wrapper on the timed path) and nothing touches the root namespace.

use std::fs::File;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use serde_json::{Value, json};
use wgmesh_testkit::TestNs;

/// Pods and rounds of a measurement, and of a smoke run (`--smoke`).
const PODS: usize = 30;
const ROUNDS: usize = 3;
const SMOKE_PODS: usize = 3;
const SMOKE_ROUNDS: usize = 1;

struct Plugin {
    label: &'static str,
    binary: String,
    conf: Value,
}

fn invoke(p: &Plugin, command: &str, id: &str, netns: &str) -> Duration {
    let start = Instant::now();
    let mut child = Command::new(&p.binary)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", p.binary));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(p.conf.to_string().as_bytes())
        .expect("write config");
    let out = child.wait_with_output().expect("wait");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{} {command} failed: {}{}",
        p.label,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// Total ADD and DEL time for all pods, and the wall time from the first DEL until
/// every pod interface is gone from the kernel (wgmesh-cni finishes veth deletion in
/// the background; the reference deletes in line).
fn round(p: &Plugin, pods: &[TestNs], tag: &str) -> (Duration, Duration, Duration) {
    let mut add = Duration::ZERO;
    let mut del = Duration::ZERO;
    for (i, pod) in pods.iter().enumerate() {
        add += invoke(p, "ADD", &format!("{tag}-{i}"), &pod.path());
    }
    let dels_start = Instant::now();
    for (i, pod) in pods.iter().enumerate() {
        del += invoke(p, "DEL", &format!("{tag}-{i}"), &pod.path());
    }
    wgmesh_testkit::wait_until(
        Duration::from_secs(30),
        "pod interfaces to disappear",
        || {
            pods.iter()
                .all(|pod| !pod.exec("ip", ["link", "show", "eth0"]).status.success())
                .then_some(())
        },
    );
    (add, del, dels_start.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// True for `--smoke`; cargo passes `--bench` to every benchmark binary.
fn smoke_from_args() -> bool {
    let mut smoke = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--bench" => {}
            "--smoke" => smoke = true,
            other => {
                eprintln!("add_del: unknown argument {other:?} (only --smoke)");
                std::process::exit(2);
            }
        }
    }
    smoke
}

fn main() {
    let smoke = smoke_from_args();
    if !wgmesh_testkit::is_root() {
        // A benchmark that did not run must not look like one that did.
        eprintln!("add_del: needs root (network namespaces); run it as root");
        std::process::exit(1);
    }
    let (pod_count, rounds) = if smoke {
        (SMOKE_PODS, SMOKE_ROUNDS)
    } else {
        (PODS, ROUNDS)
    };
    let node = TestNs::new("bench");
    // wgmesh-cni checks the node's guard on every ADD: measured as on a real node.
    wgmesh_testkit::guard::install(&node, &["10.244.1.0/24"], "wgmesh-br");
    let pods: Vec<TestNs> = (0..pod_count).map(|_| TestNs::new("bpod")).collect();
    let data = tempfile::tempdir().expect("tempdir");
    let node_ns = File::open(node.path()).expect("open node netns");
    setns(&node_ns, CloneFlags::CLONE_NEWNET).expect("enter node netns");

    let plugins = [
        Plugin {
            label: "wgmesh-cni",
            binary: env!("CARGO_BIN_EXE_wgmesh-cni").to_string(),
            conf: json!({
                "cniVersion": "1.0.0", "name": "wgmesh", "type": "wgmesh-cni", "bridge": "wgmesh-br",
                "mtu": 1420, "subnets": ["10.244.1.0/24"], "dataDir": data.path().join("wgmesh"),
            }),
        },
        Plugin {
            label: "bridge+host-local",
            binary: "/usr/lib/cni/bridge".to_string(),
            conf: json!({
                "cniVersion": "1.0.0", "name": "refnet", "type": "bridge", "bridge": "ref-br",
                "isGateway": true, "hairpinMode": true, "mtu": 1420,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.2.0/24"}]],
                         "dataDir": data.path().join("host-local")},
            }),
        },
    ];
    // Warm-up (page cache, bridge creation) outside the measurement.
    for p in &plugins {
        round(p, &pods[..1], "warm");
    }
    let mut results: Vec<[Vec<Duration>; 3]> = vec![Default::default(); plugins.len()];
    // Rounds alternate between implementations so drift on a noisy machine hits both.
    for r in 0..rounds {
        for (p, res) in plugins.iter().zip(results.iter_mut()) {
            let (add, del, gone) = round(p, &pods, &format!("r{r}"));
            res[0].push(add);
            res[1].push(del);
            res[2].push(gone);
        }
    }
    println!(
        "ADD+DEL of {pod_count} pods, median of {rounds} rounds (per-pod mean in brackets){}",
        if smoke {
            "; a smoke run, not a measurement"
        } else {
            ""
        }
    );
    let mut totals = Vec::new();
    for (p, [adds, dels, gones]) in plugins.iter().zip(results) {
        let (add, del, gone) = (median(adds), median(dels), median(gones));
        let n = pod_count as u32;
        println!(
            "  {:<18} ADD {:8.1} ms [{:5.2} ms]  DEL {:8.1} ms [{:5.2} ms]  total {:8.1} ms  (all veths gone {:6.1} ms after the first DEL, checks included)",
            p.label,
            ms(add),
            ms(add / n),
            ms(del),
            ms(del / n),
            ms(add + del),
            ms(gone)
        );
        totals.push(add + del);
    }
    let ratio = totals[0].as_secs_f64() / totals[1].as_secs_f64();
    println!("  wgmesh-cni / reference = {ratio:.3} (target <= 0.333)");
}
