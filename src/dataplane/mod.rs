//! Adapters that put a node's desired network state into the kernel. Each owns what it
//! creates and is idempotent: run it again and it changes nothing.

pub mod backend;
pub mod bridge;
pub mod firewall;
pub mod guard;
pub mod monitor;
pub mod node;
pub mod peers;
pub mod resolve;
pub mod routes;

use std::future::Future;

use crate::mesh::MeshPlan;

/// A data-plane failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Netlink(#[from] crate::netlink::Error),
    #[error("{0}")]
    Other(String),
}

/// What the data plane sees of one peer's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerPath {
    /// Where its authenticated packets come from (or the configured endpoint).
    pub endpoint: Option<std::net::SocketAddr>,
    pub last_handshake: Option<std::time::SystemTime>,
    /// Bytes of authenticated datagrams received from it.
    pub rx_bytes: u64,
}

/// What the agent's reconcile loop drives: make the node's packet path match a plan.
/// Implementations must be idempotent (the loop applies the same plan again on every
/// resync) and change only what differs.
pub trait DataPlane: Send {
    fn apply(&mut self, plan: &MeshPlan) -> impl Future<Output = Result<(), Error>> + Send;

    /// Switches to a new private key (key rotation): existing sessions end, and every
    /// peer is sent a handshake at once.
    fn set_key(&mut self, key: &crate::key::PrivateKey) -> Result<(), Error>;

    /// True once the node can carry pod traffic as planned.
    fn is_ready(&self) -> bool;

    /// What the data plane sees of each peer's path: where its packets come from, its
    /// last handshake, the bytes received. Empty without a WireGuard device.
    fn peer_paths(&self) -> std::collections::BTreeMap<crate::key::PublicKey, PeerPath> {
        std::collections::BTreeMap::new()
    }

    /// Starts a handshake with each of `peers` now (probing a direct path).
    fn probe(&self, _peers: &[crate::key::PublicKey]) -> Result<(), Error> {
        Ok(())
    }

    /// Notified when the data plane learned something that changes how a plan applies
    /// (an endpoint name resolved): the agent applies its plan again.
    fn changed(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
}

/// A data plane that applies nothing: the agent runs its control plane only (keys,
/// annotations, mesh computation, CNI config). A stand-in until the WireGuard device
/// and routes are wired in.
#[derive(Debug, Default)]
pub struct ControlPlaneOnly {
    applied: Option<MeshPlan>,
}

impl ControlPlaneOnly {
    /// The last plan handed over.
    pub fn applied(&self) -> Option<&MeshPlan> {
        self.applied.as_ref()
    }
}

impl DataPlane for ControlPlaneOnly {
    async fn apply(&mut self, plan: &MeshPlan) -> Result<(), Error> {
        self.applied = Some(plan.clone());
        Ok(())
    }

    fn set_key(&mut self, _key: &crate::key::PrivateKey) -> Result<(), Error> {
        Ok(())
    }

    fn is_ready(&self) -> bool {
        true
    }
}
