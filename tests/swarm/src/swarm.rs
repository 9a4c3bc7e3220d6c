//! The swarm: many [`Emulated`] nodes in one process (test infrastructure), each with
//! its own UDP port on one address inside a network namespace, served by a small tokio
//! runtime of its own: one receive task per node, one timer task for all.
//!
//! The sockets are created by a thread that joined the namespace (a socket stays in the
//! namespace it was created in), so the rest of the process stays where it is.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use crate::emulated::{Agent, Emulated, Load, MAX_DATAGRAM, Totals};

/// How often every node's timers run (boringtun wants 100-250 ms).
const TICK: Duration = Duration::from_millis(250);

/// The first emulated pod CIDR: the testbed's nodes use 10.244.0-15.0/24.
const FIRST_POD_NET: Ipv4Addr = Ipv4Addr::new(10, 244, 16, 0);
/// Each emulated node gets a /28 (16 addresses): enough for a pod that pings and a few
/// that echo, and 3,840 nodes fit in the rest of 10.244.0.0/16.
pub const POD_PREFIX: u8 = 28;
/// How many pod CIDRs [`pod_cidr`] can hand out.
pub const MAX_SLOTS: usize = (0x1_0000 - 16 * 256) >> (32 - POD_PREFIX);

/// The pod CIDR of slot `slot` (emulated node `i` has slot `i`; other users of the
/// range, such as extra watcher nodes, count down from the top).
pub fn pod_cidr(slot: usize) -> Ipv4Net {
    assert!(slot < MAX_SLOTS, "pod CIDR slot {slot} is past {MAX_SLOTS}");
    let start = u32::from(FIRST_POD_NET) + ((slot as u32) << (32 - POD_PREFIX));
    Ipv4Net::new(Ipv4Addr::from(start), POD_PREFIX).expect("a valid prefix length")
}

/// The Node name of emulated node `i`.
pub fn node_name(i: usize) -> String {
    format!("swarm-{i:04}")
}

/// Where the swarm lives and whom it talks to.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// The network namespace of its sockets (`/run/netns/NAME`).
    pub netns: PathBuf,
    /// The address every node's socket binds (and publishes as its endpoint).
    pub ip: Ipv4Addr,
    /// Node `i` listens on `first_port + i`.
    pub first_port: u16,
    /// The real agents (WireGuard endpoint and public key); emulated pods ping the
    /// first.
    pub agents: Vec<Agent>,
}

type Nodes = Arc<RwLock<Vec<Arc<Emulated>>>>;

/// A running swarm; its tasks stop and its sockets close on drop.
pub struct Swarm {
    cfg: SwarmConfig,
    runtime: Option<tokio::runtime::Runtime>,
    nodes: Nodes,
}

impl Swarm {
    /// A swarm without nodes yet; see [`Swarm::grow_to`].
    pub fn new(cfg: SwarmConfig) -> Swarm {
        raise_fd_limit();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("swarm")
            .enable_all()
            .build()
            .expect("a tokio runtime for the swarm");
        let nodes: Nodes = Arc::default();
        let all = Arc::clone(&nodes);
        runtime.spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let now = all.read().unwrap_or_else(|e| e.into_inner()).clone();
                for node in now {
                    node.tick();
                }
            }
        });
        Swarm {
            cfg,
            runtime: Some(runtime),
            nodes,
        }
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives until drop")
    }

    /// Adds nodes until there are `n` (each with a fresh key, its socket bound and
    /// served); none are removed.
    pub fn grow_to(&self, n: usize) {
        self.grow_to_with(n, Load::Normal)
    }

    /// Like [`Swarm::grow_to`], the new nodes answering handshakes under `load`.
    pub fn grow_to_with(&self, n: usize, load: Load) {
        let have = self.len();
        if n <= have {
            return;
        }
        assert!(
            usize::from(self.cfg.first_port) + n <= usize::from(u16::MAX),
            "{n} nodes do not fit in the port range from {}",
            self.cfg.first_port
        );
        let (ip, first_port) = (self.cfg.ip, self.cfg.first_port);
        let sockets = wgmesh_testbed::in_netns_thread(&self.cfg.netns, move || {
            (have..n)
                .map(|i| {
                    let addr = SocketAddrV4::new(ip, first_port + i as u16);
                    let s = std::net::UdpSocket::bind(addr)
                        .unwrap_or_else(|e| panic!("the swarm cannot bind {addr}: {e}"));
                    s.set_nonblocking(true).expect("a non-blocking socket");
                    (addr, s)
                })
                .collect::<Vec<_>>()
        });
        let agents: Arc<[Agent]> = self.cfg.agents.clone().into();
        let _in_runtime = self.runtime().enter();
        let mut added = Vec::with_capacity(sockets.len());
        for (i, (addr, socket)) in (have..n).zip(sockets) {
            let socket =
                Arc::new(tokio::net::UdpSocket::from_std(socket).expect("a tokio UDP socket"));
            let node = Arc::new(Emulated::new(
                i,
                node_name(i),
                addr,
                pod_cidr(i),
                Arc::clone(&agents),
                load,
                socket,
            ));
            self.runtime().spawn(serve(Arc::clone(&node)));
            added.push(node);
        }
        self.nodes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(added);
    }

    pub fn len(&self) -> usize {
        self.nodes.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every node, in index order.
    pub fn nodes(&self) -> Vec<Arc<Emulated>> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn node(&self, i: usize) -> Arc<Emulated> {
        Arc::clone(&self.nodes()[i])
    }

    /// What every node saw, summed.
    pub fn totals(&self) -> Totals {
        self.nodes()
            .iter()
            .map(|n| n.stats.totals())
            .fold(Totals::default(), |a, b| a + b)
    }

    /// Every node forgets its sessions, as after a reboot of all of them.
    pub fn reset_all(&self) {
        for node in self.nodes() {
            node.reset();
        }
    }

    /// Every node restarts `times` times in a row, greeting the first agent after each
    /// restart (a handshake initiation from a fresh session each time): `times` ×
    /// nodes initiations in a moment. Only the last session of each node stays; answers
    /// to the earlier ones count as errors.
    pub fn restart_all_greeting(&self, times: usize, dst: Ipv4Addr) {
        for _ in 0..times {
            for node in self.nodes() {
                node.reset();
                node.ping(dst, 0);
            }
        }
    }

    /// Every node's pod pings `dst` at once, and again every `retry` until answered;
    /// returns when each got a reply, or at `timeout`: how long after the start each
    /// first reply came (`None`: none).
    pub fn ping_all(
        &self,
        dst: Ipv4Addr,
        timeout: Duration,
        retry: Duration,
    ) -> Vec<Option<Duration>> {
        let nodes = self.nodes();
        for node in &nodes {
            node.clear_reply();
        }
        let start = Instant::now();
        let mut seq: u16 = 0;
        let mut next_send = start;
        loop {
            let answered: Vec<Option<Duration>> = nodes
                .iter()
                .map(|n| n.first_reply().map(|t| t.saturating_duration_since(start)))
                .collect();
            if answered.iter().all(Option::is_some) || start.elapsed() >= timeout {
                return answered;
            }
            if Instant::now() >= next_send {
                seq = seq.wrapping_add(1);
                for (node, done) in nodes.iter().zip(&answered) {
                    if done.is_none() {
                        node.ping(dst, seq);
                    }
                }
                next_send += retry;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Tasks end, and with them the last handles of the sockets.
            rt.shutdown_background();
        }
    }
}

/// Receives a node's datagrams until the runtime stops.
async fn serve(node: Arc<Emulated>) {
    let socket = Arc::clone(node.socket());
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => node.receive(from, &buf[..n]),
            // ICMP errors surface here (port unreachable while the agent restarts).
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// One socket per node: lift the soft limit on open files to the hard one.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidrs_follow_the_testbed_s_and_stay_in_the_cluster_range() {
        assert_eq!(pod_cidr(0).to_string(), "10.244.16.0/28");
        assert_eq!(pod_cidr(1).to_string(), "10.244.16.16/28");
        assert_eq!(pod_cidr(MAX_SLOTS - 1).to_string(), "10.244.255.240/28");
        assert_eq!(MAX_SLOTS, 3840);
        let cluster: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let testbed: Ipv4Net = "10.244.0.0/20".parse().unwrap();
        for slot in [0, 1, 999, MAX_SLOTS - 1] {
            assert!(cluster.contains(&pod_cidr(slot)));
            assert!(!testbed.contains(&pod_cidr(slot).network()));
        }
    }

    #[test]
    #[should_panic(expected = "past")]
    fn slots_past_the_range_are_refused() {
        pod_cidr(MAX_SLOTS);
    }
}
