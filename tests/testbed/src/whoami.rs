//! A "whoami" HTTP server on the internet host (test infrastructure): answers every
//! request with the client address it sees, so tests can tell whether egress traffic
//! arrived from a pod address or masqueraded to its node's.
//!
//! It runs in the testbed's process: the listening socket is created by a thread that
//! joined the internet namespace (a socket stays in the namespace it was created in).

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::exec;

/// A running whoami server; stopped on drop.
#[derive(Debug)]
pub struct WhoAmI {
    addr: SocketAddr,
    listener: Arc<TcpListener>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WhoAmI {
    /// Listens on `addr` inside the network namespace at `netns_path`.
    pub(crate) fn start(netns_path: &Path, addr: SocketAddr) -> WhoAmI {
        let listener = exec::in_netns_thread(netns_path, move || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("the whoami server cannot listen on {addr}: {e}"));
        let listener = Arc::new(listener);
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let (listener, stopping) = (listener.clone(), stopping.clone());
            std::thread::spawn(move || serve(&listener, &stopping))
        };
        WhoAmI {
            addr,
            listener,
            stopping,
            thread: Some(thread),
        }
    }

    /// `http://<addr>/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for WhoAmI {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // shutdown(2) on a listening socket wakes a blocked accept(2) (EINVAL) on Linux.
        // SAFETY: a valid socket owned by self.listener.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: &TcpListener, stopping: &AtomicBool) {
    loop {
        let accepted = listener.accept();
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            // One short request at a time is all tests need.
            Ok((stream, peer)) => answer(stream, peer),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Reads the request head and answers with the peer's address.
fn answer(stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line.trim() != "" {
        line.clear();
    }
    let body = format!("{}\n", peer.ip());
    let response = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = &stream;
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.shutdown(Shutdown::Both);
}
