//! The node's data plane: the pod bridge, the in-process WireGuard device `wgmesh0`
//! and its peers, the mesh routes, the nftables table and the sysctls, kept equal to
//! the agent's plan. Adapter; each pass changes only what differs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

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
    /// Where the UAPI socket goes (`wg show` reads it), `None` for no UAPI.
    pub uapi_dir: Option<PathBuf>,
}

/// The real data plane of a node.
pub struct NodeDataPlane {
    cfg: NodeDataPlaneConfig,
    key: PrivateKey,
    nl: Netlink,
    device: Option<Arc<Device>>,
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
        let link = self.nl.link_by_name(&self.cfg.interface).await?;
        let alive = match (&self.device, &link) {
            (Some(d), Some(l)) => {
                d.ifindex() == l.index && d.wait_timeout(std::time::Duration::ZERO).is_none()
            }
            _ => false,
        };
        if !alive {
            if let Some(old) = self.device.take() {
                tracing::warn!(interface = %self.cfg.interface, "WireGuard interface disappeared; recreating it");
                // Every handle must go for the old device to release its port.
                self.publish_device();
                old.close();
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
            tracing::info!(interface = %self.cfg.interface, port = device.listen_port(), "WireGuard device up");
            self.device = Some(Arc::new(device));
            self.publish_device();
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

    async fn sync_peers(&mut self, plan: &MeshPlan) -> Result<(), Error> {
        let mut desired = BTreeMap::new();
        // Nodes and external peers alike.
        let device = self
            .device
            .as_ref()
            .ok_or_else(|| other("no WireGuard device"))?;
        let status = device.status().peers;
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
            .set_private_key(Some(key.clone()))
            .map_err(|e| other(format!("setting the new private key: {e}")))?;
        // Handshake with every peer now: as soon as a peer has learned the new key, its
        // answer restores the session, instead of at the next packet's retry (5 s).
        let peers = device
            .status()
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
            .peers
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
