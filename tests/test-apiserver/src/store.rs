//! The object store: objects by storage key, the global resourceVersion counter (one
//! counter for all types, like etcd's revision), persistence through the journal, and the
//! watch fan-out with a bounded per-type event history for watch resumption.
//!
//! All state sits behind one mutex; a mutation (closure over the current object) runs,
//! is journaled and published while holding it, so resourceVersions, the journal and the
//! watch streams always agree on the order of changes. Watchers get events through a
//! `tokio::sync::broadcast` channel per type: publishing never waits for a watcher, and a
//! watcher that falls further behind than the channel holds is told it lagged.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::error::ApiError;
use crate::persist::{Journal, Objects, PersistError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change of one object, as watchers see it.
#[derive(Debug)]
pub struct WatchEvent {
    pub kind: EventType,
    pub rv: u64,
    /// The object after the change (for Deleted: its last state, at the deletion's rv).
    pub object: Arc<Value>,
    /// The object before the change (lets filtered watches turn a change that leaves
    /// the selector into DELETED, as kube-apiserver does).
    pub prev: Option<Arc<Value>>,
}

/// What a mutation closure decides.
#[derive(Debug)]
pub enum Change {
    /// Store this object (create or replace).
    Put(Value),
    /// Delete the current object; the deletion event carries this final state when
    /// given (an update that removed the last finalizer), else the current object.
    Delete(Option<Value>),
    /// Leave things as they are (a no-op update: no new resourceVersion, no event).
    Unchanged,
}

/// The outcome of a mutation.
#[derive(Debug)]
pub struct Committed {
    /// The object as stored (or as deleted, or as it stays when unchanged).
    pub object: Arc<Value>,
    /// The event published, `None` for no-ops and dry runs.
    pub event: Option<EventType>,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// At the current state (the subscription carries the current objects).
    Now,
    /// After this resourceVersion, replaying newer events from history.
    After(u64),
}

/// An open watch registration; events after `rv` arrive on `rx`.
#[derive(Debug)]
pub struct Subscription {
    /// Current objects (only for [`Start::Now`]).
    pub objects: Vec<Arc<Value>>,
    /// Events after the start rv still in history (only for [`Start::After`]).
    pub replay: Vec<Arc<WatchEvent>>,
    /// The resourceVersion the subscription is consistent with.
    pub rv: u64,
    pub rx: broadcast::Receiver<Arc<WatchEvent>>,
}

struct Feed {
    history: VecDeque<Arc<WatchEvent>>,
    /// Watches may resume from any rv >= floor; older ones get 410 Expired.
    floor: u64,
    tx: broadcast::Sender<Arc<WatchEvent>>,
}

struct Inner {
    rv: u64,
    /// The rv at start-up: history is not persisted, so nothing older can be resumed.
    start_rv: u64,
    objects: Objects,
    feeds: HashMap<String, Feed>,
    journal: Journal,
}

pub struct Store {
    inner: Mutex<Inner>,
    history_len: usize,
    channel_capacity: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("history_len", &self.history_len)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn feed(&mut self, key: &str, capacity: usize) -> &mut Feed {
        let start_rv = self.start_rv;
        self.feeds.entry(key.to_string()).or_insert_with(|| Feed {
            history: VecDeque::new(),
            floor: start_rv,
            tx: broadcast::channel(capacity).0,
        })
    }
}

fn persist_error(e: PersistError) -> ApiError {
    ApiError::Internal(format!("persisting the change failed: {e}"))
}

fn set_rv(obj: &mut Value, rv: u64) {
    crate::meta::metadata_mut(obj).insert("resourceVersion".into(), json!(rv.to_string()));
}

impl Store {
    /// Opens (recovers) the store in `dir`. `history_len` events per type are kept for
    /// watch resumption.
    pub fn open(dir: &Path, fsync: bool, history_len: usize) -> Result<Store, PersistError> {
        let (journal, rec) = Journal::open(dir, fsync)?;
        Ok(Store {
            inner: Mutex::new(Inner {
                rv: rec.resource_version,
                start_rv: rec.resource_version,
                objects: rec.objects,
                feeds: HashMap::new(),
                journal,
            }),
            history_len,
            channel_capacity: history_len.clamp(1024, 65_536),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Mutation closures return errors instead of panicking; should one panic anyway
        // the state is still consistent (nothing is half-applied before the journal write).
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, key: &str, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.lock()
            .objects
            .get(key)?
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// The storage keys that hold objects.
    pub fn keys(&self) -> Vec<String> {
        self.lock()
            .objects
            .iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// All objects of a type (in one namespace when `ns` is given), sorted by
    /// namespace and name, with the resourceVersion of that state.
    pub fn list(&self, key: &str, ns: Option<&str>) -> (Vec<Arc<Value>>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .get(key)
            .map(|m| {
                m.iter()
                    .filter(|((o_ns, _), _)| ns.is_none_or(|n| n == o_ns))
                    .map(|(_, o)| o.clone())
                    .collect()
            })
            .unwrap_or_default();
        (items, inner.rv)
    }

    /// Runs `f` on the current object at (key, ns, name) and commits what it decides:
    /// assigns the next resourceVersion, journals, stores and publishes the change.
    /// A dry run runs `f` and returns its result without committing.
    pub fn mutate(
        &self,
        key: &str,
        ns: &str,
        name: &str,
        dry_run: bool,
        f: impl FnOnce(Option<&Value>) -> Result<Change, ApiError>,
    ) -> Result<Committed, ApiError> {
        let mut inner = self.lock();
        let id = (ns.to_string(), name.to_string());
        let current = inner.objects.get(key).and_then(|m| m.get(&id)).cloned();
        let change = f(current.as_deref())?;
        let (kind, stored) = match change {
            Change::Unchanged => {
                let object = current.unwrap_or_else(|| Arc::new(Value::Null));
                return Ok(Committed {
                    object,
                    event: None,
                });
            }
            Change::Put(obj) if dry_run => {
                return Ok(Committed {
                    object: Arc::new(obj),
                    event: None,
                });
            }
            Change::Delete(_) if dry_run => {
                let object = current.unwrap_or_else(|| Arc::new(Value::Null));
                return Ok(Committed {
                    object,
                    event: None,
                });
            }
            Change::Put(obj) => (
                if current.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                },
                obj,
            ),
            Change::Delete(last) => match (&current, last) {
                (Some(_), Some(last)) => (EventType::Deleted, last),
                (Some(c), None) => (EventType::Deleted, (**c).clone()),
                (None, _) => {
                    return Err(ApiError::Internal(format!(
                        "delete of missing object {key}/{ns}/{name}"
                    )));
                }
            },
        };
        let rv = inner.rv + 1;
        let mut stored = stored;
        set_rv(&mut stored, rv);
        let journaled = if kind == EventType::Deleted {
            None
        } else {
            Some(&stored)
        };
        inner
            .journal
            .append(rv, key, ns, name, journaled)
            .map_err(persist_error)?;
        inner.rv = rv;
        let stored = Arc::new(stored);
        let objs = inner.objects.entry(key.to_string()).or_default();
        if kind == EventType::Deleted {
            objs.remove(&id);
        } else {
            objs.insert(id, stored.clone());
        }
        self.publish(
            &mut inner,
            key,
            WatchEvent {
                kind,
                rv,
                object: stored.clone(),
                prev: current,
            },
        );
        if inner.journal.wants_compaction() {
            let Inner {
                rv,
                objects,
                journal,
                ..
            } = &mut *inner;
            journal.compact(*rv, objects).map_err(persist_error)?;
        }
        Ok(Committed {
            object: stored,
            event: Some(kind),
        })
    }

    fn publish(&self, inner: &mut Inner, key: &str, ev: WatchEvent) {
        let history_len = self.history_len;
        let feed = inner.feed(key, self.channel_capacity);
        let ev = Arc::new(ev);
        feed.history.push_back(ev.clone());
        while feed.history.len() > history_len {
            if let Some(old) = feed.history.pop_front() {
                feed.floor = old.rv;
            }
        }
        if history_len == 0 {
            feed.floor = ev.rv;
        }
        // No receivers is fine: nobody is watching this type.
        let _ = feed.tx.send(ev);
    }

    /// Registers a watch of `key` starting at `start`. Resuming from an rv older than
    /// the kept history fails with 410 Expired.
    pub fn subscribe(&self, key: &str, start: Start) -> Result<Subscription, ApiError> {
        let mut inner = self.lock();
        let rv = inner.rv;
        let objects = match start {
            Start::Now => inner
                .objects
                .get(key)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default(),
            Start::After(_) => Vec::new(),
        };
        let feed = inner.feed(key, self.channel_capacity);
        let replay = match start {
            Start::Now => Vec::new(),
            Start::After(from) => {
                if from < feed.floor {
                    return Err(ApiError::Expired {
                        requested: from,
                        oldest: feed.floor,
                    });
                }
                feed.history
                    .iter()
                    .filter(|e| e.rv > from)
                    .cloned()
                    .collect()
            }
        };
        let rv = match start {
            Start::Now => rv,
            Start::After(from) => from.max(replay.last().map(|e| e.rv).unwrap_or(0)),
        };
        Ok(Subscription {
            objects,
            replay,
            rv,
            rx: feed.tx.subscribe(),
        })
    }

    /// A consistent progress point for a watcher: the current resourceVersion plus the
    /// events already published to `rx` up to it. Once the watcher has handled those,
    /// it has seen every change of its type up to that rv (what a BOOKMARK asserts).
    /// The bool is true when the watcher lagged and lost events.
    pub fn progress(
        &self,
        rx: &mut broadcast::Receiver<Arc<WatchEvent>>,
    ) -> (u64, Vec<Arc<WatchEvent>>, bool) {
        let inner = self.lock();
        let mut pending = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(ev) => pending.push(ev),
                Err(broadcast::error::TryRecvError::Lagged(_)) => return (inner.rv, pending, true),
                Err(_) => break,
            }
        }
        (inner.rv, pending, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &Store, name: &str) -> Committed {
        store
            .mutate("core/nodes", "", name, false, |_| {
                Ok(Change::Put(json!({"metadata": {"name": name}})))
            })
            .expect("put")
    }

    #[test]
    fn resource_versions_are_global_and_monotonic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), false, 10).expect("open");
        let a = put(&store, "a");
        let b = store
            .mutate("core/events", "default", "e", false, |_| {
                Ok(Change::Put(json!({"metadata": {"name": "e"}})))
            })
            .expect("put");
        let a2 = put(&store, "a");
        assert_eq!(crate::meta::resource_version(&a.object), "1");
        assert_eq!(crate::meta::resource_version(&b.object), "2");
        assert_eq!(crate::meta::resource_version(&a2.object), "3");
        assert_eq!(a.event, Some(EventType::Added));
        assert_eq!(a2.event, Some(EventType::Modified));
        let del = store
            .mutate("core/nodes", "", "a", false, |_| Ok(Change::Delete(None)))
            .expect("delete");
        assert_eq!(crate::meta::resource_version(&del.object), "4");
        assert_eq!(store.list("core/nodes", None).0.len(), 0);
        drop(store);
        let store = Store::open(dir.path(), false, 10).expect("reopen");
        assert_eq!(store.resource_version(), 4);
        assert_eq!(crate::meta::resource_version(&put(&store, "c").object), "5");
        assert!(store.get("core/events", "default", "e").is_some());
    }

    #[test]
    fn no_ops_and_dry_runs_commit_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), false, 10).expect("open");
        put(&store, "a");
        let same = store
            .mutate("core/nodes", "", "a", false, |_| Ok(Change::Unchanged))
            .expect("noop");
        assert_eq!(same.event, None);
        let dry = store
            .mutate("core/nodes", "", "b", true, |_| {
                Ok(Change::Put(json!({"metadata": {"name": "b"}})))
            })
            .expect("dry");
        assert_eq!(dry.event, None);
        assert_eq!(store.resource_version(), 1);
        assert!(store.get("core/nodes", "", "b").is_none());
        let err = store
            .mutate("core/nodes", "", "a", false, |_| {
                Err(ApiError::bad_request("no"))
            })
            .expect_err("closure error");
        assert_eq!(err.code(), 400);
        assert_eq!(store.resource_version(), 1);
    }

    #[test]
    fn watch_resumption_and_410_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), false, 3).expect("open");
        for n in ["a", "b", "c", "d", "e"] {
            put(&store, n); // rvs 1..=5, history keeps 3..=5, floor 2
        }
        // (from, Ok(replayed rvs)) or Err(()) for 410
        let cases: Vec<(u64, Result<Vec<u64>, ()>)> = vec![
            (0, Err(())),
            (1, Err(())),
            (2, Ok(vec![3, 4, 5])),
            (4, Ok(vec![5])),
            (5, Ok(vec![])),
            (9, Ok(vec![])),
        ];
        for (from, want) in cases {
            let got = store
                .subscribe("core/nodes", Start::After(from))
                .map(|s| s.replay.iter().map(|e| e.rv).collect::<Vec<_>>())
                .map_err(|e| assert_eq!(e.code(), 410, "from {from}"));
            assert_eq!(got, want, "from {from}");
        }
        // Another type's history is independent; its floor is the start rv.
        assert!(store.subscribe("core/events", Start::After(0)).is_ok());
        // After a restart nothing older than the current rv can be resumed.
        drop(store);
        let store = Store::open(dir.path(), false, 3).expect("reopen");
        assert_eq!(
            store
                .subscribe("core/nodes", Start::After(4))
                .expect_err("410")
                .code(),
            410
        );
        assert!(store.subscribe("core/nodes", Start::After(5)).is_ok());
    }

    #[test]
    fn subscribers_get_live_events_and_progress() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), false, 10).expect("open");
        put(&store, "a");
        let mut sub = store
            .subscribe("core/nodes", Start::Now)
            .expect("subscribe");
        assert_eq!(sub.objects.len(), 1);
        assert_eq!(sub.rv, 1);
        put(&store, "b");
        let (rv, pending, lagged) = store.progress(&mut sub.rx);
        assert_eq!((rv, pending.len(), lagged), (2, 1, false));
        assert_eq!(pending[0].kind, EventType::Added);
    }
}
