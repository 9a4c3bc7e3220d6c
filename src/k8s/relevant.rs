//! The part of a Node wgmesh reads, and nothing else. Pure.
//!
//! Every agent keeps every Node of the cluster and is woken by each change. Most changes
//! are not about wgmesh: kubelet heartbeats and image lists, other controllers' labels,
//! taints and conditions. [`strip`] cuts a Node down to what the mesh reads before the
//! watch stores it (a kubelet's Node is several kilobytes, this is a few hundred bytes),
//! and [`same`] tells whether an update changed any of it, so the reconcile loop wakes
//! only when it did.
//!
//! What is kept: name, uid and resourceVersion; annotations under `wgmesh.io/`; the
//! location labels; `spec.podCIDR(s)`; `status.addresses`; and, on the local node only,
//! the NetworkUnavailable condition (the agent sets it and must see it).

use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::translate::NETWORK_UNAVAILABLE;
use crate::model::{annotation, label};

/// Labels that place a node (its location, for the choice of endpoints): what
/// `translate::node_view` keeps.
pub const LOCATION_LABELS: &[&str] = &[label::LOCATION, label::REGION];

/// `node` reduced to the fields wgmesh reads. `local` is this node's name: only its
/// NetworkUnavailable condition is kept.
pub fn strip(node: &mut Node, local: &str) {
    let meta = std::mem::take(&mut node.metadata);
    let is_local = meta.name.as_deref() == Some(local);
    node.metadata = ObjectMeta {
        annotations: meta
            .annotations
            .map(|a| {
                a.into_iter()
                    .filter(|(k, _)| k.starts_with(annotation::PREFIX))
                    .collect::<std::collections::BTreeMap<_, _>>()
            })
            .filter(|a| !a.is_empty()),
        labels: meta
            .labels
            .map(|l| {
                l.into_iter()
                    .filter(|(k, _)| LOCATION_LABELS.contains(&k.as_str()))
                    .collect::<std::collections::BTreeMap<_, _>>()
            })
            .filter(|l| !l.is_empty()),
        name: meta.name,
        resource_version: meta.resource_version,
        uid: meta.uid,
        ..ObjectMeta::default()
    };
    node.spec = node.spec.take().map(|s| NodeSpec {
        pod_cidr: s.pod_cidr,
        pod_cidrs: s.pod_cidrs,
        ..NodeSpec::default()
    });
    node.status = node.status.take().map(|s| NodeStatus {
        addresses: s.addresses,
        conditions: s
            .conditions
            .map(|c| {
                c.into_iter()
                    .filter(|c| is_local && c.type_ == NETWORK_UNAVAILABLE)
                    .map(|c| NodeCondition {
                        type_: c.type_,
                        status: c.status,
                        reason: c.reason,
                        message: c.message,
                        ..NodeCondition::default()
                    })
                    .collect::<Vec<_>>()
            })
            .filter(|c| !c.is_empty()),
        ..NodeStatus::default()
    });
}

/// True when two stripped Nodes differ in nothing wgmesh reads (the resourceVersion
/// changes with every write and says nothing).
pub fn same(a: &Node, b: &Node) -> bool {
    let (ma, mb) = (&a.metadata, &b.metadata);
    ma.name == mb.name
        && ma.uid == mb.uid
        && ma.annotations == mb.annotations
        && ma.labels == mb.labels
        && a.spec == b.spec
        && a.status == b.status
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Node as a kubelet and controllers leave it, with wgmesh's annotations.
    fn kubelet_node(name: &str, rv: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "uid": "u-1", "resourceVersion": rv,
                "creationTimestamp": "2024-01-01T00:00:00Z",
                "labels": {"kubernetes.io/hostname": name, "wgmesh.io/location": "dc1",
                           "topology.kubernetes.io/region": "eu", "topology.kubernetes.io/zone": "eu-1a"},
                "annotations": {"wgmesh.io/public-key": "k", "node.alpha.kubernetes.io/ttl": "0"},
                "managedFields": [{"manager": "kubelet", "operation": "Update"}],
            },
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"],
                     "providerID": "x://1", "taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "192.0.2.1"}],
                "conditions": [
                    {"type": "Ready", "status": "True", "lastHeartbeatTime": "2024-01-01T00:00:00Z"},
                    {"type": "NetworkUnavailable", "status": "False", "reason": "WgmeshReady",
                     "message": "m", "lastTransitionTime": "2024-01-01T00:00:00Z"},
                ],
                "images": [{"names": ["registry.example/app:1"], "sizeBytes": 1}],
                "nodeInfo": {"kubeletVersion": "v1.33.0", "architecture": "amd64", "bootID": "",
                             "containerRuntimeVersion": "", "kernelVersion": "", "kubeProxyVersion": "",
                             "machineID": "", "operatingSystem": "linux", "osImage": "", "systemUUID": ""},
                "capacity": {"cpu": "2"},
            },
        }))
        .expect("a Node")
    }

    fn stripped(mut n: Node, local: &str) -> Node {
        strip(&mut n, local);
        n
    }

    #[test]
    fn stripping_keeps_exactly_what_the_mesh_reads() {
        let n = stripped(kubelet_node("a", "5"), "b");
        let want: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "uid": "u-1", "resourceVersion": "5",
                "labels": {"wgmesh.io/location": "dc1", "topology.kubernetes.io/region": "eu"},
                "annotations": {"wgmesh.io/public-key": "k"}},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]},
        }))
        .unwrap();
        assert_eq!(n, want);
        // What the agent derives from it is what it derives from the whole Node.
        let whole = kubelet_node("a", "5");
        assert_eq!(
            super::super::translate::node_view(&n),
            super::super::translate::node_view(&whole)
        );
    }

    #[test]
    fn the_local_node_keeps_its_network_condition_without_timestamps() {
        let whole = kubelet_node("a", "5");
        let n = stripped(whole.clone(), "a");
        let conditions = n.status.as_ref().unwrap().conditions.as_ref().unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].type_, NETWORK_UNAVAILABLE);
        assert_eq!(conditions[0].last_transition_time, None);
        assert_eq!(
            super::super::translate::network_condition(&n),
            super::super::translate::network_condition(&whole)
        );
    }

    #[test]
    fn updates_of_other_fields_are_the_same_and_wgmesh_fields_are_not() {
        let base = stripped(kubelet_node("a", "5"), "a");
        let mut heartbeat = kubelet_node("a", "6");
        let status = heartbeat.status.as_mut().unwrap();
        status.conditions.as_mut().unwrap()[0].last_heartbeat_time = None;
        status.images = None;
        heartbeat
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "x".into());
        heartbeat.spec.as_mut().unwrap().taints = None;
        assert!(same(&base, &stripped(heartbeat, "a")));

        type Edit = fn(&mut Node);
        let edits: [(&str, Edit); 8] = [
            ("a wgmesh annotation", |n| {
                n.metadata
                    .annotations
                    .as_mut()
                    .unwrap()
                    .insert("wgmesh.io/endpoint".into(), "192.0.2.1:51820".into());
            }),
            ("a location label", |n| {
                n.metadata
                    .labels
                    .as_mut()
                    .unwrap()
                    .insert("wgmesh.io/location".into(), "dc2".into());
            }),
            ("the region label", |n| {
                n.metadata
                    .labels
                    .as_mut()
                    .unwrap()
                    .remove("topology.kubernetes.io/region");
            }),
            ("the uid (the node was recreated)", |n| {
                n.metadata.uid = Some("u-2".into())
            }),
            ("spec.podCIDRs", |n| {
                n.spec.as_mut().unwrap().pod_cidrs = Some(vec!["10.244.2.0/24".into()])
            }),
            ("spec.podCIDR", |n| n.spec.as_mut().unwrap().pod_cidr = None),
            ("status.addresses", |n| {
                n.status.as_mut().unwrap().addresses.as_mut().unwrap()[0].address =
                    "192.0.2.9".into()
            }),
            ("the local NetworkUnavailable condition", |n| {
                n.status.as_mut().unwrap().conditions.as_mut().unwrap()[1].status = "True".into()
            }),
        ];
        for (what, edit) in edits {
            let mut changed = kubelet_node("a", "7");
            edit(&mut changed);
            assert!(!same(&base, &stripped(changed, "a")), "{what}");
        }
        // Another node's NetworkUnavailable is not this agent's business.
        let other = stripped(kubelet_node("b", "5"), "a");
        let mut flipped = kubelet_node("b", "6");
        flipped
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[1]
            .status = "True".into();
        assert!(same(&other, &stripped(flipped, "a")));
    }
}
