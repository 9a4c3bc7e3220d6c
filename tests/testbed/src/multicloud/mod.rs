//! The multi-cloud testbed (test infrastructure; needs root): five nodes on two clouds
//! and two home networks, each site behind its own NAT gateway, the gateways on an
//! internet that drops private addresses, as real internet routers do.
//!
//! ```text
#![doc = include_str!("topology.txt")]
//! ```
//!
//! Everything is the project's own: namespaces, veths, a bridge per site, nftables
//! ([`gateway`] has the NAT rules, [`plan`] the addresses). The nodes, their agents and
//! pods, the API server and its relay, captures and [`crate::Exec`] are those of
//! [`crate::Testbed`]: a node here is a [`Node`] plugged into its site's LAN instead of
//! the router. Node objects are as the kubelet and a cloud provider create them:
//! InternalIP the private address, ExternalIP the 1:1 public address (a1, a2, b1 only),
//! `topology.kubernetes.io/region` the site, spec.podCIDRs `10.244.N.0/24`. The agents
//! run with the basic flags only (node name, kubeconfig, `--cluster-cidr`).
//!
//! ```no_run
//! use wgmesh_testbed::{Exec, MultiCloud, connectivity_matrix};
//! let mc = MultiCloud::build();
//! let pods = mc.add_pod_per_node("p");
//! print!("{}", connectivity_matrix(&pods));
//! let ((), capture) = mc.capture(&mc.internet_links(), "not arp and not port 6443", || {
//!     pods[0].ping(pods[3].ip());
//! });
//! assert!(capture.packets.iter().all(|p| p.is_wireguard()));
//! ```
//!
//! Links to capture on are named `<namespace>/<interface>`: `router/gw-a` (the internet
//! router's side of gw-a's public link), `router/internet`, `router/api`, `gw-a/wan`
//! (the gateway's side), `gw-a/a1` (a1's port on cloud-a's LAN). Names are unique per run
//! and everything is torn down on drop, also when a test panics (then the agents' logs
//! are printed and kept).

pub mod gateway;
pub mod plan;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wgmesh_testkit::unique_name;

pub use self::gateway::Gateway;
pub use self::plan::{NatKind, REGION_LABEL};

use crate::TestApiServer;
use crate::addressing::{API_IP, API_PORT, Family, INTERNET_IP};
use crate::capture::{self, Capture, Tap};
use crate::control;
use crate::kube::Kube;
use crate::netns::NetNs;
use crate::node::{Node, NodeSpec, UNDERLAY_LINK};
use crate::pod::Pod;
use crate::relay::Relay;
use crate::underlay::{
    Attachment, Drops, INTERNET_LINK, Internet, NFT_TABLE, POD_RANGE_COUNTER, PRIVATE_COUNTER,
    Router, try_nft_counter,
};

/// The internet router's namespace suffix, and its prefix in capture link names.
pub const ROUTER: &str = "router";

/// The topology picture (the one above).
pub const PICTURE: &str = include_str!("topology.txt");

/// Configures a [`MultiCloud`]; see [`MultiCloud::builder`].
#[derive(Debug, Clone)]
pub struct MultiCloudBuilder {
    agent_args: Vec<String>,
    start_agents: bool,
}

impl MultiCloudBuilder {
    /// Extra `wgmesh agent` arguments for every node, after the basic ones.
    pub fn agent_args(mut self, args: &[&str]) -> Self {
        self.agent_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Builds the network and the Node objects but starts no agent (no conflist, so no
    /// pods either, until [`MultiCloud::start_agents`]).
    pub fn without_agents(mut self) -> Self {
        self.start_agents = false;
        self
    }

    /// Builds the testbed; unless [`MultiCloudBuilder::without_agents`], starts every
    /// agent and waits until each has published its Node annotations, written its
    /// conflist and lists every other node as a peer (which needs only the API server,
    /// not connectivity between nodes). Panics with a clear message and the agents'
    /// logs when something fails; whatever was already built is torn down.
    pub fn build(self) -> MultiCloud {
        let started = Instant::now();
        let run_id = unique_name("mc");
        let dir = tempfile::Builder::new()
            .prefix(&format!("wgmesh-multicloud-{run_id}-"))
            .tempdir()
            .expect("a temporary directory for the testbed's logs");
        let node_kubeconfig = dir.path().join("kubeconfig-nodes");

        let api_thread: JoinHandle<TestApiServer> =
            std::thread::spawn(|| TestApiServer::start(&["--tls-san", &API_IP.to_string()]));
        let router = Router::create(&format!("{run_id}-{ROUTER}"), dir.path(), Drops::Private);
        let (internet, api_host, sites) = std::thread::scope(|s| {
            let (router, run_id, kubeconfig, dir) = (
                &router,
                run_id.as_str(),
                node_kubeconfig.as_path(),
                dir.path(),
            );
            let internet = s.spawn(move || {
                let internet = Internet::create(&format!("{run_id}-inet"));
                router.attach(
                    internet.netns(),
                    Attachment {
                        router_link: INTERNET_LINK,
                        peer_link: UNDERLAY_LINK,
                        router_ip: plan::INTERNET_ROUTER_IP.into(),
                        peer_ip: INTERNET_IP.into(),
                        prefix_len: plan::INTERNET_PREFIX_LEN,
                    },
                );
                internet
            });
            let api_host = s.spawn(move || {
                let api_host = NetNs::create(&format!("{run_id}-api"));
                router.attach_api(&api_host, Family::Ipv4);
                api_host
            });
            let sites: Vec<_> = plan::SITES
                .iter()
                .map(|site| s.spawn(move || build_site(site, router, run_id, kubeconfig, dir)))
                .collect();
            // Join everything before failing, so what was built is dropped (torn down).
            let internet = internet.join();
            let api_host = api_host.join();
            let sites: Vec<_> = sites.into_iter().map(|h| h.join()).collect();
            match (internet, api_host) {
                (Ok(i), Ok(a)) => {
                    let mut ok = Vec::new();
                    for site in sites {
                        ok.push(site.unwrap_or_else(|p| std::panic::resume_unwind(p)));
                    }
                    (i, a, ok)
                }
                (Err(p), _) | (_, Err(p)) => std::panic::resume_unwind(p),
            }
        });
        let api = api_thread
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let (relay, kube) = control::connect(&api, &api_host, API_IP.into(), &node_kubeconfig);
        let mut gateways = Vec::new();
        let mut nodes = Vec::new();
        for (gateway, site_nodes) in sites {
            gateways.push(gateway);
            nodes.extend(site_nodes);
        }
        let mut mc = MultiCloud {
            nodes,
            kube,
            relay,
            api_host,
            internet,
            gateways,
            router,
            api,
            run_id,
            node_kubeconfig,
            agent_args: self.agent_args,
            agents_started: None,
            build_duration: Duration::ZERO,
            dir,
        };
        for node in &mc.nodes {
            mc.kube.create_node(node);
        }
        if self.start_agents {
            mc.start_agents();
        }
        mc.build_duration = started.elapsed();
        mc
    }
}

/// A site's gateway, plugged into the router, and its nodes on the gateway's LAN.
fn build_site(
    site: &'static plan::SitePlan,
    router: &Router,
    run_id: &str,
    kubeconfig: &Path,
    dir: &Path,
) -> (Gateway, Vec<Node>) {
    let gateway = Gateway::create(run_id, site, dir);
    gateway.connect_to(router);
    let nodes = std::thread::scope(|s| {
        let gateway = &gateway;
        let handles: Vec<_> = site
            .nodes
            .iter()
            .map(|n| {
                s.spawn(move || {
                    let spec = NodeSpec {
                        run_id,
                        name: n.name,
                        addresses: n.addresses(site),
                        labels: BTreeMap::from([(
                            REGION_LABEL.to_string(),
                            site.region.to_string(),
                        )]),
                        kubeconfig,
                        dir,
                    };
                    Node::create(spec, gateway)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        let mut ok = Vec::new();
        for r in results {
            ok.push(r.unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        ok
    });
    (gateway, nodes)
}

/// The running multi-cloud testbed; torn down on drop. See the module documentation.
pub struct MultiCloud {
    // Fields drop in this order: nodes (agents, processes inside, namespaces), the kube
    // client, the relay's sockets, the API host, internet, gateways, router, the API
    // server, logs.
    nodes: Vec<Node>,
    kube: Kube,
    relay: Relay,
    api_host: NetNs,
    internet: Internet,
    gateways: Vec<Gateway>,
    router: Router,
    api: TestApiServer,
    run_id: String,
    node_kubeconfig: PathBuf,
    agent_args: Vec<String>,
    agents_started: Option<Instant>,
    build_duration: Duration,
    dir: tempfile::TempDir,
}

impl MultiCloud {
    /// Builds the testbed with every agent started (see [`MultiCloudBuilder::build`]).
    pub fn build() -> MultiCloud {
        MultiCloud::builder().build()
    }

    /// A builder: `MultiCloud::builder().without_agents().build()`.
    pub fn builder() -> MultiCloudBuilder {
        MultiCloudBuilder {
            agent_args: Vec::new(),
            start_agents: true,
        }
    }

    /// Starts every node's agent (basic flags and the builder's extra arguments), notes
    /// the moment ([`MultiCloud::agents_started`]), and waits until every agent has
    /// published its annotations, written its conflist and lists every other node as a
    /// peer.
    pub fn start_agents(&mut self) {
        let args: Vec<&str> = self.agent_args.iter().map(String::as_str).collect();
        self.agents_started = Some(Instant::now());
        for node in &self.nodes {
            node.start_agent(&args);
        }
        self.wait_for_mesh();
    }

    /// When the agents were last started by [`MultiCloud::start_agents`] (None before):
    /// where "connected within N s of the agents starting" counts from.
    pub fn agents_started(&self) -> Option<Instant> {
        self.agents_started
    }

    /// Node `name` (`a1`, `a2`, `b1`, `h1`, `h2`); panics for another name.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name() == name)
            .unwrap_or_else(|| {
                panic!(
                    "there is no node {name} (there are {:?})",
                    plan::node_names()
                )
            })
    }

    /// Every node, in index order: a1, a2, b1, h1, h2.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter()
    }

    /// The gateway `name` (`gw-a`, `gw-b`, `gw-h1`, `gw-h2`), or of the site `name`
    /// (`cloud-a`...); panics for another name.
    pub fn gateway(&self, name: &str) -> &Gateway {
        let site = plan::site(name);
        self.gateways
            .iter()
            .find(|g| g.name() == site.gateway)
            .expect("a gateway per site")
    }

    /// Every gateway, in site order: gw-a, gw-b, gw-h1, gw-h2.
    pub fn gateways(&self) -> impl Iterator<Item = &Gateway> {
        self.gateways.iter()
    }

    /// The gateway in front of node `node`.
    pub fn gateway_of(&self, node: &str) -> &Gateway {
        self.gateway(plan::node(node).0.gateway)
    }

    /// The site (`topology.kubernetes.io/region`) of node `node`.
    pub fn region_of(&self, node: &str) -> &'static str {
        plan::node(node).0.region
    }

    /// The address the internet sees node `node` at now: its 1:1 public address, or its
    /// home gateway's current public address.
    pub fn public_ip(&self, node: &str) -> Ipv4Addr {
        match plan::node(node).1.public_ip {
            Some(ip) => ip,
            None => self.gateway_of(node).wan_ip(),
        }
    }

    /// The internet router (its private and pod-range drop counters, captures on its
    /// links, [`Router::block`]).
    pub fn internet_router(&self) -> &Router {
        &self.router
    }

    /// The internet host (203.0.113.10).
    pub fn internet(&self) -> &Internet {
        &self.internet
    }

    /// The API server (host side: `client()`, `kubectl_ok()`, `restart()`...).
    pub fn api(&self) -> &TestApiServer {
        &self.api
    }

    /// The API server, to stop or restart it (nodes keep reaching it at the same address).
    pub fn api_mut(&mut self) -> &mut TestApiServer {
        &mut self.api
    }

    /// The kubeconfig the agents use: the API server at 198.51.100.10:6443, reachable
    /// only from inside the testbed's namespaces.
    pub fn node_kubeconfig(&self) -> &Path {
        &self.node_kubeconfig
    }

    /// The API server's URL as nodes reach it.
    pub fn api_url_for_nodes(&self) -> String {
        format!("https://{API_IP}:{API_PORT}")
    }

    /// Installs the Peer CRD of the shipped manifest, as a real installation has it.
    /// Without it the agents' Peer watch keeps retrying, and each retry wakes their
    /// reconcile loop (about once a second).
    pub fn install_peer_crd(&self) {
        control::install_peer_crd(&self.api, self.dir());
    }

    /// Every Node object, by name.
    pub fn node_objects(&self) -> BTreeMap<String, k8s_openapi::api::core::v1::Node> {
        self.kube.nodes()
    }

    /// The annotations of node `name`'s Node object (empty if it has none or is gone).
    pub fn node_annotations(&self, name: &str) -> BTreeMap<String, String> {
        self.kube
            .node_annotations()
            .remove(name)
            .unwrap_or_default()
    }

    /// Creates pod `name` on node `node` as a runtime does; see [`Pod`].
    pub fn add_pod(&self, node: &str, name: &str) -> Pod {
        self.node(node).add_pod(name)
    }

    /// One pod on every node, in node order, named `<prefix>-<node>` (`p-a1`...): what
    /// [`crate::connectivity_matrix`] takes.
    pub fn add_pod_per_node(&self, prefix: &str) -> Vec<Pod> {
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .nodes
                .iter()
                .map(|n| s.spawn(move || n.add_pod(&format!("{prefix}-{}", n.name()))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    }

    /// Deletes `pod` as a runtime does: CNI DEL, then its namespace.
    pub fn delete_pod(&self, pod: Pod) {
        self.node(pod.node_name()).delete_pod(pod);
    }

    /// Captures on `links` (see the module documentation, e.g. `router/gw-a`,
    /// `gw-a/a1`) the packets matching the tcpdump `filter` (empty: all) while `work`
    /// runs. Each packet's `interface` is the link's name.
    pub fn capture<S: AsRef<str>, R>(
        &self,
        links: &[S],
        filter: &str,
        work: impl FnOnce() -> R,
    ) -> (R, Capture) {
        let taps: Vec<Tap> = links.iter().map(|l| self.tap(l.as_ref())).collect();
        capture::during(&taps, filter, self.dir(), work)
    }

    /// Every link a capture can tap, router first, then each gateway's.
    pub fn links(&self) -> Vec<String> {
        let mut links: Vec<String> = self
            .router
            .links()
            .into_iter()
            .map(|l| format!("{ROUTER}/{l}"))
            .collect();
        for g in &self.gateways {
            links.extend(g.links().into_iter().map(|l| format!("{}/{l}", g.name())));
        }
        links
    }

    /// The internet router's side of every gateway's public link (`router/gw-a`...):
    /// every packet between two sites crosses two of them.
    pub fn internet_links(&self) -> Vec<String> {
        self.gateways
            .iter()
            .map(|g| format!("{ROUTER}/{}", g.name()))
            .collect()
    }

    /// The LAN ports of site `site` (a gateway or region name): `gw-a/a1`, `gw-a/a2`.
    /// Every packet a node sends or receives crosses its port.
    pub fn lan_links(&self, site: &str) -> Vec<String> {
        let g = self.gateway(site);
        g.lan_ports()
            .into_iter()
            .map(|p| format!("{}/{p}", g.name()))
            .collect()
    }

    /// Waits until every node with a running agent has published its annotations,
    /// written its conflist and lists every other node as a peer; panics with the
    /// agents' logs otherwise.
    pub fn wait_for_mesh(&self) {
        let nodes: Vec<&Node> = self.nodes.iter().collect();
        control::wait_for_mesh(&nodes, &self.kube, || self.diagnostics());
    }

    /// Every node's agent state and the tail of its log, and [`MultiCloud::counters`],
    /// for failure messages.
    pub fn diagnostics(&self) -> String {
        let nodes: Vec<&Node> = self.nodes.iter().collect();
        let mut out = control::diagnostics(&self.run_id, self.dir(), &nodes, &self.api);
        out.push_str(&self.counters());
        out
    }

    /// The drop counters of the internet router and of each gateway, and each
    /// gateway's NAT and public address: one line each.
    pub fn counters(&self) -> String {
        // Read without panicking: this also runs while a test panics.
        let show = |n: Option<u64>| n.map_or("?".to_string(), |n| n.to_string());
        let router = |name: &str| show(try_nft_counter(&self.router, NFT_TABLE, name));
        let mut out = format!(
            "--- internet router: {} private packets dropped ({} of the pod range)\n",
            router(PRIVATE_COUNTER),
            router(POD_RANGE_COUNTER),
        );
        for g in &self.gateways {
            let (what, name) = if g.site().nat.is_masquerade() {
                ("unsolicited", gateway::UNSOLICITED_COUNTER)
            } else {
                ("hairpin", gateway::HAIRPIN_COUNTER)
            };
            out.push_str(&format!(
                "--- {}: {} at {}, {} {what} packets dropped\n",
                g.name(),
                g.nat(),
                g.wan_ip(),
                show(try_nft_counter(g, gateway::NFT_TABLE, name)),
            ));
        }
        out
    }

    /// The unique id in every namespace name of this testbed.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Every network namespace name (host /run/netns) this testbed created.
    pub fn netns_names(&self) -> Vec<String> {
        let mut names = vec![
            self.router.netns_name().to_string(),
            self.internet.netns_name().to_string(),
            self.api_host.name().to_string(),
        ];
        names.extend(self.gateways.iter().map(|g| g.netns_name().to_string()));
        names.extend(self.nodes.iter().map(|n| n.netns_name().to_string()));
        names
    }

    /// Where logs (agents, holders) and capture files are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How long `build()` took.
    pub fn build_duration(&self) -> Duration {
        self.build_duration
    }

    /// A tap on link `<namespace>/<interface>`.
    fn tap(&self, link: &str) -> Tap {
        let (place, interface) = link.split_once('/').unwrap_or_else(|| {
            panic!(
                "{link:?} is no link name: <namespace>/<interface>, one of {:?}",
                self.links()
            )
        });
        if place == ROUTER {
            self.router.tap(interface, link.to_string())
        } else {
            self.gateway(place).tap(interface)
        }
    }
}

impl Drop for MultiCloud {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
            self.dir.disable_cleanup(true);
            eprintln!("testbed: kept the logs in {}", self.dir.path().display());
        }
        // Nodes go in parallel (each stops its agent and waits for it); the rest drops
        // in field order afterwards.
        control::tear_down(std::mem::take(&mut self.nodes));
        self.relay.stop();
    }
}
