//! test-apiserver: command-line arguments and wiring (see the library docs for what is
//! served and how it differs from kube-apiserver).
//!
//! Start-up order matters to clients: the data directory is locked, the CA, token and
//! objects are loaded (or created), the socket is bound, the kubeconfig is written
//! atomically, and only then `ready https://IP:PORT` is printed on stdout.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use test_apiserver::handlers::AppState;
use test_apiserver::resources::{self, NAMESPACES};
use test_apiserver::store::{Change, Store};
use test_apiserver::tls::San;
use test_apiserver::{kubeconfig, object, persist, server, tls, ttl};

/// Namespaces that exist in every cluster.
const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// A stand-in for kube-apiserver for tests: HTTPS + bearer token, state kept in DIR.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on; port 0 picks a free port (the kubeconfig has the real one).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Directory for the CA, token, kubeconfig and objects (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Address clients use (kubeconfig server URL; also a certificate SAN). Default: the
    /// listen address, or when that is unspecified (0.0.0.0) the first IP --tls-san,
    /// else 127.0.0.1.
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    /// Extra subject alternative name (IP or DNS name) of the serving certificate;
    /// repeatable. 127.0.0.1, ::1, localhost and the listen address are always included.
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,
    /// Events kept per resource type for watch resumption; watching from an older
    /// resourceVersion gets 410 Expired.
    #[arg(long, default_value_t = 1000)]
    watch_history: usize,
    /// Interval of BOOKMARK events on watches that allow them (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    bookmark_interval: Duration,
    /// Length of a watch when the client sets no timeoutSeconds.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    watch_timeout: Duration,
    /// Events idle for longer than this are deleted (0 keeps them forever).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    event_ttl: Duration,
    /// Do not fdatasync the journal after each mutation. Acknowledged changes then
    /// still survive the server being stopped or killed, but not a host crash.
    #[arg(long)]
    no_fsync: bool,
}

/// Parses `500ms`, `10s`, `5m`, `1h`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!(
            "invalid duration unit in {s:?} (use ms, s, m or h)"
        )),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("test-apiserver: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("test-apiserver: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The address clients should use.
fn client_ip(args: &Args) -> IpAddr {
    if let Some(ip) = args.advertise_address {
        return ip;
    }
    if !args.listen.ip().is_unspecified() {
        return args.listen.ip();
    }
    args.tls_san
        .iter()
        .find_map(|s| s.parse::<IpAddr>().ok())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn sans(args: &Args, client_ip: IpAddr) -> Vec<San> {
    let mut out = vec![
        San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        San::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        San::Dns("localhost".into()),
    ];
    let mut add = |s: San| {
        if !out.contains(&s) {
            out.push(s);
        }
    };
    if !args.listen.ip().is_unspecified() {
        add(San::Ip(args.listen.ip()));
    }
    add(San::Ip(client_ip));
    for s in &args.tls_san {
        add(San::parse(s));
    }
    out
}

fn seed_namespaces(store: &Store) -> anyhow::Result<()> {
    let ns_res = resources::builtins()
        .into_iter()
        .find(|r| r.storage_key == NAMESPACES)
        .context("namespaces resource")?;
    for name in SYSTEM_NAMESPACES {
        store
            .mutate(NAMESPACES, "", name, false, |cur| match cur {
                Some(_) => Ok(Change::Unchanged),
                None => Ok(Change::Put(object::prepare_create(
                    &ns_res,
                    "",
                    json!({"metadata": {"name": name}}),
                )?)),
            })
            .map_err(|e| anyhow::anyhow!("creating namespace {name}: {e}"))?;
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod {}", dir.display()))?;
    let _lock = persist::DirLock::acquire(dir)?;
    let ca = tls::load_or_create_ca(dir)?;
    let token = kubeconfig::load_or_create_token(dir)?;
    let store = Arc::new(Store::open(dir, !args.no_fsync, args.watch_history)?);
    seed_namespaces(&store)?;

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let port = listener.local_addr()?.port();
    let ip = client_ip(&args);
    let tls_config = tls::server_config(&ca, &sans(&args, ip))?;
    let server_address = SocketAddr::new(ip, port).to_string();
    let url = format!("https://{server_address}");
    kubeconfig::write(dir, &url, &ca.cert_pem, &token)?;

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let state = Arc::new(AppState {
        store: store.clone(),
        token,
        server_address,
        bookmark_interval: args.bookmark_interval.max(Duration::from_millis(10)),
        watch_timeout: args.watch_timeout,
        fsync: !args.no_fsync,
        shutdown: shutdown_rx.clone(),
        traffic: Arc::default(),
    });
    if !args.event_ttl.is_zero() {
        tokio::spawn(ttl::run(store.clone(), args.event_ttl, shutdown_rx));
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    tracing::info!(%url, dir = %dir.display(), rv = store.resource_version(), "serving");
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready {url}")?;
    stdout.flush()?;

    let stop = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        // Ends open watch streams so connections can drain.
        let _ = shutdown_tx.send(true);
    };
    server::serve(listener, tls_config, state, stop).await;
    tracing::info!(rv = store.resource_version(), "stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(listen: &str, advertise: Option<&str>, sans: &[&str]) -> Args {
        Args {
            listen: listen.parse().expect("addr"),
            data_dir: PathBuf::from("/nonexistent"),
            advertise_address: advertise.map(|a| a.parse().expect("ip")),
            tls_san: sans.iter().map(|s| s.to_string()).collect(),
            watch_history: 10,
            bookmark_interval: Duration::from_secs(1),
            watch_timeout: Duration::from_secs(1),
            event_ttl: Duration::ZERO,
            no_fsync: true,
        }
    }

    #[test]
    fn client_address_choice() {
        let cases = [
            (args("127.0.0.1:0", None, &[]), "127.0.0.1"),
            (args("10.1.0.5:6443", None, &[]), "10.1.0.5"),
            (
                args("0.0.0.0:6443", None, &["api.test", "10.1.0.7"]),
                "10.1.0.7",
            ),
            (args("0.0.0.0:6443", None, &[]), "127.0.0.1"),
            (
                args("0.0.0.0:6443", Some("10.1.0.9"), &["10.1.0.7"]),
                "10.1.0.9",
            ),
        ];
        for (a, want) in cases {
            assert_eq!(client_ip(&a).to_string(), want, "{a:?}");
        }
    }

    #[test]
    fn sans_cover_every_client_address() {
        let a = args("10.1.0.5:6443", Some("10.1.0.9"), &["api.test"]);
        let s = sans(&a, client_ip(&a));
        for want in [
            "127.0.0.1",
            "::1",
            "localhost",
            "10.1.0.5",
            "10.1.0.9",
            "api.test",
        ] {
            assert!(s.contains(&San::parse(want)), "{want} in {s:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
