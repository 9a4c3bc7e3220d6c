//! Small helpers over `metadata` of generic (`serde_json::Value`) objects: accessors,
//! uids, timestamps, the types of ObjectMeta's fields, and name validation.

use serde_json::{Map, Value};

/// `metadata.name` (empty when absent).
pub fn name(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.namespace` (empty when absent).
pub fn namespace(obj: &Value) -> &str {
    obj.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.resourceVersion` (empty when absent).
pub fn resource_version(obj: &Value) -> &str {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub fn uid(obj: &Value) -> &str {
    obj.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata` as a mutable map, created (and replacing a non-object) when needed.
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let root = match obj.as_object_mut() {
        Some(m) => m,
        None => unreachable!("just made an object"),
    };
    let meta = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    match meta.as_object_mut() {
        Some(m) => m,
        None => unreachable!("just made an object"),
    }
}

/// `metadata.labels` as string pairs (non-string values are ignored).
pub fn labels(obj: &Value) -> impl Iterator<Item = (&str, &str)> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v)))
        })
}

/// `metadata.finalizers` is non-empty.
pub fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

pub fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

/// A random RFC 4122 version-4 UUID, as kube-apiserver puts in `metadata.uid`.
pub fn new_uid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Random bytes from the OS; falls back to time-derived bytes only if the OS RNG fails,
/// which is acceptable for uids and name suffixes (never used for secrets).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if getrandom::fill(&mut b).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = (nanos >> ((i % 16) * 8)) as u8 ^ (i as u8);
        }
    }
    b
}

/// The 5-character suffix `generateName` appends (kube uses consonants and digits).
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_bytes::<5>()
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Now as a metav1.Time (RFC 3339, whole seconds, UTC).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Now as a metav1.MicroTime (RFC 3339, microseconds, UTC).
pub fn now_micro() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// Parses an RFC 3339 timestamp (Time or MicroTime) into seconds since the epoch.
pub fn parse_time(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

/// The JSON type the shape of each ObjectMeta field must have.
#[derive(Clone, Copy)]
enum MetaType {
    Str,
    Int,
    StrMap,
    StrList,
    ObjList,
}

/// ObjectMeta's fields and their Go types (k8s.io/apimachinery `metav1.ObjectMeta`).
const OBJECT_META: &[(&str, MetaType, &str)] = &[
    ("name", MetaType::Str, "string"),
    ("generateName", MetaType::Str, "string"),
    ("namespace", MetaType::Str, "string"),
    ("selfLink", MetaType::Str, "string"),
    ("uid", MetaType::Str, "types.UID"),
    ("resourceVersion", MetaType::Str, "string"),
    ("generation", MetaType::Int, "int64"),
    ("creationTimestamp", MetaType::Str, "v1.Time"),
    ("deletionTimestamp", MetaType::Str, "v1.Time"),
    ("deletionGracePeriodSeconds", MetaType::Int, "int64"),
    ("labels", MetaType::StrMap, "map[string]string"),
    ("annotations", MetaType::StrMap, "map[string]string"),
    ("ownerReferences", MetaType::ObjList, "[]v1.OwnerReference"),
    ("finalizers", MetaType::StrList, "[]string"),
    (
        "managedFields",
        MetaType::ObjList,
        "[]v1.ManagedFieldsEntry",
    ),
];

/// Go's name of a JSON value's type in `json: cannot unmarshal …` errors.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks that `metadata` decodes as an ObjectMeta (kube-apiserver decodes it into Go
/// types for every kind, custom ones included, so a string where labels belong is
/// refused before anything else). Null stands for the zero value anywhere, as in Go.
/// The error reads like Go's `encoding/json` one.
pub fn check_object_meta(obj: &Value) -> Result<(), String> {
    let cannot = |v: &Value, field: &str, go_type: &str| {
        Err(format!(
            "json: cannot unmarshal {} into Go struct field {field} of type {go_type}",
            json_type(v)
        ))
    };
    let md = match obj.get("metadata") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(md)) => md,
        Some(other) => return cannot(other, ".metadata", "v1.ObjectMeta"),
    };
    for (field, ty, go_type) in OBJECT_META {
        let Some(v) = md.get(*field).filter(|v| !v.is_null()) else {
            continue;
        };
        let path = format!("ObjectMeta.metadata.{field}");
        match ty {
            MetaType::Str if !v.is_string() => return cannot(v, &path, go_type),
            MetaType::Int if !(v.is_i64() || v.is_u64()) => return cannot(v, &path, go_type),
            MetaType::StrMap => match v.as_object() {
                None => return cannot(v, &path, go_type),
                Some(m) => {
                    if let Some(bad) = m.values().find(|x| !(x.is_string() || x.is_null())) {
                        return cannot(bad, &path, "string");
                    }
                }
            },
            MetaType::StrList | MetaType::ObjList => {
                let Some(items) = v.as_array() else {
                    return cannot(v, &path, go_type);
                };
                let (fits, item_type): (fn(&Value) -> bool, &str) = match ty {
                    MetaType::StrList => (Value::is_string, "string"),
                    _ => (Value::is_object, go_type.trim_start_matches("[]")),
                };
                if let Some(bad) = items.iter().find(|x| !(fits(x) || x.is_null())) {
                    return cannot(bad, &path, item_type);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks a DNS-1123 subdomain (the rule for most object names): lowercase alphanumerics,
/// '-' and '.', starting and ending alphanumeric, at most 253 characters.
pub fn validate_dns_subdomain(name: &str) -> Result<(), String> {
    const MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
    if name.is_empty() || name.len() > 253 {
        return Err(if name.is_empty() {
            "name or generateName is required".into()
        } else {
            "must be no more than 253 characters".into()
        });
    }
    let ok = name.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    });
    if ok { Ok(()) } else { Err(MSG.into()) }
}

/// Checks a DNS-1123 label (namespace names): a subdomain without dots, at most 63 chars.
pub fn validate_dns_label(name: &str) -> Result<(), String> {
    if name.contains('.') || name.len() > 63 {
        return Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character".into());
    }
    validate_dns_subdomain(name)
}

/// Checks a name usable as a URL path segment (the rule for Events).
pub fn validate_path_segment(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name or generateName is required".into());
    }
    if name == "." || name == ".." {
        return Err(format!("may not be '{name}'"));
    }
    if name.contains('/') || name.contains('%') {
        return Err("may not contain '/' or '%'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn uids_look_like_v4_uuids_and_differ() {
        let a = new_uid();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, new_uid());
    }

    #[test]
    fn timestamps_round_trip() {
        let t = now_rfc3339();
        assert!(t.ends_with('Z') && t.len() == 20, "{t}");
        assert!(parse_time(&t).is_some());
        let m = now_micro();
        assert_eq!(m.len(), 27, "{m}");
        assert!(parse_time(&m).is_some());
    }

    #[test]
    fn name_validation() {
        for ok in ["a", "node-1", "a.b.c", "peers.wgmesh.io", "0"] {
            assert!(validate_dns_subdomain(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "-a", "a-", "a..b", "a_b", "a/b"] {
            assert!(validate_dns_subdomain(bad).is_err(), "{bad}");
        }
        assert!(validate_dns_label("kube-system").is_ok());
        assert!(validate_dns_label("a.b").is_err());
        assert!(validate_path_segment("n1.17f0a").is_ok());
        assert!(validate_path_segment("a/b").is_err());
    }

    #[test]
    fn object_meta_types_are_checked_like_go_decodes_them() {
        let ok = [
            json!({}),
            json!({"metadata": null}),
            json!({"metadata": {"name": "n", "labels": {"a": "b", "c": null}, "annotations": {},
                "generation": 3, "creationTimestamp": null, "finalizers": ["f"],
                "ownerReferences": [{"kind": "Node", "name": "n", "uid": "u", "apiVersion": "v1"}]}}),
        ];
        for o in ok {
            assert_eq!(check_object_meta(&o), Ok(()), "{o}");
        }
        let bad = [
            (
                json!({"metadata": 5}),
                "number into Go struct field .metadata of type v1.ObjectMeta",
            ),
            (
                json!({"metadata": {"name": 1}}),
                "number into Go struct field ObjectMeta.metadata.name of type string",
            ),
            (
                json!({"metadata": {"labels": "a=b"}}),
                "string into Go struct field ObjectMeta.metadata.labels of type map[string]string",
            ),
            (
                json!({"metadata": {"labels": {"a": 1}}}),
                "number into Go struct field ObjectMeta.metadata.labels of type string",
            ),
            (
                json!({"metadata": {"annotations": ["a"]}}),
                "array into Go struct field ObjectMeta.metadata.annotations of type map[string]string",
            ),
            (
                json!({"metadata": {"generation": "1"}}),
                "string into Go struct field ObjectMeta.metadata.generation of type int64",
            ),
            (
                json!({"metadata": {"generation": 1.5}}),
                "number into Go struct field ObjectMeta.metadata.generation of type int64",
            ),
            (
                json!({"metadata": {"finalizers": "f"}}),
                "string into Go struct field ObjectMeta.metadata.finalizers of type []string",
            ),
            (
                json!({"metadata": {"finalizers": [true]}}),
                "bool into Go struct field ObjectMeta.metadata.finalizers of type string",
            ),
            (
                json!({"metadata": {"ownerReferences": ["n"]}}),
                "string into Go struct field ObjectMeta.metadata.ownerReferences of type v1.OwnerReference",
            ),
            (
                json!({"metadata": {"creationTimestamp": 0}}),
                "number into Go struct field ObjectMeta.metadata.creationTimestamp of type v1.Time",
            ),
        ];
        for (o, want) in bad {
            assert_eq!(
                check_object_meta(&o),
                Err(format!("json: cannot unmarshal {want}")),
                "{o}"
            );
        }
    }

    #[test]
    fn accessors_tolerate_missing_fields() {
        let o = json!({"metadata": {"name": "n", "labels": {"a": "b", "n": 1}}});
        assert_eq!(name(&o), "n");
        assert_eq!(namespace(&o), "");
        assert_eq!(labels(&o).collect::<Vec<_>>(), vec![("a", "b")]);
        let mut v = json!(3);
        metadata_mut(&mut v).insert("name".into(), json!("x"));
        assert_eq!(name(&v), "x");
    }
}
