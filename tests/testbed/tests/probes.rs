//! The agent's HTTP endpoint under a tight loop of probes (issue #13): /readyz and
//! /metrics answer from a state refreshed at most once a second, so a misbehaving
//! prober costs the node little and leaves pod traffic alone. Needs root.

use std::time::Instant;

use wgmesh_testbed::bench::{iperf3, process_cpu_seconds};
use wgmesh_testbed::{Exec, Testbed};
use wgmesh_testkit::require_root;

/// `count` GETs of `path` on node0's agent over one keep-alive connection (curl's URL
/// globbing); the status codes seen.
fn hammer(node: &wgmesh_testbed::Node, path: &str, count: u32) -> Vec<String> {
    let out = node.exec_ok(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\\n",
        &format!("http://127.0.0.1:9474{path}?n=[1-{count}]"),
    ]);
    out.lines().map(String::from).collect()
}

#[test]
fn a_thousand_probes_in_a_tight_loop_cost_the_agent_little_and_leave_pod_traffic_alone() {
    require_root!();
    let tb = Testbed::builder().nodes(2).build();
    let (a, b) = (tb.add_pod(0, "a"), tb.add_pod(1, "b"));
    assert!(a.ping(b.ip()));
    let node0 = tb.node(0);
    let pid = node0.agent_pid().expect("the agent runs");

    let before = process_cpu_seconds(pid, true);
    let started = Instant::now();
    let ready = hammer(node0, "/readyz", 1000);
    let metrics = hammer(node0, "/metrics", 1000);
    let took = started.elapsed();
    let cpu = process_cpu_seconds(pid, true) - before;
    assert_eq!(ready.len(), 1000);
    assert!(ready.iter().all(|c| c == "200"), "{ready:?}");
    assert!(metrics.iter().all(|c| c == "200"));
    eprintln!(
        "FIGURE 1,000 /readyz + 1,000 /metrics in {took:?}: {cpu:.3} s of the agent's CPU (commands it ran included)"
    );
    // A kernel dump and an `nft` process per probe cost several ms each: 2,000 probes
    // would take seconds of CPU.
    assert!(cpu < 1.0, "{cpu:.3} s of CPU for 2,000 probes");

    // Pod traffic with and without 1,000 probes in a tight loop during it, in one run
    // (a debug build on a shared machine: a figure, not an assertion; the prober's
    // own curl competes for the same two cores).
    let (quiet, _) = iperf3(&a, &b, 3);
    let (busy, codes) = std::thread::scope(|s| {
        let prober = s.spawn(|| hammer(node0, "/readyz", 1000));
        let (busy, _) = iperf3(&a, &b, 3);
        (busy, prober.join().expect("prober"))
    });
    assert_eq!(codes.len(), 1000);
    eprintln!(
        "FIGURE pod-to-pod TCP: {quiet:.0} Mbit/s quiet, {busy:.0} Mbit/s with 1,000 probes in a tight loop during it ({:.1}%)",
        100.0 * busy / quiet
    );
}
