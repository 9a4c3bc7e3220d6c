//! What the local data plane sees of its peers' paths, turned into the inputs of the
//! mesh plan: where peers' packets come from (observed endpoints), which of them the
//! node publishes as discovered (behind a NAT), and which peers behind NAT it cannot
//! reach directly. Keeps the clock; the rules are `mesh::paths`'. Adapter state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::dataplane::PeerPath;
use crate::key::PublicKey;
use crate::mesh::paths::{self, DirectPath, Discoveries, Observations};
use crate::mesh::{MeshPlan, ParsedNode};

/// How often a peer that cannot be reached directly is probed again.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// One peer behind NAT (as the local node is) that the node tries to reach directly.
#[derive(Debug, Clone)]
struct Attempt {
    /// Since when the node has had an endpoint to try.
    since: Instant,
    rx_bytes: u64,
    /// When bytes from it last arrived (on the direct path: relayed traffic arrives on
    /// the relay's peer).
    received_at: Option<Instant>,
    probed_at: Option<Instant>,
}

/// What the node derives from its peers' paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathReport {
    pub observed: Observations,
    /// Observed endpoints of peers without a public endpoint, where they differ from
    /// what the peer publishes: for `wgmesh.io/discovered-endpoints`.
    pub discovered: BTreeMap<PublicKey, SocketAddr>,
    /// For `wgmesh.io/no-direct-path`.
    pub no_direct: BTreeSet<String>,
}

/// The tracker of direct paths, kept across passes.
#[derive(Debug, Default)]
pub struct PathTracker {
    attempts: BTreeMap<String, Attempt>,
    report: PathReport,
}

impl PathTracker {
    /// The last report.
    pub fn report(&self) -> &PathReport {
        &self.report
    }

    /// Updates the report from the data plane's `seen` paths under `plan` (the last
    /// applied), with `nodes` the parsed nodes (the local one among them). Returns the
    /// peers to probe now, and whether the report changed.
    pub fn update<'a>(
        &mut self,
        now: Instant,
        local: &str,
        nodes: &dyn Fn(&str) -> Option<&'a ParsedNode>,
        published: &Discoveries,
        plan: &MeshPlan,
        seen: &BTreeMap<PublicKey, PeerPath>,
    ) -> (Vec<PublicKey>, bool) {
        let recent = |p: &PeerPath| {
            p.last_handshake.is_some_and(|t| {
                t.elapsed()
                    .is_ok_and(|age| age < crate::wireguard::SESSION_LIFETIME)
            })
        };
        let mut report = PathReport::default();
        for (key, path) in seen {
            if let (true, Some(addr)) = (recent(path), path.endpoint) {
                report.observed.endpoints.insert(*key, addr);
            }
        }
        let local_node = nodes(local);
        let mut direct: BTreeMap<String, DirectPath> = BTreeMap::new();
        let mut probe = Vec::new();
        let mut tracked = BTreeSet::new();
        for (name, peer) in &plan.peers {
            let Some(node) = nodes(name) else {
                continue;
            };
            // Discovered: what only packets tell (the peer has no public address and
            // sends from elsewhere than it publishes).
            if let Some(addr) = report.observed.endpoints.get(&peer.public_key)
                && !paths::has_public_endpoint(node)
                && node.endpoint.as_ref().map(|e| e.to_string()) != Some(addr.to_string())
            {
                report.discovered.insert(peer.public_key, *addr);
            }
            let Some(local_node) = local_node else {
                continue;
            };
            if !paths::nat_to_nat(local_node, node, published) {
                continue;
            }
            tracked.insert(name.clone());
            let rx = seen.get(&peer.public_key).map_or(0, |p| p.rx_bytes);
            let has_endpoint = peer.endpoint.is_some();
            let a = self.attempts.entry(name.clone()).or_insert(Attempt {
                since: now,
                rx_bytes: rx,
                received_at: None,
                probed_at: None,
            });
            if !has_endpoint {
                a.since = now;
            }
            if rx > a.rx_bytes {
                a.received_at = Some(now);
            }
            a.rx_bytes = rx;
            let silent_for = a.received_at.map(|t| now.duration_since(t));
            let since_handshake = seen
                .get(&peer.public_key)
                .and_then(|p| p.last_handshake)
                .and_then(|t| t.elapsed().ok());
            direct.insert(
                name.clone(),
                DirectPath {
                    trying_for: now.duration_since(a.since),
                    since_received: silent_for,
                    since_handshake,
                    has_endpoint,
                },
            );
            // Both sides probe while the direct path is not proven: their handshakes
            // cross and open both NATs (hole punching), or show the path works again.
            let proven = silent_for.is_some_and(|d| d < paths::DIRECT_SILENCE)
                || since_handshake.is_some_and(|d| d < paths::DIRECT_SESSION);
            if has_endpoint
                && !proven
                && a.probed_at
                    .is_none_or(|t| now.duration_since(t) >= PROBE_EVERY)
            {
                a.probed_at = Some(now);
                probe.push(peer.public_key);
            }
        }
        self.attempts.retain(|name, _| tracked.contains(name));
        report.no_direct = paths::no_direct_paths(&self.report.no_direct, &direct);
        let changed = report != self.report;
        self.report = report;
        (probe, changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::{MeshConfig, parse};
    use crate::model::{NodeView, annotation, label};
    use std::time::SystemTime;

    fn key(n: u8) -> PublicKey {
        let mut b = [n; 32];
        b[0] = 0x40 | n;
        PublicKey::from_bytes(b)
    }

    /// A node at home `site`, behind NAT (no public endpoint).
    fn home(name: &str, i: u8) -> ParsedNode {
        let cidr = format!("10.244.{i}.0/24");
        let view = NodeView {
            name: name.into(),
            annotations: BTreeMap::from([
                (annotation::PUBLIC_KEY.into(), key(i).to_base64()),
                (annotation::ENDPOINT.into(), format!("192.168.{i}.2:51820")),
            ]),
            pod_cidrs: vec![cidr],
            labels: BTreeMap::from([(label::REGION.into(), format!("home{i}"))]),
            ..NodeView::default()
        };
        parse(&view, &MeshConfig::default())
    }

    /// A public node that published where it sees h1 and h2: both are behind NAT.
    fn observer_of_homes() -> Discoveries {
        let map = format!(
            "{{\"{}\": \"203.0.113.121:51820\", \"{}\": \"203.0.113.131:40000\"}}",
            key(1).to_base64(),
            key(2).to_base64()
        );
        let view = NodeView {
            name: "a1".into(),
            annotations: BTreeMap::from([
                (annotation::PUBLIC_KEY.into(), key(9).to_base64()),
                (annotation::DISCOVERED_ENDPOINTS.into(), map),
            ]),
            ..NodeView::default()
        };
        let observer = parse(&view, &MeshConfig::default());
        Discoveries::collect([&observer])
    }

    fn plan_with_peer(name: &str, i: u8, endpoint: Option<&str>) -> MeshPlan {
        let mut plan = MeshPlan::default();
        plan.peers.insert(
            name.into(),
            crate::mesh::PeerPlan {
                public_key: key(i),
                endpoint: endpoint.map(|e| crate::model::Endpoint::parse(e, false).unwrap()),
                allowed_ips: vec![],
                persistent_keepalive: None,
                allowed_destinations: vec![],
                endpoint_source: Default::default(),
                via: None,
            },
        );
        plan
    }

    #[test]
    fn a_silent_peer_behind_nat_is_probed_then_relayed_and_direct_again_once_it_answers() {
        let (h1, h2) = (home("h1", 1), home("h2", 2));
        let nodes = |n: &str| [&h1, &h2].into_iter().find(|p| p.name == n);
        let homes = observer_of_homes();
        let plan = plan_with_peer("h2", 2, Some("203.0.113.131:40000"));
        let mut t = PathTracker::default();
        let t0 = Instant::now();
        let seen = |rx: u64| {
            BTreeMap::from([(
                key(2),
                PeerPath {
                    endpoint: None,
                    last_handshake: None,
                    rx_bytes: rx,
                },
            )])
        };
        let (probe, _) = t.update(t0, "h1", &nodes, &homes, &plan, &seen(0));
        assert_eq!(probe, [key(2)], "hole punching starts at once");
        assert!(t.report().no_direct.is_empty(), "not before the wait");
        let (probe, _) = t.update(
            t0 + Duration::from_secs(2),
            "h1",
            &nodes,
            &homes,
            &plan,
            &seen(0),
        );
        assert!(probe.is_empty(), "probes are paced");
        let (_, changed) = t.update(
            t0 + paths::HOLE_PUNCH_WAIT,
            "h1",
            &nodes,
            &homes,
            &plan,
            &seen(0),
        );
        assert!(changed);
        assert_eq!(t.report().no_direct, BTreeSet::from(["h2".to_string()]));
        // Relayed, the direct path is still probed; once something arrives on it, the
        // pair is direct again.
        let later = t0 + Duration::from_secs(30);
        let (probe, _) = t.update(later, "h1", &nodes, &homes, &plan, &seen(0));
        assert_eq!(probe, [key(2)]);
        let (_, changed) = t.update(
            later + Duration::from_secs(1),
            "h1",
            &nodes,
            &homes,
            &plan,
            &seen(148),
        );
        assert!(changed);
        assert!(t.report().no_direct.is_empty());
    }

    #[test]
    fn nothing_to_try_means_relay_at_once_and_observations_become_discoveries() {
        let (h1, h2) = (home("h1", 1), home("h2", 2));
        let nodes = |n: &str| [&h1, &h2].into_iter().find(|p| p.name == n);
        let homes = observer_of_homes();
        let mut t = PathTracker::default();
        let now = Instant::now();
        let (probe, _) = t.update(
            now,
            "h1",
            &nodes,
            &homes,
            &plan_with_peer("h2", 2, None),
            &BTreeMap::new(),
        );
        assert!(probe.is_empty(), "no endpoint to probe");
        assert_eq!(t.report().no_direct, BTreeSet::from(["h2".to_string()]));

        let seen = BTreeMap::from([(
            key(2),
            PeerPath {
                endpoint: Some("203.0.113.131:40000".parse().unwrap()),
                last_handshake: Some(SystemTime::now()),
                rx_bytes: 92,
            },
        )]);
        t.update(
            now,
            "h1",
            &nodes,
            &homes,
            &plan_with_peer("h2", 2, Some("203.0.113.131:40000")),
            &seen,
        );
        assert_eq!(
            t.report()
                .discovered
                .get(&key(2))
                .map(ToString::to_string)
                .as_deref(),
            Some("203.0.113.131:40000"),
            "seen elsewhere than it publishes: a discovery"
        );
        assert_eq!(t.report().observed.endpoints.len(), 1);
    }

    #[test]
    fn peers_nobody_saw_behind_a_nat_are_neither_probed_nor_listed() {
        // Today's flat cluster: no labels, no public addresses, nobody behind NAT.
        let (h1, h2) = (home("h1", 1), home("h2", 2));
        let nodes = |n: &str| [&h1, &h2].into_iter().find(|p| p.name == n);
        let nobody = Discoveries::default();
        let plan = plan_with_peer("h2", 2, Some("192.168.2.2:51820"));
        let mut t = PathTracker::default();
        let t0 = Instant::now();
        for s in [0, 10, 60] {
            let (probe, _) = t.update(
                t0 + Duration::from_secs(s),
                "h1",
                &nodes,
                &nobody,
                &plan,
                &BTreeMap::new(),
            );
            assert!(probe.is_empty(), "no probes at {s} s");
        }
        assert!(t.report().no_direct.is_empty());
    }
}
