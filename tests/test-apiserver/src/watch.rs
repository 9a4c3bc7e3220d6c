//! Watch streams: newline-delimited `{"type":…,"object":…}` JSON, as kube-apiserver
//! sends them, with initial events, resumption from a resourceVersion (or an ERROR 410
//! when it is too old), BOOKMARKs, `timeoutSeconds`, and an end on server shutdown.
//!
//! Each watch is a task that moves events from the store's broadcast channel into a
//! small channel feeding the HTTP body. A client that stops reading fills that channel,
//! its task stops receiving, and once it lags past the broadcast buffer the stream is
//! closed (the client re-watches from its last resourceVersion), so a slow watcher never
//! holds up writers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use crate::error::ApiError;
use crate::resources::Resource;
use crate::selectors::Selector;
use crate::store::{EventType, Start, Store, WatchEvent};

/// What a watch request asked for.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    pub start: Start,
    /// Send the current objects as ADDED first (rv unset/"0", or `sendInitialEvents`).
    pub initial_events: bool,
    /// `sendInitialEvents=true`: end the initial events with a marked BOOKMARK.
    pub initial_events_end_bookmark: bool,
    pub bookmarks: bool,
    pub timeout: Duration,
    /// Namespace filter (None: all namespaces).
    pub namespace: Option<String>,
    pub selector: Selector,
}

impl WatchRequest {
    /// Interprets the watch query parameters kube-apiserver understands.
    pub fn from_query(
        q: &crate::routes::Query,
        namespace: Option<String>,
        selector: Selector,
        default_timeout: Duration,
    ) -> Result<Self, ApiError> {
        let bookmarks = q.flag("allowWatchBookmarks");
        let send_initial = q.get("sendInitialEvents").map(|v| v == "true" || v == "1");
        let rv = q.get("resourceVersion").unwrap_or("");
        if send_initial == Some(true) {
            if q.get("resourceVersionMatch") != Some("NotOlderThan") {
                return Err(ApiError::invalid(
                    "ListOptions",
                    "",
                    "resourceVersionMatch",
                    "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                ));
            }
            if !bookmarks {
                return Err(ApiError::invalid(
                    "ListOptions",
                    "",
                    "allowWatchBookmarks",
                    "Forbidden: sendInitialEvents requires allowWatchBookmarks=true",
                ));
            }
        }
        let parsed_rv =
            match rv {
                "" | "0" => None,
                s => Some(s.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version: {s:?}"))
                })?),
            };
        let (start, initial_events) = match (parsed_rv, send_initial) {
            // The current state is never older than any rv we handed out.
            (_, Some(true)) => (Start::Now, true),
            (None, Some(false)) => (Start::Now, false),
            (None, None) => (Start::Now, true),
            (Some(rv), _) => (Start::After(rv), false),
        };
        let timeout = match q.get("timeoutSeconds") {
            Some(s) => Duration::from_secs(
                s.parse::<u64>()
                    .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds: {s:?}")))?,
            ),
            None => default_timeout,
        };
        Ok(WatchRequest {
            start,
            initial_events,
            initial_events_end_bookmark: send_initial == Some(true),
            bookmarks,
            timeout,
            namespace,
            selector,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| crate::meta::namespace(obj) == ns)
            && self.selector.matches(obj)
    }

    /// How this watcher sees a change (objects already in the client's view):
    /// selector transitions become ADDED/DELETED, as kube-apiserver does.
    fn classify(
        &self,
        kind: EventType,
        object: &Value,
        prev: Option<&Value>,
    ) -> Option<&'static str> {
        let now = self.matches(object);
        match kind {
            EventType::Added | EventType::Deleted => now.then_some(kind.as_str()),
            EventType::Modified => match (prev.is_some_and(|p| self.matches(p)), now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            },
        }
    }
}

/// A stream line for one event.
pub fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark(res: &Resource, rv: u64, initial_end: bool) -> Value {
    let mut md = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end {
        md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": md})
}

/// Converts a stored object into what this resource's clients see.
pub type ViewFn = fn(&Resource, &Value) -> Value;

/// Everything a watch task needs.
pub struct WatchTask {
    pub store: Arc<Store>,
    pub res: Resource,
    pub req: WatchRequest,
    pub view: ViewFn,
    pub bookmark_interval: Duration,
    pub shutdown: watch::Receiver<bool>,
    /// The client asked for `as=Table` (kubectl get -w): objects are sent as Tables.
    pub table: bool,
}

/// Turns objects into stream lines for one watch (as-is, or as one-row Tables whose
/// column definitions come with the first only, as kube-apiserver does).
struct Render {
    table: bool,
    headers_sent: bool,
}

impl Render {
    fn line(&mut self, res: &Resource, kind: &str, obj: &Value) -> Bytes {
        if !self.table {
            return event_line(kind, obj);
        }
        let rv = crate::meta::resource_version(obj).parse().unwrap_or(0);
        let mut t = crate::table::table(res, std::slice::from_ref(obj), rv);
        if self.headers_sent {
            t["columnDefinitions"] = json!([]);
        }
        self.headers_sent = true;
        event_line(kind, &t)
    }
}

/// Starts the watch; returns the receiver of stream lines (the HTTP body).
pub fn start(task: WatchTask) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(run(task, tx));
    rx
}

async fn run(mut t: WatchTask, tx: mpsc::Sender<Bytes>) {
    let sub = match t.store.subscribe(&t.res.storage_key, t.req.start) {
        Ok(s) => s,
        Err(e) => {
            // The real server answers 200 and sends the error as an event.
            let _ = tx.send(event_line("ERROR", &e.status())).await;
            return;
        }
    };
    let mut rx = sub.rx;
    let mut last_rv = sub.rv;
    let r = &mut Render {
        table: t.table,
        headers_sent: false,
    };
    if t.req.initial_events {
        for obj in &sub.objects {
            let obj = (t.view)(&t.res, obj);
            if t.req.matches(&obj) && tx.send(r.line(&t.res, "ADDED", &obj)).await.is_err() {
                return;
            }
        }
        if t.req.initial_events_end_bookmark
            && tx
                .send(event_line("BOOKMARK", &bookmark(&t.res, sub.rv, true)))
                .await
                .is_err()
        {
            return;
        }
    }
    for ev in &sub.replay {
        if !send_event(&t, r, &tx, ev).await {
            return;
        }
        last_rv = ev.rv;
    }
    let deadline = tokio::time::Instant::now() + t.req.timeout;
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + t.bookmark_interval,
        t.bookmark_interval,
    );
    loop {
        tokio::select! {
            _ = t.shutdown.changed() => return,
            _ = tx.closed() => return,
            _ = tokio::time::sleep_until(deadline) => {
                if t.req.bookmarks {
                    let _ = send_bookmark(&t, r, &tx, &mut rx, &mut last_rv).await;
                }
                return;
            }
            _ = ticker.tick(), if t.req.bookmarks => {
                if !send_bookmark(&t, r, &tx, &mut rx, &mut last_rv).await {
                    return;
                }
            }
            got = rx.recv() => match got {
                Ok(ev) => {
                    if ev.rv <= last_rv {
                        continue; // already replayed
                    }
                    if !send_event(&t, r, &tx, &ev).await {
                        return;
                    }
                    last_rv = ev.rv;
                }
                // Too slow: end the stream; the client resumes from its last rv.
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::info!(resource = %t.res.plural, lost = n, "closing a watch that fell behind");
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

async fn send_event(
    t: &WatchTask,
    r: &mut Render,
    tx: &mpsc::Sender<Bytes>,
    ev: &WatchEvent,
) -> bool {
    let object = (t.view)(&t.res, &ev.object);
    let prev = ev.prev.as_ref().map(|p| (t.view)(&t.res, p));
    match t.req.classify(ev.kind, &object, prev.as_ref()) {
        Some(kind) => tx.send(r.line(&t.res, kind, &object)).await.is_ok(),
        None => true,
    }
}

/// Sends a BOOKMARK at the current global rv, after the events published before it.
async fn send_bookmark(
    t: &WatchTask,
    r: &mut Render,
    tx: &mpsc::Sender<Bytes>,
    rx: &mut broadcast::Receiver<Arc<WatchEvent>>,
    last_rv: &mut u64,
) -> bool {
    let (rv, pending, lagged) = t.store.progress(rx);
    for ev in &pending {
        if ev.rv <= *last_rv {
            continue;
        }
        if !send_event(t, r, tx, ev).await {
            return false;
        }
        *last_rv = ev.rv;
    }
    if lagged {
        return false;
    }
    *last_rv = (*last_rv).max(rv);
    tx.send(event_line("BOOKMARK", &bookmark(&t.res, rv, false)))
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::Query;

    fn q(s: &str) -> Query {
        Query::parse(Some(s))
    }

    #[test]
    fn query_interpretation_table() {
        let d = Duration::from_secs(1800);
        // (initial events, initial-events-end bookmark, resume rv) or the error code
        type Want = Result<(bool, bool, Option<u64>), u16>;
        let cases: Vec<(&str, Want)> = vec![
            ("watch=true", Ok((true, false, None))),
            ("watch=1&resourceVersion=0", Ok((true, false, None))),
            ("watch=1&resourceVersion=12", Ok((false, false, Some(12)))),
            (
                "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
                Ok((true, true, None)),
            ),
            (
                "watch=1&sendInitialEvents=true&allowWatchBookmarks=true",
                Err(422),
            ),
            (
                "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan",
                Err(422),
            ),
            ("watch=1&resourceVersion=abc", Err(400)),
            ("watch=1&timeoutSeconds=x", Err(400)),
        ];
        for (query, want) in cases {
            let got = WatchRequest::from_query(&q(query), None, Selector::default(), d)
                .map_err(|e| e.code().as_u16())
                .map(|r| {
                    let after = match r.start {
                        Start::After(rv) => Some(rv),
                        Start::Now => None,
                    };
                    (r.initial_events, r.initial_events_end_bookmark, after)
                });
            assert_eq!(got, want, "{query}");
        }
        let r = WatchRequest::from_query(&q("timeoutSeconds=5"), None, Selector::default(), d)
            .expect("ok");
        assert_eq!(r.timeout, Duration::from_secs(5));
    }

    #[test]
    fn selector_transitions() {
        let req = WatchRequest::from_query(
            &q("watch=1"),
            None,
            Selector::parse(Some("role=worker"), None).expect("selector"),
            Duration::from_secs(1),
        )
        .expect("request");
        let worker = json!({"metadata": {"name": "a", "labels": {"role": "worker"}}});
        let other = json!({"metadata": {"name": "a", "labels": {"role": "other"}}});
        let cases = [
            (EventType::Added, &worker, None, Some("ADDED")),
            (EventType::Added, &other, None, None),
            (
                EventType::Modified,
                &worker,
                Some(&worker),
                Some("MODIFIED"),
            ),
            (EventType::Modified, &worker, Some(&other), Some("ADDED")),
            (EventType::Modified, &other, Some(&worker), Some("DELETED")),
            (EventType::Modified, &other, Some(&other), None),
            (EventType::Deleted, &worker, None, Some("DELETED")),
        ];
        for (i, (kind, obj, prev, want)) in cases.into_iter().enumerate() {
            assert_eq!(req.classify(kind, obj, prev), want, "case {i}");
        }
    }

    #[tokio::test]
    async fn a_stalled_watcher_never_blocks_writers_and_gets_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path(), false, 10).expect("store"));
        let res = crate::resources::builtins()
            .into_iter()
            .find(|r| r.plural == "nodes")
            .expect("nodes");
        let (_stop, shutdown) = watch::channel(false);
        let req = WatchRequest::from_query(
            &q("watch=1"),
            None,
            Selector::default(),
            Duration::from_secs(60),
        )
        .expect("req");
        let view: ViewFn = |_, v| v.clone();
        let mut lines = start(WatchTask {
            store: store.clone(),
            res,
            req,
            view,
            bookmark_interval: Duration::from_secs(3600),
            shutdown,
            table: false,
        });
        // Nobody reads `lines` while far more changes than any buffer holds are written.
        let writes = 3000;
        let started = std::time::Instant::now();
        for i in 0..writes {
            let name = format!("n{i}");
            store
                .mutate(crate::resources::NODES, "", &name, false, |_| {
                    Ok(crate::store::Change::Put(
                        json!({"metadata": {"name": name}}),
                    ))
                })
                .expect("write");
            if i % 100 == 0 {
                tokio::task::yield_now().await; // let the watch task run and stall
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "writers were held up"
        );
        // The watch ended after what was buffered: the client would re-watch.
        let mut received = 0;
        while tokio::time::timeout(Duration::from_secs(10), lines.recv())
            .await
            .expect("stream ends")
            .is_some()
        {
            received += 1;
        }
        assert!(
            received < writes,
            "a lagging watch is closed, got {received} lines"
        );
    }

    #[test]
    fn expired_watch_is_an_error_event() {
        let line = event_line(
            "ERROR",
            &ApiError::Expired {
                requested: 1,
                oldest: 5,
            }
            .status(),
        );
        let v: Value = serde_json::from_slice(&line).expect("json");
        assert_eq!(v["type"], "ERROR");
        assert_eq!(v["object"]["code"], 410);
        assert_eq!(v["object"]["reason"], "Expired");
        assert!(line.ends_with(b"\n"));
    }
}
