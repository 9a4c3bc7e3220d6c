//! What the server sends, counted for `GET /metrics`: the bytes written to client
//! connections (TLS records, what the network carries), and the response bodies by verb
//! and resource (the JSON the clients decode). Lets a benchmark measure the API traffic
//! of many watching agents, per Node update and per relist.
//!
//! Exposed in the Prometheus text format:
//! - `test_apiserver_sent_bytes_total`: bytes written to all client connections;
//! - `test_apiserver_response_body_bytes_total{verb,resource}`;
//! - `test_apiserver_response_body_chunks_total{verb,resource}`: body chunks (one per
//!   watch event, BOOKMARKs included);
//! - `test_apiserver_responses_total{verb,resource}`: responses started (a watch counts
//!   once, when it starts).

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::handlers::Body;
use crate::routes::{Query, Route};

/// The kind of request a response answers, as kube-apiserver's metrics name verbs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Class {
    pub verb: &'static str,
    /// The resource's plural (with `/subresource`), or "" for discovery and the like.
    pub resource: String,
}

impl Class {
    /// Classifies a request by method, path and query.
    pub fn of(method: &Method, path: &str, query: &Query) -> Class {
        let Route::Resource(p) = crate::routes::route(path) else {
            return Class {
                verb: "other",
                resource: String::new(),
            };
        };
        let verb = match (method, p.name.is_some()) {
            (&Method::GET, false) if p.legacy_watch || query.flag("watch") => "watch",
            (&Method::GET, true) if p.legacy_watch => "watch",
            (&Method::GET, false) => "list",
            (&Method::GET, true) => "get",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, _) => "delete",
            _ => "other",
        };
        let resource = match p.subresource {
            Some(sub) => format!("{}/{sub}", p.plural),
            None => p.plural,
        };
        Class { verb, resource }
    }
}

#[derive(Debug, Default)]
struct Counts {
    responses: AtomicU64,
    bytes: AtomicU64,
    chunks: AtomicU64,
}

/// The server's traffic counters.
#[derive(Debug, Default)]
pub struct Traffic {
    sent: AtomicU64,
    by_class: Mutex<BTreeMap<Class, Arc<Counts>>>,
}

impl Traffic {
    fn counts(&self, class: Class) -> Arc<Counts> {
        let mut map = self.by_class.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(class).or_default())
    }

    /// `body` with its bytes and chunks counted under `class` as they are sent.
    pub fn count_body(&self, class: Class, body: Body) -> Body {
        let counts = self.counts(class);
        counts.responses.fetch_add(1, Ordering::Relaxed);
        body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                counts.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                counts.chunks.fetch_add(1, Ordering::Relaxed);
            }
            frame
        })
        .boxed()
    }

    /// A connection's stream whose writes are counted.
    pub fn count_writes<S>(self: &Arc<Self>, inner: S) -> CountedWrites<S> {
        CountedWrites {
            inner,
            traffic: Arc::clone(self),
        }
    }

    /// The counters in the Prometheus text format.
    pub fn render(&self) -> Bytes {
        let mut out = String::new();
        out.push_str("# TYPE test_apiserver_sent_bytes_total counter\n");
        out.push_str(&format!(
            "test_apiserver_sent_bytes_total {}\n",
            self.sent.load(Ordering::Relaxed)
        ));
        let map = self.by_class.lock().unwrap_or_else(|e| e.into_inner());
        for (name, pick) in [
            (
                "response_body_bytes",
                (|c| &c.bytes) as fn(&Counts) -> &AtomicU64,
            ),
            ("response_body_chunks", |c| &c.chunks),
            ("responses", |c| &c.responses),
        ] {
            out.push_str(&format!("# TYPE test_apiserver_{name}_total counter\n"));
            for (class, counts) in map.iter() {
                out.push_str(&format!(
                    "test_apiserver_{name}_total{{verb=\"{}\",resource=\"{}\"}} {}\n",
                    class.verb,
                    class.resource,
                    pick(counts).load(Ordering::Relaxed)
                ));
            }
        }
        Bytes::from(out)
    }
}

/// A stream that counts the bytes written to it into [`Traffic`].
pub struct CountedWrites<S> {
    inner: S,
    traffic: Arc<Traffic>,
}

impl<S> CountedWrites<S> {
    fn add(&self, result: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = result {
            self.traffic.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CountedWrites<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountedWrites<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.add(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.add(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(method: Method, uri: &str) -> (&'static str, String) {
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        let c = Class::of(&method, path, &Query::parse(Some(query)));
        (c.verb, c.resource)
    }

    #[test]
    fn requests_are_classified_by_verb_and_resource() {
        let cases = [
            (Method::GET, "/api/v1/nodes", ("list", "nodes")),
            (
                Method::GET,
                "/api/v1/nodes?watch=true&resourceVersion=5",
                ("watch", "nodes"),
            ),
            (Method::GET, "/api/v1/watch/nodes", ("watch", "nodes")),
            (Method::GET, "/api/v1/nodes/n1", ("get", "nodes")),
            (
                Method::PATCH,
                "/api/v1/nodes/n1/status",
                ("patch", "nodes/status"),
            ),
            (
                Method::POST,
                "/api/v1/namespaces/default/events",
                ("create", "events"),
            ),
            (Method::PUT, "/api/v1/nodes/n1", ("update", "nodes")),
            (Method::DELETE, "/api/v1/nodes/n1", ("delete", "nodes")),
            (
                Method::GET,
                "/apis/wgmesh.io/v1alpha1/peers?watch=1",
                ("watch", "peers"),
            ),
            (Method::GET, "/api", ("other", "")),
        ];
        for (method, uri, (verb, resource)) in cases {
            assert_eq!(class(method, uri), (verb, resource.to_string()), "{uri}");
        }
    }

    #[tokio::test]
    async fn bodies_and_writes_are_counted() {
        use http_body_util::Full;
        use tokio::io::AsyncWriteExt;
        let traffic = Arc::new(Traffic::default());
        let watch = Class::of(
            &Method::GET,
            "/api/v1/nodes",
            &Query::parse(Some("watch=1")),
        );
        let body: Body = Full::new(Bytes::from_static(b"0123456789"))
            .map_err(|never| match never {})
            .boxed();
        let counted = traffic.count_body(watch, body);
        let sent = counted.collect().await.unwrap().to_bytes();
        assert_eq!(sent.len(), 10);

        let mut conn = traffic.count_writes(Vec::new());
        conn.write_all(b"hello").await.unwrap();
        assert_eq!(conn.inner, b"hello");

        let text = String::from_utf8(traffic.render().to_vec()).unwrap();
        for line in [
            "test_apiserver_sent_bytes_total 5",
            "test_apiserver_response_body_bytes_total{verb=\"watch\",resource=\"nodes\"} 10",
            "test_apiserver_response_body_chunks_total{verb=\"watch\",resource=\"nodes\"} 1",
            "test_apiserver_responses_total{verb=\"watch\",resource=\"nodes\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
}
