//! Object lifecycle rules kube-apiserver's registry strategies apply, as pure functions:
//! what create fills in, what an update (main resource or `/status`) may change, when
//! `generation` moves, optimistic concurrency, and deletion with finalizers.

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::meta;
use crate::resources::{Flavor, Resource};
use crate::store::Change;

/// Which endpoint a write came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    Main,
    Status,
}

/// Checks `apiVersion`/`kind` of a request body (or patched object) against the
/// addressed resource (both may be absent, as kube-apiserver defaults them from the URL),
/// and that its `metadata` has ObjectMeta's types.
pub fn check_type(res: &Resource, obj: &Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    meta::check_object_meta(obj).map_err(|e| {
        ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {e}",
            kind = res.kind,
            version = res.version
        ))
    })?;
    let want = res.api_version();
    if let Some(av) = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        && av != want
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({want})"
        )));
    }
    if let Some(kind) = obj
        .get("kind")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        && kind != res.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            res.kind
        )));
    }
    Ok(())
}

fn set_type(res: &Resource, obj: &mut Value) {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(res.storage_api_version()));
        m.insert("kind".into(), json!(res.kind));
    }
}

/// Everything except `apiVersion`, `kind`, `metadata` and `status`: a change here bumps
/// `metadata.generation`.
fn spec_part(obj: &Value) -> Value {
    match obj {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        _ => Value::Null,
    }
}

fn check_namespace(res: &Resource, ns: &str, obj: &mut Value) -> Result<(), ApiError> {
    let body_ns = meta::namespace(obj).to_string();
    let md = meta::metadata_mut(obj);
    if res.namespaced {
        if !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        md.insert("namespace".into(), json!(ns));
    } else {
        md.remove("namespace");
    }
    Ok(())
}

/// Completes a new object for storage (in storage form): type, name (`generateName`),
/// namespace, uid, creationTimestamp, generation; status rules per type.
pub fn prepare_create(res: &Resource, ns: &str, mut obj: Value) -> Result<Value, ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    set_type(res, &mut obj);
    if !meta::resource_version(&obj).is_empty() {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    let generate = obj
        .pointer("/metadata/generateName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if meta::name(&obj).is_empty() && !generate.is_empty() {
        let name = format!("{generate}{}", meta::name_suffix());
        meta::metadata_mut(&mut obj).insert("name".into(), json!(name));
    }
    let name = meta::name(&obj).to_string();
    res.validate_name(&name)
        .map_err(|e| ApiError::invalid(&res.kind, &name, "metadata.name", e))?;
    check_namespace(res, ns, &mut obj)?;
    let md = meta::metadata_mut(&mut obj);
    md.insert("uid".into(), json!(meta::new_uid()));
    md.insert("creationTimestamp".into(), json!(meta::now_rfc3339()));
    md.insert("generation".into(), json!(1));
    for field in [
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
        "resourceVersion",
    ] {
        md.remove(field);
    }
    match res.flavor {
        // Custom resources with a status subresource cannot set status on create.
        Flavor::Custom if res.status_subresource => {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        Flavor::Namespace => {
            obj["status"] = json!({"phase": "Active"});
            if obj.pointer("/spec/finalizers").is_none() {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
        }
        Flavor::Crd => {
            validate_crd(&obj)?;
            obj["status"] = crate::resources::crd_status(&obj, None);
        }
        _ => {}
    }
    Ok(obj)
}

/// The minimal CRD checks that keep the served-resource table sane.
fn validate_crd(crd: &Value) -> Result<(), ApiError> {
    let name = meta::name(crd);
    let spec = &crd["spec"];
    let invalid = |field: &str, detail: &str| {
        ApiError::invalid("CustomResourceDefinition", name, field, detail)
    };
    let group = spec["group"].as_str().unwrap_or("");
    let plural = spec["names"]["plural"].as_str().unwrap_or("");
    if group.is_empty() || !group.contains('.') {
        return Err(invalid(
            "spec.group",
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() || meta::validate_dns_label(plural).is_err() {
        return Err(invalid(
            "spec.names.plural",
            "must be a lowercase DNS-1035 label",
        ));
    }
    if spec["names"]["kind"].as_str().unwrap_or("").is_empty() {
        return Err(invalid("spec.names.kind", "Required value"));
    }
    if name != format!("{plural}.{group}") {
        return Err(invalid(
            "metadata.name",
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if !matches!(spec["scope"].as_str(), Some("Cluster" | "Namespaced")) {
        return Err(invalid(
            "spec.scope",
            "Unsupported value: must be \"Cluster\" or \"Namespaced\"",
        ));
    }
    let versions = spec["versions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if versions.is_empty()
        || versions
            .iter()
            .any(|v| v["name"].as_str().unwrap_or("").is_empty())
    {
        return Err(invalid(
            "spec.versions",
            "must have at least one named version",
        ));
    }
    if versions
        .iter()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .count()
        != 1
    {
        return Err(invalid(
            "spec.versions",
            "must have exactly one version marked as storage version",
        ));
    }
    Ok(())
}

/// Decides an update of `old` to `new` (both in storage form; `new` is the PUT body or
/// the patched object). `require_rv`: a PUT of a type that forbids unconditional updates.
pub fn prepare_update(
    res: &Resource,
    ns: &str,
    name: &str,
    old: &Value,
    mut new: Value,
    sub: Subresource,
    require_rv: bool,
) -> Result<Change, ApiError> {
    if !new.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let body_name = meta::name(&new);
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let rv = meta::resource_version(&new).to_string();
    if !rv.is_empty() && rv != meta::resource_version(old) {
        return Err(ApiError::conflict(&res.qualified(), name));
    }
    if rv.is_empty() && require_rv && !res.allows_unconditional_update() {
        return Err(ApiError::invalid(
            &res.kind,
            name,
            "metadata.resourceVersion",
            "Invalid value: 0x0: must be specified for an update",
        ));
    }
    check_namespace(res, ns, &mut new)?;
    set_type(res, &mut new);
    let mut out = match sub {
        // /status changes only status (labels, annotations, spec stay as they were).
        Subresource::Status => {
            let mut out = old.clone();
            match new.get("status") {
                Some(s) => out["status"] = s.clone(),
                None => {
                    if let Some(m) = out.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            out
        }
        Subresource::Main => {
            if res.status_subresource {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            new
        }
    };
    // System metadata is owned by the server.
    let md = meta::metadata_mut(&mut out);
    md.insert("name".into(), json!(name));
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "resourceVersion",
    ] {
        match old.pointer(&format!("/metadata/{field}")) {
            Some(v) => md.insert(field.into(), v.clone()),
            None => md.remove(field),
        };
    }
    md.remove("managedFields");
    md.remove("selfLink");
    if spec_part(&out) != spec_part(old) {
        let generation = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            + 1;
        meta::metadata_mut(&mut out).insert("generation".into(), json!(generation));
    }
    match res.flavor {
        Flavor::Crd => {
            validate_crd(&out)?;
            out["status"] = crate::resources::crd_status(&out, old.get("status"));
        }
        Flavor::Namespace if sub == Subresource::Main => {
            out["status"] = old
                .get("status")
                .cloned()
                .unwrap_or_else(|| json!({"phase": "Active"}));
        }
        _ => {}
    }
    if meta::is_deleting(&out) && !meta::has_finalizers(&out) {
        return Ok(Change::Delete(Some(out)));
    }
    if meta::is_deleting(old) {
        let had: Vec<Value> = old
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let added = out
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|now| now.iter().any(|f| !had.contains(f)));
        if added {
            return Err(ApiError::Forbidden(format!(
                "{} \"{name}\" is forbidden: no new finalizers can be added if the object is being deleted",
                res.qualified()
            )));
        }
    }
    if &out == old {
        Ok(Change::Unchanged)
    } else {
        Ok(Change::Put(out))
    }
}

/// `DeleteOptions.preconditions`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl Preconditions {
    /// Reads them from a DeleteOptions body (absent or empty body: none).
    pub fn from_delete_options(body: &Value) -> Self {
        let p = &body["preconditions"];
        Preconditions {
            uid: p["uid"].as_str().map(String::from),
            resource_version: p["resourceVersion"].as_str().map(String::from),
        }
    }
}

/// Decides a delete: objects with finalizers only get `deletionTimestamp` (the delete
/// completes when the last finalizer is removed); others go at once.
pub fn prepare_delete(
    res: &Resource,
    current: &Value,
    pre: &Preconditions,
) -> Result<Change, ApiError> {
    let name = meta::name(current);
    if let Some(uid) = &pre.uid
        && uid != meta::uid(current)
    {
        return Err(ApiError::Conflict {
            what: res.qualified(),
            name: name.into(),
            detail: format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta::uid(current)
            ),
        });
    }
    if let Some(rv) = &pre.resource_version
        && rv != meta::resource_version(current)
    {
        return Err(ApiError::Conflict {
            what: res.qualified(),
            name: name.into(),
            detail: format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                meta::resource_version(current)
            ),
        });
    }
    if !meta::has_finalizers(current) {
        return Ok(Change::Delete(None));
    }
    if meta::is_deleting(current) {
        return Ok(Change::Unchanged);
    }
    let mut out = current.clone();
    let md = meta::metadata_mut(&mut out);
    md.insert("deletionTimestamp".into(), json!(meta::now_rfc3339()));
    md.insert("deletionGracePeriodSeconds".into(), json!(0));
    Ok(Change::Put(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{builtins, from_crd};

    fn nodes() -> Resource {
        builtins()
            .into_iter()
            .find(|r| r.plural == "nodes")
            .expect("nodes")
    }

    fn peers() -> Resource {
        from_crd(&json!({
            "spec": {"group": "wgmesh.io", "scope": "Cluster",
                     "names": {"plural": "peers", "kind": "Peer"},
                     "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}}]}
        }))
        .remove(0)
    }

    fn stored_node() -> Value {
        let n = prepare_create(&nodes(), "", json!({"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.0.0/24"}, "status": {"phase": "x"}}))
            .expect("create");
        let mut n = n;
        meta::metadata_mut(&mut n).insert("resourceVersion".into(), json!("5"));
        n
    }

    #[test]
    fn create_fills_system_metadata() {
        let n = stored_node();
        assert_eq!(n["apiVersion"], "v1");
        assert_eq!(n["kind"], "Node");
        assert_eq!(n["metadata"]["generation"], 1);
        assert_eq!(meta::uid(&n).len(), 36);
        assert!(n["metadata"]["creationTimestamp"].is_string());
        // Nodes keep status on create; custom resources with a status subresource do not.
        assert_eq!(n["status"]["phase"], "x");
        let p = prepare_create(
            &peers(),
            "",
            json!({"metadata": {"name": "p"}, "status": {"x": 1}}),
        )
        .expect("create");
        assert!(p.get("status").is_none());
        let g = prepare_create(&nodes(), "", json!({"metadata": {"generateName": "node-"}}))
            .expect("create");
        assert!(meta::name(&g).starts_with("node-") && meta::name(&g).len() == 10);
    }

    #[test]
    fn create_rejections() {
        let cases = [
            (json!({"metadata": {"name": "Bad_Name"}}), 422),
            (json!({"metadata": {}}), 422),
            (
                json!({"metadata": {"name": "a", "resourceVersion": "3"}}),
                400,
            ),
            (json!([1, 2]), 400),
        ];
        for (body, code) in cases {
            let err = prepare_create(&nodes(), "", body.clone()).expect_err("rejected");
            assert_eq!(err.code(), code, "{body}");
        }
        assert!(check_type(&nodes(), &json!({"apiVersion": "v2", "kind": "Node"})).is_err());
        assert!(check_type(&nodes(), &json!({"apiVersion": "v1", "kind": "Pod"})).is_err());
        assert!(check_type(&nodes(), &json!({"apiVersion": "v1", "kind": "Node"})).is_ok());
    }

    #[test]
    fn update_rules_table() {
        let old = stored_node();
        let with = |f: &dyn Fn(&mut Value)| {
            let mut v = old.clone();
            f(&mut v);
            v
        };
        // (what, body, subresource, expectation)
        type Check = Box<dyn Fn(Result<Change, ApiError>)>;
        let cases: Vec<(&str, Value, Subresource, Check)> = vec![
            (
                "stale rv conflicts",
                with(&|v| v["metadata"]["resourceVersion"] = json!("4")),
                Subresource::Main,
                Box::new(|r| assert_eq!(r.expect_err("conflict").code(), 409)),
            ),
            (
                "identical body is a no-op",
                old.clone(),
                Subresource::Main,
                Box::new(|r| assert!(matches!(r, Ok(Change::Unchanged)))),
            ),
            (
                "status ignored on main resource",
                with(&|v| v["status"]["phase"] = json!("changed")),
                Subresource::Main,
                Box::new(|r| assert!(matches!(r, Ok(Change::Unchanged)))),
            ),
            (
                "status changes through /status",
                with(&|v| v["status"]["phase"] = json!("changed")),
                Subresource::Status,
                Box::new(|r| match r {
                    Ok(Change::Put(o)) => {
                        assert_eq!(o["status"]["phase"], "changed");
                        assert_eq!(o["metadata"]["generation"], 1);
                    }
                    other => panic!("{other:?}"),
                }),
            ),
            (
                "labels ignored through /status",
                with(&|v| v["metadata"]["labels"] = json!({"a": "b"})),
                Subresource::Status,
                Box::new(|r| assert!(matches!(r, Ok(Change::Unchanged)))),
            ),
            (
                "spec change bumps generation, keeps uid",
                with(&|v| {
                    v["spec"]["podCIDR"] = json!("10.244.1.0/24");
                    v["metadata"]["uid"] = json!("forged");
                }),
                Subresource::Main,
                Box::new(|r| match r {
                    Ok(Change::Put(o)) => {
                        assert_eq!(o["metadata"]["generation"], 2);
                        assert_ne!(o["metadata"]["uid"], "forged");
                    }
                    other => panic!("{other:?}"),
                }),
            ),
            (
                "annotation change keeps generation",
                with(&|v| v["metadata"]["annotations"] = json!({"k": "v"})),
                Subresource::Main,
                Box::new(|r| match r {
                    Ok(Change::Put(o)) => assert_eq!(o["metadata"]["generation"], 1),
                    other => panic!("{other:?}"),
                }),
            ),
            (
                "name mismatch is a bad request",
                with(&|v| v["metadata"]["name"] = json!("other")),
                Subresource::Main,
                Box::new(|r| assert_eq!(r.expect_err("400").code(), 400)),
            ),
        ];
        for (what, body, sub, check) in cases {
            eprintln!("case: {what}");
            check(prepare_update(&nodes(), "", "n1", &old, body, sub, true));
        }
    }

    #[test]
    fn custom_resources_need_a_resource_version_on_put() {
        let mut old = prepare_create(
            &peers(),
            "",
            json!({"metadata": {"name": "p"}, "spec": {"a": 1}}),
        )
        .expect("create");
        old["metadata"]["resourceVersion"] = json!("3");
        let mut body = old.clone();
        body["metadata"]
            .as_object_mut()
            .map(|m| m.remove("resourceVersion"));
        body["spec"]["a"] = json!(2);
        let err = prepare_update(
            &peers(),
            "",
            "p",
            &old,
            body.clone(),
            Subresource::Main,
            true,
        )
        .expect_err("422");
        assert_eq!(err.code(), 422);
        // Patches carry no such requirement.
        assert!(matches!(
            prepare_update(&peers(), "", "p", &old, body, Subresource::Main, false),
            Ok(Change::Put(_))
        ));
    }

    #[test]
    fn finalizers_delay_deletion() {
        let mut n = stored_node();
        assert!(matches!(
            prepare_delete(&nodes(), &n, &Preconditions::default()),
            Ok(Change::Delete(None))
        ));
        n["metadata"]["finalizers"] = json!(["wgmesh.io/cleanup"]);
        let Ok(Change::Put(deleting)) = prepare_delete(&nodes(), &n, &Preconditions::default())
        else {
            panic!("expected deletionTimestamp to be set");
        };
        assert!(meta::is_deleting(&deleting));
        assert!(matches!(
            prepare_delete(&nodes(), &deleting, &Preconditions::default()),
            Ok(Change::Unchanged)
        ));
        let mut cleared = deleting.clone();
        cleared["metadata"]["finalizers"] = json!([]);
        assert!(matches!(
            prepare_update(
                &nodes(),
                "",
                "n1",
                &deleting,
                cleared,
                Subresource::Main,
                false
            ),
            Ok(Change::Delete(Some(_)))
        ));
        let mut more = deleting.clone();
        more["metadata"]["finalizers"] = json!(["wgmesh.io/cleanup", "other"]);
        assert_eq!(
            prepare_update(
                &nodes(),
                "",
                "n1",
                &deleting,
                more,
                Subresource::Main,
                false
            )
            .expect_err("403")
            .code(),
            403
        );
        let pre = Preconditions {
            uid: Some("nope".into()),
            resource_version: None,
        };
        assert_eq!(
            prepare_delete(&nodes(), &n, &pre).expect_err("409").code(),
            409
        );
    }

    #[test]
    fn crd_validation() {
        let crds = builtins()
            .into_iter()
            .find(|r| r.plural == "customresourcedefinitions")
            .expect("crds");
        let good = json!({"metadata": {"name": "peers.wgmesh.io"}, "spec": {"group": "wgmesh.io", "scope": "Cluster",
            "names": {"plural": "peers", "kind": "Peer"}, "versions": [{"name": "v1", "served": true, "storage": true}]}});
        let created = prepare_create(&crds, "", good.clone()).expect("valid");
        assert_eq!(created["status"]["conditions"][1]["type"], "Established");
        let mut bad = good.clone();
        bad["metadata"]["name"] = json!("peers.other.io");
        assert_eq!(prepare_create(&crds, "", bad).expect_err("422").code(), 422);
    }
}
