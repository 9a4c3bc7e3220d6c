//! The PATCH flavours, as pure functions over `serde_json::Value`:
//! JSON merge patch (RFC 7386), strategic merge patch (kube's variant, for the fields
//! wgmesh and kubectl touch), JSON patch (RFC 6902) and a simplified server-side apply.
//!
//! Strategic merge patch needs each list's patch strategy, which kube-apiserver takes from
//! Go struct tags. We keep a small table of the lists that matter ([`list_strategy`]);
//! every other list is replaced, which is also the real default.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// The patch types kube-apiserver accepts, by request Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// How a strategic merge patch combines a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// The patch's list replaces the original (the default).
    Replace,
    /// Elements are objects merged by this key field.
    MergeKey(&'static str),
    /// Elements are scalars; the result is the union (original order, new ones appended).
    Union,
}

/// The patch strategy of the list at a dotted path from the object root.
pub fn list_strategy(path: &str) -> ListStrategy {
    match path {
        "status.conditions" | "status.addresses" => ListStrategy::MergeKey("type"),
        "metadata.ownerReferences" => ListStrategy::MergeKey("uid"),
        "metadata.finalizers" | "spec.podCIDRs" => ListStrategy::Union,
        _ => ListStrategy::Replace,
    }
}

/// RFC 7386 JSON merge patch: objects merge recursively, `null` deletes, anything else
/// (arrays included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target_map) = target {
        for (k, v) in patch_map {
            if v.is_null() {
                target_map.remove(k);
            } else {
                merge_patch(target_map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Strategic merge patch of `patch` into `target` (the whole object).
pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "strategic merge patch must be a JSON object",
        ));
    }
    smp_map(target, patch, "")
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn directive(v: &Value) -> Option<&str> {
    v.get("$patch").and_then(Value::as_str)
}

fn without_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), without_directives(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn smp_map(target: &mut Value, patch: &Value, path: &str) -> Result<(), ApiError> {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match directive(patch) {
        Some("replace") => {
            *target = without_directives(patch);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown patch directive {other:?}"
            )));
        }
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target_map) = target else {
        return Ok(());
    };
    for (k, v) in patch_map {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            // Ordering and retainKeys hints do not change which values end up stored
            // for the fields we merge; ignoring them is safe.
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = v.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = target_map.get_mut(field) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        let child_path = join(path, k);
        match v {
            Value::Null => {
                target_map.remove(k);
            }
            Value::Object(_) if directive(v) == Some("delete") => {
                target_map.remove(k);
            }
            Value::Object(_) => {
                let slot = target_map.entry(k.clone()).or_insert(Value::Null);
                smp_map(slot, v, &child_path)?;
                if slot.is_null() {
                    target_map.remove(k);
                }
            }
            Value::Array(items) => {
                let slot = target_map
                    .entry(k.clone())
                    .or_insert(Value::Array(Vec::new()));
                smp_list(slot, items, &child_path)?;
            }
            scalar => {
                target_map.insert(k.clone(), scalar.clone());
            }
        }
    }
    Ok(())
}

fn smp_list(target: &mut Value, patch: &[Value], path: &str) -> Result<(), ApiError> {
    let strategy = list_strategy(path);
    let replace_all = patch.iter().any(|e| directive(e) == Some("replace"));
    if strategy == ListStrategy::Replace || replace_all || !target.is_array() {
        *target = Value::Array(
            patch
                .iter()
                .filter(|e| directive(e) != Some("replace"))
                .map(without_directives)
                .collect(),
        );
        return Ok(());
    }
    let Value::Array(orig) = target else {
        return Ok(());
    };
    match strategy {
        ListStrategy::Union => {
            for e in patch {
                if !orig.contains(e) {
                    orig.push(e.clone());
                }
            }
        }
        ListStrategy::MergeKey(key) => {
            for e in patch {
                let Some(kv) = e.get(key) else {
                    return Err(ApiError::bad_request(format!(
                        "map: {e} does not contain declared merge key: {key}"
                    )));
                };
                let pos = orig.iter().position(|o| o.get(key) == Some(kv));
                match (directive(e), pos) {
                    (Some("delete"), Some(i)) => {
                        orig.remove(i);
                    }
                    (Some("delete"), None) => {}
                    (_, Some(i)) => smp_map(&mut orig[i], e, path)?,
                    (_, None) => orig.push(without_directives(e)),
                }
            }
        }
        ListStrategy::Replace => {}
    }
    Ok(())
}

/// RFC 6902 JSON patch. A malformed patch is a 400, one that does not apply a 422.
pub fn json_patch(
    target: &mut Value,
    patch: &Value,
    kind: &str,
    name: &str,
) -> Result<(), ApiError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    json_patch::patch(target, &ops.0)
        .map_err(|e| ApiError::invalid(kind, name, "patch", e.to_string()))
}

/// Server-side apply, simplified: the applied configuration is merged into the live
/// object with strategic-merge rules (maps recursively, keyed lists by key, other lists
/// replaced). Field ownership is not tracked, so fields a manager stops applying are
/// not removed and there are no apply conflicts.
pub fn apply(live: Option<&Value>, applied: &Value) -> Result<Value, ApiError> {
    let mut out = live.cloned().unwrap_or_else(|| Value::Object(Map::new()));
    smp_map(&mut out, applied, "")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386_examples() {
        // The examples of RFC 7386 appendix A.
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (i, (mut target, patch, want)) in cases.into_iter().enumerate() {
            merge_patch(&mut target, &patch);
            assert_eq!(target, want, "case {i}");
        }
    }

    fn node() -> Value {
        json!({
            "metadata": {"name": "n1", "annotations": {"a": "1", "b": "2"}, "labels": {"x": "y"}, "finalizers": ["f1"]},
            "spec": {"podCIDRs": ["10.0.0.0/24"], "taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "Starting"},
                    {"type": "MemoryPressure", "status": "False"}
                ],
                "addresses": [{"type": "InternalIP", "address": "10.1.0.1"}, {"type": "Hostname", "address": "n1"}]
            }
        })
    }

    #[test]
    fn strategic_merge_table() {
        type Check = Box<dyn Fn(&Value)>;
        let cases: Vec<(&str, Value, Check)> = vec![
            (
                "annotation added, others kept",
                json!({"metadata": {"annotations": {"c": "3"}}}),
                Box::new(|o| {
                    assert_eq!(
                        o["metadata"]["annotations"],
                        json!({"a": "1", "b": "2", "c": "3"})
                    )
                }),
            ),
            (
                "annotation removed with null",
                json!({"metadata": {"annotations": {"a": null}}}),
                Box::new(|o| assert_eq!(o["metadata"]["annotations"], json!({"b": "2"}))),
            ),
            (
                "condition merged by type, other kept",
                json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}),
                Box::new(|o| {
                    assert_eq!(
                        o["status"]["conditions"][0],
                        json!({"type": "Ready", "status": "True", "reason": "KubeletReady"})
                    );
                    assert_eq!(o["status"]["conditions"][1]["type"], "MemoryPressure");
                    assert_eq!(o["status"]["conditions"].as_array().map(Vec::len), Some(2));
                }),
            ),
            (
                "new condition appended",
                json!({"status": {"conditions": [{"type": "NetworkUnavailable", "status": "False"}]}}),
                Box::new(|o| {
                    assert_eq!(o["status"]["conditions"][2]["type"], "NetworkUnavailable")
                }),
            ),
            (
                "condition deleted with $patch",
                json!({"status": {"conditions": [{"type": "MemoryPressure", "$patch": "delete"}]}}),
                Box::new(|o| {
                    assert_eq!(o["status"]["conditions"].as_array().map(Vec::len), Some(1))
                }),
            ),
            (
                "addresses merged by type",
                json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.1.0.9"}]}}),
                Box::new(|o| {
                    assert_eq!(o["status"]["addresses"][0]["address"], "10.1.0.9");
                    assert_eq!(o["status"]["addresses"][1]["type"], "Hostname");
                }),
            ),
            (
                "unlisted list replaced",
                json!({"spec": {"taints": []}}),
                Box::new(|o| assert_eq!(o["spec"]["taints"], json!([]))),
            ),
            (
                "finalizers unioned",
                json!({"metadata": {"finalizers": ["f2", "f1"]}}),
                Box::new(|o| assert_eq!(o["metadata"]["finalizers"], json!(["f1", "f2"]))),
            ),
            (
                "delete from primitive list",
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["f1"]}}),
                Box::new(|o| assert_eq!(o["metadata"]["finalizers"], json!([]))),
            ),
            (
                "map replaced with $patch replace",
                json!({"metadata": {"labels": {"$patch": "replace", "z": "w"}}}),
                Box::new(|o| assert_eq!(o["metadata"]["labels"], json!({"z": "w"}))),
            ),
            (
                "list replaced with $patch replace element",
                json!({"status": {"conditions": [{"$patch": "replace"}, {"type": "Only", "status": "True"}]}}),
                Box::new(|o| {
                    assert_eq!(
                        o["status"]["conditions"],
                        json!([{"type": "Only", "status": "True"}])
                    )
                }),
            ),
            (
                "ordering hints ignored",
                json!({"status": {"$setElementOrder/conditions": [{"type": "Ready"}], "conditions": []}}),
                Box::new(|o| {
                    assert_eq!(o["status"]["conditions"].as_array().map(Vec::len), Some(2))
                }),
            ),
        ];
        for (what, patch, check) in cases {
            let mut o = node();
            strategic_merge(&mut o, &patch).unwrap_or_else(|e| panic!("{what}: {e}"));
            check(&o);
        }
    }

    #[test]
    fn strategic_merge_rejects_bad_patches() {
        let mut o = node();
        assert!(strategic_merge(&mut o, &json!([1])).is_err());
        assert!(
            strategic_merge(
                &mut o,
                &json!({"status": {"conditions": [{"status": "True"}]}})
            )
            .is_err()
        );
        assert!(strategic_merge(&mut o, &json!({"metadata": {"$patch": "explode"}})).is_err());
    }

    #[test]
    fn json_patch_applies_and_fails_cleanly() {
        let mut o = node();
        json_patch(
            &mut o,
            &json!([{"op": "add", "path": "/metadata/annotations/c", "value": "3"}]),
            "Node",
            "n1",
        )
        .expect("applies");
        assert_eq!(o["metadata"]["annotations"]["c"], "3");
        let err = json_patch(
            &mut o,
            &json!([{"op": "remove", "path": "/nope/x"}]),
            "Node",
            "n1",
        )
        .expect_err("fails");
        assert_eq!(err.code(), 422);
        let err = json_patch(&mut o, &json!({"op": "add"}), "Node", "n1").expect_err("malformed");
        assert_eq!(err.code(), 400);
    }

    #[test]
    fn apply_creates_and_merges() {
        let created =
            apply(None, &json!({"metadata": {"name": "p"}, "spec": {"a": 1}})).expect("apply");
        assert_eq!(
            created,
            json!({"metadata": {"name": "p"}, "spec": {"a": 1}})
        );
        let merged =
            apply(Some(&node()), &json!({"metadata": {"labels": {"n": "m"}}})).expect("apply");
        assert_eq!(merged["metadata"]["labels"], json!({"x": "y", "n": "m"}));
        assert_eq!(merged["status"], node()["status"]);
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
        assert_eq!(
            PatchType::from_content_type("application/strategic-merge-patch+json"),
            Some(PatchType::Strategic)
        );
        assert_eq!(
            PatchType::from_content_type("application/json-patch+json"),
            Some(PatchType::Json)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml"),
            Some(PatchType::Apply)
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
    }
}
