//! Writes to the agent's own Node: its advertisement annotations and the
//! NetworkUnavailable condition. Patches touch only wgmesh's keys. Adapter.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::Error;
use super::translate::{NETWORK_UNAVAILABLE, NetworkCondition};
use crate::mesh::Advertisement;

/// Field manager recorded by the API server for wgmesh's changes.
pub const FIELD_MANAGER: &str = "wgmesh";

/// Merge-patches the three advertisement annotations onto `node`; nothing else changes.
pub async fn advertisement(api: &Api<Node>, node: &str, ad: &Advertisement) -> Result<(), Error> {
    patch_annotations(api, node, &ad.annotations(), "patch annotations of node").await
}

/// Sets the NetworkUnavailable condition on the node's status. A strategic merge
/// patch: conditions merge by type, so the kubelet's conditions stay.
pub async fn network_condition(
    api: &Api<Node>,
    node: &str,
    condition: &NetworkCondition,
) -> Result<(), Error> {
    let now = Timestamp::now().to_string();
    let patch = json!({"status": {"conditions": [{
        "type": NETWORK_UNAVAILABLE,
        "status": if condition.unavailable { "True" } else { "False" },
        "reason": condition.reason,
        "message": condition.message,
        "lastTransitionTime": now,
        "lastHeartbeatTime": now,
    }]}});
    api.patch_status(
        node,
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Strategic(&patch),
    )
    .await
    .map(drop)
    .map_err(|source| Error::Api {
        op: "patch status of node",
        target: node.to_string(),
        source,
    })
}

/// Asks the node's agent to rotate its key: a new value of `wgmesh.io/rotate-key`.
pub async fn request_rotation(api: &Api<Node>, node: &str, request: &str) -> Result<(), Error> {
    let annotations = BTreeMap::from([(crate::model::annotation::ROTATE_KEY, request)]);
    patch_annotations(api, node, &annotations, "request key rotation of node").await
}

/// Merge-patches `annotations` (a map) onto the node's; nothing else changes.
async fn patch_annotations(
    api: &Api<Node>,
    node: &str,
    annotations: &impl serde::Serialize,
    op: &'static str,
) -> Result<(), Error> {
    let patch = json!({"metadata": {"annotations": annotations}});
    api.patch(
        node,
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Merge(&patch),
    )
    .await
    .map(drop)
    .map_err(|source| Error::Api {
        op,
        target: node.to_string(),
        source,
    })
}
