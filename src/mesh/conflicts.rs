//! Conflicts between nodes: shared public keys and overlapping pod CIDRs. Pure.
//!
//! Both checks are O(n log n) so a 5,000-node cluster recomputes in milliseconds, and
//! both are symmetric: every party to a conflict is left out (except the local node,
//! which never leaves its own mesh), so the outcome does not depend on node order.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::problem::Problem;
use crate::key::PublicKey;

/// Who holds a CIDR in the overlap sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Holder<'a> {
    /// The local node: always keeps its CIDRs.
    Local,
    /// A node whose spec.podCIDRs are authoritative against external peers: it keeps
    /// its CIDRs, whoever else claims them is refused.
    Reserved(&'a str),
    /// A node or peer that loses its claim on any overlap.
    Node(&'a str),
}

/// Problems for nodes whose key is published by another node, or is the local key.
pub fn duplicate_keys<'a>(
    nodes: impl IntoIterator<Item = (&'a str, PublicKey)>,
    local_key: Option<&PublicKey>,
) -> BTreeMap<&'a str, Problem> {
    // Sorting groups equal keys: one allocation, no map of vectors.
    let mut all: Vec<(PublicKey, &'a str)> = nodes.into_iter().map(|(n, k)| (k, n)).collect();
    all.sort_unstable();
    let mut out = BTreeMap::new();
    for group in all.chunk_by(|a, b| a.0 == b.0) {
        if local_key == Some(&group[0].0) {
            for (_, n) in group {
                out.insert(*n, Problem::PublicKeyOfThisNode);
            }
        } else if group.len() > 1 {
            for (_, n) in group {
                let others = group
                    .iter()
                    .filter(|(_, o)| o != n)
                    .map(|(_, o)| o.to_string())
                    .collect();
                out.insert(*n, Problem::DuplicatePublicKey { others });
            }
        }
    }
    out
}

/// Problems for nodes whose pod CIDRs overlap another holder's.
///
/// CIDRs of one family are either nested or disjoint, so after sorting by (start,
/// prefix length) a stack of the CIDRs still "open" at each start finds every overlap.
pub fn overlapping_cidrs<'a>(
    cidrs: impl IntoIterator<Item = (Holder<'a>, IpNet)>,
) -> BTreeMap<&'a str, BTreeSet<ProblemKey>> {
    let mut items: Vec<(u8, u128, u8, u128, Holder<'a>, IpNet)> = cidrs
        .into_iter()
        .map(|(holder, net)| {
            let (fam, start, end) = bounds(net);
            (fam, start, net.prefix_len(), end, holder, net)
        })
        .collect();
    items.sort_unstable();
    let mut out: BTreeMap<&'a str, BTreeSet<ProblemKey>> = BTreeMap::new();
    let mut open: Vec<(u8, u128, Holder<'a>, IpNet)> = Vec::new();
    for (fam, start, _, end, holder, net) in items {
        open.retain(|(f, e, _, _)| *f == fam && *e >= start);
        for (_, _, other, other_net) in &open {
            if *other == holder {
                continue;
            }
            record(&mut out, holder, net, *other, *other_net);
            record(&mut out, *other, *other_net, holder, net);
        }
        open.push((fam, end, holder, net));
    }
    out
}

/// A sortable, dedupable form of an overlap problem.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProblemKey {
    pub cidr: IpNet,
    /// `None` when the other holder is the local node.
    pub other: Option<String>,
    pub other_cidr: IpNet,
    /// The other holder keeps its CIDR ([`Holder::Reserved`]).
    pub other_wins: bool,
}

impl ProblemKey {
    pub fn into_problem(self) -> Problem {
        match self.other {
            Some(node) if self.other_wins => Problem::PodCidrOfNode {
                cidr: self.cidr,
                node,
                node_cidr: self.other_cidr,
            },
            Some(other) => Problem::OverlappingPodCidr {
                cidr: self.cidr,
                other,
                other_cidr: self.other_cidr,
            },
            None => Problem::PodCidrOfThisNode {
                cidr: self.cidr,
                local_cidr: self.other_cidr,
            },
        }
    }
}

fn record<'a>(
    out: &mut BTreeMap<&'a str, BTreeSet<ProblemKey>>,
    who: Holder<'a>,
    net: IpNet,
    other: Holder<'a>,
    other_net: IpNet,
) {
    // The local node is never left out of its own mesh, nor a reserved holder.
    let Holder::Node(name) = who else { return };
    let (other, other_wins) = match other {
        Holder::Local => (None, true),
        Holder::Reserved(n) => (Some(n.to_string()), true),
        Holder::Node(n) => (Some(n.to_string()), false),
    };
    out.entry(name).or_default().insert(ProblemKey {
        cidr: net,
        other,
        other_cidr: other_net,
        other_wins,
    });
}

fn bounds(net: IpNet) -> (u8, u128, u128) {
    match net {
        IpNet::V4(n) => (
            4,
            u32::from(n.network()) as u128,
            u32::from(n.broadcast()) as u128,
        ),
        IpNet::V6(n) => (6, u128::from(n.network()), u128::from(n.broadcast())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn overlaps_are_found_both_ways_and_only_between_different_holders() {
        let got = overlapping_cidrs([
            (Holder::Node("a"), net("10.244.1.0/24")),
            (Holder::Node("b"), net("10.244.0.0/16")),
            (Holder::Node("c"), net("10.244.2.0/24")),
            (Holder::Node("d"), net("10.245.0.0/24")),
            (Holder::Node("e"), net("fd00::/64")),
            (Holder::Node("e"), net("10.246.0.0/24")),
            (Holder::Local, net("10.247.0.0/24")),
            (Holder::Node("f"), net("10.247.0.128/25")),
        ]);
        let names: Vec<&str> = got.keys().copied().collect();
        assert_eq!(names, ["a", "b", "c", "f"]);
        assert_eq!(got["b"].len(), 2, "b overlaps a and c");
        assert_eq!(
            got["f"].iter().next().unwrap().other,
            None,
            "f overlaps the local node"
        );
    }

    #[test]
    fn duplicate_keys_exclude_every_holder_and_the_local_key_wins() {
        let k = |b: u8| PublicKey::from_bytes([b; 32]);
        let got = duplicate_keys(
            [("a", k(1)), ("b", k(1)), ("c", k(2)), ("d", k(9))],
            Some(&k(9)),
        );
        assert_eq!(
            got.get("a"),
            Some(&Problem::DuplicatePublicKey {
                others: vec!["b".into()]
            })
        );
        assert_eq!(
            got.get("b"),
            Some(&Problem::DuplicatePublicKey {
                others: vec!["a".into()]
            })
        );
        assert_eq!(got.get("c"), None);
        assert_eq!(got.get("d"), Some(&Problem::PublicKeyOfThisNode));
    }
}
