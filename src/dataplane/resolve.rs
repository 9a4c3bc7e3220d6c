//! DNS names of peer endpoints (an administrator's `wgmesh.io/force-endpoint`, a Peer's
//! `spec.endpoint`), resolved off the reconcile path. Adapter.
//!
//! A reconcile pass never waits for a resolver: it uses the last answer (or nothing, and
//! the peer keeps the endpoint it has), while a background lookup with a timeout
//! refreshes it and wakes the loop when the answer is in. One lookup per name at a time,
//! so a resolver that never answers costs one stuck lookup per name, not one per pass.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How long an answer is used before it is looked up again (kept, also when the
/// refresh fails, until a new answer arrives).
pub const TTL: Duration = Duration::from_secs(60);
/// A lookup taking longer is abandoned and counts as failed.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// After a failure, the name is not looked up again for this long.
pub const RETRY: Duration = Duration::from_secs(10);

type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;
/// Resolves (name, port) to addresses; the system resolver in production.
pub type Lookup = Arc<dyn Fn(String, u16) -> LookupFuture + Send + Sync>;

#[derive(Debug, Default)]
struct Entry {
    addr: Option<SocketAddr>,
    /// When the last lookup finished (answer or failure).
    finished: Option<Instant>,
    failed: bool,
    in_flight: bool,
}

/// The cache of resolved names; cheap to query from every pass.
pub struct Resolver {
    entries: Arc<Mutex<HashMap<(String, u16), Entry>>>,
    lookup: Lookup,
    /// Notified when a lookup brings a new answer.
    changed: Arc<Notify>,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver::new(Arc::new(|name: String, port: u16| {
            Box::pin(async move {
                tokio::net::lookup_host((name.as_str(), port))
                    .await
                    .map(Iterator::collect)
            }) as LookupFuture
        }))
    }
}

impl Resolver {
    pub fn new(lookup: Lookup) -> Self {
        Resolver {
            entries: Arc::default(),
            lookup,
            changed: Arc::new(Notify::new()),
        }
    }

    /// Notified when a name resolves to a new address: the caller re-applies its plan.
    pub fn changed(&self) -> Arc<Notify> {
        Arc::clone(&self.changed)
    }

    /// The address of `name:port` as last resolved, if any, starting a background
    /// lookup when there is none yet or it is due. Never waits. Needs a tokio runtime.
    pub fn get(&self, name: &str, port: u16) -> Option<SocketAddr> {
        let key = (name.to_string(), port);
        let mut entries = lock(&self.entries);
        let entry = entries.entry(key.clone()).or_default();
        let due = match entry.finished {
            None => true,
            Some(at) if entry.failed => at.elapsed() >= RETRY,
            Some(at) => at.elapsed() >= TTL,
        };
        if due && !entry.in_flight {
            entry.in_flight = true;
            let (entries, lookup, changed) = (
                Arc::clone(&self.entries),
                Arc::clone(&self.lookup),
                Arc::clone(&self.changed),
            );
            tokio::spawn(async move {
                let answer = tokio::time::timeout(TIMEOUT, lookup(key.0.clone(), key.1)).await;
                let addr = match answer {
                    Ok(Ok(addrs)) => addrs.into_iter().next().ok_or("no address".to_string()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {TIMEOUT:?}")),
                };
                let mut entries = lock(&entries);
                let Some(entry) = entries.get_mut(&key) else {
                    return;
                };
                entry.in_flight = false;
                entry.finished = Some(Instant::now());
                match addr {
                    Ok(a) => {
                        entry.failed = false;
                        if entry.addr != Some(a) {
                            entry.addr = Some(a);
                            tracing::info!(name = %key.0, address = %a, "endpoint name resolved");
                            changed.notify_one();
                        }
                    }
                    Err(e) => {
                        entry.failed = true;
                        tracing::warn!(name = %key.0, error = %e, retry_in = ?RETRY, "cannot resolve endpoint name; the peer keeps its current endpoint");
                    }
                }
            });
        }
        entry.addr
    }

    /// Forgets names no longer asked for.
    pub fn retain(&self, wanted: impl Fn(&str, u16) -> bool) {
        lock(&self.entries).retain(|(name, port), e| e.in_flight || wanted(name, *port));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting(answer: Option<SocketAddr>, calls: Arc<AtomicUsize>) -> Lookup {
        Arc::new(move |_name: String, _port: u16| {
            calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                match answer {
                    Some(a) => Ok(vec![a]),
                    // A resolver that never answers.
                    None => std::future::pending().await,
                }
            }) as LookupFuture
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_resolver_that_never_answers_stalls_nothing_and_is_asked_once_at_a_time() {
        let calls = Arc::new(AtomicUsize::new(0));
        let r = Resolver::new(counting(None, calls.clone()));
        let started = tokio::time::Instant::now();
        for _ in 0..100 {
            assert_eq!(r.get("node-c.example.net", 4500), None);
        }
        assert_eq!(started.elapsed(), Duration::ZERO, "get never waits");
        tokio::task::yield_now().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one lookup in flight");
        // The lookup times out; within RETRY no new one starts.
        tokio::time::sleep(TIMEOUT + Duration::from_millis(10)).await;
        assert_eq!(r.get("node-c.example.net", 4500), None);
        tokio::task::yield_now().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_answer_is_cached_and_wakes_the_loop() {
        let calls = Arc::new(AtomicUsize::new(0));
        let addr: SocketAddr = "198.51.100.7:4500".parse().unwrap();
        let r = Resolver::new(counting(Some(addr), calls.clone()));
        let changed = r.changed();
        let woken = changed.notified();
        assert_eq!(r.get("node-c.example.net", 4500), None, "not known yet");
        tokio::time::timeout(Duration::from_secs(5), woken)
            .await
            .expect("woken by the answer");
        assert_eq!(r.get("node-c.example.net", 4500), Some(addr));
        assert_eq!(r.get("node-c.example.net", 4500), Some(addr));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "cached for the TTL");
        r.retain(|_, _| false);
        assert_eq!(r.get("node-c.example.net", 4500), None, "forgotten");
    }
}
