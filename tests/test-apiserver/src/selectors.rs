//! Label and field selectors (`?labelSelector=`, `?fieldSelector=`) as list and watch
//! filters.
//!
//! Label selectors support the full set-based grammar (`a=b`, `a==b`, `a!=b`, `a in (x,y)`,
//! `a notin (x)`, `a`, `!a`, `a>1`, `a<1`). Field selectors support `=`, `==` and `!=` on
//! any dotted path of the object (`metadata.name`, `involvedObject.kind`, `spec.unschedulable`);
//! kube-apiserver only accepts a per-type list of fields, we accept any path.

use serde_json::Value;

use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    Gt(String, i64),
    Lt(String, i64),
}

#[derive(Debug, Clone, PartialEq)]
struct FieldReq {
    path: String,
    value: String,
    negate: bool,
}

/// A parsed label selector plus field selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Selector {
    pub fn parse(
        label_selector: Option<&str>,
        field_selector: Option<&str>,
    ) -> Result<Self, ApiError> {
        let labels = match label_selector {
            Some(s) => parse_labels(s)
                .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?,
            None => Vec::new(),
        };
        let fields = match field_selector {
            Some(s) => parse_fields(s).map_err(ApiError::bad_request)?,
            None => Vec::new(),
        };
        Ok(Selector { labels, fields })
    }

    /// A selector matching only `metadata.name == name` (watch/list of one named object).
    pub fn with_name(mut self, name: &str) -> Self {
        self.fields.push(FieldReq {
            path: "metadata.name".into(),
            value: name.into(),
            negate: false,
        });
        self
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let label = |k: &str| {
            crate::meta::labels(obj)
                .find(|(lk, _)| *lk == k)
                .map(|(_, v)| v)
        };
        let labels_ok = self.labels.iter().all(|req| match req {
            LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => label(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => label(k).is_none_or(|l| !vs.iter().any(|v| v == l)),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
            LabelReq::Gt(k, n) => label(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l > *n),
            LabelReq::Lt(k, n) => label(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l < *n),
        });
        labels_ok
            && self.fields.iter().all(|req| {
                let actual = field_value(obj, &req.path);
                (actual == req.value) != req.negate
            })
    }
}

/// The string value of a dotted field path; missing fields read as "".
fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesized set, found {rest:?}"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

fn parse_labels(s: &str) -> Result<Vec<LabelReq>, String> {
    let mut reqs = Vec::new();
    for part in split_top_level(s) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let req = if let Some(k) = part.strip_prefix('!') {
            LabelReq::NotExists(k.trim().to_string())
        } else if let Some((k, v)) = part.split_once("!=") {
            LabelReq::NotEq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once("==") {
            LabelReq::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once('=') {
            LabelReq::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once('>') {
            LabelReq::Gt(
                k.trim().into(),
                v.trim()
                    .parse()
                    .map_err(|_| format!("{part}: not an integer"))?,
            )
        } else if let Some((k, v)) = part.split_once('<') {
            LabelReq::Lt(
                k.trim().into(),
                v.trim()
                    .parse()
                    .map_err(|_| format!("{part}: not an integer"))?,
            )
        } else if let Some((k, rest)) = part.split_once(" notin ") {
            LabelReq::NotIn(k.trim().into(), parse_set(rest)?)
        } else if let Some((k, rest)) = part.split_once(" in ") {
            LabelReq::In(k.trim().into(), parse_set(rest)?)
        } else {
            LabelReq::Exists(part.to_string())
        };
        let key = match &req {
            LabelReq::Eq(k, _)
            | LabelReq::NotEq(k, _)
            | LabelReq::In(k, _)
            | LabelReq::NotIn(k, _)
            | LabelReq::Exists(k)
            | LabelReq::NotExists(k)
            | LabelReq::Gt(k, _)
            | LabelReq::Lt(k, _) => k,
        };
        if !valid_key(key) {
            return Err(format!("{part:?}: invalid label key {key:?}"));
        }
        reqs.push(req);
    }
    Ok(reqs)
}

fn parse_fields(s: &str) -> Result<Vec<FieldReq>, String> {
    let mut reqs = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (path, value, negate) = if let Some((k, v)) = part.split_once("!=") {
            (k, v, true)
        } else if let Some((k, v)) = part.split_once("==") {
            (k, v, false)
        } else if let Some((k, v)) = part.split_once('=') {
            (k, v, false)
        } else {
            return Err(format!(
                "invalid selector: '{s}'; can't understand '{part}'"
            ));
        };
        if path.trim().is_empty() {
            return Err(format!("invalid field selector: '{s}'"));
        }
        reqs.push(FieldReq {
            path: path.trim().into(),
            value: value.trim().into(),
            negate,
        });
    }
    Ok(reqs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> Value {
        json!({
            "metadata": {"name": "n1", "labels": {"role": "worker", "zone": "a", "prio": "5"}},
            "spec": {"unschedulable": true}
        })
    }

    #[test]
    fn label_selectors() {
        let cases = [
            ("", true),
            ("role=worker", true),
            ("role==worker", true),
            ("role=master", false),
            ("role!=master", true),
            ("role in (master, worker)", true),
            ("role notin (worker)", false),
            ("zone", true),
            ("!zone", false),
            ("!missing", true),
            ("missing", false),
            ("role=worker,zone=a", true),
            ("role=worker,zone=b", false),
            ("zone in (a,b),role", true),
            ("prio>3", true),
            ("prio<3", false),
            ("missing notin (x)", true),
        ];
        for (sel, want) in cases {
            let s = Selector::parse(Some(sel), None).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(&node()), want, "{sel}");
        }
    }

    #[test]
    fn field_selectors() {
        let cases = [
            ("metadata.name=n1", true),
            ("metadata.name==n1", true),
            ("metadata.name=n2", false),
            ("metadata.name!=n2", true),
            ("metadata.namespace=", true),
            ("spec.unschedulable=true", true),
            ("metadata.name=n1,spec.unschedulable=false", false),
        ];
        for (sel, want) in cases {
            let s = Selector::parse(None, Some(sel)).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(&node()), want, "{sel}");
        }
    }

    #[test]
    fn bad_selectors_are_bad_requests() {
        for sel in ["role in worker", "a b c=d", "prio>x"] {
            let err = Selector::parse(Some(sel), None).expect_err(sel);
            assert_eq!(err.code(), 400, "{sel}");
        }
        assert!(Selector::parse(None, Some("nonsense")).is_err());
    }

    #[test]
    fn with_name_narrows() {
        let s = Selector::default().with_name("n2");
        assert!(!s.matches(&node()));
        assert!(Selector::default().with_name("n1").matches(&node()));
    }
}
