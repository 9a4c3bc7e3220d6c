//! Test harness: the shared [`TestApiServer`] of wgmesh-testkit (the built
//! `test-apiserver` on a free port with a unique data directory, readiness awaited,
//! killed by pid on drop), and fixtures of this crate's tests.

// Each test binary uses a different subset of the harness.
#![allow(dead_code, unused_imports)]

use std::time::Duration;

pub use wgmesh_testkit::apiserver::TestApiServer as Server;
pub use wgmesh_testkit::eventually;

/// Upper bound for conditions the tests wait for.
pub const WAIT: Duration = Duration::from_secs(20);

/// A Node object for tests.
pub fn node(name: &str, labels: serde_json::Value) -> k8s_openapi::api::core::v1::Node {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"podCIDR": "10.244.1.0/24"},
        "status": {
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "Starting", "message": "booting"},
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"}
            ],
            "addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]
        }
    }))
    .expect("node")
}

/// The API status code of a kube-rs error (panics on other errors).
pub fn api_code(err: kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

pub const PEER_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: peers.wgmesh.io
spec:
  group: wgmesh.io
  scope: Cluster
  names:
    plural: peers
    singular: peer
    kind: Peer
    shortNames: [pe]
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources:
      status: {}
    additionalPrinterColumns:
    - name: Endpoint
      type: string
      jsonPath: .spec.endpoint
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;
