//! Pod-to-pod throughput, latency and data-plane CPU between two testbed nodes (test
//! infrastructure, driven by `hack/bench-wireguard.sh`).
//!
//! One iperf3 TCP stream from a pod on node0 to a pod on node1, through the nodes'
//! `wgmesh0`, the router, the bridges and the pods' veths: everything a pod's traffic
//! crosses on a real cluster. The data plane is either the agents' own (in-process), or,
//! for comparison on exactly the same path, another implementation put in its place: the
//! agents are stopped (their routes and nftables stay), `wgmesh0` is deleted, and
//! wireguard-go (or `wgmesh-wg`) is started on both nodes under the same name, with the
//! same MTU, keys, endpoints and routes the agents had.
//!
//! The cluster has any [`Layout`]: over an IPv6 underlay (`dualstack`, `ipv6`) the
//! tunnel runs over IPv6 between the nodes; the stream goes between the pods' first
//! addresses (IPv4 when they have one).

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use wgmesh_testkit::Proc;

use crate::Exec;
use crate::addressing::{Family, WIREGUARD_PORT, join};
use crate::exec;
use crate::{Layout, Node, Pod, Testbed};

/// The interface every data plane uses (the nftables guard lets pod traffic out only there).
const IFNAME: &str = "wgmesh0";

/// Which data plane carries the pods' traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPlane {
    /// The agents' in-process WireGuard device.
    Agent,
    /// `wireguard-go -f wgmesh0` on each node, in place of the agents.
    WireguardGo,
    /// `wgmesh-wg -f wgmesh0` on each node, in place of the agents.
    WgmeshWg,
}

impl DataPlane {
    pub fn parse(s: &str) -> Option<DataPlane> {
        match s {
            "agent" => Some(DataPlane::Agent),
            "wireguard-go" => Some(DataPlane::WireguardGo),
            "wgmesh-wg" => Some(DataPlane::WgmeshWg),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DataPlane::Agent => "agent",
            DataPlane::WireguardGo => "wireguard-go",
            DataPlane::WgmeshWg => "wgmesh-wg",
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub data_plane: DataPlane,
    /// iperf3's received rate.
    pub mbits: f64,
    /// Bytes the receiver got.
    pub bytes: u64,
    /// CPU seconds (user + system) of the data-plane processes of both nodes during the
    /// transfer.
    pub cpu_seconds: f64,
    /// Median ping round trip pod to pod on an idle tunnel, in milliseconds.
    pub rtt_ms: f64,
}

impl Measurement {
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "impl": self.data_plane.name(),
            "mbits": self.mbits,
            "bytes": self.bytes,
            "cpu_s": self.cpu_seconds,
            "rtt_ms": self.rtt_ms,
        })
        .to_string()
    }
}

/// A data plane started in place of the agents; its processes end on drop.
struct Replacement {
    procs: Vec<Proc>,
}

/// Builds a 2-node testbed of `layout` with a pod on each node, puts `data_plane` in
/// place and measures `seconds` of one TCP stream plus the idle RTT.
pub fn measure(data_plane: DataPlane, seconds: u32, layout: Layout) -> Measurement {
    let tb = Testbed::builder().nodes(2).layout(layout).build();
    let a = tb.add_pod(0, "bench-a");
    let b = tb.add_pod(1, "bench-b");
    let replacement = match data_plane {
        DataPlane::Agent => None,
        other => Some(replace(&tb, other)),
    };
    let pids: Vec<u32> = match &replacement {
        None => tb.nodes().filter_map(Node::agent_pid).collect(),
        Some(r) => r.procs.iter().map(Proc::pid).collect(),
    };
    assert_eq!(pids.len(), 2, "one data-plane process per node");
    let to = first_ip(&b);
    wait_for_ping(&a, to);
    let rtt_ms = median_rtt(&a, to, 50);
    let before: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let (mbits, bytes) = iperf3(&a, &b, seconds);
    let after: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    drop(replacement);
    Measurement {
        data_plane,
        mbits,
        bytes,
        cpu_seconds: after - before,
        rtt_ms,
    }
}

/// Stops both agents, removes their `wgmesh0` and starts `data_plane` under that name,
/// configured as the agents had it.
fn replace(tb: &Testbed, data_plane: DataPlane) -> Replacement {
    let nodes: Vec<&Node> = tb.nodes().collect();
    let mtu = link_mtu(nodes[0]);
    let program = match data_plane {
        DataPlane::WireguardGo => "wireguard-go".to_string(),
        DataPlane::WgmeshWg => wgmesh_testkit::workspace_bin("wgmesh-wg")
            .to_string_lossy()
            .into_owned(),
        DataPlane::Agent => unreachable!("the agent is not a replacement"),
    };
    let keys: Vec<(String, String)> = nodes
        .iter()
        .map(|n| {
            let private = n.exec_ok(&["wg", "genkey"]).trim().to_string();
            let mut pubkey = n.command("wg");
            pubkey.arg("pubkey");
            let public = exec::output_ok(pubkey, Some(private.as_bytes()))
                .trim()
                .to_string();
            (private, public)
        })
        .collect();
    let mut procs = Vec::new();
    for node in &nodes {
        node.stop_agent();
        node.exec_ok(&["ip", "link", "del", IFNAME]);
        let mut cmd = node.command(&program);
        cmd.args(["-f", IFNAME])
            .env("WG_PROCESS_FOREGROUND", "1")
            .env("LOG_LEVEL", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        procs.push(Proc::spawn(cmd, &format!("{program} in {}", node.name())));
    }
    for (i, node) in nodes.iter().enumerate() {
        let other = nodes[1 - i];
        let ready = exec::poll_until(Duration::from_secs(10), || {
            node.exec(&["wg", "show", IFNAME])
                .status
                .success()
                .then_some(())
        });
        assert!(
            ready.is_some(),
            "{program} did not come up on {}",
            node.name()
        );
        let key_file = "/run/bench-wireguard.key";
        std::fs::write(node.host_path(key_file), &keys[i].0).expect("key file");
        node.exec_ok(&[
            "wg",
            "set",
            IFNAME,
            "private-key",
            key_file,
            "listen-port",
            "51820",
            "peer",
            &keys[1 - i].1,
            "endpoint",
            &SocketAddr::new(other.internal_ip(), WIREGUARD_PORT).to_string(),
            "allowed-ips",
            &join(other.pod_cidrs()),
        ]);
        node.exec_ok(&["ip", "link", "set", IFNAME, "mtu", &mtu.to_string(), "up"]);
        for &family in tb.layout().pod_families() {
            let (Some(remote), Some(gateway)) =
                (other.pod_cidr_of(family), node.pod_gateway_of(family))
            else {
                continue;
            };
            node.exec_ok(&[
                "ip",
                "route",
                "add",
                &remote.to_string(),
                "dev",
                IFNAME,
                "src",
                &gateway.to_string(),
            ]);
        }
    }
    Replacement { procs }
}

fn link_mtu(node: &Node) -> u32 {
    // `ip`, not /sys: the node's /sys shows the host's interfaces.
    let out = node.exec_ok(&["ip", "-o", "link", "show", IFNAME]);
    out.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no MTU in {out:?}"))
}

/// The pod's first address: IPv4 when it has one.
fn first_ip(pod: &Pod) -> IpAddr {
    pod.ip_of(Family::Ipv4)
        .or_else(|| pod.ip_of(Family::Ipv6))
        .unwrap_or_else(|| panic!("pod {} has no address", pod.name()))
}

fn wait_for_ping(from: &Pod, to: IpAddr) {
    let ok = exec::poll_until(Duration::from_secs(20), || from.ping(to).then_some(()));
    assert!(ok.is_some(), "{} cannot reach {to}", from.name());
}

/// The median of `count` pings (`time=` of each reply).
pub fn median_rtt(from: &Pod, to: impl Into<IpAddr>, count: u32) -> f64 {
    let to: IpAddr = to.into();
    let out = from.exec_ok(&[
        "ping",
        "-n",
        "-c",
        &count.to_string(),
        "-i",
        "0.02",
        &to.to_string(),
    ]);
    let mut times: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One TCP stream from `a` to `b`'s first address (IPv4 when it has one) for `seconds`:
/// (Mbit/s, bytes) as the receiver saw them.
pub fn iperf3(a: &Pod, b: &Pod, seconds: u32) -> (f64, u64) {
    let to = first_ip(b);
    let ip = to.to_string();
    let mut server = b.command("iperf3");
    server
        .args(["-s", "-1", "-B", &ip])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server = Proc::spawn(server, "iperf3 server");
    let ready = exec::poll_until(Duration::from_secs(5), || {
        let out = b.exec(&["ss", "-Htln", &format!("src {}", SocketAddr::new(to, 5201))]);
        (!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(())
    });
    assert!(ready.is_some(), "iperf3 server did not listen");
    let out = a.exec_ok(&["iperf3", "-c", &ip, "-t", &seconds.to_string(), "-J"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("iperf3 JSON: {e}"));
    let received = &v["end"]["sum_received"];
    (
        received["bits_per_second"].as_f64().unwrap_or(0.0) / 1e6,
        received["bytes"].as_u64().unwrap_or(0),
    )
}

/// utime + stime of a process (all its threads), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    process_cpu_seconds(pid, false)
}

/// utime + stime of a process (all its threads), in seconds; with `children`, plus the
/// time of the children it waited for (the commands it ran).
pub fn process_cpu_seconds(pid: u32, children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime is field 14, stime 15: index 11 and 12 after the state.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // cutime and cstime, fields 16 and 17, follow.
    let waited = if children { ticks(13) + ticks(14) } else { 0 };
    (ticks(11) + ticks(12) + waited) as f64 / hz
}
