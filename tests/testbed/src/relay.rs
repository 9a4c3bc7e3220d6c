//! A TCP relay from a namespace to the host's loopback (test infrastructure): how the
//! nodes reach the API server at 198.51.100.10:6443.
//!
//! test-apiserver runs on the host's 127.0.0.1 (so the test's own kube client and
//! kubectl reach it as usual); the relay listens inside the API namespace behind the
//! router and forwards each connection to it. TLS goes end to end (the server's
//! certificate carries 198.51.100.10 as a SAN). The listening socket is created by a
//! thread that joined the API namespace; the connections to the server are made from
//! the host's namespace: a socket lives in the namespace it was created in.

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::exec;

type Connections = Arc<Mutex<HashMap<u64, (TcpStream, TcpStream)>>>;

/// A running relay; stopped (listener and every connection closed) on drop.
#[derive(Debug)]
pub struct Relay {
    listener: Arc<TcpListener>,
    stopping: Arc<AtomicBool>,
    connections: Connections,
    accept: Option<JoinHandle<Vec<JoinHandle<()>>>>,
}

impl Relay {
    /// Listens on `listen` inside the network namespace at `netns_path` and forwards to
    /// `target` (reached from the calling thread's namespace, the host's).
    pub fn start(netns_path: &Path, listen: SocketAddr, target: SocketAddr) -> Relay {
        let listener = exec::in_netns_thread(netns_path, move || TcpListener::bind(listen))
            .unwrap_or_else(|e| panic!("the API relay cannot listen on {listen}: {e}"));
        let listener = Arc::new(listener);
        let stopping = Arc::new(AtomicBool::new(false));
        let connections: Connections = Arc::default();
        let accept = {
            let (listener, stopping, connections) =
                (listener.clone(), stopping.clone(), connections.clone());
            std::thread::spawn(move || accept_loop(&listener, target, &stopping, &connections))
        };
        Relay {
            listener,
            stopping,
            connections,
            accept: Some(accept),
        }
    }

    /// Closes the listener and every relayed connection, and waits for the relay's
    /// threads, so no socket is left in the API namespace.
    pub fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        // shutdown(2) on a listening socket wakes a blocked accept(2) (EINVAL) on Linux.
        // SAFETY: a valid socket owned by self.listener.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        let pumps = accept.join().unwrap_or_default();
        for (client, server) in self.connections.lock().expect("relay connections").values() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
        for pump in pumps {
            let _ = pump.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    listener: &TcpListener,
    target: SocketAddr,
    stopping: &AtomicBool,
    connections: &Connections,
) -> Vec<JoinHandle<()>> {
    static IDS: AtomicU64 = AtomicU64::new(0);
    let mut pumps: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let accepted = listener.accept();
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        pumps.retain(|p| !p.is_finished());
        let Ok((client, _)) = accepted else {
            // E.g. out of file descriptors: do not spin.
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        };
        // The API server being down (a restart test) looks like a refused connection.
        let Ok(server) = TcpStream::connect(target) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        connections
            .lock()
            .expect("relay connections")
            .insert(id, (c3, s3));
        let done = Arc::new(AtomicU64::new(0));
        pumps.push(pump(client, s2, id, done.clone(), connections.clone()));
        pumps.push(pump(server, c2, id, done, connections.clone()));
    }
    pumps
}

/// Copies `from` to `to` until EOF, then half-closes `to`; the second pump of a
/// connection to finish forgets it.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    id: u64,
    done: Arc<AtomicU64>,
    connections: Connections,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
        if done.fetch_add(1, Ordering::SeqCst) == 1 {
            connections.lock().expect("relay connections").remove(&id);
        }
    })
}
