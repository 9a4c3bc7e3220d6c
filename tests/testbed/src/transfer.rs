//! A checked TCP transfer between two namespaces (test infrastructure): the server
//! reports the source address it saw and a SHA-256 of what it received, the client
//! compares it with what it sent.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::exec;

/// What a transfer showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The client address as the server saw it (a pod's own IP, or a NAT address).
    pub seen_source: SocketAddr,
    pub bytes: usize,
    /// The server received exactly what the client sent.
    pub intact: bool,
}

/// Deterministic, incompressible-looking bytes (xorshift).
pub fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `len` bytes from the namespace `client_ns` to `server` (an address in
/// `server_ns`), over TCP.
pub fn tcp(server_ns: &Path, server: SocketAddr, client_ns: &Path, len: usize) -> Transfer {
    let listener = exec::in_netns_thread(server_ns, move || TcpListener::bind(server))
        .unwrap_or_else(|e| panic!("cannot listen on {server}: {e}"));
    let serving = std::thread::spawn(move || -> std::io::Result<SocketAddr> {
        let (mut conn, peer) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        conn.write_all(hex(&hasher.finalize()).as_bytes())?;
        Ok(peer)
    });
    let data = payload(len);
    let want = hex(&Sha256::digest(&data));
    let got = exec::in_netns_thread(client_ns, move || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.write_all(&data)?;
        s.shutdown(Shutdown::Write)?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    })
    .unwrap_or_else(|e| panic!("transfer to {server} failed: {e}"));
    let seen_source = serving
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
        .unwrap_or_else(|e| panic!("server at {server} failed: {e}"));
    Transfer {
        seen_source,
        bytes: len,
        intact: got == want,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The host path of a network namespace file inside a node's mount namespace.
pub(crate) fn node_netns_file(holder_pid: u32, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{holder_pid}/root/run/netns/{name}"))
}
