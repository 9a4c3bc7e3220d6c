//! Scaled-down scenarios of the scale benchmark as end-to-end tests: one real agent
//! (node0 of a testbed) in a 200-node cluster whose other nodes are emulated. They
//! assert that the agent stays correct (every emulated pod answers through it), not how
//! fast; the timings are `hack/bench-scale.sh`'s. Need root.

use std::time::Duration;

use wgmesh_swarm::emulated::Load;
use wgmesh_swarm::probe::Answers;
use wgmesh_swarm::scale::Scale;
use wgmesh_testkit::require_root;

/// Emulated nodes: with node0, a 200-node cluster.
const EMULATED: usize = 199;
/// Of which answer handshakes as nodes under load do (a cookie first).
const OVERLOADED: usize = 20;
/// Generous bounds: a debug build on a loaded 2-core machine.
const SETTLE: Duration = Duration::from_secs(120);
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
const RETRY: Duration = Duration::from_millis(500);

/// A 200-node cluster whose emulated pods all answer through node0's agent.
fn cluster() -> Scale {
    let mut scale = Scale::start(1, &[]);
    scale.grow(EMULATED);
    scale.wait_for_peers(scale.expected_peers(), SETTLE);
    assert_all_answer(&mut scale, "the 200-node cluster");
    scale
}

fn assert_all_answer(scale: &mut Scale, what: &str) {
    let answers = Answers::of(&scale.probe_all(PROBE_TIMEOUT, RETRY));
    assert!(
        answers.all(),
        "{what}: {} of {} emulated pods answered through node0's agent\n{}",
        answers.answered,
        answers.total,
        scale.diagnostics()
    );
}

#[test]
fn a_node_joining_a_200_node_mesh_gets_a_peer_a_route_and_traffic_at_once() {
    require_root!();
    let mut scale = cluster();
    scale.grow(EMULATED + 1);
    let new = scale.swarm.node(EMULATED);
    let answered = scale.probe_one(EMULATED, PROBE_TIMEOUT, Duration::from_millis(20));
    assert!(
        answered.is_some(),
        "the joining node's pod never answered\n{}",
        scale.diagnostics()
    );
    scale.wait_for_peers(scale.expected_peers(), SETTLE);
    let routes = scale.on_agent_node(&["ip", "route", "show", "proto", "87"]);
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with(&format!("{} dev wgmesh0", new.pod_cidr))),
        "no route to {} through wgmesh0:\n{routes}",
        new.pod_cidr
    );
    let peers = scale.on_agent_node(&["wg", "show", "wgmesh0", "peers"]);
    assert!(peers.contains(&new.public_key().to_base64()));
    assert_eq!(peers.lines().count(), EMULATED + 1);
    assert!(new.has_session(), "the new node handshook with node0");
    // The others are unaffected.
    assert_all_answer(&mut scale, "after the join");
}

#[test]
fn after_restarts_every_one_of_200_peers_handshakes_again_and_carries_traffic() {
    require_root!();
    // Some peers are under load: node0 must get through their cookie replies.
    let mut scale = Scale::start(1, &[]);
    scale.grow(EMULATED - OVERLOADED);
    scale.grow_with(EMULATED, Load::Overloaded);
    scale.wait_for_peers(scale.expected_peers(), SETTLE);
    assert_all_answer(&mut scale, "the 200-node cluster");

    // node0's agent restarts; its pod then sends to every node at once.
    let before = scale.swarm.totals();
    scale.restart_agent();
    assert_all_answer(&mut scale, "after node0's agent restarted");
    let seen = scale.swarm.totals() - before;
    assert!(
        seen.handshakes >= EMULATED as u64,
        "every peer handshook with the restarted agent: {seen:?}"
    );
    assert!(
        seen.cookies_sent >= OVERLOADED as u64,
        "the overloaded peers asked node0 for cookies: {seen:?}"
    );

    // Every other node restarts (its sessions gone) and sends to node0 at once.
    let before = scale.swarm.totals();
    scale.swarm.reset_all();
    let answers = Answers::of(
        &scale
            .swarm
            .ping_all(scale.agent_gateway(), PROBE_TIMEOUT, RETRY),
    );
    let seen = scale.swarm.totals() - before;
    assert!(
        answers.all(),
        "after every peer restarted, {} of {} got node0's answer ({seen:?})\n{}",
        answers.answered,
        answers.total,
        scale.diagnostics()
    );
    assert!(
        scale.swarm.nodes().iter().all(|n| n.has_session()),
        "a peer without a session"
    );
    // 199 handshakes are within node0's budget: none needed a cookie.
    assert_eq!(seen.cookies, 0, "{seen:?}");
    assert_eq!(seen.errors, 0, "no datagram refused: {seen:?}");
    assert!(scale.agent().agent_running());
}
