//! Conversion between core/v1 Events (the storage form) and events.k8s.io/v1 Events.
//!
//! kube-runtime's `events::Recorder` writes events.k8s.io/v1 while `kubectl get events`
//! reads core/v1, so both APIs serve one set of stored objects. The field mapping is the
//! one kube-apiserver uses (pkg/apis/events/v1 conversion):
//!
//! | events.k8s.io/v1           | core/v1              |
//! |----------------------------|----------------------|
//! | `note`                     | `message`            |
//! | `regarding`                | `involvedObject`     |
//! | `reportingController`      | `reportingComponent` |
//! | `reportingInstance`        | `reportingInstance`  |
//! | `deprecatedSource`         | `source`             |
//! | `deprecatedCount`          | `count`              |
//! | `deprecatedFirstTimestamp` | `firstTimestamp`     |
//! | `deprecatedLastTimestamp`  | `lastTimestamp`      |
//! | `eventTime`, `series`, `action`, `reason`, `type`, `related`, `metadata` | same |
//!
//! Like the real server we do not invent values: an event written through
//! events.k8s.io/v1 has an empty `source` and no `count` in core/v1 (readers should use
//! `reportingComponent`, `reportingInstance` and `series.count`).

use serde_json::{Map, Value, json};

/// (events.k8s.io/v1 field, core/v1 field) pairs that are copied as they are.
const FIELD_MAP: &[(&str, &str)] = &[
    ("metadata", "metadata"),
    ("eventTime", "eventTime"),
    ("series", "series"),
    ("action", "action"),
    ("reason", "reason"),
    ("type", "type"),
    ("related", "related"),
    ("note", "message"),
    ("regarding", "involvedObject"),
    ("reportingController", "reportingComponent"),
    ("reportingInstance", "reportingInstance"),
    ("deprecatedSource", "source"),
    ("deprecatedCount", "count"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
];

fn copy_fields(
    from: &Value,
    to: &mut Map<String, Value>,
    pairs: impl Iterator<Item = (&'static str, &'static str)>,
) {
    for (src, dst) in pairs {
        if let Some(v) = from.get(src).filter(|v| !v.is_null()) {
            to.insert(dst.to_string(), v.clone());
        }
    }
}

/// core/v1 Event → events.k8s.io/v1 Event.
pub fn core_to_v1(core: &Value) -> Value {
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!("events.k8s.io/v1"));
    out.insert("kind".into(), json!("Event"));
    copy_fields(core, &mut out, FIELD_MAP.iter().map(|(v1, c)| (*c, *v1)));
    Value::Object(out)
}

/// events.k8s.io/v1 Event → core/v1 Event. Unknown fields are dropped, as a typed
/// conversion would.
pub fn v1_to_core(ev: &Value) -> Value {
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!("v1"));
    out.insert("kind".into(), json!("Event"));
    copy_fields(ev, &mut out, FIELD_MAP.iter().copied());
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder_event() -> Value {
        json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": "n1.17f", "namespace": "default"},
            "eventTime": "2025-01-01T00:00:00.123456Z",
            "series": {"count": 2, "lastObservedTime": "2025-01-01T00:00:05.000000Z"},
            "action": "Configure",
            "reason": "PeerAdded",
            "type": "Normal",
            "note": "added peer n2",
            "regarding": {"kind": "Node", "name": "n1", "apiVersion": "v1"},
            "reportingController": "wgmesh.io/agent",
            "reportingInstance": "agent-n1"
        })
    }

    #[test]
    fn events_v1_to_core_table() {
        let core = v1_to_core(&recorder_event());
        let cases = [
            ("apiVersion", json!("v1")),
            ("kind", json!("Event")),
            ("message", json!("added peer n2")),
            (
                "involvedObject",
                json!({"kind": "Node", "name": "n1", "apiVersion": "v1"}),
            ),
            ("reportingComponent", json!("wgmesh.io/agent")),
            ("reportingInstance", json!("agent-n1")),
            ("eventTime", json!("2025-01-01T00:00:00.123456Z")),
            (
                "series",
                json!({"count": 2, "lastObservedTime": "2025-01-01T00:00:05.000000Z"}),
            ),
            ("reason", json!("PeerAdded")),
            ("type", json!("Normal")),
            ("action", json!("Configure")),
            ("source", Value::Null),
            ("count", Value::Null),
            ("note", Value::Null),
        ];
        for (field, want) in cases {
            assert_eq!(
                core.get(field).cloned().unwrap_or(Value::Null),
                want,
                "{field}"
            );
        }
    }

    #[test]
    fn core_to_events_v1_table() {
        let core = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "e", "namespace": "kube-system"},
            "involvedObject": {"kind": "Node", "name": "n1"},
            "reason": "Started",
            "message": "hello",
            "source": {"component": "kubelet", "host": "n1"},
            "firstTimestamp": "2025-01-01T00:00:00Z",
            "lastTimestamp": "2025-01-01T00:01:00Z",
            "count": 3,
            "type": "Warning"
        });
        let ev = core_to_v1(&core);
        let cases = [
            ("apiVersion", json!("events.k8s.io/v1")),
            ("note", json!("hello")),
            ("regarding", json!({"kind": "Node", "name": "n1"})),
            (
                "deprecatedSource",
                json!({"component": "kubelet", "host": "n1"}),
            ),
            ("deprecatedCount", json!(3)),
            ("deprecatedFirstTimestamp", json!("2025-01-01T00:00:00Z")),
            ("deprecatedLastTimestamp", json!("2025-01-01T00:01:00Z")),
            ("type", json!("Warning")),
            ("reportingController", Value::Null),
            ("message", Value::Null),
        ];
        for (field, want) in cases {
            assert_eq!(
                ev.get(field).cloned().unwrap_or(Value::Null),
                want,
                "{field}"
            );
        }
    }

    #[test]
    fn round_trips_are_lossless() {
        let ev = recorder_event();
        assert_eq!(core_to_v1(&v1_to_core(&ev)), ev);
    }
}
