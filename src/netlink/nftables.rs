//! Read-only questions to nf_tables over netlink about one chain's rules: does one
//! drop, what do their comments say? The CNI plugin asks on every ADD (is the node's
//! guard in place?) and the agent on every readiness check and resync, where running
//! `nft` would cost milliseconds and a process each time. Adapter; the message layout
//! is `linux/netfilter/nf_tables.h`, comments are libnftnl's rule user data.

use std::io;

use netlink_packet_core::NetlinkBuffer;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFPROTO_INET: u8 = 1;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// Attribute type bits (without the nested and byte-order flags).
const NLA_TYPE_MASK: u16 = 0x3fff;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
/// libnftnl's user-data TLV type of a rule comment.
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
/// NF_DROP, the verdict code of `drop`.
const NF_DROP: u32 = 0;

/// What one rule is, as far as wgmesh asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleInfo {
    /// Its verdict is `drop`.
    pub drops: bool,
    /// Its comment (`comment "..."`), if any.
    pub comment: Option<String>,
}

/// True when chain `chain` of the `inet` table `table` holds at least one rule whose
/// verdict is `drop`. A missing table or chain is `Ok(false)`. Blocking; in the caller's
/// network namespace.
pub fn chain_has_drop_rule(table: &str, chain: &str) -> io::Result<bool> {
    Ok(chain_rules(table, chain)?.iter().any(|r| r.drops))
}

/// The rules of chain `chain` of the `inet` table `table`, in order; empty when the
/// table or chain does not exist. Blocking; in the caller's network namespace.
pub fn chain_rules(table: &str, chain: &str) -> io::Result<Vec<RuleInfo>> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&dump_rules_request(table, chain), 0)?;
    let mut rules = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        let mut data = &buf[..n];
        while !data.is_empty() {
            let msg = NetlinkBuffer::new_checked(data)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = (msg.length() as usize).min(data.len());
            match msg.message_type() {
                NLMSG_DONE => return Ok(rules),
                NLMSG_ERROR => {
                    let code = msg
                        .payload()
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(0);
                    // No such table or chain: no rules.
                    if code == -libc::ENOENT {
                        return Ok(Vec::new());
                    }
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                }
                t if t == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE => {
                    // The payload starts with the 4-byte nfgenmsg.
                    let attrs = msg.payload().get(4..).unwrap_or(&[]);
                    rules.push(RuleInfo {
                        drops: rule_drops(attrs),
                        comment: attr(attrs, NFTA_RULE_USERDATA).and_then(comment),
                    });
                }
                _ => {}
            }
            data = &data[align4(len).min(data.len())..];
        }
    }
}

/// The comment in a rule's user data (TLVs of a one-byte type and length).
fn comment(mut udata: &[u8]) -> Option<String> {
    while let [kind, len, rest @ ..] = udata {
        let value = rest.get(..usize::from(*len))?;
        if *kind == NFTNL_UDATA_RULE_COMMENT {
            let text = value.split(|b| *b == 0).next().unwrap_or(value);
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        udata = &rest[usize::from(*len)..];
    }
    None
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The dump request of every rule of `table`/`chain` in the inet family.
fn dump_rules_request(table: &str, chain: &str) -> Vec<u8> {
    let mut payload = vec![NFPROTO_INET, 0, 0, 0];
    for (kind, value) in [(NFTA_RULE_TABLE, table), (NFTA_RULE_CHAIN, chain)] {
        let len = 4 + value.len() + 1;
        payload.extend_from_slice(&(len as u16).to_ne_bytes());
        payload.extend_from_slice(&kind.to_ne_bytes());
        payload.extend_from_slice(value.as_bytes());
        payload.push(0);
        payload.resize(align4(payload.len()), 0);
    }
    let mut msg = Vec::with_capacity(16 + payload.len());
    msg.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE).to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&payload);
    msg
}

/// The attributes in `buf` as (type without flags, value); stops at a malformed one.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let header = buf.get(..4)?;
        let len = usize::from(u16::from_ne_bytes([header[0], header[1]]));
        let kind = u16::from_ne_bytes([header[2], header[3]]) & NLA_TYPE_MASK;
        let value = buf.get(4..len)?;
        buf = buf.get(align4(len)..).unwrap_or(&[]);
        Some((kind, value))
    })
}

/// The value of the first attribute of type `kind` in `buf`.
fn attr(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(buf).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

/// Whether a rule's attributes hold an `immediate` expression with verdict drop.
fn rule_drops(buf: &[u8]) -> bool {
    let Some(exprs) = attr(buf, NFTA_RULE_EXPRESSIONS) else {
        return false;
    };
    attrs(exprs)
        .filter(|(kind, _)| *kind == NFTA_LIST_ELEM)
        .any(|(_, elem)| {
            attr(elem, NFTA_EXPR_NAME) == Some(b"immediate\0")
                && attr(elem, NFTA_EXPR_DATA)
                    .and_then(|d| attr(d, NFTA_IMMEDIATE_DATA))
                    .and_then(|d| attr(d, NFTA_DATA_VERDICT))
                    .and_then(|v| attr(v, NFTA_VERDICT_CODE))
                    .and_then(|c| c.get(..4))
                    .is_some_and(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) == NF_DROP)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(align4(out.len()), 0);
        out
    }

    fn immediate(verdict: u32) -> Vec<u8> {
        let code = nla(NFTA_VERDICT_CODE, &verdict.to_be_bytes());
        let data = nla(NFTA_IMMEDIATE_DATA, &nla(NFTA_DATA_VERDICT, &code));
        let mut elem = nla(NFTA_EXPR_NAME, b"immediate\0");
        elem.extend(nla(NFTA_EXPR_DATA, &data));
        nla(NFTA_LIST_ELEM, &elem)
    }

    #[test]
    fn a_rule_drops_only_with_an_immediate_drop_verdict() {
        let rule = |exprs: Vec<u8>| nla(NFTA_RULE_EXPRESSIONS, &exprs);
        assert!(rule_drops(&rule(immediate(NF_DROP))));
        // NF_ACCEPT is 1.
        assert!(!rule_drops(&rule(immediate(1))));
        let mut counter = nla(NFTA_EXPR_NAME, b"counter\0");
        counter = nla(NFTA_LIST_ELEM, &counter);
        assert!(!rule_drops(&rule(counter.clone())));
        counter.extend(immediate(NF_DROP));
        assert!(rule_drops(&rule(counter)));
        assert!(!rule_drops(&[]), "no expressions");
        assert!(!rule_drops(&[0xff, 0xff, 0x01]), "garbage is no drop rule");
    }

    #[test]
    fn a_comment_is_read_from_the_user_data() {
        assert_eq!(comment(b"\x00\x08wgmesh:\x00"), Some("wgmesh:".into()));
        assert_eq!(
            comment(b"\x05\x01x\x00\x03ab\x00"),
            Some("ab".into()),
            "other TLVs are skipped"
        );
        assert_eq!(comment(b"\x00\x09short"), None, "truncated");
        assert_eq!(comment(b""), None);
    }

    #[test]
    fn the_request_names_the_table_and_chain() {
        let req = dump_rules_request("wgmesh", "egress_guard");
        assert_eq!(req.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes([req[0], req[1], req[2], req[3]]) as usize,
            req.len()
        );
        let attrs = &req[20..];
        assert_eq!(attr(attrs, NFTA_RULE_TABLE), Some(&b"wgmesh\0"[..]));
        assert_eq!(attr(attrs, NFTA_RULE_CHAIN), Some(&b"egress_guard\0"[..]));
    }
}
