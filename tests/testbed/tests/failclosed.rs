//! Fail closed at every moment of a node's life (issue #13): a reboot, a wrong or empty
//! `--cluster-cidr`, a resolver that never answers. The router between the nodes drops
//! and counts every packet to or from the pod range, as real routers drop private
//! addresses, and captures what crosses it: every test asserts that not one pod-address
//! packet reached it. Needs root.

use std::time::Duration;

use serde_json::Value;
use wgmesh_testbed::{Capture, Exec, Pod, Testbed};
use wgmesh_testkit::{require_root, wait_until};

const WAIT: Duration = Duration::from_secs(30);
/// The router capture's filter: everything between nodes but ARP and the API traffic.
const UNDERLAY: &str = "not arp and not port 6443";

/// Not one packet with a pod address crossed the router: none captured, none dropped.
fn assert_nothing_in_clear(tb: &Testbed, capture: &Capture, drops_before: u64) {
    let leaked: Vec<String> = capture
        .lines()
        .into_iter()
        .filter(|l| l.contains("10.244."))
        .collect();
    assert!(
        leaked.is_empty(),
        "pod addresses on the underlay: {leaked:?}"
    );
    assert_eq!(
        tb.router().pod_range_drops(),
        drops_before,
        "the router dropped pod-range packets: something left a node in clear"
    );
}

/// The NetworkUnavailable condition of `node` as (status, reason, message).
fn network_condition(tb: &Testbed, node: &str) -> Option<(String, String, String)> {
    let json: Value =
        serde_json::from_str(&tb.api().kubectl_ok(&["get", "node", node, "-o", "json"])).ok()?;
    json["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "NetworkUnavailable")
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("status"), s("reason"), s("message"))
        })
}

/// Messages of the Events about `node` with `reason`.
fn events(tb: &Testbed, node: &str, reason: &str) -> Vec<String> {
    let json: Value =
        serde_json::from_str(&tb.api().kubectl_ok(&["get", "events", "-A", "-o", "json"]))
            .unwrap_or_default();
    json["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["name"] == node && e["reason"] == reason)
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn ping_eventually(from: &Pod, to: &Pod) {
    wait_until(
        WAIT,
        &format!("{} to reach {}", from.name(), to.name()),
        || from.ping(to.ip()).then_some(()),
    );
}

#[test]
fn a_rebooted_node_gives_no_pod_a_network_until_its_agent_has_put_the_guard_back() {
    require_root!();
    let tb = Testbed::builder().nodes(3).build();
    let p0 = tb.add_pod(0, "p0");
    let p1 = tb.add_pod(1, "p1");
    let old = tb.add_pod(2, "old");
    assert!(p0.ping(old.ip()));
    let node2 = tb.node(2);
    let drops_before = tb.router().pod_range_drops();

    let ((early, late, refusals), capture) = tb.router().capture(UNDERLAY, || {
        // Power cut: the kernel state is gone, the conflist is still on disk, and the
        // container runtime comes back before the agent's DaemonSet pod does.
        node2.simulate_reboot();
        let conflist = node2.conflist().expect("the conflist survives a reboot");
        let early: Vec<_> = (0..3)
            .map(|i| node2.try_add_pod(&format!("early{i}"), &conflist))
            .collect();
        // Other nodes' pods keep sending to the rebooted node's pods.
        assert!(!p0.ping(old.ip()), "nothing answers on a rebooted node");
        // The agent is back: the runtime's retries succeed.
        node2.start_agent(&[]);
        let (late, refusals) =
            node2.add_pod_retrying("late", Duration::from_millis(200), Duration::from_secs(60));
        ping_eventually(&late, &p0);
        ping_eventually(&p1, &late);
        (early, late, refusals)
    });

    for attempt in &early {
        let refused = attempt
            .as_ref()
            .expect_err("no pod gets a network while the node's guard is missing");
        assert_eq!(refused.code, Some(11), "try again later: {refused}");
        for words in ["guard", "wgmesh agent"] {
            assert!(refused.message.contains(words), "{words:?}: {refused}");
        }
    }
    assert!(
        refusals.iter().all(|r| r.code == Some(11)),
        "every refusal before the guard was back is a try-again: {refusals:?}"
    );
    assert!(late.ip().to_string().starts_with("10.244.2."));
    assert_nothing_in_clear(&tb, &capture, drops_before);

    // The guard went in first: before the key was read, before the API was asked.
    let log = node2.agent_log();
    let last_start = log.rfind("=== testbed: starting the agent").unwrap_or(0);
    // This start's lines, after the testbed's own marker line.
    let this_start = log[last_start..]
        .split_once('\n')
        .map_or("", |(_, rest)| rest);
    let guard = this_start.find("node guard in place");
    let key = this_start.find(": starting");
    assert!(
        matches!((guard, key), (Some(g), Some(k)) if g < k),
        "the guard is the agent's first act:\n{this_start}"
    );
}

#[test]
fn a_node_rebooted_during_an_api_outage_serves_pods_encrypted_from_its_saved_mesh() {
    require_root!();
    let mut tb = Testbed::builder().nodes(2).build();
    let p0 = tb.add_pod(0, "p0");
    let drops_before = tb.router().pod_range_drops();
    tb.api_mut().stop();
    let ((), capture) = tb.router().capture(UNDERLAY, || {
        let node1 = tb.node(1);
        node1.simulate_reboot();
        node1.start_agent(&[]);
        let (pod, _) =
            node1.add_pod_retrying("after", Duration::from_millis(200), Duration::from_secs(60));
        ping_eventually(&pod, &p0);
        ping_eventually(&p0, &pod);
    });
    assert_nothing_in_clear(&tb, &capture, drops_before);
    assert!(tb.node(1).agent_log().contains("applied the saved mesh"));
    tb.api_mut().restart();
}

#[test]
fn a_cluster_cidr_that_misses_the_pod_range_fails_closed_and_says_so() {
    require_root!();
    let tb = Testbed::builder().nodes(3).build();
    let pods: Vec<Pod> = (0..3).map(|n| tb.add_pod(n, &format!("m{n}"))).collect();
    assert!(pods[2].ping(pods[0].ip()));
    let node2 = tb.node(2);
    wait_until(WAIT, "node2 reported ready", || {
        network_condition(&tb, node2.name()).filter(|c| c.0 == "False")
    });
    let drops_before = tb.router().pod_range_drops();

    // A ConfigMap copied from another cluster, rolled out to node2.
    let ((), capture) = tb.router().capture(UNDERLAY, || {
        node2.stop_agent();
        node2.start_agent(&["--cluster-cidr", "10.96.0.0/16"]);
        wait_until(WAIT, "node2 to remove its conflist", || {
            node2.conflist().is_none().then_some(())
        });
        // Pods that were already running send to every other node and the internet;
        // other nodes' pods send to them. Nothing may leave in clear.
        for _ in 0..3 {
            pods[2].ping(pods[0].ip());
            pods[2].ping(pods[1].ip());
            pods[0].ping(pods[2].ip());
        }
    });
    assert_nothing_in_clear(&tb, &capture, drops_before);

    // Loudly: the condition, readiness, an Event and the log name both values.
    let (status, reason, message) = wait_until(WAIT, "NetworkUnavailable=True", || {
        network_condition(&tb, node2.name()).filter(|c| c.0 == "True")
    });
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "WgmeshMisconfigured")
    );
    for value in ["10.244.2.0/24", "10.96.0.0/16"] {
        assert!(message.contains(value), "{value} not in {message:?}");
    }
    let (code, body) = node2.agent_http("/readyz");
    assert_eq!(code, "503", "{body}");
    assert!(body.contains("10.96.0.0/16"), "{body}");
    let event = wait_until(WAIT, "an Event about node2's configuration", || {
        events(&tb, node2.name(), "ClusterCIDRMisconfigured")
            .into_iter()
            .next()
    });
    assert!(
        event.contains("10.244.2.0/24") && event.contains("10.96.0.0/16"),
        "{event}"
    );
    assert!(node2.agent_log().contains("ERROR"), "an error is logged");

    // Fixed: the node hosts pods again.
    node2.stop_agent();
    node2.start_agent(&[]);
    let fresh = tb.add_pod(2, "fresh");
    ping_eventually(&fresh, &pods[0]);
    wait_until(WAIT, "NetworkUnavailable=False again", || {
        network_condition(&tb, node2.name()).filter(|c| c.0 == "False")
    });
}

#[test]
fn without_a_cluster_cidr_the_guard_covers_every_known_pod_range() {
    require_root!();
    // An empty ConfigMap value: the DaemonSet passes `--cluster-cidr=`.
    let tb = Testbed::builder()
        .nodes(3)
        .agent_args(&["--cluster-cidr="])
        .build();
    let pods: Vec<Pod> = (0..3).map(|n| tb.add_pod(n, &format!("e{n}"))).collect();
    assert!(pods[0].ping(pods[1].ip()));
    // A node the controller-manager allocated a range to, whose agent has not
    // published anything yet: not a peer, but its range is pod space all the same.
    let path = tb.api().write_file(
        "node9.yaml",
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node9\nspec:\n  podCIDR: 10.244.9.0/24\n  podCIDRs: [10.244.9.0/24]\n",
    );
    tb.api().kubectl_ok(&["create", "-f", &path]);
    let node0 = tb.node(0);
    let routes = wait_until(WAIT, "node9's range guarded on node0", || {
        let routes = node0.exec_ok(&["ip", "route", "show", "proto", "87", "type", "unreachable"]);
        routes.contains("10.244.9.0/24").then_some(routes)
    });
    for range in ["10.244.0.0/23", "10.244.2.0/24", "10.244.9.0/24"] {
        assert!(routes.contains(range), "{range} not guarded:\n{routes}");
    }
    let drops_before = tb.router().pod_range_drops();
    let ((), capture) = tb.router().capture(UNDERLAY, || {
        assert!(!pods[0].ping("10.244.9.5"), "node9 has no pods yet");
        assert!(!node0.ping("10.244.9.5"));
        // The agent is gone and wgmesh0 with it: every pod range stays guarded.
        node0.kill_agent();
        node0.exec_ok(&["ip", "link", "delete", "wgmesh0"]);
        assert!(!pods[0].ping(pods[1].ip()));
        assert!(!pods[0].ping(pods[2].ip()));
        assert!(!node0.ping(pods[2].ip()));
    });
    assert_nothing_in_clear(&tb, &capture, drops_before);
    node0.start_agent(&[]);
    ping_eventually(&pods[0], &pods[2]);
}

#[test]
fn a_resolver_that_never_answers_does_not_stall_the_agent() {
    require_root!();
    let tb = Testbed::builder().nodes(3).build();
    let pods: Vec<Pod> = (0..3).map(|n| tb.add_pod(n, &format!("d{n}"))).collect();
    let node0 = tb.node(0);
    // node0's resolver: an address on the internet segment where nobody answers.
    node0.exec_ok(&[
        "sh",
        "-c",
        "echo 'nameserver 203.0.113.53' > /run/resolv.conf && mount --bind /run/resolv.conf /etc/resolv.conf",
    ]);
    // An administrator names node1 by DNS: node0 cannot resolve it.
    tb.api().kubectl_ok(&[
        "annotate",
        "node",
        tb.node(1).name(),
        "wgmesh.io/force-endpoint=node1.wgmesh.test:51820",
        "--overwrite",
    ]);
    // Meanwhile every other change still reaches node0's device at once.
    let set = std::time::Instant::now();
    tb.api().kubectl_ok(&[
        "annotate",
        "node",
        tb.node(2).name(),
        "wgmesh.io/persistent-keepalive=9",
        "--overwrite",
    ]);
    wait_until(WAIT, "node0 to apply node2's keepalive", || {
        node0
            .exec_ok(&["wg", "show", "wgmesh0", "persistent-keepalive"])
            .contains("\t9")
            .then_some(())
    });
    let took = set.elapsed();
    eprintln!("FIGURE a change applied while a name does not resolve: {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "{took:?}: the resolver stalled the agent"
    );
    // node1 keeps the endpoint it had: its traffic flows.
    assert!(pods[0].ping(pods[1].ip()));
    wait_until(WAIT, "the failed lookup to be logged", || {
        node0
            .agent_log()
            .contains("cannot resolve endpoint name")
            .then_some(())
    });
}
