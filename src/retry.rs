//! Retry delays: jitter, and the backoff of the agent's Node watch. Pure but for the
//! random numbers.

use std::time::Duration;

/// `delay` spread by ±25%, so agents that failed together (an API server outage) do not
/// retry together.
pub fn jittered(delay: Duration) -> Duration {
    let mut b = [0u8; 2];
    // Without randomness, the plain delay is still a correct (if synchronised) retry.
    let r = getrandom::fill(&mut b)
        .map(|()| u16::from_le_bytes(b))
        .unwrap_or(u16::MAX / 2);
    let factor = 0.75 + 0.5 * f64::from(r) / f64::from(u16::MAX);
    delay.mul_f64(factor)
}

/// The Node watch's reconnection delays: from [`WatchBackoff::MIN`] doubling to
/// [`WatchBackoff::MAX`], jittered, reset by every event received.
///
/// kube-runtime's default climbs to 30 s, so after an API server outage a change made
/// once the server is back (a node joining) waited up to that long. Capped at about a
/// second, a change reaches every agent within ~2 s of the server's return; the price
/// while the server is down is one refused connection per agent per second or so.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    pub const MIN: Duration = Duration::from_millis(100);
    pub const MAX: Duration = Duration::from_secs(1);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::MIN }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(jittered(delay).min(Self::MAX))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// The backoff of a watch that may fail for a long time (the Peer watch of a cluster
/// without the CRD): from 1 s doubling to 15 s. Each reconnect yields an `Init`
/// event before its list fails, and kube-runtime resets the backoff on every event, so a
/// reset takes effect only once the watch ran for [`QuietBackoff::STABLE`] without
/// an error.
#[derive(Debug, Clone)]
pub struct QuietBackoff {
    next: Duration,
    last_failure: Option<std::time::Instant>,
}

impl QuietBackoff {
    pub const MIN: Duration = Duration::from_secs(1);
    pub const MAX: Duration = Duration::from_secs(15);
    pub const STABLE: Duration = Duration::from_secs(120);
}

impl Default for QuietBackoff {
    fn default() -> Self {
        QuietBackoff {
            next: Self::MIN,
            last_failure: None,
        }
    }
}

impl Iterator for QuietBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        self.last_failure = Some(std::time::Instant::now());
        Some(jittered(delay))
    }
}

impl kube::runtime::utils::Backoff for QuietBackoff {
    fn reset(&mut self) {
        if self
            .last_failure
            .is_none_or(|t| t.elapsed() >= Self::STABLE)
        {
            self.next = Self::MIN;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff;

    #[test]
    fn retries_are_spread_around_the_delay() {
        let d = Duration::from_secs(4);
        let samples: Vec<Duration> = (0..200).map(|_| jittered(d)).collect();
        assert!(
            samples
                .iter()
                .all(|s| *s >= Duration::from_secs(3) && *s <= Duration::from_secs(5))
        );
        let distinct: std::collections::BTreeSet<_> = samples.iter().collect();
        assert!(distinct.len() > 100, "jitter varies");
    }

    #[test]
    fn a_watch_that_keeps_failing_backs_off_to_a_minute_through_its_init_events() {
        let mut b = QuietBackoff::default();
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            // Every reconnect: an Init event (a reset), then the failure.
            b.reset();
            last = b.next().unwrap();
        }
        assert!(last >= QuietBackoff::MAX.mul_f64(0.75), "{last:?}");
    }

    #[test]
    fn the_watch_backoff_doubles_to_a_second_and_resets() {
        let mut b = WatchBackoff::default();
        let delays: Vec<Duration> = b.by_ref().take(12).collect();
        assert!(delays[0] <= Duration::from_millis(125), "{delays:?}");
        assert!(
            delays.iter().all(|d| *d <= WatchBackoff::MAX),
            "never more than a second: {delays:?}"
        );
        assert!(delays[11] >= Duration::from_millis(750), "{delays:?}");
        b.reset();
        assert!(b.next().unwrap() <= Duration::from_millis(125));
    }
}
