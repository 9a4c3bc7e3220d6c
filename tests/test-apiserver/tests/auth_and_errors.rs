//! Authentication, transport and error handling: no or wrong token gets 401, plain HTTP
//! is refused, the OpenAPI v2 document comes in the encoding asked for, and bad input of
//! every kind gets the right `kind: Status` error while the server keeps serving.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Server, api_code};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_tokens_get_401() {
    let server = Server::start(&[]);
    let mut none = server.config().await;
    none.auth_info.token = None;
    let mut wrong = server.config().await;
    wrong.auth_info.token = Some("not-the-token".to_string().into());
    for cfg in [none, wrong] {
        let nodes: Api<Node> = Api::all(kube::Client::try_from(cfg).expect("client"));
        let (code, reason) = api_code(nodes.list(&ListParams::default()).await.expect_err("401"));
        assert_eq!((code, reason.as_str()), (401, "Unauthorized"));
    }
    let good: Api<Node> = Api::all(server.client().await);
    good.list(&ListParams::default())
        .await
        .expect("the right token works");
}

#[test]
fn plain_http_is_not_served() {
    let server = Server::start(&[]);
    let mut s = TcpStream::connect(server.address()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let token = server.token();
    let request =
        format!("GET /api/v1/nodes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    s.write_all(request.as_bytes()).expect("write");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.0 400 Bad Request"), "{resp:?}");
    assert!(
        resp.contains("Client sent an HTTP request to an HTTPS server."),
        "{resp:?}"
    );
    assert!(!resp.contains("NodeList"));
}

/// Sends a raw request; returns (status, body as JSON).
async fn raw(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("Content-Type", content_type)
        .body(kube::client::Body::from(body.as_bytes().to_vec()))
        .expect("request");
    let resp = client.send(req).await.expect("response");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_status_errors() {
    let server = Server::start(&[]);
    let client = server.client().await;
    let (code, _) = raw(
        &client,
        "POST",
        "/api/v1/nodes",
        "application/json",
        r#"{"metadata":{"name":"ok"}}"#,
    )
    .await;
    assert_eq!(code, 201);
    let json = "application/json";
    let merge = "application/merge-patch+json";
    let cases: Vec<(&str, &str, &str, &str, u16, &str)> = vec![
        (
            "POST",
            "/api/v1/nodes",
            json,
            "{not json",
            400,
            "BadRequest",
        ),
        ("POST", "/api/v1/nodes", json, "[1,2]", 400, "BadRequest"),
        (
            "POST",
            "/api/v1/nodes",
            json,
            r#"{"kind":"Pod","metadata":{"name":"x"}}"#,
            400,
            "BadRequest",
        ),
        (
            "POST",
            "/api/v1/nodes",
            json,
            r#"{"metadata":{"name":"Not_Valid"}}"#,
            422,
            "Invalid",
        ),
        (
            "POST",
            "/api/v1/nodes",
            json,
            r#"{"metadata":{}}"#,
            422,
            "Invalid",
        ),
        (
            "POST",
            "/api/v1/nodes",
            json,
            r#"{"metadata":{"name":"ok"}}"#,
            409,
            "AlreadyExists",
        ),
        (
            "POST",
            "/api/v1/nodes",
            "application/vnd.kubernetes.protobuf",
            "x",
            415,
            "UnsupportedMediaType",
        ),
        (
            "PUT",
            "/api/v1/nodes/ok",
            json,
            r#"{"metadata":{"name":"other"}}"#,
            400,
            "BadRequest",
        ),
        (
            "PUT",
            "/api/v1/nodes/ok",
            json,
            r#"{"metadata":{"name":"ok","resourceVersion":"1"}}"#,
            409,
            "Conflict",
        ),
        (
            "PUT",
            "/api/v1/nodes/missing",
            json,
            r#"{"metadata":{"name":"missing"}}"#,
            404,
            "NotFound",
        ),
        (
            "PATCH",
            "/api/v1/nodes/ok",
            "text/plain",
            "{}",
            415,
            "UnsupportedMediaType",
        ),
        ("PATCH", "/api/v1/nodes/ok", merge, "[1]", 400, "BadRequest"),
        (
            "PATCH",
            "/api/v1/nodes/ok",
            merge,
            "{bad",
            400,
            "BadRequest",
        ),
        (
            "PATCH",
            "/api/v1/nodes/missing",
            merge,
            "{}",
            404,
            "NotFound",
        ),
        (
            "PATCH",
            "/api/v1/nodes/ok",
            "application/json-patch+json",
            r#"[{"op":"remove","path":"/nope/x"}]"#,
            422,
            "Invalid",
        ),
        (
            "PATCH",
            "/api/v1/nodes/ok",
            "application/json-patch+json",
            r#"{"op":"add"}"#,
            400,
            "BadRequest",
        ),
        (
            "PATCH",
            "/api/v1/nodes/ok",
            "application/strategic-merge-patch+json",
            r#"{"status":{"conditions":[{"status":"x"}]}}"#,
            400,
            "BadRequest",
        ),
        (
            "PATCH",
            "/api/v1/nodes/ok",
            "application/apply-patch+yaml",
            "metadata: {name: ok}",
            400,
            "BadRequest",
        ),
        (
            "PATCH",
            "/api/v1/nodes/ok",
            merge,
            r#"{"metadata":{"name":"renamed"}}"#,
            400,
            "BadRequest",
        ),
        (
            "GET",
            "/api/v1/nodes?labelSelector=a%20in%20b",
            json,
            "",
            400,
            "BadRequest",
        ),
        (
            "GET",
            "/api/v1/nodes?watch=1&resourceVersion=abc",
            json,
            "",
            400,
            "BadRequest",
        ),
        ("GET", "/api/v1/nodes/ok/exec", json, "", 404, "NotFound"),
        (
            "GET",
            "/api/v1/namespaces/default/nodes",
            json,
            "",
            404,
            "NotFound",
        ),
        ("GET", "/api/v1/pods", json, "", 404, "NotFound"),
        ("GET", "/apis/nope.io/v1/things", json, "", 404, "NotFound"),
        ("GET", "/totally/unknown", json, "", 404, "NotFound"),
        (
            "POST",
            "/api/v1/namespaces/absent/events",
            json,
            r#"{"metadata":{"name":"e"}}"#,
            404,
            "NotFound",
        ),
        ("DELETE", "/api/v1/nodes/missing", json, "", 404, "NotFound"),
        (
            "DELETE",
            "/api/v1/nodes/ok",
            json,
            r#"{"preconditions":{"uid":"nope"}}"#,
            409,
            "Conflict",
        ),
        (
            "DELETE",
            "/api/v1/namespaces/default",
            json,
            "",
            403,
            "Forbidden",
        ),
        ("POST", "/version", json, "{}", 405, "MethodNotAllowed"),
        // metadata must decode as an ObjectMeta, whatever the way in.
        (
            "POST",
            "/api/v1/nodes",
            json,
            r#"{"metadata":{"name":"typed","labels":"a=b"}}"#,
            400,
            "BadRequest",
        ),
        (
            "PUT",
            "/api/v1/nodes/ok",
            json,
            r#"{"metadata":{"name":"ok","finalizers":"f"}}"#,
            400,
            "BadRequest",
        ),
        (
            "PATCH",
            "/api/v1/nodes/ok",
            merge,
            r#"{"metadata":{"labels":{"a":1}}}"#,
            400,
            "BadRequest",
        ),
    ];
    for (method, path, ct, body, want_code, want_reason) in cases {
        let (code, status) = raw(&client, method, path, ct, body).await;
        assert_eq!(code, want_code, "{method} {path} {body}: {status}");
        assert_eq!(status["kind"], "Status", "{method} {path}");
        assert_eq!(status["code"], want_code, "{method} {path}");
        assert_eq!(
            status["reason"], want_reason,
            "{method} {path} {body}: {status}"
        );
    }
    // Still serving, and nothing was changed by the failed requests.
    let (code, node) = raw(&client, "GET", "/api/v1/nodes/ok", json, "").await;
    assert_eq!(code, 200);
    assert_eq!(node["metadata"]["name"], "ok");
    assert!(node["metadata"]["labels"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_v2_is_served_as_json_or_protobuf_as_the_client_accepts() {
    let server = Server::start(&[]);
    let client = server.client().await;
    let get = |accept: &'static str| {
        let client = client.clone();
        async move {
            let req = http::Request::builder()
                .uri("/openapi/v2")
                .header("Accept", accept)
                .body(kube::client::Body::empty())
                .expect("request");
            let resp = client.send(req).await.expect("response");
            let status = resp.status().as_u16();
            let ct = resp
                .headers()
                .get("Content-Type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            (status, ct, body)
        }
    };
    let (status, ct, body) = get("application/json").await;
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    let doc: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(doc["swagger"], "2.0");
    let op = &doc["paths"]["/api/v1/nodes/{name}"]["patch"];
    assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Node");

    // What client-go's OpenAPISchema() sends; kube-openapi answers with the new name.
    let (status, ct, body) =
        get("application/com.github.proto-openapi.spec.v2@v1.0+protobuf").await;
    assert_eq!(
        (status, ct.as_str()),
        (
            200,
            "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
        )
    );
    // Document.swagger (field 1, length-delimited: tag 0x0a, length 3) comes first.
    assert_eq!(&body[..5], b"\x0a\x032.0");

    let (status, _, body) = get("text/html").await;
    assert_eq!(status, 406);
    assert!(body.is_empty());
}
