//! Gathers what `wgmesh status` and `wgmesh graph` show: every Node from the API server
//! and, on a node, its WireGuard device: over the UAPI socket (userspace backend) or
//! generic netlink (kernel backend). Adapter.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::ListParams;

use super::Snapshot;
use crate::k8s::{self, translate};
use crate::mesh::{self, MeshConfig, ParsedNode};
use crate::wireguard::uapi_client;

pub struct Options {
    pub kubeconfig: Option<PathBuf>,
    /// The node this runs on (its device is read, its point of view planned).
    pub node_name: Option<String>,
    pub interface: String,
    pub uapi_dir: PathBuf,
    pub cluster_cidrs: Vec<IpNet>,
}

pub async fn snapshot(o: &Options) -> Result<Snapshot, k8s::Error> {
    let client = k8s::client(o.kubeconfig.as_deref()).await?;
    let api: Api<Node> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|source| k8s::Error::Api {
            op: "list",
            target: "nodes".into(),
            source,
        })?;
    let cfg = MeshConfig {
        cluster_cidrs: o.cluster_cidrs.clone(),
        ..MeshConfig::default()
    };
    let nodes: Vec<ParsedNode> = list
        .items
        .iter()
        .map(|n| mesh::parse(&translate::node_view(n), &cfg))
        .collect();
    let local = o
        .node_name
        .clone()
        .filter(|n| nodes.iter().any(|p| &p.name == n));
    let local_key = local
        .as_ref()
        .and_then(|l| nodes.iter().find(|n| &n.name == l))
        .and_then(|n| n.public_key);
    let peers: Vec<mesh::ParsedPeer> = list_peers(&client)
        .await?
        .iter()
        .map(mesh::parse_peer)
        .collect();
    let plan = mesh::plan(
        local.as_deref().unwrap_or(""),
        local_key.as_ref(),
        &nodes,
        &peers,
        &cfg,
    );
    let device = local
        .as_ref()
        .and_then(|_| read_device(&o.uapi_dir, &o.interface));
    Ok(Snapshot {
        local,
        nodes,
        plan,
        device,
        now: SystemTime::now(),
    })
}

/// Every Peer object; none when the CRD is not installed.
pub async fn list_peers(client: &kube::Client) -> Result<Vec<mesh::PeerView>, k8s::Error> {
    let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &k8s::peers::resource());
    match api.list(&ListParams::default()).await {
        Ok(list) => Ok(list.items.iter().map(k8s::peers::peer_view).collect()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
        Err(source) => Err(k8s::Error::Api {
            op: "list",
            target: "peers".into(),
            source,
        }),
    }
}

fn read_device(dir: &Path, ifname: &str) -> Option<crate::wireguard::DeviceStatus> {
    // The userspace backend answers on its UAPI socket; the kernel backend over
    // generic netlink.
    let read = uapi_client::get(dir, ifname).or_else(|uapi| {
        crate::wgkernel::KernelDevice::open(ifname)
            .and_then(|k| k.status())
            .map_err(|kernel| format!("{uapi}; kernel: {kernel}"))
    });
    match read {
        Ok(mut d) => {
            // Never keep the private key around in a reporting tool.
            d.private_key = None;
            Some(d)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no local device data");
            None
        }
    }
}
