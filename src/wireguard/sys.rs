//! Small syscall helpers for the packet loops: a stop signal the loops can wait on beside
//! their file descriptor, and a locking helper that survives poisoning. Adapter.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Locks `m` even if a thread panicked while holding it: the data plane drops the packet
/// that caused a panic and goes on, it never freezes on a poisoned lock.
#[inline]
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A one-way stop signal: an eventfd that becomes (and stays) readable, so a loop blocked
/// in `poll` on its socket or TUN queue wakes up.
#[derive(Debug)]
pub(crate) struct Stop {
    fd: OwnedFd,
    set: AtomicBool,
}

impl Stop {
    pub(crate) fn new() -> io::Result<Stop> {
        // SAFETY: eventfd has no memory preconditions; the fd is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Stop {
            fd,
            set: AtomicBool::new(false),
        })
    }

    pub(crate) fn trigger(&self) {
        self.set.store(true, Ordering::SeqCst);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd. A full counter cannot
        // happen (one write per trigger), and readability is all that matters.
        unsafe {
            libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    #[inline]
    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::Relaxed)
    }

    /// Sleeps up to `timeout`; returns true if stopped.
    pub(crate) fn sleep(&self, timeout: Duration) -> bool {
        let _ = poll_in(&[], &[self], Some(timeout));
        self.is_set()
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Waits until one of `fds` or of the stop signals is readable (or has an error or
/// hang-up), or `timeout` passes. Returns which of `fds` are ready.
pub(crate) fn poll_in(
    fds: &[RawFd],
    stops: &[&Stop],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .copied()
        .chain(stops.iter().map(|s| s.raw()))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: pfds is a live, correctly sized array of pollfd.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(vec![false; fds.len()])
        } else {
            Err(e)
        };
    }
    Ok(pfds[..fds.len()].iter().map(|p| p.revents != 0).collect())
}

/// Waits for one descriptor (or the stop signal). Allocation-free: used by the packet loops.
pub(crate) fn wait_readable(fd: RawFd, stop: &Stop) -> io::Result<()> {
    let mut pfds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.raw(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: pfds is a live array of two pollfd.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

pub(crate) fn errno_is(e: &io::Error, codes: &[i32]) -> bool {
    e.raw_os_error().is_some_and(|c| codes.contains(&c))
}
