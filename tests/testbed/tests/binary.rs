//! The `wgmesh-testbed` binary as the demo runs it. Needs root.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use wgmesh_testkit::{Proc, require_root, run, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_wgmesh-testbed");

/// The run id from the first line: `wgmesh testbed <id> is up: ...`.
fn run_id(first_line: &str) -> String {
    first_line
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no run id in {first_line:?}"))
        .to_string()
}

/// The testbed id from a demo's first line: `... (testbed <id>) ...`.
fn demo_id(first_line: &str) -> String {
    first_line
        .split_once("(testbed ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(id, _)| id.to_string())
        .unwrap_or_else(|| panic!("no testbed id in {first_line:?}"))
}

/// Asserts the demo's output shows steps 1 to `steps`.
fn assert_steps(stdout: &str, steps: u32) {
    for step in 1..=steps {
        assert!(
            stdout.contains(&format!("== {step}. ")),
            "step {step} missing:
{stdout}"
        );
    }
}

/// Runs the binary to the end; its stdout, after checking it succeeded.
fn run_ok(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("wgmesh-testbed runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn assert_no_namespaces_of(run_id: &str) {
    let listed = run("ip", ["netns", "list"]);
    assert!(
        !listed.contains(run_id),
        "{run_id} left namespaces:\n{listed}"
    );
}

#[test]
fn up_prints_how_to_enter_every_node_and_pod_and_tears_down() {
    require_root!();
    let stdout = run_ok(&["up", "--nodes", "2", "--pods", "1"]);
    let id = run_id(stdout.lines().next().unwrap_or_default());
    for expected in [
        "node0    192.0.2.2    10.244.0.0/24   nsenter --target ",
        "node1    192.0.2.18   10.244.1.0/24   nsenter --target ",
        "pod-0-0    node0    10.244.0.",
        "--mount --net=/proc/",
        "/root/run/netns/pod-1-0",
        &format!("router:   nsenter --net=/run/netns/{id}-router"),
        "Torn down.",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    assert_no_namespaces_of(&id);
}

#[test]
fn up_with_keep_holds_the_cluster_until_sigterm() {
    require_root!();
    let mut cmd = Command::new(BIN);
    cmd.args(["up", "--nodes", "1", "--pods", "0", "--keep"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut proc = Proc::spawn(cmd, "wgmesh-testbed up --keep");
    let mut stdout = BufReader::new(proc.child.stdout.take().expect("piped stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("the first line");
    let id = run_id(&first);
    let mut line = String::new();
    while !line.contains("Kept until") {
        line.clear();
        assert!(
            stdout.read_line(&mut line).expect("output") > 0,
            "no 'Kept until' line"
        );
    }
    let listed = run("ip", ["netns", "list"]);
    assert!(listed.contains(&format!("{id}-node0")), "{listed}");

    proc.signal(libc::SIGTERM);
    let status = wait_until(Duration::from_secs(30), "wgmesh-testbed to exit", || {
        proc.child.try_wait().ok().flatten()
    });
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
    assert!(rest.contains("Torn down."), "{rest}");
    assert_no_namespaces_of(&id);
}

#[test]
fn the_demo_checks_every_step_and_tears_down() {
    require_root!();
    let stdout = run_ok(&["demo"]);
    assert_steps(&stdout, 8);
    assert!(
        stdout.contains("All checks passed.") && !stdout.contains("FAILED"),
        "{stdout}"
    );
    assert!(stdout.contains("Tearing down."));
}

#[test]
fn the_dualstack_demo_checks_every_step_in_both_families_and_tears_down() {
    require_root!();
    let stdout = run_ok(&["demo", "dualstack"]);
    let first = stdout.lines().next().unwrap_or_default();
    let id = demo_id(first);
    assert!(
        first.contains("dual-stack pods over an IPv6 underlay"),
        "{first}"
    );
    assert_steps(&stdout, 8);
    // Both families, as the steps show them.
    for shown in [
        "endpoint [2001:db8::2]:51820, pod CIDRs 10.244.0.0/24,fd00:10:244::/64",
        "IPv4: pod-0-0 -> pod-1-0 (10.244.1.2)",
        "IPv6: pod-0-0 -> pod-1-0 (fd00:10:244:1::2)",
        "the server saw the client as [fd00:10:244::2]:",
        "the server saw 2001:db8::2",
        "wgmesh0 1420",
    ] {
        assert!(stdout.contains(shown), "no {shown:?} in:\n{stdout}");
    }
    assert!(
        stdout.contains("All checks passed.") && !stdout.contains("FAILED"),
        "{stdout}"
    );
    assert!(stdout.contains("Tearing down."));
    assert_no_namespaces_of(&id);
}

#[test]
fn up_builds_an_ipv6_only_cluster_on_request() {
    require_root!();
    let stdout = run_ok(&["up", "--nodes", "2", "--pods", "1", "--layout", "ipv6"]);
    let id = run_id(stdout.lines().next().unwrap_or_default());
    for expected in [
        "layout: IPv6 pods over an IPv6 underlay",
        "node0    2001:db8::2     fd00:10:244::/64   nsenter --target ",
        "node1    2001:db8:0:1::2 fd00:10:244:1::/64 nsenter --target ",
        "pod-1-0    node1    fd00:10:244:1::2 nsenter",
        "nodes reach it at https://[2001:db8:198::10]:6443",
        "(2001:db8:203::10)",
        "Torn down.",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    assert_no_namespaces_of(&id);
}

#[test]
fn the_multicloud_demo_connects_every_pod_pair_and_tears_down() {
    require_root!();
    let out = Command::new(BIN)
        .args(["demo", "multicloud"])
        .stdin(Stdio::null())
        .output()
        .expect("wgmesh-testbed runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let first = stdout.lines().next().unwrap_or_default();
    let id = demo_id(first);
    assert!(
        stdout.contains("gw-h2: masquerade,"),
        "no picture:\n{stdout}"
    );
    assert_steps(&stdout, 6);
    // Every step passes: the 20 pod pairs across sites and NATs, only WireGuard on the
    // internet, a1-a2 on their LAN (issue #14).
    let summary = stdout
        .split_once("Summary")
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    for step in 1..=6 {
        assert!(
            summary.contains(&format!("OK\u{1b}[0m     {step}. ")),
            "step {step} failed:\n{stdout}"
        );
    }
    assert!(summary.contains("All checks passed."), "{stdout}");
    assert!(
        out.status.success(),
        "exit status {}:\n{stdout}",
        out.status
    );
    assert!(stdout.contains("Tearing down."), "{stdout}");
    assert_no_namespaces_of(&id);
}
