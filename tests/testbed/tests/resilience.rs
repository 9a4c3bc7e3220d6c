//! Keeping pods connected through restarts, outages, key rotation and underlay faults
//! (issue #9), on the testbed, with the figures printed (`FIGURE` lines). Every test
//! ends by checking that no pod packet was on the underlay in clear (the router's
//! pod-range drop counter, and captures where a test takes them). Needs root.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wgmesh_testbed::addressing::API_IP;
use wgmesh_testbed::{Exec, Pod, Testbed};
use wgmesh_testkit::{require_root, wait_until, workspace_bin};

const WAIT: Duration = Duration::from_secs(30);
/// The flow: 100 packets per second.
const INTERVAL: &str = "0.01";
/// How long one probe of a timed change waits for its answer.
const PROBE: Duration = Duration::from_millis(200);

// Bounds on the README's figures: 5–10× the figure measured on the development VM, so
// a loaded machine still passes (each held with two busy loops added to its load) and
// a regression does not.
/// Loss across an agent restart (README: 0.01–0.05 s; 0.11 s loaded).
const RESTART_LOSS: f64 = 0.25;
/// Loss of each flow across a key rotation (README: 0.00–0.05 s).
const ROTATION_LOSS: f64 = 0.25;
/// Traffic back after a 10 s underlay cut, from the moment the link is up (README:
/// 1–12 ms; 47 ms loaded).
const CUT_RESUME: Duration = Duration::from_millis(100);
/// A node's new underlay address published, used by peers and carrying traffic, from
/// the kubelet's report (README: 0.06–0.08 s; 0.15 s loaded).
const MOVE_FOLLOW: Duration = Duration::from_millis(500);
/// 3 rounds of 20 parallel pod ADD+DEL (README: 1.0–2.7 s; 6.5 s loaded).
const CHURN: Duration = Duration::from_millis(13_500);

/// A 100-packets-per-second ping from `from` to `to` running in the background.
struct Flow {
    child: Option<Child>,
    started: Instant,
}

/// What a flow saw.
#[derive(Debug)]
struct Flowed {
    sent: u32,
    received: u32,
    /// When each reply arrived (seconds since the epoch, ping's `-D`).
    replies: Vec<f64>,
}

impl Flowed {
    /// Seconds of the flow lost (100 packets a second).
    fn lost_seconds(&self) -> f64 {
        f64::from(self.sent.saturating_sub(self.received)) / 100.0
    }

    /// The first reply at or after `t` (seconds since the epoch).
    fn first_reply_after(&self, t: f64) -> Option<f64> {
        self.replies.iter().copied().find(|r| *r >= t)
    }
}

impl Flow {
    fn start(from: &Pod, to: &Pod, seconds: u32) -> Flow {
        let child = from
            .command("ping")
            .args([
                "-n",
                "-D",
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

    /// Waits for the end.
    fn finish(mut self) -> Flowed {
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
        // "[1764160000.123456] 64 bytes from 10.244.1.2: icmp_seq=1 ttl=62 time=0.3 ms"
        let replies = text
            .lines()
            .filter(|l| l.contains(" bytes from "))
            .filter_map(|l| l.strip_prefix('[')?.split_once(']')?.0.parse().ok())
            .collect();
        Flowed {
            sent: num("packets"),
            received: num("received"),
            replies,
        }
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
    cluster_with(nodes, &[])
}

/// `nodes` nodes whose agents get `args`, one pod on each.
fn cluster_with(nodes: usize, args: &[&str]) -> (Testbed, Vec<Pod>) {
    let tb = Testbed::builder().nodes(nodes).agent_args(args).build();
    let pods = (0..nodes)
        .map(|n| tb.add_pod(n, &format!("r{n}")))
        .collect();
    (tb, pods)
}

/// Seconds since the epoch, as ping's `-D` prints them.
fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs_f64()
}

#[test]
fn an_agent_restart_loses_under_a_quarter_second_of_traffic_and_nothing_leaves_in_clear() {
    require_root!();
    let (tb, pods) = cluster(2);
    assert!(pods[0].ping(pods[1].ip()));
    let node0 = tb.node(0);
    let index_before = node0.exec_ok(&["ip", "-o", "link", "show", "wgmesh0"]);
    let (flowed, capture) = tb.router().capture("not arp and not port 6443", || {
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
    let lost = flowed.lost_seconds();
    eprintln!(
        "FIGURE agent restart: {} sent, {} received at 100 pps: {lost:.2} s of loss",
        flowed.sent, flowed.received
    );
    assert!(
        lost < RESTART_LOSS,
        "{lost} s of loss across an agent restart (bound {RESTART_LOSS} s)"
    );
    assert!(!capture.is_empty(), "the capture saw the flow");
    tb.router().assert_no_pod_traffic_in_clear(&[&capture]);
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
fn a_key_rotation_switches_every_peer_losing_under_a_quarter_second_in_either_direction() {
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
    let (there, back) = (flow.finish(), back.finish());
    let (lost, lost2) = (there.lost_seconds(), back.lost_seconds());
    eprintln!(
        "FIGURE key rotation: node0->node1 {} sent {} received ({lost:.2} s lost); node2->node0 {}/{} ({lost2:.2} s lost)",
        there.sent, there.received, back.sent, back.received
    );
    assert!(
        lost < ROTATION_LOSS && lost2 < ROTATION_LOSS,
        "{lost} s / {lost2} s of loss across a key rotation (bound {ROTATION_LOSS} s)"
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
    tb.router().assert_no_pod_traffic_in_clear(&[]);
}

#[test]
fn pods_keep_talking_through_an_api_server_outage_and_an_agent_restart_in_it_and_agents_stay_live()
{
    require_root!();
    // Liveness fails when the reconcile loop has not turned for 3 resync intervals, at
    // least 60 s: with 10 s the window is 60 s, which the outage outlasts.
    const LIVENESS_WINDOW: Duration = Duration::from_secs(60);
    const OUTAGE: Duration = Duration::from_secs(70);
    let (mut tb, pods) = cluster_with(2, &["--resync-interval", "10s"]);
    assert!(pods[0].ping(pods[1].ip()));
    // node1's agent runs through the whole outage; node0's is restarted in it.
    let node1_log_before = tb.node(1).agent_log().len();
    let outage = Instant::now();
    tb.api_mut().stop();
    let flowed = Flow::start(&pods[0], &pods[1], 30).finish();
    eprintln!(
        "FIGURE API outage: {} sent, {} received at 100 pps over 30 s without the API server",
        flowed.sent, flowed.received
    );
    assert_eq!(
        flowed.sent, flowed.received,
        "pod traffic lost while the API server was down"
    );
    // An agent restart in the outage applies the last-known-good mesh from its state dir.
    let flow = Flow::start(&pods[0], &pods[1], 5);
    std::thread::sleep(Duration::from_secs(1));
    tb.node(0).stop_agent();
    tb.node(0).start_agent(&["--resync-interval", "10s"]);
    let flowed = flow.finish();
    let lost = flowed.lost_seconds();
    eprintln!(
        "FIGURE agent restart during the outage: {} sent, {} received ({lost:.2} s lost)",
        flowed.sent, flowed.received
    );
    assert!(
        lost < RESTART_LOSS,
        "{lost} s of loss across an agent restart in the outage (bound {RESTART_LOSS} s)"
    );
    assert!(tb.node(0).agent_log().contains("applied the saved mesh"));
    // The rest of the outage, traffic the other way.
    let rest = OUTAGE.saturating_sub(outage.elapsed()).as_secs() as u32;
    let flowed = Flow::start(&pods[1], &pods[0], rest.max(1)).finish();
    assert_eq!(
        flowed.sent, flowed.received,
        "pod traffic lost while the API server was down"
    );
    // Past the liveness window, node1's agent is still live and ready: its loop turns
    // without the API server, and readiness does not follow the API server.
    let down = outage.elapsed();
    assert!(down > LIVENESS_WINDOW + Duration::from_secs(5), "{down:?}");
    assert_eq!(
        tb.node(1).agent_http("/healthz").0,
        "200",
        "/healthz of node1 after {down:?} without the API server"
    );
    assert_eq!(
        tb.node(1).agent_http("/readyz").0,
        "200",
        "/readyz of node1 after {down:?} without the API server"
    );
    eprintln!("FIGURE API outage total {down:?}; /healthz and /readyz of node1 then 200");
    // The watch retried with backoff (capped at about a second, so that a change right
    // after the outage arrives within ~2 s), neither silently (a watch that stopped
    // trying would never resume) nor in a tight loop (two a second at most).
    let retries = tb.node(1).agent_log()[node1_log_before..]
        .matches("node watch interrupted; retrying with backoff")
        .count();
    eprintln!("FIGURE watch retries logged by node1 during the outage: {retries}");
    assert!(
        retries > 0 && (retries as f64) < 2.0 * down.as_secs_f64(),
        "{retries} watch retries logged in {down:?} (the log line changed, or no backoff)"
    );
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
    tb.router().assert_no_pod_traffic_in_clear(&[]);
}

#[test]
fn hijacked_annotations_cut_the_nodes_involved_off_and_never_make_traffic_leave_in_clear() {
    require_root!();
    let (tb, pods) = cluster(3);
    assert!(pods[0].ping(pods[1].ip()));
    let (b, c) = (tb.node(1).name().to_string(), tb.node(2).name().to_string());
    // B is cut off from the API server, so its agent cannot repair its annotations; it
    // keeps running, and with it B's data plane: B still answers whoever reaches it, so
    // only the other nodes' refusal can keep B's pods unreachable.
    let cut = tb.router().block(tb.node(1).underlay_ip(), API_IP);
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
    assert!(pods[0].ping(pods[1].ip()), "B is still in the mesh");

    let ((), capture) = tb.router().capture("not arp and not port 6443", || {
        // 2. B publishes C's key: both are refused everywhere; traffic to and from them
        //    is dropped, not sent in clear.
        annotate(&format!("wgmesh.io/public-key={}", key_of(&tb, 2)));
        wait_until(WAIT, "A to refuse B and C", || {
            let peers = tb.node(0).mesh_peers();
            (!peers.contains(&b) && !peers.contains(&c)).then_some(())
        });
        wait_until(WAIT, "a DuplicatePublicKey Event", || {
            events().contains("DuplicatePublicKey").then_some(())
        });
        for (from, to, what) in [
            (&pods[0], &pods[1], "A's pod reached B's"),
            (&pods[1], &pods[0], "B's pod reached A's"),
            (&pods[0], &pods[2], "A's pod reached C's"),
            (&pods[2], &pods[0], "C's pod reached A's"),
        ] {
            assert!(!from.ping(to.ip()), "{what} while B and C were refused");
        }
        // 3. B's key and endpoint rewritten to an attacker's: peers encrypt B-bound
        //    traffic to the attacker (documented in SECURITY.md), still never in clear.
        //    C's key is unique again, so C is back.
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
        assert!(
            !pods[0].ping(pods[1].ip()),
            "A's pod reached B's through the attacker's key"
        );
        wait_until(WAIT, "C to be back once its key is unique again", || {
            pods[0].ping(pods[2].ip()).then_some(())
        });
    });
    assert!(!capture.is_empty(), "the capture saw the attack's traffic");
    eprintln!(
        "FIGURE hijack: {} packets captured during the attack, none with a pod address",
        capture.len()
    );
    tb.router().assert_no_pod_traffic_in_clear(&[&capture]);
    // B reaches the API server again, its agent restarts and republishes the truth:
    // the mesh heals.
    drop(cut);
    tb.node(1).stop_agent();
    tb.node(1).start_agent(&[]);
    wait_until(WAIT, "the mesh to heal", || {
        pods[0].ping(pods[1].ip()).then_some(())
    });
    assert!(pods[0].ping(pods[2].ip()));
    tb.router().assert_no_pod_traffic_in_clear(&[]);
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
fn pod_churn_is_quick_leaks_nothing_and_gc_cleans_pods_that_vanished() {
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
    let flowed = flow.finish();
    eprintln!(
        "FIGURE pod churn: 3 rounds of 20 parallel ADD+DEL in {churn:?}; cross-node flow {} sent, {} received",
        flowed.sent, flowed.received
    );
    assert!(
        churn < CHURN,
        "3 rounds of churn took {churn:?} (bound {CHURN:?})"
    );
    assert!(
        flowed.lost_seconds() < 0.05,
        "cross-node traffic suffered from the churn: {flowed:?}"
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
    tb.router().assert_no_pod_traffic_in_clear(&[]);
}

#[test]
fn traffic_resumes_at_once_after_an_underlay_cut_and_follows_a_new_node_address() {
    require_root!();
    let (tb, pods) = cluster(2);
    assert!(pods[0].ping(pods[1].ip()));
    let link = tb.router().node_links()[1].clone();
    // Cut node1's underlay for 10 s under a 100 pps flow, which then shows when the
    // first reply came back.
    let flow = Flow::start(&pods[0], &pods[1], 13);
    std::thread::sleep(Duration::from_millis(500));
    tb.router().exec_ok(&["ip", "link", "set", &link, "down"]);
    let down = now_epoch();
    std::thread::sleep(Duration::from_secs(10));
    tb.router().exec_ok(&["ip", "link", "set", &link, "up"]);
    let up = now_epoch();
    let flowed = flow.finish();
    assert!(
        !flowed.replies.iter().any(|r| (down + 0.05..up).contains(r)),
        "replies while the underlay was cut"
    );
    let first = flowed
        .first_reply_after(up)
        .unwrap_or_else(|| panic!("no reply after the link came back: {flowed:?}"));
    let resumed = Duration::from_secs_f64(first - up);
    eprintln!("FIGURE underlay cut of 10 s: traffic resumed {resumed:?} after the link came back");
    assert!(
        resumed < CUT_RESUME,
        "traffic resumed {resumed:?} after the link came back (bound {CUT_RESUME:?})"
    );

    // node1 moves to a new underlay address; the kubelet reports it; the agent republishes.
    let node1 = tb.node(1);
    let old = node1.underlay_ip();
    let new = std::net::Ipv4Addr::from(u32::from(old) + 1);
    let new_endpoint = format!("{new}:51820");
    node1.exec_ok(&["sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1"]);
    node1.exec_ok(&["ip", "addr", "add", &format!("{new}/28"), "dev", "eth0"]);
    node1.exec_ok(&["ip", "addr", "del", &format!("{old}/28"), "dev", "eth0"]);
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
    // The clock starts once the kubelet has reported the new address (kubectl's own
    // start-up is not the agents' doing).
    let reported = Instant::now();
    wait_until(WAIT, "the new endpoint to be published", || {
        (tb.node_annotations(1).get("wgmesh.io/endpoint") == Some(&new_endpoint)).then_some(())
    });
    let published = reported.elapsed();
    wait_until(WAIT, "node0 to use the new endpoint", || {
        tb.node(0)
            .exec_ok(&["wg", "show", "wgmesh0", "endpoints"])
            .contains(&new_endpoint)
            .then_some(())
    });
    wait_until(WAIT, "traffic to follow the new address", || {
        pods[0].ping_once(pods[1].ip(), PROBE).then_some(())
    });
    let followed = reported.elapsed();
    eprintln!(
        "FIGURE underlay address change: the new endpoint published {published:?}, used by node0 and carrying traffic {followed:?} after the kubelet reported it"
    );
    assert!(
        followed < MOVE_FOLLOW,
        "peers followed the new address only after {followed:?} (bound {MOVE_FOLLOW:?})"
    );
    tb.router().assert_no_pod_traffic_in_clear(&[]);
}
