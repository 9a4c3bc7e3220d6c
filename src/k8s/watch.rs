//! The watch of all Nodes: kube-runtime's watcher (list, then watch; reconnect with
//! a backoff capped at about a second, see [`crate::retry::WatchBackoff`]; relist on
//! 410 Gone) feeding a reflector store. Adapter.
//!
//! Nodes are stored stripped to what wgmesh reads ([`super::relevant`]), and only a
//! change of that wakes the reconcile loop: kubelet heartbeats and other controllers'
//! updates cost a comparison, not a pass. No polling.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::relevant;

/// Node updates the watch applied, by whether they changed anything wgmesh reads.
#[derive(Debug, Clone, Default)]
pub struct UpdateCounts {
    pub relevant: Arc<AtomicU64>,
    pub ignored: Arc<AtomicU64>,
}

/// Whether a watch event changed the store (and a reconcile pass is due): `Init`
/// (every reconnect, even one that fails next) and `InitApply` (a relist in progress)
/// do not.
pub fn store_changed<K>(event: &watcher::Event<K>) -> bool {
    matches!(
        event,
        watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone
    )
}

/// A running Node watch: the store of every Node, and the task that fills it.
pub struct NodeWatch {
    pub store: Store<Node>,
    task: JoinHandle<()>,
}

impl Drop for NodeWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NodeWatch {
    /// Starts watching; `changed` is notified after each applied event that changed
    /// what wgmesh reads. `local` is this node's name (its NetworkUnavailable condition
    /// is kept; other nodes' are not).
    pub fn start(
        client: kube::Client,
        changed: Arc<Notify>,
        local: &str,
        counts: UpdateCounts,
    ) -> Self {
        let (store, writer) = reflector::store();
        let api: Api<Node> = Api::all(client);
        let local = local.to_string();
        // Whether the update on its way into the store changes what wgmesh reads: judged
        // against the stored object before the reflector replaces it, acted on after.
        let wake = Arc::new(AtomicBool::new(false));
        let (reader, judged) = (store.clone(), wake.clone());
        let updates = watcher(api, watcher::Config::default())
            .modify(move |node| relevant::strip(node, &local))
            .map_ok(move |event| {
                if let watcher::Event::Apply(node) = &event {
                    let stored = reader.get(&ObjectRef::from_obj(node));
                    judged.store(
                        stored.is_none_or(|old| !relevant::same(&old, node)),
                        Ordering::Relaxed,
                    );
                }
                event
            });
        let stream =
            reflector::reflector(writer, updates).backoff(crate::retry::WatchBackoff::default());
        let task = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(_)) => {
                        if wake.swap(false, Ordering::Relaxed) {
                            counts.relevant.fetch_add(1, Ordering::Relaxed);
                            changed.notify_one();
                        } else {
                            counts.ignored.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(e) if store_changed(&e) => changed.notify_one(),
                    Ok(_) => {}
                    // The backoff wrapper retries; one line per failure is enough.
                    Err(e) => {
                        tracing::warn!(error = %e, "node watch interrupted; retrying with backoff")
                    }
                }
            }
        });
        NodeWatch { store, task }
    }

    /// Every Node currently known.
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.store.state()
    }

    /// True once the initial list has completed.
    pub fn is_synced(&self) -> bool {
        // `wait_until_ready` resolves after the first complete list.
        futures::FutureExt::now_or_never(self.store.wait_until_ready()).is_some_and(|r| r.is_ok())
    }
}
