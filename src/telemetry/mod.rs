//! What the agent tells operators: Prometheus metrics, liveness and readiness.
//! Adapter; the HTTP side is in [`http`].
//!
//! The reconcile loop records its progress and results here; the data plane hands over
//! its WireGuard device; per-peer numbers are read from the device at scrape time, so
//! they are never stale.

mod collector;
mod health;
pub mod http;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::dataplane::backend::WgDevice;
use crate::mesh::MeshPlan;

/// What readiness checks beyond the CNI config.
#[derive(Debug, Clone)]
pub enum Readiness {
    /// `--dataplane none`: the control plane only.
    ControlPlaneOnly,
    /// The real data plane: the mesh interface, routes and nftables table.
    Node { interface: String },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// The state shared with the scrape-time collector and the readiness check.
#[derive(Default)]
pub(crate) struct Observed {
    pub device: Option<WgDevice>,
    pub plan: Option<MeshPlan>,
}

pub struct Telemetry {
    registry: Registry,
    reconciles: Counter,
    reconcile_errors: Counter,
    reconcile_duration: Histogram,
    nodes_rejected: Family<ReasonLabel, Gauge>,
    observed: Arc<RwLock<Observed>>,
    started: Instant,
    /// Milliseconds after `started` of the reconcile loop's last turn.
    progress_ms: AtomicU64,
    synced: AtomicBool,
    readiness: Readiness,
    conflist: PathBuf,
    /// /healthz fails when the loop has not turned for this long.
    stale_after: Duration,
    /// Why the node's own configuration keeps pods off the network, if it does.
    blocked: RwLock<Option<String>>,
    /// The last readiness verdict and when it was computed: probes in a tight loop
    /// cost one kernel check per [`REFRESH`], not one each.
    readiness_cache: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
    /// The last /metrics text and when it was encoded, for the same reason.
    metrics_cache: std::sync::Mutex<Option<(Instant, Arc<str>)>>,
    /// Counted by the Node watch, exported at scrape time.
    node_updates: crate::k8s::watch::UpdateCounts,
}

/// How long a readiness verdict or a metrics text is served before being recomputed.
const REFRESH: Duration = Duration::from_secs(1);

impl Telemetry {
    pub fn new(readiness: Readiness, conflist: PathBuf, resync_interval: Duration) -> Arc<Self> {
        let mut registry = Registry::with_prefix("wgmesh");
        let reconciles = Counter::default();
        let reconcile_errors = Counter::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let nodes_rejected = Family::<ReasonLabel, Gauge>::default();
        registry.register("reconciles", "Reconcile passes", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconcile passes that failed",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconcile passes",
            reconcile_duration.clone(),
        );
        registry.register(
            "nodes_rejected",
            "Nodes left out of the mesh, by reason",
            nodes_rejected.clone(),
        );
        registry.register(
            "build",
            "wgmesh build information",
            Info::new(vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )]),
        );
        let observed = Arc::new(RwLock::new(Observed::default()));
        let node_updates = crate::k8s::watch::UpdateCounts::default();
        registry.register_collector(Box::new(collector::MeshCollector::new(
            observed.clone(),
            node_updates.clone(),
        )));
        Arc::new(Telemetry {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            nodes_rejected,
            observed,
            started: Instant::now(),
            progress_ms: AtomicU64::new(0),
            synced: AtomicBool::new(false),
            readiness,
            conflist,
            stale_after: (resync_interval * 3).max(Duration::from_secs(60)),
            blocked: RwLock::new(None),
            readiness_cache: tokio::sync::Mutex::new(None),
            metrics_cache: std::sync::Mutex::new(None),
            node_updates,
        })
    }

    /// The counters the Node watch fills (`wgmesh_node_updates_total`).
    pub fn node_updates(&self) -> crate::k8s::watch::UpdateCounts {
        self.node_updates.clone()
    }

    /// The loop turned (whatever the outcome).
    pub fn progressed(&self) {
        self.progress_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// A reconcile pass finished.
    pub fn reconciled(&self, took: Duration, result: Result<&MeshPlan, ()>) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
        match result {
            Ok(plan) => {
                self.synced.store(true, Ordering::Relaxed);
                let mut by_reason: BTreeMap<&'static str, i64> = BTreeMap::new();
                for problems in plan.rejected.values() {
                    if let Some(p) = problems.first() {
                        *by_reason.entry(p.reason()).or_default() += 1;
                    }
                }
                self.nodes_rejected.clear();
                for (reason, n) in by_reason {
                    self.nodes_rejected
                        .get_or_create(&ReasonLabel {
                            reason: reason.to_string(),
                        })
                        .set(n);
                }
                write(&self.observed).plan = Some(plan.clone());
            }
            Err(()) => {
                self.reconcile_errors.inc();
            }
        }
    }

    /// The data plane's WireGuard device, userspace or kernel (per-peer metrics, drops).
    pub fn set_device(&self, device: Option<WgDevice>) {
        write(&self.observed).device = device;
    }

    /// Why this node gives no pod a network (its own configuration is wrong), or
    /// `None`; readiness fails with the reason while it is set.
    pub fn set_blocked(&self, why: Option<&str>) {
        let mut blocked = write(&self.blocked);
        if blocked.as_deref() != why {
            *blocked = why.map(String::from);
        }
    }

    /// The metrics in the Prometheus text format, encoded at most once per [`REFRESH`].
    pub fn encode(&self) -> Arc<str> {
        let mut cache = self.metrics_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, text)) = cache.as_ref()
            && at.elapsed() < REFRESH
        {
            return Arc::clone(text);
        }
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        let text: Arc<str> = out.into();
        *cache = Some((Instant::now(), Arc::clone(&text)));
        text
    }

    /// Liveness: the loop turned recently.
    pub fn healthy(&self) -> Result<(), String> {
        let last = Duration::from_millis(self.progress_ms.load(Ordering::Relaxed));
        let idle = self.started.elapsed().saturating_sub(last);
        if idle > self.stale_after {
            return Err(format!(
                "reconcile loop has not run for {}s",
                idle.as_secs()
            ));
        }
        Ok(())
    }

    /// Readiness: synced once, the node's configuration usable, CNI config written, and
    /// the data plane in place; checked against the kernel at most once per
    /// [`REFRESH`], however often it is asked.
    pub async fn ready(&self) -> Result<(), String> {
        let mut cache = self.readiness_cache.lock().await;
        if let Some((at, verdict)) = cache.as_ref()
            && at.elapsed() < REFRESH
        {
            return verdict.clone();
        }
        let verdict = self.check_ready().await;
        *cache = Some((Instant::now(), verdict.clone()));
        verdict
    }

    async fn check_ready(&self) -> Result<(), String> {
        if !self.synced.load(Ordering::Relaxed) {
            return Err("no successful reconcile yet".into());
        }
        if let Some(why) = read(&self.blocked).clone() {
            return Err(why);
        }
        if !self.conflist.exists() {
            return Err(format!(
                "CNI config {} not written",
                self.conflist.display()
            ));
        }
        match &self.readiness {
            Readiness::ControlPlaneOnly => Ok(()),
            Readiness::Node { interface } => {
                let (plan, threads_alive) = {
                    let observed = read(&self.observed);
                    (
                        observed.plan.clone().unwrap_or_default(),
                        observed.device.as_ref().map(|d| d.threads_alive()),
                    )
                };
                match threads_alive {
                    None => return Err(format!("no WireGuard device for {interface} yet")),
                    Some(false) => {
                        return Err(format!(
                            "a packet thread of {interface} is down (restarting; see wgmesh_dataplane_thread_restarts_total)"
                        ));
                    }
                    Some(true) => {}
                }
                health::data_plane(interface, &plan).await
            }
        }
    }
}

// A poisoned lock only means a panic elsewhere while holding it; the data is still
// usable for reporting.
pub(crate) fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::Problem;

    #[test]
    fn metrics_have_the_documented_names_and_labels() {
        let t = Telemetry::new(
            Readiness::ControlPlaneOnly,
            "/nonexistent".into(),
            Duration::from_secs(30),
        );
        let mut plan = MeshPlan::default();
        plan.rejected.insert("b".into(), vec![Problem::NoPodCidrs]);
        plan.rejected.insert("c".into(), vec![Problem::NoPodCidrs]);
        plan.rejected
            .insert("d".into(), vec![Problem::PublicKeyOfThisNode]);
        t.reconciled(Duration::from_millis(3), Ok(&plan));
        t.reconciled(Duration::from_millis(5), Err(()));
        let text = t.encode();
        for line in [
            "wgmesh_reconciles_total 2",
            "wgmesh_reconcile_errors_total 1",
            "wgmesh_reconcile_duration_seconds_count 2",
            "wgmesh_nodes_rejected{reason=\"NoPodCIDRs\"} 2",
            "wgmesh_nodes_rejected{reason=\"DuplicatePublicKey\"} 1",
            "wgmesh_peers 0",
            &format!(
                "wgmesh_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(
            text.contains("# TYPE wgmesh_reconcile_duration_seconds histogram"),
            "{text}"
        );
    }

    #[test]
    fn kernel_writes_are_exported_by_kind() {
        use crate::kernel_writes::{Kind, record};
        let t = Telemetry::new(
            Readiness::ControlPlaneOnly,
            "/nonexistent".into(),
            Duration::from_secs(30),
        );
        // Counters are process-wide (other tests may write too): at least what we added.
        record(Kind::WireguardPeer, 7);
        let text = t.encode();
        let value = |kind: &str| -> u64 {
            let prefix = format!("wgmesh_kernel_writes_total{{kind=\"{kind}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}"))
        };
        assert!(value("wireguard_peer") >= 7);
        for kind in ["route", "link", "address", "nftables", "sysctl"] {
            value(kind);
        }
    }

    #[test]
    fn liveness_follows_the_loop_and_readiness_needs_a_sync_and_the_cni_config() {
        let dir = tempfile::tempdir().unwrap();
        let conflist = dir.path().join("10-wgmesh.conflist");
        let t = Telemetry::new(
            Readiness::ControlPlaneOnly,
            conflist.clone(),
            Duration::from_secs(30),
        );
        t.progressed();
        assert!(t.healthy().is_ok());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(
            rt.block_on(t.check_ready())
                .unwrap_err()
                .contains("no successful reconcile")
        );
        t.reconciled(Duration::ZERO, Ok(&MeshPlan::default()));
        assert!(
            rt.block_on(t.check_ready())
                .unwrap_err()
                .contains("CNI config")
        );
        std::fs::write(&conflist, "{}").unwrap();
        assert!(rt.block_on(t.check_ready()).is_ok());
        // A failed pass after the first sync (e.g. the API server is down) keeps it ready.
        t.reconciled(Duration::ZERO, Err(()));
        assert!(rt.block_on(t.check_ready()).is_ok());
        // A node whose own configuration is wrong is not ready, conflist or not.
        t.set_blocked(Some(
            "pod CIDR 10.244.1.0/24 outside --cluster-cidr 10.96.0.0/16",
        ));
        assert!(
            rt.block_on(t.check_ready())
                .unwrap_err()
                .contains("outside --cluster-cidr")
        );
        t.set_blocked(None);
        assert!(rt.block_on(t.check_ready()).is_ok());
    }

    #[test]
    fn probes_in_a_tight_loop_reuse_one_verdict_and_one_metrics_text_per_second() {
        let dir = tempfile::tempdir().unwrap();
        let conflist = dir.path().join("10-wgmesh.conflist");
        let t = Telemetry::new(
            Readiness::ControlPlaneOnly,
            conflist,
            Duration::from_secs(30),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(rt.block_on(t.ready()).is_err(), "not synced yet");
        t.reconciled(Duration::ZERO, Ok(&MeshPlan::default()));
        // Within the refresh interval the cached verdict stands (the CNI config is
        // still missing either way, so only the cache can answer "not synced").
        assert!(
            rt.block_on(t.ready())
                .unwrap_err()
                .contains("no successful reconcile"),
            "served from the cache"
        );
        let first = t.encode();
        t.reconciled(Duration::ZERO, Err(()));
        assert!(
            Arc::ptr_eq(&first, &t.encode()),
            "the same text within a second"
        );
        assert!(first.contains("wgmesh_reconcile_errors_total 0"));
    }
}
