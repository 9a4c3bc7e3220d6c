//! The underlay network (test infrastructure): a router namespace connecting every node,
//! the "internet" host and the API server's host, each in its own subnet.
//!
//! The router forwards between node addresses like any router, but, like real routers
//! between hosts, it drops every packet from or to the pod ranges (10.244.0.0/16 and
//! fd00:10:244::/56): nftables rules in the router, counted, so tests can prove that pod
//! traffic crossed the underlay only encrypted, never as plain pod addresses. The router
//! has no default route, so nothing the testbed sends can leave these namespaces.
//!
//! The same router is the internet of a [`crate::MultiCloud`], where it connects NAT
//! gateways instead of nodes and drops every private address ([`Drops::Private`]).
//!
//! The underlay has one family (see [`crate::addressing::Layout`]). Over IPv4, IPv6 is
//! disabled on every underlay link (both ends), so captures on the router show only what
//! the testbed and the product send, not router solicitations and MLD; over IPv6 the
//! links have IPv6 only, kept quiet (see [`crate::netns`]).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use ipnet::Ipv4Net;
use wgmesh_testkit::Proc;

use crate::addressing::{
    API_IP, API_IP6, API_PREFIX_LEN, API_ROUTER_IP, API_ROUTER_IP6, CLUSTER_CIDR, CLUSTER_CIDR6,
    Family, INTERNET_IP, INTERNET_IP6, INTERNET_PREFIX_LEN, INTERNET_ROUTER_IP,
    INTERNET_ROUTER_IP6, NodeAddresses, PREFIX_LEN6,
};
use crate::capture::{self, Capture, Tap, Taps};
use crate::exec::Exec;
use crate::netns::NetNs;
use crate::node::Uplink;
use crate::raw::Mac;
use crate::whoami::WhoAmI;

/// The nftables table of the router.
pub const NFT_TABLE: &str = "wgmesh_testbed";
/// The named counter of packets the router dropped because of a pod-range address (in
/// the `ip` table for the IPv4 range, in the `ip6` table for the IPv6 range).
pub const POD_RANGE_COUNTER: &str = "pod_range_dropped";
/// The named counter of packets the router dropped because of a private address (pod
/// range included), with [`Drops::Private`].
pub const PRIVATE_COUNTER: &str = "private_dropped";
/// The private address ranges of RFC 1918, which internet routers drop.
pub const PRIVATE_RANGES: [&str; 3] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];
/// The router's interface towards the internet host.
pub const INTERNET_LINK: &str = "internet";
/// The router's interface towards the API server's host.
pub const API_LINK: &str = "api";

/// The router's interface towards node slot `index`.
pub fn node_link(index: usize) -> String {
    format!("node{index}")
}

/// What the router drops (and counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drops {
    /// Every packet from or to the pod ranges ([`POD_RANGE_COUNTER`]): a router between
    /// hosts of one network, which knows nothing of pods.
    PodRange,
    /// Every packet from or to a private IPv4 address ([`PRIVATE_RANGES`], counted in
    /// [`PRIVATE_COUNTER`]), as internet routers drop them; those from or to the pod
    /// range are also counted in [`POD_RANGE_COUNTER`]. The IPv6 pod range is dropped
    /// and counted as with [`Drops::PodRange`].
    Private,
}

impl Drops {
    /// The router's nftables ruleset: the IPv4 table of `self`, and the IPv6 table
    /// dropping the IPv6 pod range.
    fn ruleset(self) -> String {
        format!("{}\n{}", self.ipv4_ruleset(), ipv6_ruleset())
    }

    fn ipv4_ruleset(self) -> String {
        let chains = match self {
            Drops::PodRange => format!(
                "chain prerouting {{
                    type filter hook prerouting priority raw; policy accept;
                    ip saddr {CLUSTER_CIDR} counter name {POD_RANGE_COUNTER} drop
                    ip daddr {CLUSTER_CIDR} counter name {POD_RANGE_COUNTER} drop
                }}
                chain output {{
                    type filter hook output priority raw; policy accept;
                    ip daddr {CLUSTER_CIDR} counter name {POD_RANGE_COUNTER} drop
                }}"
            ),
            Drops::Private => {
                let private = PRIVATE_RANGES.join(", ");
                format!(
                    "counter {PRIVATE_COUNTER} {{ }}
                    set private {{ type ipv4_addr; flags interval; elements = {{ {private} }} }}
                    chain prerouting {{
                        type filter hook prerouting priority raw; policy accept;
                        ip saddr @private goto drop_private
                        ip daddr @private goto drop_private
                    }}
                    chain output {{
                        type filter hook output priority raw; policy accept;
                        ip daddr @private goto drop_private
                    }}
                    chain drop_private {{
                        ip saddr {CLUSTER_CIDR} counter name {POD_RANGE_COUNTER} goto drop_counted
                        ip daddr {CLUSTER_CIDR} counter name {POD_RANGE_COUNTER} goto drop_counted
                        goto drop_counted
                    }}
                    chain drop_counted {{
                        counter name {PRIVATE_COUNTER} drop
                    }}"
                )
            }
        };
        format!("table ip {NFT_TABLE} {{\n counter {POD_RANGE_COUNTER} {{ }}\n {chains}\n}}")
    }
}

/// The router's `ip6` table: every packet from or to the IPv6 pod range is dropped and
/// counted.
fn ipv6_ruleset() -> String {
    format!(
        "table ip6 {NFT_TABLE} {{
            counter {POD_RANGE_COUNTER} {{ }}
            chain prerouting {{
                type filter hook prerouting priority raw; policy accept;
                ip6 saddr {CLUSTER_CIDR6} counter name {POD_RANGE_COUNTER} drop
                ip6 daddr {CLUSTER_CIDR6} counter name {POD_RANGE_COUNTER} drop
            }}
            chain output {{
                type filter hook output priority raw; policy accept;
                ip6 daddr {CLUSTER_CIDR6} counter name {POD_RANGE_COUNTER} drop
            }}
        }}"
    )
}

/// How a namespace is wired to the router (see [`Router::attach`]): one subnet, of
/// the family of its addresses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attachment<'a> {
    /// The router's interface.
    pub router_link: &'a str,
    /// The interface in the attached namespace.
    pub peer_link: &'a str,
    pub router_ip: IpAddr,
    pub peer_ip: IpAddr,
    pub prefix_len: u8,
}

/// The router: forwards between its subnets, drops the pod range (or every private
/// address, see [`Drops`]).
#[derive(Debug)]
pub struct Router {
    netns: NetNs,
    /// The router's interfaces, each with the directed broadcast address of its subnet
    /// (what a capture sends its end marker to).
    taps: Taps,
    /// Router interfaces towards nodes, by node slot.
    node_links: Mutex<BTreeMap<usize, String>>,
    /// Where captures keep their pcap files.
    capture_dir: PathBuf,
}

impl Router {
    /// Creates the router namespace `name` with forwarding (both families) and the
    /// drop rules of `drops`.
    pub(crate) fn create(name: &str, capture_dir: &Path, drops: Drops) -> Router {
        let netns = NetNs::create(name);
        netns.set_sysctl("net.ipv4.ip_forward", "1");
        netns.set_sysctl("net.ipv6.conf.all.forwarding", "1");
        let mut nft = netns.command("nft");
        nft.args(["-f", "-"]);
        crate::exec::output_ok(nft, Some(drops.ruleset().as_bytes()));
        Router {
            netns,
            taps: Taps::default(),
            node_links: Mutex::new(BTreeMap::new()),
            capture_dir: capture_dir.to_path_buf(),
        }
    }

    /// Connects `peer` with a veth: `router_link` here, `peer_link` there; addresses on
    /// both ends and the peer's default route (of that family) via the router. An IPv6
    /// subnet makes an IPv6-only link, an IPv4 one a link without IPv6.
    pub(crate) fn attach(&self, peer: &NetNs, a: Attachment<'_>) {
        let flags = match a.router_ip {
            IpAddr::V4(_) => {
                self.netns.add_veth(a.router_link, peer, a.peer_link);
                ""
            }
            IpAddr::V6(_) => {
                self.netns.add_veth_ipv6(a.router_link, peer, a.peer_link);
                " nodad"
            }
        };
        self.netns.ip_batch(&[
            format!(
                "addr add {}/{} dev {}{flags}",
                a.router_ip, a.prefix_len, a.router_link
            ),
            format!("link set {} up", a.router_link),
        ]);
        peer.plug_in(a.peer_link, a.peer_ip, a.prefix_len, a.router_ip);
        match a.peer_ip {
            IpAddr::V4(ip) => {
                let subnet = Ipv4Net::new(ip, a.prefix_len).expect("a valid prefix length");
                self.taps.add(a.router_link, subnet.broadcast());
            }
            IpAddr::V6(_) => self.taps.add_ipv6_only(a.router_link),
        }
    }

    /// Routes `destination` via `gateway` (an address in one of the router's subnets):
    /// e.g. a NAT gateway's public addresses.
    pub(crate) fn add_route(&self, destination: Ipv4Net, gateway: Ipv4Addr) {
        self.netns
            .ip_batch(&[format!("route add {destination} via {gateway}")]);
    }

    /// Connects a node's network namespace in its slot's subnet of its layout's
    /// underlay family; returns the MAC address of the router's end (the node's
    /// gateway).
    pub(crate) fn attach_node(&self, node_netns: &NetNs, addresses: &NodeAddresses) -> Mac {
        let link = node_link(addresses.index);
        self.attach(
            node_netns,
            Attachment {
                router_link: &link,
                peer_link: crate::node::UNDERLAY_LINK,
                router_ip: addresses.gateway_ip(),
                peer_ip: addresses.internal_ip(),
                prefix_len: addresses.prefix_len(),
            },
        );
        let mac = self.netns.link_mac(&link);
        self.node_links
            .lock()
            .expect("router links")
            .insert(addresses.index, link);
        mac
    }

    /// Adopts the interface towards node slot `addresses.index` that something outside
    /// the testbed plugged into the router (the test VM of `tests/vm`, say), with the
    /// router's address in that slot's subnet already on it: captures then tap it like
    /// the testbed's own node links. Undone by [`Router::detach_node`].
    pub fn adopt_node_link(&self, addresses: &NodeAddresses) {
        let link = node_link(addresses.index);
        self.taps.add(&link, addresses.broadcast);
        self.node_links
            .lock()
            .expect("router links")
            .insert(addresses.index, link);
    }

    /// Forgets a removed node's link and deletes the router's end if it is still there
    /// (normally the veth went away with the node's namespace).
    pub fn detach_node(&self, index: usize) {
        if let Some(link) = self.node_links.lock().expect("router links").remove(&index) {
            self.taps.remove(&link);
            // Normally gone already; deleting twice is harmless.
            let _ = self.netns.exec(&["ip", "link", "delete", &link]);
        }
    }

    /// Connects the internet host, in the underlay's `family`.
    pub(crate) fn attach_internet(&self, internet: &NetNs, family: Family) {
        let (router_ip, peer_ip, prefix_len) = match family {
            Family::Ipv4 => (
                INTERNET_ROUTER_IP.into(),
                INTERNET_IP.into(),
                INTERNET_PREFIX_LEN,
            ),
            Family::Ipv6 => (INTERNET_ROUTER_IP6.into(), INTERNET_IP6.into(), PREFIX_LEN6),
        };
        self.attach(
            internet,
            Attachment {
                router_link: INTERNET_LINK,
                peer_link: "eth0",
                router_ip,
                peer_ip,
                prefix_len,
            },
        );
    }

    /// Connects the API server's host, in the underlay's `family`.
    pub(crate) fn attach_api(&self, api: &NetNs, family: Family) {
        let (router_ip, peer_ip, prefix_len) = match family {
            Family::Ipv4 => (API_ROUTER_IP.into(), API_IP.into(), API_PREFIX_LEN),
            Family::Ipv6 => (API_ROUTER_IP6.into(), API_IP6.into(), PREFIX_LEN6),
        };
        self.attach(
            api,
            Attachment {
                router_link: API_LINK,
                peer_link: "eth0",
                router_ip,
                peer_ip,
                prefix_len,
            },
        );
    }

    /// The router's network namespace name (under /run/netns on the host).
    pub fn netns_name(&self) -> &str {
        self.netns.name()
    }

    /// How a person gets a shell on the router.
    pub fn enter_command(&self) -> String {
        format!("nsenter --net={}", self.netns.path().display())
    }

    /// The router's interfaces towards nodes, in slot order.
    pub fn node_links(&self) -> Vec<String> {
        self.node_links
            .lock()
            .expect("router links")
            .values()
            .cloned()
            .collect()
    }

    /// Packets the router has dropped so far because their source or destination is in
    /// a pod range, of either family.
    pub fn pod_range_drops(&self) -> u64 {
        self.pod_range_drops_of(Family::Ipv4) + self.pod_range_drops_of(Family::Ipv6)
    }

    /// Packets the router has dropped so far because their source or destination is in
    /// the pod range of `family`.
    pub fn pod_range_drops_of(&self, family: Family) -> u64 {
        match family {
            Family::Ipv4 => self.counter_packets(POD_RANGE_COUNTER),
            Family::Ipv6 => nft_counter_in(self, "ip6", NFT_TABLE, POD_RANGE_COUNTER),
        }
    }

    /// Packets the router has dropped so far because their source or destination is a
    /// private address (pod range included); only a router with [`Drops::Private`].
    pub fn private_drops(&self) -> u64 {
        self.counter_packets(PRIVATE_COUNTER)
    }

    /// Panics unless no packet from or to a pod range (of either family) has reached
    /// the router since the testbed was built (its drop counters are 0), and none shows
    /// a pod address in any of `captures`. Each node is alone with the router in its
    /// subnet, so every packet on the underlay passes the router: this shows that pod
    /// traffic crossed the underlay only encrypted.
    pub fn assert_no_pod_traffic_in_clear(&self, captures: &[&Capture]) {
        for family in [Family::Ipv4, Family::Ipv6] {
            let range = family.cluster_cidr();
            for capture in captures {
                let clear = capture.packets_with_addresses_in(range);
                assert!(
                    clear.is_empty(),
                    "{} captured packets show a pod address ({range}) on the underlay, e.g. {}",
                    clear.len(),
                    clear[0]
                );
            }
            let drops = self.pod_range_drops_of(family);
            assert_eq!(
                drops, 0,
                "the router dropped {drops} packets from or to the pod range {range}: pod traffic was on the underlay in clear"
            );
        }
    }

    /// Drops every packet the router would forward between `a` and `b` (both directions,
    /// both of one family) until the returned guard is dropped: e.g. a node cut off
    /// from the API server while it still reaches the other nodes.
    pub fn block(&self, a: impl Into<IpAddr>, b: impl Into<IpAddr>) -> Blocked<'_> {
        static BLOCKS: AtomicU32 = AtomicU32::new(0);
        let (a, b) = (a.into(), b.into());
        assert_eq!(
            Family::of(a),
            Family::of(b),
            "blocking between {a} and {b}: not of one family"
        );
        let ip = match a {
            IpAddr::V4(_) => "ip",
            IpAddr::V6(_) => "ip6",
        };
        let table = format!(
            "{NFT_TABLE}_block{}",
            BLOCKS.fetch_add(1, Ordering::Relaxed)
        );
        let ruleset = format!(
            "table inet {table} {{
                chain forward {{
                    type filter hook forward priority filter; policy accept;
                    {ip} saddr {a} {ip} daddr {b} drop
                    {ip} saddr {b} {ip} daddr {a} drop
                }}
            }}"
        );
        let mut nft = self.netns.command("nft");
        nft.args(["-f", "-"]);
        crate::exec::output_ok(nft, Some(ruleset.as_bytes()));
        Blocked {
            router: self,
            table,
        }
    }

    /// The packet count of the named nftables counter `name` in the router's table.
    pub fn counter_packets(&self, name: &str) -> u64 {
        nft_counter(self, NFT_TABLE, name)
    }

    /// Captures, on every interface towards a node, the packets matching the tcpdump
    /// `filter` (empty: all) while `work` runs, and returns them decoded.
    pub fn capture<R>(&self, filter: &str, work: impl FnOnce() -> R) -> (R, Capture) {
        let links = self.node_links();
        let links: Vec<&str> = links.iter().map(String::as_str).collect();
        self.capture_on(&links, filter, work)
    }

    /// Like [`Router::capture`], on the router interfaces `links` (e.g. [`node_link`],
    /// [`INTERNET_LINK`], [`API_LINK`]).
    pub fn capture_on<R>(
        &self,
        links: &[&str],
        filter: &str,
        work: impl FnOnce() -> R,
    ) -> (R, Capture) {
        let taps: Vec<Tap> = links.iter().map(|l| self.tap(l, l.to_string())).collect();
        capture::during(&taps, filter, &self.capture_dir, work)
    }

    /// The router's interfaces, sorted.
    pub fn links(&self) -> Vec<String> {
        self.taps.names()
    }

    /// A tap on the router's interface `link`, labelled `label` in captures.
    pub(crate) fn tap(&self, link: &str, label: String) -> Tap {
        self.taps.tap(&self.netns.path(), link, label)
    }
}

/// The packet count of the named nftables counter `name` of table `ip <table>` in
/// `place`.
pub(crate) fn nft_counter(place: &impl Exec, table: &str, name: &str) -> u64 {
    nft_counter_in(place, "ip", table, name)
}

/// The packet count of the named nftables counter `name` of table `<family> <table>`
/// in `place`.
pub(crate) fn nft_counter_in(place: &impl Exec, family: &str, table: &str, name: &str) -> u64 {
    try_nft_counter_in(place, family, table, name).unwrap_or_else(|| {
        let out = place.exec(&["nft", "-j", "list", "counter", family, table, name]);
        panic!(
            "no packet count for counter {name} of table {table} in {}: {}{}",
            place.place(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Like [`nft_counter`], None when it cannot be read (for failure messages).
pub(crate) fn try_nft_counter(place: &impl Exec, table: &str, name: &str) -> Option<u64> {
    try_nft_counter_in(place, "ip", table, name)
}

/// Like [`nft_counter_in`], None when it cannot be read.
pub(crate) fn try_nft_counter_in(
    place: &impl Exec,
    family: &str,
    table: &str,
    name: &str,
) -> Option<u64> {
    let out = place.exec(&["nft", "-j", "list", "counter", family, table, name]);
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    value["nftables"]
        .as_array()?
        .iter()
        .find_map(|i| i["counter"]["packets"].as_u64())
}

/// Traffic the router drops between two addresses (see [`Router::block`]); forwarded
/// again when dropped.
#[derive(Debug)]
pub struct Blocked<'a> {
    router: &'a Router,
    table: String,
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        let out = self
            .router
            .exec(&["nft", "delete", "table", "inet", &self.table]);
        if !out.status.success() && !std::thread::panicking() {
            panic!(
                "cannot lift the block {}: {}",
                self.table,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The "internet": one host behind the router (203.0.113.10), e.g. to see which source
/// address egress traffic arrives with.
#[derive(Debug)]
pub struct Internet {
    netns: NetNs,
}

impl Internet {
    pub(crate) fn create(name: &str) -> Internet {
        Internet {
            netns: NetNs::create(name),
        }
    }

    pub(crate) fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// The internet host's IPv4 address (over an IPv4 underlay).
    pub fn ip(&self) -> Ipv4Addr {
        INTERNET_IP
    }

    /// The internet host's IPv6 address (over an IPv6 underlay).
    pub fn ip6(&self) -> Ipv6Addr {
        INTERNET_IP6
    }

    pub fn netns_name(&self) -> &str {
        self.netns.name()
    }

    /// The internet host's network namespace file (e.g. for [`crate::probe::udp_socket`]).
    pub fn host_netns_path(&self) -> PathBuf {
        self.netns.path()
    }

    /// How a person gets a shell on the internet host.
    pub fn enter_command(&self) -> String {
        format!("nsenter --net={}", self.netns.path().display())
    }

    /// Starts `args` in the background on the internet host; killed (that pid only) when
    /// the returned process is dropped.
    pub fn spawn<S: AsRef<OsStr>>(&self, args: &[S]) -> Proc {
        let (program, rest) = crate::exec::split(args, "internet");
        let mut cmd = self.command(program);
        cmd.args(rest).stdin(Stdio::null());
        Proc::spawn(cmd, "a process on the internet host")
    }

    /// Starts an HTTP server on `port` that answers every request with the client
    /// address it sees (one line); stopped when dropped. Fetch it with e.g.
    /// `curl -s http://203.0.113.10:<port>/` (this machine's busybox-static
    /// `wget` segfaults, even on the host).
    pub fn start_whoami(&self, port: u16) -> WhoAmI {
        self.start_whoami_at(INTERNET_IP.into(), port)
    }

    /// Like [`Internet::start_whoami`], listening on `ip` (e.g. [`Internet::ip6`] over
    /// an IPv6 underlay: `curl http://[2001:db8:203::10]:<port>/`).
    pub fn start_whoami_at(&self, ip: IpAddr, port: u16) -> WhoAmI {
        WhoAmI::start(&self.netns.path(), SocketAddr::new(ip, port))
    }
}

impl Uplink for Router {
    fn attach(&self, node: &NetNs, _name: &str, addresses: &NodeAddresses) -> Mac {
        self.attach_node(node, addresses)
    }
}

impl Exec for Router {
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        self.netns.command(program)
    }

    fn place(&self) -> &str {
        self.netns.name()
    }
}

impl Exec for Internet {
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        self.netns.command(program)
    }

    fn place(&self) -> &str {
        self.netns.name()
    }
}
