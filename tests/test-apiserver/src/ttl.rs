//! Event expiry: kube-apiserver keeps Events for `--event-ttl` (1h) after their last
//! write; so do we, so a long-running testbed's event list (and journal) stays bounded.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::meta;
use crate::resources::EVENTS;
use crate::store::{Change, Store};

/// The last time an event was written or observed (seconds since the epoch).
pub fn last_activity(ev: &Value) -> Option<i64> {
    [
        "/series/lastObservedTime",
        "/lastTimestamp",
        "/eventTime",
        "/metadata/creationTimestamp",
    ]
    .iter()
    .filter_map(|p| {
        ev.pointer(p)
            .and_then(Value::as_str)
            .and_then(meta::parse_time)
    })
    .max()
}

/// Deletes the events idle for longer than `ttl`; returns how many.
pub fn expire_once(store: &Store, ttl: Duration, now: i64) -> usize {
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let (events, _) = store.list(EVENTS, None);
    let mut n = 0;
    for ev in events {
        let expired = last_activity(&ev).is_none_or(|t| now.saturating_sub(t) > ttl);
        if !expired {
            continue;
        }
        let (ns, name) = (meta::namespace(&ev), meta::name(&ev));
        // Re-check inside the mutation: the event may have been refreshed meanwhile.
        let r = store.mutate(EVENTS, ns, name, false, |cur| {
            Ok(match cur {
                Some(c) if last_activity(c).is_none_or(|t| now.saturating_sub(t) > ttl) => {
                    Change::Delete(None)
                }
                _ => Change::Unchanged,
            })
        });
        if matches!(r, Ok(c) if c.event.is_some()) {
            n += 1;
        }
    }
    n
}

/// Runs [`expire_once`] periodically until `shutdown` flips.
pub async fn run(
    store: Arc<Store>,
    ttl: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let period = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {
                // Deletions fsync: keep them off the async workers.
                let n = tokio::task::block_in_place(|| expire_once(&store, ttl, jiff::Timestamp::now().as_second()));
                if n > 0 {
                    tracing::info!(expired = n, "deleted expired events");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn idle_events_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), false, 10).expect("store");
        let t0 = meta::parse_time("2025-01-01T00:00:00Z").expect("time");
        let events = [
            (
                "old",
                json!({"metadata": {"name": "old", "namespace": "default", "creationTimestamp": "2025-01-01T00:00:00Z"}}),
            ),
            (
                "refreshed",
                json!({"metadata": {"name": "refreshed", "namespace": "default", "creationTimestamp": "2025-01-01T00:00:00Z"},
                "series": {"count": 2, "lastObservedTime": "2025-01-01T00:59:00.000000Z"}}),
            ),
        ];
        for (name, ev) in events {
            store
                .mutate(EVENTS, "default", name, false, |_| Ok(Change::Put(ev)))
                .expect("put");
        }
        assert_eq!(expire_once(&store, Duration::from_secs(3600), t0 + 3000), 0);
        assert_eq!(expire_once(&store, Duration::from_secs(3600), t0 + 3700), 1);
        assert!(store.get(EVENTS, "default", "refreshed").is_some());
        assert!(store.get(EVENTS, "default", "old").is_none());
    }
}
