//! `GET /metrics`: what the server sent, per verb and resource, as a benchmark of the
//! API traffic reads it.

mod common;

use common::{Server, WAIT, eventually, node};
use futures::StreamExt;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};

/// The server's counters as (name with labels, value).
async fn metrics(client: &kube::Client) -> Vec<(String, u64)> {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    let text = client.request_text(req).await.expect("/metrics");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn value(m: &[(String, u64)], name: &str) -> u64 {
    m.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_bytes_of_lists_and_of_each_watch_event() {
    let server = Server::start(&["--no-fsync"]);
    let client = server.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    for name in ["a", "b"] {
        nodes
            .create(&PostParams::default(), &node(name, serde_json::json!({})))
            .await
            .expect("create");
    }
    let before = metrics(&client).await;

    // A list: its body, byte for byte.
    let req = http::Request::get("/api/v1/nodes")
        .body(Vec::new())
        .expect("request");
    let list = client
        .send(req.map(kube::client::Body::from))
        .await
        .expect("list")
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let list_bytes = "test_apiserver_response_body_bytes_total{verb=\"list\",resource=\"nodes\"}";
    let after_list = metrics(&client).await;
    assert_eq!(
        value(&after_list, list_bytes) - value(&before, list_bytes),
        list.len() as u64
    );
    assert!(
        value(&after_list, "test_apiserver_sent_bytes_total")
            > value(&before, "test_apiserver_sent_bytes_total") + list.len() as u64,
        "the wire carries the body and more (headers, TLS)"
    );

    // A watch from now on: one chunk per event, each about an object's size.
    let rv = nodes
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut stream = nodes
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    let chunks = "test_apiserver_response_body_chunks_total{verb=\"watch\",resource=\"nodes\"}";
    let watch_bytes = "test_apiserver_response_body_bytes_total{verb=\"watch\",resource=\"nodes\"}";
    let start = metrics(&client).await;
    nodes
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"x": "1"}}})),
        )
        .await
        .expect("patch");
    match stream.next().await {
        Some(Ok(WatchEvent::Modified(n))) => assert_eq!(n.metadata.name.as_deref(), Some("a")),
        other => panic!("expected the update, got {other:?}"),
    }
    let end = eventually(WAIT, "the watch event counted", || {
        let client = client.clone();
        let start = value(&start, chunks);
        async move {
            let m = metrics(&client).await;
            (value(&m, chunks) > start).then_some(m)
        }
    })
    .await;
    assert_eq!(value(&end, chunks) - value(&start, chunks), 1);
    let event = value(&end, watch_bytes) - value(&start, watch_bytes);
    let object = serde_json::to_vec(&nodes.get("a").await.expect("get"))
        .expect("json")
        .len() as u64;
    assert!(
        event > object / 2 && event < object * 2,
        "an event of {event} bytes for an object of {object}"
    );
}
