//! The scale benchmark (test infrastructure, run by `hack/bench-scale.sh`): one real
//! agent on a testbed node against a swarm of emulated nodes, through the scenarios of
//! issue #17, printing one table. Each scenario also checks that the agent stays
//! correct (every emulated pod answers through it); a failed check fails the run.
//!
//! Cluster size N counts every Node: node0 (the agent measured), node1 (a second real
//! agent, the far end of the data transfers) and N−2 emulated nodes, so node0 has N−1
//! peers.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::measure::{self, CpuWindow, Metrics, agent_metrics, median};
use crate::probe::Answers;
use crate::scale::Scale;
use crate::watchers::Watchers;

/// How long the agent may take to apply a change of the cluster.
const SETTLE: Duration = Duration::from_secs(120);
/// How long a probe of every emulated pod may take before the agent is called wrong.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
const PROBE_RETRY: Duration = Duration::from_millis(500);
/// The agent computes its /metrics text at most once a second.
const METRICS_REFRESH: Duration = Duration::from_millis(1100);

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Cluster sizes for the steady state, ascending; the other scenarios run at the last.
    pub sizes: Vec<usize>,
    /// The idle window of each steady-state measurement.
    pub idle: Duration,
    /// Irrelevant Node updates a second, and for how long.
    pub churn_rate: f64,
    pub churn: Duration,
    /// Seconds of each iperf3 transfer, and how many rounds (1 peer, N−1 peers).
    pub data_seconds: u32,
    pub data_rounds: usize,
    /// Watcher agents (`--dataplane none`) for the API traffic; 0 skips it.
    pub watchers: usize,
    /// Node updates counted for the API traffic.
    pub api_updates: usize,
    /// At the end, wait until every peer of node0 is dormant (quiet for ten minutes)
    /// and measure its idle CPU again.
    pub dormant: bool,
}

impl BenchConfig {
    /// The full benchmark.
    pub fn full() -> BenchConfig {
        BenchConfig {
            sizes: vec![100, 300, 1000],
            idle: Duration::from_secs(10),
            churn_rate: 20.0,
            churn: Duration::from_secs(20),
            data_seconds: 5,
            data_rounds: 3,
            watchers: 50,
            api_updates: 200,
            dormant: true,
        }
    }

    /// A minute-long run that exercises every scenario (on a debug build, in the test
    /// command): not a measurement.
    pub fn smoke() -> BenchConfig {
        BenchConfig {
            sizes: vec![12, 24],
            idle: Duration::from_secs(2),
            churn_rate: 20.0,
            churn: Duration::from_secs(2),
            data_seconds: 1,
            data_rounds: 1,
            watchers: 3,
            api_updates: 20,
            dormant: false,
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub n: usize,
    pub measured: String,
    pub goal: String,
    /// Whether the goal was met (`None`: no goal).
    pub met: Option<bool>,
}

/// Everything measured.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    fn add(&mut self, scenario: &str, n: usize, measured: String, goal: &str, met: Option<bool>) {
        let row = Row {
            scenario: scenario.to_string(),
            n,
            measured,
            goal: goal.to_string(),
            met,
        };
        eprintln!(
            "bench-scale: {} (N={}): {}",
            row.scenario, row.n, row.measured
        );
        self.rows.push(row);
    }

    /// The table, as Markdown.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| scenario | N | measured | goal | |");
        let _ = writeln!(out, "|----------|--:|----------|------|-|");
        for r in &self.rows {
            let mark = match r.met {
                Some(true) => "ok",
                Some(false) => "MISSED",
                None => "",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r.scenario, r.n, r.measured, r.goal, mark
            );
        }
        out
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

fn kib(bytes: f64) -> String {
    if bytes >= 1024.0 * 1024.0 {
        mib(bytes)
    } else {
        format!("{:.1} KiB", bytes / 1024.0)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The counters of node0's agent that say whether it did work.
#[derive(Debug, Clone, Default)]
struct Work {
    reconciles: f64,
    /// Kernel writes by kind.
    writes: Vec<(&'static str, f64)>,
    ignored_updates: f64,
}

impl Work {
    fn read(m: &Metrics) -> Work {
        Work {
            reconciles: m.get("wgmesh_reconciles_total"),
            writes: wgmesh::kernel_writes::Kind::ALL
                .iter()
                .map(|k| {
                    let name = format!("wgmesh_kernel_writes_total{{kind=\"{}\"}}", k.as_str());
                    (k.as_str(), m.get(&name))
                })
                .collect(),
            ignored_updates: m.get("wgmesh_node_updates_total{relevant=\"false\"}"),
        }
    }

    fn since(self, before: &Work) -> Work {
        Work {
            reconciles: self.reconciles - before.reconciles,
            writes: self
                .writes
                .iter()
                .zip(&before.writes)
                .map(|((k, a), (_, b))| (*k, a - b))
                .collect(),
            ignored_updates: self.ignored_updates - before.ignored_updates,
        }
    }

    fn kernel_writes(&self) -> f64 {
        self.writes.iter().map(|(_, n)| n).sum()
    }

    /// "0 kernel writes", or the count with the kinds written.
    fn describe_writes(&self) -> String {
        let total = self.kernel_writes();
        if total == 0.0 {
            return "0 kernel writes".into();
        }
        let kinds: Vec<String> = self
            .writes
            .iter()
            .filter(|(_, n)| *n > 0.0)
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        format!("{total} kernel writes ({})", kinds.join(", "))
    }
}

/// Checks that every registered emulated pod answers through node0's agent.
fn check_all_answer(scale: &mut Scale, what: &str) -> Answers {
    let answers = Answers::of(&scale.probe_all(PROBE_TIMEOUT, PROBE_RETRY));
    assert!(
        answers.all(),
        "{what}: only {} of {} emulated pods answered through node0's agent\n{}",
        answers.answered,
        answers.total,
        scale.diagnostics()
    );
    answers
}

/// Runs the benchmark and returns its report.
pub fn run(cfg: &BenchConfig) -> Report {
    let mut report = Report::default();
    let mut scale = Scale::start(2, &[]);
    let data_pod = scale.tb.add_pod(1, "data");
    // Let the start-up settle, then the baseline: two real nodes, no swarm.
    std::thread::sleep(cfg.idle.min(Duration::from_secs(5)));
    let idle_rss = measure::rss_bytes(scale.agent_pid()) as f64;
    report.add(
        "baseline: agent RSS with 1 peer",
        2,
        mib(idle_rss),
        "",
        None,
    );

    let mut n = 2;
    for &size in &cfg.sizes {
        assert!(
            size > n,
            "cluster sizes must grow, from 3 on: {:?}",
            cfg.sizes
        );
        n = size;
        steady(&mut scale, cfg, n, idle_rss, &mut report);
    }
    join(&mut scale, n, &mut report);
    n += 1;
    churn(&mut scale, cfg, n, &mut report);
    storm_restart(&mut scale, n, &mut report);
    storm_peers(&mut scale, n, &mut report);
    storm_beyond_budget(&mut scale, n, &mut report);
    data(&mut scale, cfg, n, &data_pod, &mut report);
    if cfg.watchers > 0 {
        api_traffic(&mut scale, cfg, n, &mut report);
    }
    if cfg.dormant {
        dormant(&mut scale, cfg, n, &mut report);
    }
    report
}

/// Steady state at cluster size `n`.
fn steady(scale: &mut Scale, cfg: &BenchConfig, n: usize, idle_rss: f64, report: &mut Report) {
    let started = Instant::now();
    scale.grow(n - 2);
    let registered = started.elapsed();
    // Probes answer once node0 applied the new peers and routes and handshook.
    let answers = Answers::of(&scale.probe_all(PROBE_TIMEOUT, Duration::from_millis(100)));
    assert!(
        answers.all(),
        "only {} of {} emulated pods answered through node0\n{}",
        answers.answered,
        answers.total,
        scale.diagnostics()
    );
    scale.wait_for_peers(scale.expected_peers(), SETTLE);
    report.add(
        "steady: Nodes created / all emulated pods answering through node0",
        n,
        format!(
            "{} / {} later ({} probed at once)",
            secs(registered),
            secs(answers.slowest.unwrap_or_default()),
            answers.total
        ),
        "",
        None,
    );
    // Handshakes and the first packets are over; now idle.
    std::thread::sleep(Duration::from_secs(2));
    let pid = scale.agent_pid();
    let before = Work::read(&agent_metrics(scale.agent()));
    let cpu = CpuWindow::start(pid);
    std::thread::sleep(cfg.idle);
    let share = cpu.share();
    let work = Work::read(&agent_metrics(scale.agent())).since(&before);
    let rss = measure::rss_bytes(pid) as f64;
    report.add(
        "steady: agent RSS (above the 1-peer baseline)",
        n,
        format!("{} ({})", mib(rss), mib(rss - idle_rss)),
        "< 64 MiB above at 1,000",
        (n >= 1000).then_some(rss - idle_rss < 64.0 * 1024.0 * 1024.0),
    );
    report.add(
        "steady: agent CPU at idle",
        n,
        format!(
            "{:.2}% of a core; {} passes, {} in {}",
            share * 100.0,
            work.reconciles,
            work.describe_writes(),
            secs(cfg.idle)
        ),
        "",
        None,
    );
    let (wg, listed) = measure::wg_show(scale.agent(), 5);
    assert_eq!(listed, scale.expected_peers(), "wg show lists every peer");
    report.add(
        "steady: `wg show wgmesh0`",
        n,
        format!("{} ({listed} peers)", ms(wg)),
        "< 200 ms",
        Some(wg < Duration::from_millis(200)),
    );
    let routes = measure::route_count(scale.agent());
    let rules = measure::nft_rule_count(scale.agent());
    report.add(
        "steady: routes / nftables rules",
        n,
        format!("{routes} / {rules}"),
        "rules do not grow with N",
        None,
    );
}

/// One more node joins: time until node0's device and routes carry traffic to it.
fn join(scale: &mut Scale, n: usize, report: &mut Report) {
    let i = scale.registered();
    scale.swarm.grow_to(i + 1);
    std::thread::sleep(METRICS_REFRESH);
    let before = agent_metrics(scale.agent());
    let start = Instant::now();
    scale.grow(i + 1);
    let answered = scale.probe_one(i, Duration::from_secs(30), Duration::from_millis(10));
    let took = start.elapsed();
    assert!(
        answered.is_some(),
        "the joining node never answered\n{}",
        scale.diagnostics()
    );
    std::thread::sleep(METRICS_REFRESH);
    let after = agent_metrics(scale.agent());
    let sum = "wgmesh_reconcile_duration_seconds_sum";
    let count = "wgmesh_reconcile_duration_seconds_count";
    let passes = after.get(count) - before.get(count);
    let pass = (after.get(sum) - before.get(sum)) / passes.max(1.0);
    report.add(
        "join: Node created → traffic through node0",
        n + 1,
        format!(
            "{} ({} pass of {})",
            secs(took),
            passes,
            ms(Duration::from_secs_f64(pass))
        ),
        "< 2 s",
        Some(took < Duration::from_secs(2)),
    );
}

/// Irrelevant Node updates at a steady rate.
fn churn(scale: &mut Scale, cfg: &BenchConfig, n: usize, report: &mut Report) {
    let names = scale.registered_names();
    let pid = scale.agent_pid();
    // The agent's /metrics text is cached for a second: let it show what came before.
    std::thread::sleep(METRICS_REFRESH);
    let before = Work::read(&agent_metrics(scale.agent()));
    let cpu = CpuWindow::start(pid);
    let made = scale.cluster.churn(&names, cfg.churn_rate, cfg.churn);
    let share = cpu.share();
    // The last updates reach the agent within moments; its text is then recomputed.
    std::thread::sleep(METRICS_REFRESH);
    let work = Work::read(&agent_metrics(scale.agent())).since(&before);
    check_all_answer(scale, "after the churn");
    report.add(
        &format!("churn: {} irrelevant Node updates/s", cfg.churn_rate),
        n,
        format!(
            "{:.2}% of a core; {}, {} passes, {} of {made} updates ignored",
            share * 100.0,
            work.describe_writes(),
            work.reconciles,
            work.ignored_updates
        ),
        "< 5%, 0 kernel writes",
        Some(share < 0.05 && work.kernel_writes() == 0.0),
    );
}

/// node0's agent restarts; its pod then sends to every node at once.
fn storm_restart(scale: &mut Scale, n: usize, report: &mut Report) {
    let before = scale.swarm.totals();
    let started = scale.restart_agent();
    let answers = Answers::of(&scale.probe_all(PROBE_TIMEOUT, Duration::from_millis(250)));
    let took = started.elapsed();
    assert!(
        answers.all(),
        "after the agent's restart only {} of {} answered\n{}",
        answers.answered,
        answers.total,
        scale.diagnostics()
    );
    let seen = scale.swarm.totals() - before;
    report.add(
        "storm: agent restart, then a pod sends to every node",
        n,
        format!(
            "all {} sessions up with traffic {} after the restart; {} handshakes, {} cookie replies",
            answers.total,
            secs(took),
            seen.handshakes,
            seen.cookies
        ),
        "< 10 s",
        Some(took < Duration::from_secs(10)),
    );
}

/// Every other node restarts (sessions gone) and sends to node0 at once.
fn storm_peers(scale: &mut Scale, n: usize, report: &mut Report) {
    // A second of handshake budget of its own: the agent's restart just spent one (and
    // the metrics text then shows what came before).
    std::thread::sleep(METRICS_REFRESH);
    let before = scale.swarm.totals();
    let under_load = "wgmesh_dataplane_packets_dropped_total{reason=\"under_load\"}";
    let m0 = agent_metrics(scale.agent()).get(under_load);
    scale.swarm.reset_all();
    let answers = Answers::of(&scale.swarm.ping_all(
        scale.agent_gateway(),
        PROBE_TIMEOUT,
        Duration::from_millis(250),
    ));
    assert!(
        answers.all(),
        "after every peer restarted only {} of {} got an answer from node0\n{}",
        answers.answered,
        answers.total,
        scale.diagnostics()
    );
    scale.note_traffic_until(Instant::now());
    let took = answers.slowest.unwrap_or_default();
    let seen = scale.swarm.totals() - before;
    let cookies_sent = agent_metrics(scale.agent()).get(under_load) - m0;
    report.add(
        "storm: every peer restarts and sends to node0",
        n,
        format!(
            "all {} sessions up with traffic in {}; {} handshakes, {} cookie replies sent, none stuck",
            answers.total,
            secs(took),
            seen.handshakes,
            cookies_sent
        ),
        "< 10 s",
        Some(took < Duration::from_secs(10)),
    );
}

/// Every other node restarts three times in a moment, each time greeting node0: three
/// times the handshakes node0 takes in a second without cookies. Those over the budget
/// get a cookie and must complete on their retry, none stuck.
fn storm_beyond_budget(scale: &mut Scale, n: usize, report: &mut Report) {
    const RESTARTS: usize = 3;
    let under_load = "wgmesh_dataplane_packets_dropped_total{reason=\"under_load\"}";
    std::thread::sleep(METRICS_REFRESH);
    let m0 = agent_metrics(scale.agent()).get(under_load);
    let gateway = scale.agent_gateway();
    let start = Instant::now();
    scale.swarm.restart_all_greeting(RESTARTS, gateway);
    let answers = Answers::of(&scale.swarm.ping_all(
        gateway,
        PROBE_TIMEOUT,
        Duration::from_millis(250),
    ));
    let took = start.elapsed();
    scale.note_traffic_until(Instant::now());
    assert!(
        answers.all(),
        "beyond the handshake budget, {} of {} got node0's answer\n{}",
        answers.answered,
        answers.total,
        scale.diagnostics()
    );
    std::thread::sleep(METRICS_REFRESH);
    let cookies_sent = agent_metrics(scale.agent()).get(under_load) - m0;
    report.add(
        &format!("storm: every peer restarts {RESTARTS}× at once (beyond the handshake budget)"),
        n,
        format!(
            "all {} sessions up with traffic in {}; {} initiations, {} cookie replies sent, none stuck",
            answers.total,
            secs(took),
            RESTARTS * answers.total,
            cookies_sent
        ),
        "< 10 s",
        Some(took < Duration::from_secs(10)),
    );
}

/// One TCP stream from node0's pod to node1's, with 1 and with N−1 peers configured.
fn data(
    scale: &mut Scale,
    cfg: &BenchConfig,
    n: usize,
    data_pod: &wgmesh_testbed::Pod,
    report: &mut Report,
) {
    let emulated = scale.registered();
    let (mut one, mut many) = (Vec::new(), Vec::new());
    // After each change the agents apply it and (with the swarm back) handshake with
    // every node; the transfer starts once that burst of work is over.
    let quiet = Duration::from_secs(3);
    for _ in 0..cfg.data_rounds {
        scale.unregister_all();
        scale.wait_for_peers(scale.expected_peers(), SETTLE);
        std::thread::sleep(quiet);
        one.push(wgmesh_testbed::bench::iperf3(scale.probe_pod(), data_pod, cfg.data_seconds).0);
        scale.grow(emulated);
        scale.wait_for_peers(scale.expected_peers(), SETTLE);
        check_all_answer(scale, "before a transfer");
        std::thread::sleep(quiet);
        many.push(wgmesh_testbed::bench::iperf3(scale.probe_pod(), data_pod, cfg.data_seconds).0);
    }
    let (one, many) = (median(one), median(many));
    let change = many / one - 1.0;
    report.add(
        "data: one TCP stream pod to pod, 1 vs N−1 peers configured",
        n,
        format!(
            "{one:.0} vs {many:.0} Mbit/s ({:+.1}%, median of {})",
            change * 100.0,
            cfg.data_rounds
        ),
        "within 10%",
        Some(change.abs() <= 0.10),
    );
    check_all_answer(scale, "after the data transfers");
}

/// Once every peer has been quiet for ten minutes, node0's device stops running their
/// timers: idle CPU again.
fn dormant(scale: &mut Scale, cfg: &BenchConfig, n: usize, report: &mut Report) {
    let quiet_since = scale.last_traffic();
    let wake = quiet_since + wgmesh::wireguard::tunnel::DORMANT_AFTER + Duration::from_secs(15);
    eprintln!(
        "bench-scale: waiting {} for every peer of node0 to be quiet for ten minutes",
        secs(wake.saturating_duration_since(Instant::now()))
    );
    std::thread::sleep(wake.saturating_duration_since(Instant::now()));
    let pid = scale.agent_pid();
    let cpu = CpuWindow::start(pid);
    std::thread::sleep(cfg.idle * 2);
    let share = cpu.share();
    report.add(
        "steady: agent CPU at idle, every peer quiet for 10 min",
        n,
        format!("{:.2}% of a core", share * 100.0),
        "",
        None,
    );
    check_all_answer(scale, "after ten quiet minutes");
}

/// What the API server sends to K watching agents, per Node update and per relist.
fn api_traffic(scale: &mut Scale, cfg: &BenchConfig, n: usize, report: &mut Report) {
    let kubeconfig = scale.tb.api().kubeconfig();
    let watchers = Watchers::start(cfg.watchers, &scale.cluster, &kubeconfig);
    scale.add_other_peers(watchers.len());
    // node0 greets each new node; watchers have no data plane to answer, so it tries
    // for REKEY_ATTEMPT_TIME (90 s).
    scale.note_traffic_until(Instant::now() + Duration::from_secs(95));
    scale.wait_for_peers(scale.expected_peers(), SETTLE);
    let nodes = n + watchers.len();
    // Every agent watching Nodes: the watchers and the two real ones.
    let agents = (watchers.len() + 2) as f64;
    std::thread::sleep(Duration::from_secs(2));

    let watch_bytes = "test_apiserver_response_body_bytes_total{verb=\"watch\",resource=\"nodes\"}";
    let list_bytes = "test_apiserver_response_body_bytes_total{verb=\"list\",resource=\"nodes\"}";
    let lists = "test_apiserver_responses_total{verb=\"list\",resource=\"nodes\"}";
    let wire = "test_apiserver_sent_bytes_total";
    let before = scale.cluster.server_metrics();
    let names = scale.registered_names();
    let seconds = cfg.api_updates as f64 / cfg.churn_rate;
    let made = scale
        .cluster
        .churn(&names, cfg.churn_rate, Duration::from_secs_f64(seconds));
    std::thread::sleep(Duration::from_secs(1));
    let after = scale.cluster.server_metrics();
    let per_update = (after.get(watch_bytes) - before.get(watch_bytes)) / made as f64;
    report.add(
        "API: watch bytes per Node update",
        nodes,
        format!(
            "{} per agent, {} cluster-wide ({} agents watching)",
            kib(per_update / agents),
            kib(per_update),
            agents
        ),
        "",
        None,
    );
    let spec = crate::nodes::NodeSpec::emulated(&scale.swarm.node(0));
    let (full, metadata, summary) = crate::nodes::encoded_sizes(&spec);
    report.add(
        "API: one node as a whole Node / metadata only / a summary",
        nodes,
        format!("{full} / {metadata} / {summary} bytes of JSON"),
        "",
        None,
    );

    // A restart of the API server: writes to other resources moved the global
    // resourceVersion past the agents' (as leases and events do in a real cluster), so
    // their watches get 410 Gone and every agent lists all Nodes again.
    scale.cluster.create_namespace("swarm-rv-bump");
    scale.tb.api_mut().restart();
    let start = Instant::now();
    let after = loop {
        let m = scale.cluster.server_metrics();
        if m.get(lists) >= agents || start.elapsed() > Duration::from_secs(120) {
            break m;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let relisted = after.get(lists);
    let bytes = after.get(list_bytes);
    std::thread::sleep(Duration::from_secs(2));
    let rss_after_relist = measure::rss_bytes(scale.agent_pid()) as f64;
    report.add(
        "API: relist after an API server restart",
        nodes,
        format!(
            "{} per agent, {} cluster-wide ({relisted} lists in {}; {} on the wire in all); node0's RSS after it: {}",
            kib(bytes / relisted.max(1.0)),
            kib(bytes),
            secs(start.elapsed()),
            kib(after.get(wire)),
            mib(rss_after_relist),
        ),
        "",
        None,
    );
    report.add(
        "API: watcher agents' RSS",
        nodes,
        format!(
            "{} each",
            mib(watchers.rss_bytes() as f64 / watchers.len().max(1) as f64)
        ),
        "",
        None,
    );
    scale.wait_for_peers(scale.expected_peers(), SETTLE);
}
