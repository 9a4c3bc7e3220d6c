//! `wgmesh-testbed demo`: the project's main demo. A 3-node cluster with two pods per
//! node; each step shows a property of wgmesh with the real tools, and checks it. Test
//! infrastructure (part of the `wgmesh-testbed` binary).

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wgmesh_testbed::{Exec, Layout, Pod, Testbed, bench, transfer};

/// A demo's steps on `tb` with `pods[node][k]`; the first failed check ends them.
pub(crate) type Steps = fn(&Testbed, &[Vec<Pod>]) -> Result<(), String>;

/// The three-node demos: builds 3 nodes with 2 pods each on `layout`, says `headline`
/// (given the testbed), runs `steps`, says how they went, keeps the cluster until Ctrl-C
/// or SIGTERM (`stop`) with `keep`, and tears down.
pub(crate) fn three_nodes(
    layout: Layout,
    headline: &dyn Fn(&Testbed) -> String,
    steps: Steps,
    keep: bool,
    stop: &AtomicBool,
) -> ExitCode {
    let tb = Testbed::builder().nodes(3).layout(layout).build();
    let pods: Vec<Vec<Pod>> = (0..3)
        .map(|n| {
            (0..2)
                .map(|k| tb.add_pod(n, &format!("pod-{n}-{k}")))
                .collect()
        })
        .collect();
    say!("{}", headline(&tb));
    let result = steps(&tb, &pods);
    match &result {
        Ok(()) => say!("\n\x1b[1;32mAll checks passed.\x1b[0m"),
        Err(what) => say!("\n\x1b[1;31mFAILED: {what}\x1b[0m\n{}", tb.diagnostics()),
    }
    if keep {
        let flat: Vec<Pod> = pods.into_iter().flatten().collect();
        crate::print_cluster(&tb, &flat);
        keep_until(stop);
    }
    say!("Tearing down.");
    drop(tb);
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `--keep`: waits for Ctrl-C or SIGTERM (a person's: polling a flag is plenty).
pub(crate) fn keep_until(stop: &AtomicBool) {
    say!("\nKept until Ctrl-C or SIGTERM.");
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn step(n: u32, what: &str) {
    say!("\n\x1b[1m== {n}. {what}\x1b[0m");
}

pub(crate) fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        say!("   \x1b[32mOK\x1b[0m {what}");
        Ok(())
    } else {
        Err(what.to_string())
    }
}

pub(crate) fn show(text: &str) {
    for line in text.lines() {
        say!("   | {line}");
    }
}

/// Runs every step on `tb` with `pods[node][k]`; the first failed check ends it.
pub fn run(tb: &Testbed, pods: &[Vec<Pod>]) -> Result<(), String> {
    step(
        1,
        "Each agent published its node's WireGuard key, endpoint and pod CIDR",
    );
    let kubeconfig = tb.api().kubeconfig().to_string_lossy().into_owned();
    let nodes = std::process::Command::new("kubectl")
        .args(["--kubeconfig", &kubeconfig, "get", "nodes", "-o"])
        .arg("custom-columns=NAME:.metadata.name,ENDPOINT:.metadata.annotations.wgmesh\\.io/endpoint,PODCIDRS:.metadata.annotations.wgmesh\\.io/pod-cidrs,KEY:.metadata.annotations.wgmesh\\.io/public-key")
        .env("HOME", tb.dir())
        .output()
        .map_err(|e| format!("kubectl: {e}"))?;
    show(&String::from_utf8_lossy(&nodes.stdout));
    check(
        nodes.status.success() && String::from_utf8_lossy(&nodes.stdout).lines().count() == 4,
        "3 nodes advertised",
    )?;

    step(
        2,
        "wg show wgmesh0 on node0: one peer per other node, with recent handshakes",
    );
    for n in 1..3 {
        pods[0][0].ping(pods[n][0].ip());
    }
    let wg = tb.node(0).exec_ok(&["wg", "show", "wgmesh0"]);
    show(&wg);
    check(
        wg.matches("latest handshake").count() == 2,
        "2 peers with handshakes",
    )?;

    step(3, "Pods ping each other on one node and across nodes");
    for (a, b) in [
        (&pods[0][0], &pods[0][1]),
        (&pods[0][0], &pods[1][0]),
        (&pods[1][1], &pods[2][0]),
        (&pods[2][1], &pods[0][1]),
    ] {
        check(
            a.ping(b.ip()),
            &format!(
                "{} ({}) -> {} ({}) on {}",
                a.name(),
                a.ip(),
                b.name(),
                b.ip(),
                b.node_name()
            ),
        )?;
    }

    step(
        4,
        "A TCP transfer across nodes keeps the sender pod's address (no NAT inside the cluster)",
    );
    let (from, to) = (&pods[0][0], &pods[2][1]);
    let t = transfer::tcp(
        &to.host_netns_path(),
        SocketAddr::new(IpAddr::V4(to.ip()), 7000),
        &from.host_netns_path(),
        8 << 20,
    );
    say!(
        "   {} -> {}: 8 MiB, the server saw the client as {}",
        from.name(),
        to.name(),
        t.seen_source
    );
    check(t.intact, "content intact (SHA-256 matches)")?;
    check(
        t.seen_source.ip() == IpAddr::V4(from.ip()),
        "the receiver sees the sender pod's own IP",
    )?;

    step(
        5,
        "The router between nodes sees only WireGuard between node addresses, never a pod address",
    );
    let ((), capture) = tb.router().capture("not arp and not port 6443", || {
        pods[0][1].ping(pods[1][1].ip());
        pods[1][0].ping(pods[2][0].ip());
    });
    let lines = capture.lines();
    show(&lines.iter().take(8).cloned().collect::<Vec<_>>().join("\n"));
    if lines.len() > 8 {
        say!("   | ... {} packets in all", lines.len());
    }
    let only_wg = !lines.is_empty()
        && lines
            .iter()
            .all(|l| l.contains(".51820 > ") && l.contains("UDP") && !l.contains("10.244."));
    check(
        only_wg,
        "every packet is UDP on port 51820 between node addresses",
    )?;
    say!(
        "   router drops of pod-range packets (a leak would show here): {}",
        tb.router().pod_range_drops()
    );

    step(
        6,
        "Pods reach the internet masqueraded to their node's address",
    );
    let whoami = tb.internet().start_whoami(8080);
    for (n, node_pods) in pods.iter().enumerate() {
        let seen = node_pods[0].exec_ok(&["curl", "-sS", "--max-time", "5", &whoami.url()]);
        let node_ip = tb.node(n).underlay_ip().to_string();
        say!(
            "   {} ({}) -> {}: the server saw {}",
            node_pods[0].name(),
            node_pods[0].ip(),
            whoami.url(),
            seen.trim()
        );
        check(
            seen.trim() == node_ip,
            &format!("SNAT to node{n}'s address {node_ip}"),
        )?;
    }

    step(7, "wgmesh status on node0 (API + the local device)");
    let wgmesh = wgmesh_testkit::workspace_bin("wgmesh")
        .to_string_lossy()
        .into_owned();
    let node_kubeconfig = tb.node_kubeconfig().to_string_lossy().into_owned();
    let status = tb.node(0).exec_ok(&[
        &wgmesh,
        "status",
        "--node-name",
        tb.node(0).name(),
        "--kubeconfig",
        &node_kubeconfig,
    ]);
    show(&status);
    check(status.lines().count() == 4, "3 nodes listed")?;

    step(
        8,
        "Throughput and latency between pods on two nodes, through the encrypted mesh",
    );
    let (from, to) = (&pods[0][0], &pods[1][0]);
    let rtt = bench::median_rtt(from, to.ip(), 20);
    let (mbits, bytes) = bench::iperf3(from, to, 3);
    say!(
        "   {} -> {}: one TCP stream (iperf3, 3 s) {mbits:.0} Mbit/s, {} MB; median ping {rtt:.3} ms",
        from.name(),
        to.name(),
        bytes / 1_000_000
    );
    check(bytes > 0, "data crossed the mesh")?;
    Ok(())
}
