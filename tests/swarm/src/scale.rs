//! The scale fixture (test infrastructure): a testbed whose node0 runs the real agent,
//! a swarm of emulated nodes on the testbed's "internet" host (203.0.113.10, one UDP
//! port each), their Node objects in the testbed's API server, and a pod on node0 that
//! probes every emulated pod through the agent's data plane.
//!
//! ```text
//!  node0 192.0.2.2 ── router ── 203.0.113.10 (internet host): swarm-0000 :20000
//!  │ wgmesh agent, wgmesh0            │                          swarm-0001 :20001 ...
//!  │ pod "probe" ── UDP echo ─────────┼── WireGuard ──────────▶  pods 10.244.16.0/28, .16/28 ...
//!  node1 192.0.2.18 (a second real agent, optional)
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use wgmesh_testbed::{Exec, Node, Pod, Testbed};

use crate::emulated::{Agent, Load};
use crate::measure;
use crate::nodes::{Cluster, NodeSpec};
use crate::probe::Prober;
use crate::swarm::{Swarm, SwarmConfig, node_name};

/// The port of emulated node 0 (node `i` listens on this plus `i`).
pub const FIRST_PORT: u16 = 20000;
/// The agents' WireGuard port (their default `--listen-port`).
const AGENT_PORT: u16 = 51820;

/// A running scale setup; see the module documentation. Dropped in field order: the
/// prober and the swarm's sockets first, the testbed (agents, namespaces) last.
pub struct Scale {
    prober: Prober,
    pub swarm: Swarm,
    pub cluster: Cluster,
    probe_pod: Pod,
    pub tb: Testbed,
    /// How many emulated nodes have a Node object (the first `registered` of the swarm).
    registered: usize,
    /// Other Nodes that count as peers of node0 (real nodes but node0, watchers).
    other_peers: usize,
    agent_args: Vec<String>,
    /// When node0 last exchanged packets with the emulated nodes (a probe), or when a
    /// node it greets last joined.
    last_traffic: Instant,
}

impl Scale {
    /// A testbed of `real_nodes` nodes (1 or 2: node1 is the far end of data transfers)
    /// whose agents get `agent_args`, an empty swarm aimed at node0's agent, and the
    /// probe pod on node0.
    pub fn start(real_nodes: usize, agent_args: &[&str]) -> Scale {
        assert!(
            (1..=2).contains(&real_nodes),
            "1 or 2 real nodes, not {real_nodes}"
        );
        let tb = Testbed::builder()
            .nodes(real_nodes)
            .agent_args(agent_args)
            .build();
        tb.install_peer_crd();
        let agents = tb
            .nodes()
            .map(|node| {
                let key = tb
                    .node_annotations(node.index())
                    .get(wgmesh::model::annotation::PUBLIC_KEY)
                    .and_then(|k| wgmesh::key::PublicKey::from_base64(k).ok())
                    .unwrap_or_else(|| panic!("{} published no key", node.name()));
                Agent {
                    endpoint: SocketAddr::from((node.underlay_ip(), AGENT_PORT)),
                    key,
                }
            })
            .collect();
        let swarm = Swarm::new(SwarmConfig {
            netns: format!("/run/netns/{}", tb.internet().netns_name()).into(),
            ip: tb.internet().ip(),
            first_port: FIRST_PORT,
            agents,
        });
        let cluster = Cluster::connect(&tb.api().kubeconfig());
        let probe_pod = tb.add_pod(0, "probe");
        let prober = Prober::new(&probe_pod.host_netns_path());
        Scale {
            prober,
            swarm,
            cluster,
            probe_pod,
            registered: 0,
            other_peers: real_nodes - 1,
            agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
            last_traffic: Instant::now(),
            tb,
        }
    }

    /// node0: the real agent under test.
    pub fn agent(&self) -> &Node {
        self.tb.node(0)
    }

    pub fn agent_pid(&self) -> u32 {
        self.agent().agent_pid().expect("node0's agent runs")
    }

    pub fn probe_pod(&self) -> &Pod {
        &self.probe_pod
    }

    /// How many emulated nodes have a Node object.
    pub fn registered(&self) -> usize {
        self.registered
    }

    /// The peers node0's agent should have: every other Node.
    pub fn expected_peers(&self) -> usize {
        self.registered + self.other_peers
    }

    /// Counts `n` more Nodes as node0's peers (watchers added by the caller).
    pub fn add_other_peers(&mut self, n: usize) {
        self.other_peers += n;
    }

    /// Grows the swarm to `n` emulated nodes and creates the Node objects of the new
    /// ones; returns when the last create was answered.
    pub fn grow(&mut self, n: usize) {
        self.grow_with(n, Load::Normal)
    }

    /// Like [`Scale::grow`], the new nodes answering handshakes under `load`.
    pub fn grow_with(&mut self, n: usize, load: Load) {
        self.swarm.grow_to_with(n, load);
        if n <= self.registered {
            return;
        }
        let specs: Vec<NodeSpec> = self.swarm.nodes()[self.registered..n]
            .iter()
            .map(|e| NodeSpec::emulated(e))
            .collect();
        self.cluster.register(&specs);
        self.registered = n;
        self.last_traffic = Instant::now();
    }

    /// Deletes every emulated node's Node object (the swarm keeps running).
    pub fn unregister_all(&mut self) {
        let names: Vec<String> = (0..self.registered).map(node_name).collect();
        self.cluster.delete(&names);
        self.registered = 0;
    }

    /// Names of the registered emulated nodes.
    pub fn registered_names(&self) -> Vec<String> {
        (0..self.registered).map(node_name).collect()
    }

    /// Waits until node0's agent has applied a plan with `peers` peers (its
    /// `wgmesh_peers`, set after the data plane took the plan); returns how long it took.
    pub fn wait_for_peers(&self, peers: usize, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let have = measure::agent_metrics(self.agent()).get("wgmesh_peers") as usize;
            if have == peers {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "node0's agent has {have} peers, not {peers}, after {timeout:?}; its log:\n{}",
                tail(&self.agent().agent_log(), 30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The first pod address of each registered emulated node.
    pub fn targets(&self) -> Vec<Ipv4Addr> {
        self.swarm.nodes()[..self.registered]
            .iter()
            .map(|e| e.pod_ip())
            .collect()
    }

    /// The probe pod sends to every registered emulated pod at once (again every
    /// `retry` to those that did not answer) until all answered or `timeout`.
    pub fn probe_all(&mut self, timeout: Duration, retry: Duration) -> Vec<Option<Duration>> {
        let targets = self.targets();
        let answers = self.prober.probe(&targets, timeout, retry);
        self.last_traffic = Instant::now();
        answers
    }

    /// When node0 last exchanged packets with the emulated nodes (through this fixture).
    pub fn last_traffic(&self) -> Instant {
        self.last_traffic
    }

    /// Marks traffic between node0 and its peers made outside the fixture's probes,
    /// going on until `until` (e.g. handshake attempts that give up after 90 s).
    pub fn note_traffic_until(&mut self, until: Instant) {
        self.last_traffic = self.last_traffic.max(until);
    }

    /// Probes emulated node `i` only.
    pub fn probe_one(&mut self, i: usize, timeout: Duration, retry: Duration) -> Option<Duration> {
        let target = self.swarm.node(i).pod_ip();
        let answer = self.prober.probe(&[target], timeout, retry)[0];
        self.last_traffic = Instant::now();
        answer
    }

    /// Stops node0's agent (SIGTERM) and starts it again with the same arguments;
    /// returns when the new process was started.
    pub fn restart_agent(&self) -> Instant {
        self.agent().stop_agent();
        let args: Vec<&str> = self.agent_args.iter().map(String::as_str).collect();
        let started = Instant::now();
        self.agent().start_agent(&args);
        started
    }

    /// node0's pod gateway (its bridge address), which emulated pods ping.
    pub fn agent_gateway(&self) -> Ipv4Addr {
        self.agent()
            .pod_cidr()
            .hosts()
            .next()
            .expect("a pod CIDR has hosts")
    }

    /// A one-line account of node0: its log's tail, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "swarm: {:?}\nnode0 agent log (last 30 lines):\n{}",
            self.swarm.totals(),
            tail(&self.agent().agent_log(), 30)
        )
    }

    /// Runs `args` on node0.
    pub fn on_agent_node(&self, args: &[&str]) -> String {
        self.agent().exec_ok(args)
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
