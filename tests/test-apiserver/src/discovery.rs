//! Discovery documents (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/<g>`,
//! `/apis/<g>/<v>`), built from the served resource table. The OpenAPI documents are in
//! [`crate::openapi`].
//!
//! Only legacy (unaggregated) discovery is served: clients that ask for aggregated
//! discovery (`as=APIGroupDiscoveryList`) get the legacy document with a plain
//! `application/json` type and fall back, as they do against older servers.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::resources::{Resource, group_version};

/// The Kubernetes version the server claims to be.
pub const KUBE_VERSION: (&str, &str) = ("1", "33");

pub fn version() -> Value {
    let (major, minor) = KUBE_VERSION;
    json!({
        "major": major,
        "minor": minor,
        "gitVersion": format!("v{major}.{minor}.0"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
        "emulationMajor": major,
        "emulationMinor": minor,
    })
}

/// `/api`
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// Sorts versions the way Kubernetes prioritises them: GA before beta before alpha,
/// higher numbers first, then anything else alphabetically.
pub fn sort_versions(versions: &mut [String]) {
    fn rank(v: &str) -> (u8, i64, i64, String) {
        let parse = || -> Option<(u8, i64, i64)> {
            let rest = v.strip_prefix('v')?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let major: i64 = digits.parse().ok()?;
            let tail = &rest[digits.len()..];
            if tail.is_empty() {
                return Some((0, -major, 0));
            }
            for (prefix, level) in [("beta", 1u8), ("alpha", 2u8)] {
                if let Some(n) = tail.strip_prefix(prefix) {
                    return Some((level, -major, -n.parse::<i64>().ok()?));
                }
            }
            None
        };
        match parse() {
            Some((level, major, minor)) => (level, major, minor, String::new()),
            None => (3, 0, 0, v.to_string()),
        }
    }
    versions.sort_by_key(|v| rank(v));
}

/// Served groups (non-core) and their versions, in priority order.
fn groups(all: &[Resource]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in all.iter().filter(|r| !r.group.is_empty()) {
        let vs = out.entry(r.group.clone()).or_default();
        if !vs.contains(&r.version) {
            vs.push(r.version.clone());
        }
    }
    for vs in out.values_mut() {
        sort_versions(vs);
    }
    out
}

fn group_doc(group: &str, versions: &[String]) -> Value {
    let gv = |v: &String| json!({"groupVersion": group_version(group, v), "version": v});
    json!({
        "name": group,
        "versions": versions.iter().map(gv).collect::<Vec<_>>(),
        "preferredVersion": versions.first().map(gv).unwrap_or(Value::Null),
    })
}

/// `/apis`
pub fn group_list(all: &[Resource]) -> Value {
    let groups: Vec<Value> = groups(all).iter().map(|(g, vs)| group_doc(g, vs)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`, or None when the group is not served.
pub fn group(all: &[Resource], group: &str) -> Option<Value> {
    let groups = groups(all);
    let vs = groups.get(group)?;
    let mut doc = group_doc(group, vs);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// `/api/v1` or `/apis/<group>/<version>`, or None when not served.
pub fn resource_list(all: &[Resource], group: &str, version: &str) -> Option<Value> {
    let rs: Vec<&Resource> = all
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if rs.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in rs {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        resources.push(entry);
        if r.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version(group, version),
        "resources": resources,
    }))
}

/// `/`: the list of served paths.
pub fn root_paths(all: &[Resource]) -> Value {
    let mut paths = vec![
        "/api".to_string(),
        "/api/v1".into(),
        "/apis".into(),
        "/openapi/v2".into(),
        "/openapi/v3".into(),
        "/version".into(),
        "/healthz".into(),
    ];
    for (g, vs) in groups(all) {
        paths.push(format!("/apis/{g}"));
        paths.extend(vs.iter().map(|v| format!("/apis/{g}/{v}")));
    }
    json!({"paths": paths})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{all, builtins};

    #[test]
    fn version_priority() {
        let mut vs: Vec<String> = ["v1alpha1", "v2", "v1beta2", "v1", "foo", "v1beta1", "v10"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        sort_versions(&mut vs);
        assert_eq!(
            vs,
            ["v10", "v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]
        );
    }

    #[test]
    fn core_resource_list_has_nodes_and_status() {
        let doc = resource_list(&builtins(), "", "v1").expect("served");
        let names: Vec<&str> = doc["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str())
            .collect();
        for want in ["nodes", "nodes/status", "events", "namespaces"] {
            assert!(names.contains(&want), "{want} in {names:?}");
        }
        assert!(resource_list(&builtins(), "", "v2").is_none());
    }

    #[test]
    fn crd_groups_are_discoverable() {
        let crd = json!({"spec": {"group": "wgmesh.io", "scope": "Cluster", "names": {"plural": "peers", "kind": "Peer"},
            "versions": [{"name": "v1alpha1", "served": true, "storage": false}, {"name": "v1", "served": true, "storage": true}]}});
        let all = all(&[crd]);
        let g = group(&all, "wgmesh.io").expect("group");
        assert_eq!(g["preferredVersion"]["groupVersion"], "wgmesh.io/v1");
        let list = group_list(&all);
        let names: Vec<&str> = list["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g["name"].as_str())
            .collect();
        assert_eq!(
            names,
            ["apiextensions.k8s.io", "events.k8s.io", "wgmesh.io"]
        );
    }
}
