//! Table tests of the configuration model: wg semantics of each kind of change. Pure.

use super::*;

fn key(n: u8) -> PublicKey {
    PublicKey::from_bytes([n; 32])
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn peer(n: u8, ips: &[&str]) -> PeerUpdate {
    PeerUpdate {
        allowed_ips: ips.iter().map(|s| net(s)).collect(),
        ..PeerUpdate::new(key(n))
    }
}

fn with_peers(peers: Vec<PeerUpdate>) -> ConfigUpdate {
    ConfigUpdate {
        peers,
        ..ConfigUpdate::default()
    }
}

fn ips_of(m: &Model, n: u8) -> Vec<String> {
    m.allowed_ips()
        .get(&key(n))
        .map(|v| v.iter().map(|n| n.to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn peers_are_created_with_their_settings() {
    let mut m = Model::default();
    let mut p = peer(1, &["10.244.1.0/24", "10.244.9.9/32"]);
    p.endpoint = Some("192.0.2.1:51820".parse().unwrap());
    p.persistent_keepalive = Some(25);
    let ch = m.apply(&with_peers(vec![p]));
    assert!(m.peers.contains_key(&key(1)));
    assert_eq!(m.peers[&key(1)].persistent_keepalive, 25);
    assert_eq!(ips_of(&m, 1), ["10.244.1.0/24", "10.244.9.9/32"]);
    assert_eq!(
        ch.endpoints.get(&key(1)),
        Some(&"192.0.2.1:51820".parse().unwrap())
    );
    assert!(ch.keepalive_on.contains(&key(1)));
    assert!(ch.routes);
    assert!(ch.removed.is_empty());
}

#[test]
fn an_allowed_ip_belongs_to_one_peer_and_moves_to_the_last_one_given_it() {
    let mut m = Model::default();
    m.apply(&with_peers(vec![
        peer(1, &["10.244.1.0/24"]),
        peer(2, &["10.244.2.0/24"]),
    ]));
    m.apply(&with_peers(vec![peer(2, &["10.244.1.0/24"])]));
    assert!(ips_of(&m, 1).is_empty());
    assert_eq!(ips_of(&m, 2), ["10.244.1.0/24", "10.244.2.0/24"]);
}

#[test]
fn replace_allowed_ips_clears_only_that_peers_prefixes() {
    let mut m = Model::default();
    m.apply(&with_peers(vec![
        peer(1, &["10.244.1.0/24"]),
        peer(2, &["10.244.2.0/24"]),
    ]));
    let mut p = peer(1, &["10.244.3.0/24"]);
    p.replace_allowed_ips = true;
    let ch = m.apply(&with_peers(vec![p]));
    assert!(ch.routes);
    assert!(ch.removed.is_empty(), "an in-place change keeps the peer");
    assert_eq!(ips_of(&m, 1), ["10.244.3.0/24"]);
    assert_eq!(ips_of(&m, 2), ["10.244.2.0/24"]);
}

#[test]
fn setting_the_same_allowed_ips_again_changes_no_route() {
    let mut m = Model::default();
    m.apply(&with_peers(vec![peer(1, &["10.244.1.0/24"])]));
    let mut p = peer(1, &["10.244.1.0/24"]);
    p.replace_allowed_ips = true;
    let ch = m.apply(&with_peers(vec![p]));
    assert!(ch.routes, "cleared then re-added counts as a change");
    let ch = m.apply(&with_peers(vec![peer(1, &["10.244.1.0/24"])]));
    assert!(!ch.routes);
}

#[test]
fn removing_a_peer_drops_its_routes_and_pending_changes() {
    let mut m = Model::default();
    m.apply(&with_peers(vec![peer(1, &["10.244.1.0/24"])]));
    let mut p = peer(1, &[]);
    p.endpoint = Some("192.0.2.1:1".parse().unwrap());
    let ch = m.apply(&with_peers(vec![p, PeerUpdate::remove(key(1))]));
    assert!(m.peers.is_empty());
    assert!(m.routes.is_empty());
    assert!(ch.removed.contains(&key(1)));
    assert!(ch.endpoints.is_empty());
}

#[test]
fn removing_an_unknown_peer_changes_nothing() {
    let mut m = Model::default();
    let ch = m.apply(&with_peers(vec![PeerUpdate::remove(key(9))]));
    assert_eq!(ch, Changes::default());
}

#[test]
fn replace_peers_removes_every_peer_and_recreates_the_ones_listed() {
    let mut m = Model::default();
    m.apply(&with_peers(vec![
        peer(1, &["10.244.1.0/24"]),
        peer(2, &["10.244.2.0/24"]),
    ]));
    let ch = m.apply(&ConfigUpdate {
        replace_peers: true,
        peers: vec![peer(2, &["10.244.22.0/24"])],
        ..ConfigUpdate::default()
    });
    assert_eq!(m.peers.keys().copied().collect::<Vec<_>>(), [key(2)]);
    assert_eq!(ips_of(&m, 2), ["10.244.22.0/24"]);
    assert_eq!(ch.removed, [key(1), key(2)].into_iter().collect());
}

#[test]
fn update_only_never_creates_a_peer() {
    let mut m = Model::default();
    let mut p = peer(1, &["10.244.1.0/24"]);
    p.update_only = true;
    m.apply(&with_peers(vec![p.clone()]));
    assert!(m.peers.is_empty());
    assert!(m.routes.is_empty());
    m.apply(&with_peers(vec![peer(1, &[])]));
    m.apply(&with_peers(vec![p]));
    assert_eq!(ips_of(&m, 1), ["10.244.1.0/24"]);
}

#[test]
fn a_peer_with_our_own_public_key_is_ignored_and_removed_on_key_change() {
    let sk = PrivateKey::generate().unwrap();
    let own = sk.public_key();
    let mut m = Model::default();
    m.apply(&with_peers(vec![PeerUpdate::new(own)]));
    assert!(
        m.peers.contains_key(&own),
        "no private key yet: an ordinary peer"
    );
    let ch = m.apply(&ConfigUpdate {
        private_key: Some(Some(sk.clone())),
        peers: vec![PeerUpdate::new(own)],
        ..ConfigUpdate::default()
    });
    assert!(ch.private_key);
    assert!(ch.removed.contains(&own));
    assert!(m.peers.is_empty());
}

#[test]
fn the_same_private_key_or_fwmark_again_is_no_change() {
    let sk = PrivateKey::generate().unwrap();
    let mut m = Model::default();
    let up = ConfigUpdate {
        private_key: Some(Some(sk)),
        fwmark: Some(7),
        ..ConfigUpdate::default()
    };
    let ch = m.apply(&up);
    assert!(ch.private_key);
    assert_eq!(ch.fwmark, Some(7));
    let ch = m.apply(&up);
    assert!(!ch.private_key);
    assert_eq!(ch.fwmark, None);
}

#[test]
fn zero_keys_mean_no_key() {
    let mut m = Model::default();
    m.apply(&ConfigUpdate {
        private_key: Some(Some(PrivateKey::from_bytes([0; 32]))),
        ..ConfigUpdate::default()
    });
    assert!(m.private_key.is_none());
    let mut p = peer(1, &[]);
    p.preshared_key = Some(Some(PrivateKey::from_bytes([0; 32])));
    m.apply(&with_peers(vec![p]));
    assert_eq!(m.peers[&key(1)].preshared_key, None);
}

#[test]
fn a_keepalive_is_due_only_when_switched_on_from_off() {
    let mut m = Model::default();
    let mut p = peer(1, &[]);
    p.persistent_keepalive = Some(0);
    assert!(
        m.apply(&with_peers(vec![p.clone()]))
            .keepalive_on
            .is_empty()
    );
    p.persistent_keepalive = Some(10);
    assert!(
        m.apply(&with_peers(vec![p.clone()]))
            .keepalive_on
            .contains(&key(1))
    );
    p.persistent_keepalive = Some(20);
    assert!(m.apply(&with_peers(vec![p])).keepalive_on.is_empty());
}

#[test]
fn from_config_replaces_the_allowed_ips_and_keeps_the_peer() {
    let mut m = Model::default();
    m.apply(&with_peers(vec![peer(1, &["10.244.1.0/24"])]));
    let mut cfg = PeerConfig::new(key(1));
    cfg.allowed_ips = vec![net("10.244.7.0/24")];
    let ch = m.apply(&with_peers(vec![PeerUpdate::from_config(cfg)]));
    assert!(ch.removed.is_empty());
    assert_eq!(ips_of(&m, 1), ["10.244.7.0/24"]);
}
