//! The underlay network (test infrastructure): a router namespace connecting every node,
//! the "internet" host and the API server's host, each in its own subnet.
//!
//! The router forwards between node addresses like any router, but, like real routers
//! between hosts, it drops every packet from or to the pod range (10.244.0.0/16): an
//! nftables rule in the router, counted, so tests can prove that pod traffic crossed the
//! underlay only encrypted, never as plain pod addresses. The router has no default
//! route, so nothing the testbed sends can leave these namespaces.
//!
//! IPv6 is disabled on every underlay link (both ends), so captures on the router show
//! only what the testbed and the product send, not router solicitations and MLD.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use wgmesh_testkit::Proc;

use crate::addressing::{
    API_IP, API_PREFIX_LEN, API_ROUTER_IP, CLUSTER_CIDR, INTERNET_IP, INTERNET_PREFIX_LEN,
    INTERNET_ROUTER_IP, NODE_PREFIX_LEN, NodeAddresses,
};
use crate::capture::{self, Capture};
use crate::exec::Exec;
use crate::netns::NetNs;
use crate::raw::Mac;
use crate::whoami::WhoAmI;

/// The nftables table of the router.
pub const NFT_TABLE: &str = "wgmesh_testbed";
/// The named counter of packets the router dropped because of a pod-range address.
pub const POD_RANGE_COUNTER: &str = "pod_range_dropped";
/// The router's interface towards the internet host.
pub const INTERNET_LINK: &str = "internet";
/// The router's interface towards the API server's host.
pub const API_LINK: &str = "api";

/// The router's interface towards node slot `index`.
pub fn node_link(index: usize) -> String {
    format!("node{index}")
}

/// The router: forwards between its subnets, drops the pod range.
#[derive(Debug)]
pub struct Router {
    netns: NetNs,
    /// Router interface name -> the directed broadcast address of its subnet (what a
    /// capture sends its end marker to).
    links: Mutex<BTreeMap<String, Ipv4Addr>>,
    /// Router interfaces towards nodes, by node slot.
    node_links: Mutex<BTreeMap<usize, String>>,
    /// Where captures keep their pcap files.
    capture_dir: std::path::PathBuf,
}

impl Router {
    /// Creates the router namespace `name` with forwarding and the pod-range drop rule.
    pub(crate) fn create(name: &str, capture_dir: &Path) -> Router {
        let netns = NetNs::create(name);
        netns.set_sysctl("net.ipv4.ip_forward", "1");
        let ruleset = format!(
            "table ip {NFT_TABLE} {{
                counter {POD_RANGE_COUNTER} {{ }}
                chain prerouting {{
                    type filter hook prerouting priority raw; policy accept;
                    ip saddr {CLUSTER_CIDR} counter name {POD_RANGE_COUNTER} drop
                    ip daddr {CLUSTER_CIDR} counter name {POD_RANGE_COUNTER} drop
                }}
                chain output {{
                    type filter hook output priority raw; policy accept;
                    ip daddr {CLUSTER_CIDR} counter name {POD_RANGE_COUNTER} drop
                }}
            }}"
        );
        let mut nft = netns.command("nft");
        nft.args(["-f", "-"]);
        crate::exec::output_ok(nft, Some(ruleset.as_bytes()));
        Router {
            netns,
            links: Mutex::new(BTreeMap::new()),
            node_links: Mutex::new(BTreeMap::new()),
            capture_dir: capture_dir.to_path_buf(),
        }
    }

    /// Connects `peer` with a veth: `router_link` here, `eth0` there; addresses on both
    /// ends and the peer's default route via the router.
    fn attach(
        &self,
        peer: &NetNs,
        router_link: &str,
        router_ip: Ipv4Addr,
        peer_ip: Ipv4Addr,
        prefix_len: u8,
    ) {
        self.netns.ip_batch(&[format!(
            "link add {router_link} type veth peer name eth0 netns {}",
            peer.name()
        )]);
        // Before the links come up, so not even one IPv6 packet is sent.
        self.netns
            .set_sysctl(&format!("net.ipv6.conf.{router_link}.disable_ipv6"), "1");
        peer.set_sysctl("net.ipv6.conf.eth0.disable_ipv6", "1");
        self.netns.ip_batch(&[
            format!("addr add {router_ip}/{prefix_len} dev {router_link}"),
            format!("link set {router_link} up"),
        ]);
        peer.ip_batch(&[
            format!("addr add {peer_ip}/{prefix_len} dev eth0"),
            "link set eth0 up".to_string(),
            format!("route add default via {router_ip}"),
        ]);
        let net = u32::from(peer_ip) & (u32::MAX << (32 - prefix_len));
        let broadcast = Ipv4Addr::from(net | !(u32::MAX << (32 - prefix_len)));
        self.links
            .lock()
            .expect("router links")
            .insert(router_link.to_string(), broadcast);
    }

    /// Connects a node's network namespace in its slot's subnet; returns the MAC address
    /// of the router's end (the node's gateway).
    pub(crate) fn attach_node(&self, node_netns: &NetNs, addresses: &NodeAddresses) -> Mac {
        let link = node_link(addresses.index);
        self.attach(
            node_netns,
            &link,
            addresses.router_ip,
            addresses.underlay_ip,
            NODE_PREFIX_LEN,
        );
        let mac = self.netns.link_mac(&link);
        self.node_links
            .lock()
            .expect("router links")
            .insert(addresses.index, link);
        mac
    }

    /// Forgets a removed node's link (the veth went away with the node's namespace).
    pub(crate) fn detach_node(&self, index: usize) {
        if let Some(link) = self.node_links.lock().expect("router links").remove(&index) {
            self.links.lock().expect("router links").remove(&link);
            // Normally gone already; deleting twice is harmless.
            let _ = self.netns.exec(&["ip", "link", "delete", &link]);
        }
    }

    /// Connects the internet host.
    pub(crate) fn attach_internet(&self, internet: &NetNs) {
        self.attach(
            internet,
            INTERNET_LINK,
            INTERNET_ROUTER_IP,
            INTERNET_IP,
            INTERNET_PREFIX_LEN,
        );
    }

    /// Connects the API server's host.
    pub(crate) fn attach_api(&self, api: &NetNs) {
        self.attach(api, API_LINK, API_ROUTER_IP, API_IP, API_PREFIX_LEN);
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
    /// the pod range.
    pub fn pod_range_drops(&self) -> u64 {
        self.counter_packets(POD_RANGE_COUNTER)
    }

    /// Panics unless no packet from or to the pod range has reached the router since the
    /// testbed was built (its drop counter is 0), and none shows a pod address in any of
    /// `captures`. Each node is alone with the router in its subnet, so every packet on
    /// the underlay passes the router: this shows that pod traffic crossed the underlay
    /// only encrypted.
    pub fn assert_no_pod_traffic_in_clear(&self, captures: &[&Capture]) {
        let range = crate::addressing::cluster_cidr();
        for capture in captures {
            let clear = capture.packets_with_addresses_in(range);
            assert!(
                clear.is_empty(),
                "{} captured packets show a pod address ({range}) on the underlay, e.g. {}",
                clear.len(),
                clear[0]
            );
        }
        let drops = self.pod_range_drops();
        assert_eq!(
            drops, 0,
            "the router dropped {drops} packets from or to the pod range {range}: pod traffic was on the underlay in clear"
        );
    }

    /// Drops every packet the router would forward between `a` and `b` (both directions)
    /// until the returned guard is dropped: e.g. a node cut off from the API server while
    /// it still reaches the other nodes.
    pub fn block(&self, a: Ipv4Addr, b: Ipv4Addr) -> Blocked<'_> {
        static BLOCKS: AtomicU32 = AtomicU32::new(0);
        let table = format!(
            "{NFT_TABLE}_block{}",
            BLOCKS.fetch_add(1, Ordering::Relaxed)
        );
        let ruleset = format!(
            "table ip {table} {{
                chain forward {{
                    type filter hook forward priority filter; policy accept;
                    ip saddr {a} ip daddr {b} drop
                    ip saddr {b} ip daddr {a} drop
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
        let json = self.exec_ok(&["nft", "-j", "list", "counter", "ip", NFT_TABLE, name]);
        let value: serde_json::Value = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("nft -j printed no JSON ({e}): {json}"));
        value["nftables"]
            .as_array()
            .and_then(|items| items.iter().find_map(|i| i["counter"]["packets"].as_u64()))
            .unwrap_or_else(|| panic!("no packet count for counter {name} in {json}"))
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
        let known = self.links.lock().expect("router links").clone();
        let targets: Vec<(String, Ipv4Addr)> = links
            .iter()
            .map(|l| {
                let broadcast = known
                    .get(*l)
                    .unwrap_or_else(|| panic!("the router has no interface {l}"));
                (l.to_string(), *broadcast)
            })
            .collect();
        capture::during(
            &self.netns.path(),
            &targets,
            filter,
            &self.capture_dir,
            work,
        )
    }
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
            .exec(&["nft", "delete", "table", "ip", &self.table]);
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

    /// The internet host's address.
    pub fn ip(&self) -> Ipv4Addr {
        INTERNET_IP
    }

    pub fn netns_name(&self) -> &str {
        self.netns.name()
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
        WhoAmI::start(&self.netns.path(), SocketAddr::from((INTERNET_IP, port)))
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
