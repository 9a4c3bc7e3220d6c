//! `wgmesh graph`: the mesh as Graphviz DOT. Pure.
//!
//! Nodes carry their pod CIDRs; the full mesh between usable nodes is drawn, edges of
//! the local node labelled with their handshake age (from its device), the others
//! dashed (planned; only each node itself knows their state). Nodes left out are red.

use std::fmt::Write as _;

use super::Snapshot;

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn quote(s: &str) -> String {
    format!("\"{}\"", escape(s))
}

/// Renders the snapshot as an undirected DOT graph (`dot -Tsvg` draws it).
/// The relay of the pair (`a`, `b`), when both are behind NAT and one cannot reach the
/// other directly: chosen among usable nodes as every agent chooses it.
fn relayed(s: &Snapshot, a: &str, b: &str) -> Option<String> {
    let node = |n: &str| s.nodes.iter().find(|p| p.name == n);
    let (pa, pb) = (node(a)?, node(b)?);
    let published = crate::mesh::paths::Discoveries::collect(&s.nodes);
    if !crate::mesh::paths::relayed(pa, pb, &published) {
        return None;
    }
    let usable = s.nodes.iter().filter(|n| {
        s.local.as_deref() == Some(n.name.as_str()) || !s.plan.rejected.contains_key(&n.name)
    });
    crate::mesh::paths::relay_for(pa, pb, usable).map(|r| r.name.clone())
}

pub fn dot(s: &Snapshot) -> String {
    let rows = s.rows();
    let mut out = String::from(
        "graph wgmesh {\n  layout=circo;\n  node [shape=box, fontname=\"monospace\"];\n",
    );
    let usable: Vec<&str> = rows
        .iter()
        .filter(|r| {
            r.local
                || s.plan.peers.contains_key(&r.name)
                || (s.local.is_none() && !s.plan.rejected.contains_key(&r.name))
        })
        .map(|r| r.name.as_str())
        .collect();
    for r in &rows {
        // One DOT line per part: `\n` inside a quoted DOT string is a line break.
        let label: Vec<String> = std::iter::once(&r.name)
            .chain(&r.pod_cidrs)
            .map(|p| escape(p))
            .collect();
        let mut attrs = vec![format!("label=\"{}\"", label.join("\\n"))];
        if r.local {
            attrs.push("style=bold".into());
        }
        if let Some(p) = s.plan.rejected.get(&r.name).and_then(|p| p.first()) {
            attrs.push("color=red".into());
            attrs.push(format!(
                "xlabel={}",
                quote(&format!("left out: {}", p.reason()))
            ));
        }
        let _ = writeln!(out, "  {} [{}];", quote(&r.name), attrs.join(", "));
    }
    for (i, a) in usable.iter().enumerate() {
        for b in &usable[i + 1..] {
            let local_edge = s.local.as_deref().and_then(|l| {
                if l == *a {
                    Some(*b)
                } else if l == *b {
                    Some(*a)
                } else {
                    None
                }
            });
            if let Some(relay) = relayed(s, a, b) {
                // Encrypted on every hop, through the relay's memory.
                let _ = writeln!(
                    out,
                    "  {} -- {} [style=dotted, color=blue, label={}];",
                    quote(a),
                    quote(b),
                    quote(&format!("via {relay}"))
                );
                continue;
            }
            let attrs = match local_edge.and_then(|peer| rows.iter().find(|r| r.name == peer)) {
                Some(peer) => match peer.latest_handshake_seconds {
                    Some(age) if age <= super::STALE_HANDSHAKE_SECS => format!("label=\"{age}s\""),
                    Some(age) => format!("label=\"{age}s\", color=orange"),
                    None if s.device.is_some() => "label=\"no handshake\", color=red".into(),
                    None => "style=dashed".into(),
                },
                None => "style=dashed".into(),
            };
            let _ = writeln!(out, "  {} -- {} [{attrs}];", quote(a), quote(b));
        }
    }
    out.push_str("}\n");
    out
}
