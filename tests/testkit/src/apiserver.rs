//! A running `test-apiserver` (the workspace's stand-in for kube-apiserver) for tests:
//! a free port, a unique data directory, readiness awaited, killed (that pid only) on
//! drop. Stop and restart keep the data directory, so the same objects and credentials
//! come back.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{Proc, workspace_bin};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct TestApiServer {
    /// Holds `data/` (the server's DIR), the server logs and kubectl's HOME.
    pub root: tempfile::TempDir,
    proc: Option<Proc>,
    /// `https://IP:PORT` as the server announced it.
    pub url: String,
    listen_ip: String,
    extra_args: Vec<String>,
    generation: u32,
    /// While stopped, the port stays bound (not listening: clients are refused as by a
    /// stopped server), so no other test's socket takes it before the restart.
    held_port: Option<socket2::Socket>,
}

impl TestApiServer {
    /// Starts a server on 127.0.0.1 (a free port) with `extra_args`.
    pub fn start(extra_args: &[&str]) -> Self {
        Self::start_on("127.0.0.1", extra_args)
    }

    /// Starts a server listening on `ip` (a free port) with `extra_args`.
    pub fn start_on(ip: &str, extra_args: &[&str]) -> Self {
        let root = tempfile::Builder::new()
            .prefix("test-apiserver-")
            .tempdir()
            .expect("tempdir");
        let mut s = TestApiServer {
            root,
            proc: None,
            url: String::new(),
            listen_ip: ip.to_string(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            generation: 0,
            held_port: None,
        };
        s.spawn(0);
        s
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir().join("kubeconfig")
    }

    fn log_path(&self) -> PathBuf {
        self.root
            .path()
            .join(format!("server-{}.log", self.generation))
    }

    /// The current server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The bearer token clients present.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("token")).expect("token file")
    }

    /// `IP:PORT` of the running server.
    pub fn address(&self) -> String {
        self.url.trim_start_matches("https://").to_string()
    }

    /// Writes a file into the test's temporary directory and returns its path.
    pub fn write_file(&self, name: &str, content: &str) -> String {
        let p = self.root.path().join(name);
        std::fs::write(&p, content).expect("write file");
        p.to_string_lossy().into_owned()
    }

    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in url")
    }

    fn spawn(&mut self, port: u16) {
        self.generation += 1;
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let mut cmd = Command::new(workspace_bin("test-apiserver"));
        cmd.arg("--listen")
            .arg(format!("{}:{port}", self.listen_ip))
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut proc = Proc::spawn(cmd, "test-apiserver");
        let stdout = proc.child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut first = String::new();
            let _ = BufReader::new(stdout).read_line(&mut first);
            let _ = tx.send(first);
        });
        let line = rx.recv_timeout(READY_TIMEOUT).unwrap_or_default();
        self.proc = Some(proc);
        match line.trim().strip_prefix("ready ") {
            Some(url) => {
                self.url = url.to_string();
                self.held_port = None;
            }
            None => panic!(
                "no readiness line from test-apiserver (got {line:?}); log:\n{}",
                self.log()
            ),
        }
    }

    /// Stops the server (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        let Some(mut proc) = self.proc.take() else {
            return;
        };
        proc.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Ok(Some(status)) = proc.child.try_wait() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "test-apiserver did not exit after SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            status.success(),
            "test-apiserver exited with {status}; log:\n{}",
            self.log()
        );
        self.held_port = Some(self.hold_port(self.port()));
    }

    /// Starts the server again with the same data directory and port.
    pub fn restart(&mut self) {
        let port = self.port();
        self.stop();
        self.spawn(port);
    }

    /// Binds the server's address without listening. Both sockets set SO_REUSEADDR
    /// (tokio's listener does), which lets the restarted server bind and listen beside
    /// it; port-0 binds and outgoing connections of others skip a bound port.
    fn hold_port(&self, port: u16) -> socket2::Socket {
        let addr = SocketAddr::new(self.listen_ip.parse().expect("listen ip"), port);
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .expect("socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        socket.bind(&addr.into()).expect("bind the server's port");
        socket
    }

    /// A kube-rs client from the kubeconfig the server wrote.
    pub async fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config().await).expect("client")
    }

    /// The kube-rs configuration from the kubeconfig the server wrote.
    pub async fn config(&self) -> kube::Config {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig()).expect("kubeconfig parses");
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("kube config")
    }

    /// Runs kubectl against this server (isolated HOME: no shared discovery cache).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.root.path())
            .stdin(Stdio::null())
            .output()
            .expect("kubectl runs")
    }

    /// Runs kubectl and returns stdout; panics with its output when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
