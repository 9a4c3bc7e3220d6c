//! One node of the testbed (test infrastructure): its network namespace wired to its
//! uplink (the router of a [`crate::Testbed`], a site's LAN in a
//! [`crate::MultiCloud`]), the holder of its private mount namespace, and its
//! `wgmesh agent`.
//!
//! Inside a node everything has its production path: the agent's state in
//! `/var/lib/wgmesh`, the conflist in `/etc/cni/net.d`, IPAM leases in
//! `/var/lib/cni/networks`, pod namespaces in `/run/netns`, WireGuard's UAPI socket in
//! `/var/run/wireguard`. From the host those are under `/proc/<holder pid>/root/`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::Value;

use crate::addressing::{Family, Layout, NodeAddresses};
use crate::agent::Agent;
use crate::exec::{self, Exec};
use crate::holder::Holder;
use crate::netns::NetNs;
use crate::pod::{CniRefusal, Pod};
use crate::raw::{self, Mac};

/// What a node's network namespace is plugged into.
pub(crate) trait Uplink: Sync {
    /// Wires the node `name`'s namespace `node`: its [`UNDERLAY_LINK`] gets
    /// `addresses.internal_ip()` and a default route via `addresses.gateway_ip()`.
    /// Returns the MAC address of that next hop.
    fn attach(&self, node: &NetNs, name: &str, addresses: &NodeAddresses) -> Mac;
}

/// How to create a node (see [`Node::create`]).
#[derive(Debug, Clone)]
pub(crate) struct NodeSpec<'a> {
    /// The testbed's unique id: the node's namespace is `<run_id>-<name>`.
    pub run_id: &'a str,
    /// The Kubernetes Node name.
    pub name: &'a str,
    pub addresses: NodeAddresses,
    /// Labels of its Node object beyond the kubelet's own (`kubernetes.io/hostname`...).
    pub labels: BTreeMap<String, String>,
    /// The agent's kubeconfig.
    pub kubeconfig: &'a Path,
    /// Where the node's logs go.
    pub dir: &'a Path,
}

/// The node's interface on the underlay (towards its router or gateway).
pub const UNDERLAY_LINK: &str = "eth0";
/// Where the agent writes the node's conflist (its default `--cni-conf-dir`).
pub const CONFLIST_PATH: &str = concat!("/etc/cni/net.d/", "10-wgmesh.conflist");
/// The agent's state directory (its default `--state-dir`).
pub const STATE_DIR: &str = "/var/lib/wgmesh";
/// The agent's last-known-good plan in [`STATE_DIR`].
pub const MESH_FILE: &str = wgmesh::agent::state::STATE_FILE;
/// The node's private key in [`STATE_DIR`].
pub const PRIVATE_KEY_FILE: &str = wgmesh::agent::identity::KEY_FILE;

/// How long pod creation waits for the agent's conflist.
const CONFLIST_WAIT: Duration = Duration::from_secs(30);

/// A node. Fields drop in order: the agent stops, every process inside the node ends,
/// then its network namespace goes (and with it the veth to its uplink).
#[derive(Debug)]
pub struct Node {
    agent: Agent,
    holder: Holder,
    netns: NetNs,
    name: String,
    addresses: NodeAddresses,
    labels: BTreeMap<String, String>,
    /// The MAC address of the node's next hop (the router, a site's gateway).
    gateway_mac: Mac,
}

impl Node {
    /// Creates the node `spec.name`: network namespace `<run_id>-<name>` plugged into
    /// `uplink`, and its holder. The agent is not started: it needs the Node object
    /// first.
    pub(crate) fn create(spec: NodeSpec<'_>, uplink: &dyn Uplink) -> Node {
        let NodeSpec {
            run_id,
            name,
            addresses,
            labels,
            kubeconfig,
            dir,
        } = spec;
        let netns_name = format!("{run_id}-{name}");
        let netns = NetNs::create(&netns_name);
        let gateway_mac = uplink.attach(&netns, name, &addresses);
        let holder = Holder::start(
            &netns.path(),
            &netns_name,
            &dir.join(format!("{name}-holder.log")),
        );
        let agent = Agent::new(
            name,
            kubeconfig.to_path_buf(),
            dir.join(format!("{name}-agent.log")),
            addresses.layout.cluster_cidr_arg(),
        );
        Node {
            agent,
            holder,
            netns,
            name: name.to_string(),
            addresses,
            labels,
            gateway_mac,
        }
    }

    /// The Kubernetes Node name (`node<slot>` in a [`crate::Testbed`], `a1` in a
    /// [`crate::MultiCloud`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's slot in the testbed (`tb.node(i)`); its pod CIDRs are
    /// `10.244.<index>.0/24` and `fd00:10:244:<index>::/64` (those of its layout).
    pub fn index(&self) -> usize {
        self.addresses.index
    }

    /// Which families the node's underlay and pods use.
    pub fn layout(&self) -> Layout {
        self.addresses.layout
    }

    /// The node's addresses, as its Node object gets them.
    pub(crate) fn addresses(&self) -> &NodeAddresses {
        &self.addresses
    }

    /// The labels its Node object gets beyond the kubelet's own.
    pub(crate) fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// The node's public address as a cloud provider reports it (its Node's
    /// ExternalIP), if it has one.
    pub fn external_ip(&self) -> Option<Ipv4Addr> {
        self.addresses.external_ip
    }

    /// The node's IPv4 address on the underlay: its InternalIP. Panics over an IPv6
    /// underlay (see [`Node::internal_ip`]).
    pub fn underlay_ip(&self) -> Ipv4Addr {
        self.assert_underlay(Family::Ipv4);
        self.addresses.underlay_ip
    }

    /// The node's IPv6 address on the underlay: its InternalIP. Panics over an IPv4
    /// underlay.
    pub fn underlay_ip6(&self) -> Ipv6Addr {
        self.assert_underlay(Family::Ipv6);
        self.addresses.underlay_ip6
    }

    /// The node's address on the underlay, of either family: its InternalIP.
    pub fn internal_ip(&self) -> IpAddr {
        self.addresses.internal_ip()
    }

    /// The node's addresses on the underlay (its InternalIPs): one, of the underlay's
    /// family.
    pub fn underlay_ips(&self) -> Vec<IpAddr> {
        vec![self.internal_ip()]
    }

    /// The node's address on the underlay of `family`, if it has one.
    pub fn underlay_ip_of(&self, family: Family) -> Option<IpAddr> {
        (self.layout().underlay() == family).then(|| self.internal_ip())
    }

    /// The router's (or the site gateway's) IPv4 address in the node's subnet: the
    /// node's default gateway. Panics over an IPv6 underlay.
    pub fn router_ip(&self) -> Ipv4Addr {
        self.assert_underlay(Family::Ipv4);
        self.addresses.router_ip
    }

    /// The node's IPv4 pod CIDR (spec.podCIDR of an IPv4 or dual-stack node). Panics
    /// when its pods have no IPv4 (see [`Node::pod_cidrs`]).
    pub fn pod_cidr(&self) -> Ipv4Net {
        self.assert_pods(Family::Ipv4);
        self.addresses.pod_cidr
    }

    /// The node's IPv6 pod CIDR. Panics when its pods have no IPv6.
    pub fn pod_cidr6(&self) -> Ipv6Net {
        self.assert_pods(Family::Ipv6);
        self.addresses.pod_cidr6
    }

    /// The node's pod CIDR of `family`, if its pods have that family.
    pub fn pod_cidr_of(&self, family: Family) -> Option<IpNet> {
        self.layout()
            .has_pods_of(family)
            .then(|| self.addresses.pod_cidr_of(family))
    }

    /// The node's spec.podCIDRs, IPv4 first.
    pub fn pod_cidrs(&self) -> Vec<IpNet> {
        self.addresses.pod_cidrs()
    }

    /// The address of the node's bridge in its pod CIDR of `family` (the pods' gateway;
    /// the source of the node's own traffic to remote pods), if its pods have that
    /// family.
    pub fn pod_gateway_of(&self, family: Family) -> Option<IpAddr> {
        // The first address after the network's (wgmesh-cni's gateway in both families).
        self.pod_cidr_of(family).map(|net| match net {
            IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) + 1)),
            IpNet::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) + 1)),
        })
    }

    fn assert_underlay(&self, family: Family) {
        assert_eq!(
            self.layout().underlay(),
            family,
            "{} has no {family} underlay address ({})",
            self.name,
            self.layout().describe()
        );
    }

    fn assert_pods(&self, family: Family) {
        assert!(
            self.layout().has_pods_of(family),
            "{} has no {family} pod CIDR ({})",
            self.name,
            self.layout().describe()
        );
    }

    /// The `wgmesh.io/endpoint` the node's agent should publish.
    pub fn expected_endpoint(&self) -> String {
        self.addresses.endpoint()
    }

    /// The node's network namespace file as the test process can open it.
    pub fn host_netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.netns_name()))
    }

    /// The node's network namespace name under the host's /run/netns.
    pub fn netns_name(&self) -> &str {
        self.netns.name()
    }

    /// The pid of the process holding the node's namespaces.
    pub fn holder_pid(&self) -> u32 {
        self.holder.pid()
    }

    /// How a person gets a shell in the node (append a command, or get `$SHELL`).
    pub fn enter_command(&self) -> String {
        format!("nsenter --target {} --mount --net", self.holder.pid())
    }

    /// Puts a hand-made IPv4/UDP packet from `src` to `dst` on the node's underlay link,
    /// addressed to its next hop, bypassing the node's own routing and nftables: what a
    /// leak would look like on the wire (e.g. a pod-addressed packet).
    pub fn send_raw_udp(&self, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) {
        let frame = raw::udp_frame(
            self.netns.link_mac(UNDERLAY_LINK),
            self.gateway_mac,
            src,
            dst,
            payload,
        );
        raw::send_frame(&self.netns.path(), UNDERLAY_LINK, frame);
    }

    /// Where the node's `path` is reachable from the host (through the holder's root).
    pub fn host_path(&self, path: impl AsRef<Path>) -> PathBuf {
        self.holder.host_path(path)
    }

    /// The content of the node's file `path`, if it exists.
    pub fn read_file(&self, path: impl AsRef<Path>) -> Option<String> {
        std::fs::read_to_string(self.host_path(path)).ok()
    }

    /// The node's `/etc/cni/net.d/10-wgmesh.conflist`, once its agent wrote it.
    pub fn conflist(&self) -> Option<String> {
        self.read_file(CONFLIST_PATH)
    }

    /// Waits for the agent's conflist; panics with the agent's log after `timeout`.
    pub fn wait_for_conflist(&self, timeout: Duration) -> String {
        self.expect_within(timeout, "the agent's conflist", || self.conflist())
    }

    /// The agent's last-known-good plan (`/var/lib/wgmesh/mesh.json`), as JSON.
    pub fn mesh(&self) -> Option<Value> {
        let text = self.read_file(Path::new(STATE_DIR).join(MESH_FILE))?;
        serde_json::from_str(&text).ok()
    }

    /// Node names in the agent's current plan, sorted.
    pub fn mesh_peers(&self) -> Vec<String> {
        let mut peers: Vec<String> = self
            .mesh()
            .and_then(|m| m["peers"].as_object().map(|p| p.keys().cloned().collect()))
            .unwrap_or_default();
        peers.sort();
        peers
    }

    /// Waits until the agent's plan lists exactly `peers` (node names, any order).
    pub fn wait_for_peers(&self, peers: &[&str], timeout: Duration) {
        let mut want: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
        want.sort();
        self.expect_within(timeout, &format!("peers {want:?}"), || {
            (self.mesh_peers() == want).then_some(())
        });
    }

    /// Everything the node's agent logged (all of its starts).
    pub fn agent_log(&self) -> String {
        self.agent.log()
    }

    /// The agent's log file on the host.
    pub fn agent_log_path(&self) -> &Path {
        self.agent.log_path()
    }

    /// True while the node's agent runs.
    pub fn agent_running(&self) -> bool {
        self.agent.is_running()
    }

    /// True when the node's agent exited on its own (crashed, or refused its arguments).
    pub fn agent_crashed(&self) -> bool {
        self.agent.crashed()
    }

    /// The agent's pid while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.pid()
    }

    /// Stops the node's agent (SIGTERM, as a kubelet would); its state stays.
    pub fn stop_agent(&self) {
        self.agent.stop();
    }

    /// Starts the node's agent with `extra` arguments after the defaults. Panics if it
    /// already runs.
    pub fn start_agent(&self, extra: &[&str]) {
        self.agent.start(&self.holder, extra);
    }

    /// Creates pod `name` on this node as a runtime does (see [`Pod`]).
    pub fn add_pod(&self, name: &str) -> Pod {
        let conflist = self.wait_for_conflist(CONFLIST_WAIT);
        Pod::create(self, &self.holder, name, &conflist)
    }

    /// One ADD of pod `name` with `conflist` (the one on disk, however old), as a
    /// runtime makes it: a refusal tears the sandbox down and is returned.
    pub fn try_add_pod(&self, name: &str, conflist: &str) -> Result<Pod, CniRefusal> {
        Pod::try_create(self, &self.holder, name, conflist)
    }

    /// Creates pod `name` the way the kubelet keeps at it: an ADD with the conflist on
    /// disk every `every` until one succeeds; panics after `timeout`. Returns the pod
    /// and the refusals before it.
    pub fn add_pod_retrying(
        &self,
        name: &str,
        every: Duration,
        timeout: Duration,
    ) -> (Pod, Vec<CniRefusal>) {
        let deadline = std::time::Instant::now() + timeout;
        let mut refusals = Vec::new();
        loop {
            let conflist = self.conflist();
            if let Some(conflist) = &conflist {
                match self.try_add_pod(name, conflist) {
                    Ok(pod) => return (pod, refusals),
                    Err(refused) => refusals.push(refused),
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: pod {name} got no network within {timeout:?} (conflist present: {}); last refusal: {}\nagent log (last 40 lines):\n{}",
                self.name,
                conflist.is_some(),
                refusals.last().map(ToString::to_string).unwrap_or_default(),
                exec::tail(&self.agent_log(), 40)
            );
            std::thread::sleep(every);
        }
    }

    /// What a reboot does to the node while its disk survives: the agent dies
    /// (SIGKILL), the kernel state goes (every pod namespace, `wgmesh0`, the bridge,
    /// wgmesh's routes, the nftables table; /run is a tmpfs), and the conflist, the
    /// agent's state directory and the IPAM leases stay on disk. The node's Node object
    /// and its underlay address stay as they were.
    pub fn simulate_reboot(&self) {
        self.agent.kill();
        let _ = self.exec(&["ip", "-all", "netns", "delete"]);
        for link in ["wgmesh0", wgmesh::cni::config::DEFAULT_BRIDGE] {
            let _ = self.exec(&["ip", "link", "delete", link]);
        }
        for family in ["-4", "-6"] {
            let _ = self.exec(&["ip", family, "route", "flush", "proto", "87"]);
        }
        let _ = self.exec(&["nft", "delete", "table", "inet", "wgmesh"]);
        let _ = self.exec(&["sh", "-c", "rm -rf /run/wireguard/*"]);
        assert!(
            self.conflist().is_some(),
            "{}: a reboot keeps the conflist on disk",
            self.name
        );
    }

    /// GET `path` of the agent's telemetry endpoint (port 9474) inside the node: the
    /// status code ("000" when nothing answers) and the body.
    pub fn agent_http(&self, path: &str) -> (String, String) {
        let out = self.exec(&[
            "curl",
            "-s",
            "-m",
            "5",
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:9474{path}"),
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        match text.rsplit_once('\n') {
            Some((body, code)) => (code.to_string(), body.to_string()),
            None => (text, String::new()),
        }
    }

    /// Kills the agent with SIGKILL (a crash, or the node losing power).
    pub fn kill_agent(&self) {
        self.agent.kill();
    }

    /// Deletes `pod` as a runtime does: CNI DEL, then its namespace.
    pub fn delete_pod(&self, pod: Pod) {
        assert_eq!(
            pod.node(),
            self.index(),
            "pod {} is not on {}",
            pod.name(),
            self.name
        );
        pod.delete(&self.holder);
    }

    /// Polls `cond` until it holds; panics after `timeout` with the agent's log.
    fn expect_within<T>(
        &self,
        timeout: Duration,
        what: &str,
        cond: impl FnMut() -> Option<T>,
    ) -> T {
        exec::poll_until(timeout, cond).unwrap_or_else(|| {
            panic!(
                "{}: timed out after {timeout:?} waiting for {what}; agent running: {}; agent log (last 40 lines):\n{}",
                self.name,
                self.agent_running(),
                exec::tail(&self.agent_log(), 40)
            )
        })
    }
}

/// Commands inside the node: its network and mount namespaces.
impl Exec for Node {
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        self.holder.command(program)
    }

    fn place(&self) -> &str {
        &self.name
    }
}
