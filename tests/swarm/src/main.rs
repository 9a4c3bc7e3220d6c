//! `wgmesh-swarm`: the scale benchmark (test infrastructure). Argument parsing only;
//! see the library.

use std::time::Duration;

use clap::Parser;
use wgmesh_swarm::bench::{self, BenchConfig};

/// One real wgmesh agent against a swarm of emulated nodes: steady state, join, churn,
/// handshake storms, data with many peers, API traffic. Prints one table (Markdown).
/// Needs root; uses the binaries next to this one (wgmesh, wgmesh-cni, test-apiserver).
#[derive(Debug, Parser)]
#[command(name = "wgmesh-swarm")]
struct Args {
    /// Cluster sizes of the steady state (every Node, the two real ones included),
    /// ascending; the other scenarios run at the largest.
    #[arg(long, value_delimiter = ',', default_value = "100,300,1000")]
    sizes: Vec<usize>,
    /// Seconds of each idle measurement.
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    /// Irrelevant Node updates a second during the churn.
    #[arg(long, default_value_t = 20.0)]
    churn_rate: f64,
    /// Seconds of churn.
    #[arg(long, default_value_t = 20)]
    churn_seconds: u64,
    /// Seconds of each iperf3 transfer.
    #[arg(long, default_value_t = 5)]
    data_seconds: u32,
    /// Rounds of transfers (1 peer, then N−1 peers); medians are shown.
    #[arg(long, default_value_t = 3)]
    data_rounds: usize,
    /// Watching agents (`--dataplane none`) for the API traffic; 0 skips it.
    #[arg(long, default_value_t = 50)]
    watchers: usize,
    /// Node updates counted for the API traffic.
    #[arg(long, default_value_t = 200)]
    api_updates: usize,
    /// Skip the last measurement: idle CPU once every peer has been quiet for ten
    /// minutes (it waits those minutes).
    #[arg(long)]
    no_dormant: bool,
    /// Every scenario at a tiny size and for moments: a check that the benchmark works,
    /// not a measurement (overrides the other options).
    #[arg(long)]
    smoke: bool,
}

fn main() {
    let a = Args::parse();
    let cfg = if a.smoke {
        BenchConfig::smoke()
    } else {
        BenchConfig {
            sizes: a.sizes,
            idle: Duration::from_secs(a.idle_seconds),
            churn_rate: a.churn_rate,
            churn: Duration::from_secs(a.churn_seconds),
            data_seconds: a.data_seconds,
            data_rounds: a.data_rounds,
            watchers: a.watchers,
            api_updates: a.api_updates,
            dormant: !a.no_dormant,
        }
    };
    let report = bench::run(&cfg);
    print!("{}", report.table());
}
