//! kube-rs against test-apiserver: CRUD, patches, status, watches, the runtime watcher
//! and reflector (including a relist after 410 Expired), the events Recorder, and
//! custom resources.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Server, WAIT, api_code, eventually, node};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;

fn condition<'a>(n: &'a Node, t: &str) -> Option<&'a k8s_openapi::api::core::v1::NodeCondition> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_crud_patches_status_and_conflicts() {
    let server = Server::start(&[]);
    let nodes: Api<Node> = Api::all(server.client().await);

    let a = nodes
        .create(
            &PostParams::default(),
            &node("node-a", json!({"role": "worker"})),
        )
        .await
        .expect("create a");
    nodes
        .create(
            &PostParams::default(),
            &node("node-b", json!({"role": "edge"})),
        )
        .await
        .expect("create b");
    assert!(a.metadata.uid.is_some() && a.metadata.creation_timestamp.is_some());
    assert_eq!(
        condition(&a, "Ready").map(|c| c.status.as_str()),
        Some("False"),
        "create keeps status"
    );

    // Lists with selectors.
    let all = nodes.list(&ListParams::default()).await.expect("list");
    assert_eq!(all.items.len(), 2);
    assert!(all.metadata.resource_version.is_some());
    let workers = nodes
        .list(&ListParams::default().labels("role=worker"))
        .await
        .expect("list");
    assert_eq!(
        workers
            .items
            .iter()
            .map(|n| n.name_any())
            .collect::<Vec<_>>(),
        ["node-a"]
    );
    let by_name = nodes
        .list(
            &ListParams::default()
                .fields("metadata.name=node-b")
                .limit(1),
        )
        .await
        .expect("list");
    assert_eq!(
        by_name
            .items
            .iter()
            .map(|n| n.name_any())
            .collect::<Vec<_>>(),
        ["node-b"]
    );

    // Duplicate create and missing get.
    let (code, reason) = api_code(
        nodes
            .create(&PostParams::default(), &node("node-a", json!({})))
            .await
            .expect_err("dup"),
    );
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));
    let (code, reason) = api_code(nodes.get("nope").await.expect_err("missing"));
    assert_eq!((code, reason.as_str()), (404, "NotFound"));

    // Merge patch of annotations.
    let patched = nodes
        .patch(
            "node-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"wgmesh.io/public-key": "abc"}}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        patched
            .annotations()
            .get("wgmesh.io/public-key")
            .map(String::as_str),
        Some("abc")
    );
    assert!(
        rv_of(&patched) > rv_of(&a),
        "a patch gets a newer resourceVersion"
    );

    // Strategic merge of one condition through /status keeps the others.
    let status_patch = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ok"}]}});
    let st = nodes
        .patch_status(
            "node-a",
            &PatchParams::default(),
            &Patch::Strategic(status_patch),
        )
        .await
        .expect("status patch");
    assert_eq!(
        condition(&st, "Ready").map(|c| c.status.as_str()),
        Some("True")
    );
    assert_eq!(
        condition(&st, "MemoryPressure").map(|c| c.status.as_str()),
        Some("False"),
        "other condition kept"
    );
    assert_eq!(
        st.annotations()
            .get("wgmesh.io/public-key")
            .map(String::as_str),
        Some("abc")
    );

    // Status changes through the main resource are ignored, as for real Nodes.
    let main = nodes
        .patch(
            "node-a",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"conditions": []}, "metadata": {"labels": {"x": "y"}}}),
            ),
        )
        .await
        .expect("main patch");
    assert_eq!(
        condition(&main, "Ready").map(|c| c.status.as_str()),
        Some("True")
    );
    assert_eq!(main.labels().get("x").map(String::as_str), Some("y"));

    // JSON patch.
    let jp: json_patch::Patch =
        serde_json::from_value(json!([{"op": "add", "path": "/metadata/labels/jp", "value": "1"}]))
            .expect("patch");
    let j = nodes
        .patch("node-a", &PatchParams::default(), &Patch::Json::<()>(jp))
        .await
        .expect("json patch");
    assert_eq!(j.labels().get("jp").map(String::as_str), Some("1"));

    // Server-side apply (simplified) creates and merges.
    let ssa = PatchParams::apply("wgmesh-test");
    let applied = nodes
        .patch("node-c", &ssa, &Patch::Apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-c", "labels": {"a": "1"}}})))
        .await
        .expect("apply creates");
    assert_eq!(applied.labels().get("a").map(String::as_str), Some("1"));
    let applied = nodes
        .patch("node-c", &ssa, &Patch::Apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-c", "annotations": {"b": "2"}}})))
        .await
        .expect("apply merges");
    assert_eq!(applied.labels().get("a").map(String::as_str), Some("1"));
    assert_eq!(
        applied.annotations().get("b").map(String::as_str),
        Some("2")
    );

    // Update with a stale resourceVersion: 409 Conflict; with the current one: fine.
    let mut stale = a.clone();
    stale.metadata.labels = Some([("stale".to_string(), "yes".to_string())].into());
    let (code, reason) = api_code(
        nodes
            .replace("node-a", &PostParams::default(), &stale)
            .await
            .expect_err("stale"),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    let mut fresh = nodes.get("node-a").await.expect("get");
    fresh
        .metadata
        .labels
        .get_or_insert_default()
        .insert("fresh".into(), "yes".into());
    let replaced = nodes
        .replace("node-a", &PostParams::default(), &fresh)
        .await
        .expect("replace");
    assert_eq!(
        replaced.labels().get("fresh").map(String::as_str),
        Some("yes")
    );

    // A no-op update keeps the resourceVersion (no new event).
    let same = nodes
        .replace("node-a", &PostParams::default(), &replaced)
        .await
        .expect("no-op replace");
    assert_eq!(same.resource_version(), replaced.resource_version());

    // Delete.
    nodes
        .delete("node-b", &DeleteParams::default())
        .await
        .expect("delete");
    let (code, _) = api_code(nodes.get("node-b").await.expect_err("deleted"));
    assert_eq!(code, 404);
}

fn rv_of(n: &Node) -> u64 {
    n.resource_version()
        .and_then(|rv| rv.parse().ok())
        .expect("numeric resourceVersion")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_watch_sees_added_modified_deleted_in_order() {
    let server = Server::start(&[]);
    let nodes: Api<Node> = Api::all(server.client().await);
    let start_rv = nodes
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut stream = nodes
        .watch(&WatchParams::default().timeout(30), &start_rv)
        .await
        .expect("watch")
        .boxed();

    nodes
        .create(&PostParams::default(), &node("w1", json!({})))
        .await
        .expect("create");
    nodes
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"k": "v"}}})),
        )
        .await
        .expect("patch");
    nodes
        .delete("w1", &DeleteParams::default())
        .await
        .expect("delete");

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let ev = tokio::time::timeout(WAIT, stream.try_next())
            .await
            .expect("event in time")
            .expect("stream ok")
            .expect("open");
        match ev {
            WatchEvent::Added(n) => seen.push(("ADDED", rv_of(&n))),
            WatchEvent::Modified(n) => seen.push(("MODIFIED", rv_of(&n))),
            WatchEvent::Deleted(n) => seen.push(("DELETED", rv_of(&n))),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        }
    }
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        ["ADDED", "MODIFIED", "DELETED"]
    );
    assert!(
        seen.windows(2).all(|w| w[0].1 < w[1].1),
        "resourceVersions increase: {seen:?}"
    );
}

/// Runs a reflector over `cfg`; returns its store and a counter of (re)lists.
fn run_reflector(
    api: Api<Node>,
    cfg: watcher::Config,
) -> (
    reflector::Store<Node>,
    Arc<AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let (reader, writer) = reflector::store();
    let inits = Arc::new(AtomicUsize::new(0));
    let counter = inits.clone();
    let stream = watcher(api, cfg)
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
    (reader, inits, task)
}

fn names(store: &reflector::Store<Node>) -> BTreeSet<String> {
    store.state().iter().map(|n| n.name_any()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_and_reflector_converge_in_both_list_modes() {
    let server = Server::start(&["--bookmark-interval", "200ms"]);
    let nodes: Api<Node> = Api::all(server.client().await);
    nodes
        .create(&PostParams::default(), &node("pre", json!({})))
        .await
        .expect("create");

    let (list_store, _, t1) = run_reflector(nodes.clone(), watcher::Config::default());
    let (stream_store, _, t2) =
        run_reflector(nodes.clone(), watcher::Config::default().streaming_lists());
    list_store.wait_until_ready().await.expect("ready");
    stream_store.wait_until_ready().await.expect("ready");

    for n in ["r1", "r2", "r3"] {
        nodes
            .create(&PostParams::default(), &node(n, json!({})))
            .await
            .expect("create");
    }
    nodes
        .patch(
            "r1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"seen": "yes"}}})),
        )
        .await
        .expect("patch");
    nodes
        .delete("r2", &DeleteParams::default())
        .await
        .expect("delete");

    let want: BTreeSet<String> = ["pre", "r1", "r3"].iter().map(|s| s.to_string()).collect();
    for store in [&list_store, &stream_store] {
        eventually(WAIT, "reflector converges", || async {
            let annotated = store
                .state()
                .iter()
                .any(|n| n.name_any() == "r1" && n.annotations().contains_key("seen"));
            (names(store) == want && annotated).then_some(())
        })
        .await;
    }
    t1.abort();
    t2.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_old_resource_version_gives_410_and_the_watcher_relists() {
    let server = Server::start(&["--watch-history", "2", "--bookmark-interval", "1h"]);
    let nodes: Api<Node> = Api::all(server.client().await);
    let old_rv = nodes
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");

    // A watcher that only sees labelled nodes, so its resourceVersion stays behind while
    // other nodes churn; no bookmarks and 1 s watches so it soon resumes from that rv.
    let cfg = watcher::Config::default()
        .labels("mesh=yes")
        .timeout(1)
        .disable_bookmarks();
    let (store, inits, task) = run_reflector(nodes.clone(), cfg);
    store.wait_until_ready().await.expect("ready");
    nodes
        .create(&PostParams::default(), &node("m1", json!({"mesh": "yes"})))
        .await
        .expect("create");
    eventually(WAIT, "m1 in the store", || async {
        names(&store).contains("m1").then_some(())
    })
    .await;
    assert_eq!(inits.load(Ordering::SeqCst), 1);

    for i in 0..5 {
        nodes
            .create(
                &PostParams::default(),
                &node(&format!("other{i}"), json!({})),
            )
            .await
            .expect("create");
    }
    // Resuming from an rv older than the kept history: ERROR 410 Expired.
    let mut stream = nodes
        .watch(&WatchParams::default(), &old_rv)
        .await
        .expect("watch")
        .boxed();
    match tokio::time::timeout(WAIT, stream.try_next())
        .await
        .expect("in time")
        .expect("ok")
    {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    // A list with that rv is still fine (it serves the current state).
    assert_eq!(
        nodes
            .list(&ListParams::default().labels("mesh=yes"))
            .await
            .expect("list")
            .items
            .len(),
        1
    );

    eventually(WAIT, "the watcher to relist after 410", || async {
        (inits.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    nodes
        .create(&PostParams::default(), &node("m2", json!({"mesh": "yes"})))
        .await
        .expect("create");
    let want: BTreeSet<String> = ["m1", "m2"].iter().map(|s| s.to_string()).collect();
    eventually(WAIT, "store converges after relist", || async {
        (names(&store) == want).then_some(())
    })
    .await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorder_events_show_up_as_core_v1_events() {
    let server = Server::start(&[]);
    let client = server.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let n = nodes
        .create(&PostParams::default(), &node("ev-node", json!({})))
        .await
        .expect("create");

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "wgmesh-agent".into(),
            instance: Some("agent-ev-node".into()),
        },
    );
    let ev = Event {
        type_: EventType::Normal,
        reason: "PeerAdded".into(),
        note: Some("added peer node-b".into()),
        action: "Configure".into(),
        secondary: None,
    };
    recorder
        .publish(&ev, &n.object_ref(&()))
        .await
        .expect("publish");
    // The second publish of the same event patches its series.
    recorder
        .publish(&ev, &n.object_ref(&()))
        .await
        .expect("publish again");

    for events in [
        Api::<CoreEvent>::all(client.clone()),
        Api::<CoreEvent>::namespaced(client.clone(), "default"),
    ] {
        let list = events
            .list(&ListParams::default())
            .await
            .expect("list core/v1 events");
        let e = list
            .items
            .iter()
            .find(|e| e.reason.as_deref() == Some("PeerAdded"))
            .expect("recorded event");
        assert_eq!(e.message.as_deref(), Some("added peer node-b"));
        assert_eq!(e.involved_object.name.as_deref(), Some("ev-node"));
        assert_eq!(e.involved_object.kind.as_deref(), Some("Node"));
        assert_eq!(e.reporting_component.as_deref(), Some("wgmesh-agent"));
        assert_eq!(e.reporting_instance.as_deref(), Some("agent-ev-node"));
        assert_eq!(e.type_.as_deref(), Some("Normal"));
        assert_eq!(e.series.as_ref().map(|s| s.count), Some(Some(2)));
        assert!(e.event_time.is_some());
    }
    let selected = Api::<CoreEvent>::all(client.clone())
        .list(&ListParams::default().fields("involvedObject.name=ev-node"))
        .await
        .expect("list by field");
    assert_eq!(selected.items.len(), 1);
    // And back through events.k8s.io/v1.
    let v1: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client, "default");
    let items = v1
        .list(&ListParams::default())
        .await
        .expect("list events.k8s.io")
        .items;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].note.as_deref(), Some("added peer node-b"));
    assert_eq!(
        items[0].regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("ev-node")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_from_a_crd() {
    let server = Server::start(&[]);
    let client = server.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(
        serde_json::to_value(
            serde_saphyr::from_str::<serde_json::Value>(common::PEER_CRD).expect("yaml"),
        )
        .expect("json"),
    )
    .expect("crd");
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("create crd");
    let established = crds.get("peers.wgmesh.io").await.expect("get crd");
    let conds = established
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );

    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("wgmesh.io", "v1alpha1", "Peer"),
        "peers",
    );
    let peers: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let mut watch = peers
        .watch(&WatchParams::default().timeout(30), "0")
        .await
        .expect("watch")
        .boxed();
    let peer: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "wgmesh.io/v1alpha1", "kind": "Peer",
        "metadata": {"name": "node-a"},
        "spec": {"endpoint": "192.0.2.1:51820", "publicKey": "abc"},
        "status": {"ignored": true}
    }))
    .expect("peer");
    let created = peers
        .create(&PostParams::default(), &peer)
        .await
        .expect("create peer");
    assert_eq!(created.data["spec"]["endpoint"], "192.0.2.1:51820");
    assert!(
        created.data.get("status").is_none(),
        "status is not settable on create with a status subresource"
    );
    assert_eq!(created.metadata.generation, Some(1));

    let st = peers
        .patch_status(
            "node-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"handshake": "ok"}})),
        )
        .await
        .expect("status patch");
    assert_eq!(st.data["status"]["handshake"], "ok");
    assert_eq!(
        st.metadata.generation,
        Some(1),
        "status does not bump generation"
    );
    let spec = peers
        .patch(
            "node-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"endpoint": "192.0.2.2:51820"}})),
        )
        .await
        .expect("spec patch");
    assert_eq!(spec.metadata.generation, Some(2));
    assert_eq!(spec.data["status"]["handshake"], "ok");

    // Strategic merge patch is not served for custom resources (as in kube-apiserver).
    let (code, _) = api_code(
        peers
            .patch(
                "node-a",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {}})),
            )
            .await
            .expect_err("415"),
    );
    assert_eq!(code, 415);

    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        match tokio::time::timeout(WAIT, watch.try_next())
            .await
            .expect("in time")
            .expect("ok")
            .expect("open")
        {
            WatchEvent::Added(_) => kinds.push("ADDED"),
            WatchEvent::Modified(_) => kinds.push("MODIFIED"),
            WatchEvent::Deleted(_) => kinds.push("DELETED"),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(kinds, ["ADDED", "MODIFIED", "MODIFIED"]);

    // Deleting the CRD removes its resources and stops serving them.
    crds.delete("peers.wgmesh.io", &DeleteParams::default())
        .await
        .expect("delete crd");
    let (code, _) = api_code(peers.list(&ListParams::default()).await.expect_err("gone"));
    assert_eq!(code, 404);
}
