//! The testbed's cluster: agents with production paths in private mount namespaces,
//! pods created as a runtime does, nodes joining and leaving. Needs root.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use wgmesh_testbed::annotation;
use wgmesh_testbed::node::{CONFLIST_PATH, PRIVATE_KEY_FILE, STATE_DIR};
use wgmesh_testbed::{Exec, Testbed};
use wgmesh_testkit::require_root;

const WAIT: Duration = Duration::from_secs(30);

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Nothing a node writes may appear in the host's own directories.
fn assert_host_directories_untouched() {
    assert!(
        !Path::new(CONFLIST_PATH).exists(),
        "the host's /etc/cni/net.d got a node's conflist"
    );
    let host_state: Vec<_> = std::fs::read_dir(STATE_DIR)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(host_state.is_empty(), "host {STATE_DIR} has {host_state:?}");
    assert!(!Path::new("/var/lib/cni/networks/wgmesh").exists());
    assert!(!Path::new("/run/wireguard/wgmesh0.sock").exists());
}

#[test]
fn every_node_publishes_its_advertisement_and_keeps_its_conflist_and_key_private() {
    require_root!();
    let tb = Testbed::builder().nodes(3).build();
    eprintln!("build() of 3 nodes took {:?}", tb.build_duration());

    let mut keys = BTreeSet::new();
    for node in tb.nodes() {
        let ann = tb.node_annotations(node.index());
        assert_eq!(
            ann[annotation::ENDPOINT],
            format!("{}:51820", node.underlay_ip()),
            "{}",
            node.name()
        );
        assert_eq!(ann[annotation::POD_CIDRS], node.pod_cidr().to_string());
        let public_key = &ann[annotation::PUBLIC_KEY];
        assert_eq!(public_key.len(), 44, "{public_key}");
        // A flat network (no locations, public addresses or NATs): nothing more than
        // before issue #14 is published.
        let wgmesh: Vec<&String> = ann.keys().filter(|k| k.starts_with("wgmesh.io/")).collect();
        assert_eq!(wgmesh.len(), 3, "{ann:?}");

        // The conflist is inside the node's mount namespace, with the node's own subnet.
        let conflist = node.conflist().expect("the agent wrote its conflist");
        let list: Value = serde_json::from_str(&conflist).expect("the conflist is JSON");
        assert_eq!(list["plugins"][0]["type"], "wgmesh-cni");
        assert_eq!(
            list["plugins"][0]["subnets"],
            serde_json::json!([node.pod_cidr().to_string()])
        );
        // ...as the node's own processes see it.
        assert_eq!(node.exec_ok(&["cat", CONFLIST_PATH]), conflist);

        // The private key: 0600 in a 0700 directory, one per node.
        let key_path = node.host_path(Path::new(STATE_DIR).join(PRIVATE_KEY_FILE));
        assert_eq!(mode(&key_path), 0o600);
        assert_eq!(mode(&node.host_path(STATE_DIR)), 0o700);
        let key = std::fs::read_to_string(&key_path).expect("the key is readable by root");
        assert!(
            keys.insert(key.trim().to_string()),
            "{} reuses a key",
            node.name()
        );

        // The agent runs with production defaults: no path arguments.
        let pid = node.agent_pid().expect("the agent runs");
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(
            !cmdline.contains("--state-dir") && !cmdline.contains("--cni-conf-dir"),
            "{cmdline:?}"
        );

        let mut others: Vec<&str> = tb
            .nodes()
            .filter(|o| o.name() != node.name())
            .map(|o| o.name())
            .collect();
        others.sort();
        assert_eq!(node.mesh_peers(), others);
    }
    assert_host_directories_untouched();

    // The API server is the usual test-apiserver on the host side.
    let nodes = tb.api().kubectl_ok(&["get", "nodes", "-o", "name"]);
    assert_eq!(nodes.lines().count(), 3, "{nodes}");
}

#[test]
fn pods_get_addresses_from_their_node_s_cidr_and_reach_each_other_on_one_node() {
    require_root!();
    let tb = Testbed::builder().nodes(2).build();
    let a = tb.add_pod(0, "pod-a");
    let b = tb.add_pod(0, "pod-b");
    let c = tb.add_pod(1, "pod-c");

    let node0 = tb.node(0);
    assert!(node0.pod_cidr().contains(&a.ip()), "{}", a.ip());
    assert!(node0.pod_cidr().contains(&b.ip()), "{}", b.ip());
    assert_ne!(a.ip(), b.ip());
    assert!(tb.node(1).pod_cidr().contains(&c.ip()), "{}", c.ip());
    assert!(a.ping(b.ip()), "pod-a cannot reach pod-b on the same node");
    assert!(b.ping(a.ip()), "pod-b cannot reach pod-a on the same node");

    // The pod namespaces live in the node's own /run/netns, the leases in its own
    // /var/lib/cni; the runtime passed that path as CNI_NETNS.
    let netns = node0.exec_ok(&["ip", "netns", "list"]);
    assert!(
        netns.contains("pod-a") && netns.contains("pod-b"),
        "{netns}"
    );
    assert!(!Path::new("/run/netns/pod-a").exists());
    assert_eq!(
        a.cni_result()["interfaces"][2]["sandbox"],
        "/run/netns/pod-a",
        "{}",
        a.cni_result()
    );
    let lease = format!("/var/lib/cni/networks/wgmesh/{}", b.ip());
    assert!(
        node0.read_file(&lease).is_some(),
        "no lease {lease} in node0"
    );
    let eth0 = a.exec_ok(&["ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(eth0.contains(&a.ip().to_string()), "{eth0}");

    // Deleting a pod releases its address and removes its namespace.
    let b_ip = b.ip();
    tb.delete_pod(b);
    assert!(node0.read_file(&lease).is_none(), "{lease} survived DEL");
    assert!(!node0.exec_ok(&["ip", "netns", "list"]).contains("pod-b"));
    assert!(!a.ping(b_ip), "a deleted pod still answers");
    assert_host_directories_untouched();
}

#[test]
fn a_node_added_later_joins_every_node_s_desired_state() {
    require_root!();
    let mut tb = Testbed::builder().nodes(2).build();
    let i = tb.add_node();
    assert_eq!(i, 2);
    let new = tb.node(i);
    assert_eq!(new.name(), "node2");
    assert_eq!(new.pod_cidr().to_string(), "10.244.2.0/24");
    assert_eq!(
        tb.node_annotations(i)[annotation::ENDPOINT],
        "192.0.2.34:51820"
    );
    assert_eq!(tb.node(0).mesh_peers(), ["node1", "node2"]);
    assert_eq!(tb.node(1).mesh_peers(), ["node0", "node2"]);
    assert_eq!(new.mesh_peers(), ["node0", "node1"]);
    let peer = &tb.node(0).mesh().expect("node0's plan")["peers"]["node2"];
    assert_eq!(peer["allowed_ips"], serde_json::json!(["10.244.2.0/24"]));
    assert_eq!(peer["endpoint"]["host"]["Ip"], "192.0.2.34");
    // The new node can run pods too.
    let pod = tb.add_pod(i, "late");
    assert!(new.pod_cidr().contains(&pod.ip()));
}

#[test]
fn a_deleted_node_object_and_a_removed_node_leave_every_peer_list() {
    require_root!();
    let mut tb = Testbed::builder().nodes(3).build();

    tb.delete_node_object(2);
    tb.node(0).wait_for_peers(&["node1"], WAIT);
    tb.node(1).wait_for_peers(&["node0"], WAIT);
    assert!(tb.node(2).agent_running(), "the node itself keeps running");

    // Registered again (no annotations), the node's agent publishes again and rejoins.
    tb.create_node_object(2);
    tb.wait_for_mesh();
    assert_eq!(tb.node(0).mesh_peers(), ["node1", "node2"]);

    let netns = tb.node(2).netns_name().to_string();
    let holder = tb.node(2).holder_pid();
    tb.remove_node(2);
    tb.node(0).wait_for_peers(&["node1"], WAIT);
    tb.node(1).wait_for_peers(&["node0"], WAIT);
    assert!(!Path::new("/run/netns").join(&netns).exists());
    assert!(!Path::new(&format!("/proc/{holder}")).exists());
    assert_eq!(tb.nodes().count(), 2);
    assert_eq!(tb.router().node_links(), ["node0", "node1"]);
}

#[test]
fn a_stopped_agent_starts_again_with_its_identity_and_state() {
    require_root!();
    let tb = Testbed::builder().nodes(2).build();
    let node = tb.node(0);
    let key_before = tb.node_annotations(0)[annotation::PUBLIC_KEY].clone();

    node.stop_agent();
    assert!(!node.agent_running());
    assert!(node.agent_pid().is_none());
    assert!(
        node.conflist().is_some(),
        "the node's files outlive the agent"
    );

    node.start_agent(&["--resync-interval", "5s"]);
    tb.wait_for_mesh();
    assert_eq!(tb.node_annotations(0)[annotation::PUBLIC_KEY], key_before);
    let log = node.agent_log();
    assert_eq!(
        log.matches("=== testbed: starting the agent").count(),
        2,
        "{log}"
    );
    assert!(log.contains("--resync-interval"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_testbed_serves_async_tests_and_their_kube_clients() {
    require_root!();
    use k8s_openapi::api::core::v1::Node;
    // Built, used and dropped inside a runtime: the testbed's own runtime must not be
    // blocked on or dropped from here.
    let tb = Testbed::builder().nodes(2).build();
    let nodes: kube::Api<Node> = kube::Api::all(tb.api().client().await);
    let list = nodes.list(&Default::default()).await.expect("list nodes");
    let mut names: Vec<String> = list
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    names.sort();
    assert_eq!(names, ["node0", "node1"]);
    let node1 = nodes.get("node1").await.expect("node1");
    let spec = node1.spec.expect("a spec");
    assert_eq!(spec.pod_cidr.as_deref(), Some("10.244.1.0/24"));
    assert_eq!(spec.pod_cidrs, Some(vec!["10.244.1.0/24".to_string()]));
    let addresses = node1.status.and_then(|s| s.addresses).expect("addresses");
    assert_eq!(addresses[0].type_, "InternalIP");
    assert_eq!(addresses[0].address, "192.0.2.18");
    tb.delete_node_object(1);
    drop(tb);
}

#[test]
fn a_testbed_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Testbed>();
    shareable::<wgmesh_testbed::Pod>();
}
