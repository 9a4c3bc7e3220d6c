//! The swarm's Node objects and what it does to them through the API (test
//! infrastructure): registration as a kubelet does it, with the advertisement a real
//! agent publishes; status heartbeats and label changes as kubelets and controllers
//! make them; and the API server's traffic counters.
//!
//! Calls are synchronous (the benchmark and the tests read simply): the client lives on
//! a small runtime of its own.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use wgmesh::cni::PodSubnets;
use wgmesh::mesh::Advertisement;
use wgmesh::model::{Endpoint, Host};

use crate::emulated::Emulated;

/// Requests in flight at once when registering or deleting many Nodes.
const PARALLEL: usize = 16;

/// What a kubelet registers, with what a wgmesh agent publishes on top.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub internal_ip: std::net::Ipv4Addr,
    pub pod_cidr: ipnet::Ipv4Net,
    /// The advertisement (key, endpoint) when the node runs wgmesh already; `None` for
    /// a node whose agent will publish it.
    pub advertisement: Option<(wgmesh::key::PublicKey, std::net::SocketAddrV4)>,
}

impl NodeSpec {
    /// An emulated node: its agent "already published" its advertisement.
    pub fn emulated(node: &Emulated) -> NodeSpec {
        NodeSpec {
            name: node.name.clone(),
            internal_ip: *node.endpoint.ip(),
            pod_cidr: node.pod_cidr,
            advertisement: Some((node.public_key(), node.endpoint)),
        }
    }
}

/// Images a kubelet reports: enough for the size of a production Node (a kubelet lists up
/// to 50; the names are examples).
const IMAGES: usize = 20;

/// A Node as a kubelet registers it and the controllers complete it: labels, capacity,
/// conditions, node info, images (about 6 KiB of JSON, like a production node without
/// managedFields), `spec.podCIDR(s)`, and wgmesh's annotations when it has them.
pub fn node_object(spec: &NodeSpec) -> Node {
    let name = &spec.name;
    let cidr = spec.pod_cidr.to_string();
    let mut annotations = BTreeMap::from([
        ("node.alpha.kubernetes.io/ttl".to_string(), "0".to_string()),
        (
            "volumes.kubernetes.io/controller-managed-attach-detach".to_string(),
            "true".to_string(),
        ),
    ]);
    if let Some((key, endpoint)) = &spec.advertisement {
        let endpoint = Endpoint {
            host: Host::Ip((*endpoint.ip()).into()),
            port: endpoint.port(),
        };
        let ad = Advertisement {
            public_key: *key,
            endpoint: Some(endpoint.clone()),
            endpoints: vec![endpoint],
            pod_subnets: PodSubnets::parse(&[cidr.as_str()]).expect("a valid pod CIDR"),
            public_endpoint: None,
            discovered: None,
            no_direct: None,
        };
        // `None`: an annotation a real agent leaves absent.
        for (k, v) in ad.annotations() {
            if let Some(v) = v {
                annotations.insert(k.to_string(), v);
            }
        }
    }
    let images: Vec<_> = (0..IMAGES)
        .map(|i| {
            json!({
                "names": [
                    format!("registry.example/team-{i}/service@sha256:{:064x}", i * 7919),
                    format!("registry.example/team-{i}/service:v1.{i}.0"),
                ],
                "sizeBytes": 10_000_000 + i * 1_234_567,
            })
        })
        .collect();
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": kind, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": "2025-01-01T00:00:00Z",
            "lastTransitionTime": "2025-01-01T00:00:00Z",
        })
    };
    let resources = json!({
        "cpu": "8", "ephemeral-storage": "101430960Ki", "hugepages-1Gi": "0",
        "hugepages-2Mi": "0", "memory": "32871192Ki", "pods": "110",
    });
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "standard-8",
                "topology.kubernetes.io/region": "region-1",
                "topology.kubernetes.io/zone": "region-1a",
            },
            "annotations": annotations,
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr], "providerID": format!("example://{name}")},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": spec.internal_ip.to_string()},
                {"type": "Hostname", "address": name},
            ],
            "allocatable": resources,
            "capacity": resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "images": images,
            "nodeInfo": {
                "architecture": "amd64", "bootID": format!("{:032x}", name.len()),
                "containerRuntimeVersion": "containerd://1.7.24", "kernelVersion": "6.1.0-28-amd64",
                "kubeProxyVersion": "", "kubeletVersion": "v1.33.0",
                "machineID": format!("{:032x}", name.len() * 31), "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)", "systemUUID": format!("{:032x}", name.len() * 17),
            },
        },
    }))
    .expect("a valid Node")
}

/// Bytes of one node in three forms a watch could carry: the whole Node (JSON, as
/// watched today), its metadata only (a `PartialObjectMetadata`, what a metadata-only
/// watch sends: labels and annotations, no spec or status), and a per-node summary of
/// what wgmesh reads (name, uid, key, endpoint, pod CIDRs, location).
pub fn encoded_sizes(spec: &NodeSpec) -> (usize, usize, usize) {
    let node = node_object(spec);
    let full = serde_json::to_vec(&node).map_or(0, |v| v.len());
    let metadata = serde_json::to_vec(&json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": node.metadata,
    }))
    .map_or(0, |v| v.len());
    let view = wgmesh::k8s::translate::node_view(&node);
    let annotation = |k: &str| view.annotation(k).unwrap_or_default().to_string();
    let summary = serde_json::to_vec(&json!({
        "name": view.name,
        "uid": "0c3b9d1e-5a4f-4c1e-9a57-2f6d0c7e8b90",
        "publicKey": annotation(wgmesh::model::annotation::PUBLIC_KEY),
        "endpoint": annotation(wgmesh::model::annotation::ENDPOINT),
        "podCIDRs": view.pod_cidrs,
        "location": "region-1",
    }))
    .map_or(0, |v| v.len());
    (full, metadata, summary)
}

/// What changes in one irrelevant update (for wgmesh): the n-th of a churn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Churn {
    /// A kubelet's status update: the Ready condition's heartbeat.
    Heartbeat,
    /// Another controller's label.
    Label,
}

impl Churn {
    /// Heartbeats and labels alternate.
    pub fn nth(n: usize) -> Churn {
        if n % 2 == 0 {
            Churn::Heartbeat
        } else {
            Churn::Label
        }
    }
}

/// A client of the API server on its own runtime.
pub struct Cluster {
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
}

impl Cluster {
    /// A client from the kubeconfig the API server wrote (host side).
    pub fn connect(kubeconfig: &Path) -> Cluster {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("swarm-api")
            .enable_all()
            .build()
            .expect("a tokio runtime for the swarm's API client");
        let path = kubeconfig.to_path_buf();
        let client = runtime.block_on(async move {
            let kc = kube::config::Kubeconfig::read_from(&path).expect("the API's kubeconfig");
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .expect("a kube configuration");
            kube::Client::try_from(cfg).expect("a kube client")
        });
        Cluster { runtime, client }
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// Creates the Nodes, `PARALLEL` at a time; panics on the first failure.
    pub fn register(&self, specs: &[NodeSpec]) {
        let api = self.nodes();
        let objects: Vec<Node> = specs.iter().map(node_object).collect();
        self.runtime.block_on(async move {
            futures::stream::iter(objects)
                .map(|n| {
                    let api = api.clone();
                    async move { api.create(&PostParams::default(), &n).await }
                })
                .buffer_unordered(PARALLEL)
                .try_collect::<Vec<_>>()
                .await
                .expect("creating Nodes")
        });
    }

    /// Deletes the Nodes named, `PARALLEL` at a time (absent ones are fine).
    pub fn delete(&self, names: &[String]) {
        let api = self.nodes();
        let names = names.to_vec();
        self.runtime.block_on(async move {
            futures::stream::iter(names)
                .map(|name| {
                    let api = api.clone();
                    async move {
                        match api.delete(&name, &DeleteParams::default()).await {
                            Ok(_) => Ok(()),
                            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                            Err(e) => Err(e),
                        }
                    }
                })
                .buffer_unordered(PARALLEL)
                .try_collect::<Vec<_>>()
                .await
                .expect("deleting Nodes")
        });
    }

    /// One irrelevant update of Node `name`.
    pub fn update(&self, name: &str, kind: Churn, n: usize) {
        let api = self.nodes();
        self.runtime
            .block_on(churn_one(&api, name, kind, n))
            .unwrap_or_else(|e| panic!("updating Node {name}: {e}"));
    }

    /// Updates of fields wgmesh does not read, `rate` a second for `duration`, round
    /// robin over `names`, heartbeats and labels alternating; returns how many were made.
    pub fn churn(&self, names: &[String], rate: f64, duration: Duration) -> usize {
        assert!(!names.is_empty() && rate > 0.0, "nothing to churn");
        let api = self.nodes();
        let names = names.to_vec();
        self.runtime.block_on(async move {
            let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let start = Instant::now();
            let mut n = 0;
            while start.elapsed() < duration {
                interval.tick().await;
                let name = &names[n % names.len()];
                churn_one(&api, name, Churn::nth(n), n)
                    .await
                    .unwrap_or_else(|e| panic!("updating Node {name}: {e}"));
                n += 1;
            }
            n
        })
    }

    /// An annotation of Node `name`, if the Node and the annotation exist.
    pub fn annotation(&self, name: &str, key: &str) -> Option<String> {
        let api = self.nodes();
        self.runtime
            .block_on(api.get_opt(name))
            .ok()
            .flatten()
            .and_then(|n| n.metadata.annotations?.get(key).cloned())
    }

    /// Creates a Namespace: a write that moves the global resourceVersion without
    /// touching any Node (as Leases and Events do all the time in a real cluster).
    pub fn create_namespace(&self, name: &str) {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let ns =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("a valid Namespace");
        self.runtime
            .block_on(api.create(&PostParams::default(), &ns))
            .unwrap_or_else(|e| panic!("creating Namespace {name}: {e}"));
    }

    /// The API server's traffic counters (`GET /metrics` of test-apiserver); retried
    /// for a while, since the server may be restarting.
    pub fn server_metrics(&self) -> crate::measure::Metrics {
        let start = Instant::now();
        loop {
            let client = self.client.clone();
            let text = self.runtime.block_on(async move {
                let req = http::Request::get("/metrics")
                    .body(Vec::new())
                    .expect("a request");
                client.request_text(req).await
            });
            match text {
                Ok(text) => return crate::measure::Metrics::parse(&text),
                Err(e) if start.elapsed() > Duration::from_secs(30) => {
                    panic!("test-apiserver's /metrics: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

async fn churn_one(api: &Api<Node>, name: &str, kind: Churn, n: usize) -> kube::Result<()> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    match kind {
        Churn::Heartbeat => {
            let patch = json!({"status": {"conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status", "lastHeartbeatTime": now,
            }]}});
            api.patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
                .await?;
        }
        Churn::Label => {
            let patch =
                json!({"metadata": {"labels": {"swarm.example/generation": n.to_string()}}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NodeSpec {
        NodeSpec {
            name: "swarm-0001".into(),
            internal_ip: "203.0.113.10".parse().unwrap(),
            pod_cidr: "10.244.16.16/28".parse().unwrap(),
            advertisement: Some((
                wgmesh::key::PrivateKey::generate().unwrap().public_key(),
                "203.0.113.10:20001".parse().unwrap(),
            )),
        }
    }

    #[test]
    fn an_emulated_node_publishes_what_a_real_agent_does() {
        let node = node_object(&spec());
        let view = wgmesh::k8s::translate::node_view(&node);
        let parsed = wgmesh::mesh::parse(&view, &wgmesh::mesh::MeshConfig::default());
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert_eq!(view.pod_cidrs, ["10.244.16.16/28"]);
        assert_eq!(
            view.annotation(wgmesh::model::annotation::ENDPOINT),
            Some("203.0.113.10:20001")
        );
    }

    #[test]
    fn a_node_object_is_the_size_of_a_production_one() {
        let len = serde_json::to_vec(&node_object(&spec())).unwrap().len();
        assert!((4_000..10_000).contains(&len), "{len} bytes");
    }

    #[test]
    fn churn_alternates_heartbeats_and_labels() {
        let kinds: Vec<Churn> = (0..4).map(Churn::nth).collect();
        assert_eq!(
            kinds,
            [
                Churn::Heartbeat,
                Churn::Label,
                Churn::Heartbeat,
                Churn::Label
            ]
        );
    }
}
