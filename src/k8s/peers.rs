//! `Peer` objects (`peers.wgmesh.io/v1alpha1`, cluster-scoped): external WireGuard peers.
//! Read as dynamic objects, so the agent needs no generated types; watched like Nodes.
//! A cluster without the CRD simply has no peers. Adapter (plus the pure translation).

use std::sync::Arc;

use futures::StreamExt;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::mesh::PeerView;

pub const GROUP: &str = "wgmesh.io";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "Peer";
pub const PLURAL: &str = "peers";

/// The API resource of `Peer`.
pub fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, KIND), PLURAL)
}

/// The parts of a Peer the mesh reads. Pure.
pub fn peer_view(obj: &DynamicObject) -> PeerView {
    let spec = obj.data.get("spec").cloned().unwrap_or(Value::Null);
    let text = |k: &str| spec.get(k).and_then(Value::as_str).map(String::from);
    PeerView {
        name: obj.metadata.name.clone().unwrap_or_default(),
        public_key: text("publicKey"),
        allowed_ips: strings(spec.get("allowedIPs")),
        endpoint: text("endpoint"),
        persistent_keepalive: spec.get("persistentKeepalive").and_then(Value::as_i64),
        allowed_destinations: strings(spec.get("allowedDestinations")),
    }
}

/// A JSON list as strings; a non-string item is kept as its JSON text, so validation
/// reports it instead of it vanishing.
fn strings(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|v| {
                    v.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A running watch of Peer objects.
pub struct PeerWatch {
    pub store: Store<DynamicObject>,
    task: JoinHandle<()>,
}

impl Drop for PeerWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PeerWatch {
    /// Starts watching; `changed` is notified after each applied event. Without the
    /// CRD the watch keeps retrying, up to 15 s apart, quietly after the first note.
    pub fn start(client: kube::Client, changed: Arc<Notify>) -> Self {
        let ar = resource();
        let writer = reflector::store::Writer::new(ar.clone());
        let store = writer.as_reader();
        let api: Api<DynamicObject> = Api::all_with(client, &ar);
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .backoff(crate::retry::QuietBackoff::default());
        let task = tokio::spawn(async move {
            futures::pin_mut!(stream);
            let mut warned = false;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(e) if super::watch::store_changed(&e) => changed.notify_one(),
                    Ok(_) => {}
                    Err(e) if !warned => {
                        tracing::info!(error = %e, "no Peer objects (is the peers.wgmesh.io CRD installed?); retrying");
                        warned = true;
                    }
                    Err(e) => tracing::debug!(error = %e, "peer watch still failing"),
                }
            }
        });
        PeerWatch { store, task }
    }

    /// Every Peer currently known (none until the CRD exists).
    pub fn peers(&self) -> Vec<PeerView> {
        self.store.state().iter().map(|p| peer_view(p)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_object_becomes_a_view() {
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "wgmesh.io/v1alpha1", "kind": "Peer",
            "metadata": {"name": "laptop"},
            "spec": {"publicKey": "k", "allowedIPs": ["10.99.0.5/32", 7], "endpoint": "203.0.113.10:51820", "persistentKeepalive": 25}
        }))
        .unwrap();
        let v = peer_view(&obj);
        assert_eq!(v.name, "laptop");
        assert_eq!(v.public_key.as_deref(), Some("k"));
        assert_eq!(
            v.allowed_ips,
            ["10.99.0.5/32", "7"],
            "non-strings are kept, to be refused with a reason"
        );
        assert_eq!(v.endpoint.as_deref(), Some("203.0.113.10:51820"));
        assert_eq!(v.persistent_keepalive, Some(25));
        let empty: DynamicObject = serde_json::from_value(serde_json::json!({"apiVersion": "wgmesh.io/v1alpha1", "kind": "Peer", "metadata": {"name": "x"}})).unwrap();
        assert_eq!(
            peer_view(&empty),
            PeerView {
                name: "x".into(),
                ..PeerView::default()
            }
        );
    }
}
