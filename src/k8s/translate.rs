//! Kubernetes `Node` objects to wgmesh's plain [`NodeView`]. Pure.

use k8s_openapi::api::core::v1::Node;

use crate::model::{NodeView, annotation, label};

/// Condition a network plugin owns on every Node.
pub const NETWORK_UNAVAILABLE: &str = "NetworkUnavailable";
/// Reason wgmesh sets when the node's pod network is ready.
pub const READY_REASON: &str = "WgmeshReady";
/// Reason wgmesh sets when the node's wgmesh configuration keeps pods off the network.
pub const MISCONFIGURED_REASON: &str = "WgmeshMisconfigured";

/// The parts of a Node the mesh reads.
pub fn node_view(node: &Node) -> NodeView {
    let meta = &node.metadata;
    let annotations = meta
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(annotation::PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let spec = node.spec.as_ref();
    let pod_cidrs = match spec
        .and_then(|s| s.pod_cidrs.clone())
        .filter(|v| !v.is_empty())
    {
        Some(list) => list,
        // Clusters older than dual-stack only set the singular field.
        None => spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect(),
    };
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| {
            a.iter()
                .map(|a| (a.type_.clone(), a.address.clone()))
                .collect()
        })
        .unwrap_or_default();
    let labels = meta
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| [label::LOCATION, label::REGION].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    NodeView {
        name: meta.name.clone().unwrap_or_default(),
        annotations,
        pod_cidrs,
        addresses,
        labels,
    }
}

/// The NetworkUnavailable condition the agent sets: `unavailable` with a reason and a
/// message, as on the Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkCondition {
    pub unavailable: bool,
    pub reason: String,
    pub message: String,
}

impl NetworkCondition {
    /// The node carries pod traffic.
    pub fn ready() -> Self {
        NetworkCondition {
            unavailable: false,
            reason: READY_REASON.into(),
            message: "wgmesh is running on this node".into(),
        }
    }

    /// The node must not host pods: its wgmesh configuration is wrong.
    pub fn misconfigured(message: String) -> Self {
        NetworkCondition {
            unavailable: true,
            reason: MISCONFIGURED_REASON.into(),
            message,
        }
    }
}

/// The node's NetworkUnavailable condition, if it has one.
pub fn network_condition(node: &Node) -> Option<NetworkCondition> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == NETWORK_UNAVAILABLE)
        .map(|c| NetworkCondition {
            unavailable: c.status == "True",
            reason: c.reason.clone().unwrap_or_default(),
            message: c.message.clone().unwrap_or_default(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: serde_json::Value) -> Node {
        serde_json::from_value(json).expect("a Node")
    }

    #[test]
    fn a_node_becomes_a_view_with_only_wgmesh_annotations() {
        let n = node(serde_json::json!({
            "metadata": {"name": "a", "annotations": {
                "wgmesh.io/public-key": "k", "wgmesh.io/endpoint": "192.0.2.1:51820", "other.io/x": "y"}},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00::/64"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}, {"type": "Hostname", "address": "a"}]}
        }));
        let v = node_view(&n);
        assert_eq!(v.name, "a");
        assert_eq!(
            v.annotations.keys().collect::<Vec<_>>(),
            ["wgmesh.io/endpoint", "wgmesh.io/public-key"]
        );
        assert_eq!(v.pod_cidrs, ["10.244.1.0/24", "fd00::/64"]);
        assert_eq!(
            v.addresses[0],
            ("InternalIP".to_string(), "192.0.2.1".to_string())
        );
    }

    #[test]
    fn old_clusters_with_only_spec_pod_cidr_are_understood() {
        let v = node_view(&node(
            serde_json::json!({"metadata": {"name": "b"}, "spec": {"podCIDR": "10.244.2.0/24"}}),
        ));
        assert_eq!(v.pod_cidrs, ["10.244.2.0/24"]);
        let empty = node_view(&node(serde_json::json!({"metadata": {"name": "c"}})));
        assert!(
            empty.pod_cidrs.is_empty()
                && empty.addresses.is_empty()
                && empty.annotations.is_empty()
        );
    }

    #[test]
    fn the_network_condition_is_read_with_its_reason_and_message() {
        let with = |status: &str, reason: &str| {
            node(
                serde_json::json!({"metadata": {"name": "a"}, "status": {"conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "NetworkUnavailable", "status": status, "reason": reason,
                 "message": "wgmesh is running on this node"}]}}),
            )
        };
        assert_eq!(
            network_condition(&with("False", "WgmeshReady")),
            Some(NetworkCondition::ready())
        );
        let other = network_condition(&with("True", "NoRouteCreated")).unwrap();
        assert!(other.unavailable && other.reason == "NoRouteCreated");
        assert_ne!(
            network_condition(&with("False", "RouteCreated")),
            Some(NetworkCondition::ready()),
            "another plugin's condition is not wgmesh's"
        );
        assert_eq!(
            network_condition(&node(serde_json::json!({"metadata": {"name": "a"}}))),
            None
        );
    }
}
