//! `wgmesh`: the node agent and operator CLI. Argument parsing and wiring only.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use wgmesh::agent::{self, AgentConfig};
use wgmesh::dataplane::ControlPlaneOnly;
use wgmesh::dataplane::backend::{self, Backend, BackendChoice};
use wgmesh::dataplane::node::{NodeDataPlane, NodeDataPlaneConfig};
use wgmesh::mesh::MeshConfig;
use wgmesh::model::{AddressType, EndpointFamily};
use wgmesh::telemetry::{Readiness, Telemetry};

/// Kubernetes pod network over an encrypted WireGuard full mesh.
#[derive(Debug, Parser)]
#[command(name = "wgmesh", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node agent (one per node, as a DaemonSet).
    Agent(AgentArgs),
    /// The nodes of the mesh: endpoints, pod CIDRs, keys, handshakes, traffic, problems.
    Status(StatusArgs),
    /// The mesh as Graphviz DOT (render with `dot -Tsvg`).
    Graph(StatusArgs),
    /// Ask a node's agent to rotate its WireGuard key (sets wgmesh.io/rotate-key).
    RotateKey(RotateKeyArgs),
    /// Print a wg-quick configuration for an external peer (a Peer object).
    PeerConfig(PeerConfigArgs),
    /// Remove everything the agent created on this node: the nftables table, routes,
    /// wgmesh0, the bridge, the CNI config and the state directory (private key).
    Uninstall(UninstallArgs),
    /// Print the version and exit.
    Version,
}

#[derive(Debug, Args)]
struct LogArgs {
    /// Log level or filter (RUST_LOG syntax); RUST_LOG wins when set.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DataPlaneKind {
    Wireguard,
    None,
}

/// `--wireguard-backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WireguardBackend {
    Auto,
    Kernel,
    Userspace,
}

impl From<WireguardBackend> for BackendChoice {
    fn from(b: WireguardBackend) -> Self {
        match b {
            WireguardBackend::Auto => BackendChoice::Auto,
            WireguardBackend::Kernel => BackendChoice::Kernel,
            WireguardBackend::Userspace => BackendChoice::Userspace,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// kubeconfig file; without it, KUBECONFIG, then the in-cluster configuration.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The node this runs on: its WireGuard device is read for handshakes and traffic.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    #[arg(long, default_value = "wgmesh0")]
    interface: String,
    /// The cluster's pod range, to flag node CIDRs outside it.
    #[arg(long, value_delimiter = ',')]
    cluster_cidr: Vec<IpNet>,
    /// Output format (status only).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
struct RotateKeyArgs {
    /// The node whose key to rotate.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct PeerConfigArgs {
    /// The Peer object's name.
    name: String,
    /// The peer's private key file (`wg genkey` output); without it the config holds a
    /// placeholder to fill in.
    #[arg(long)]
    private_key_file: Option<PathBuf>,
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct UninstallArgs {
    #[arg(long, default_value = "wgmesh0")]
    interface: String,
    #[arg(long, default_value = wgmesh::cni::config::DEFAULT_BRIDGE)]
    bridge: String,
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    #[arg(long, default_value = "/var/lib/wgmesh")]
    state_dir: PathBuf,
}

#[derive(Debug, Args)]
struct AgentArgs {
    /// Remove everything the agent created on this node and exit (= `wgmesh uninstall`).
    #[arg(long)]
    cleanup: bool,
    /// Name of this node's Node object.
    #[arg(long, env = "NODE_NAME", required_unless_present = "cleanup")]
    node_name: Option<String>,
    /// kubeconfig file; without it, KUBECONFIG, then the in-cluster configuration.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Where the node's private key and last-known-good mesh live.
    #[arg(long, default_value = "/var/lib/wgmesh")]
    state_dir: PathBuf,
    /// Where the node's CNI conflist is written.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// The whole pod range (comma-separated); node CIDRs outside it are refused, and a
    /// node whose own pod CIDR is outside it hosts no pods. Empty: every pod range
    /// known from the Nodes is guarded instead (see the README).
    #[arg(long, value_delimiter = ',', value_parser = parse_cidr_or_empty)]
    cluster_cidr: Vec<Option<IpNet>>,
    /// WireGuard UDP port.
    #[arg(long, default_value_t = 51820)]
    listen_port: u16,
    /// WireGuard interface name.
    #[arg(long, default_value = "wgmesh0")]
    interface: String,
    /// Which node address peers use.
    #[arg(long, default_value = "InternalIP")]
    endpoint_address_type: AddressType,
    /// Which family of the nodes' addresses carries the tunnel: `auto` publishes one
    /// address of each family the node has, and a pair uses the family both nodes
    /// have, IPv6 when both have both.
    #[arg(long, default_value = "auto")]
    endpoint_family: EndpointFamily,
    /// Masquerade pods' IPv6 traffic leaving the cluster to the node's address (pod
    /// ULA ranges are not routable); `false` for global IPv6 pod ranges.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    masquerade_ipv6: bool,
    /// Persistent keepalive for every peer, seconds (0 = off); a node's
    /// wgmesh.io/persistent-keepalive annotation overrides it for that node.
    #[arg(long, default_value_t = 0)]
    persistent_keepalive: u16,
    /// MTU of wgmesh0, the bridge and pod interfaces; default: the MTU of the
    /// interfaces holding the node's endpoint addresses minus the tunnel's overhead
    /// (80 over IPv6, 60 over IPv4; the larger when both are in use).
    #[arg(long)]
    mtu: Option<u32>,
    /// `wireguard`: the real data plane (WireGuard device, routes, nftables).
    /// `none`: control plane only, no packet path (for testing the control plane).
    #[arg(long, value_enum, default_value_t = DataPlaneKind::Wireguard)]
    dataplane: DataPlaneKind,
    /// Which WireGuard carries the traffic: `kernel` (wireguard.ko over netlink; no
    /// /dev/net/tun needed), `userspace` (in the agent: persistent TUN, UAPI socket,
    /// offloads), or `auto`: the kernel's when it has WireGuard (loaded or loadable),
    /// else userspace. The choice and its reason are logged at start.
    #[arg(long, value_enum, default_value_t = WireguardBackend::Auto)]
    wireguard_backend: WireguardBackend,
    /// Address of the HTTP endpoint: /metrics, /healthz, /readyz.
    #[arg(long, default_value = "0.0.0.0:9474")]
    metrics_addr: std::net::SocketAddr,
    /// Full recompute and re-apply at least this often, even without changes.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    resync_interval: Duration,
}

/// A CIDR, or nothing for an empty value (`--cluster-cidr=` from an empty ConfigMap).
fn parse_cidr_or_empty(s: &str) -> Result<Option<IpNet>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    match s.parse::<IpNet>() {
        Ok(n) if n.trunc() == n => Ok(Some(n)),
        Ok(n) => Err(format!(
            "{s} has host bits set (did you mean {}?)",
            n.trunc()
        )),
        Err(_) => Err(format!("{s:?} is not a CIDR like 10.244.0.0/16")),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 500ms or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m)")),
    }
}

fn init_logging(log: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn status(a: StatusArgs, graph: bool) -> anyhow::Result<()> {
    let snapshot = wgmesh::status::fetch::snapshot(&wgmesh::status::fetch::Options {
        kubeconfig: a.kubeconfig,
        node_name: a.node_name,
        interface: a.interface,
        uapi_dir: wgmesh::wireguard::UAPI_DIR.into(),
        cluster_cidrs: a.cluster_cidr,
    })
    .await
    .context("reading the mesh")?;
    let text = match (graph, a.output) {
        (true, _) => wgmesh::status::dot(&snapshot),
        (false, OutputFormat::Table) => snapshot.table(),
        (false, OutputFormat::Json) => snapshot.json(),
    };
    print!("{text}");
    Ok(())
}

async fn rotate_key(a: RotateKeyArgs) -> anyhow::Result<()> {
    let request = k8s_openapi::jiff::Timestamp::now().to_string();
    let client = wgmesh::k8s::client(a.kubeconfig.as_deref()).await?;
    wgmesh::k8s::publish::request_rotation(&kube::Api::all(client), &a.node_name, &request).await?;
    println!(
        "asked the agent of {} to rotate its key (wgmesh.io/rotate-key={request})",
        a.node_name
    );
    Ok(())
}

async fn peer_config(a: PeerConfigArgs) -> anyhow::Result<()> {
    let key = match &a.private_key_file {
        Some(path) => {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?,
            );
            Some(
                wgmesh::key::PrivateKey::from_base64(text.trim()).with_context(|| {
                    format!("{} does not hold a WireGuard private key", path.display())
                })?,
            )
        }
        None => None,
    };
    print!(
        "{}",
        wgmesh::peer_config::fetch(a.kubeconfig.as_deref(), &a.name, key.as_ref()).await?
    );
    Ok(())
}

async fn uninstall(u: wgmesh::uninstall::Uninstall) -> anyhow::Result<()> {
    let failed = wgmesh::uninstall::run(&u).await;
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("uninstall incomplete: {}", failed.join("; "))
    }
}

async fn run_agent(a: AgentArgs) -> anyhow::Result<()> {
    if a.cleanup {
        return uninstall(wgmesh::uninstall::Uninstall {
            interface: a.interface,
            bridge: wgmesh::cni::config::DEFAULT_BRIDGE.into(),
            cni_conf_dir: a.cni_conf_dir,
            state_dir: a.state_dir,
        })
        .await;
    }
    let cfg = AgentConfig {
        node_name: a.node_name.unwrap_or_default(),
        kubeconfig: a.kubeconfig,
        state_dir: a.state_dir,
        cni_conf_dir: a.cni_conf_dir,
        mesh: MeshConfig {
            cluster_cidrs: a.cluster_cidr.into_iter().flatten().collect(),
            persistent_keepalive: (a.persistent_keepalive > 0).then_some(a.persistent_keepalive),
            interface: a.interface,
            listen_port: a.listen_port,
            address_type: a.endpoint_address_type,
            endpoint_family: a.endpoint_family,
            masquerade_ipv6: a.masquerade_ipv6,
            mtu: a.mtu.unwrap_or(wgmesh::cni::config::DEFAULT_MTU),
            ..MeshConfig::default()
        },
        mtu_from_underlay: a.mtu.is_none(),
        resync_interval: a.resync_interval,
        metrics_addr: Some(a.metrics_addr),
        install_guard: a.dataplane == DataPlaneKind::Wireguard,
    };
    let readiness = match a.dataplane {
        DataPlaneKind::None => Readiness::ControlPlaneOnly,
        DataPlaneKind::Wireguard => Readiness::Node {
            interface: cfg.mesh.interface.clone(),
        },
    };
    let telemetry = Telemetry::new(
        readiness,
        cfg.cni_conf_dir.join(agent::CONFLIST),
        cfg.resync_interval,
    );
    match a.dataplane {
        DataPlaneKind::None => {
            agent::run(
                cfg,
                telemetry,
                |_| Ok(ControlPlaneOnly::default()),
                shutdown_signal(),
            )
            .await
        }
        DataPlaneKind::Wireguard => {
            let nl = wgmesh::netlink::Netlink::connect().context("netlink")?;
            let (backend, reason) = backend::choose(a.wireguard_backend.into(), &nl)
                .await
                .context("choosing the WireGuard backend")?;
            drop(nl);
            tracing::info!(backend = backend.as_str(), %reason, "WireGuard backend chosen");
            let dp_cfg = NodeDataPlaneConfig {
                interface: cfg.mesh.interface.clone(),
                listen_port: cfg.mesh.listen_port,
                bridge: cfg.mesh.bridge.clone(),
                // wg(8) reads the kernel's device over netlink.
                uapi_dir: (backend == Backend::Userspace)
                    .then(|| wgmesh::wireguard::UAPI_DIR.into()),
                backend,
            };
            let t = telemetry.clone();
            agent::run(
                cfg,
                telemetry,
                move |key| NodeDataPlane::new(dp_cfg, key.clone(), Some(t)),
                shutdown_signal(),
            )
            .await
        }
    }
    .context("wgmesh agent")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log);
    match cli.command {
        Command::Version => {
            println!("wgmesh {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Agent(a) => runtime()?.block_on(run_agent(a)),
        Command::Status(a) => runtime()?.block_on(status(a, false)),
        Command::Graph(a) => runtime()?.block_on(status(a, true)),
        Command::PeerConfig(a) => runtime()?.block_on(peer_config(a)),
        Command::RotateKey(a) => runtime()?.block_on(rotate_key(a)),
        Command::Uninstall(u) => runtime()?.block_on(uninstall(wgmesh::uninstall::Uninstall {
            interface: u.interface,
            bridge: u.bridge,
            cni_conf_dir: u.cni_conf_dir,
            state_dir: u.state_dir,
        })),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wgmesh")
        .build()
        .context("starting the async runtime")
}
