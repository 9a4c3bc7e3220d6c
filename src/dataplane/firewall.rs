//! The node's nftables table `inet wgmesh`: the no-plaintext guard and egress NAT.
//! Adapter, through the `nftables` crate (`nft -j`), never iptables.
//!
//! ```text
//! table inet wgmesh {
//!   chain egress_guard { type filter hook postrouting priority filter; policy accept;
//!     ip daddr { <guarded v4> } oifname != { lo, wgmesh-br, wgmesh0 } counter drop
//!     ip6 daddr { <guarded v6> } oifname != { ... } counter drop }
//!   chain egress_nat { type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr { <local pod v4> } ip daddr != { <guarded v4> } oifname != wgmesh-br masquerade
//!     ip6 ... }
//!   chain peer_ingress { type filter hook prerouting priority filter; policy accept;
//!     iifname wgmesh0 ip saddr { <external peers v4> } ct state established,related accept
//!     iifname wgmesh0 ip saddr { <peer p> } ip daddr { <p's allowedDestinations> } accept
//!     iifname wgmesh0 ip saddr { <external peers v4> } fib daddr type local counter drop
//!     iifname wgmesh0 ip saddr { <external peers v4> } ip daddr != { <pod ranges v4> } counter drop
//!     ip6 ... }
//! }
//! ```
//! `peer_ingress` exists only while there are external peers: they reach pods, and
//! nothing else (not the node itself: kubelet, metrics) unless their Peer lists it.
//! The whole table is replaced in one nft transaction (add, delete, recreate), so there
//! is never a moment without the guard. The first rule's comment carries a hash of the
//! rendered table: a resync that finds it missing or different (the table deleted,
//! flushed or edited) applies the table again.

use std::borrow::Cow;
use std::collections::BTreeSet;

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::{
    CT, Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    Prefix, SetItem,
};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Counter, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use sha2::{Digest, Sha256};

use crate::mesh::FirewallPlan;

pub const TABLE: &str = "wgmesh";
pub const GUARD_CHAIN: &str = "egress_guard";
const NAT_CHAIN: &str = "egress_nat";
const PEER_CHAIN: &str = "peer_ingress";
/// nft's "filter" and "srcnat" priorities.
const PRIO_FILTER: i32 = 0;
const PRIO_SRCNAT: i32 = 100;

#[derive(Debug, thiserror::Error)]
#[error("nftables {op}: {detail}")]
pub struct Error {
    pub op: &'static str,
    /// nft's own message (its stderr) when it ran and failed.
    pub detail: String,
}

fn nft_err(op: &'static str) -> impl FnOnce(nftables::helper::NftablesError) -> Error {
    move |e| {
        let detail = match &e {
            nftables::helper::NftablesError::NftFailed { stderr, .. }
                if !stderr.trim().is_empty() =>
            {
                stderr.trim().to_string()
            }
            other => other.to_string(),
        };
        Error { op, detail }
    }
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }
}

fn chain(name: &'static str, kind: NfChainType, hook: NfHook, prio: i32) -> Chain<'static> {
    Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }
}

fn field(protocol: &'static str, name: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: name.into(),
        },
    )))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn oifname() -> Expression<'static> {
    meta(MetaKey::Oifname)
}

fn text(s: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(s.to_string()))
}

fn prefixes<'a>(nets: impl Iterator<Item = &'a IpNet>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        nets.map(|n| {
            SetItem::Element(Expression::Named(NamedExpression::Prefix(Prefix {
                addr: Box::new(Expression::String(Cow::Owned(n.network().to_string()))),
                len: u32::from(n.prefix_len()),
            })))
        })
        .collect(),
    ))
}

fn names(list: &BTreeSet<String>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        list.iter()
            .map(|n| SetItem::Element(Expression::String(Cow::Owned(n.clone()))))
            .collect(),
    ))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn rule(
    chain: &'static str,
    expr: Vec<Statement<'static>>,
    comment: Option<String>,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: chain.into(),
        expr: expr.into(),
        handle: None,
        index: None,
        comment: comment.map(Cow::Owned),
    })
}

/// The table's rules, without the table and chains.
fn rules(plan: &FirewallPlan) -> Vec<NfListObject<'static>> {
    let mut out = Vec::new();
    for (proto, v6) in [("ip", false), ("ip6", true)] {
        let guarded: Vec<&IpNet> = plan
            .guarded
            .iter()
            .filter(|n| n.addr().is_ipv6() == v6)
            .collect();
        if guarded.is_empty() {
            continue;
        }
        out.push(rule(
            GUARD_CHAIN,
            vec![
                matches(
                    field(proto, "daddr"),
                    Operator::EQ,
                    prefixes(guarded.iter().copied()),
                ),
                matches(oifname(), Operator::NEQ, names(&plan.allowed_interfaces)),
                Statement::Counter(Counter::Anonymous(None)),
                Statement::Drop(None),
            ],
            None,
        ));
        let from: Vec<&IpNet> = plan
            .masquerade_from
            .iter()
            .filter(|n| n.addr().is_ipv6() == v6)
            .collect();
        if !from.is_empty() {
            out.push(rule(
                NAT_CHAIN,
                vec![
                    matches(
                        field(proto, "saddr"),
                        Operator::EQ,
                        prefixes(from.into_iter()),
                    ),
                    matches(
                        field(proto, "daddr"),
                        Operator::NEQ,
                        prefixes(guarded.iter().copied()),
                    ),
                    matches(
                        oifname(),
                        Operator::NEQ,
                        Expression::String(Cow::Owned(plan.bridge.clone())),
                    ),
                    Statement::Masquerade(None),
                ],
                None,
            ));
        }
    }
    for (proto, v6) in [("ip", false), ("ip6", true)] {
        out.extend(peer_rules(plan, proto, v6));
    }
    out
}

/// The rules of `peer_ingress` for one family (`proto` "ip" or "ip6").
fn peer_rules(plan: &FirewallPlan, proto: &'static str, v6: bool) -> Vec<NfListObject<'static>> {
    let ingress = &plan.peer_ingress;
    let of_family = |nets: &BTreeSet<IpNet>| -> Vec<IpNet> {
        nets.iter()
            .filter(|n| n.addr().is_ipv6() == v6)
            .copied()
            .collect()
    };
    let sources = of_family(&ingress.sources);
    if sources.is_empty() {
        return Vec::new();
    }
    let from = |nets: &[IpNet]| {
        vec![
            matches(
                meta(MetaKey::Iifname),
                Operator::EQ,
                text(&plan.mesh_interface),
            ),
            matches(field(proto, "saddr"), Operator::EQ, prefixes(nets.iter())),
        ]
    };
    let mut out = Vec::new();
    let mut established = from(&sources);
    established.push(matches(
        Expression::Named(NamedExpression::CT(CT {
            key: "state".into(),
            family: None,
            dir: None,
        })),
        Operator::IN,
        Expression::List(vec![text("established"), text("related")]),
    ));
    established.push(Statement::Accept(None));
    out.push(rule(PEER_CHAIN, established, None));
    for (peer_sources, destinations) in ingress.extra.values() {
        let (src, dst) = (of_family(peer_sources), of_family(destinations));
        if src.is_empty() || dst.is_empty() {
            continue;
        }
        let mut r = from(&src);
        r.push(matches(
            field(proto, "daddr"),
            Operator::EQ,
            prefixes(dst.iter()),
        ));
        r.push(Statement::Accept(None));
        out.push(rule(PEER_CHAIN, r, None));
    }
    let mut local = from(&sources);
    local.push(matches(
        Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags: std::iter::once(FibFlag::Daddr).collect(),
        })),
        Operator::EQ,
        text("local"),
    ));
    local.push(Statement::Counter(Counter::Anonymous(None)));
    local.push(Statement::Drop(None));
    out.push(rule(PEER_CHAIN, local, None));
    let mut elsewhere = from(&sources);
    let pods = of_family(&ingress.pod_ranges);
    if !pods.is_empty() {
        elsewhere.push(matches(
            field(proto, "daddr"),
            Operator::NEQ,
            prefixes(pods.iter()),
        ));
    }
    elsewhere.push(Statement::Counter(Counter::Anonymous(None)));
    elsewhere.push(Statement::Drop(None));
    out.push(rule(PEER_CHAIN, elsewhere, None));
    out
}

/// A short hash identifying the rendered table.
pub fn fingerprint(plan: &FirewallPlan) -> String {
    let json = serde_json::to_vec(&rules(plan)).unwrap_or_default();
    let digest = Sha256::digest(&json);
    format!(
        "wgmesh:{}",
        digest
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// The nft transaction that replaces the table with the plan's.
pub fn transaction(plan: &FirewallPlan) -> Nftables<'static> {
    let mut batch = Batch::new();
    // `add` is a no-op when the table exists, so the `delete` never fails.
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    batch.add(NfListObject::Table(table()));
    batch.add(NfListObject::Chain(chain(
        GUARD_CHAIN,
        NfChainType::Filter,
        NfHook::Postrouting,
        PRIO_FILTER,
    )));
    batch.add(NfListObject::Chain(chain(
        NAT_CHAIN,
        NfChainType::NAT,
        NfHook::Postrouting,
        PRIO_SRCNAT,
    )));
    if !plan.peer_ingress.sources.is_empty() {
        batch.add(NfListObject::Chain(chain(
            PEER_CHAIN,
            NfChainType::Filter,
            NfHook::Prerouting,
            PRIO_FILTER,
        )));
    }
    // The fingerprint rides on a rule that always exists: a bare counter at the head of
    // the guard chain (it matches everything and decides nothing).
    batch.add(rule(
        GUARD_CHAIN,
        vec![Statement::Counter(Counter::Anonymous(None))],
        Some(fingerprint(plan)),
    ));
    for r in rules(plan) {
        batch.add(r);
    }
    batch.to_nftables()
}

/// Applies the table if it is missing or differs from the plan; returns whether it did.
pub fn ensure(plan: &FirewallPlan) -> Result<bool, Error> {
    if installed_fingerprint()?.as_deref() == Some(fingerprint(plan).as_str()) {
        return Ok(false);
    }
    crate::kernel_writes::record(crate::kernel_writes::Kind::Nftables, 1);
    nftables::helper::apply_ruleset(&transaction(plan))
        .map_err(nft_err("apply table inet wgmesh"))?;
    Ok(true)
}

/// The fingerprint comment of the installed table, if the table exists. Read over
/// netlink (no `nft` process): readiness probes and every resync ask.
pub fn installed_fingerprint() -> Result<Option<String>, Error> {
    let rules = crate::netlink::nftables::chain_rules(TABLE, GUARD_CHAIN).map_err(|e| Error {
        op: "list table inet wgmesh",
        detail: e.to_string(),
    })?;
    Ok(rules
        .into_iter()
        .find_map(|r| r.comment.filter(|c| c.starts_with("wgmesh:"))))
}

/// Removes the table (uninstall); absent is fine.
pub fn remove() -> Result<(), Error> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    crate::kernel_writes::record(crate::kernel_writes::Kind::Nftables, 1);
    nftables::helper::apply_ruleset(&batch.to_nftables())
        .map_err(nft_err("delete table inet wgmesh"))
}
