//! The node agent: identity, the Node watch and the level-triggered reconcile loop.
//!
//! A Node change that touches what wgmesh reads (or the periodic resync) wakes the loop,
//! other Node updates do not (see [`crate::k8s::relevant`]); bursts coalesce into one
//! pass; a pass recomputes the whole desired state from the watch's store, publishes
//! this node's advertisement if it differs, reports other nodes' problems as Events,
//! writes the CNI config if it changed, and hands the plan to the data plane. A failed
//! pass is retried with backoff; the agent never exits because of another node's data.

pub mod identity;
pub mod paths;
mod reconcile;
pub mod state;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, sleep, sleep_until};

use crate::dataplane::DataPlane;
use crate::k8s;
use crate::k8s::watch::NodeWatch;
use crate::key::PrivateKey;
use crate::mesh::MeshConfig;
use crate::telemetry::Telemetry;

pub use reconcile::Reconciler;

/// File name of the node's conflist in the CNI configuration directory.
pub const CONFLIST: &str = "10-wgmesh.conflist";
/// The `cniVersion` the conflist declares (see `cni::render_conflist`).
pub const CONFLIST_VERSION: &str = "1.0.0";

/// Bursts of Node events within this window become one reconcile pass.
const COALESCE: Duration = Duration::from_millis(20);
/// How often the data plane's view of peers' paths is read (a pass follows a change).
const PATHS_EVERY: Duration = Duration::from_secs(1);
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Identity(#[from] identity::Error),
    #[error(transparent)]
    Kubernetes(#[from] k8s::Error),
    #[error(transparent)]
    DataPlane(#[from] crate::dataplane::Error),
    #[error(transparent)]
    Netlink(#[from] crate::netlink::Error),
    #[error("cannot serve --metrics-addr {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch the kernel's routes and links: {0}")]
    Monitor(#[source] std::io::Error),
    #[error("writing {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The agent's watches of the API server.
struct Watches {
    nodes: NodeWatch,
    peers: crate::k8s::peers::PeerWatch,
}

impl Watches {
    fn start(
        client: kube::Client,
        changed: &Arc<Notify>,
        local: &str,
        counts: crate::k8s::watch::UpdateCounts,
    ) -> Self {
        Watches {
            nodes: NodeWatch::start(client.clone(), changed.clone(), local, counts),
            peers: crate::k8s::peers::PeerWatch::start(client, changed.clone()),
        }
    }
}

/// Everything `wgmesh agent` is configured with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub kubeconfig: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    /// `mesh.mtu` is used as is when `mtu_from_underlay` is false; otherwise the MTU is
    /// the underlay interface's (the one holding the node's endpoint address) minus
    /// the WireGuard overhead, once that interface is known.
    pub mesh: MeshConfig,
    pub mtu_from_underlay: bool,
    pub resync_interval: Duration,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None`: not served.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Put the node's guard (unreachable routes, nftables drop rule) in place before
    /// anything else at start. False only without a data plane (`--dataplane none`).
    pub install_guard: bool,
}

/// Runs the agent until `shutdown` resolves. Returns an error only for what stops the
/// node from taking part at all (no usable identity, no Kubernetes configuration).
/// `make_dataplane` builds the data plane once the node's identity is loaded.
pub async fn run<D, F>(
    cfg: AgentConfig,
    telemetry: Arc<Telemetry>,
    make_dataplane: F,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error>
where
    D: DataPlane,
    F: FnOnce(&PrivateKey) -> Result<D, crate::dataplane::Error>,
{
    use tracing::Instrument;
    let span = tracing::info_span!("agent", node = %cfg.node_name);
    run_inner(cfg, telemetry, make_dataplane, shutdown)
        .instrument(span)
        .await
}

async fn run_inner<D, F>(
    cfg: AgentConfig,
    telemetry: Arc<Telemetry>,
    make_dataplane: F,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error>
where
    D: DataPlane,
    F: FnOnce(&PrivateKey) -> Result<D, crate::dataplane::Error>,
{
    // The guard first, before the key, the device, the API server or the conflist:
    // after a reboot the conflist is still on disk but the kernel has nothing, and no
    // pod may get a network (wgmesh-cni checks) until pod traffic cannot leave in clear.
    if cfg.install_guard {
        let saved = state::load(&cfg.state_dir);
        let guarded = crate::dataplane::guard::install_early(&cfg.mesh, saved.as_ref()).await?;
        tracing::info!(prefixes = ?guarded, "node guard in place");
    }
    let key = identity::load_or_generate(&cfg.state_dir)?;
    let public_key = key.public_key();
    tracing::info!(public_key = %public_key, state_dir = %cfg.state_dir.display(), "starting");
    let mut dataplane = make_dataplane(&key)?;
    drop(key);
    let server = match cfg.metrics_addr {
        Some(addr) => Some(
            crate::telemetry::http::serve(addr, telemetry.clone())
                .await
                .map_err(|source| Error::Listen { addr, source })?,
        ),
        None => None,
    };

    // The last-known-good mesh first: a restart must not wait for the API server.
    if let Some(plan) = state::load(&cfg.state_dir) {
        match dataplane.apply(&plan).await {
            Ok(()) => tracing::info!(peers = plan.peers.len(), "applied the saved mesh"),
            Err(e) => tracing::warn!(error = %e, "could not apply the saved mesh"),
        }
    }

    let client = k8s::client(cfg.kubeconfig.as_deref()).await?;
    let wakers = crate::dataplane::monitor::Wakers::default();
    let changed = wakers.changed.clone();
    let address_removed = wakers.address_removed.clone();
    let mut watches = Watches::start(
        client.clone(),
        &changed,
        &cfg.node_name,
        telemetry.node_updates(),
    );
    // Deleted routes, links or addresses wake the loop at once, not at the next resync.
    let monitor = crate::dataplane::monitor::spawn(wakers).map_err(Error::Monitor)?;
    let mut reconciler = Reconciler::new(cfg.clone(), client, public_key)?;

    let dataplane_changed = dataplane.changed();
    let mut resync = tokio::time::interval(cfg.resync_interval);
    // Peers' paths (NATs, relays) change with traffic, not with API events.
    let mut paths_tick = tokio::time::interval(PATHS_EVERY);
    paths_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry_at: Option<Instant> = None;
    let mut retry_delay = RETRY_MIN;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = changed.notified() => {}
            _ = address_removed.notified() => {
                // Connections from a removed address are dead but do not know it yet.
                match k8s::client(cfg.kubeconfig.as_deref()).await {
                    Ok(client) => {
                        tracing::info!("a local address was removed; reconnecting to the API server");
                        watches = Watches::start(
                            client.clone(),
                            &changed,
                            &cfg.node_name,
                            telemetry.node_updates(),
                        );
                        reconciler.set_client(client);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot reconnect to the API server"),
                }
            }
            _ = resync.tick() => {}
            _ = paths_tick.tick() => {
                if !reconciler.observe(&dataplane) {
                    continue;
                }
            }
            _ = async {
                match &dataplane_changed {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            } => {}
            _ = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {}
        }
        sleep(COALESCE).await;
        telemetry.progressed();
        if !watches.nodes.is_synced() {
            continue;
        }
        let started = std::time::Instant::now();
        let result = reconciler
            .reconcile(
                &watches.nodes.nodes(),
                &watches.peers.peers(),
                &mut dataplane,
            )
            .await;
        telemetry.set_blocked(reconciler.blocked());
        telemetry.reconciled(
            started.elapsed(),
            result
                .as_ref()
                .map_err(|_| ())
                .and_then(|()| reconciler.plan().ok_or(())),
        );
        match result {
            Ok(()) => {
                retry_at = None;
                retry_delay = RETRY_MIN;
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?retry_delay, "reconcile failed");
                retry_at = Some(Instant::now() + crate::retry::jittered(retry_delay));
                retry_delay = (retry_delay * 2).min(RETRY_MAX);
            }
        }
    }
    monitor.abort();
    if let Some(s) = server {
        s.abort();
    }
    // Routes and rules stay: a restarting agent must not open a window in which pod
    // traffic could leave unencrypted.
    tracing::info!("stopping; the data plane stays in place");
    Ok(())
}
