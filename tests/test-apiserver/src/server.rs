//! The HTTPS server: accepts TCP connections, answers plain-HTTP attempts the way Go's
//! TLS server does (a 400 that says so), completes TLS, serves HTTP/1.1 and HTTP/2 with
//! hyper, and shuts down gracefully (stop accepting, end watches, let requests finish).
//! Every byte written to a client connection is counted ([`crate::traffic`]).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::handlers::{AppState, handle};
use crate::traffic::{CountedWrites, Traffic};

/// How long a client may take to start and finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves until `stop` completes, then drains connections.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<AppState>,
    stop: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let (acceptor, builder, state) = (acceptor.clone(), builder.clone(), state.clone());
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let Some(tls) = handshake(&acceptor, tcp, &state.traffic).await else { return };
                        let svc = service_fn(move |req| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(handle(state, req).await) }
                        });
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc).into_owned();
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; exiting anyway");
    }
}

/// Completes the TLS handshake; a client speaking plain HTTP gets a 400 and the
/// connection is closed.
async fn handshake(
    acceptor: &TlsAcceptor,
    mut tcp: TcpStream,
    traffic: &Arc<Traffic>,
) -> Option<tokio_rustls::server::TlsStream<CountedWrites<TcpStream>>> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return None,
    }
    // 0x16: a TLS handshake record. Anything else is not TLS.
    if first[0] != 0x16 {
        let _ = tcp
            .write_all(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
            .await;
        let _ = tcp.shutdown().await;
        // Read what the client sent until it closes (bounded): closing with unread data
        // would reset the connection and could discard the answer before it is read.
        let mut sink = [0u8; 4096];
        let drain = async {
            let mut total = 0usize;
            while let Ok(n @ 1..) = tcp.read(&mut sink).await {
                total += n;
                if total > 1 << 20 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        return None;
    }
    let tcp = traffic.count_writes(tcp);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}
