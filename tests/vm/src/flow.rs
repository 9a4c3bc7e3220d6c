//! A 100-packets-per-second ping between pods, to measure the loss across a change
//! (test infrastructure). From any place that runs commands: a testbed pod on this
//! machine, or a pod in the VM (ping runs there; its output comes back at the end).

use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::time::Duration;

use wgmesh_testbed::Exec;

/// Packets a second.
pub const RATE: u32 = 100;

/// A ping running in the background; see [`Flow::start`].
pub struct Flow<'a, E: Exec> {
    from: &'a E,
    child: Option<Child>,
    /// Where the ping's pid is, in the place it runs (to stop it there by pid).
    pid_file: String,
    what: String,
}

/// What a flow saw.
#[derive(Debug, Clone)]
pub struct Flowed {
    pub sent: u32,
    pub received: u32,
    /// When each reply arrived, in seconds since the epoch (ping's `-D`), in order.
    pub replies: Vec<f64>,
    /// How long ping ran (its statistics' `time`).
    pub duration: Duration,
}

impl Flowed {
    /// The longest time without a reply: between two replies, or from the last reply
    /// to ping's end (taking the first reply as its start): the outage a change caused,
    /// whatever the rate ping kept up meanwhile (iputils ping sends slower while its
    /// packets go unanswered, so lost packets undercount it). None without a reply.
    pub fn longest_gap(&self) -> Option<Duration> {
        let (first, last) = (self.replies.first()?, self.replies.last()?);
        let end = first + self.duration.as_secs_f64();
        self.replies
            .windows(2)
            .map(|w| w[1] - w[0])
            .chain([end - last])
            .max_by(f64::total_cmp)
            .map(|s| Duration::from_secs_f64(s.max(0.0)))
    }
}

impl std::fmt::Display for Flowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} sent, {} received", self.sent, self.received)?;
        match self.longest_gap() {
            Some(gap) => write!(f, ", {:.2} s without a reply", gap.as_secs_f64()),
            None => write!(f, ", not two replies"),
        }
    }
}

impl<'a, E: Exec> Flow<'a, E> {
    /// Pings `to` from `from` at [`RATE`], each reply awaited up to 1 s, for at most
    /// `seconds` or until [`Flow::stop`].
    pub fn start(from: &'a E, to: Ipv4Addr, seconds: u32) -> Self {
        let interval = format!("{:.3}", 1.0 / f64::from(RATE));
        let what = format!("ping from {} to {to}", from.place());
        let pid_file = format!("/run/{}.pid", wgmesh_testkit::unique_name("flow"));
        let child = from
            .command("sh")
            .args(["-c", "echo $$ > \"$0\" && exec \"$@\"", &pid_file])
            .args(["ping", "-n", "-D", "-i", &interval, "-W", "1", "-c"])
            .arg((seconds * RATE).to_string())
            .arg(to.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {what}: {e}"));
        Flow {
            from,
            child: Some(child),
            pid_file,
            what,
        }
    }

    /// Ends the flow now (SIGINT: ping prints its statistics) and returns what it
    /// counted.
    pub fn stop(self) -> Flowed {
        // The ping may not have written its pid yet, or have ended: then nothing to stop.
        let _ = self.from.exec(&[
            "sh",
            "-c",
            "[ -s \"$0\" ] && kill -INT \"$(cat \"$0\")\"",
            &self.pid_file,
        ]);
        self.finish()
    }

    /// Waits for the flow's end and returns what it counted.
    pub fn finish(mut self) -> Flowed {
        let out = self
            .child
            .take()
            .expect("a running flow")
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for the {}: {e}", self.what));
        let text = String::from_utf8_lossy(&out.stdout);
        parse(&text).unwrap_or_else(|| {
            panic!(
                "the {} printed no statistics: {text}{}",
                self.what,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

impl<E: Exec> Drop for Flow<'_, E> {
    fn drop(&mut self) {
        // A ping still running (a test failed midway) is killed by its pid; one that
        // ended has nothing left but its pid file.
        let script = if self.child.is_some() {
            "[ -s \"$0\" ] && kill -KILL \"$(cat \"$0\")\"; rm -f \"$0\""
        } else {
            "rm -f \"$0\""
        };
        let _ = self.from.exec(&["sh", "-c", script, &self.pid_file]);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// ping's output: its statistics line ("500 packets transmitted, 497 received, ...")
/// and, with `-D`, each reply's time ("[1764160000.123456] 64 bytes from ...").
fn parse(text: &str) -> Option<Flowed> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let before = |word: &str| -> Option<u32> {
        let i = words.iter().position(|w| w.starts_with(word))?;
        words.get(i.checked_sub(1)?)?.parse().ok()
    };
    let duration = words
        .iter()
        .find_map(|w| w.strip_suffix("ms")?.parse().ok())
        .map(Duration::from_millis)?;
    let replies = text
        .lines()
        .filter(|l| l.contains(" bytes from "))
        .filter_map(|l| l.strip_prefix('[')?.split_once(']')?.0.parse().ok())
        .collect();
    Some(Flowed {
        sent: before("packets")?,
        received: before("received")?,
        replies,
        duration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_output_gives_the_counts_and_the_longest_time_without_a_reply() {
        let text = "PING 10.244.1.2 (10.244.1.2) 56(84) bytes of data.\n\
                    [1764160000.000000] 64 bytes from 10.244.1.2: icmp_seq=1 ttl=62 time=0.3 ms\n\
                    [1764160000.010000] 64 bytes from 10.244.1.2: icmp_seq=2 ttl=62 time=0.3 ms\n\
                    [1764160000.100000] From 10.244.1.1 icmp_seq=3 Destination Host Unreachable\n\
                    [1764160002.510000] 64 bytes from 10.244.1.2: icmp_seq=90 ttl=62 time=0.4 ms\n\
                    [1764160002.520000] 64 bytes from 10.244.1.2: icmp_seq=91 ttl=62 time=0.4 ms\n\n\
                    --- 10.244.1.2 ping statistics ---\n\
                    91 packets transmitted, 4 received, +1 errors, 95.6% packet loss, time 2520ms\n\
                    rtt min/avg/max/mdev = 0.300/0.350/0.400/0.050 ms\n";
        let f = parse(text).unwrap();
        assert_eq!((f.sent, f.received, f.replies.len()), (91, 4, 4));
        let gap = f.longest_gap().unwrap().as_secs_f64();
        assert!((gap - 2.5).abs() < 1e-3, "{gap}");
        assert_eq!(f.to_string(), "91 sent, 4 received, 2.50 s without a reply");
        assert!(parse("ping: connect: Network is unreachable\n").is_none());
        // Replies that stop: the time from the last one to ping's end counts.
        let stopped = "[10.0] 64 bytes from x\n[10.01] 64 bytes from x\n\
                       300 packets transmitted, 2 received, 99% packet loss, time 7000ms\n";
        let gap = parse(stopped).unwrap().longest_gap().unwrap().as_secs_f64();
        assert!((gap - 6.99).abs() < 1e-3, "{gap}");
        let none = "300 packets transmitted, 0 received, 100% packet loss, time 7000ms\n";
        assert_eq!(parse(none).unwrap().longest_gap(), None);
    }
}
