//! Keeping pods connected through restarts, outages, key rotation and underlay faults
//! (issue #9), on the testbed, with the figures printed. Needs root.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use wgmesh_testbed::{Pod, Testbed};
use wgmesh_testkit::require_root;

const WAIT: Duration = Duration::from_secs(30);
/// The flow: 100 packets per second.
const INTERVAL: &str = "0.01";

/// A 100-packets-per-second ping from `from` to `to` running in the background.
struct Flow {
    child: Option<Child>,
    started: Instant,
}

impl Flow {
    fn start(from: &Pod, to: &Pod, seconds: u32) -> Flow {
        let child = from
            .command("ping")
            .args([
                "-n",
                "-q",
                "-i",
                INTERVAL,
                "-W",
                "1",
                "-c",
                &(seconds * 100).to_string(),
                &to.ip().to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ping");
        Flow {
            child: Some(child),
            started: Instant::now(),
        }
    }

    /// Waits for the end; returns (sent, received).
    fn finish(mut self) -> (u32, u32) {
        let out = self
            .child
            .take()
            .expect("running")
            .wait_with_output()
            .expect("ping ends");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("ping said: {text}"));
        let num = |word: &str| -> u32 {
            let words: Vec<&str> = line.split_whitespace().collect();
            let i = words
                .iter()
                .position(|w| w.starts_with(word))
                .unwrap_or_else(|| panic!("{line}"));
            words[i - 1].parse().unwrap_or_else(|_| panic!("{line}"))
        };
        (num("packets"), num("received"))
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn cluster(nodes: usize) -> (Testbed, Vec<Pod>) {
    let tb = Testbed::builder().nodes(nodes).build();
    let pods = (0..nodes)
        .map(|n| tb.add_pod(n, &format!("r{n}")))
        .collect();
    (tb, pods)
}

/// Lost seconds of a 100 pps flow.
fn lost_seconds(sent: u32, received: u32) -> f64 {
    f64::from(sent.saturating_sub(received)) / 100.0
}

#[test]
fn an_agent_restart_loses_under_a_second_of_traffic_and_nothing_leaves_in_clear() {
    require_root!();
    let (tb, pods) = cluster(2);
    assert!(pods[0].ping(pods[1].ip()));
    let node0 = tb.node(0);
    let index_before = node0.exec_ok(&["ip", "-o", "link", "show", "wgmesh0"]);
    let ((sent, received), capture) = tb.router().capture("not arp and not port 6443", || {
        let flow = Flow::start(&pods[0], &pods[1], 4);
        std::thread::sleep(Duration::from_secs(1));
        let restart = Instant::now();
        node0.stop_agent();
        node0.start_agent(&[]);
        eprintln!(
            "agent restarted in {:?} ({:?} into the flow)",
            restart.elapsed(),
            flow.started.elapsed()
        );
        flow.finish()
    });
    let lost = lost_seconds(sent, received);
    eprintln!(
        "FIGURE agent restart: {sent} sent, {received} received at 100 pps: {lost:.2} s of loss"
    );
    assert!(lost < 1.0, "{lost} s of loss across an agent restart");
    assert!(
        capture.lines().iter().all(|l| !l.contains("10.244.")),
        "pod traffic in clear: {:?}",
        capture.lines()
    );
    assert_eq!(tb.router().pod_range_drops(), 0);
    let index_after = node0.exec_ok(&["ip", "-o", "link", "show", "wgmesh0"]);
    assert_eq!(
        index_before.split(':').next(),
        index_after.split(':').next(),
        "the same wgmesh0 (same ifindex) survived the restart"
    );
    let log = node0.agent_log();
    assert!(
        log.contains("re-attached to the existing WireGuard interface"),
        "{log}"
    );
}
