//! UDP probes between the testbed's namespaces (test infrastructure): which source
//! address and port a datagram arrives with after the NATs it crossed, e.g. what a
//! peer sees of a node behind a symmetric NAT.
//!
//! Sockets are created by a thread that joined the namespace (a socket stays in the
//! namespace it was created in) and then used from the caller's thread.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::exec;

/// How long a probe waits for one datagram before sending it again.
const RESEND_EVERY: Duration = Duration::from_millis(200);
/// How long [`source_seen`] tries before it fails.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A UDP socket bound to `bind` inside the network namespace at `netns` (e.g.
/// `node.host_netns_path()`); port 0 picks a free port.
pub fn udp_socket(netns: &Path, bind: SocketAddrV4) -> UdpSocket {
    let place = netns.display().to_string();
    exec::in_netns_thread(netns, move || UdpSocket::bind(bind))
        .unwrap_or_else(|e| panic!("cannot bind UDP {bind} in {place}: {e}"))
}

/// Sends a datagram from `from` to `to` (again every 200 ms) until `receiver` gets it,
/// and returns the source address `receiver` saw; panics after [`PROBE_TIMEOUT`].
/// `receiver` must be where `to` leads (e.g. bound to a node's private address while
/// `to` is its public one).
pub fn source_seen(from: &UdpSocket, to: SocketAddr, receiver: &UdpSocket) -> SocketAddr {
    source_seen_within(from, to, receiver, PROBE_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "no datagram from {} reached {to} (received by {}) within {PROBE_TIMEOUT:?}",
            from.local_addr().map_or("?".into(), |a| a.to_string()),
            receiver.local_addr().map_or("?".into(), |a| a.to_string()),
        )
    })
}

/// Like [`source_seen`], None when nothing arrived within `timeout`.
pub fn source_seen_within(
    from: &UdpSocket,
    to: SocketAddr,
    receiver: &UdpSocket,
    timeout: Duration,
) -> Option<SocketAddr> {
    static PROBES: AtomicU64 = AtomicU64::new(0);
    let token = format!(
        "wgmesh-testbed-probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    );
    receiver
        .set_read_timeout(Some(RESEND_EVERY))
        .expect("a read timeout");
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 128];
    while Instant::now() < deadline {
        // A send error (no route yet) is retried like a lost datagram.
        let _ = from.send_to(token.as_bytes(), to);
        let round = Instant::now() + RESEND_EVERY;
        while Instant::now() < round {
            match receiver.recv_from(&mut buf) {
                Ok((n, source)) if &buf[..n] == token.as_bytes() => return Some(source),
                // Another probe's late datagram.
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    }
    None
}
