//! Pure: the protobuf form of the OpenAPI v2 document, the only form client-go's
//! `OpenAPISchema()` accepts: gnostic's `openapi.v2.Document` message
//! (github.com/google/gnostic-models, `openapiv2/OpenAPIv2.proto`; field numbers below
//! are from it), encoded from the JSON document as kube-apiserver does (kube-openapi's
//! `ToProtoBinary`). Vendor extensions (`x-…`) become `NamedAny`s whose value is the
//! extension as YAML text, as gnostic's compiler stores them.
//!
//! Only the part of Swagger 2.0 that [`crate::openapi::v2`] emits is covered; anything
//! else is an error rather than a silently dropped field, so a document that outgrows
//! the encoder fails its tests.

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("{at}: not covered by the OpenAPI v2 protobuf encoding")]
    Unsupported { at: String },
    #[error("{at}: expected {expected}")]
    Type { at: String, expected: &'static str },
    #[error("{at}: extension value as YAML: {detail}")]
    Yaml { at: String, detail: String },
}

/// Encodes a Swagger 2.0 JSON document as a gnostic `openapi.v2.Document`.
pub fn encode_document(doc: &Value) -> Result<Vec<u8>, EncodeError> {
    Ok(encode(&DOCUMENT, doc, "")?.0)
}

/// A message being written (protobuf wire format). Like Go's `proto.Marshal` for
/// proto3, it leaves out empty strings and false booleans; sub-messages are always
/// written (their presence is what distinguishes `{}` from absent).
#[derive(Debug, Default)]
struct Msg(Vec<u8>);

const VARINT: u64 = 0;
const LEN: u64 = 2;

impl Msg {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.varint((u64::from(field) << 3) | LEN);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }

    fn boolean(&mut self, field: u32, b: bool) {
        if b {
            self.varint((u64::from(field) << 3) | VARINT);
            self.varint(1);
        }
    }

    fn message(&mut self, field: u32, m: Msg) {
        self.bytes(field, &m.0);
    }

    /// `Named…{name = 1; value = 2}`: one entry of a map-like JSON object.
    fn named(&mut self, field: u32, name: &str, value: Msg) {
        let mut entry = Msg::default();
        entry.string(1, name);
        entry.message(2, value);
        self.message(field, entry);
    }
}

type Encoder = fn(&Value, &str) -> Result<Msg, EncodeError>;

/// How a JSON member maps to a field.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bool,
    /// A JSON array of strings (`repeated string`).
    Strs,
    Msg(Encoder),
    /// A JSON array, one message per element (`repeated Message`).
    Each(Encoder),
}

/// A message whose fields are JSON members with fixed names.
struct Spec {
    fields: &'static [(&'static str, u32, Kind)],
    /// The `repeated NamedAny vendor_extension` field taking `x-…` members.
    extensions: Option<u32>,
    /// Members with free names (paths, response codes): `repeated Named…` at this field.
    others: Option<(u32, Encoder)>,
}

fn encode(spec: &Spec, v: &Value, at: &str) -> Result<Msg, EncodeError> {
    let obj = v.as_object().ok_or_else(|| type_error(at, "an object"))?;
    // A JSON pointer: `~` and `/` in keys (paths) escaped.
    let here = |key: &str| format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
    let mut m = Msg::default();
    // Fixed fields first, in field-number order (the order Go's proto.Marshal writes).
    for &(name, field, kind) in spec.fields {
        if let Some(value) = obj.get(name) {
            encode_field(&mut m, field, kind, value, &here(name))?;
        }
    }
    for (key, value) in obj {
        if spec.fields.iter().any(|(name, ..)| name == key) {
            continue;
        }
        if let (Some(field), true) = (spec.extensions, key.starts_with("x-")) {
            m.named(field, key, any(value, &here(key))?);
        } else if let Some((field, encoder)) = spec.others {
            m.named(field, key, encoder(value, &here(key))?);
        } else {
            return Err(EncodeError::Unsupported { at: here(key) });
        }
    }
    Ok(m)
}

fn encode_field(
    m: &mut Msg,
    field: u32,
    kind: Kind,
    v: &Value,
    at: &str,
) -> Result<(), EncodeError> {
    match kind {
        Kind::Str => m.string(field, v.as_str().ok_or_else(|| type_error(at, "a string"))?),
        Kind::Bool => m.boolean(
            field,
            v.as_bool().ok_or_else(|| type_error(at, "a boolean"))?,
        ),
        Kind::Strs => {
            for (i, s) in array(v, at)?.iter().enumerate() {
                let s = s
                    .as_str()
                    .ok_or_else(|| type_error(&format!("{at}/{i}"), "a string"))?;
                m.bytes(field, s.as_bytes());
            }
        }
        Kind::Msg(encoder) => m.message(field, encoder(v, at)?),
        Kind::Each(encoder) => {
            for (i, item) in array(v, at)?.iter().enumerate() {
                m.message(field, encoder(item, &format!("{at}/{i}"))?);
            }
        }
    }
    Ok(())
}

fn array<'a>(v: &'a Value, at: &str) -> Result<&'a Vec<Value>, EncodeError> {
    v.as_array().ok_or_else(|| type_error(at, "an array"))
}

fn type_error(at: &str, expected: &'static str) -> EncodeError {
    EncodeError::Type {
        at: at.to_string(),
        expected,
    }
}

/// `Any{yaml = 2}`.
fn any(v: &Value, at: &str) -> Result<Msg, EncodeError> {
    let yaml = serde_saphyr::to_string(v).map_err(|e| EncodeError::Yaml {
        at: at.to_string(),
        detail: e.to_string(),
    })?;
    let mut m = Msg::default();
    m.string(2, &yaml);
    Ok(m)
}

/// Wraps a message as field `field` of an enclosing one (a `oneof` choice).
fn wrap(field: u32, inner: Msg) -> Msg {
    let mut m = Msg::default();
    m.message(field, inner);
    m
}

const DOCUMENT: Spec = Spec {
    fields: &[
        ("swagger", 1, Kind::Str),
        ("info", 2, Kind::Msg(|v, at| encode(&INFO, v, at))),
        ("paths", 8, Kind::Msg(|v, at| encode(&PATHS, v, at))),
        // Schemas are not served: only an empty `definitions` is covered.
        ("definitions", 9, Kind::Msg(|v, at| encode(&EMPTY, v, at))),
    ],
    extensions: Some(16),
    others: None,
};

const EMPTY: Spec = Spec {
    fields: &[],
    extensions: None,
    others: None,
};

const INFO: Spec = Spec {
    fields: &[
        ("title", 1, Kind::Str),
        ("version", 2, Kind::Str),
        ("description", 3, Kind::Str),
    ],
    extensions: Some(7),
    others: None,
};

const PATHS: Spec = Spec {
    fields: &[],
    extensions: Some(1),
    others: Some((2, |v, at| encode(&PATH_ITEM, v, at))),
};

const OPERATION_ENCODER: Kind = Kind::Msg(|v, at| encode(&OPERATION, v, at));

const PATH_ITEM: Spec = Spec {
    fields: &[
        ("$ref", 1, Kind::Str),
        ("get", 2, OPERATION_ENCODER),
        ("put", 3, OPERATION_ENCODER),
        ("post", 4, OPERATION_ENCODER),
        ("delete", 5, OPERATION_ENCODER),
        ("options", 6, OPERATION_ENCODER),
        ("head", 7, OPERATION_ENCODER),
        ("patch", 8, OPERATION_ENCODER),
        ("parameters", 9, Kind::Each(parameters_item)),
    ],
    extensions: Some(10),
    others: None,
};

const OPERATION: Spec = Spec {
    fields: &[
        ("tags", 1, Kind::Strs),
        ("summary", 2, Kind::Str),
        ("description", 3, Kind::Str),
        ("operationId", 5, Kind::Str),
        ("produces", 6, Kind::Strs),
        ("consumes", 7, Kind::Strs),
        ("parameters", 8, Kind::Each(parameters_item)),
        ("responses", 9, Kind::Msg(|v, at| encode(&RESPONSES, v, at))),
        ("schemes", 10, Kind::Strs),
        ("deprecated", 11, Kind::Bool),
    ],
    extensions: Some(13),
    others: None,
};

/// `ParametersItem{Parameter parameter = 1 | JsonReference json_reference = 2}`;
/// `Parameter{… NonBodyParameter non_body_parameter = 2}`;
/// `NonBodyParameter{… query_parameter_sub_schema = 3 | path_parameter_sub_schema = 4}`.
fn parameters_item(v: &Value, at: &str) -> Result<Msg, EncodeError> {
    if v.get("$ref").is_some() {
        return Ok(wrap(2, encode(&JSON_REFERENCE, v, at)?));
    }
    let (choice, spec) = match v.get("in").and_then(Value::as_str) {
        Some("query") => (3, &QUERY_PARAMETER),
        Some("path") => (4, &PATH_PARAMETER),
        _ => {
            return Err(EncodeError::Unsupported {
                at: format!("{at}/in"),
            });
        }
    };
    Ok(wrap(1, wrap(2, wrap(choice, encode(spec, v, at)?))))
}

const JSON_REFERENCE: Spec = Spec {
    fields: &[("$ref", 1, Kind::Str), ("description", 2, Kind::Str)],
    extensions: None,
    others: None,
};

const QUERY_PARAMETER: Spec = Spec {
    fields: &[
        ("required", 1, Kind::Bool),
        ("in", 2, Kind::Str),
        ("description", 3, Kind::Str),
        ("name", 4, Kind::Str),
        ("allowEmptyValue", 5, Kind::Bool),
        ("type", 6, Kind::Str),
        ("format", 7, Kind::Str),
        ("uniqueItems", 20, Kind::Bool),
    ],
    extensions: Some(23),
    others: None,
};

const PATH_PARAMETER: Spec = Spec {
    fields: &[
        ("required", 1, Kind::Bool),
        ("in", 2, Kind::Str),
        ("description", 3, Kind::Str),
        ("name", 4, Kind::Str),
        ("type", 5, Kind::Str),
        ("format", 6, Kind::Str),
        ("uniqueItems", 19, Kind::Bool),
    ],
    extensions: Some(22),
    others: None,
};

/// `Responses{repeated NamedResponseValue response_code = 1}`, where
/// `ResponseValue{Response response = 1 | JsonReference json_reference = 2}`.
const RESPONSES: Spec = Spec {
    fields: &[],
    extensions: Some(2),
    others: Some((1, |v, at| {
        if v.get("$ref").is_some() {
            Ok(wrap(2, encode(&JSON_REFERENCE, v, at)?))
        } else {
            Ok(wrap(1, encode(&RESPONSE, v, at)?))
        }
    })),
};

const RESPONSE: Spec = Spec {
    fields: &[("description", 1, Kind::Str)],
    extensions: Some(5),
    others: None,
};

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::openapi;
    use crate::resources::builtins;

    /// An independent reading of the wire format: the length-delimited and varint
    /// fields of one message, in order.
    fn fields(mut b: &[u8]) -> Vec<(u32, Result<&[u8], u64>)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let (byte, rest) = b.split_first().expect("truncated varint");
                *b = rest;
                v |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            v
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let field = (key >> 3) as u32;
            match key & 7 {
                0 => out.push((field, Err(varint(&mut b)))),
                2 => {
                    let len = varint(&mut b) as usize;
                    let (value, rest) = b.split_at(len);
                    out.push((field, Ok(value)));
                    b = rest;
                }
                other => panic!("unexpected wire type {other}"),
            }
        }
        out
    }

    /// The length-delimited values of `field`.
    fn all(b: &[u8], field: u32) -> Vec<&[u8]> {
        fields(b)
            .into_iter()
            .filter(|(f, _)| *f == field)
            .filter_map(|(_, v)| v.ok())
            .collect()
    }

    fn one(b: &[u8], field: u32) -> &[u8] {
        let v = all(b, field);
        assert_eq!(v.len(), 1, "field {field} once in {b:?}");
        v[0]
    }

    fn text(b: &[u8], field: u32) -> &str {
        std::str::from_utf8(one(b, field)).expect("utf-8")
    }

    fn flag(b: &[u8], field: u32) -> bool {
        fields(b).iter().any(|(f, v)| *f == field && *v == Err(1))
    }

    /// The value of the `Named…` entry (name = 1, value = 2) called `name`.
    fn entry<'a>(entries: &[&'a [u8]], name: &str) -> &'a [u8] {
        let found: Vec<&[u8]> = entries
            .iter()
            .filter(|e| text(e, 1) == name)
            .map(|e| one(e, 2))
            .collect();
        assert_eq!(found.len(), 1, "one entry {name}");
        found[0]
    }

    #[test]
    fn kubectl_reads_a_kinds_field_validation_support_from_the_encoding() {
        let doc = openapi::v2(&builtins());
        let b = encode_document(&doc).expect("encodes");
        // Document: swagger = 1, info = 2 (title = 1, version = 2), paths = 8,
        // definitions = 9 (present, empty).
        assert_eq!(text(&b, 1), "2.0");
        assert_eq!(text(one(&b, 2), 1), "Kubernetes");
        assert!(text(one(&b, 2), 2).starts_with("v1."));
        assert!(one(&b, 9).is_empty());
        // Paths.path = 2: NamedPathItem; PathItem.patch = 8.
        let paths = all(one(&b, 8), 2);
        assert_eq!(paths.len(), builtins().len());
        let item = entry(&paths, "/api/v1/nodes/{name}");
        let patch = one(item, 8);
        assert_eq!(text(patch, 5), "patchCoreV1Node");
        // Operation.vendor_extension = 13: NamedAny{value = Any{yaml = 2}}.
        let gvk = text(entry(&all(patch, 13), "x-kubernetes-group-version-kind"), 2);
        let gvk: Value = serde_saphyr::from_str(gvk).expect("yaml");
        assert_eq!(gvk, json!({"group": "", "version": "v1", "kind": "Node"}));
        let action = text(entry(&all(patch, 13), "x-kubernetes-action"), 2);
        assert_eq!(action.trim(), "patch");
        // Operation.parameters = 8: ParametersItem.parameter = 1 →
        // Parameter.non_body_parameter = 2 → NonBodyParameter.query = 3 →
        // QueryParameterSubSchema{in = 2, name = 4, type = 6, unique_items = 20}.
        let queries: Vec<&[u8]> = all(patch, 8)
            .into_iter()
            .map(|p| one(one(one(p, 1), 2), 3))
            .collect();
        let names: Vec<&str> = queries.iter().map(|q| text(q, 4)).collect();
        assert!(names.contains(&"fieldValidation"), "{names:?}");
        for q in &queries {
            assert_eq!(text(q, 2), "query");
            assert_eq!(text(q, 6), "string");
            assert!(flag(q, 20));
        }
        // Operation.responses = 9: Responses.response_code = 1 → ResponseValue.response = 1
        // → Response.description = 1.
        let ok = entry(&all(one(patch, 9), 1), "200");
        assert_eq!(text(one(ok, 1), 1), "OK");
        // PathItem.parameters = 9 → … NonBodyParameter.path = 4:
        // PathParameterSubSchema{required = 1, in = 2, name = 4, type = 5}.
        let path_param = one(one(one(one(item, 9), 1), 2), 4);
        assert_eq!(text(path_param, 4), "name");
        assert_eq!(text(path_param, 2), "path");
        assert_eq!(text(path_param, 5), "string");
        assert!(flag(path_param, 1));
    }

    #[test]
    fn varints_past_one_byte_are_continued() {
        let mut m = Msg::default();
        m.varint(300);
        assert_eq!(m.0, [0xac, 0x02]);
        let long = "x".repeat(200);
        let doc = json!({"swagger": long});
        let b = encode_document(&doc).expect("encodes");
        assert_eq!(&b[..3], [0x0a, 0xc8, 0x01]);
        assert_eq!(text(&b, 1), long);
    }

    #[test]
    fn what_the_encoding_does_not_cover_is_an_error() {
        for (doc, at) in [
            (
                json!({"definitions": {"io.k8s.api.core.v1.Node": {"type": "object"}}}),
                "/definitions/io.k8s.api.core.v1.Node",
            ),
            (json!({"host": "example.com"}), "/host"),
            (
                json!({"paths": {"/a": {"post": {"parameters": [{"in": "body", "name": "body"}]}}}}),
                "/paths/~1a/post/parameters/0/in",
            ),
        ] {
            match encode_document(&doc) {
                Err(EncodeError::Unsupported { at: got }) => assert_eq!(got, at, "{doc}"),
                other => panic!("{doc}: {other:?}"),
            }
        }
        assert!(matches!(
            encode_document(&json!({"swagger": 2})),
            Err(EncodeError::Type {
                expected: "a string",
                ..
            })
        ));
    }
}
