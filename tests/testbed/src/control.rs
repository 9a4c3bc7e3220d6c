//! What every testbed topology shares around its nodes (test infrastructure): the API
//! server as nodes reach it (the relay at 198.51.100.10:6443, or [2001:db8:198::10]:6443
//! over an IPv6 underlay, and their kubeconfig),
//! waiting until the agents' mesh has converged, the failure diagnostics, and tearing
//! the nodes down.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use crate::addressing::{self, API_PORT};
use crate::exec;
use crate::kube::Kube;
use crate::netns::NetNs;
use crate::node::Node;
use crate::relay::Relay;
use crate::{MESH_WAIT, TestApiServer, annotation};

/// Makes the API server reachable from the nodes at `api_ip` (an address of
/// `api_host`, and a SAN of the server's certificate): writes their kubeconfig to
/// `node_kubeconfig` and starts the relay in `api_host`. Returns the relay and the
/// testbed's own client.
pub(crate) fn connect(
    api: &TestApiServer,
    api_host: &NetNs,
    api_ip: IpAddr,
    node_kubeconfig: &Path,
) -> (Relay, Kube) {
    let listen = SocketAddr::new(api_ip, API_PORT);
    write_node_kubeconfig(api, &format!("https://{listen}"), node_kubeconfig);
    let relay = Relay::start(
        &api_host.path(),
        listen,
        SocketAddr::from((Ipv4Addr::LOCALHOST, api.port())),
    );
    (relay, Kube::connect(&api.kubeconfig()))
}

/// Writes the agents' kubeconfig: the server's own, with the URL nodes reach it at.
fn write_node_kubeconfig(api: &TestApiServer, node_url: &str, path: &Path) {
    let text = std::fs::read_to_string(api.kubeconfig())
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", api.kubeconfig().display()));
    assert!(
        text.contains(&api.url),
        "the API server's kubeconfig does not name {}:\n{text}",
        api.url
    );
    let text = text.replace(&api.url, node_url);
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Installs the Peer CRD of the shipped manifest (`manifests/wgmesh.yaml`) with
/// kubectl, as a real installation has it; `dir` receives the extracted file.
pub(crate) fn install_peer_crd(api: &TestApiServer, dir: &Path) {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../manifests/wgmesh.yaml");
    let all =
        std::fs::read_to_string(manifest).unwrap_or_else(|e| panic!("cannot read {manifest}: {e}"));
    let crd = all
        .split("\n---")
        .find(|doc| {
            doc.contains("kind: CustomResourceDefinition") && doc.contains("name: peers.wgmesh.io")
        })
        .unwrap_or_else(|| panic!("no Peer CRD in {manifest}"));
    let path = dir.join("peer-crd.yaml");
    std::fs::write(&path, crd).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    api.kubectl_ok(&["apply", "-f", &path.to_string_lossy()]);
}

/// Waits (up to [`MESH_WAIT`]) until every node of `nodes` with a running agent has
/// published its annotations (key, endpoint `<InternalIP>:51820` of its underlay's
/// family, its pod CIDRs of every family), written
/// its conflist, and lists as peers exactly the other nodes whose Node object exists and
/// carries a public key. Panics with `diagnostics()` otherwise.
pub(crate) fn wait_for_mesh(nodes: &[&Node], kube: &Kube, diagnostics: impl Fn() -> String) {
    let mut last = String::new();
    let converged = exec::poll_until(MESH_WAIT, || {
        // An agent that exited (a crash, a refused argument) never converges.
        if let Some(dead) = nodes.iter().find(|n| n.agent_crashed()) {
            last = format!("the agent of {} exited", dead.name());
            return Some(false);
        }
        match mesh_problem(nodes, kube) {
            None => Some(true),
            Some(problem) => {
                last = problem;
                None
            }
        }
    });
    if converged != Some(true) {
        panic!(
            "the testbed's mesh did not converge within {MESH_WAIT:?}: {last}\n{}",
            diagnostics()
        );
    }
}

/// What keeps the mesh of `nodes` from having converged, if anything.
fn mesh_problem(nodes: &[&Node], kube: &Kube) -> Option<String> {
    let annotations = kube.node_annotations();
    let members: Vec<&&Node> = nodes
        .iter()
        .filter(|n| {
            annotations
                .get(n.name())
                .is_some_and(|a| a.contains_key(annotation::PUBLIC_KEY))
        })
        .collect();
    for node in nodes.iter().filter(|n| n.agent_running()) {
        let name = node.name();
        let Some(a) = annotations.get(name) else {
            // A node whose Node object was deleted has nothing to publish.
            continue;
        };
        if a.get(annotation::ENDPOINT) != Some(&node.expected_endpoint())
            || a.get(annotation::POD_CIDRS) != Some(&addressing::join(node.pod_cidrs()))
            || !a.contains_key(annotation::PUBLIC_KEY)
        {
            return Some(format!("{name} has not published its advertisement: {a:?}"));
        }
        if node.conflist().is_none() {
            return Some(format!("{name} has no conflist yet"));
        }
        let mut want: Vec<String> = members
            .iter()
            .filter(|m| m.name() != name)
            .map(|m| m.name().to_string())
            .collect();
        want.sort();
        let peers = node.mesh_peers();
        if peers != want {
            return Some(format!("{name} has peers {peers:?}, want {want:?}"));
        }
    }
    None
}

/// Every node's agent state and the tail of its log, and the API server's, for failure
/// messages.
pub(crate) fn diagnostics(
    run_id: &str,
    dir: &Path,
    nodes: &[&Node],
    api: &TestApiServer,
) -> String {
    let mut out = format!("testbed {run_id} (logs in {}):\n", dir.display());
    for node in nodes {
        out.push_str(&format!(
            "--- {} ({}, agent {}) log tail:\n{}\n",
            node.name(),
            addressing::join(node.underlay_ips()),
            if node.agent_running() {
                "running"
            } else {
                "not running"
            },
            exec::tail(&node.agent_log(), 30)
        ));
    }
    out.push_str(&format!(
        "--- test-apiserver log tail:\n{}\n",
        exec::tail(&api.log(), 20)
    ));
    out
}

/// Drops `nodes` in parallel: each stops its agent and waits for it.
pub(crate) fn tear_down(nodes: Vec<Node>) {
    std::thread::scope(|s| {
        for node in nodes {
            s.spawn(move || drop(node));
        }
    });
}
