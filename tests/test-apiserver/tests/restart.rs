//! Stopping and restarting with the same data directory: objects, credentials and
//! resourceVersions survive; clients keep working; watchers relist.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{PEER_CRD, Server, WAIT, eventually, node};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;

fn rv(s: Option<String>) -> u64 {
    s.and_then(|s| s.parse().ok())
        .expect("numeric resourceVersion")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_objects_credentials_and_resource_versions() {
    let mut server = Server::start(&[]);
    let client = server.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let a = nodes
        .create(&PostParams::default(), &node("keep-a", json!({"k": "v"})))
        .await
        .expect("create");
    nodes
        .patch(
            "keep-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"x": "1"}}})),
        )
        .await
        .expect("patch");
    nodes
        .create(&PostParams::default(), &node("keep-b", json!({})))
        .await
        .expect("create");
    server.kubectl_ok(&["apply", "-f", &server.write_file("crd.yaml", PEER_CRD)]);
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("wgmesh.io", "v1alpha1", "Peer"),
        "peers",
    );
    let peers: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let p: DynamicObject = serde_json::from_value(json!({"apiVersion": "wgmesh.io/v1alpha1", "kind": "Peer", "metadata": {"name": "p1"}, "spec": {"k": 1}}))
        .expect("peer");
    peers
        .create(&PostParams::default(), &p)
        .await
        .expect("create peer");
    let recorder = kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: "t".into(),
            instance: None,
        },
    );
    recorder
        .publish(
            &kube::runtime::events::Event {
                type_: kube::runtime::events::EventType::Normal,
                reason: "Before".into(),
                note: None,
                action: "Restart".into(),
                secondary: None,
            },
            &a.object_ref(&()),
        )
        .await
        .expect("event");
    let max_rv = rv(nodes
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version);
    let kubeconfig_before = std::fs::read(server.kubeconfig()).expect("kubeconfig");
    let ca_before = std::fs::read(server.data_dir().join("ca.crt")).expect("ca");

    server.restart();

    assert_eq!(
        std::fs::read(server.kubeconfig()).expect("kubeconfig"),
        kubeconfig_before,
        "same URL, CA and token"
    );
    assert_eq!(
        std::fs::read(server.data_dir().join("ca.crt")).expect("ca"),
        ca_before
    );
    // The client built before the restart still works (same CA, same token).
    let list = nodes
        .list(&ListParams::default())
        .await
        .expect("old client lists");
    assert_eq!(
        rv(list.metadata.resource_version.clone()),
        max_rv,
        "resourceVersion continues"
    );
    let names: BTreeSet<String> = list.items.iter().map(|n| n.name_any()).collect();
    assert_eq!(
        names,
        ["keep-a", "keep-b"].iter().map(|s| s.to_string()).collect()
    );
    let a2 = nodes.get("keep-a").await.expect("get");
    assert_eq!(a2.uid(), a.uid());
    assert_eq!(a2.annotations().get("x").map(String::as_str), Some("1"));
    assert_eq!(
        peers.get("p1").await.expect("peer survives").data["spec"]["k"],
        1
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::all(client.clone());
    assert!(
        events
            .list(&ListParams::default())
            .await
            .expect("events")
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Before"))
    );

    let c = nodes
        .create(&PostParams::default(), &node("after", json!({})))
        .await
        .expect("create after restart");
    assert!(
        rv(c.resource_version()) > max_rv,
        "new resourceVersions are higher than any before"
    );
    // kubectl with the unchanged kubeconfig too.
    assert!(server.kubectl_ok(&["get", "nodes"]).contains("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_relists_across_a_restart_and_converges() {
    let mut server = Server::start(&["--bookmark-interval", "1h"]);
    let client = server.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let (store, writer) = reflector::store();
    let inits = Arc::new(AtomicUsize::new(0));
    let counter = inits.clone();
    let stream = watcher(
        nodes.clone(),
        watcher::Config::default().disable_bookmarks(),
    )
    .default_backoff()
    .inspect(move |ev| {
        if matches!(ev, Ok(watcher::Event::Init)) {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    })
    .reflect(writer)
    .applied_objects();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while stream.next().await.is_some() {}
    });
    store.wait_until_ready().await.expect("ready");
    nodes
        .create(&PostParams::default(), &node("x1", json!({})))
        .await
        .expect("create");
    eventually(WAIT, "x1 seen", || async {
        store.get(&reflector::ObjectRef::new("x1")).map(|_| ())
    })
    .await;
    // Move the global resourceVersion past the watcher's with another type, so that
    // after the restart its rv is older than anything the server can replay.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    let ev: k8s_openapi::api::core::v1::Event =
        serde_json::from_value(json!({"metadata": {"name": "bump"}, "involvedObject": {"kind": "Node", "name": "x1"}, "reason": "Bump"}))
            .expect("event");
    events
        .create(&PostParams::default(), &ev)
        .await
        .expect("event");

    server.restart();

    nodes
        .create(&PostParams::default(), &node("x2", json!({})))
        .await
        .expect("create after restart");
    let want: BTreeSet<String> = ["x1", "x2"].iter().map(|s| s.to_string()).collect();
    eventually(WAIT, "watcher converges after restart", || async {
        (store
            .state()
            .iter()
            .map(|n| n.name_any())
            .collect::<BTreeSet<_>>()
            == want)
            .then_some(())
    })
    .await;
    assert!(
        inits.load(Ordering::SeqCst) >= 2,
        "the watcher relisted (its rv expired with the restart)"
    );
    task.abort();
}
