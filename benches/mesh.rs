//! The pure mesh computation at 1,000 and 5,000 nodes: full recompute (parse every node
//! and plan) and a single-node change (re-parse one node, plan again), with time and
//! heap allocated per pass. A benchmark, not a test:
//! `cargo bench -p wgmesh --bench mesh`. Target: under 10 ms per full recompute at
//! 5,000 nodes. `-- --smoke` makes one pass of each, only to show that the benchmark
//! still works (`hack/test.sh` does).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wgmesh::key::PublicKey;
use wgmesh::mesh::{self, MeshConfig, ParsedNode};
use wgmesh::model::{NodeView, annotation};

/// Counts bytes allocated, to report the memory a pass needs.
struct Counting;
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: forwarding to the system allocator with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const NO_PEERS: &[wgmesh::mesh::ParsedPeer] = &[];

fn node(i: usize) -> NodeView {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    key[31] = 0x40;
    // 10.0.0.0/8 split into /24s: 65,536 distinct node CIDRs.
    let cidr = format!("10.{}.{}.0/24", i / 256, i % 256);
    NodeView {
        name: format!("node-{i:05}"),
        annotations: BTreeMap::from([
            (
                annotation::PUBLIC_KEY.into(),
                PublicKey::from_bytes(key).to_base64(),
            ),
            (
                annotation::ENDPOINT.into(),
                format!("198.51.{}.{}:51820", (i / 250) % 256, i % 250 + 1),
            ),
            (annotation::POD_CIDRS.into(), cidr.clone()),
        ]),
        pod_cidrs: vec![cidr],
        addresses: vec![(
            "InternalIP".into(),
            format!("198.51.{}.{}", (i / 250) % 256, i % 250 + 1),
        )],
        labels: BTreeMap::new(),
    }
}

struct Sample {
    time: Duration,
    allocated: usize,
    peak: usize,
}

/// Passes per measurement (the median is reported), and in a smoke run.
const PASSES: usize = 15;
const SMOKE_PASSES: usize = 1;

fn measure<T>(passes: usize, mut f: impl FnMut() -> T) -> Sample {
    let mut times = Vec::new();
    let mut allocated = 0;
    let mut peak = 0;
    for _ in 0..passes {
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let before = ALLOCATED.load(Ordering::Relaxed);
        let start = Instant::now();
        black_box(f());
        times.push(start.elapsed());
        allocated = ALLOCATED.load(Ordering::Relaxed) - before;
        peak = PEAK.load(Ordering::Relaxed) - base;
    }
    times.sort();
    Sample {
        time: times[times.len() / 2],
        allocated,
        peak,
    }
}

/// True for `--smoke`; cargo passes `--bench` to every benchmark binary.
fn smoke_from_args() -> bool {
    let mut smoke = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--bench" => {}
            "--smoke" => smoke = true,
            other => {
                eprintln!("mesh: unknown argument {other:?} (only --smoke)");
                std::process::exit(2);
            }
        }
    }
    smoke
}

fn main() {
    let passes = if smoke_from_args() {
        SMOKE_PASSES
    } else {
        PASSES
    };
    let cfg = MeshConfig {
        cluster_cidrs: vec!["10.0.0.0/8".parse().expect("cidr")],
        ..MeshConfig::default()
    };
    println!(
        "mesh computation, median of {passes} passes (allocated = bytes allocated in the pass, peak = peak live heap growth){}",
        if passes == SMOKE_PASSES {
            "; a smoke run, not a measurement"
        } else {
            ""
        }
    );
    for n in [1_000usize, 5_000] {
        let views: Vec<NodeView> = (0..n).map(node).collect();
        let local = views[0].name.clone();
        let full = measure(passes, || {
            let parsed: Vec<ParsedNode> = views.iter().map(|v| mesh::parse(v, &cfg)).collect();
            mesh::plan(&local, None, &parsed, NO_PEERS, &cfg)
        });
        let mut parsed: Vec<ParsedNode> = views.iter().map(|v| mesh::parse(v, &cfg)).collect();
        let plan = mesh::plan(&local, None, &parsed, NO_PEERS, &cfg);
        assert_eq!(plan.peers.len(), n - 1, "every other node is a peer");
        assert!(plan.rejected.is_empty());
        // One node changes its endpoint: re-parse it, plan again (what the agent does).
        let mut changed = views[n / 2].clone();
        changed
            .annotations
            .insert(annotation::ENDPOINT.into(), "203.0.113.9:51820".into());
        let single = measure(passes, || {
            parsed[n / 2] = mesh::parse(&changed, &cfg);
            mesh::plan(&local, None, &parsed, NO_PEERS, &cfg)
        });
        for (what, s) in [("full recompute", &full), ("single-node change", &single)] {
            println!(
                "  {n:>5} nodes  {what:<19} {:>8.3} ms   allocated {:>6.2} MiB   peak {:>6.2} MiB",
                s.time.as_secs_f64() * 1e3,
                s.allocated as f64 / 1048576.0,
                s.peak as f64 / 1048576.0
            );
        }
    }
}
