//! Pod connectivity across nodes as a matrix (test infrastructure): every ordered pair
//! of pods on different nodes, each checked with a ping from one to the other.
//!
//! With one pod on each of the five nodes of a [`crate::MultiCloud`] that is 20 ordered
//! pairs; the product's end-to-end tests check them all:
//!
//! ```no_run
//! use wgmesh_testbed::{MultiCloud, connectivity_matrix};
//! let mc = MultiCloud::build();
//! let pods = mc.add_pod_per_node("p");
//! let matrix = connectivity_matrix(&pods);
//! print!("{matrix}");
//! assert!(matrix.all_ok(), "{} of {} pairs", matrix.ok_count(), matrix.len());
//! ```
//!
//! Pairs are checked in parallel, so a matrix takes one ping's time (up to 3 s), not
//! twenty.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::exec::Exec;
use crate::pod::Pod;

/// How long [`wait_for_connectivity`] gives one echo request in each round.
const ROUND_PING: Duration = Duration::from_secs(1);

/// Which ordered node pairs' pods reached each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    /// Node names in the order of the pods given.
    nodes: Vec<String>,
    /// (from node, to node) -> the ping was answered.
    results: BTreeMap<(String, String), bool>,
}

impl Matrix {
    /// Whether the pod on `from` reached the pod on `to` (None: no such pair).
    pub fn get(&self, from: &str, to: &str) -> Option<bool> {
        self.results
            .get(&(from.to_string(), to.to_string()))
            .copied()
    }

    /// The node names, in the order of the pods.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// How many ordered pairs there are (20 for 5 nodes).
    pub fn len(&self) -> usize {
        self.results.len()
    }

    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    /// How many pairs reached each other.
    pub fn ok_count(&self) -> usize {
        self.results.values().filter(|ok| **ok).count()
    }

    /// True when every pair reached each other (and there is at least one).
    pub fn all_ok(&self) -> bool {
        !self.results.is_empty() && self.results.values().all(|ok| *ok)
    }

    /// The (from, to) node pairs that did not reach each other, in node order.
    pub fn failed(&self) -> Vec<(String, String)> {
        self.ordered()
            .filter(|(_, _, ok)| !ok)
            .map(|(f, t, _)| (f.to_string(), t.to_string()))
            .collect()
    }

    /// One line per pair in node order: `a1→h2 ok` or `a1→h2 FAILED`.
    pub fn lines(&self) -> Vec<String> {
        self.ordered()
            .map(|(f, t, ok)| format!("{f}→{t} {}", if ok { "ok" } else { "FAILED" }))
            .collect()
    }

    fn ordered(&self) -> impl Iterator<Item = (&str, &str, bool)> {
        self.nodes.iter().flat_map(move |from| {
            self.nodes.iter().filter_map(move |to| {
                self.get(from, to)
                    .map(|ok| (from.as_str(), to.as_str(), ok))
            })
        })
    }
}

/// A grid: one row per source node, one column per destination; `ok`, `--` for a
/// failed pair, `·` on the diagonal. Then `<n> of <m> pairs ok`.
impl fmt::Display for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const CORNER: &str = "from\\to";
        let width = self
            .nodes
            .iter()
            .map(|n| n.chars().count())
            .max()
            .unwrap_or(0)
            .max(4);
        let first = width.max(CORNER.len());
        write!(f, "{CORNER:first$}")?;
        for to in &self.nodes {
            write!(f, " {to:>width$}")?;
        }
        writeln!(f)?;
        for from in &self.nodes {
            write!(f, "{from:first$}")?;
            for to in &self.nodes {
                let cell = match self.get(from, to) {
                    Some(true) => "ok",
                    Some(false) => "--",
                    None => "·",
                };
                write!(f, " {cell:>width$}")?;
            }
            writeln!(f)?;
        }
        writeln!(f, "{} of {} pairs ok", self.ok_count(), self.len())
    }
}

/// Every ordered pair of `pods` on different nodes. Panics when two pods share a node:
/// the matrix is one of nodes.
pub fn ordered_pairs(pods: &[Pod]) -> Vec<(&Pod, &Pod)> {
    for (i, a) in pods.iter().enumerate() {
        if let Some(b) = pods[i + 1..]
            .iter()
            .find(|b| b.node_name() == a.node_name())
        {
            panic!(
                "pods {} and {} are both on {}: a connectivity matrix takes one pod per node",
                a.name(),
                b.name(),
                a.node_name()
            );
        }
    }
    pods.iter()
        .flat_map(|a| {
            pods.iter()
                .filter(move |b| b.node_name() != a.node_name())
                .map(move |b| (a, b))
        })
        .collect()
}

/// Pings every ordered pair of `pods` (one per node) once, all pairs at the same time,
/// each with [`Exec::ping`] (a probe a second for up to 3 s), and returns the matrix.
pub fn connectivity_matrix(pods: &[Pod]) -> Matrix {
    let pairs = ordered_pairs(pods);
    let results = ping_all(&pairs, |from, to| from.ping(to.ip()));
    matrix(pods, &pairs, &results)
}

/// Pings, in rounds, every ordered pair of `pods` (one per node) that has not answered
/// yet (one echo request of up to 1 s each, all pairs at the same time), until every
/// pair has answered once: then returns the moment the last pair answered. After
/// `timeout`, returns the matrix of the pairs that answered.
pub fn wait_for_connectivity(pods: &[Pod], timeout: Duration) -> Result<Instant, Matrix> {
    let pairs = ordered_pairs(pods);
    let deadline = Instant::now() + timeout;
    let mut answered = vec![false; pairs.len()];
    loop {
        let pending: Vec<usize> = (0..pairs.len()).filter(|&i| !answered[i]).collect();
        let round: Vec<(&Pod, &Pod)> = pending.iter().map(|&i| pairs[i]).collect();
        let results = ping_all(&round, |from, to| from.ping_once(to.ip(), ROUND_PING));
        for (&i, ok) in pending.iter().zip(results) {
            answered[i] = ok;
        }
        if answered.iter().all(|ok| *ok) {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            return Err(matrix(pods, &pairs, &answered));
        }
        // A round that failed fast (no route yet) must not spin.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `ping(from, to)` for every pair on its own thread; the results in pair order.
fn ping_all(pairs: &[(&Pod, &Pod)], ping: impl Fn(&Pod, &Pod) -> bool + Sync) -> Vec<bool> {
    std::thread::scope(|s| {
        let ping = &ping;
        let handles: Vec<_> = pairs
            .iter()
            .map(|(from, to)| s.spawn(move || ping(from, to)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

fn matrix(pods: &[Pod], pairs: &[(&Pod, &Pod)], results: &[bool]) -> Matrix {
    Matrix {
        nodes: pods.iter().map(|p| p.node_name().to_string()).collect(),
        results: pairs
            .iter()
            .zip(results)
            .map(|((a, b), ok)| ((a.node_name().to_string(), b.node_name().to_string()), *ok))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Matrix {
        let nodes = ["a1", "a2", "h1"];
        let mut results = BTreeMap::new();
        for f in nodes {
            for t in nodes {
                if f != t {
                    results.insert(
                        (f.to_string(), t.to_string()),
                        f.starts_with('a') && t.starts_with('a'),
                    );
                }
            }
        }
        Matrix {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            results,
        }
    }

    #[test]
    fn a_matrix_lists_each_ordered_pair_once_in_node_order() {
        let m = sample();
        assert_eq!(m.len(), 6);
        assert_eq!(m.ok_count(), 2);
        assert!(!m.all_ok());
        assert_eq!(m.get("a1", "a2"), Some(true));
        assert_eq!(m.get("a1", "h1"), Some(false));
        assert_eq!(m.get("a1", "a1"), None);
        assert_eq!(
            m.lines(),
            [
                "a1→a2 ok",
                "a1→h1 FAILED",
                "a2→a1 ok",
                "a2→h1 FAILED",
                "h1→a1 FAILED",
                "h1→a2 FAILED"
            ]
        );
        assert_eq!(
            m.failed(),
            [("a1", "h1"), ("a2", "h1"), ("h1", "a1"), ("h1", "a2")]
                .map(|(f, t)| (f.to_string(), t.to_string()))
        );
    }

    #[test]
    fn a_matrix_prints_as_a_grid_with_a_count() {
        assert_eq!(
            sample().to_string(),
            concat!(
                "from\\to   a1   a2   h1\n",
                "a1         ·   ok   --\n",
                "a2        ok    ·   --\n",
                "h1        --   --    ·\n",
                "2 of 6 pairs ok\n",
            )
        );
    }

    #[test]
    fn an_empty_matrix_is_not_all_ok() {
        let m = Matrix {
            nodes: Vec::new(),
            results: BTreeMap::new(),
        };
        assert!(m.is_empty() && !m.all_ok());
    }
}
