//! The UAPI unix socket (`<dir>/<ifname>.sock`, owner-only from the start: see
//! `uapi_socket`): accepts wg(8) connections, at most [`MAX_CLIENTS`] at once, and
//! answers `get=1` / `set=1` with the pure protocol of [`super::uapi`]. Adapter.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::control::Inner;
use super::dataplane::CloseReason;
use super::error::{DeviceError, UapiError};
use super::sys::{Stop, poll_in};
use super::uapi;
use super::uapi_socket::bind_owner_only;

/// A client that stays silent this long (before or mid-request) is dropped.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once, each on its own thread. A client beyond them is not
/// refused: it waits in the listen backlog until one ends, which is at the latest
/// [`CLIENT_TIMEOUT`] after that one went silent. wg(8) makes one short request.
pub(crate) const MAX_CLIENTS: usize = 16;
/// How often a full server looks for a free slot.
const SLOT_POLL: Duration = Duration::from_millis(20);
/// A full server says so at most this often.
const FULL_LOG_EVERY: Duration = Duration::from_secs(60);
/// How often the socket file is checked for deletion.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The running server; dropping it stops it and removes the socket file.
pub(crate) struct UapiServer {
    path: PathBuf,
    inode: u64,
    stop: Arc<Stop>,
    thread: Option<JoinHandle<()>>,
}

impl UapiServer {
    pub(crate) fn start(
        inner: Arc<Inner>,
        dir: &Path,
        close_if_removed: bool,
    ) -> Result<UapiServer, DeviceError> {
        let path = dir.join(format!("{}.sock", inner.shared.tun.name()));
        let err = |source: io::Error| DeviceError::Uapi {
            path: path.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(err)?;
        // Only root (the owner) may connect, from the start: wg(8) hands private keys
        // over this socket.
        let listener = match bind_owner_only(&path) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // A live server answers; a stale file from a crashed one does not.
                if UnixStream::connect(&path).is_ok() {
                    return Err(DeviceError::UapiInUse { path });
                }
                std::fs::remove_file(&path).map_err(err)?;
                bind_owner_only(&path).map_err(err)?
            }
            Err(e) => return Err(err(e)),
        };
        listener.set_nonblocking(true).map_err(err)?;
        let inode = std::fs::metadata(&path).map_err(err)?.ino();
        let stop = Arc::new(Stop::new().map_err(err)?);
        let (p, s) = (path.clone(), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("wg-uapi".into())
            .spawn(move || accept_loop(inner, listener, p, inode, s, close_if_removed))
            .map_err(|source| DeviceError::Thread {
                name: "wg-uapi".into(),
                source,
            })?;
        tracing::info!(path = %path.display(), "UAPI listening");
        Ok(UapiServer {
            path,
            inode,
            stop,
            thread: Some(thread),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UapiServer {
    fn drop(&mut self) {
        self.stop.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Remove only our own socket, not one a successor bound since.
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn accept_loop(
    inner: Arc<Inner>,
    listener: UnixListener,
    path: PathBuf,
    inode: u64,
    stop: Arc<Stop>,
    close_if_removed: bool,
) {
    let mut last_check = Instant::now();
    let clients = Arc::new(AtomicUsize::new(0));
    let mut said_full: Option<Instant> = None;
    loop {
        let stops = [&*stop, &inner.shared.stop];
        if stops.iter().any(|s| s.is_set()) {
            return;
        }
        if clients.load(Ordering::Acquire) >= MAX_CLIENTS {
            // Full: the next clients wait in the listen backlog until a slot frees.
            if said_full.is_none_or(|t| t.elapsed() >= FULL_LOG_EVERY) {
                tracing::warn!(
                    path = %path.display(),
                    limit = MAX_CLIENTS,
                    "UAPI connection limit reached: further clients wait until one ends"
                );
                said_full = Some(Instant::now());
            }
            let _ = poll_in(&[], &stops, Some(SLOT_POLL));
        } else {
            let _ = poll_in(&[listener.as_raw_fd()], &stops, Some(CHECK_EVERY));
            match listener.accept() {
                Ok((stream, _)) => {
                    let inner = Arc::clone(&inner);
                    let slot = Slot::take(&clients);
                    let spawned = std::thread::Builder::new()
                        .name("wg-uapi-conn".into())
                        .spawn(move || {
                            let _slot = slot;
                            serve(&inner, stream)
                        });
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "cannot serve a UAPI client");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => tracing::warn!(error = %e, "UAPI accept failed"),
            }
        }
        if last_check.elapsed() >= CHECK_EVERY {
            last_check = Instant::now();
            let ours = std::fs::metadata(&path).is_ok_and(|m| m.ino() == inode);
            if !ours {
                tracing::warn!(path = %path.display(), "UAPI socket was removed");
                if close_if_removed {
                    inner.shared.close(CloseReason::UapiSocketRemoved);
                }
                return;
            }
        }
    }
}

/// One of the [`MAX_CLIENTS`] connections, given back when its thread ends (or never
/// starts).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(clients: &Arc<AtomicUsize>) -> Slot {
        clients.fetch_add(1, Ordering::AcqRel);
        Slot(Arc::clone(clients))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one client: any number of requests until it hangs up.
fn serve(inner: &Inner, stream: UnixStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut op = String::new();
        if !matches!(reader.read_line(&mut op), Ok(n) if n > 0) {
            return;
        }
        let response = match op.as_str() {
            "set=1\n" => match read_transaction(&mut reader) {
                Some(lines) => set(inner, &lines),
                // Hung up mid-transaction: nothing was applied, nobody to answer.
                None => return,
            },
            "get=1\n" => {
                let mut blank = String::new();
                match reader.read_line(&mut blank) {
                    Ok(_) if blank == "\n" => uapi::get_response(&inner.status()),
                    Ok(n) if n > 0 => Zeroizing::new(uapi::error_response(&UapiError::invalid(
                        "trailing characters after get=1",
                    ))),
                    _ => return,
                }
            }
            other => {
                tracing::debug!(op = other.trim_end(), "invalid UAPI operation");
                return;
            }
        };
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// The lines of a `set` up to the blank line that ends it; `None` on hang-up.
fn read_transaction(reader: &mut impl BufRead) -> Option<Vec<Zeroizing<String>>> {
    let mut lines = Vec::new();
    loop {
        let mut line = Zeroizing::new(String::new());
        match reader.read_line(&mut line) {
            Ok(n) if n > 0 => {}
            _ => return None,
        }
        if line.as_str() == "\n" {
            return Some(lines);
        }
        if line.ends_with('\n') {
            line.pop();
        }
        lines.push(line);
    }
}

fn set(inner: &Inner, lines: &[Zeroizing<String>]) -> Zeroizing<String> {
    let result = uapi::parse_set(lines.iter().map(|l| l.as_str()))
        .and_then(|update| inner.apply(&update).map_err(|e| UapiError::from(&e)));
    Zeroizing::new(match result {
        Ok(_) => uapi::SET_OK.to_string(),
        Err(e) => {
            tracing::warn!(errno = e.errno, error = %e.message, "UAPI set refused");
            uapi::error_response(&e)
        }
    })
}
