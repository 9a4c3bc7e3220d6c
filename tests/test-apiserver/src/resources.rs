//! The resource types the server serves: the built-in ones (Nodes, Events, Namespaces,
//! CRDs) and the custom resources that stored CustomResourceDefinitions declare.
//!
//! A [`Resource`] says how one group/version/plural is addressed, named and stored; the
//! store only knows `storage_key`s, so two API versions (core/v1 and events.k8s.io/v1
//! Events, or several versions of one CRD) can share one set of stored objects.

use serde_json::{Value, json};

use crate::error::Qualified;

/// Storage keys of the built-in types.
pub const NODES: &str = "core/nodes";
pub const EVENTS: &str = "core/events";
pub const NAMESPACES: &str = "core/namespaces";
pub const CRDS: &str = "apiextensions.k8s.io/customresourcedefinitions";

/// What kind of object this is beyond plain generic CRUD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Node,
    /// core/v1 Event (the storage form of all events).
    CoreEvent,
    /// events.k8s.io/v1 Event, converted to and from the core/v1 storage form.
    EventsV1Event,
    Namespace,
    Crd,
    Custom,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// API group; empty for the core (legacy) group.
    pub group: String,
    /// The version this request addresses.
    pub version: String,
    /// The version objects are stored as (sets `apiVersion` in storage).
    pub storage_version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Serves the `/status` subresource; PUT/PATCH on the main resource then keep status.
    pub status_subresource: bool,
    pub flavor: Flavor,
    pub storage_key: String,
    /// `additionalPrinterColumns` of a CRD version (for Table output).
    pub printer_columns: Vec<Value>,
}

impl Resource {
    /// `apiVersion` as clients see it for this request's version.
    pub fn api_version(&self) -> String {
        group_version(&self.group, &self.version)
    }

    /// `apiVersion` of the stored form (events.k8s.io Events are stored as core/v1).
    pub fn storage_api_version(&self) -> String {
        if self.flavor == Flavor::EventsV1Event {
            return "v1".into();
        }
        group_version(&self.group, &self.storage_version)
    }

    pub fn qualified(&self) -> Qualified {
        Qualified::new(&self.group, &self.plural)
    }

    pub fn is_custom(&self) -> bool {
        self.flavor == Flavor::Custom
    }

    /// kube-apiserver lets PUT without `metadata.resourceVersion` through for built-in
    /// types but not for custom resources and CRDs.
    pub fn allows_unconditional_update(&self) -> bool {
        !matches!(self.flavor, Flavor::Custom | Flavor::Crd)
    }

    /// Whether PUT on a missing object creates it (true only for Events).
    pub fn allows_create_on_update(&self) -> bool {
        matches!(self.flavor, Flavor::CoreEvent | Flavor::EventsV1Event)
    }

    /// Whether DELETE answers with the deleted object (else a Success Status).
    pub fn returns_deleted_object(&self) -> bool {
        matches!(
            self.flavor,
            Flavor::Custom | Flavor::Crd | Flavor::Namespace
        )
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }

    /// Validates a name the way this type's registry strategy does.
    pub fn validate_name(&self, name: &str) -> Result<(), String> {
        match self.flavor {
            Flavor::CoreEvent | Flavor::EventsV1Event => crate::meta::validate_path_segment(name),
            Flavor::Namespace => crate::meta::validate_dns_label(name),
            _ => crate::meta::validate_dns_subdomain(name),
        }
    }
}

pub fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    plural: &str,
    singular: &str,
    kind: &str,
    namespaced: bool,
    short_names: &[&str],
    status: bool,
    flavor: Flavor,
    storage_key: &str,
) -> Resource {
    Resource {
        group: group.into(),
        version: "v1".into(),
        storage_version: "v1".into(),
        plural: plural.into(),
        singular: singular.into(),
        kind: kind.into(),
        list_kind: format!("{kind}List"),
        namespaced,
        short_names: short_names.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        status_subresource: status,
        flavor,
        storage_key: storage_key.into(),
        printer_columns: Vec::new(),
    }
}

/// The built-in resource types, in discovery order.
pub fn builtins() -> Vec<Resource> {
    let mut crd = builtin(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "customresourcedefinition",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        true,
        Flavor::Crd,
        CRDS,
    );
    crd.categories = vec!["api-extensions".into()];
    vec![
        builtin(
            "",
            "events",
            "event",
            "Event",
            true,
            &["ev"],
            false,
            Flavor::CoreEvent,
            EVENTS,
        ),
        builtin(
            "",
            "namespaces",
            "namespace",
            "Namespace",
            false,
            &["ns"],
            true,
            Flavor::Namespace,
            NAMESPACES,
        ),
        builtin(
            "",
            "nodes",
            "node",
            "Node",
            false,
            &["no"],
            true,
            Flavor::Node,
            NODES,
        ),
        crd,
        builtin(
            "events.k8s.io",
            "events",
            "event",
            "Event",
            true,
            &["ev"],
            false,
            Flavor::EventsV1Event,
            EVENTS,
        ),
    ]
}

/// The served resources a stored CRD declares, one per served version (empty when the
/// CRD is malformed or being deleted).
pub fn from_crd(crd: &Value) -> Vec<Resource> {
    let spec = &crd["spec"];
    let (Some(group), Some(plural), Some(kind)) = (
        spec["group"].as_str(),
        spec["names"]["plural"].as_str(),
        spec["names"]["kind"].as_str(),
    ) else {
        return Vec::new();
    };
    if crate::meta::is_deleting(crd) {
        return Vec::new();
    }
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    let storage_version = versions
        .iter()
        .find(|v| v["storage"].as_bool() == Some(true))
        .or(versions.first())
        .and_then(|v| v["name"].as_str())
        .unwrap_or("v1")
        .to_string();
    versions
        .iter()
        .filter(|v| v["served"].as_bool().unwrap_or(true))
        .filter_map(|v| {
            let version = v["name"].as_str()?;
            Some(Resource {
                group: group.into(),
                version: version.into(),
                storage_version: storage_version.clone(),
                plural: plural.into(),
                singular: spec["names"]["singular"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| kind.to_lowercase()),
                kind: kind.into(),
                list_kind: spec["names"]["listKind"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| format!("{kind}List")),
                namespaced: spec["scope"].as_str() == Some("Namespaced"),
                short_names: strings(&spec["names"]["shortNames"]),
                categories: strings(&spec["names"]["categories"]),
                status_subresource: v["subresources"]["status"].is_object(),
                flavor: Flavor::Custom,
                storage_key: format!("{group}/{plural}"),
                printer_columns: v["additionalPrinterColumns"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The full set of served resources given the stored CRDs.
pub fn all(crds: &[Value]) -> Vec<Resource> {
    let mut out = builtins();
    for crd in crds {
        for r in from_crd(crd) {
            // A CRD may not shadow a built-in type.
            if !out
                .iter()
                .any(|o| o.group == r.group && o.plural == r.plural && o.version == r.version)
            {
                out.push(r);
            }
        }
    }
    out
}

/// Finds the resource a request path names.
pub fn find<'a>(
    all: &'a [Resource],
    group: &str,
    version: &str,
    plural: &str,
) -> Option<&'a Resource> {
    all.iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Computes the `status` a real apiextensions-apiserver would have settled on for a
/// CRD: names accepted and established, stored versions recorded.
pub fn crd_status(crd: &Value, old_status: Option<&Value>) -> Value {
    let spec = &crd["spec"];
    let storage = spec["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["storage"].as_bool() == Some(true)))
        .and_then(|v| v["name"].as_str())
        .unwrap_or("v1");
    let mut stored: Vec<Value> = old_status
        .and_then(|s| s["storedVersions"].as_array().cloned())
        .unwrap_or_default();
    if !stored.iter().any(|v| v.as_str() == Some(storage)) {
        stored.push(json!(storage));
    }
    let now = crate::meta::now_rfc3339();
    let condition = |t: &str, reason: &str, message: &str| {
        // Keep the old transition time when the condition already held.
        let since = old_status
            .and_then(|s| s["conditions"].as_array())
            .and_then(|cs| cs.iter().find(|c| c["type"] == t && c["status"] == "True"))
            .and_then(|c| c["lastTransitionTime"].as_str())
            .unwrap_or(&now)
            .to_string();
        json!({"type": t, "status": "True", "lastTransitionTime": since, "reason": reason, "message": message})
    };
    json!({
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "acceptedNames": spec["names"].clone(),
        "storedVersions": stored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer_crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "peers.wgmesh.io"},
            "spec": {
                "group": "wgmesh.io",
                "scope": "Cluster",
                "names": {"plural": "peers", "singular": "peer", "kind": "Peer", "shortNames": ["pe"]},
                "versions": [
                    {"name": "v1alpha1", "served": true, "storage": false},
                    {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}},
                    {"name": "v0", "served": false, "storage": false}
                ]
            }
        })
    }

    #[test]
    fn crd_declares_served_versions() {
        let rs = from_crd(&peer_crd());
        assert_eq!(rs.len(), 2);
        let v1 = &rs[1];
        assert_eq!(
            (v1.group.as_str(), v1.version.as_str(), v1.plural.as_str()),
            ("wgmesh.io", "v1", "peers")
        );
        assert_eq!(v1.kind, "Peer");
        assert_eq!(v1.list_kind, "PeerList");
        assert!(!v1.namespaced);
        assert!(v1.status_subresource);
        assert!(!rs[0].status_subresource);
        assert_eq!(rs[0].storage_version, "v1");
        assert_eq!(v1.storage_key, "wgmesh.io/peers");
        assert_eq!(v1.short_names, vec!["pe".to_string()]);
    }

    #[test]
    fn malformed_crds_serve_nothing() {
        assert!(from_crd(&json!({"spec": {}})).is_empty());
        assert!(from_crd(&json!(null)).is_empty());
    }

    #[test]
    fn lookup_covers_builtins_and_crds() {
        let all = all(&[peer_crd()]);
        assert_eq!(
            find(&all, "", "v1", "nodes").map(|r| r.flavor),
            Some(Flavor::Node)
        );
        assert_eq!(
            find(&all, "events.k8s.io", "v1", "events").map(|r| r.storage_key.as_str()),
            Some(EVENTS)
        );
        assert!(find(&all, "wgmesh.io", "v1alpha1", "peers").is_some());
        assert!(find(&all, "wgmesh.io", "v0", "peers").is_none());
    }

    #[test]
    fn crd_status_is_established() {
        let s = crd_status(&peer_crd(), None);
        assert_eq!(s["conditions"][1]["type"], "Established");
        assert_eq!(s["conditions"][1]["status"], "True");
        assert_eq!(s["storedVersions"], json!(["v1"]));
        assert_eq!(s["acceptedNames"]["kind"], "Peer");
    }
}
