//! Keeps the packet threads running. A loop that panics outside its per-packet guard, or
//! returns while the device is not stopping, is logged, counted by thread kind and run
//! again on the same thread after a bounded backoff; [`ThreadHealth`] says whether every
//! loop is running right now (for readiness). Adapter (threads, clock); the backoff
//! schedule is pure.
//!
//! A restart runs the loop function again from the start, so it gets fresh buffers and
//! a fresh snapshot; what it shares with other threads survives a panic (locks are taken
//! with `sys::lock`, which ignores poisoning).

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::udp::Family;

/// The first wait before a dead loop runs again; it doubles per death in a row.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// The longest wait: a loop that dies at once costs one restart a second, not a core.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A loop that ran this long before dying starts over from [`FIRST_BACKOFF`].
pub(crate) const STABLE_AFTER: Duration = Duration::from_secs(10);

/// The kinds of packet threads, as counted and labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// TUN → encrypt → UDP, one per TUN queue.
    Tun,
    /// UDP → decrypt → TUN on the IPv4 socket.
    Udp4,
    /// The same on the IPv6 socket.
    Udp6,
    /// Peers' timers, MTU refresh, interface watch.
    Timers,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 4] = [
        ThreadKind::Tun,
        ThreadKind::Udp4,
        ThreadKind::Udp6,
        ThreadKind::Timers,
    ];

    /// A stable name, for metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ThreadKind::Tun => "tun",
            ThreadKind::Udp4 => "udp4",
            ThreadKind::Udp6 => "udp6",
            ThreadKind::Timers => "timers",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }

    fn bit(self) -> u8 {
        1 << self.slot()
    }
}

impl From<Family> for ThreadKind {
    fn from(f: Family) -> Self {
        match f {
            Family::V4 => ThreadKind::Udp4,
            Family::V6 => ThreadKind::Udp6,
        }
    }
}

/// Restarts by kind, loops currently down, and injected faults; shared by the packet
/// threads and whoever reports on them.
#[derive(Debug, Default)]
pub struct ThreadHealth {
    restarts: [AtomicU64; ThreadKind::ALL.len()],
    /// Loops between a death and their restart, plus any thread that ended for good
    /// while it should be running.
    down: AtomicUsize,
    /// Faults injected and not yet taken, a bit per kind.
    faults: AtomicU8,
}

impl ThreadHealth {
    /// How often loops of `kind` died and were started again.
    pub fn restarts(&self, kind: ThreadKind) -> u64 {
        self.restarts[kind.slot()].load(Ordering::Relaxed)
    }

    /// Every kind with its restarts, in [`ThreadKind::ALL`] order.
    pub fn snapshot(&self) -> Vec<(ThreadKind, u64)> {
        ThreadKind::ALL
            .iter()
            .map(|k| (*k, self.restarts(*k)))
            .collect()
    }

    /// False while a loop is dead (waiting for its restart, or never coming back).
    pub fn all_running(&self) -> bool {
        self.down.load(Ordering::SeqCst) == 0
    }

    /// Makes the next loop of `kind` to check panic (tests of the supervision).
    pub(crate) fn inject(&self, kind: ThreadKind) {
        self.faults.fetch_or(kind.bit(), Ordering::SeqCst);
    }

    /// Panics if a fault was injected for `kind`, once. Called once per loop iteration,
    /// outside the per-packet guard: one relaxed load when there is none.
    #[inline]
    pub(crate) fn check_fault(&self, kind: ThreadKind) {
        if self.faults.load(Ordering::Relaxed) & kind.bit() != 0
            && self.faults.fetch_and(!kind.bit(), Ordering::SeqCst) & kind.bit() != 0
        {
            panic!("fault injected into a {} thread", kind.as_str());
        }
    }
}

/// The waits between restarts: [`FIRST_BACKOFF`] doubling up to [`MAX_BACKOFF`], back to
/// the first after a loop ran [`STABLE_AFTER`].
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff {
            next: FIRST_BACKOFF,
        }
    }

    /// The wait before restarting a loop that died after running for `ran`.
    pub(crate) fn after(&mut self, ran: Duration) -> Duration {
        if ran >= STABLE_AFTER {
            self.next = FIRST_BACKOFF;
        }
        let wait = self.next;
        self.next = (wait * 2).min(MAX_BACKOFF);
        wait
    }
}

/// What a supervised loop is and when its end is expected.
pub(crate) struct Supervised<'a, F, S> {
    pub health: &'a ThreadHealth,
    pub kind: ThreadKind,
    /// True when the loop may end: the device is stopping, or (a receiver) its sockets
    /// were retired by a rebind.
    pub finished: F,
    /// Waits out a backoff; true if the device stopped meanwhile.
    pub sleep: S,
}

impl<F: Fn() -> bool, S: FnMut(Duration) -> bool> Supervised<'_, F, S> {
    /// Runs `body` until it ends while `finished`; every other end (a panic, a return)
    /// is logged, counted and followed by a restart after the backoff.
    pub(crate) fn run(mut self, mut body: impl FnMut()) {
        let mut exit = ExitGuard {
            health: self.health,
            clean: false,
        };
        let mut backoff = Backoff::new();
        loop {
            let started = Instant::now();
            let outcome = catch_unwind(AssertUnwindSafe(&mut body));
            let thread = std::thread::current();
            let thread = thread.name().unwrap_or("unnamed");
            if (self.finished)() {
                if let Err(payload) = &outcome {
                    tracing::error!(
                        thread,
                        kind = self.kind.as_str(),
                        panic = panic_message(payload.as_ref()),
                        "data-plane thread panicked while the device stopped"
                    );
                }
                exit.clean = true;
                return;
            }
            self.health.down.fetch_add(1, Ordering::SeqCst);
            self.health.restarts[self.kind.slot()].fetch_add(1, Ordering::Relaxed);
            let wait = backoff.after(started.elapsed());
            let restart_in_ms = wait.as_millis() as u64;
            match &outcome {
                Err(payload) => tracing::error!(
                    thread,
                    kind = self.kind.as_str(),
                    panic = panic_message(payload.as_ref()),
                    restart_in_ms,
                    "data-plane thread panicked; restarting it"
                ),
                Ok(()) => tracing::error!(
                    thread,
                    kind = self.kind.as_str(),
                    restart_in_ms,
                    "data-plane thread ended unexpectedly; restarting it"
                ),
            }
            drop(outcome);
            let stopped = (self.sleep)(wait);
            self.health.down.fetch_sub(1, Ordering::SeqCst);
            if stopped || (self.finished)() {
                exit.clean = true;
                return;
            }
        }
    }
}

/// Marks the thread down for good if the supervisor itself unwinds (it never should):
/// readiness then says so instead of trusting a thread that is gone.
struct ExitGuard<'a> {
    health: &'a ThreadHealth,
    clean: bool,
}

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        if !self.clean {
            self.health.down.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The text of a panic (`panic!` with a literal or a format), or a placeholder.
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a non-text panic payload)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn the_backoff_doubles_from_10_ms_to_1_s_and_starts_over_after_a_stable_run() {
        let mut b = Backoff::new();
        let quick = Duration::from_millis(1);
        let waits: Vec<u64> = (0..9).map(|_| b.after(quick).as_millis() as u64).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(b.after(Duration::from_secs(10)), Duration::from_millis(10));
        assert_eq!(b.after(quick), Duration::from_millis(20));
        assert_eq!(b.after(Duration::from_secs(9)), Duration::from_millis(40));
    }

    /// Runs `body` under supervision with a recorded, instant sleep; returns the waits
    /// asked for and whether every loop was counted running during each.
    fn supervise(
        health: &ThreadHealth,
        finished: &Cell<bool>,
        stop_after_sleeps: Option<usize>,
        body: impl FnMut(),
    ) -> Vec<(u64, bool)> {
        let mut sleeps = Vec::new();
        Supervised {
            health,
            kind: ThreadKind::Udp6,
            finished: || finished.get(),
            sleep: |wait: Duration| {
                sleeps.push((wait.as_millis() as u64, health.all_running()));
                stop_after_sleeps == Some(sleeps.len())
            },
        }
        .run(body);
        sleeps
    }

    /// What `f` logs on this thread.
    fn logs(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_loop_that_panics_or_returns_early_is_logged_counted_and_run_again_until_it_may_end() {
        let health = ThreadHealth::default();
        let finished = Cell::new(false);
        let runs = Cell::new(0);
        let mut sleeps = Vec::new();
        let logs = logs(|| {
            sleeps = supervise(&health, &finished, None, || {
                runs.set(runs.get() + 1);
                match runs.get() {
                    1 | 3 => panic!("run {} failed", runs.get()),
                    2 => {} // returned although the device is not stopping
                    _ => finished.set(true),
                }
            })
        });
        assert_eq!(runs.get(), 4);
        assert_eq!(sleeps, [(10, false), (20, false), (40, false)]);
        assert_eq!(health.restarts(ThreadKind::Udp6), 3);
        assert_eq!(health.restarts(ThreadKind::Udp4), 0);
        assert!(health.all_running());

        let lines: Vec<&str> = logs.lines().collect();
        assert_eq!(lines.len(), 3, "{logs}");
        let thread = std::thread::current().name().unwrap().to_string();
        for (line, what) in lines.iter().zip([
            "panic=\"run 1 failed\"",
            "ended unexpectedly",
            "panic=\"run 3 failed\"",
        ]) {
            assert!(line.contains("ERROR"), "{line}");
            assert!(line.contains(&format!("thread=\"{thread}\"")), "{line}");
            assert!(line.contains("kind=\"udp6\""), "{line}");
            assert!(line.contains(what), "{line}");
        }
    }

    #[test]
    fn a_loop_that_ends_when_it_may_is_not_restarted_nor_counted() {
        let health = ThreadHealth::default();
        let finished = Cell::new(false);
        let runs = Cell::new(0);
        let sleeps = supervise(&health, &finished, None, || {
            runs.set(runs.get() + 1);
            finished.set(true);
            panic!("panics on its way out");
        });
        assert_eq!((runs.get(), sleeps.len()), (1, 0));
        assert_eq!(health.snapshot().iter().map(|(_, n)| n).sum::<u64>(), 0);
        assert!(health.all_running());
    }

    #[test]
    fn a_stop_during_the_backoff_ends_the_thread_without_running_the_loop_again() {
        let health = ThreadHealth::default();
        let finished = Cell::new(false);
        let runs = Cell::new(0);
        let sleeps = supervise(&health, &finished, Some(1), || {
            runs.set(runs.get() + 1);
            panic!("always");
        });
        assert_eq!((runs.get(), sleeps.len()), (1, 1));
        assert_eq!(health.restarts(ThreadKind::Udp6), 1);
        assert!(health.all_running());
    }

    #[test]
    fn an_injected_fault_panics_once_and_only_in_a_loop_of_its_kind() {
        let health = ThreadHealth::default();
        health.inject(ThreadKind::Timers);
        for kind in [ThreadKind::Tun, ThreadKind::Udp4, ThreadKind::Udp6] {
            health.check_fault(kind);
        }
        let panicked = catch_unwind(|| health.check_fault(ThreadKind::Timers));
        let payload = panicked.expect_err("the fault fires");
        assert_eq!(
            panic_message(payload.as_ref()),
            "fault injected into a timers thread"
        );
        health.check_fault(ThreadKind::Timers);
    }

    #[test]
    fn every_kind_has_its_own_slot_bit_and_name() {
        for (i, k) in ThreadKind::ALL.iter().enumerate() {
            assert_eq!(k.slot(), i);
            assert_eq!(k.bit(), 1 << i);
        }
        let names: Vec<_> = ThreadKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, ["tun", "udp4", "udp6", "timers"]);
        assert_eq!(ThreadKind::from(Family::V6), ThreadKind::Udp6);
    }
}
