//! A site's NAT gateway (test infrastructure): a namespace holding the site's LAN (the
//! bridge `lan`, with the gateway at `.1` and one port per node, named after the node)
//! and its public link `wan` to the internet router, translating between the two as
//! the site's [`NatKind`] says, with nftables:
//!
//! - [`NatKind::OneToOne`]: stateless (`notrack`) rewriting of the destination of
//!   everything arriving on `wan` for a node's public address, and of the source of
//!   everything a node sends out; a packet from the LAN to one of the gateway's own
//!   public addresses is dropped (no hairpin, counted in [`HAIRPIN_COUNTER`]).
//! - [`NatKind::PortPreserving`] and [`NatKind::Symmetric`]: `masquerade` (with
//!   `random,fully-random` for the symmetric one) to the gateway's address on `wan`,
//!   and, as home routers do, nothing in from `wan` that is not a reply (dropped,
//!   counted in [`UNSOLICITED_COUNTER`]).

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use ipnet::Ipv4Net;

use crate::addressing::NodeAddresses;
use crate::capture::{self, Capture, Tap, Taps};
use crate::conntrack;
use crate::exec::{self, Exec};
use crate::multicloud::plan::{NatKind, SitePlan};
use crate::netns::NetNs;
use crate::node::{UNDERLAY_LINK, Uplink};
use crate::raw::{self, Mac};
use crate::underlay::{self, Attachment, Router};

/// The gateway's bridge: the site's LAN.
pub const LAN_BRIDGE: &str = "lan";
/// The gateway's public link, towards the internet router.
pub const WAN_LINK: &str = "wan";
/// The gateway's nftables table.
pub const NFT_TABLE: &str = "wgmesh_testbed_gw";
/// Packets from the LAN to a public address of the gateway itself, dropped (1:1 NAT).
pub const HAIRPIN_COUNTER: &str = "hairpin_dropped";
/// Packets from `wan` that are no reply to anything sent out, dropped (masquerade).
pub const UNSOLICITED_COUNTER: &str = "unsolicited_dropped";

/// What changes at runtime.
#[derive(Debug, Clone, Copy)]
struct State {
    nat: NatKind,
    wan_ip: Ipv4Addr,
}

/// A NAT gateway; its namespace (and the LAN in it) goes on drop.
#[derive(Debug)]
pub struct Gateway {
    netns: NetNs,
    site: &'static SitePlan,
    state: Mutex<State>,
    /// `wan` and the LAN's node ports.
    taps: Taps,
    /// The bridge's MAC address (pinned: a bridge otherwise takes its ports' lowest).
    lan_mac: Mac,
    capture_dir: std::path::PathBuf,
}

impl Gateway {
    /// Creates the gateway of `site` in namespace `<run_id>-<gateway>`, with its LAN and
    /// NAT rules; nodes attach to it as their [`Uplink`], and
    /// [`Gateway::connect_to`] plugs its public link into the internet router.
    pub(crate) fn create(run_id: &str, site: &'static SitePlan, capture_dir: &Path) -> Gateway {
        let netns = NetNs::create(&format!("{run_id}-{}", site.gateway));
        netns.set_sysctl("net.ipv4.ip_forward", "1");
        netns.ip_batch(&[format!("link add {LAN_BRIDGE} type bridge")]);
        netns.disable_ipv6(LAN_BRIDGE);
        let lan_mac = netns.link_mac(LAN_BRIDGE);
        netns.ip_batch(&[
            format!("link set {LAN_BRIDGE} address {}", raw::format_mac(lan_mac)),
            format!(
                "addr add {}/{} dev {LAN_BRIDGE}",
                site.lan_ip, site.lan_prefix_len
            ),
            format!("link set {LAN_BRIDGE} up"),
        ]);
        let gateway = Gateway {
            netns,
            site,
            state: Mutex::new(State {
                nat: site.nat,
                wan_ip: site.wan_ip,
            }),
            taps: Taps::default(),
            lan_mac,
            capture_dir: capture_dir.to_path_buf(),
        };
        gateway.nft(&ruleset(site, site.nat));
        gateway
    }

    /// Plugs the gateway's public link into `router` (the router's interface is named
    /// after the gateway) and routes the site's 1:1 public addresses to it.
    pub(crate) fn connect_to(&self, router: &Router) {
        let site = self.site;
        router.attach(
            &self.netns,
            Attachment {
                router_link: site.gateway,
                peer_link: WAN_LINK,
                router_ip: site.wan_router_ip.into(),
                peer_ip: site.wan_ip.into(),
                prefix_len: site.wan_prefix_len,
            },
        );
        for public in site.public_ips() {
            router.add_route(Ipv4Net::from(public), site.wan_ip);
        }
        self.taps.add(WAN_LINK, site.wan().broadcast());
    }

    /// The gateway's name (`gw-a`).
    pub fn name(&self) -> &str {
        self.site.gateway
    }

    /// The site's name (`cloud-a`): its nodes' region label.
    pub fn region(&self) -> &str {
        self.site.region
    }

    /// The site's address plan.
    pub fn site(&self) -> &'static SitePlan {
        self.site
    }

    /// The NAT it does now.
    pub fn nat(&self) -> NatKind {
        self.state().nat
    }

    /// Its own address on its public link: a home's one public address (changed by
    /// [`Gateway::readdress`]); a cloud gateway's link address, not a node's.
    pub fn wan_ip(&self) -> Ipv4Addr {
        self.state().wan_ip
    }

    /// Its address on the LAN (the nodes' default gateway).
    pub fn lan_ip(&self) -> Ipv4Addr {
        self.site.lan_ip
    }

    /// Switches a home gateway between [`NatKind::PortPreserving`] and
    /// [`NatKind::Symmetric`] and flushes its conntrack table, so existing flows get new
    /// mappings too. Panics for a cloud (1:1) gateway.
    pub fn set_nat(&self, nat: NatKind) {
        let mut state = self.state.lock().expect("gateway state");
        assert!(
            state.nat.is_masquerade() && nat.is_masquerade(),
            "{} does {}: only a home gateway switches between masquerades (not to {nat})",
            self.site.gateway,
            state.nat
        );
        self.nft(&format!(
            "flush chain ip {NFT_TABLE} postrouting\nadd rule ip {NFT_TABLE} postrouting {}\n",
            masquerade_rule(nat)
        ));
        conntrack::flush(&self.netns.path());
        state.nat = nat;
    }

    /// What an ISP does to a home: the gateway restarts with `new_ip` as its public
    /// address (in the same subnet of its public link), its NAT mappings gone (conntrack
    /// flushed); the old address answers no more. Panics for a cloud (1:1) gateway.
    pub fn readdress(&self, new_ip: Ipv4Addr) {
        let mut state = self.state.lock().expect("gateway state");
        let site = self.site;
        assert!(
            state.nat.is_masquerade(),
            "{} does {}: only a home gateway gets a new public address",
            site.gateway,
            state.nat
        );
        let wan = site.wan();
        assert!(
            wan.contains(&new_ip)
                && ![wan.network(), wan.broadcast(), site.wan_router_ip].contains(&new_ip),
            "{new_ip} is no host address of {}'s public subnet {wan} (router {})",
            site.gateway,
            site.wan_router_ip
        );
        self.netns.ip_batch(&[
            format!("addr flush dev {WAN_LINK}"),
            format!("addr add {new_ip}/{} dev {WAN_LINK}", site.wan_prefix_len),
            format!("route add default via {}", site.wan_router_ip),
        ]);
        conntrack::flush(&self.netns.path());
        state.wan_ip = new_ip;
    }

    /// Deletes every entry of the gateway's conntrack table (its NAT mappings).
    pub fn flush_conntrack(&self) {
        conntrack::flush(&self.netns.path());
    }

    /// Entries in the gateway's conntrack table.
    pub fn conntrack_count(&self) -> u64 {
        conntrack::count(&self.netns.path())
    }

    /// Packets from the LAN to the gateway's own public addresses it dropped (1:1
    /// gateways; 0 at home).
    pub fn hairpin_drops(&self) -> u64 {
        self.counter(HAIRPIN_COUNTER)
    }

    /// Unsolicited packets from the internet it dropped (home gateways; 0 in a cloud).
    pub fn unsolicited_drops(&self) -> u64 {
        self.counter(UNSOLICITED_COUNTER)
    }

    /// The links a capture can tap here: [`WAN_LINK`] and one LAN port per node (named
    /// after the node).
    pub fn links(&self) -> Vec<String> {
        self.taps.names()
    }

    /// The LAN ports (one per node, named after it), sorted.
    pub fn lan_ports(&self) -> Vec<String> {
        self.links().into_iter().filter(|l| l != WAN_LINK).collect()
    }

    /// Captures on the gateway's `links` (see [`Gateway::links`]) the packets matching
    /// the tcpdump `filter` while `work` runs. Packets are labelled `<gateway>/<link>`.
    pub fn capture_on<R>(
        &self,
        links: &[&str],
        filter: &str,
        work: impl FnOnce() -> R,
    ) -> (R, Capture) {
        let taps: Vec<Tap> = links.iter().map(|l| self.tap(l)).collect();
        capture::during(&taps, filter, &self.capture_dir, work)
    }

    /// A tap on `link`, labelled `<gateway>/<link>`.
    pub(crate) fn tap(&self, link: &str) -> Tap {
        self.taps.tap(
            &self.netns.path(),
            link,
            format!("{}/{link}", self.site.gateway),
        )
    }

    /// The gateway's network namespace name (under /run/netns on the host).
    pub fn netns_name(&self) -> &str {
        self.netns.name()
    }

    /// How a person gets a shell on the gateway.
    pub fn enter_command(&self) -> String {
        format!("nsenter --net={}", self.netns.path().display())
    }

    fn state(&self) -> State {
        *self.state.lock().expect("gateway state")
    }

    fn counter(&self, name: &str) -> u64 {
        let has = |kind| match (name, kind) {
            (HAIRPIN_COUNTER, NatKind::OneToOne) => true,
            (UNSOLICITED_COUNTER, k) => NatKind::is_masquerade(k),
            _ => false,
        };
        if has(self.site.nat) {
            underlay::nft_counter(self, NFT_TABLE, name)
        } else {
            0
        }
    }

    fn nft(&self, script: &str) {
        let mut nft = self.netns.command("nft");
        nft.args(["-f", "-"]);
        exec::output_ok(nft, Some(script.as_bytes()));
    }
}

/// The gateway's nftables table for `nat` on `site`.
fn ruleset(site: &SitePlan, nat: NatKind) -> String {
    match nat {
        NatKind::OneToOne => {
            let publics: Vec<String> = site.public_ips().iter().map(Ipv4Addr::to_string).collect();
            let mut inbound = String::new();
            let mut outbound = String::new();
            for n in site.nodes {
                let public = n
                    .public_ip
                    .unwrap_or_else(|| panic!("{} has no 1:1 public address", n.name));
                let private = n.ip;
                inbound.push_str(&format!(
                    "        iifname \"{WAN_LINK}\" ip daddr {public} ip daddr set {private}\n"
                ));
                outbound.push_str(&format!(
                    "        oifname \"{WAN_LINK}\" ip saddr {private} ip saddr set {public}\n"
                ));
            }
            format!(
                "table ip {NFT_TABLE} {{
    counter {HAIRPIN_COUNTER} {{ }}
    chain prerouting {{
        type filter hook prerouting priority raw; policy accept;
        notrack
        iifname \"{LAN_BRIDGE}\" ip daddr {{ {} }} counter name {HAIRPIN_COUNTER} drop
{inbound}    }}
    chain output {{
        type filter hook output priority raw; policy accept;
        notrack
    }}
    chain postrouting {{
        type filter hook postrouting priority srcnat; policy accept;
{outbound}    }}
}}
",
                publics.join(", ")
            )
        }
        NatKind::PortPreserving | NatKind::Symmetric => format!(
            "table ip {NFT_TABLE} {{
    counter {UNSOLICITED_COUNTER} {{ }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        {}
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname \"{WAN_LINK}\" ct state established,related accept
        iifname \"{WAN_LINK}\" counter name {UNSOLICITED_COUNTER} drop
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname \"{WAN_LINK}\" ct state established,related accept
        iifname \"{WAN_LINK}\" meta pkttype broadcast accept
        iifname \"{WAN_LINK}\" counter name {UNSOLICITED_COUNTER} drop
    }}
}}
",
            masquerade_rule(nat)
        ),
    }
}

/// The home gateway's NAT rule in its `postrouting` chain.
fn masquerade_rule(nat: NatKind) -> String {
    let flags = match nat {
        NatKind::Symmetric => " random,fully-random",
        _ => "",
    };
    format!("oifname \"{WAN_LINK}\" masquerade{flags}")
}

impl Uplink for Gateway {
    /// A port of the LAN bridge named after the node.
    fn attach(&self, node: &NetNs, name: &str, addresses: &NodeAddresses) -> Mac {
        self.netns.add_veth(name, node, UNDERLAY_LINK);
        self.netns
            .ip_batch(&[format!("link set {name} master {LAN_BRIDGE} up")]);
        node.plug_in(
            UNDERLAY_LINK,
            addresses.underlay_ip,
            self.site.lan_prefix_len,
            addresses.router_ip,
        );
        self.taps.add(name, addresses.broadcast);
        self.lan_mac
    }
}

impl Exec for Gateway {
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        self.netns.command(program)
    }

    fn place(&self) -> &str {
        self.netns.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multicloud::plan::site;

    #[test]
    fn a_cloud_gateway_translates_each_node_both_ways_and_drops_hairpins() {
        let rules = ruleset(site("gw-a"), NatKind::OneToOne);
        for expected in [
            "iifname \"lan\" ip daddr { 203.0.113.101, 203.0.113.102 } counter name hairpin_dropped drop",
            "iifname \"wan\" ip daddr 203.0.113.101 ip daddr set 172.31.1.2",
            "iifname \"wan\" ip daddr 203.0.113.102 ip daddr set 172.31.1.3",
            "oifname \"wan\" ip saddr 172.31.1.2 ip saddr set 203.0.113.101",
            "oifname \"wan\" ip saddr 172.31.1.3 ip saddr set 203.0.113.102",
            "notrack",
        ] {
            assert!(rules.contains(expected), "no {expected:?} in\n{rules}");
        }
        assert!(!rules.contains("masquerade"));
    }

    #[test]
    fn home_gateways_masquerade_and_only_the_symmetric_one_randomizes_ports() {
        let preserving = ruleset(site("gw-h1"), NatKind::PortPreserving);
        let symmetric = ruleset(site("gw-h2"), NatKind::Symmetric);
        assert!(
            preserving.contains("oifname \"wan\" masquerade\n"),
            "{preserving}"
        );
        assert!(
            symmetric.contains("oifname \"wan\" masquerade random,fully-random\n"),
            "{symmetric}"
        );
        for rules in [&preserving, &symmetric] {
            assert!(rules.contains("iifname \"wan\" ct state established,related accept"));
            assert!(rules.contains("counter name unsolicited_dropped drop"));
            assert!(!rules.contains("notrack"));
        }
    }
}
