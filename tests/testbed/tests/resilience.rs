//! Keeping pods connected through restarts, outages, key rotation and underlay faults
//! (issue #9), on the testbed, with the figures printed. Needs root.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use wgmesh_testbed::{Exec, Pod, Testbed};
use wgmesh_testkit::{require_root, wait_until, workspace_bin};

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
    wait_until(WAIT, "the agent's re-attach log line", || {
        node0
            .agent_log()
            .contains("re-attached to the existing WireGuard interface")
            .then_some(())
    });
}

fn wgmesh(args: &[&str], tb: &Testbed) -> String {
    let out = std::process::Command::new(workspace_bin("wgmesh"))
        .args(args)
        .arg("--kubeconfig")
        .arg(tb.api().kubeconfig())
        .output()
        .expect("wgmesh runs");
    assert!(
        out.status.success(),
        "wgmesh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn key_of(tb: &Testbed, i: usize) -> String {
    tb.node_annotations(i)
        .get("wgmesh.io/public-key")
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_key_rotation_switches_every_peer_with_little_loss() {
    require_root!();
    let (tb, pods) = cluster(3);
    assert!(pods[0].ping(pods[1].ip()));
    let old = key_of(&tb, 0);
    const FLOW: u32 = 6;
    let flow = Flow::start(&pods[0], &pods[1], FLOW);
    let back = Flow::start(&pods[2], &pods[0], FLOW);
    std::thread::sleep(Duration::from_secs(1));
    wgmesh(&["rotate-key", "--node-name", tb.node(0).name()], &tb);
    let new = wait_until(WAIT, "node0's new key in every peer's list", || {
        let new = key_of(&tb, 0);
        let switched = |i: usize| {
            let peers = tb.node(i).exec_ok(&["wg", "show", "wgmesh0", "peers"]);
            peers.contains(&new) && !peers.contains(&old)
        };
        (new != old && !new.is_empty() && switched(1) && switched(2)).then_some(new)
    });
    let switched = flow.started.elapsed();
    eprintln!("every peer switched {switched:?} into the flow");
    // Otherwise the flows did not measure the switch.
    assert!(
        switched < Duration::from_secs(FLOW.into()),
        "the switch took longer than the flows"
    );
    let (sent, received) = flow.finish();
    let (sent2, received2) = back.finish();
    let (lost, lost2) = (lost_seconds(sent, received), lost_seconds(sent2, received2));
    eprintln!(
        "FIGURE key rotation: node0->node1 {sent} sent {received} received ({lost:.2} s lost); node2->node0 {sent2}/{received2} ({lost2:.2} s lost)"
    );
    assert!(
        lost < 1.0 && lost2 < 1.0,
        "{lost} s / {lost2} s of loss across a key rotation"
    );
    // The new key is the one on disk, and a restart keeps it (no second rotation).
    let on_disk = tb
        .node(0)
        .read_file("/var/lib/wgmesh/private.key")
        .expect("key file");
    assert!(!on_disk.is_empty());
    tb.node(0).stop_agent();
    tb.node(0).start_agent(&[]);
    wait_until(WAIT, "the restarted agent", || {
        pods[0].ping(pods[1].ip()).then_some(())
    });
    assert_eq!(key_of(&tb, 0), new, "the rotated key survives a restart");
}

#[test]
fn pods_keep_talking_through_an_api_server_outage_and_an_agent_restart_in_it() {
    require_root!();
    let (mut tb, pods) = cluster(2);
    assert!(pods[0].ping(pods[1].ip()));
    let outage = Instant::now();
    tb.api_mut().stop();
    let (sent, received) = Flow::start(&pods[0], &pods[1], 30).finish();
    eprintln!(
        "FIGURE API outage: {sent} sent, {received} received at 100 pps over 30 s without the API server"
    );
    assert_eq!(
        sent, received,
        "pod traffic lost while the API server was down"
    );
    // An agent restart in the outage applies the last-known-good mesh from its state dir.
    let flow = Flow::start(&pods[0], &pods[1], 5);
    std::thread::sleep(Duration::from_secs(1));
    tb.node(0).stop_agent();
    tb.node(0).start_agent(&[]);
    let (sent, received) = flow.finish();
    let lost = lost_seconds(sent, received);
    eprintln!(
        "FIGURE agent restart during the outage: {sent} sent, {received} received ({lost:.2} s lost)"
    );
    assert!(lost < 1.0);
    assert!(tb.node(0).agent_log().contains("applied the saved mesh"));
    // The rest of 60 s, then the server comes back.
    let (sent, received) = Flow::start(
        &pods[1],
        &pods[0],
        60u32
            .saturating_sub(outage.elapsed().as_secs() as u32)
            .max(1),
    )
    .finish();
    assert_eq!(
        sent, received,
        "pod traffic lost while the API server was down"
    );
    eprintln!("FIGURE API outage total {:?}", outage.elapsed());
    tb.api_mut().restart();
    // Watching resumed: a change made now reaches the agents.
    tb.api().kubectl_ok(&[
        "annotate",
        "node",
        tb.node(1).name(),
        "wgmesh.io/persistent-keepalive=7",
        "--overwrite",
    ]);
    wait_until(
        WAIT,
        "node0 to apply the change made after the outage",
        || {
            let dump = tb
                .node(0)
                .exec_ok(&["wg", "show", "wgmesh0", "persistent-keepalive"]);
            dump.contains("\t7").then_some(())
        },
    );
    // The watch retried with backoff (capped at about a second, so that a change
    // right after the outage arrives within ~2 s), not in a tight loop.
    let retries = tb
        .node(0)
        .agent_log()
        .matches("retrying with backoff")
        .count();
    eprintln!("FIGURE watch retries logged by node0 during the outage: {retries}");
    assert!(retries < 150, "{retries} retries in a minute");
}

#[test]
fn hijacked_annotations_never_make_traffic_leave_in_clear() {
    require_root!();
    let (tb, pods) = cluster(3);
    assert!(pods[0].ping(pods[1].ip()));
    let (b, c) = (tb.node(1).name().to_string(), tb.node(2).name().to_string());
    // B is compromised or down: its agent cannot repair its annotations.
    tb.node(1).stop_agent();
    let annotate = |kv: &str| {
        tb.api()
            .kubectl_ok(&["annotate", "node", &b, kv, "--overwrite"])
    };
    let events = || tb.api().kubectl_ok(&["get", "events", "-A", "-o", "json"]);

    // 1. Claiming A's pod CIDR by annotation changes nothing: spec.podCIDRs wins.
    annotate(&format!("wgmesh.io/pod-cidrs={}", tb.node(0).pod_cidr()));
    wait_until(WAIT, "a warning Event about the ignored annotation", || {
        events().contains("PodCIDRAnnotationIgnored").then_some(())
    });
    let route = tb
        .node(2)
        .exec_ok(&["ip", "route", "get", &pods[0].ip().to_string()]);
    assert!(route.contains("dev wgmesh0"), "{route}");

    let ((), capture) = tb.router().capture("not arp and not port 6443", || {
        // 2. B publishes C's key: both are refused everywhere; traffic to them is
        //    dropped, not sent in clear.
        annotate(&format!("wgmesh.io/public-key={}", key_of(&tb, 2)));
        wait_until(WAIT, "A to refuse B and C", || {
            let peers = tb.node(0).mesh_peers();
            (!peers.contains(&b) && !peers.contains(&c)).then_some(())
        });
        wait_until(WAIT, "a DuplicatePublicKey Event", || {
            events().contains("DuplicatePublicKey").then_some(())
        });
        assert!(
            !pods[0].ping(pods[1].ip()),
            "traffic to B's pods flowed while B was refused"
        );
        // 3. B's key and endpoint rewritten to an attacker's: peers encrypt B-bound
        //    traffic to the attacker (documented in SECURITY.md), still never in clear.
        let attacker = wgmesh::key::PrivateKey::generate()
            .unwrap()
            .public_key()
            .to_base64();
        annotate(&format!("wgmesh.io/public-key={attacker}"));
        annotate(&format!("wgmesh.io/endpoint={}:51820", tb.internet().ip()));
        wait_until(WAIT, "A to follow the rewritten annotations", || {
            let wg = tb.node(0).exec_ok(&["wg", "show", "wgmesh0", "endpoints"]);
            wg.contains(&attacker).then_some(())
        });
        assert!(!pods[0].ping(pods[1].ip()));
    });
    assert!(!capture.is_empty());
    for line in capture.lines() {
        assert!(!line.contains("10.244."), "pod traffic in clear: {line}");
    }
    eprintln!(
        "FIGURE hijack: {} packets captured during the attack, none with a pod address",
        capture.len()
    );
    // B's agent comes back and republishes the truth: the mesh heals.
    tb.node(1).start_agent(&[]);
    wait_until(WAIT, "the mesh to heal", || {
        pods[0].ping(pods[1].ip()).then_some(())
    });
    assert!(pods[0].ping(pods[2].ip()));
}

/// Links, leases and routes of a node: what pod churn must leave as it found it.
fn footprint(tb: &Testbed, n: usize) -> (usize, Vec<String>, String) {
    let node = tb.node(n);
    let veths = node
        .exec_ok(&["ip", "-o", "link", "show"])
        .lines()
        .filter(|l| l.contains(": wgm") && !l.contains("wgmesh"))
        .count();
    let leases: Vec<String> = node
        .exec_ok(&["ls", "/var/lib/cni/networks/wgmesh"])
        .lines()
        .filter(|l| l.parse::<std::net::IpAddr>().is_ok())
        .map(String::from)
        .collect();
    let routes = node.exec_ok(&["ip", "route", "show"]);
    (veths, leases, routes)
}

#[test]
fn pod_churn_leaks_nothing_and_gc_cleans_pods_that_vanished() {
    require_root!();
    let (tb, pods) = cluster(2);
    let before = footprint(&tb, 0);
    let flow = Flow::start(&pods[0], &pods[1], 10);
    let started = Instant::now();
    for round in 0..3 {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..20)
                .map(|k| {
                    s.spawn({
                        let tb = &tb;
                        move || tb.add_pod(0, &format!("c{round}x{k}"))
                    })
                })
                .collect();
            let created: Vec<Pod> = handles
                .into_iter()
                .map(|h| h.join().expect("pod"))
                .collect();
            let ips: std::collections::BTreeSet<_> = created.iter().map(|p| p.ip()).collect();
            assert_eq!(ips.len(), 20, "20 distinct addresses");
            let deletions: Vec<_> = created
                .into_iter()
                .map(|p| {
                    s.spawn({
                        let tb = &tb;
                        move || tb.delete_pod(p)
                    })
                })
                .collect();
            for d in deletions {
                d.join().expect("delete");
            }
        });
    }
    let churn = started.elapsed();
    let (sent, received) = flow.finish();
    eprintln!(
        "FIGURE pod churn: 3 rounds of 20 parallel ADD+DEL in {churn:?}; cross-node flow {sent} sent, {received} received"
    );
    assert!(
        lost_seconds(sent, received) < 0.05,
        "cross-node traffic suffered from the churn"
    );
    wait_until(WAIT, "the churned veths to be gone", || {
        (footprint(&tb, 0) == before).then_some(())
    });

    // Pods that vanish without DEL: GC with the runtime's valid attachments frees them.
    let ghosts: Vec<Pod> = (0..3)
        .map(|k| tb.add_pod(0, &format!("ghost{k}")))
        .collect();
    for g in &ghosts {
        tb.node(0).exec_ok(&["ip", "netns", "delete", g.name()]);
    }
    assert_eq!(
        footprint(&tb, 0).1.len(),
        before.1.len() + 3,
        "leases of vanished pods remain until GC"
    );
    let mut conf = pods[0].cni_config().clone();
    conf["cniVersion"] = serde_json::json!("1.1.0");
    conf["cni.dev/valid-attachments"] =
        serde_json::json!([{"containerID": pods[0].container_id(), "ifname": "eth0"}]);
    let mut gc = tb.node(0).command(workspace_bin("wgmesh-cni"));
    gc.env("CNI_COMMAND", "GC")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = gc.spawn().expect("GC");
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        conf.to_string().as_bytes(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "GC failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_until(WAIT, "GC to leave only the live pod", || {
        (footprint(&tb, 0) == before).then_some(())
    });
}

#[test]
fn traffic_resumes_after_an_underlay_cut_and_follows_a_new_node_address() {
    require_root!();
    let (tb, pods) = cluster(2);
    assert!(pods[0].ping(pods[1].ip()));
    let link = tb.router().node_links()[1].clone();
    // Cut node1's underlay for 10 s.
    tb.router().exec_ok(&["ip", "link", "set", &link, "down"]);
    assert!(!pods[0].ping(pods[1].ip()));
    std::thread::sleep(Duration::from_secs(10));
    tb.router().exec_ok(&["ip", "link", "set", &link, "up"]);
    let restored = Instant::now();
    wait_until(WAIT, "traffic to resume after the cut", || {
        pods[0].ping(pods[1].ip()).then_some(())
    });
    let resumed = restored.elapsed();
    eprintln!("FIGURE underlay cut of 10 s: traffic resumed {resumed:?} after the link came back");
    assert!(resumed < Duration::from_secs(2), "{resumed:?}");

    // node1 moves to a new underlay address; the kubelet reports it; the agent republishes.
    let node1 = tb.node(1);
    let old = node1.underlay_ip();
    let new = std::net::Ipv4Addr::from(u32::from(old) + 1);
    node1.exec_ok(&["sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1"]);
    node1.exec_ok(&["ip", "addr", "add", &format!("{new}/28"), "dev", "eth0"]);
    node1.exec_ok(&["ip", "addr", "del", &format!("{old}/28"), "dev", "eth0"]);
    let moved = Instant::now();
    let status = format!(
        "{{\"status\":{{\"addresses\":[{{\"type\":\"InternalIP\",\"address\":\"{new}\"}},{{\"type\":\"Hostname\",\"address\":\"{}\"}}]}}}}",
        node1.name()
    );
    tb.api().kubectl_ok(&[
        "patch",
        "node",
        node1.name(),
        "--subresource=status",
        "--type=merge",
        "-p",
        &status,
    ]);
    wait_until(WAIT, "the new endpoint to be published", || {
        (tb.node_annotations(1).get("wgmesh.io/endpoint") == Some(&format!("{new}:51820")))
            .then_some(())
    });
    wait_until(WAIT, "traffic to follow the new address", || {
        pods[0].ping(pods[1].ip()).then_some(())
    });
    wait_until(WAIT, "node0 to use the new endpoint", || {
        tb.node(0)
            .exec_ok(&["wg", "show", "wgmesh0", "endpoints"])
            .contains(&format!("{new}:51820"))
            .then_some(())
    });
    eprintln!(
        "FIGURE underlay address change: traffic and endpoint followed in {:?}",
        moved.elapsed()
    );
}
