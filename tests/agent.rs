//! `wgmesh agent` against test-apiserver (the stand-in for kube-apiserver): several
//! agents with their own identities and state publish their advertisements and compute
//! the full mesh; nodes come, go and misbehave. No root needed: these agents run the
//! control plane only.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Node};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use support::{Agent, WAIT, create_node, create_nodes, node, published};
use wgmesh::key::{PrivateKey, PublicKey};
use wgmesh_testkit::apiserver::TestApiServer;
use wgmesh_testkit::eventually;

fn private_key_of(agent: &Agent) -> PrivateKey {
    let text = std::fs::read_to_string(agent.state_dir().join("private.key")).expect("key file");
    PrivateKey::from_base64(text.trim()).expect("a key")
}

async fn annotations(api: &Api<Node>, name: &str) -> BTreeMap<String, String> {
    api.get(name)
        .await
        .expect("node")
        .metadata
        .annotations
        .unwrap_or_default()
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_publish_their_advertisements_and_compute_the_full_mesh() {
    let server = TestApiServer::start(&[]);
    let nodes: Api<Node> = Api::all(server.client().await);
    create_nodes(&nodes, 3).await;
    let agents: Vec<Agent> = (1..=3)
        .map(|i| Agent::start(&server, &format!("n{i}"), &[]))
        .collect();
    agents[0].wait_for_peers(&["n2", "n3"], WAIT);
    agents[1].wait_for_peers(&["n1", "n3"], WAIT);
    agents[2].wait_for_peers(&["n1", "n2"], WAIT);

    let mut keys = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        let n = i + 1;
        let key = private_key_of(a);
        let public = key.public_key();
        keys.push(public);
        // Published exactly as specified.
        let ann = annotations(&nodes, &a.name).await;
        assert_eq!(
            ann["wgmesh.io/public-key"],
            public.to_base64(),
            "{}",
            a.name
        );
        assert_eq!(ann["wgmesh.io/endpoint"], format!("192.0.2.{n}:51820"));
        assert_eq!(ann["wgmesh.io/pod-cidrs"], format!("10.244.{n}.0/24"));
        // Private key: 0600 in a 0700 directory, never in the logs or on the Node.
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&a.state_dir()), 0o700);
        assert_eq!(mode(&a.state_dir().join("private.key")), 0o600);
        let secret = key.to_base64();
        assert!(
            !a.log().contains(secret.as_str()),
            "private key logged by {}",
            a.name
        );
        assert!(!ann.values().any(|v| v.contains(secret.as_str())));
        // The CNI config of this node.
        let conflist = std::fs::read_to_string(a.cni_dir().join("10-wgmesh.conflist"))
            .expect("conflist written");
        let list: serde_json::Value = serde_json::from_str(&conflist).unwrap();
        assert_eq!(list["plugins"][0]["type"], "wgmesh-cni");
        assert_eq!(
            list["plugins"][0]["subnets"],
            json!([format!("10.244.{n}.0/24")])
        );
        assert_eq!(
            list["plugins"][1],
            json!({"type": "portmap", "capabilities": {"portMappings": true}})
        );
        // NetworkUnavailable=False once published and configured.
        let cond = eventually(WAIT, "the NetworkUnavailable condition", || async {
            let node = nodes.get(&a.name).await.ok()?;
            let conds = node.status?.conditions?;
            conds.into_iter().find(|c| c.type_ == "NetworkUnavailable")
        })
        .await;
        assert_eq!(
            (cond.status.as_str(), cond.reason.as_deref()),
            ("False", Some("WgmeshReady"))
        );
        let other = nodes
            .get(&a.name)
            .await
            .unwrap()
            .status
            .unwrap()
            .conditions
            .unwrap();
        assert!(
            other
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True"),
            "the kubelet's condition is kept"
        );
    }
    let distinct: std::collections::BTreeSet<&PublicKey> = keys.iter().collect();
    assert_eq!(distinct.len(), 3, "every node has its own identity");

    // Each agent's peers carry the others' keys, endpoints and CIDRs.
    let mesh = agents[0].mesh().unwrap();
    assert_eq!(mesh["peers"]["n2"]["public_key"], keys[1].to_base64());
    assert_eq!(mesh["peers"]["n2"]["allowed_ips"], json!(["10.244.2.0/24"]));
    assert_eq!(
        mesh["peers"]["n3"]["endpoint"],
        json!({"host": {"Ip": "192.0.2.3"}, "port": 51820})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_joining_leaving_and_misbehaving_change_everyone_s_mesh() {
    let server = TestApiServer::start(&[]);
    let client = server.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    create_nodes(&nodes, 2).await;
    let agents: Vec<Agent> = (1..=2)
        .map(|i| Agent::start(&server, &format!("n{i}"), &[]))
        .collect();
    agents[0].wait_for_peers(&["n2"], WAIT);
    agents[1].wait_for_peers(&["n1"], WAIT);

    // A node that joins with its annotations already published (as its own agent would
    // do) is in everyone's desired state within a second.
    let mut joiner = node("n4", "192.0.2.4", "10.244.4.0/24");
    let key4 = PrivateKey::generate().unwrap().public_key();
    joiner.metadata.annotations = Some(BTreeMap::from([
        ("wgmesh.io/public-key".to_string(), key4.to_base64()),
        (
            "wgmesh.io/endpoint".to_string(),
            "192.0.2.4:51820".to_string(),
        ),
        (
            "wgmesh.io/pod-cidrs".to_string(),
            "10.244.4.0/24".to_string(),
        ),
    ]));
    let start = Instant::now();
    create_node(&nodes, &joiner).await;
    agents[0].wait_for_peers(&["n2", "n4"], Duration::from_secs(1));
    agents[1].wait_for_peers(&["n1", "n4"], Duration::from_secs(1));
    eprintln!(
        "n4 reached both agents' desired state {:?} after creation",
        start.elapsed()
    );

    // Garbage annotations: skipped with an Event; the rest of the mesh is unaffected.
    let mut bad = node("bad", "192.0.2.9", "10.244.9.0/24");
    bad.metadata.annotations = Some(BTreeMap::from([
        (
            "wgmesh.io/public-key".to_string(),
            "this is not a key".to_string(),
        ),
        ("wgmesh.io/endpoint".to_string(), "192.0.2.9".to_string()),
    ]));
    create_node(&nodes, &bad).await;
    let events: Api<Event> = Api::all(client.clone());
    let event = eventually(WAIT, "an Event about node bad", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.involved_object.name.as_deref() == Some("bad"))
    })
    .await;
    assert_eq!(event.involved_object.kind.as_deref(), Some("Node"));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.reason.as_deref(), Some("InvalidPublicKey"));
    let message = event.message.unwrap_or_default();
    assert!(
        message.contains("wgmesh.io/public-key") && message.contains("no port"),
        "{message}"
    );
    assert!(agents.iter().all(|a| a.proc.is_some()));
    for a in &agents {
        a.wait_for_peers(&[if a.name == "n1" { "n2" } else { "n1" }, "n4"], WAIT);
    }
    // kubectl sees the same Event.
    let kubectl_events = server.kubectl_ok(&["get", "events", "-A", "-o", "json"]);
    assert!(
        kubectl_events.contains("InvalidPublicKey"),
        "{kubectl_events}"
    );

    // The bad node fixes itself: it joins.
    let fixed = json!({"metadata": {"annotations": {
        "wgmesh.io/public-key": PrivateKey::generate().unwrap().public_key().to_base64(),
        "wgmesh.io/endpoint": "192.0.2.9:51820"}}});
    nodes
        .patch("bad", &PatchParams::default(), &Patch::Merge(&fixed))
        .await
        .unwrap();
    agents[0].wait_for_peers(&["bad", "n2", "n4"], WAIT);

    // A deleted node disappears from every peer list.
    nodes.delete("n4", &DeleteParams::default()).await.unwrap();
    agents[0].wait_for_peers(&["bad", "n2"], WAIT);
    agents[1].wait_for_peers(&["bad", "n1"], WAIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_keeps_its_identity_and_a_bad_key_file_stops_it_with_a_reason() {
    let server = TestApiServer::start(&[]);
    let nodes: Api<Node> = Api::all(server.client().await);
    create_node(&nodes, &node("n1", "192.0.2.1", "10.244.1.0/24")).await;
    let mut agent = Agent::start(&server, "n1", &[]);
    let published = eventually(WAIT, "the public key annotation", || async {
        annotations(&nodes, "n1")
            .await
            .get("wgmesh.io/public-key")
            .cloned()
    })
    .await;
    // The plan is saved after the annotation is published: stop only once it is.
    wgmesh_testkit::wait_until(WAIT, "the saved mesh", || agent.mesh());
    agent.stop();
    agent.spawn(&server, &[]);
    wgmesh_testkit::wait_until(WAIT, "the restarted agent to apply its saved mesh", || {
        agent.log().contains("applied the saved mesh").then_some(())
    });
    let starts: Vec<String> = agent
        .log()
        .lines()
        .filter(|l| l.contains("starting"))
        .map(String::from)
        .collect();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(
        starts.iter().all(|l| l.contains(&published)),
        "both runs announce the same public key: {starts:?}"
    );
    assert_eq!(
        private_key_of(&agent).public_key().to_base64(),
        published,
        "same key after restart"
    );
    agent.stop();

    // A key file readable by others is refused, not replaced.
    let key_path = agent.state_dir().join("private.key");
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    agent.spawn(&server, &[]);
    let status = wgmesh_testkit::wait_until(WAIT, "the agent to refuse the key", || {
        agent
            .proc
            .as_mut()
            .and_then(|p| p.child.try_wait().ok().flatten())
    });
    assert!(!status.success());
    assert!(agent.log().contains("mode 0644"), "{}", agent.log());
    assert_eq!(
        annotations(&nodes, "n1").await["wgmesh.io/public-key"],
        published,
        "identity unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_reconnect_after_the_api_server_restarts_and_see_what_changed() {
    let mut server = TestApiServer::start(&[]);
    let nodes: Api<Node> = Api::all(server.client().await);
    create_nodes(&nodes, 2).await;
    let agents: Vec<Agent> = (1..=2)
        .map(|i| Agent::start(&server, &format!("n{i}"), &[]))
        .collect();
    agents[0].wait_for_peers(&["n2"], WAIT);

    // The restarted server keeps objects but not its watch history: the agents' watches
    // resume from a resourceVersion it no longer knows, get 410 Gone and relist.
    server.restart();
    let nodes: Api<Node> = Api::all(server.client().await);
    let n3 = published(node("n3", "192.0.2.3", "10.244.3.0/24"), "192.0.2.3:51820");
    create_node(&nodes, &n3).await;
    agents[0].wait_for_peers(&["n2", "n3"], WAIT);
    agents[1].wait_for_peers(&["n1", "n3"], WAIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wgmesh_status_and_graph_show_the_mesh_from_the_api() {
    let server = TestApiServer::start(&[]);
    let nodes: Api<Node> = Api::all(server.client().await);
    create_nodes(&nodes, 2).await;
    let mut bad = node("bad", "192.0.2.9", "10.244.9.0/24");
    bad.metadata.annotations = Some(BTreeMap::from([(
        "wgmesh.io/public-key".to_string(),
        "x".to_string(),
    )]));
    create_node(&nodes, &bad).await;
    let agents: Vec<Agent> = (1..=2)
        .map(|i| Agent::start(&server, &format!("n{i}"), &[]))
        .collect();
    agents[0].wait_for_peers(&["n2"], WAIT);
    agents[1].wait_for_peers(&["n1"], WAIT);
    let wgmesh = |args: &[&str]| {
        let out = std::process::Command::new(wgmesh_testkit::workspace_bin("wgmesh"))
            .args(args)
            .arg("--kubeconfig")
            .arg(server.kubeconfig())
            .output()
            .expect("wgmesh runs");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let table = wgmesh(&["status"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[2].starts_with("n1")
            && lines[2].contains("192.0.2.1:51820")
            && lines[2].contains("10.244.1.0/24"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("bad") && lines[1].contains("InvalidPublicKey"),
        "{table}"
    );

    let rows: serde_json::Value =
        serde_json::from_str(&wgmesh(&["status", "-o", "json"])).expect("JSON");
    assert_eq!(rows.as_array().map(Vec::len), Some(3));
    let n2 = &rows[2];
    assert_eq!(n2["name"], "n2");
    assert_eq!(
        n2["public_key"],
        private_key_of(&agents[1]).public_key().to_base64()
    );
    assert_eq!(n2["problems"], json!([]));

    let dot = wgmesh(&["graph"]);
    assert!(dot.contains("\"n1\" -- \"n2\""), "{dot}");
    assert!(dot.contains("left out: InvalidPublicKey"), "{dot}");
    // And Graphviz renders it.
    let mut render = std::process::Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("graphviz `dot` (hack/install-deps.sh installs it)");
    use std::io::Write;
    render
        .stdin
        .take()
        .unwrap()
        .write_all(dot.as_bytes())
        .unwrap();
    let svg = render.wait_with_output().unwrap();
    assert!(
        svg.status.success() && String::from_utf8_lossy(&svg.stdout).contains("<svg"),
        "dot failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_and_never_hold_a_secret() {
    let server = TestApiServer::start(&[]);
    let nodes: Api<Node> = Api::all(server.client().await);
    create_nodes(&nodes, 2).await;
    let a = Agent::start(
        &server,
        "n1",
        &["--log-format", "json", "--log-level", "debug"],
    );
    let _b = Agent::start(&server, "n2", &[]);
    a.wait_for_peers(&["n2"], WAIT);
    let log = a.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() > 5, "{log}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"message\":\"peer added\"") && l.contains("\"peer\":\"n2\"")),
        "{log}"
    );
    let token = server.token();
    assert!(
        !log.contains(token.trim()),
        "the API token appears in the log"
    );
    let key = private_key_of(&a).to_base64();
    assert!(
        !log.contains(key.as_str()),
        "the private key appears in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_right_after_an_api_server_outage_reaches_every_agent_within_two_seconds() {
    let mut server = TestApiServer::start(&[]);
    let nodes: Api<Node> = Api::all(server.client().await);
    create_nodes(&nodes, 2).await;
    let agents: Vec<Agent> = (1..=2)
        .map(|i| Agent::start(&server, &format!("n{i}"), &[]))
        .collect();
    agents[0].wait_for_peers(&["n2"], WAIT);
    agents[1].wait_for_peers(&["n1"], WAIT);

    // 20 s without an API server: the watches back off meanwhile.
    server.stop();
    tokio::time::sleep(Duration::from_secs(20)).await;
    server.restart();
    let back = Instant::now();
    let nodes: Api<Node> = Api::all(server.client().await);
    let n3 = published(node("n3", "192.0.2.3", "10.244.3.0/24"), "192.0.2.3:51820");
    create_node(&nodes, &n3).await;
    agents[0].wait_for_peers(&["n2", "n3"], WAIT);
    agents[1].wait_for_peers(&["n1", "n3"], WAIT);
    let took = back.elapsed();
    eprintln!(
        "FIGURE a node joining right after a 20 s API outage reached every agent in {took:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "{took:?} after the API server was back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_garbage_values_from_one_node_make_a_bounded_number_of_events() {
    let server = TestApiServer::start(&[]);
    let client = server.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    create_nodes(&nodes, 1).await;
    let agent = Agent::start(&server, "n1", &[]);
    let mut noisy = node("noisy", "192.0.2.9", "10.244.9.0/24");
    noisy.metadata.annotations = Some(BTreeMap::from([(
        "wgmesh.io/public-key".to_string(),
        PrivateKey::generate().unwrap().public_key().to_base64(),
    )]));
    create_node(&nodes, &noisy).await;
    agent.wait_for_peers(&[], WAIT);
    // A hostile or broken Node writer: 1,000 distinct, long, malformed endpoints.
    let started = Instant::now();
    for i in 0..1000 {
        let value = format!("{i}-{}", "x".repeat(4000));
        let patch = json!({"metadata": {"annotations": {"wgmesh.io/endpoint": value}}});
        nodes
            .patch("noisy", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch");
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "within a minute"
    );
    // Let the agent catch up with the last value, then count.
    let events: Api<Event> = Api::all(client.clone());
    let about_noisy = || async {
        events
            .list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some("noisy"))
            .collect::<Vec<Event>>()
    };
    eventually(WAIT, "the first Events", || async {
        (!about_noisy().await.is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = about_noisy().await;
    eprintln!(
        "FIGURE 1,000 garbage values from one node: {} Events",
        seen.len()
    );
    assert!(
        seen.len() <= 12,
        "{} Events about one node in a minute",
        seen.len()
    );
    for e in &seen {
        let message = e.message.as_deref().unwrap_or_default();
        assert!(message.len() <= 1100, "an Event of {} bytes", message.len());
    }
    let log = agent.log();
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2000, "a log line of {longest} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_only_cluster_cidr_on_a_dual_stack_node_keeps_it_from_hosting_pods() {
    let server = TestApiServer::start(&[]);
    let client = server.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let mut dual = node("n1", "192.0.2.1", "10.244.1.0/24");
    if let Some(spec) = dual.spec.as_mut() {
        spec.pod_cidrs = Some(vec!["10.244.1.0/24".into(), "fd00:10:244:1::/64".into()]);
    }
    create_node(&nodes, &dual).await;
    let agent = Agent::start(&server, "n1", &[]);
    let condition = eventually(WAIT, "NetworkUnavailable=True", || async {
        let n = nodes.get("n1").await.ok()?;
        n.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "NetworkUnavailable" && c.status == "True")
    })
    .await;
    assert_eq!(condition.reason.as_deref(), Some("WgmeshMisconfigured"));
    let message = condition.message.unwrap_or_default();
    assert!(
        message.contains("fd00:10:244:1::/64") && message.contains("no IPv6 prefix"),
        "{message}"
    );
    assert!(
        !agent.cni_dir().join("10-wgmesh.conflist").exists(),
        "no conflist on a node whose IPv6 pods would be unguarded"
    );
    let events: Api<Event> = Api::all(client.clone());
    eventually(WAIT, "an Event naming both values", || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                let m = e.message.as_deref().unwrap_or_default();
                e.reason.as_deref() == Some("ClusterCIDRMisconfigured")
                    && m.contains("fd00:10:244:1::/64")
                    && m.contains("10.244.0.0/16")
            })
    })
    .await;
    assert!(agent.log().contains("ERROR"), "an error is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_files_left_by_a_crashed_pid_1_do_not_block_the_first_pass() {
    wgmesh_testkit::require_root!();
    let server = TestApiServer::start(&[]);
    let nodes: Api<Node> = Api::all(server.client().await);
    create_nodes(&nodes, 2).await;
    let peer = Agent::start(&server, "n2", &[]);
    // In its container the agent is PID 1, and so was the agent that crashed mid-write
    // before it: its temporary files carry the same pid.
    let dir = tempfile::Builder::new()
        .prefix("wgmesh-agent-")
        .tempdir()
        .expect("tempdir");
    let mut agent = Agent {
        name: "n1".into(),
        dir,
        proc: None,
    };
    std::fs::create_dir_all(agent.state_dir()).unwrap();
    std::fs::create_dir_all(agent.cni_dir()).unwrap();
    for (dir, file) in [
        (agent.state_dir(), "private.key"),
        (agent.state_dir(), "mesh.json"),
        (agent.cni_dir(), "10-wgmesh.conflist"),
    ] {
        std::fs::write(dir.join(format!(".{file}.tmp.1")), "half-written").unwrap();
    }
    agent.spawn_in(
        &server,
        &[],
        &["unshare", "--pid", "--fork", "--kill-child"],
    );
    agent.wait_for_peers(&["n2"], WAIT);
    peer.wait_for_peers(&["n1"], WAIT);
    assert!(agent.cni_dir().join("10-wgmesh.conflist").exists());
    let log = agent.log();
    assert!(
        !log.contains("reconcile failed"),
        "the first pass failed on a stale temporary file:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_spec_pod_cidrs_claiming_the_whole_range_is_refused_alone() {
    let server = TestApiServer::start(&[]);
    let client = server.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    create_nodes(&nodes, 2).await;
    let agents: Vec<Agent> = (1..=2)
        .map(|i| Agent::start(&server, &format!("n{i}"), &[]))
        .collect();
    agents[0].wait_for_peers(&["n2"], WAIT);
    // Registered by a hostile Node writer, before (or without) any allocation.
    let mut claim = node("greedy", "192.0.2.66", "10.244.66.0/24");
    if let Some(spec) = claim.spec.as_mut() {
        spec.pod_cidr = None;
        spec.pod_cidrs = None;
    }
    claim.metadata.annotations = Some(BTreeMap::from([
        (
            "wgmesh.io/public-key".to_string(),
            PrivateKey::generate().unwrap().public_key().to_base64(),
        ),
        (
            "wgmesh.io/endpoint".to_string(),
            "192.0.2.66:51820".to_string(),
        ),
        (
            "wgmesh.io/pod-cidrs".to_string(),
            "10.244.0.0/16".to_string(),
        ),
    ]));
    create_node(&nodes, &claim).await;
    let events: Api<Event> = Api::all(client.clone());
    let event = eventually(WAIT, "an Event about node greedy", || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.involved_object.name.as_deref() == Some("greedy"))
    })
    .await;
    let message = event.message.unwrap_or_default();
    assert!(message.contains("the node keeps it"), "{message}");
    // The allocated ranges keep working: n1 and n2 still peer; greedy is out.
    agents[0].wait_for_peers(&["n2"], WAIT);
    agents[1].wait_for_peers(&["n1"], WAIT);
    let routes = agents[0].mesh().expect("a plan")["routes"].clone();
    assert!(
        routes
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["node"] != "greedy")),
        "{routes}"
    );
}
