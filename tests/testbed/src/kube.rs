//! The testbed's own Kubernetes client (test infrastructure): Node objects as the kubelet
//! and the controller-manager create them, from synchronous code.
//!
//! The testbed's API is synchronous so tests read simply; kube-rs is async. The client
//! lives on a small runtime of its own, and calls wait on a channel, which works whether
//! or not the caller is itself inside a tokio runtime (a `#[tokio::test]`), where
//! `Runtime::block_on` would panic.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

use crate::addressing::NodeAddresses;

/// A Node as the kubelet registers it (status.addresses: the InternalIP of its
/// underlay's family; a Ready condition, its own labels and `labels`), with the pod
/// CIDRs the controller-manager assigns (spec.podCIDRs: one per pod family of its
/// layout, IPv4 first; spec.podCIDR the first) and, when the node has a public address,
/// the ExternalIP a cloud provider adds.
pub fn node_object(
    name: &str,
    addresses: &NodeAddresses,
    labels: &BTreeMap<String, String>,
) -> Node {
    let cidrs: Vec<String> = addresses
        .pod_cidrs()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let mut all_labels = serde_json::Map::new();
    all_labels.insert("kubernetes.io/hostname".into(), json!(name));
    all_labels.insert("kubernetes.io/os".into(), json!("linux"));
    for (k, v) in labels {
        all_labels.insert(k.clone(), json!(v));
    }
    let mut node_addresses =
        vec![json!({"type": "InternalIP", "address": addresses.internal_ip().to_string()})];
    if let Some(external) = addresses.external_ip {
        node_addresses.push(json!({"type": "ExternalIP", "address": external.to_string()}));
    }
    node_addresses.push(json!({"type": "Hostname", "address": name}));
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": all_labels},
        "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
        "status": {
            "addresses": node_addresses,
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
            }],
        },
    }))
    .expect("a valid Node")
}

/// A kube client on its own runtime.
pub struct Kube {
    runtime: Option<tokio::runtime::Runtime>,
    client: kube::Client,
}

impl Kube {
    /// A client from the API server's (host-side) kubeconfig.
    pub fn connect(kubeconfig: &Path) -> Kube {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("testbed-kube")
            .enable_all()
            .build()
            .expect("a tokio runtime for the testbed's kube client");
        let path = kubeconfig.to_path_buf();
        // kube::Client spawns its worker on the current runtime: build it on ours.
        let client = wait(&runtime, async move {
            let kc = kube::config::Kubeconfig::read_from(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .expect("a kube config from the API server's kubeconfig");
            kube::Client::try_from(config).expect("a kube client")
        });
        Kube {
            runtime: Some(runtime),
            client,
        }
    }

    /// Runs `f(client)` on the client's runtime and waits for its result.
    pub fn run<T, F>(&self, f: impl FnOnce(kube::Client) -> F) -> T
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let runtime = self.runtime.as_ref().expect("the kube runtime is running");
        wait(runtime, f(self.client.clone()))
    }

    /// Creates `node`'s Node object, as its kubelet registers it.
    pub fn create_node(&self, node: &crate::node::Node) {
        self.create_node_object(node.name(), node.addresses(), node.labels());
    }

    /// Creates the Node object `name` with `addresses` and `labels`, as its kubelet
    /// registers it (see [`node_object`]).
    pub fn create_node_object(
        &self,
        name: &str,
        addresses: &NodeAddresses,
        labels: &BTreeMap<String, String>,
    ) {
        let node = node_object(name, addresses, labels);
        let name = name.to_string();
        self.run(|client| async move {
            Api::<Node>::all(client)
                .create(&PostParams::default(), &node)
                .await
                .unwrap_or_else(|e| panic!("cannot create Node {name}: {e}"));
        });
    }

    /// Deletes the Node object of `name`.
    pub fn delete_node(&self, name: &str) {
        let name = name.to_string();
        self.run(|client| async move {
            Api::<Node>::all(client)
                .delete(&name, &DeleteParams::default())
                .await
                .unwrap_or_else(|e| panic!("cannot delete Node {name}: {e}"));
        });
    }

    /// Deletes the Node object of `name` if it exists.
    pub fn delete_node_if_exists(&self, name: &str) {
        let name = name.to_string();
        self.run(|client| async move {
            match Api::<Node>::all(client)
                .delete(&name, &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                Err(e) => panic!("cannot delete Node {name}: {e}"),
            }
        });
    }

    /// Every Node object, by name.
    pub fn nodes(&self) -> BTreeMap<String, Node> {
        self.run(|client| async move {
            let list = Api::<Node>::all(client)
                .list(&Default::default())
                .await
                .unwrap_or_else(|e| panic!("cannot list Nodes: {e}"));
            list.items
                .into_iter()
                .map(|n| (n.metadata.name.clone().unwrap_or_default(), n))
                .collect()
        })
    }

    /// Every Node object's annotations, by name.
    pub fn node_annotations(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.run(|client| async move {
            let list = Api::<Node>::all(client)
                .list(&Default::default())
                .await
                .unwrap_or_else(|e| panic!("cannot list Nodes: {e}"));
            list.items
                .into_iter()
                .map(|n| {
                    let name = n.metadata.name.unwrap_or_default();
                    let annotations = n.metadata.annotations.unwrap_or_default();
                    (name, annotations.into_iter().collect())
                })
                .collect()
        })
    }
}

impl Drop for Kube {
    fn drop(&mut self) {
        // Dropping a runtime inside an async context panics; shutting down in the
        // background does not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `future` on `runtime` and blocks the calling thread (not a runtime) on a channel.
/// A panic in `future` continues in the caller, with its message.
fn wait<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    future: impl Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let task = runtime.spawn(future);
    runtime.spawn(async move {
        let _ = tx.send(task.await);
    });
    match rx.recv().expect("the testbed's kube runtime is gone") {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("a Kubernetes call of the testbed was cancelled: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addressing::Layout;

    /// spec.podCIDR, spec.podCIDRs and the InternalIP of `node`'s object.
    fn summary(node: &Node) -> (String, Vec<String>, String) {
        let spec = node.spec.clone().unwrap_or_default();
        let internal = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.clone())
            .unwrap_or_default();
        (
            spec.pod_cidr.unwrap_or_default(),
            spec.pod_cidrs.unwrap_or_default(),
            internal,
        )
    }

    #[test]
    fn node_objects_carry_the_pod_cidrs_of_their_layout_and_an_internal_ip_of_its_underlay() {
        let cases = [
            (
                Layout::Ipv4,
                "10.244.2.0/24",
                &["10.244.2.0/24"][..],
                "192.0.2.34",
            ),
            (
                Layout::DualStackOverIpv4,
                "10.244.2.0/24",
                &["10.244.2.0/24", "fd00:10:244:2::/64"][..],
                "192.0.2.34",
            ),
            (
                Layout::DualStackOverIpv6,
                "10.244.2.0/24",
                &["10.244.2.0/24", "fd00:10:244:2::/64"][..],
                "2001:db8:0:2::2",
            ),
            (
                Layout::Ipv6,
                "fd00:10:244:2::/64",
                &["fd00:10:244:2::/64"][..],
                "2001:db8:0:2::2",
            ),
        ];
        for (layout, first, all, internal) in cases {
            let addresses = NodeAddresses::for_layout(2, layout);
            let node = node_object("node2", &addresses, &BTreeMap::new());
            assert_eq!(
                summary(&node),
                (
                    first.to_string(),
                    all.iter().map(|c| c.to_string()).collect(),
                    internal.to_string()
                ),
                "{layout:?}"
            );
        }
    }
}
