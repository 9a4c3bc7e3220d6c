//! A pod that sends to every node at once (test infrastructure): UDP datagrams from a
//! real pod on the agent's node to the echo port of emulated pods, through the agent's
//! routes, device and sessions; each answer proves the whole path to that node works.
//!
//! The socket is created inside the pod's network namespace by a thread that joined it;
//! sending and receiving then work from any thread.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::packet::ECHO_PORT;

const MAGIC: &[u8; 4] = b"wgms";

/// A UDP socket in a pod, probing emulated pods.
pub struct Prober {
    socket: UdpSocket,
    /// Distinguishes the probes of one call from late answers to an earlier one.
    round: u32,
}

impl Prober {
    /// A prober in the pod whose network namespace file is `netns` (host path).
    pub fn new(netns: &Path) -> Prober {
        let socket = wgmesh_testbed::in_netns_thread(netns, || {
            UdpSocket::bind("0.0.0.0:0").expect("a UDP socket in the pod")
        });
        Prober { socket, round: 0 }
    }

    /// Sends one datagram to each target's echo port at once, then again every `retry`
    /// to those that did not answer, until all did or `timeout` passed. Returns how long
    /// after the first send each first answer came (`None`: no answer).
    pub fn probe(
        &mut self,
        targets: &[Ipv4Addr],
        timeout: Duration,
        retry: Duration,
    ) -> Vec<Option<Duration>> {
        self.round += 1;
        let round = self.round;
        let mut answered: Vec<Option<Duration>> = vec![None; targets.len()];
        let mut left = targets.len();
        let start = Instant::now();
        let mut next_send = start;
        let mut buf = [0u8; 64];
        while left > 0 && start.elapsed() < timeout {
            if Instant::now() >= next_send {
                for (i, target) in targets.iter().enumerate() {
                    if answered[i].is_none() {
                        // A full queue or a route not there yet: the next round retries.
                        let _ = self.socket.send_to(
                            &datagram(round, i as u32),
                            SocketAddrV4::new(*target, ECHO_PORT),
                        );
                    }
                }
                next_send += retry;
            }
            let wait = next_send
                .saturating_duration_since(Instant::now())
                .min(timeout.saturating_sub(start.elapsed()))
                .max(Duration::from_millis(1));
            let _ = self.socket.set_read_timeout(Some(wait));
            while let Ok((n, _)) = self.socket.recv_from(&mut buf) {
                if let Some(i) = parse(&buf[..n], round)
                    && let Some(slot) = answered.get_mut(i as usize)
                    && slot.is_none()
                {
                    *slot = Some(start.elapsed());
                    left -= 1;
                }
                // Drain what is there without waiting, then go back to sending.
                let _ = self
                    .socket
                    .set_read_timeout(Some(Duration::from_micros(100)));
            }
        }
        answered
    }
}

fn datagram(round: u32, index: u32) -> [u8; 12] {
    let mut d = [0u8; 12];
    d[..4].copy_from_slice(MAGIC);
    d[4..8].copy_from_slice(&round.to_be_bytes());
    d[8..].copy_from_slice(&index.to_be_bytes());
    d
}

fn parse(d: &[u8], round: u32) -> Option<u32> {
    (d.len() == 12 && &d[..4] == MAGIC && d[4..8] == round.to_be_bytes())
        .then(|| u32::from_be_bytes([d[8], d[9], d[10], d[11]]))
}

/// A summary of probe answers: how many answered, and the slowest.
#[derive(Debug, Clone, Copy)]
pub struct Answers {
    pub answered: usize,
    pub total: usize,
    pub slowest: Option<Duration>,
}

impl Answers {
    pub fn of(answers: &[Option<Duration>]) -> Answers {
        Answers {
            answered: answers.iter().flatten().count(),
            total: answers.len(),
            slowest: answers.iter().flatten().max().copied(),
        }
    }

    pub fn all(&self) -> bool {
        self.answered == self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_of_the_current_round_are_recognised() {
        let d = datagram(3, 42);
        assert_eq!(parse(&d, 3), Some(42));
        assert_eq!(parse(&d, 2), None, "an earlier round");
        assert_eq!(parse(&d[..11], 3), None);
        let a = Answers::of(&[
            Some(Duration::from_millis(5)),
            None,
            Some(Duration::from_millis(9)),
        ]);
        assert_eq!((a.answered, a.total), (2, 3));
        assert_eq!(a.slowest, Some(Duration::from_millis(9)));
        assert!(!a.all());
    }
}
