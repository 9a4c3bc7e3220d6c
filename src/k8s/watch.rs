//! The watch of all Nodes: kube-runtime's watcher (list, then watch; reconnect with
//! a backoff capped at about a second, see [`crate::retry::WatchBackoff`]; relist on
//! 410 Gone) feeding a reflector store. Every change wakes the
//! reconcile loop; no polling. Adapter.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

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
    /// Starts watching; `changed` is notified after each applied event.
    pub fn start(client: kube::Client, changed: Arc<Notify>) -> Self {
        let (store, writer) = reflector::store();
        let api: Api<Node> = Api::all(client);
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .backoff(crate::retry::WatchBackoff::default());
        let task = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                match event {
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
