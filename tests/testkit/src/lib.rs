//! Test kit shared by wgmesh's integration tests (test-only code).
//!
//! Everything a test creates here has a unique name and is removed on `Drop`, also when
//! the test fails, so tests can run in parallel and leave nothing behind:
//! - [`TestNs`]: a named network namespace (`ip netns add`), deleted with every link in it;
//! - [`Proc`]: a child process, killed by pid (only that pid) on drop;
//! - [`wait_until`]: poll a condition until a deadline instead of sleeping and hoping.
//!
//! Shelling out to `ip` is fine here: this is test scaffolding, not the product.

pub mod apiserver;
pub mod guard;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A binary of this workspace (e.g. `wgmesh-cni`, `test-apiserver`), from the target
/// directory the running test was built in. `hack/test.sh` builds every binary first.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Fails the calling test unless it runs as root. Network tests need root (namespaces,
/// links, nftables); run without it they cannot show anything, and a test that returned
/// early would be reported as passed. `hack/test.sh` refuses to start without root.
#[macro_export]
macro_rules! require_root {
    () => {
        assert!(
            $crate::is_root(),
            "this test needs root (network namespaces, links, nftables): run it as root, \
             e.g. `sudo -E cargo nextest run ...`; it fails rather than pass without running"
        );
    };
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, at most 15 bytes (an interface name fits):
/// `prefix` (up to 5 bytes) + pid + a counter, in base 36.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let prefix: String = prefix.chars().take(5).collect();
    let name = format!("{prefix}{}x{}", base36(std::process::id()), base36(n));
    assert!(name.len() <= 15, "{name} is too long for an interface name");
    name
}

fn base36(mut v: u32) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Runs a command and returns its output; panics with stderr when it fails.
pub fn run<I, S>(program: &str, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = run_output(program, args);
    assert!(
        out.status.success(),
        "{program} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command and returns its raw output whatever the exit status.
pub fn run_output<I, S>(program: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs `cmd` with `input` on its stdin and returns its output whatever the status.
pub fn output_with_stdin(mut cmd: Command, input: &[u8]) -> Output {
    use std::io::Write;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"))
}

/// Polls `cond` every 10 ms until it returns `Some`, or panics after `timeout` with
/// `what` in the message.
pub fn wait_until<T>(timeout: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The async twin of [`wait_until`]: polls `f` every 20 ms until it returns `Some`, or
/// panics after `timeout` with `what` in the message.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A uniquely named network namespace, deleted on drop (with the links inside it).
#[derive(Debug)]
pub struct TestNs {
    name: String,
}

impl TestNs {
    /// Creates `wgt-<unique>` with its loopback up.
    pub fn new(prefix: &str) -> Self {
        let name = unique_name(prefix);
        run("ip", ["netns", "add", &name]);
        let ns = TestNs { name };
        ns.ip(["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The path runtimes pass as CNI_NETNS.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `ip <args>` inside the namespace.
    pub fn ip<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> = vec!["-n".into(), self.name.clone().into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        run("ip", all)
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `program args` inside the namespace and returns its output.
    pub fn exec<I, S>(&self, program: &str, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program} in {}: {e}", self.name))
    }

    /// True when `ping -c1 -W1 addr` from inside the namespace gets an answer.
    pub fn ping(&self, addr: &str) -> bool {
        self.exec("ping", ["-c", "1", "-W", "1", addr])
            .status
            .success()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A host-side link (e.g. a bridge or veth a test created in the root namespace),
/// deleted on drop.
#[derive(Debug)]
pub struct HostLink {
    pub name: String,
}

impl HostLink {
    /// Takes ownership of an existing link name for cleanup.
    pub fn adopt(name: impl Into<String>) -> Self {
        HostLink { name: name.into() }
    }
}

impl Drop for HostLink {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "delete", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process the test started, killed (that pid only) and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    what: String,
}

impl Proc {
    pub fn spawn(mut cmd: Command, what: &str) -> Self {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc {
            child,
            what: what.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to this process only.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn what(&self) -> &str {
        &self.what
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while self.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if self.is_running() {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_fit_an_interface_name() {
        let a = unique_name("wgmsh");
        let b = unique_name("wgmsh");
        assert_ne!(a, b);
        assert!(a.len() <= 15 && a.starts_with("wgmsh"));
    }

    #[test]
    fn wait_until_returns_the_first_value() {
        let mut n = 0;
        let v = wait_until(Duration::from_secs(1), "n to reach 3", || {
            n += 1;
            (n >= 3).then_some(n)
        });
        assert_eq!(v, 3);
    }

    #[test]
    fn namespaces_are_created_and_removed() {
        require_root!();
        let ns = TestNs::new("tk");
        let name = ns.name().to_string();
        assert!(run("ip", ["netns", "list"]).contains(&name));
        assert!(ns.ip(["link", "show", "lo"]).contains("UP"));
        drop(ns);
        assert!(!run("ip", ["netns", "list"]).contains(&name));
    }
}
