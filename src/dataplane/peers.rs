//! Which WireGuard peer changes bring the device to the plan. Pure.
//!
//! Compared with the device's actual peers (so a peer removed or changed behind the
//! agent's back, e.g. with `wg set`, is repaired), except for the endpoint: a peer's
//! endpoint follows its authenticated packets (roaming), so the planned endpoint is
//! pushed only when the plan's endpoint for that peer changes, or the peer is new.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::key::PublicKey;
use crate::wireguard::{ConfigUpdate, PeerConfig, PeerStatus, PeerUpdate};

/// The transaction that makes `actual` match `desired`; `last_endpoints` are the
/// endpoints the previous plan asked for. Empty when nothing needs to change.
pub fn updates(
    desired: &BTreeMap<PublicKey, PeerConfig>,
    actual: &[PeerStatus],
    last_endpoints: &BTreeMap<PublicKey, Option<SocketAddr>>,
) -> ConfigUpdate {
    let actual: BTreeMap<PublicKey, &PeerStatus> =
        actual.iter().map(|p| (p.config.public_key, p)).collect();
    let mut peers = Vec::new();
    for key in actual.keys().filter(|k| !desired.contains_key(*k)) {
        peers.push(PeerUpdate::remove(*key));
    }
    for (key, want) in desired {
        let Some(have) = actual.get(key) else {
            // A new peer (or a node whose key rotated) handshakes at once, so the other
            // side's first packets find a session instead of waiting for a retry.
            peers.push(PeerUpdate {
                handshake_now: true,
                ..PeerUpdate::from_config(want.clone())
            });
            continue;
        };
        let mut have_sorted = have.config.allowed_ips.clone();
        have_sorted.sort();
        let mut want_sorted = want.allowed_ips.clone();
        want_sorted.sort();
        let endpoint_changed =
            want.endpoint.is_some() && last_endpoints.get(key) != Some(&want.endpoint);
        let differs = have_sorted != want_sorted
            || have.config.persistent_keepalive != want.persistent_keepalive
            || have.config.preshared_key != want.preshared_key
            || (have.config.endpoint.is_none() && want.endpoint.is_some());
        if differs || endpoint_changed {
            let mut update = PeerUpdate::from_config(want.clone());
            if !endpoint_changed && have.config.endpoint.is_some() {
                // Keep the roamed endpoint.
                update.endpoint = None;
            }
            peers.push(update);
        }
    }
    ConfigUpdate {
        peers,
        ..ConfigUpdate::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wireguard::PeerStats;

    fn key(n: u8) -> PublicKey {
        PublicKey::from_bytes([n; 32])
    }

    fn cfg(n: u8, endpoint: &str, cidr: &str) -> PeerConfig {
        PeerConfig {
            public_key: key(n),
            preshared_key: None,
            endpoint: Some(endpoint.parse().unwrap()),
            allowed_ips: vec![cidr.parse().unwrap()],
            persistent_keepalive: 0,
        }
    }

    fn status(c: PeerConfig) -> PeerStatus {
        PeerStatus {
            config: c,
            stats: PeerStats::default(),
        }
    }

    fn desired(list: &[&PeerConfig]) -> BTreeMap<PublicKey, PeerConfig> {
        list.iter().map(|c| (c.public_key, (*c).clone())).collect()
    }

    fn last(list: &[&PeerConfig]) -> BTreeMap<PublicKey, Option<SocketAddr>> {
        list.iter().map(|c| (c.public_key, c.endpoint)).collect()
    }

    #[test]
    fn new_changed_and_gone_peers_become_one_transaction() {
        let b = cfg(2, "192.0.2.2:51820", "10.244.2.0/24");
        let c = cfg(3, "192.0.2.3:51820", "10.244.3.0/24");
        let d = cfg(4, "192.0.2.4:51820", "10.244.4.0/24");
        let c_wider = PeerConfig {
            allowed_ips: vec![
                "10.244.3.0/24".parse().unwrap(),
                "fd00::/64".parse().unwrap(),
            ],
            ..c.clone()
        };
        let u = updates(
            &desired(&[&b, &c_wider]),
            &[status(c.clone()), status(d.clone())],
            &last(&[&c, &d]),
        );
        let keys: Vec<(u8, bool)> = u
            .peers
            .iter()
            .map(|p| (p.public_key.as_bytes()[0], p.remove))
            .collect();
        assert_eq!(keys, [(4, true), (2, false), (3, false)]);
        assert!(u.peers[1].handshake_now, "a new peer handshakes at once");
        assert!(
            !u.peers[2].handshake_now,
            "an updated peer keeps its session"
        );
        assert_eq!(u.peers[2].allowed_ips.len(), 2);
        assert!(u.peers[2].replace_allowed_ips);
        assert_eq!(
            u.peers[2].endpoint, None,
            "an unchanged planned endpoint is not pushed over a live one"
        );
    }

    #[test]
    fn an_unchanged_plan_changes_nothing_even_after_the_peer_roamed() {
        let b = cfg(2, "192.0.2.2:51820", "10.244.2.0/24");
        let roamed = PeerConfig {
            endpoint: Some("198.51.100.7:40000".parse().unwrap()),
            ..b.clone()
        };
        let u = updates(&desired(&[&b]), &[status(roamed)], &last(&[&b]));
        assert!(u.peers.is_empty(), "{u:?}");
    }

    #[test]
    fn a_new_planned_endpoint_is_pushed() {
        let b = cfg(2, "192.0.2.2:51820", "10.244.2.0/24");
        let moved = cfg(2, "192.0.2.99:51820", "10.244.2.0/24");
        let u = updates(&desired(&[&moved]), &[status(b.clone())], &last(&[&b]));
        assert_eq!(u.peers.len(), 1);
        assert_eq!(u.peers[0].endpoint, moved.endpoint);
    }

    #[test]
    fn a_peer_changed_behind_the_agents_back_is_repaired() {
        let b = cfg(2, "192.0.2.2:51820", "10.244.2.0/24");
        let tampered = PeerConfig {
            allowed_ips: vec!["0.0.0.0/0".parse().unwrap()],
            persistent_keepalive: 5,
            ..b.clone()
        };
        let u = updates(&desired(&[&b]), &[status(tampered)], &last(&[&b]));
        assert_eq!(u.peers.len(), 1);
        assert_eq!(u.peers[0].allowed_ips, b.allowed_ips);
        assert_eq!(u.peers[0].persistent_keepalive, Some(0));
    }
}
