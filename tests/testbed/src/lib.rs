//! A multi-node wgmesh cluster on one machine (test infrastructure; needs root).
//!
//! ```text
//!                      router (forwards; drops 10.244.0.0/16, counted)
//!       node0 192.0.2.2 ─┤ .1          ├─ 203.0.113.1   "internet" 203.0.113.10
//!      node1 192.0.2.18 ─┤ .17         ├─ 198.51.100.1  API 198.51.100.10:6443 ──relay──▶ test-apiserver (host 127.0.0.1)
//!      node2 192.0.2.34 ─┤ .33
//! ```
//!
//! Each node is a network namespace plus a private mount namespace (own `/run`,
//! `/etc/cni`, `/var/lib/wgmesh`, `/var/lib/cni`) running the built `wgmesh agent` with
//! production default paths, against test-apiserver, with Node objects as the kubelet
//! and the controller-manager create them (pod CIDR `10.244.<slot>.0/24`). Pods are
//! network namespaces inside a node, attached by the built `wgmesh-cni` with the conflist
//! the node's agent wrote. See [`addressing`] for the address plan.
//!
//! That is the IPv4 layout. [`TestbedBuilder::layout`] picks another
//! ([`addressing::Layout`]): dual-stack pods (`fd00:10:244:<slot>::/64` besides the IPv4
//! range) over an IPv4 or an IPv6 underlay (`2001:db8:0:<slot>::2`, the router,
//! internet host and API server at their `2001:db8:` addresses), or IPv6-only pods over
//! an IPv6 underlay. The router drops and counts both pod ranges in every layout.
//!
//! ```no_run
//! use wgmesh_testbed::{Exec, Testbed};
//! let tb = Testbed::builder().nodes(3).build();
//! let a = tb.add_pod(0, "a");
//! let b = tb.add_pod(0, "b");
//! assert!(a.ping(b.ip()));
//! ```
//!
//! Names are unique per run (several testbeds may run at once), and everything is torn
//! down on drop, also when a test fails or panics; when it panics, the agents' logs are
//! printed and the log directory is kept.
//!
//! A second topology, [`MultiCloud`], puts five nodes on two clouds and two home
//! networks behind NAT gateways (1:1 without hairpin, port-preserving, symmetric) on an
//! internet that drops private addresses; see [`multicloud`]. Both are built from the
//! same nodes, agents, pods, API relay and captures.

pub mod addressing;
mod agent;
pub mod bench;
pub mod capture;
pub mod cni;
pub mod connectivity;
mod conntrack;
mod control;
mod exec;
mod holder;
mod kube;
pub mod multicloud;
mod netns;
pub mod node;
pub mod pod;
pub mod probe;
pub mod raw;
mod relay;
pub mod transfer;
pub mod underlay;
mod whoami;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wgmesh_testkit::unique_name;

pub use crate::capture::{Capture, Packet};
pub use crate::connectivity::{Matrix, connectivity_matrix, wait_for_connectivity};
pub use crate::exec::{Exec, in_netns_thread};
pub use crate::multicloud::MultiCloud;
pub use crate::node::Node;
pub use crate::pod::{CniRefusal, Pod};
pub use crate::underlay::{Drops, Internet, Router};
pub use crate::whoami::WhoAmI;
pub use addressing::{Family, Layout};
pub use wgmesh_testkit::Proc;
pub use wgmesh_testkit::apiserver::TestApiServer;

use crate::addressing::{MAX_NODES, NodeAddresses};
use crate::kube::Kube;
use crate::netns::NetNs;
use crate::node::NodeSpec;
use crate::relay::Relay;

/// The Node annotations an agent publishes.
pub use wgmesh::model::annotation;

/// How long `build()` and `add_node()` wait for the agents to converge.
pub const MESH_WAIT: Duration = Duration::from_secs(60);

/// Configures a [`Testbed`]; see [`Testbed::builder`].
#[derive(Debug, Clone)]
pub struct TestbedBuilder {
    nodes: usize,
    agent_args: Vec<String>,
    layout: Layout,
}

impl TestbedBuilder {
    /// How many nodes (default 2, at most 16).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Which families the underlay and the pods use (default [`Layout::Ipv4`]).
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// Extra `wgmesh agent` arguments for every node (also nodes added later), after the
    /// defaults, e.g. `["--resync-interval", "5s"]`.
    pub fn agent_args(mut self, args: &[&str]) -> Self {
        self.agent_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Builds the cluster and waits until every agent has published its Node
    /// annotations, written its conflist and lists every other node as a peer. Panics
    /// with a clear message and the agents' logs when something fails; whatever was
    /// already built is torn down.
    pub fn build(self) -> Testbed {
        assert!(
            (1..=MAX_NODES).contains(&self.nodes),
            "a testbed has 1 to {MAX_NODES} nodes, not {}",
            self.nodes
        );
        let started = Instant::now();
        let run_id = unique_name("tb");
        let dir = tempfile::Builder::new()
            .prefix(&format!("wgmesh-testbed-{run_id}-"))
            .tempdir()
            .expect("a temporary directory for the testbed's logs");
        let node_kubeconfig = dir.path().join("kubeconfig-nodes");
        let layout = self.layout;
        let family = layout.underlay();

        // The API server starts while the network is wired: the two take about as long.
        let api_thread: JoinHandle<TestApiServer> = std::thread::spawn(move || {
            TestApiServer::start(&["--tls-san", &layout.api_ip().to_string()])
        });
        let router = Router::create(&format!("{run_id}-router"), dir.path(), Drops::PodRange);
        let (internet, api_host, nodes) = std::thread::scope(|s| {
            let internet = s.spawn(|| {
                let internet = Internet::create(&format!("{run_id}-inet"));
                router.attach_internet(internet.netns(), family);
                internet
            });
            let api_host = s.spawn(|| {
                let api_host = NetNs::create(&format!("{run_id}-api"));
                router.attach_api(&api_host, family);
                api_host
            });
            let nodes: Vec<_> = (0..self.nodes)
                .map(|i| {
                    let (router, run_id, kubeconfig, dir) =
                        (&router, &run_id, &node_kubeconfig, dir.path());
                    s.spawn(move || {
                        let name = node_name(i);
                        let spec = node_spec(run_id, &name, i, layout, kubeconfig, dir);
                        Node::create(spec, router)
                    })
                })
                .collect();
            // Join everything before failing, so what was built is dropped (torn down).
            let internet = internet.join();
            let api_host = api_host.join();
            let nodes: Vec<_> = nodes.into_iter().map(|h| h.join()).collect();
            match (internet, api_host) {
                (Ok(i), Ok(a)) => {
                    let mut ok = Vec::new();
                    for n in nodes {
                        ok.push(n.unwrap_or_else(|p| std::panic::resume_unwind(p)));
                    }
                    (i, a, ok)
                }
                (Err(p), _) | (_, Err(p)) => std::panic::resume_unwind(p),
            }
        });
        let api = api_thread
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));

        let (relay, kube) = control::connect(&api, &api_host, layout.api_ip(), &node_kubeconfig);
        let mut tb = Testbed {
            nodes: nodes.into_iter().map(Some).collect(),
            kube,
            relay,
            api_host,
            internet,
            router,
            api,
            run_id,
            node_kubeconfig,
            agent_args: self.agent_args,
            layout,
            build_duration: Duration::ZERO,
            dir,
        };
        for node in tb.nodes() {
            tb.kube.create_node(node);
        }
        for node in tb.nodes() {
            node.start_agent(&tb.agent_args_ref());
        }
        tb.wait_for_mesh();
        tb.build_duration = started.elapsed();
        tb
    }
}

/// A running cluster; torn down on drop. See the crate documentation.
pub struct Testbed {
    // Fields drop in this order: nodes (agents, processes inside, namespaces), the kube
    // client, the relay's sockets, the API host, internet, router, the API server, logs.
    nodes: Vec<Option<Node>>,
    kube: Kube,
    relay: Relay,
    api_host: NetNs,
    internet: Internet,
    router: Router,
    api: TestApiServer,
    run_id: String,
    node_kubeconfig: PathBuf,
    agent_args: Vec<String>,
    layout: Layout,
    build_duration: Duration,
    dir: tempfile::TempDir,
}

impl Testbed {
    /// A builder: `Testbed::builder().nodes(3).build()`.
    pub fn builder() -> TestbedBuilder {
        TestbedBuilder {
            nodes: 2,
            agent_args: Vec::new(),
            layout: Layout::Ipv4,
        }
    }

    /// Which families the underlay and the pods use.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The API server (host side: `client()`, `kubectl_ok()`, `restart()`...).
    pub fn api(&self) -> &TestApiServer {
        &self.api
    }

    /// The API server, to stop or restart it (nodes keep reaching it at the same address).
    pub fn api_mut(&mut self) -> &mut TestApiServer {
        &mut self.api
    }

    /// The kubeconfig the agents use: the API server at 198.51.100.10:6443 (over an
    /// IPv6 underlay [2001:db8:198::10]:6443), reachable only from inside the testbed's
    /// namespaces.
    pub fn node_kubeconfig(&self) -> &Path {
        &self.node_kubeconfig
    }

    /// The API server's URL as nodes reach it.
    pub fn api_url_for_nodes(&self) -> String {
        self.layout.api_url()
    }

    /// Node slot `i`; panics if it was removed or never added.
    pub fn node(&self, i: usize) -> &Node {
        self.nodes
            .get(i)
            .and_then(Option::as_ref)
            .unwrap_or_else(|| {
                panic!(
                    "there is no node {i} (slots 0..{}; removed ones are gone)",
                    self.nodes.len()
                )
            })
    }

    /// Every node still in the testbed, in slot order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().flatten()
    }

    /// The router between nodes, internet and API server.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The internet host (203.0.113.10, or 2001:db8:203::10 over an IPv6 underlay).
    pub fn internet(&self) -> &Internet {
        &self.internet
    }

    /// Adds a node in the next slot: namespaces, Node object, agent; waits until it and
    /// every other node list each other. Returns its slot.
    pub fn add_node(&mut self) -> usize {
        let (index, _) = self.add_node_without_waiting();
        self.wait_for_mesh();
        index
    }

    /// Adds a node in the next slot like [`Testbed::add_node`], but returns as soon as
    /// its agent is started, without waiting for the mesh: its slot, and the moment its
    /// Node object was created (when a join starts; the namespaces are built before).
    pub fn add_node_without_waiting(&mut self) -> (usize, Instant) {
        let index = self.nodes.len();
        assert!(index < MAX_NODES, "the testbed is full ({MAX_NODES} nodes)");
        let name = node_name(index);
        let spec = node_spec(
            &self.run_id,
            &name,
            index,
            self.layout,
            &self.node_kubeconfig,
            self.dir.path(),
        );
        let node = Node::create(spec, &self.router);
        let registered = Instant::now();
        self.kube.create_node(&node);
        node.start_agent(&self.agent_args_ref());
        self.nodes.push(Some(node));
        (index, registered)
    }

    /// Removes node `i` for good: stops its agent, deletes its Node object (if it still
    /// exists) and tears down its namespaces. Other nodes keep their slots.
    pub fn remove_node(&mut self, i: usize) {
        let name = self.node(i).name().to_string();
        let node = self.nodes[i].take().expect("checked by node()");
        node.stop_agent();
        self.kube.delete_node_if_exists(&name);
        drop(node);
        self.router.detach_node(i);
    }

    /// Deletes node `i`'s Node object from the API; the node and its agent keep running.
    pub fn delete_node_object(&self, i: usize) {
        self.kube.delete_node(self.node(i).name());
    }

    /// Creates node `i`'s Node object (again), as its kubelet would on registration.
    pub fn create_node_object(&self, i: usize) {
        self.kube.create_node(self.node(i));
    }

    /// The annotations of node `i`'s Node object (empty if it has none or is gone).
    pub fn node_annotations(&self, i: usize) -> BTreeMap<String, String> {
        self.node_annotations_named(self.node(i).name())
    }

    /// Creates the Node object `name` of a node that runs outside the testbed's
    /// namespaces but on its router in slot `addresses.index` (the test VM of
    /// `tests/vm`, say), as its kubelet would register it. Such a node is not in
    /// [`Testbed::nodes`]: [`Testbed::wait_for_mesh`] does not know it, so wait with
    /// [`Node::wait_for_peers`] instead.
    pub fn create_foreign_node_object(&self, name: &str, addresses: &NodeAddresses) {
        self.kube
            .create_node_object(name, addresses, &BTreeMap::new());
    }

    /// Deletes the Node object `name` if it exists (e.g. one made by
    /// [`Testbed::create_foreign_node_object`]).
    pub fn delete_node_object_named(&self, name: &str) {
        self.kube.delete_node_if_exists(name);
    }

    /// The annotations of the Node object `name` (empty if it has none or is gone).
    pub fn node_annotations_named(&self, name: &str) -> BTreeMap<String, String> {
        self.kube
            .node_annotations()
            .remove(name)
            .unwrap_or_default()
    }

    /// Installs the Peer CRD of the shipped manifest (`manifests/wgmesh.yaml`), as a real
    /// installation has it. Without it the agents' Peer watch keeps retrying, and each
    /// retry wakes their reconcile loop (about once a second).
    pub fn install_peer_crd(&self) {
        control::install_peer_crd(&self.api, self.dir());
    }

    /// Creates pod `name` on node `i` as a runtime does; see [`Pod`].
    pub fn add_pod(&self, i: usize, name: &str) -> Pod {
        self.node(i).add_pod(name)
    }

    /// Deletes `pod` as a runtime does: CNI DEL, then its namespace.
    pub fn delete_pod(&self, pod: Pod) {
        self.node(pod.node()).delete_pod(pod);
    }

    /// Waits (up to [`MESH_WAIT`]) until every node with a running agent has published
    /// its annotations (key, endpoint `<underlay ip>:51820`, pod CIDRs), written its
    /// conflist, and lists as peers exactly the other nodes whose Node object exists and
    /// carries a public key. Panics with the agents' logs otherwise.
    pub fn wait_for_mesh(&self) {
        let nodes: Vec<&Node> = self.nodes().collect();
        control::wait_for_mesh(&nodes, &self.kube, || self.diagnostics());
    }

    /// Every node's agent state and the tail of its log, for failure messages.
    pub fn diagnostics(&self) -> String {
        let nodes: Vec<&Node> = self.nodes().collect();
        control::diagnostics(&self.run_id, self.dir(), &nodes, &self.api)
    }

    /// The unique id in every namespace name of this testbed.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Every network namespace name (host /run/netns) this testbed created and still has.
    pub fn netns_names(&self) -> Vec<String> {
        let mut names = vec![
            self.router.netns_name().to_string(),
            self.internet.netns_name().to_string(),
            self.api_host.name().to_string(),
        ];
        names.extend(self.nodes().map(|n| n.netns_name().to_string()));
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

    fn agent_args_ref(&self) -> Vec<&str> {
        self.agent_args.iter().map(String::as_str).collect()
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
            self.dir.disable_cleanup(true);
            eprintln!("testbed: kept the logs in {}", self.dir.path().display());
        }
        // Nodes go in parallel (each stops its agent and waits for it); the rest drops
        // in field order afterwards.
        control::tear_down(self.nodes.iter_mut().filter_map(Option::take).collect());
        self.relay.stop();
    }
}

/// The Kubernetes name of node slot `i`.
pub fn node_name(i: usize) -> String {
    format!("node{i}")
}

/// The node of slot `i` of a [`Testbed`] in `layout`.
fn node_spec<'a>(
    run_id: &'a str,
    name: &'a str,
    i: usize,
    layout: Layout,
    kubeconfig: &'a Path,
    dir: &'a Path,
) -> NodeSpec<'a> {
    NodeSpec {
        run_id,
        name,
        addresses: NodeAddresses::for_layout(i, layout),
        labels: BTreeMap::new(),
        kubeconfig,
        dir,
    }
}
