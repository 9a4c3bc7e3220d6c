//! `wgmesh-testbed`: a multi-node wgmesh cluster in namespaces on this machine (test
//! infrastructure; needs root and a built workspace: `cargo build --workspace --bins`).
//!
//! `wgmesh-testbed up [--nodes N] [--pods M] [--layout L] [--keep]` builds the cluster,
//! adds M pods per node, prints how to enter every node and pod, and tears everything
//! down again: at once, or with `--keep` on Ctrl-C / SIGTERM. `wgmesh-testbed demo
//! [dualstack|multicloud]` runs a demo on the 3-node cluster, on a dual-stack one over an
//! IPv6 underlay, or on the multi-cloud testbed.

/// `println!` that ignores a closed stdout (`... | head`): a panic there would still
/// tear down, but the cluster must not depend on who reads the output.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod demo;
mod demo_dualstack;
mod demo_multicloud;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand, ValueEnum};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use wgmesh_testbed::addressing::{self, Family, Layout, MAX_NODES};
use wgmesh_testbed::bench::{self, DataPlane};
use wgmesh_testbed::{Pod, Testbed};

#[derive(Debug, Parser)]
#[command(
    name = "wgmesh-testbed",
    about = "A multi-node wgmesh cluster in namespaces (test infrastructure; root)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The demo: a 3-node cluster with 2 pods per node (or the same with dual-stack pods
    /// over an IPv6 underlay, or the multi-cloud testbed with a pod per node); show and
    /// check, step by step, what wgmesh does (exit status 1 if a check fails), then tear
    /// down (with --keep: on Ctrl-C or SIGTERM, after printing how to enter nodes and
    /// pods).
    Demo {
        /// Which cluster: three nodes behind one router (IPv4, or dual-stack pods over
        /// an IPv6 underlay), or two clouds and two homes behind NATs on an internet that
        /// drops private addresses.
        #[arg(value_enum, default_value_t = Topology::ThreeNodes)]
        topology: Topology,
        #[arg(long)]
        keep: bool,
    },
    /// Build a cluster, print how to enter it, then tear it down (with --keep: on
    /// Ctrl-C or SIGTERM).
    Up {
        /// Number of nodes (1-16).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=MAX_NODES as i64))]
        nodes: u8,
        /// Pods to create on every node.
        #[arg(long, default_value_t = 1)]
        pods: usize,
        /// Which families the underlay and the pods use: ipv4, dualstack-over-ipv4,
        /// dualstack (over an IPv6 underlay), ipv6.
        #[arg(long, default_value = "ipv4", value_parser = parse_layout)]
        layout: Layout,
        /// Keep the cluster until Ctrl-C or SIGTERM.
        #[arg(long)]
        keep: bool,
    },
    /// Pod-to-pod benchmark (for hack/bench-wireguard.sh): for each data plane, a fresh
    /// 2-node cluster with a pod per node, the idle ping RTT and one iperf3 TCP stream;
    /// prints one JSON object per data plane.
    Bench {
        /// Seconds of iperf3.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Data planes, in order: agent (the agents' own), wireguard-go, wgmesh-wg (each
        /// put in place of the agents on the same nodes).
        #[arg(long, value_delimiter = ',', default_value = "agent,wireguard-go")]
        data_planes: Vec<String>,
        /// The clusters' layout (as for `up`): `dualstack` runs the tunnel over an IPv6
        /// underlay.
        #[arg(long, default_value = "ipv4", value_parser = parse_layout)]
        layout: Layout,
    },
}

/// The demo's cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Topology {
    /// Three nodes behind one router.
    ThreeNodes,
    /// Three nodes behind one router, dual-stack pods over an IPv6 underlay.
    Dualstack,
    /// a1, a2 (cloud-a), b1 (cloud-b), h1, h2 (two homes), each site behind its NAT.
    Multicloud,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !wgmesh_testkit::is_root() {
        eprintln!("wgmesh-testbed needs root (it creates network and mount namespaces)");
        return ExitCode::FAILURE;
    }
    // Ctrl-C or SIGTERM only raise a flag: one during the build waits for the build and
    // then tears down, instead of killing the process with namespaces left behind. (A
    // handler, not a blocked mask: children would inherit the mask, and the agents then
    // could not be stopped with SIGTERM; handlers are reset by exec.)
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        if let Err(e) = unsafe { sigaction(signal, &action) } {
            eprintln!("cannot handle {signal}: {e}");
            return ExitCode::FAILURE;
        }
    }
    match cli.command {
        Command::Up {
            nodes,
            pods,
            layout,
            keep,
        } => up(nodes as usize, pods, layout, keep),
        Command::Demo {
            topology: Topology::ThreeNodes,
            keep,
        } => return run_demo(keep),
        Command::Demo {
            topology: Topology::Dualstack,
            keep,
        } => return demo_dualstack::main(keep, &STOP),
        Command::Demo {
            topology: Topology::Multicloud,
            keep,
        } => return demo_multicloud::main(keep, &STOP),
        Command::Bench {
            seconds,
            data_planes,
            layout,
        } => return bench(seconds, &data_planes, layout),
    }
    ExitCode::SUCCESS
}

fn run_demo(keep: bool) -> ExitCode {
    let headline = |tb: &Testbed| {
        format!(
            "wgmesh demo: 3 nodes (network + mount namespaces), 2 pods each, built in {:.2} s",
            tb.build_duration().as_secs_f64()
        )
    };
    demo::three_nodes(Layout::Ipv4, &headline, demo::run, keep, &STOP)
}

fn bench(seconds: u32, names: &[String], layout: Layout) -> ExitCode {
    let mut planes = Vec::new();
    for name in names {
        match DataPlane::parse(name) {
            Some(p) => planes.push(p),
            None => {
                eprintln!("unknown data plane {name:?} (agent, wireguard-go, wgmesh-wg)");
                return ExitCode::FAILURE;
            }
        }
    }
    for plane in planes {
        if STOP.load(Ordering::SeqCst) {
            return ExitCode::FAILURE;
        }
        say!("{}", bench::measure(plane, seconds, layout).to_json());
    }
    ExitCode::SUCCESS
}

/// Set by SIGINT or SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// A layout by its command-line name ([`Layout::name`]).
fn parse_layout(s: &str) -> Result<Layout, String> {
    Layout::ALL
        .into_iter()
        .find(|l| l.name() == s)
        .ok_or_else(|| {
            let names: Vec<&str> = Layout::ALL.iter().map(|l| l.name()).collect();
            format!("{s:?} is not a layout (one of {})", names.join(", "))
        })
}

fn up(nodes: usize, pods_per_node: usize, layout: Layout, keep: bool) {
    let tb = Testbed::builder().nodes(nodes).layout(layout).build();
    let mut pods: Vec<Pod> = Vec::new();
    for node in tb.nodes() {
        for k in 0..pods_per_node {
            pods.push(tb.add_pod(node.index(), &format!("pod-{}-{k}", node.index())));
        }
    }
    print_cluster(&tb, &pods);
    if keep {
        demo::keep_until(&STOP);
        say!("Tearing down.");
    } else {
        say!("\nTearing down (use --keep to keep the cluster).");
    }
    for pod in pods {
        tb.delete_pod(pod);
    }
    drop(tb);
    say!("Torn down.");
}

pub(crate) fn print_cluster(tb: &Testbed, pods: &[Pod]) {
    say!(
        "wgmesh testbed {} is up: {} nodes, built in {:.2} s; logs in {}",
        tb.run_id(),
        tb.nodes().count(),
        tb.build_duration().as_secs_f64(),
        tb.dir().display()
    );
    if tb.layout() != Layout::Ipv4 {
        say!("layout: {}", tb.layout().describe());
    }
    say!(
        "\nAPI server: KUBECONFIG={} kubectl get nodes -o wide",
        tb.api().kubeconfig().display()
    );
    say!(
        "  (nodes reach it at {} with {})",
        tb.api_url_for_nodes(),
        tb.node_kubeconfig().display()
    );
    let underlay = |n: &wgmesh_testbed::Node| addressing::join(n.underlay_ips());
    let cidrs = |n: &wgmesh_testbed::Node| addressing::join(n.pod_cidrs());
    let (w_underlay, w_cidrs) = (
        tb.nodes().map(|n| underlay(n).len()).fold(12, usize::max),
        tb.nodes().map(|n| cidrs(n).len()).fold(15, usize::max),
    );
    say!(
        "\n{:<8} {:<w_underlay$} {:<w_cidrs$} ENTER",
        "NODE",
        "UNDERLAY",
        "POD CIDR"
    );
    for node in tb.nodes() {
        say!(
            "{:<8} {:<w_underlay$} {:<w_cidrs$} {}",
            node.name(),
            underlay(node),
            cidrs(node),
            node.enter_command()
        );
    }
    if !pods.is_empty() {
        let ips = |p: &Pod| addressing::join(p.ips());
        let w_ips = pods.iter().map(|p| ips(p).len()).fold(12, usize::max);
        say!("\n{:<10} {:<8} {:<w_ips$} ENTER", "POD", "NODE", "IP");
        for pod in pods {
            say!(
                "{:<10} {:<8} {:<w_ips$} {}",
                pod.name(),
                pod.node_name(),
                ips(pod),
                pod.enter_command()
            );
        }
    }
    say!(
        "\nrouter:   {}   (drops {} and {}: nft list ruleset)",
        tb.router().enter_command(),
        Family::Ipv4.cluster_cidr(),
        Family::Ipv6.cluster_cidr()
    );
    say!(
        "internet: {}   ({})",
        tb.internet().enter_command(),
        tb.layout().internet_ip()
    );
    say!(
        "\nInside a node: cat /etc/cni/net.d/10-wgmesh.conflist /var/lib/wgmesh/mesh.json; ip netns list"
    );
}
