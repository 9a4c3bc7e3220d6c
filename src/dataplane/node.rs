//! The node's data plane: the pod bridge, the WireGuard device `wgmesh0` (in-process,
//! or the kernel's: see [`super::backend`]) and its peers, the mesh routes, the
//! nftables table and the sysctls, kept equal to the agent's plan. Adapter; each pass
//! changes only what differs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::backend::{Backend, WgDevice};
use super::resolve::Resolver;
use super::{DataPlane, Error, bridge, firewall, peers, routes};
use crate::key::{PrivateKey, PublicKey};
use crate::mesh::MeshPlan;
use crate::model::{Endpoint, Host};
use crate::netlink::{Link, Netlink};
use crate::telemetry::Telemetry;
use crate::wireguard::{ConfigUpdate, Device, DeviceConfig, PeerConfig, PeerUpdate};

/// How the node's WireGuard device is set up.
#[derive(Debug, Clone)]
pub struct NodeDataPlaneConfig {
    pub interface: String,
    pub listen_port: u16,
    pub bridge: String,
    /// Where the UAPI socket goes (`wg show` reads it), `None` for no UAPI. Userspace
    /// only: `wg` reads the kernel's device over netlink.
    pub uapi_dir: Option<PathBuf>,
    pub backend: Backend,
}

/// The real data plane of a node.
pub struct NodeDataPlane {
    cfg: NodeDataPlaneConfig,
    key: PrivateKey,
    nl: Netlink,
    device: Option<WgDevice>,
    telemetry: Option<Arc<Telemetry>>,
    /// Endpoints the last plan asked for, by peer (see `peers::updates`).
    last_endpoints: BTreeMap<PublicKey, Option<SocketAddr>>,
    /// Endpoint names, resolved in the background.
    resolver: Resolver,
    ready: bool,
}

fn other(msg: impl Into<String>) -> Error {
    Error::Other(msg.into())
}

impl NodeDataPlane {
    /// Needs a tokio runtime (for its netlink connection).
    /// `telemetry` receives the device for per-peer metrics.
    pub fn new(
        cfg: NodeDataPlaneConfig,
        key: PrivateKey,
        telemetry: Option<Arc<Telemetry>>,
    ) -> Result<Self, Error> {
        Ok(NodeDataPlane {
            cfg,
            key,
            nl: Netlink::connect()?,
            device: None,
            telemetry,
            last_endpoints: BTreeMap::new(),
            resolver: Resolver::default(),
            ready: false,
        })
    }

    fn publish_device(&self) {
        if let Some(t) = &self.telemetry {
            t.set_device(self.device.clone());
        }
    }

    /// Starts the device if it is missing or its interface went away (deleted by hand:
    /// it is recreated, with the same key and port).
    async fn ensure_device(&mut self, mtu: u32) -> Result<Link, Error> {
        match self.cfg.backend {
            Backend::Userspace => self.ensure_userspace_device(mtu).await?,
            Backend::Kernel => self.ensure_kernel_device().await?,
        }
        let link = self
            .nl
            .link_by_name(&self.cfg.interface)
            .await?
            .ok_or_else(|| {
                other(format!(
                    "{} vanished right after creation",
                    self.cfg.interface
                ))
            })?;
        if !link.up || link.mtu != mtu {
            self.nl.set_up_with_mtu(link.index, mtu).await?;
        }
        Ok(link)
    }

    /// The kernel backend: a "wireguard" link with the node's key and port. A TUN under
    /// the name is the userspace backend's (this node switched backends): it is
    /// replaced; meanwhile the unreachable routes and the nftables guard drop pod
    /// traffic to other nodes, never send it in clear.
    async fn ensure_kernel_device(&mut self) -> Result<(), Error> {
        let name = self.cfg.interface.clone();
        let link = self.nl.link_by_name(&name).await?;
        let create = match &link {
            Some(l) if l.kind.as_deref() == Some(crate::wgkernel::LINK_KIND) => false,
            Some(l) if l.kind.as_deref() == Some("tun") => {
                tracing::warn!(interface = %name, "replacing the userspace backend's TUN with a kernel WireGuard link (backend switch); pod traffic to other nodes is dropped until its peers are set");
                self.nl.delete_link(l.index).await?;
                true
            }
            Some(l) => {
                return Err(other(format!(
                    "{name} exists and is a {} interface, not wgmesh's WireGuard device; remove it",
                    l.kind.as_deref().unwrap_or("unknown")
                )));
            }
            None => {
                if self.device.is_some() {
                    tracing::warn!(interface = %name, "WireGuard interface disappeared; recreating it");
                }
                true
            }
        };
        if create {
            crate::wgkernel::create_link(&self.nl, &name).await?;
            self.last_endpoints.clear();
        }
        if !matches!(self.device, Some(WgDevice::Kernel(_))) {
            let dev = crate::wgkernel::KernelDevice::open(&name)
                .map_err(|e| other(format!("kernel WireGuard for {name}: {e}")))?;
            self.device = Some(WgDevice::Kernel(Arc::new(dev)));
            self.publish_device();
        }
        let device = self
            .device
            .as_ref()
            .ok_or_else(|| other("no WireGuard device"))?;
        let status = device.status()?;
        if status.private_key.as_ref() != Some(&self.key)
            || status.listen_port != self.cfg.listen_port
        {
            device.apply(&ConfigUpdate {
                private_key: Some(Some(self.key.clone())),
                listen_port: Some(self.cfg.listen_port),
                ..ConfigUpdate::default()
            })?;
            tracing::info!(interface = %name, port = self.cfg.listen_port, backend = "kernel", "WireGuard device up");
        }
        Ok(())
    }

    /// The userspace backend: the in-process device on a persistent TUN.
    async fn ensure_userspace_device(&mut self, mtu: u32) -> Result<(), Error> {
        let link = self.nl.link_by_name(&self.cfg.interface).await?;
        let alive = match (&self.device, &link) {
            (Some(WgDevice::Userspace(d)), Some(l)) => {
                d.ifindex() == l.index && d.wait_timeout(std::time::Duration::ZERO).is_none()
            }
            _ => false,
        };
        if !alive {
            if let Some(old) = self.device.take() {
                tracing::warn!(interface = %self.cfg.interface, "WireGuard interface disappeared; recreating it");
                // Every handle must go for the old device to release its port.
                self.publish_device();
                if let WgDevice::Userspace(old) = &old {
                    old.close();
                }
                drop(old);
                self.last_endpoints.clear();
            }
            let config = DeviceConfig {
                private_key: Some(self.key.clone()),
                listen_port: self.cfg.listen_port,
                mtu,
                // The interface and its routes outlive this process: a restarted agent
                // re-attaches, and meanwhile pod traffic is dropped, never routed
                // elsewhere.
                persist: true,
                ..DeviceConfig::new(self.cfg.interface.clone())
            };
            let device = match &link {
                // A TUN left by a previous agent process: attach to it (it keeps its
                // routes). If that fails (not multi-queue, say), start afresh.
                Some(l) if l.kind.as_deref() == Some("tun") => match Device::start(config.clone()) {
                    Ok(d) => {
                        tracing::info!(interface = %self.cfg.interface, "re-attached to the existing WireGuard interface");
                        Ok(d)
                    }
                    Err(e) => {
                        tracing::warn!(interface = %self.cfg.interface, error = %e, "cannot attach to the existing interface; recreating it");
                        self.nl.delete_link(l.index).await?;
                        Device::start(config)
                    }
                },
                // The kernel backend's link (this node switched backends): replaced,
                // the guard dropping pod traffic meanwhile.
                Some(l) if l.kind.as_deref() == Some(crate::wgkernel::LINK_KIND) => {
                    tracing::warn!(interface = %self.cfg.interface, "replacing the kernel WireGuard link with the userspace backend's TUN (backend switch); pod traffic to other nodes is dropped until its peers are set");
                    self.nl.delete_link(l.index).await?;
                    Device::start(config)
                }
                // Someone else's interface holds the name: never delete it; report and
                // retry (the routes stay absent meanwhile, so the unreachable routes
                // drop pod traffic to other nodes).
                Some(l) => {
                    return Err(other(format!(
                        "{} exists and is a {} interface, not wgmesh's WireGuard device; remove it",
                        self.cfg.interface,
                        l.kind.as_deref().unwrap_or("non-TUN")
                    )));
                }
                None => Device::start(config),
            }
            .map_err(|e| other(format!("starting WireGuard device {}: {e}", self.cfg.interface)))?;
            if let Some(dir) = &self.cfg.uapi_dir {
                device
                    .serve_uapi(dir, false)
                    .map_err(|e| other(format!("serving UAPI for {}: {e}", self.cfg.interface)))?;
            }
            tracing::info!(interface = %self.cfg.interface, port = device.listen_port(), backend = "userspace", "WireGuard device up");
            self.device = Some(WgDevice::Userspace(Arc::new(device)));
            self.publish_device();
        }
        Ok(())
    }

    async fn sync_peers(&mut self, plan: &MeshPlan) -> Result<(), Error> {
        let mut desired = BTreeMap::new();
        // Nodes and external peers alike.
        let device = self
            .device
            .as_ref()
            .ok_or_else(|| other("no WireGuard device"))?;
        let status = device.status()?.peers;
        let working: std::collections::BTreeSet<PublicKey> = status
            .iter()
            .filter(|p| {
                p.stats.last_handshake.is_some_and(|t| {
                    t.elapsed()
                        .is_ok_and(|age| age < crate::wireguard::SESSION_LIFETIME)
                })
            })
            .map(|p| p.config.public_key)
            .collect();
        for peer in plan.peers.values().chain(plan.external.values()) {
            // An endpoint learnt from packets (any Node writer can publish one) never
            // replaces the endpoint of a working session.
            let keep_current =
                peer.endpoint_source.is_discovered() && working.contains(&peer.public_key);
            let endpoint = peer
                .endpoint
                .as_ref()
                .filter(|_| !keep_current)
                .and_then(|e| match &e.host {
                    Host::Ip(ip) => Some(SocketAddr::new(*ip, e.port)),
                    // `None` until resolved: the peer keeps its current endpoint.
                    Host::Dns(name) => self.resolver.get(name, e.port),
                });
            desired.insert(
                peer.public_key,
                PeerConfig {
                    public_key: peer.public_key,
                    preshared_key: None,
                    endpoint,
                    allowed_ips: peer.allowed_ips.clone(),
                    persistent_keepalive: peer.persistent_keepalive.unwrap_or(0),
                },
            );
        }
        let update = peers::updates(&desired, &status, &self.last_endpoints);
        if !update.peers.is_empty() {
            device
                .apply(&update)
                .map_err(|e| other(format!("configuring WireGuard peers: {e}")))?;
            tracing::debug!(changes = update.peers.len(), "WireGuard peers updated");
        }
        self.last_endpoints = desired.iter().map(|(k, c)| (*k, c.endpoint)).collect();
        let names: std::collections::BTreeSet<(&str, u16)> = plan
            .peers
            .values()
            .chain(plan.external.values())
            .filter_map(|p| match &p.endpoint {
                Some(Endpoint {
                    host: Host::Dns(name),
                    port,
                }) => Some((name.as_str(), *port)),
                _ => None,
            })
            .collect();
        self.resolver
            .retain(|name, port| names.contains(&(name, port)));
        Ok(())
    }
}

impl DataPlane for NodeDataPlane {
    async fn apply(&mut self, plan: &MeshPlan) -> Result<(), Error> {
        if let Some(local) = &plan.local {
            bridge::ensure(&self.nl, &self.cfg.bridge, &local.pod_subnets, plan.mtu).await?;
        }
        let link = self.ensure_device(plan.mtu).await?;
        let dual_stack = plan
            .local
            .as_ref()
            .is_some_and(|l| l.pod_subnets.v6.is_some());
        set_sysctls(&self.cfg, dual_stack)?;
        self.sync_peers(plan).await?;
        routes::reconcile(&self.nl, &routes::desired(plan, Some(link.index))).await?;
        let fw = plan.firewall.clone();
        let changed = tokio::task::spawn_blocking(move || firewall::ensure(&fw))
            .await
            .map_err(|e| other(format!("nftables task: {e}")))?
            .map_err(|e| other(e.to_string()))?;
        if changed {
            tracing::info!(table = firewall::TABLE, "nftables table applied");
        }
        self.ready = true;
        Ok(())
    }

    fn set_key(&mut self, key: &PrivateKey) -> Result<(), Error> {
        self.key = key.clone();
        let Some(device) = &self.device else {
            return Ok(());
        };
        device
            .set_private_key(key)
            .map_err(|e| other(format!("setting the new private key: {e}")))?;
        // Handshake with every peer now: as soon as a peer has learned the new key, its
        // answer restores the session, instead of at the next packet's retry (5 s).
        let peers = device
            .status()?
            .peers
            .into_iter()
            .map(|p| PeerUpdate {
                update_only: true,
                handshake_now: true,
                ..PeerUpdate::new(p.config.public_key)
            })
            .collect();
        device
            .apply(&ConfigUpdate {
                peers,
                ..ConfigUpdate::default()
            })
            .map_err(|e| other(format!("starting handshakes: {e}")))
    }

    fn is_ready(&self) -> bool {
        self.ready
    }

    fn changed(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.resolver.changed())
    }

    fn peer_paths(&self) -> BTreeMap<PublicKey, super::PeerPath> {
        let Some(device) = &self.device else {
            return BTreeMap::new();
        };
        device
            .status()
            .map(|s| s.peers)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                (
                    p.config.public_key,
                    super::PeerPath {
                        endpoint: p.stats.endpoint,
                        last_handshake: p.stats.last_handshake,
                        rx_bytes: p.stats.rx_bytes,
                    },
                )
            })
            .collect()
    }

    fn probe(&self, peers: &[PublicKey]) -> Result<(), Error> {
        let Some(device) = &self.device else {
            return Ok(());
        };
        let peers = peers
            .iter()
            .map(|k| PeerUpdate {
                update_only: true,
                handshake_now: true,
                ..PeerUpdate::new(*k)
            })
            .collect();
        device
            .apply(&ConfigUpdate {
                peers,
                ..ConfigUpdate::default()
            })
            .map_err(|e| other(format!("probing direct paths: {e}")))
    }
}

/// Forwarding on; reverse-path filtering loose on the mesh interface and the bridge,
/// where asymmetric paths (host-to-remote-pod traffic sourced from the bridge) are
/// normal.
fn set_sysctls(cfg: &NodeDataPlaneConfig, dual_stack: bool) -> Result<(), Error> {
    let set = |k: &str, v: &str| crate::sysctl::write(k, v).map_err(|e| other(e.to_string()));
    set("net.ipv4.ip_forward", "1")?;
    if dual_stack {
        set("net.ipv6.conf.all.forwarding", "1")?;
    }
    for iface in [&cfg.interface, &cfg.bridge] {
        if std::path::Path::new(&format!("/proc/sys/net/ipv4/conf/{iface}")).exists() {
            set(&format!("net.ipv4.conf.{iface}.rp_filter"), "2")?;
        }
    }
    Ok(())
}
