//! Every pod pair connected across clouds, home networks and NATs, encrypted on every
//! wire (issue #14), on the multi-cloud testbed: a1, a2 in cloud-a behind a 1:1 NAT
//! gateway that does not hairpin, b1 in cloud-b, h1 behind a port-preserving
//! masquerade, h2 behind a symmetric NAT, an internet that drops private addresses.
//! Agents run with the basic flags only. Needs root.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde_json::Value;
use wgmesh_testbed::multicloud::{MultiCloud, NatKind};
use wgmesh_testbed::{Capture, Exec, Pod, wait_for_connectivity};
use wgmesh_testkit::{require_root, wait_until};

const WAIT: Duration = Duration::from_secs(30);
/// Pod traffic, not the API server's.
const FILTER: &str = "not arp and not port 6443";

fn pod_range() -> Ipv4Net {
    "10.244.0.0/16".parse().unwrap()
}

/// No packet on any captured link shows a pod address, and every UDP packet between
/// sites is WireGuard.
fn assert_encrypted_on_every_wire(capture: &Capture) {
    let leaked: Vec<String> = capture
        .packets_with_addresses_in(pod_range())
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(leaked.is_empty(), "pod addresses on the wire: {leaked:?}");
    let clear: Vec<String> = capture
        .packets
        .iter()
        .filter(|p| p.udp_payload().is_some() && !p.is_wireguard())
        .map(ToString::to_string)
        .collect();
    assert!(clear.is_empty(), "UDP that is not WireGuard: {clear:?}");
}

/// Node `node`'s saved plan entry for its peer `peer`.
fn planned(mc: &MultiCloud, node: &str, peer: &str) -> Value {
    mc.node(node)
        .mesh()
        .map(|m| m["peers"][peer].clone())
        .unwrap_or(Value::Null)
}

fn pod_of<'a>(pods: &'a [Pod], node: &str) -> &'a Pod {
    pods.iter()
        .find(|p| p.node_name() == node)
        .unwrap_or_else(|| panic!("no pod on {node}"))
}

fn reach(from: &Pod, to: &Pod, within: Duration) -> Duration {
    let start = Instant::now();
    wait_until(
        within,
        &format!("{} to reach {}", from.name(), to.name()),
        || {
            from.ping_once(to.ip(), Duration::from_millis(500))
                .then_some(())
        },
    );
    start.elapsed()
}

#[test]
fn every_pod_pair_connects_within_15_s_of_the_agents_starting_encrypted_on_every_wire() {
    require_root!();
    let mut mc = MultiCloud::builder().without_agents().build();
    mc.start_agents();
    let started = mc.agents_started().expect("started");
    let pods = mc.add_pod_per_node("p");
    let connected = wait_for_connectivity(&pods, Duration::from_secs(30))
        .unwrap_or_else(|m| panic!("not every pair connected:\n{m}\n{}", mc.diagnostics()));
    let took = connected.duration_since(started);
    eprintln!("FIGURE 20 of 20 pod pairs answered {took:?} after the agents started");
    assert!(took < Duration::from_secs(15), "{took:?}");

    // Everything between sites, and on cloud-a's LAN, while every pair talks.
    let mut links = mc.internet_links();
    links.extend(mc.lan_links("cloud-a"));
    links.extend(mc.lan_links("cloud-b"));
    links.extend(mc.lan_links("home1"));
    links.extend(mc.lan_links("home2"));
    let private_drops_before = mc.internet_router().private_drops();
    let (matrix, capture) = mc.capture(&links, FILTER, || {
        wgmesh_testbed::connectivity_matrix(&pods)
    });
    assert!(matrix.all_ok(), "{matrix}");
    assert!(
        capture.len() > 20,
        "the capture saw the traffic: {}",
        capture.len()
    );
    assert_encrypted_on_every_wire(&capture);
    assert_eq!(
        mc.internet_router().private_drops(),
        private_drops_before,
        "with every path found, nothing goes to a private address of another site"
    );

    // Every node tells how it reaches each peer; the pair behind NATs on both sides
    // goes through a relay, the others directly.
    let h2_from_h1 = planned(&mc, "h1", "h2");
    assert!(
        h2_from_h1["via"].is_string(),
        "h1 -> h2 is relayed: {h2_from_h1}"
    );
    let relay = h2_from_h1["via"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        planned(&mc, "h2", "h1")["via"],
        relay.as_str(),
        "both sides agree"
    );
    assert_eq!(planned(&mc, "a1", "a2")["endpoint_source"], "private");
    assert_eq!(planned(&mc, "a1", "b1")["endpoint_source"], "public");
    let (code, metrics) = mc.node("h1").agent_http("/metrics");
    assert_eq!(code, "200");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wgmesh_peer_endpoint_info")
                && l.contains("node=\"h2\"")
                && l.contains("source=\"relay\"")
                && l.contains(&format!("via=\"{relay}\""))),
        "{metrics}"
    );
}

#[test]
fn pod_traffic_inside_a_cloud_stays_on_its_lan_between_the_vpc_addresses() {
    require_root!();
    let mc = MultiCloud::build();
    let pods = mc.add_pod_per_node("l");
    let (a1, a2) = (pod_of(&pods, "a1"), pod_of(&pods, "a2"));
    reach(a1, a2, WAIT);
    let mut links = mc.lan_links("cloud-a");
    links.push("gw-a/wan".into());
    let ((), capture) = mc.capture(&links, FILTER, || {
        for _ in 0..3 {
            assert!(a1.ping(a2.ip()) && a2.ping(a1.ip()));
        }
    });
    assert_encrypted_on_every_wire(&capture);
    let vpc = [Ipv4Addr::new(172, 31, 1, 2), Ipv4Addr::new(172, 31, 1, 3)];
    assert!(!capture.is_empty());
    for p in &capture.packets {
        assert!(
            !p.interface.ends_with("/wan"),
            "a1-a2 traffic went to the gateway's public side: {p}"
        );
        let addrs = p.ipv4_addresses();
        assert!(
            addrs.len() >= 2 && addrs[..2].iter().all(|a| vpc.contains(a)),
            "not between the VPC addresses: {p}"
        );
    }
}

#[test]
fn the_pair_behind_two_nats_is_relayed_and_goes_direct_once_both_nats_preserve_ports() {
    require_root!();
    let mc = MultiCloud::build();
    let pods = mc.add_pod_per_node("r");
    let (h1, h2) = (pod_of(&pods, "h1"), pod_of(&pods, "h2"));
    reach(h1, h2, WAIT);
    reach(h2, h1, WAIT);
    assert!(
        planned(&mc, "h1", "h2")["via"].is_string(),
        "a symmetric NAT: relayed"
    );

    // h2's ISP switches to a port-preserving NAT: hole punching works, the pair goes
    // direct.
    mc.gateway("gw-h2").set_nat(NatKind::PortPreserving);
    let switched = Instant::now();
    wait_until(Duration::from_secs(60), "h1 and h2 to go direct", || {
        (planned(&mc, "h1", "h2")["via"].is_null() && planned(&mc, "h2", "h1")["via"].is_null())
            .then_some(())
    });
    reach(h1, h2, WAIT);
    reach(h2, h1, WAIT);
    eprintln!(
        "FIGURE h1-h2 direct {:?} after gw-h2 preserved ports",
        switched.elapsed()
    );
    let (h1_public, h2_public) = (mc.public_ip("h1"), mc.public_ip("h2"));
    let ((), capture) = mc.capture(&mc.internet_links(), FILTER, || {
        for _ in 0..3 {
            assert!(h1.ping(h2.ip()));
        }
    });
    assert_encrypted_on_every_wire(&capture);
    assert!(
        capture.packets.iter().any(|p| {
            let a = p.ipv4_addresses();
            a.len() >= 2 && a[..2].contains(&h1_public) && a[..2].contains(&h2_public)
        }),
        "WireGuard directly between the two home gateways: {:?}",
        capture.lines()
    );
}

#[test]
fn a_home_node_whose_nat_gets_a_new_public_address_is_reachable_again_within_10_s() {
    require_root!();
    let mc = MultiCloud::build();
    let pods = mc.add_pod_per_node("n");
    let (a1, b1, h1) = (
        pod_of(&pods, "a1"),
        pod_of(&pods, "b1"),
        pod_of(&pods, "h1"),
    );
    reach(a1, h1, WAIT);
    reach(b1, h1, WAIT);
    // A home node that has run for a while: others published where they see it, so its
    // agent knows it is behind a NAT and keeps its mappings open (5 s keepalive towards
    // the other sites). Right after the first handshakes that news may still be on its
    // way through the API (and the readdress below cuts h1's watch connection).
    let h1_node = mc.node("h1");
    wait_until(WAIT, "h1 keeping its NAT mappings open", || {
        let out = h1_node.exec_ok(&["wg", "show", "wgmesh0", "persistent-keepalive"]);
        let on = out
            .lines()
            .filter(|l| l.trim_end().ends_with("\t5"))
            .count();
        (on >= 3).then_some(())
    });
    mc.gateway("gw-h1")
        .readdress(Ipv4Addr::new(203, 0, 113, 122));
    let readdressed = Instant::now();
    let (links, capture) = mc.capture(&mc.internet_links(), FILTER, || {
        let a = reach(a1, h1, Duration::from_secs(30));
        let b = reach(b1, h1, Duration::from_secs(30));
        (a, b)
    });
    let took = readdressed.elapsed();
    eprintln!(
        "FIGURE h1 reachable again {took:?} after its NAT's new address (a1 {:?}, b1 {:?})",
        links.0, links.1
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_encrypted_on_every_wire(&capture);
}

#[test]
fn a_forged_discovered_endpoint_does_not_break_a_pair_that_works() {
    require_root!();
    let mc = MultiCloud::build();
    let pods = mc.add_pod_per_node("f");
    let (a1, h1, h2) = (
        pod_of(&pods, "a1"),
        pod_of(&pods, "h1"),
        pod_of(&pods, "h2"),
    );
    reach(a1, h1, WAIT);
    reach(h2, h1, WAIT);
    // A Node writer claims every home node is at an address it controls.
    let key = |node: &str| mc.node_annotations(node)["wgmesh.io/public-key"].clone();
    let forged = format!(
        "{{\"{}\": \"198.51.100.66:666\", \"{}\": \"198.51.100.66:667\"}}",
        key("h1"),
        key("h2")
    );
    let path = mc.api().write_file(
        "mallory.yaml",
        &format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: mallory\n  annotations:\n    wgmesh.io/discovered-endpoints: '{forged}'\nspec:\n  podCIDRs: [10.244.99.0/24]\n"
        ),
    );
    mc.api().kubectl_ok(&["create", "-f", &path]);
    // Also on b1's own Node, between two of its agent's passes.
    mc.api().kubectl_ok(&[
        "annotate",
        "node",
        "b1",
        &format!("wgmesh.io/discovered-endpoints={forged}"),
        "--overwrite",
    ]);
    let until = Instant::now() + Duration::from_secs(8);
    let mut rounds = 0;
    while Instant::now() < until {
        assert!(a1.ping(h1.ip()), "a1 -> h1 broke after a forged discovery");
        assert!(h1.ping(a1.ip()), "h1 -> a1 broke");
        assert!(h2.ping(h1.ip()), "h2 -> h1 broke");
        rounds += 1;
    }
    assert!(rounds > 3);
    let a1_sees = planned(&mc, "a1", "h1");
    assert_ne!(a1_sees["endpoint"], "198.51.100.66:666", "{a1_sees}");
}
