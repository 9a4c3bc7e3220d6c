//! `meta.k8s.io/v1` Table output (what `kubectl get` asks for with
//! `Accept: application/json;as=Table;…`): the default columns per type, and a CRD's
//! `additionalPrinterColumns` for simple JSONPaths (`.spec.x`, `.status.y[0].z`).

use serde_json::{Value, json};

use crate::meta;
use crate::resources::{Flavor, Resource};

/// A human duration like kubectl prints (`45s`, `5m`, `3h`, `2d`).
pub fn human_age(created: &str, now: i64) -> String {
    let Some(t) = meta::parse_time(created) else {
        return "<unknown>".into();
    };
    let s = (now - t).max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => format!("{m}m{}s", s % 60),
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

/// Evaluates a simple JSONPath (`.a.b`, `.a[0].b`) against an object.
pub fn simple_jsonpath<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    for part in path
        .trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
    {
        let (field, index) = match part.split_once('[') {
            Some((f, rest)) => (f, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !field.is_empty() {
            cur = cur.get(field)?;
        }
        if let Some(i) = index {
            cur = cur.get(i)?;
        }
    }
    Some(cur)
}

fn cell(v: Option<&Value>) -> Value {
    match v {
        None | Some(Value::Null) => json!("<none>"),
        Some(Value::String(s)) => json!(s),
        Some(other) => other.clone(),
    }
}

fn column(name: &str, ty: &str, format: &str) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": "", "priority": 0})
}

fn node_status(node: &Value) -> String {
    let ready = node["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str());
    let mut s = match ready {
        Some("True") => "Ready".to_string(),
        Some("False") => "NotReady".to_string(),
        _ => "Unknown".to_string(),
    };
    if node["spec"]["unschedulable"].as_bool() == Some(true) {
        s.push_str(",SchedulingDisabled");
    }
    s
}

fn node_roles(node: &Value) -> String {
    let roles: Vec<&str> = meta::labels(node)
        .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
        .collect();
    if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    }
}

/// Columns and cells for one type.
fn columns_and_cells(res: &Resource, items: &[Value], now: i64) -> (Vec<Value>, Vec<Vec<Value>>) {
    let age = |o: &Value| {
        json!(human_age(
            o["metadata"]["creationTimestamp"].as_str().unwrap_or(""),
            now
        ))
    };
    let name = |o: &Value| json!(meta::name(o));
    match res.flavor {
        Flavor::Node => (
            vec![
                column("Name", "string", "name"),
                column("Status", "string", ""),
                column("Roles", "string", ""),
                column("Age", "string", ""),
                column("Version", "string", ""),
            ],
            items
                .iter()
                .map(|o| {
                    vec![
                        name(o),
                        json!(node_status(o)),
                        json!(node_roles(o)),
                        age(o),
                        cell(o.pointer("/status/nodeInfo/kubeletVersion")),
                    ]
                })
                .collect(),
        ),
        Flavor::CoreEvent | Flavor::EventsV1Event => (
            vec![
                column("Last Seen", "string", ""),
                column("Type", "string", ""),
                column("Reason", "string", ""),
                column("Object", "string", ""),
                column("Message", "string", ""),
            ],
            items
                .iter()
                .map(|o| {
                    let core = if res.flavor == Flavor::EventsV1Event {
                        crate::events::v1_to_core(o)
                    } else {
                        o.clone()
                    };
                    let last = [
                        "/series/lastObservedTime",
                        "/lastTimestamp",
                        "/eventTime",
                        "/metadata/creationTimestamp",
                    ]
                    .iter()
                    .find_map(|p| core.pointer(p).and_then(Value::as_str))
                    .unwrap_or("");
                    let obj = format!(
                        "{}/{}",
                        core["involvedObject"]["kind"]
                            .as_str()
                            .unwrap_or("")
                            .to_lowercase(),
                        core["involvedObject"]["name"].as_str().unwrap_or("")
                    );
                    vec![
                        json!(human_age(last, now)),
                        cell(core.get("type")),
                        cell(core.get("reason")),
                        json!(obj),
                        cell(core.get("message")),
                    ]
                })
                .collect(),
        ),
        Flavor::Namespace => (
            vec![
                column("Name", "string", "name"),
                column("Status", "string", ""),
                column("Age", "string", ""),
            ],
            items
                .iter()
                .map(|o| vec![name(o), cell(o.pointer("/status/phase")), age(o)])
                .collect(),
        ),
        Flavor::Crd => (
            vec![
                column("Name", "string", "name"),
                column("Created At", "date", ""),
            ],
            items
                .iter()
                .map(|o| vec![name(o), cell(o.pointer("/metadata/creationTimestamp"))])
                .collect(),
        ),
        Flavor::Custom if !res.printer_columns.is_empty() => {
            let mut cols = vec![column("Name", "string", "name")];
            cols.extend(res.printer_columns.iter().map(|c| {
                column(
                    c["name"].as_str().unwrap_or(""),
                    c["type"].as_str().unwrap_or("string"),
                    c["format"].as_str().unwrap_or(""),
                )
            }));
            let rows = items
                .iter()
                .map(|o| {
                    let mut row = vec![name(o)];
                    for c in &res.printer_columns {
                        let path = c["jsonPath"].as_str().unwrap_or("");
                        let v = simple_jsonpath(o, path);
                        row.push(if c["type"] == "date" {
                            v.and_then(Value::as_str)
                                .map(|t| json!(human_age(t, now)))
                                .unwrap_or_else(|| cell(None))
                        } else {
                            cell(v)
                        });
                    }
                    row
                })
                .collect();
            (cols, rows)
        }
        Flavor::Custom => (
            vec![
                column("Name", "string", "name"),
                column("Age", "string", ""),
            ],
            items.iter().map(|o| vec![name(o), age(o)]).collect(),
        ),
    }
}

/// The Table for `items` (objects in the client's view).
pub fn table(res: &Resource, items: &[Value], rv: u64) -> Value {
    let now = jiff::Timestamp::now().as_second();
    let (columns, cells) = columns_and_cells(res, items, now);
    let rows: Vec<Value> = items
        .iter()
        .zip(cells)
        .map(|(o, cells)| {
            json!({
                "cells": cells,
                "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"].clone()},
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::builtins;

    #[test]
    fn ages() {
        let t0 = meta::parse_time("2025-01-01T00:00:00Z").expect("time");
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (300, "5m0s"),
            (3600, "60m"),
            (4 * 3600 + 60, "4h1m"),
            (20 * 3600, "20h"),
            (3 * 86_400, "3d0h"),
            (30 * 86_400, "30d"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_age("2025-01-01T00:00:00Z", t0 + secs), want, "{secs}");
        }
        assert_eq!(human_age("junk", t0), "<unknown>");
    }

    #[test]
    fn jsonpaths() {
        let o = json!({"spec": {"a": {"b": 1}}, "status": {"l": [{"x": "y"}]}});
        assert_eq!(simple_jsonpath(&o, ".spec.a.b"), Some(&json!(1)));
        assert_eq!(simple_jsonpath(&o, ".status.l[0].x"), Some(&json!("y")));
        assert_eq!(simple_jsonpath(&o, ".spec.missing"), None);
    }

    #[test]
    fn node_table() {
        let nodes = builtins()
            .into_iter()
            .find(|r| r.plural == "nodes")
            .expect("nodes");
        let n = json!({"metadata": {"name": "n1", "creationTimestamp": "2025-01-01T00:00:00Z", "labels": {"node-role.kubernetes.io/worker": ""}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.33.0"}}});
        let t = table(&nodes, &[n], 3);
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["rows"][0]["cells"][0], "n1");
        assert_eq!(t["rows"][0]["cells"][1], "Ready");
        assert_eq!(t["rows"][0]["cells"][2], "worker");
        assert_eq!(t["rows"][0]["cells"][4], "v1.33.0");
        assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "n1");
    }
}
