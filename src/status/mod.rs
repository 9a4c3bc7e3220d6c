//! `wgmesh status` and `wgmesh graph`: the mesh as operators see it. Rendering is pure
//! (nodes, plan and device state in; table, JSON or Graphviz DOT out); [`fetch`]
//! gathers the inputs from the API server and the local device.

pub mod fetch;
mod graph;

use std::time::SystemTime;

use serde::Serialize;

pub use graph::dot;

use crate::mesh::{MeshPlan, ParsedNode};
use crate::wireguard::DeviceStatus;

/// A handshake older than this means the tunnel is not currently in use or broken
/// (WireGuard re-handshakes every 2 minutes while traffic flows).
pub const STALE_HANDSHAKE_SECS: u64 = 180;

/// Everything `status` and `graph` show.
pub struct Snapshot {
    /// The node this runs on, if known.
    pub local: Option<String>,
    pub nodes: Vec<ParsedNode>,
    /// The plan from the local node's point of view (or no node's).
    pub plan: MeshPlan,
    /// The local WireGuard device, when reachable.
    pub device: Option<DeviceStatus>,
    pub now: SystemTime,
}

/// One row of `wgmesh status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeRow {
    pub name: String,
    pub local: bool,
    pub endpoint: Option<String>,
    pub pod_cidrs: Vec<String>,
    pub public_key: Option<String>,
    /// How the local node reaches it: where the endpoint came from (private, public,
    /// forced, observed, discovered), or `via <relay>`.
    pub path: Option<String>,
    /// Seconds since the local device's last handshake with this node.
    pub latest_handshake_seconds: Option<u64>,
    pub rx_bytes: Option<u64>,
    pub tx_bytes: Option<u64>,
    pub problems: Vec<String>,
}

impl Snapshot {
    /// One row per node, in name order.
    pub fn rows(&self) -> Vec<NodeRow> {
        let mut nodes: Vec<&ParsedNode> = self.nodes.iter().collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes.into_iter().map(|n| self.row(n)).collect()
    }

    fn row(&self, n: &ParsedNode) -> NodeRow {
        let local = self.local.as_deref() == Some(n.name.as_str());
        let mut problems: Vec<String> = self
            .plan
            .rejected
            .get(&n.name)
            .into_iter()
            .flatten()
            .map(|p| format!("{}: {p}", p.reason()))
            .collect();
        problems.extend(
            self.plan
                .warnings
                .get(&n.name)
                .into_iter()
                .flatten()
                .map(|w| format!("{}: {w}", w.reason())),
        );
        let peer = self.device.as_ref().and_then(|d| {
            let key = n.public_key?;
            d.peers.iter().find(|p| p.config.public_key == key)
        });
        let age = peer
            .and_then(|p| p.stats.last_handshake)
            .map(|t| self.now.duration_since(t).unwrap_or_default().as_secs());
        // A relayed peer's traffic goes through its relay: its own entry only probes.
        let relayed = self
            .plan
            .peers
            .get(&n.name)
            .is_some_and(|p| p.via.is_some());
        if self.device.is_some() && !local && !relayed && self.plan.peers.contains_key(&n.name) {
            match (peer, age) {
                (None, _) => problems
                    .push("NotConfigured: planned peer is missing from the local device".into()),
                (Some(_), None) => {
                    problems.push("NoHandshake: no handshake with this node yet".into())
                }
                (Some(_), Some(s)) if s > STALE_HANDSHAKE_SECS => {
                    problems.push(format!("StaleHandshake: last handshake {s}s ago"))
                }
                _ => {}
            }
        }
        let planned = self.plan.peers.get(&n.name);
        let endpoint = planned
            .and_then(|p| p.endpoint.as_ref())
            .or(n.endpoint.as_ref())
            .map(ToString::to_string);
        let path = planned.map(|p| match &p.via {
            Some(relay) => format!("via {relay}"),
            None => p.endpoint_source.as_str().to_string(),
        });
        NodeRow {
            name: n.name.clone(),
            local,
            endpoint,
            path,
            pod_cidrs: n
                .pod_subnets
                .map(|s| s.nets().map(|c| c.to_string()).collect())
                .unwrap_or_default(),
            public_key: n.public_key.map(|k| k.to_base64()),
            latest_handshake_seconds: age,
            rx_bytes: peer.map(|p| p.stats.rx_bytes),
            tx_bytes: peer.map(|p| p.stats.tx_bytes),
            problems,
        }
    }

    /// The table of `wgmesh status`.
    pub fn table(&self) -> String {
        let header = [
            "NAME",
            "ENDPOINT",
            "PATH",
            "POD CIDRS",
            "PUBLIC KEY",
            "HANDSHAKE",
            "RX",
            "TX",
            "PROBLEMS",
        ];
        let rows: Vec<[String; 9]> = self
            .rows()
            .into_iter()
            .map(|r| {
                [
                    if r.local {
                        format!("{} (local)", r.name)
                    } else {
                        r.name
                    },
                    r.endpoint.unwrap_or_else(|| "-".into()),
                    r.path.unwrap_or_else(|| "-".into()),
                    if r.pod_cidrs.is_empty() {
                        "-".into()
                    } else {
                        r.pod_cidrs.join(",")
                    },
                    r.public_key
                        .map(|k| format!("{}…", &k[..8]))
                        .unwrap_or_else(|| "-".into()),
                    r.latest_handshake_seconds
                        .map(|s| format!("{s}s ago"))
                        .unwrap_or_else(|| "-".into()),
                    r.rx_bytes.map(human_bytes).unwrap_or_else(|| "-".into()),
                    r.tx_bytes.map(human_bytes).unwrap_or_else(|| "-".into()),
                    if r.problems.is_empty() {
                        "-".into()
                    } else {
                        r.problems.join("; ")
                    },
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for r in &rows {
            for (w, cell) in widths.iter_mut().zip(r.iter()) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| -> String {
            let mut out = String::new();
            for (i, (c, w)) in cells.iter().zip(widths.iter()).enumerate() {
                if i + 1 == cells.len() {
                    out.push_str(c);
                } else {
                    out.push_str(&format!("{c:<w$}  "));
                }
            }
            out.trim_end().to_string() + "\n"
        };
        let mut out = line(&header.map(String::from));
        for r in &rows {
            out.push_str(&line(r));
        }
        out
    }

    /// `wgmesh status -o json`.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(&self.rows()).unwrap_or_default() + "\n"
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests;
