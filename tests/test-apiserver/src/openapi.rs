//! Pure: the OpenAPI documents, built from the served resource table: v3 (`/openapi/v3`, an index
//! and one document per group/version) and v2 (`/openapi/v2`, one Swagger 2.0 document,
//! as JSON or in the protobuf form client-go asks for, see [`crate::openapi_proto`]).
//!
//! Neither carries schemas. Each served kind gets the PATCH and PUT operations of its
//! object path, tagged with its group/version/kind and declaring the `fieldValidation`
//! query parameter: from that kubectl concludes that the server validates fields itself
//! and sends single objects without validating them client-side. A `kind: List` it
//! always validates client-side, item by item, against the v2 definitions (so it needs
//! `/openapi/v2`): with none, every item with an `apiVersion` and a `kind` passes, and
//! the server checks each one when kubectl creates it.

use serde_json::{Map, Value, json};

use crate::discovery::KUBE_VERSION;
use crate::resources::Resource;

/// `Content-Type` of the protobuf v2 document (kube-openapi answers the deprecated
/// `…spec.v2@v1.0+protobuf` that client-go sends with this one too).
pub const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// The two encodings `/openapi/v2` is served in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V2Format {
    Json,
    Protobuf,
}

/// Picks the v2 encoding from an `Accept` header the way kube-openapi does: clauses by
/// quality (then by specificity), the first one that JSON or protobuf matches; no
/// header means `*/*` (JSON). None: nothing acceptable (406).
pub fn v2_format(accept: Option<&str>) -> Option<V2Format> {
    const OFFERED: [(&str, V2Format); 3] = [
        ("json", V2Format::Json),
        (
            "com.github.proto-openapi.spec.v2@v1.0+protobuf",
            V2Format::Protobuf,
        ),
        (
            "com.github.proto-openapi.spec.v2.v1.0+protobuf",
            V2Format::Protobuf,
        ),
    ];
    let accept = match accept.map(str::trim) {
        None | Some("") => "*/*",
        Some(a) => a,
    };
    let mut clauses: Vec<(f32, u8, &str, &str)> = accept
        .split(',')
        .filter_map(|clause| {
            let mut parts = clause.split(';');
            let (ty, sub) = parts.next()?.trim().split_once('/')?;
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let specificity = u8::from(ty != "*") + u8::from(sub != "*");
            (q > 0.0).then_some((q, specificity, ty.trim(), sub.trim()))
        })
        .collect();
    clauses.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
    clauses.iter().find_map(|&(_, _, ty, sub)| {
        OFFERED
            .iter()
            .find(|(offered, _)| {
                (ty == "application" || ty == "*") && (sub == *offered || sub == "*")
            })
            .map(|&(_, format)| format)
    })
}

/// The two OpenAPI versions differ in how a parameter states its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Swagger2,
    OpenApi3,
}

fn parameter(dialect: Dialect, name: &str, location: &str) -> Value {
    let mut p = json!({"name": name, "in": location});
    match dialect {
        Dialect::Swagger2 => {
            p["type"] = json!("string");
            p["uniqueItems"] = json!(true);
        }
        Dialect::OpenApi3 => p["schema"] = json!({"type": "string", "uniqueItems": true}),
    }
    if location == "path" {
        p["required"] = json!(true);
    }
    p
}

/// `CoreV1`, `EventsV1`, `WgmeshIoV1alpha1`: kube-apiserver's spelling of a
/// group/version inside operation ids.
fn group_version_id(r: &Resource) -> String {
    let group = match r.group.as_str() {
        "" => "core",
        g => g.strip_suffix(".k8s.io").unwrap_or(g),
    };
    group
        .split(['.', '-'])
        .chain([r.version.as_str()])
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or(String::new(), |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

/// The object path of a kind (`/api/v1/nodes/{name}`,
/// `/apis/g/v/namespaces/{namespace}/p/{name}`) and its operations.
fn object_path(r: &Resource, dialect: Dialect) -> (String, Value) {
    let prefix = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    let mut path_params = vec![parameter(dialect, "name", "path")];
    let path = if r.namespaced {
        path_params.push(parameter(dialect, "namespace", "path"));
        format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
    } else {
        format!("{prefix}/{}/{{name}}", r.plural)
    };
    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let kind_id = format!(
        "{}{}{}",
        group_version_id(r),
        if r.namespaced { "Namespaced" } else { "" },
        r.kind
    );
    let operation = |action: &str, verb: &str, queries: &[&str]| {
        json!({
            "operationId": format!("{verb}{kind_id}"),
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
            "parameters": queries.iter().map(|q| parameter(dialect, q, "query")).collect::<Vec<_>>(),
            "responses": {"200": {"description": "OK"}},
        })
    };
    let item = json!({
        "parameters": path_params,
        "patch": operation("patch", "patch", &["dryRun", "fieldManager", "fieldValidation", "force"]),
        "put": operation("put", "replace", &["dryRun", "fieldManager", "fieldValidation"]),
    });
    (path, item)
}

fn info() -> Value {
    let (major, minor) = KUBE_VERSION;
    json!({"title": "Kubernetes", "version": format!("v{major}.{minor}.0")})
}

/// The OpenAPI v3 path key of a group/version (`api/v1`, `apis/<g>/<v>`).
fn v3_key(r: &Resource) -> String {
    if r.group.is_empty() {
        format!("api/{}", r.version)
    } else {
        format!("apis/{}/{}", r.group, r.version)
    }
}

/// `/openapi/v3`: the index of per-group-version documents.
pub fn v3_root(all: &[Resource], rv: u64) -> Value {
    let mut paths = Map::new();
    for r in all {
        let key = v3_key(r);
        // The hash lets clients cache; it changes when served resources may have.
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={rv:016X}")}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<api/v1 | apis/g/v>`, or None when not served.
pub fn v3(all: &[Resource], key: &str) -> Option<Value> {
    let paths: Map<String, Value> = all
        .iter()
        .filter(|r| v3_key(r) == key)
        .map(|r| object_path(r, Dialect::OpenApi3))
        .collect();
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": info(),
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// `/openapi/v2`: every served kind in one Swagger 2.0 document.
pub fn v2(all: &[Resource]) -> Value {
    let paths: Map<String, Value> = all
        .iter()
        .map(|r| object_path(r, Dialect::Swagger2))
        .collect();
    json!({
        "swagger": "2.0",
        "info": info(),
        "paths": paths,
        "definitions": {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{all, builtins};

    fn peer_crd() -> Value {
        json!({"spec": {"group": "wgmesh.io", "scope": "Namespaced", "names": {"plural": "peers", "kind": "Peer"},
            "versions": [{"name": "v1alpha1", "served": true, "storage": false}, {"name": "v1", "served": true, "storage": true}]}})
    }

    fn param_names(op: &Value) -> Vec<&str> {
        op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str())
            .collect()
    }

    #[test]
    fn v3_documents_declare_field_validation_per_kind() {
        let all = all(&[peer_crd()]);
        let doc = v3(&all, "apis/wgmesh.io/v1").expect("served");
        let op = &doc["paths"]["/apis/wgmesh.io/v1/namespaces/{namespace}/peers/{name}"]["patch"];
        assert_eq!(
            op["x-kubernetes-group-version-kind"],
            json!({"group": "wgmesh.io", "version": "v1", "kind": "Peer"})
        );
        assert_eq!(op["operationId"], "patchWgmeshIoV1NamespacedPeer");
        assert!(param_names(op).contains(&"fieldValidation"), "{op}");
        assert_eq!(op["parameters"][0]["schema"]["type"], "string");
        assert!(v3(&all, "apis/wgmesh.io/v2").is_none());
        assert!(
            v3_root(&all, 7)["paths"]["apis/wgmesh.io/v1alpha1"]["serverRelativeURL"].is_string()
        );
    }

    #[test]
    fn v2_document_has_every_served_kind_and_no_definitions() {
        let doc = v2(&all(&[peer_crd()]));
        assert_eq!(doc["swagger"], "2.0");
        assert_eq!(doc["definitions"], json!({}));
        for (path, kind, id) in [
            ("/api/v1/nodes/{name}", "Node", "patchCoreV1Node"),
            (
                "/api/v1/namespaces/{namespace}/events/{name}",
                "Event",
                "patchCoreV1NamespacedEvent",
            ),
            (
                "/apis/events.k8s.io/v1/namespaces/{namespace}/events/{name}",
                "Event",
                "patchEventsV1NamespacedEvent",
            ),
            (
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}",
                "CustomResourceDefinition",
                "patchApiextensionsV1CustomResourceDefinition",
            ),
            (
                "/apis/wgmesh.io/v1alpha1/namespaces/{namespace}/peers/{name}",
                "Peer",
                "patchWgmeshIoV1alpha1NamespacedPeer",
            ),
        ] {
            let item = &doc["paths"][path];
            let op = &item["patch"];
            assert_eq!(
                op["x-kubernetes-group-version-kind"]["kind"], kind,
                "{path}"
            );
            assert_eq!(op["operationId"], id, "{path}");
            assert!(param_names(op).contains(&"fieldValidation"), "{path}");
            // Swagger 2.0 types non-body parameters inline.
            assert_eq!(op["parameters"][0]["type"], "string", "{path}");
            let want_path_params: &[&str] = if path.contains("{namespace}") {
                &["name", "namespace"]
            } else {
                &["name"]
            };
            assert_eq!(param_names(item), want_path_params, "{path}");
        }
        let ids: Vec<&str> = doc["paths"]
            .as_object()
            .into_iter()
            .flat_map(|paths| paths.values())
            .flat_map(|item| [&item["patch"], &item["put"]])
            .filter_map(|op| op["operationId"].as_str())
            .collect();
        let unique: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "operation ids are unique: {ids:?}");
        assert_eq!(
            v2(&builtins())["paths"].as_object().map(Map::len),
            Some(builtins().len())
        );
    }

    #[test]
    fn v2_format_follows_the_accept_header() {
        use V2Format::{Json, Protobuf};
        let cases = [
            (None, Some(Json)),
            (Some(""), Some(Json)),
            (Some("*/*"), Some(Json)),
            (Some("application/json"), Some(Json)),
            (Some("application/*"), Some(Json)),
            // What client-go's OpenAPISchema() sends.
            (
                Some("application/com.github.proto-openapi.spec.v2@v1.0+protobuf"),
                Some(Protobuf),
            ),
            (
                Some("application/com.github.proto-openapi.spec.v2.v1.0+protobuf"),
                Some(Protobuf),
            ),
            (
                Some(
                    "application/json;q=0.5, application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                ),
                Some(Protobuf),
            ),
            (Some("*/*;q=0.8, application/json"), Some(Json)),
            (Some("text/plain, */*;q=0.1"), Some(Json)),
            (Some("application/json;q=0"), None),
            (Some("text/html"), None),
            (Some("application/yaml"), None),
        ];
        for (accept, want) in cases {
            assert_eq!(v2_format(accept), want, "{accept:?}");
        }
    }
}
