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

/// Two labelled, annotated Nodes, created through kubectl.
fn create_two_nodes(server: &Server) {
    for (name, cidr) in [("list-a", "10.244.11.0/24"), ("list-b", "10.244.12.0/24")] {
        let file = server.write_file(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    zone: z-{name}\n  annotations:\n    wgmesh.io/endpoint: 192.0.2.11:51820\nspec:\n  podCIDR: {cidr}\n"
            ),
        );
        server.kubectl_ok(&["create", "-f", &file]);
    }
}

/// The Nodes the server has, by name (through kubectl, as JSON).
fn nodes_by_name(server: &Server) -> std::collections::BTreeMap<String, Value> {
    let list = json(&server.kubectl_ok(&["get", "nodes", "-o", "json"]));
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["metadata"]["name"].as_str().unwrap_or("").to_string(),
                n.clone(),
            )
        })
        .collect()
}

#[test]
fn kubectl_create_and_apply_restore_nodes_from_the_list_kubectl_printed() {
    let server = Server::start(&[]);
    create_two_nodes(&server);
    let before = nodes_by_name(&server);
    let printed = server.kubectl_ok(&["get", "nodes", "-o", "yaml"]);
    assert!(printed.contains("kind: List"), "{printed}");
    let list = server.write_file("nodes-list.yaml", &printed);

    for verb in ["create", "apply"] {
        server.kubectl_ok(&["delete", "node", "list-a", "list-b"]);
        assert!(nodes_by_name(&server).is_empty());
        // Default validation: no --validate flag.
        let out = server.kubectl_ok(&[verb, "-f", &list]);
        for name in ["list-a", "list-b"] {
            assert!(
                out.contains(&format!("node/{name} created")),
                "{verb}: {out}"
            );
        }
        let after = nodes_by_name(&server);
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            ["list-a", "list-b"],
            "{verb}"
        );
        for (name, node) in &after {
            let old = &before[name];
            assert_eq!(node["spec"], old["spec"], "{verb} {name}");
            assert_eq!(
                node["metadata"]["labels"], old["metadata"]["labels"],
                "{verb} {name}"
            );
            assert_eq!(
                node["metadata"]["annotations"]["wgmesh.io/endpoint"], "192.0.2.11:51820",
                "{verb} {name}"
            );
            // A new object: the server assigns its own uid, as kube-apiserver does.
            assert_ne!(
                node["metadata"]["uid"], old["metadata"]["uid"],
                "{verb} {name}"
            );
        }
    }
}

#[test]
fn kubectl_create_and_apply_restore_a_list_mixing_nodes_a_namespace_and_custom_resources() {
    let server = Server::start(&[]);
    let crd = server.write_file("crd.yaml", PEER_CRD);
    server.kubectl_ok(&["apply", "-f", &crd]);
    server.kubectl_ok(&[
        "wait",
        "--for",
        "condition=Established",
        "crd/peers.wgmesh.io",
        "--timeout=20s",
    ]);
    create_two_nodes(&server);
    let objects = server.write_file(
        "objects.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n  labels:\n    team: a\n---\napiVersion: wgmesh.io/v1alpha1\nkind: Peer\nmetadata:\n  name: peer-a\nspec:\n  endpoint: 192.0.2.21:51820\n",
    );
    server.kubectl_ok(&["create", "-f", &objects]);
    let names = [
        "node/list-a",
        "node/list-b",
        "namespace/team-a",
        "peer/peer-a",
    ];
    let mut get = vec!["get"];
    get.extend(names);
    get.extend(["-o", "yaml"]);
    let printed = server.kubectl_ok(&get);
    assert!(printed.contains("kind: List"), "{printed}");
    let list = server.write_file("mixed-list.yaml", &printed);
    let mut delete = vec!["delete"];
    delete.extend(names);

    for verb in ["create", "apply"] {
        server.kubectl_ok(&delete);
        let out = server.kubectl_ok(&[verb, "-f", &list]);
        for want in [
            "node/list-a created",
            "node/list-b created",
            "namespace/team-a created",
            "peer.wgmesh.io/peer-a created",
        ] {
            assert!(out.contains(want), "{verb}: {want} in {out}");
        }
        assert_eq!(nodes_by_name(&server).len(), 2, "{verb}");
        let team = server.kubectl_ok(&[
            "get",
            "namespace",
            "team-a",
            "-o",
            "jsonpath={.metadata.labels.team}",
        ]);
        assert_eq!(team, "a", "{verb}");
        let ep = server.kubectl_ok(&["get", "peer", "peer-a", "-o", "jsonpath={.spec.endpoint}"]);
        assert_eq!(ep, "192.0.2.21:51820", "{verb}");
    }
}

#[test]
fn kubectl_reports_unknown_kinds_and_malformed_items_of_a_list_and_the_server_stays_up() {
    let server = Server::start(&[]);
    let list = |name: &str, items: &str| {
        server.write_file(
            name,
            &format!("apiVersion: v1\nkind: List\nitems:\n{items}"),
        )
    };
    let failed = |file: &str| {
        let out = server.kubectl(&["create", "-f", file]);
        assert!(!out.status.success(), "{file}: {out:?}");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // An unknown kind fails alone; kubectl still creates the items it knows.
    let unknown = list(
        "unknown.yaml",
        "- apiVersion: v1\n  kind: Node\n  metadata: {name: known}\n- apiVersion: example.com/v1\n  kind: Gadget\n  metadata: {name: g1}\n",
    );
    let (out, err) = failed(&unknown);
    assert!(
        err.contains(r#"no matches for kind "Gadget" in version "example.com/v1""#),
        "{err}"
    );
    assert!(out.contains("node/known created"), "{out}");

    // kubectl's own validation of the items (it needs the OpenAPI v2 document).
    let no_kind = list(
        "no-kind.yaml",
        "- apiVersion: v1\n  metadata: {name: kindless}\n",
    );
    let (_, err) = failed(&no_kind);
    assert!(err.contains("error validating data: kind not set"), "{err}");

    // Items reach the server one by one; it refuses what kube-apiserver refuses.
    let bad_labels = list(
        "bad-labels.yaml",
        "- apiVersion: v1\n  kind: Node\n  metadata: {name: bad-labels, labels: zone-a}\n",
    );
    let (_, err) = failed(&bad_labels);
    assert!(
        err.contains("cannot unmarshal string into Go struct field ObjectMeta.metadata.labels"),
        "{err}"
    );
    let bad_name = list(
        "bad-name.yaml",
        "- apiVersion: v1\n  kind: Node\n  metadata: {name: Bad_Name}\n",
    );
    let (_, err) = failed(&bad_name);
    assert!(
        err.contains(r#"The Node "Bad_Name" is invalid: metadata.name: a lowercase RFC 1123"#),
        "{err}"
    );

    assert_eq!(server.kubectl_ok(&["get", "--raw", "/healthz"]), "ok");
    assert_eq!(nodes_by_name(&server).keys().collect::<Vec<_>>(), ["known"]);
    create_two_nodes(&server);
    assert_eq!(nodes_by_name(&server).len(), 3);
}
