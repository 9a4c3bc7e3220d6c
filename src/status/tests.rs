//! `wgmesh status` and `wgmesh graph` over a fixed little cluster.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::*;
use crate::key::PublicKey;
use crate::mesh::{MeshConfig, parse, plan};
use crate::model::{NodeView, annotation};
use crate::wireguard::{PeerConfig, PeerStats, PeerStatus};

/// No external peers.
const NO_PEERS: &[crate::mesh::ParsedPeer] = &[];

fn key(n: u8) -> PublicKey {
    PublicKey::from_bytes([0x40 | n; 32])
}

fn node(name: &str, i: u8) -> NodeView {
    NodeView {
        name: name.into(),
        annotations: BTreeMap::from([
            (annotation::PUBLIC_KEY.into(), key(i).to_base64()),
            (annotation::ENDPOINT.into(), format!("192.0.2.{i}:51820")),
        ]),
        pod_cidrs: vec![format!("10.244.{i}.0/24")],
        addresses: vec![],
        labels: BTreeMap::new(),
    }
}

fn snapshot(with_device: bool) -> Snapshot {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let cfg = MeshConfig::default();
    let mut bad = node("zz-bad", 9);
    bad.annotations
        .insert(annotation::PUBLIC_KEY.into(), "garbage".into());
    let nodes: Vec<_> = [node("a", 1), node("b", 2), node("c", 3), bad]
        .iter()
        .map(|v| parse(v, &cfg))
        .collect();
    let plan = plan("a", Some(&key(1)), &nodes, NO_PEERS, &cfg);
    let peer = |n: u8, handshake: Option<u64>, rx: u64| PeerStatus {
        config: PeerConfig::new(key(n)),
        stats: PeerStats {
            rx_bytes: rx,
            tx_bytes: 2 * rx,
            last_handshake: handshake.map(|ago| now - Duration::from_secs(ago)),
            endpoint: None,
        },
    };
    let device = with_device.then(|| DeviceStatus {
        peers: vec![peer(2, Some(12), 3 * 1024 * 1024), peer(3, None, 0)],
        ..DeviceStatus::default()
    });
    Snapshot {
        local: Some("a".into()),
        nodes,
        plan,
        device,
        now,
    }
}

#[test]
fn the_table_shows_each_node_with_handshake_traffic_and_problems() {
    let text = snapshot(true).table();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("NAME")
            && lines[0].contains("HANDSHAKE")
            && lines[0].ends_with("PROBLEMS"),
        "{text}"
    );
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[1].starts_with("a (local)"), "{text}");
    let b = lines[2];
    assert!(
        b.contains("192.0.2.2:51820") && b.contains("10.244.2.0/24") && b.contains("12s ago"),
        "{b}"
    );
    assert!(
        b.contains("3.0 MiB") && b.contains("6.0 MiB") && b.ends_with('-'),
        "{b}"
    );
    assert!(b.contains(&key(2).to_base64()[..8]));
    assert!(lines[3].contains("NoHandshake"), "{}", lines[3]);
    assert!(
        lines[4].starts_with("zz-bad") && lines[4].contains("InvalidPublicKey"),
        "{}",
        lines[4]
    );
}

#[test]
fn json_has_full_keys_and_numbers() {
    let rows: serde_json::Value = serde_json::from_str(&snapshot(true).json()).unwrap();
    assert_eq!(rows[1]["name"], "b");
    assert_eq!(rows[1]["public_key"], key(2).to_base64());
    assert_eq!(rows[1]["latest_handshake_seconds"], 12);
    assert_eq!(rows[1]["rx_bytes"], 3 * 1024 * 1024);
    assert_eq!(rows[1]["pod_cidrs"], serde_json::json!(["10.244.2.0/24"]));
    assert_eq!(rows[0]["local"], true);
    assert_eq!(
        rows[3]["problems"][0].as_str().unwrap().split(':').next(),
        Some("InvalidPublicKey")
    );
}

#[test]
fn without_a_device_there_are_no_handshake_problems() {
    let rows = snapshot(false).rows();
    assert!(rows.iter().all(|r| r.latest_handshake_seconds.is_none()));
    assert!(rows[2].problems.is_empty(), "{:?}", rows[2]);
}

#[test]
fn the_graph_is_dot_with_cidrs_handshake_ages_and_left_out_nodes() {
    let text = dot(&snapshot(true));
    assert!(
        text.starts_with("graph wgmesh {") && text.trim_end().ends_with('}'),
        "{text}"
    );
    assert!(
        text.contains("\"a\" [label=\"a\\n10.244.1.0/24\", style=bold];"),
        "{text}"
    );
    assert!(text.contains("\"a\" -- \"b\" [label=\"12s\"];"), "{text}");
    assert!(
        text.contains("\"a\" -- \"c\" [label=\"no handshake\", color=red];"),
        "{text}"
    );
    assert!(text.contains("\"b\" -- \"c\" [style=dashed];"), "{text}");
    assert!(
        text.contains("\"zz-bad\" [")
            && text.contains("color=red, xlabel=\"left out: InvalidPublicKey\""),
        "{text}"
    );
    assert!(
        !text.contains("-- \"zz-bad\""),
        "no edges to a node left out"
    );
}

#[test]
fn a_relayed_pair_shows_its_relay_in_the_table_and_the_graph() {
    let cfg = MeshConfig::default();
    let home = |name: &str, i: u8, region: &str| {
        let mut v = node(name, i);
        v.labels
            .insert(crate::model::label::REGION.into(), region.into());
        v
    };
    let mut relay = home("r", 1, "cloud");
    relay.annotations.insert(
        annotation::PUBLIC_ENDPOINT.into(),
        "203.0.113.1:51820".into(),
    );
    // The relay sees both homes behind their NATs.
    relay.annotations.insert(
        annotation::DISCOVERED_ENDPOINTS.into(),
        format!(
            "{{\"{}\": \"203.0.113.2:51820\", \"{}\": \"203.0.113.3:40000\"}}",
            key(2).to_base64(),
            key(3).to_base64()
        ),
    );
    let h1 = home("h1", 2, "home1");
    let mut h2 = home("h2", 3, "home2");
    h2.annotations
        .insert(annotation::NO_DIRECT_PATH.into(), "[\"h1\"]".into());
    let nodes: Vec<_> = [relay, h1, h2].iter().map(|v| parse(v, &cfg)).collect();
    let plan = plan("h1", Some(&key(2)), &nodes, NO_PEERS, &cfg);
    let s = Snapshot {
        local: Some("h1".into()),
        nodes,
        plan,
        device: None,
        now: SystemTime::now(),
    };
    let rows = s.rows();
    let path = |n: &str| {
        rows.iter()
            .find(|r| r.name == n)
            .and_then(|r| r.path.clone())
    };
    assert_eq!(path("h2").as_deref(), Some("via r"));
    assert_eq!(path("r").as_deref(), Some("public"));
    assert!(s.table().contains("via r"));
    let dot = crate::status::dot(&s);
    assert!(
        dot.contains("\"h1\" -- \"h2\" [style=dotted, color=blue, label=\"via r\"]"),
        "{dot}"
    );
}
