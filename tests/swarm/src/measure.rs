//! What the benchmark reads (test infrastructure): Prometheus text from the agent and the
//! API server, a process's memory and CPU time, and the kernel state of the agent's node.

use std::time::{Duration, Instant};

use wgmesh_testbed::{Exec, Node};

/// Samples of a Prometheus text exposition: (name with labels, value).
#[derive(Debug, Clone, Default)]
pub struct Metrics(Vec<(String, f64)>);

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        Metrics(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (name, value) = l.rsplit_once(' ')?;
                    Some((name.to_string(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// The sample named exactly `name` (labels included, as printed), 0 when absent.
    pub fn get(&self, name: &str) -> f64 {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0.0, |(_, v)| *v)
    }

    /// The sum of every sample of metric `name`, whatever its labels.
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(n, _)| {
                n.strip_prefix(name)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

/// The agent's `/metrics` on `node`.
pub fn agent_metrics(node: &Node) -> Metrics {
    let (code, body) = node.agent_http("/metrics");
    assert_eq!(code, "200", "{}: /metrics answered {code}", node.name());
    Metrics::parse(&body)
}

/// Resident memory of a process, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// CPU time (user + system, all threads) of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    wgmesh_testbed::bench::process_cpu_seconds(pid, false)
}

/// A process's CPU use over a window, as a share of one core.
pub struct CpuWindow {
    pid: u32,
    cpu: f64,
    at: Instant,
}

impl CpuWindow {
    pub fn start(pid: u32) -> CpuWindow {
        CpuWindow {
            pid,
            cpu: cpu_seconds(pid),
            at: Instant::now(),
        }
    }

    /// Share of one core since the start (0.05 = 5%).
    pub fn share(&self) -> f64 {
        (cpu_seconds(self.pid) - self.cpu) / self.at.elapsed().as_secs_f64()
    }
}

/// The median time of `runs` runs of `wg show wgmesh0` on `node` (the command as a user
/// types it: the UAPI get of every peer, formatted), and its output's peer count.
pub fn wg_show(node: &Node, runs: usize) -> (Duration, usize) {
    let mut times = Vec::with_capacity(runs);
    let mut peers = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let out = node.exec_ok(&["wg", "show", "wgmesh0"]);
        times.push(start.elapsed());
        peers = out.lines().filter(|l| l.starts_with("peer: ")).count();
    }
    times.sort();
    (times[times.len() / 2], peers)
}

/// How many routes the agent installed (protocol 87, both families) on `node`.
pub fn route_count(node: &Node) -> usize {
    ["-4", "-6"]
        .iter()
        .map(|family| {
            node.exec_ok(&["ip", family, "route", "show", "proto", "87"])
                .lines()
                .count()
        })
        .sum()
}

/// How many rules the wgmesh nftables table has on `node`.
pub fn nft_rule_count(node: &Node) -> usize {
    let json = node.exec_ok(&["nft", "-j", "list", "table", "inet", "wgmesh"]);
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("nft -j printed no JSON ({e})"));
    v["nftables"].as_array().map_or(0, |items| {
        items.iter().filter(|i| i.get("rule").is_some()).count()
    })
}

/// The median of `values` (NaN for none).
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_exact_name_or_summed_over_labels() {
        let m = Metrics::parse(
            "# HELP x\n# TYPE wgmesh_kernel_writes_total counter\n\
             wgmesh_kernel_writes_total{kind=\"route\"} 3\n\
             wgmesh_kernel_writes_total{kind=\"link\"} 4\n\
             wgmesh_kernel_writes_totally 100\n\
             wgmesh_peers 999\n",
        );
        assert_eq!(m.sum("wgmesh_kernel_writes_total"), 7.0);
        assert_eq!(m.get("wgmesh_kernel_writes_total{kind=\"link\"}"), 4.0);
        assert_eq!(m.get("wgmesh_peers"), 999.0);
        assert_eq!(m.get("absent"), 0.0);
    }

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let me = std::process::id();
        assert!(rss_bytes(me) > 1 << 20);
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds(me) > 0.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }
}
