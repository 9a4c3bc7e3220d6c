//! The unmodified Debian kubectl against test-apiserver (plain commands, no extra flags).

mod common;

use common::{PEER_CRD, Server};
use serde_json::Value;

const NODE_YAML: &str = r#"apiVersion: v1
kind: Node
metadata:
  name: kubectl-node
  labels:
    node-role.kubernetes.io/worker: ""
spec:
  podCIDR: 10.244.7.0/24
status:
  conditions:
  - type: Ready
    status: "True"
    reason: KubeletReady
"#;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("kubectl printed invalid JSON ({e}): {s}"))
}

#[test]
fn kubectl_node_lifecycle() {
    let server = Server::start(&[]);
    let empty = json(&server.kubectl_ok(&["get", "nodes", "-o", "json"]));
    assert_eq!(empty["items"].as_array().map(Vec::len), Some(0));

    let file = server.write_file("node.yaml", NODE_YAML);
    let out = server.kubectl_ok(&["create", "-f", &file]);
    assert!(out.contains("node/kubectl-node created"), "{out}");

    let out = server.kubectl_ok(&[
        "annotate",
        "node",
        "kubectl-node",
        "wgmesh.io/endpoint=192.0.2.7:51820",
    ]);
    assert!(out.contains("annotated"), "{out}");
    let v = server.kubectl_ok(&[
        "get",
        "node",
        "kubectl-node",
        "-o",
        "jsonpath={.metadata.annotations.wgmesh\\.io/endpoint}",
    ]);
    assert_eq!(v, "192.0.2.7:51820");
    server.kubectl_ok(&["label", "node", "kubectl-node", "zone=a"]);

    let list = json(&server.kubectl_ok(&["get", "nodes", "-o", "json"]));
    let item = &list["items"][0];
    assert_eq!(item["metadata"]["name"], "kubectl-node");
    assert_eq!(item["metadata"]["labels"]["zone"], "a");
    assert_eq!(item["status"]["conditions"][0]["type"], "Ready");

    // Human output goes through the server's Table.
    let table = server.kubectl_ok(&["get", "nodes", "-l", "zone=a"]);
    assert!(
        table.contains("kubectl-node") && table.contains("Ready") && table.contains("worker"),
        "{table}"
    );

    let out = server.kubectl_ok(&["delete", "node", "kubectl-node"]);
    assert!(out.contains("deleted"), "{out}");
    let gone = server.kubectl(&["get", "node", "kubectl-node"]);
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("not found"),
        "{gone:?}"
    );
}

#[test]
fn kubectl_reads_events_of_both_apis() {
    let server = Server::start(&[]);
    let core = server.write_file(
        "core-event.yaml",
        r#"apiVersion: v1
kind: Event
metadata:
  name: legacy.1
  namespace: kube-system
involvedObject:
  kind: Node
  name: n1
reason: Legacy
message: from core/v1
type: Normal
source:
  component: kubelet
count: 1
"#,
    );
    server.kubectl_ok(&["create", "-f", &core]);
    let modern = server.write_file(
        "new-event.yaml",
        r#"apiVersion: events.k8s.io/v1
kind: Event
metadata:
  name: modern.1
  namespace: default
eventTime: "2025-01-01T00:00:00.000000Z"
reportingController: wgmesh.io/agent
reportingInstance: agent-n1
action: Configure
reason: PeerAdded
note: from events.k8s.io
type: Normal
regarding:
  kind: Node
  name: n1
"#,
    );
    server.kubectl_ok(&["create", "-f", &modern]);

    let all = json(&server.kubectl_ok(&["get", "events", "-A", "-o", "json"]));
    let items = all["items"].as_array().cloned().unwrap_or_default();
    let find = |reason: &str| {
        items
            .iter()
            .find(|e| e["reason"] == reason)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let legacy = find("Legacy");
    assert_eq!(legacy["message"], "from core/v1");
    assert_eq!(legacy["metadata"]["namespace"], "kube-system");
    let m = find("PeerAdded");
    assert_eq!(m["message"], "from events.k8s.io");
    assert_eq!(m["involvedObject"]["name"], "n1");
    assert_eq!(m["reportingComponent"], "wgmesh.io/agent");

    let v1 = json(&server.kubectl_ok(&[
        "get",
        "events.v1.events.k8s.io",
        "-n",
        "kube-system",
        "-o",
        "json",
    ]));
    assert_eq!(v1["items"][0]["note"], "from core/v1");
    assert_eq!(v1["items"][0]["deprecatedSource"]["component"], "kubelet");

    let table = server.kubectl_ok(&["get", "events", "-A"]);
    assert!(
        table.contains("PeerAdded") && table.contains("node/n1"),
        "{table}"
    );
}

#[test]
fn kubectl_applies_a_crd_and_serves_its_resources() {
    let server = Server::start(&[]);
    let crd = server.write_file("crd.yaml", PEER_CRD);
    let out = server.kubectl_ok(&["apply", "-f", &crd]);
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/peers.wgmesh.io created"),
        "{out}"
    );
    let out = server.kubectl_ok(&["apply", "-f", &crd]);
    assert!(out.contains("unchanged"), "{out}");
    server.kubectl_ok(&[
        "wait",
        "--for",
        "condition=Established",
        "crd/peers.wgmesh.io",
        "--timeout=20s",
    ]);

    let peer = server.write_file(
        "peer.yaml",
        "apiVersion: wgmesh.io/v1alpha1\nkind: Peer\nmetadata:\n  name: node-a\nspec:\n  endpoint: 192.0.2.1:51820\n  publicKey: abc\n",
    );
    let out = server.kubectl_ok(&["create", "-f", &peer]);
    assert!(out.contains("peer.wgmesh.io/node-a created"), "{out}");
    let ep = server.kubectl_ok(&["get", "peer", "node-a", "-o", "jsonpath={.spec.endpoint}"]);
    assert_eq!(ep, "192.0.2.1:51820");
    let obj = json(&server.kubectl_ok(&["get", "peers.wgmesh.io", "node-a", "-o", "json"]));
    assert_eq!(obj["apiVersion"], "wgmesh.io/v1alpha1");
    assert_eq!(obj["kind"], "Peer");
    // Short name and printer columns.
    let table = server.kubectl_ok(&["get", "pe"]);
    assert!(
        table.contains("ENDPOINT") && table.contains("192.0.2.1:51820"),
        "{table}"
    );
    server.kubectl_ok(&["annotate", "peer", "node-a", "x=y"]);
    let out = server.kubectl_ok(&["delete", "-f", &peer]);
    assert!(out.contains("deleted"), "{out}");
}
