//! Running commands inside the testbed's namespaces (test infrastructure).
//!
//! Every command runs through `nsenter`, never `ip netns exec`: the latter remounts /sys
//! in a fresh mount namespace, which hides cgroups and would also hide a node's private
//! mounts. The few things done in-process (a UDP packet, a listening socket) use a
//! short-lived thread that `setns(2)`s into a network namespace: a thread's namespace is
//! its own, and a socket stays in the namespace it was created in.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `nsenter --net=<netns_path> -- <program>`: a command in a network namespace only.
pub fn in_net(netns_path: &Path, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns_path.display()))
        .arg("--")
        .arg(program);
    cmd
}

/// `nsenter --target <pid> --mount --net -- <program>`: a command in a node (the
/// network and mount namespaces of its holder process).
pub fn in_node(holder_pid: u32, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.args([
        "--target",
        &holder_pid.to_string(),
        "--mount",
        "--net",
        "--",
    ])
    .arg(program);
    cmd
}

/// A place of the testbed that runs commands (a namespace, the router, a node, a pod):
/// say how to run a program there, get the rest.
pub trait Exec {
    /// A command running `program` there.
    fn command(&self, program: impl AsRef<OsStr>) -> Command;

    /// What messages call the place.
    fn place(&self) -> &str;

    /// Runs `args` (program first) there; any exit status.
    fn exec<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let (program, rest) = split(args, self.place());
        let mut cmd = self.command(program);
        cmd.args(rest);
        output(cmd, None)
    }

    /// Runs `args` there and returns stdout; panics when it fails.
    fn exec_ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let (program, rest) = split(args, self.place());
        let mut cmd = self.command(program);
        cmd.args(rest);
        output_ok(cmd, None)
    }

    /// Runs a `sh -c` script there; any exit status.
    fn sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-c", script])
    }

    /// True when a ping from there gets an answer within 3 s (a probe a second, so a
    /// first packet that waits for a handshake on a busy machine still counts).
    fn ping(&self, addr: impl std::fmt::Display) -> bool {
        let addr = addr.to_string();
        self.exec(&["ping", "-c", "1", "-w", "3", &addr])
            .status
            .success()
    }

    /// True when one echo request from there is answered within `timeout`: a cheap probe
    /// to time a change with (a lost first packet is not retried, unlike [`Exec::ping`]).
    fn ping_once(&self, addr: impl std::fmt::Display, timeout: Duration) -> bool {
        let addr = addr.to_string();
        let wait = format!("{:.3}", timeout.as_secs_f64());
        self.exec(&["ping", "-n", "-c", "1", "-W", &wait, &addr])
            .status
            .success()
    }
}

/// Splits `args` into program and arguments, for the `exec(&["ip", "addr"])` style.
pub fn split<'a, S: AsRef<OsStr>>(args: &'a [S], what: &str) -> (&'a OsStr, &'a [S]) {
    match args.split_first() {
        Some((program, rest)) => (program.as_ref(), rest),
        None => panic!("{what}: an empty command line"),
    }
}

/// Runs `cmd` to completion with `stdin` (or none) and returns its output whatever the
/// exit status; panics only when it cannot be started.
pub fn output(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", describe(&cmd)));
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A command that exits without reading its input is judged by its exit status.
        let _ = pipe.write_all(input);
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {}: {e}", describe(&cmd)))
}

/// Runs `cmd` and returns its stdout; panics with the command line, status, stdout and
/// stderr when it fails.
pub fn output_ok(cmd: Command, stdin: Option<&[u8]>) -> String {
    let line = describe(&cmd);
    let out = output(cmd, stdin);
    assert!(
        out.status.success(),
        "{line} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command line as a shell user would type it, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `f` on a fresh thread that has joined the network namespace at `netns_path`.
///
/// Only that thread changes namespace; sockets it creates stay in that namespace after
/// it ends (how the API server's relay listens inside the API namespace).
pub fn in_netns_thread<T: Send + 'static>(
    netns_path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let path = netns_path.to_path_buf();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path)
            .unwrap_or_else(|e| panic!("cannot open network namespace {}: {e}", path.display()));
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("cannot join network namespace {}: {e}", path.display()));
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Polls `cond` every 10 ms until it returns `Some` or `timeout` passes (then `None`):
/// for callers that fail with their own diagnostics (logs) instead of a bare timeout.
pub fn poll_until<T>(timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The last `lines` lines of `text` without terminal colour codes, for failure
/// messages that show logs.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    strip_ansi(&all[start..].join("\n"))
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip to the final letter of the sequence.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_commands_enter_the_holder_s_mount_and_network_namespaces() {
        let mut cmd = in_node(42, "ip");
        cmd.args(["addr", "show"]);
        assert_eq!(
            describe(&cmd),
            "nsenter --target 42 --mount --net -- ip addr show"
        );
        let cmd = in_net(Path::new("/run/netns/x"), "nft");
        assert_eq!(describe(&cmd), "nsenter --net=/run/netns/x -- nft");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("\u{1b}[32m INFO\u{1b}[0m ready", 1), " INFO ready");
    }
}
