//! One reconcile pass: every Node in, the node's state out. Adapter glue around the
//! pure [`crate::mesh`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kube::Api;

use super::paths::PathTracker;
use super::{AgentConfig, CONFLIST, CONFLIST_VERSION, Error, state};

/// The last key-rotation request handled, in the state directory.
const ROTATION_FILE: &str = "rotate-key.handled";
use crate::cni::render_conflist;
use crate::dataplane::DataPlane;
use crate::fsutil::write_if_changed;
use crate::k8s::events::{EventType, Findings, Reporter};
use crate::k8s::translate::NetworkCondition;
use crate::k8s::{publish, translate};
use crate::key::PublicKey;
use crate::mesh::{self, MeshPlan, ParsedNode};
use crate::netlink::Netlink;

/// State kept across passes.
pub struct Reconciler {
    cfg: AgentConfig,
    public_key: PublicKey,
    nodes: Api<Node>,
    reporter: Reporter,
    /// Parsed nodes by name, reused while the resourceVersion is unchanged.
    parsed: HashMap<String, (Option<String>, ParsedNode)>,
    last_plan: Option<MeshPlan>,
    /// The NetworkUnavailable condition last published.
    condition: Option<NetworkCondition>,
    /// Why this node gives no pod a network (its own configuration), if it does not.
    blocked: Option<String>,
    /// What the data plane sees of peers' paths (NAT traversal, relays).
    paths: PathTracker,
    nl: Netlink,
}

impl Reconciler {
    /// Needs a tokio runtime (netlink).
    pub fn new(
        cfg: AgentConfig,
        client: kube::Client,
        public_key: PublicKey,
    ) -> Result<Self, Error> {
        Ok(Reconciler {
            reporter: Reporter::new(client.clone(), &cfg.node_name),
            nodes: Api::all(client),
            cfg,
            public_key,
            parsed: HashMap::new(),
            last_plan: None,
            condition: None,
            blocked: None,
            paths: PathTracker::default(),
            nl: Netlink::connect()?,
        })
    }

    pub async fn reconcile<D: DataPlane>(
        &mut self,
        nodes: &[Arc<Node>],
        peers: &[mesh::PeerView],
        dataplane: &mut D,
    ) -> Result<(), Error> {
        let me = self.cfg.node_name.clone();
        self.refresh_parsed(nodes);
        self.observe(dataplane);
        let local = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(me.as_str()));
        let mut findings: BTreeMap<String, Findings> = BTreeMap::new();

        // 1. Our own advertisement.
        let mut published = false;
        match local {
            None => {
                tracing::warn!("this node's Node object does not exist (yet); nothing to publish")
            }
            Some(node) => {
                let view = translate::node_view(node);
                self.rotate_if_requested(&view, dataplane)?;
                let report = self.paths.report();
                let ad = mesh::advertise(&view, &self.public_key, &self.cfg.mesh)
                    .map(|ad| ad.with_paths(&report.discovered, &report.no_direct));
                if let Ok(ad) = &ad {
                    self.detect_mtu(ad).await?;
                }
                match ad {
                    Ok(ad) if ad.is_published_on(&view) => published = true,
                    Ok(ad) => {
                        publish::advertisement(&self.nodes, &me, &ad).await?;
                        tracing::info!(
                            endpoint = ?ad.endpoint.as_ref().map(ToString::to_string),
                            public_endpoint = ?ad.public_endpoint.as_ref().map(ToString::to_string),
                            pod_cidrs = %ad.pod_subnets.to_annotation(),
                            discovered = ad.discovered.as_deref().unwrap_or(""),
                            no_direct = ad.no_direct.as_deref().unwrap_or(""),
                            "published advertisement"
                        );
                        published = true;
                    }
                    Err(problem) => {
                        findings.entry(me.clone()).or_default().insert((
                            EventType::Warning,
                            problem.reason(),
                            problem.to_string(),
                        ));
                    }
                }
            }
        }

        // 2. The mesh.
        let external: Vec<mesh::ParsedPeer> = peers.iter().map(mesh::parse_peer).collect();
        let plan = mesh::plan_with(
            &me,
            Some(&self.public_key),
            self.parsed.values().map(|(_, p)| p),
            &external,
            &self.cfg.mesh,
            &self.paths.report().observed,
        );
        for (node, problems) in &plan.rejected {
            let reportable: Vec<_> = problems.iter().filter(|p| p.is_reportable()).collect();
            let Some(first) = reportable.first() else {
                tracing::debug!(peer = %node, "node has not published its advertisement yet");
                continue;
            };
            let message = reportable
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            // One Event per node and pass: the first reason, every problem in the message.
            findings.entry(node.clone()).or_default().insert((
                EventType::Warning,
                first.reason(),
                format!("left out of the WireGuard mesh: {message}"),
            ));
        }
        for (node, warnings) in &plan.warnings {
            let f = findings.entry(node.clone()).or_default();
            for w in warnings {
                f.insert((EventType::Warning, w.reason(), w.to_string()));
            }
        }
        let blocked = (!plan.local_problems.is_empty()).then(|| {
            plan.local_problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        });
        if let (Some(message), Some(first)) = (&blocked, plan.local_problems.first()) {
            findings.entry(me.clone()).or_default().insert((
                EventType::Warning,
                first.reason(),
                message.clone(),
            ));
            if self.blocked.as_ref() != Some(message) {
                tracing::error!(problem = %message, "this node's wgmesh configuration is wrong; no pod gets a network here");
            }
        } else if self.blocked.is_some() {
            tracing::info!("this node's wgmesh configuration is usable again");
        }
        self.blocked = blocked;
        let uids = nodes
            .iter()
            .filter_map(|n| Some((n.metadata.name.clone()?, n.metadata.uid.clone()?)))
            .collect();
        if let Err(e) = self.reporter.sync(&findings, &uids).await {
            // Events are for humans; failing to post one must not stop the mesh.
            tracing::warn!(error = %e, "could not record an event");
        }

        // 3. The data plane, and the saved last-known-good plan: the guard and the mesh
        // are in place before any pod gets a network.
        dataplane.apply(&plan).await?;
        if self.last_plan.as_ref() != Some(&plan) {
            log_changes(self.last_plan.as_ref(), &plan);
            let path = state::path(&self.cfg.state_dir);
            state::save(&self.cfg.state_dir, &plan)
                .map_err(|source| Error::File { path, source })?;
        }
        let cni = plan.cni_config(&self.cfg.mesh);
        self.last_plan = Some(plan);

        // 4. The node's CNI config: written once everything under it is in place,
        // removed while the node must not host pods.
        let cni_written = self.sync_conflist(cni)?;

        // 5. Tell Kubernetes whether the node's network is ready.
        let condition = match &self.blocked {
            Some(message) => Some(NetworkCondition::misconfigured(message.clone())),
            None if published && cni_written && dataplane.is_ready() => {
                Some(NetworkCondition::ready())
            }
            None => None,
        };
        if let Some(c) = condition {
            let already = self.condition.as_ref() == Some(&c)
                || local.and_then(|n| translate::network_condition(n)).as_ref() == Some(&c);
            if !already {
                publish::network_condition(&self.nodes, &me, &c).await?;
                tracing::info!(unavailable = c.unavailable, reason = %c.reason, "set NetworkUnavailable");
            }
            self.condition = Some(c);
        }
        Ok(())
    }

    /// Writes the node's conflist when it changed, or removes it while the node's own
    /// configuration is wrong; returns whether the node now has one.
    fn sync_conflist(&self, cni: Option<crate::cni::NetworkConfig>) -> Result<bool, Error> {
        let path = self.cfg.cni_conf_dir.join(CONFLIST);
        let file_err = |source| Error::File {
            path: path.clone(),
            source,
        };
        if self.blocked.is_some() {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::warn!(path = %path.display(), "removed the CNI config: no new pod gets a network on this node")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(file_err(e)),
            }
            return Ok(false);
        }
        let Some(cni) = cni else {
            tracing::warn!("no pod CIDR for this node yet; CNI config not written");
            return Ok(false);
        };
        std::fs::create_dir_all(&self.cfg.cni_conf_dir).map_err(file_err)?;
        let text = render_conflist(&cni, CONFLIST_VERSION);
        if write_if_changed(&path, text.as_bytes(), 0o644).map_err(file_err)? {
            tracing::info!(path = %path.display(), "wrote CNI config");
        }
        Ok(true)
    }

    /// Reads the data plane's view of its peers' paths (observed endpoints, direct paths
    /// behind NAT), probes direct paths that are due, and returns whether what the plan
    /// and the advertisement derive from it changed (then a pass is due).
    pub fn observe<D: DataPlane>(&mut self, dataplane: &D) -> bool {
        let Some(plan) = &self.last_plan else {
            return false;
        };
        let seen = dataplane.peer_paths();
        let parsed = &self.parsed;
        let nodes = |name: &str| parsed.get(name).map(|(_, p)| p);
        let published = mesh::paths::Discoveries::collect(parsed.values().map(|(_, p)| p));
        let (probe, changed) = self.paths.update(
            std::time::Instant::now(),
            &self.cfg.node_name,
            &nodes,
            &published,
            plan,
            &seen,
        );
        if !probe.is_empty() {
            tracing::debug!(peers = probe.len(), "probing direct paths");
            if let Err(e) = dataplane.probe(&probe) {
                tracing::warn!(error = %e, "cannot probe direct paths");
            }
        }
        if changed {
            let r = self.paths.report();
            tracing::info!(
                discovered = r.discovered.len(),
                no_direct = ?r.no_direct,
                "peer paths changed"
            );
        }
        changed
    }

    /// Why this node gives no pod a network, if its own configuration is wrong.
    pub fn blocked(&self) -> Option<&str> {
        self.blocked.as_deref()
    }

    /// The mesh MTU from the underlay: the interfaces holding the node's endpoint
    /// addresses, each minus its family's tunnel overhead (`mesh::mtu_from_underlay`).
    async fn detect_mtu(&mut self, ad: &mesh::Advertisement) -> Result<(), Error> {
        if !self.cfg.mtu_from_underlay {
            return Ok(());
        }
        let mut links = Vec::new();
        for e in &ad.endpoints {
            let crate::model::Host::Ip(ip) = e.host else {
                continue;
            };
            if let Some(link) = self.nl.link_with_address(ip).await? {
                links.push((ip.is_ipv6(), link.mtu, link.name));
            }
        }
        let sizes: Vec<(bool, u32)> = links.iter().map(|(v6, m, _)| (*v6, *m)).collect();
        if let Some(mtu) = mesh::mtu_from_underlay(&sizes)
            && mtu != self.cfg.mesh.mtu
        {
            let underlay: Vec<String> = links
                .iter()
                .map(|(v6, m, name)| format!("{name} {m} ({})", if *v6 { "IPv6" } else { "IPv4" }))
                .collect();
            tracing::info!(underlay = ?underlay, mtu, "mesh MTU from the underlay");
            self.cfg.mesh.mtu = mtu;
        }
        Ok(())
    }

    /// Rotates the node's key when `wgmesh.io/rotate-key` carries a value not handled
    /// yet: a new key is stored, the device switches to it, and this pass publishes it.
    /// (Switch first, publish second: peers that learn the new key find it in use.)
    fn rotate_if_requested<D: DataPlane>(
        &mut self,
        view: &crate::model::NodeView,
        dataplane: &mut D,
    ) -> Result<(), Error> {
        let Some(request) = view.annotation(crate::model::annotation::ROTATE_KEY) else {
            return Ok(());
        };
        let handled_path = self.cfg.state_dir.join(ROTATION_FILE);
        if std::fs::read_to_string(&handled_path).is_ok_and(|h| h.trim() == request) {
            return Ok(());
        }
        let key = super::identity::generate(&self.cfg.state_dir)?;
        dataplane.set_key(&key)?;
        tracing::info!(old = %self.public_key.short(), new = %key.public_key().short(), request, "rotated the WireGuard key");
        self.public_key = key.public_key();
        write_if_changed(&handled_path, request.as_bytes(), 0o600).map_err(|source| {
            Error::File {
                path: handled_path,
                source,
            }
        })?;
        Ok(())
    }

    /// Uses a new API client (after reconnecting), keeping everything else.
    pub fn set_client(&mut self, client: kube::Client) {
        self.reporter.set_client(client.clone());
        self.nodes = Api::all(client);
    }

    /// The plan of the last successful pass.
    pub fn plan(&self) -> Option<&MeshPlan> {
        self.last_plan.as_ref()
    }

    /// Re-parses only nodes whose resourceVersion changed; forgets deleted nodes.
    fn refresh_parsed(&mut self, nodes: &[Arc<Node>]) {
        let mut fresh = HashMap::with_capacity(nodes.len());
        for node in nodes {
            let Some(name) = node.metadata.name.clone() else {
                continue;
            };
            let rv = node.metadata.resource_version.clone();
            let parsed = match self.parsed.remove(&name) {
                Some((old_rv, p)) if old_rv.is_some() && old_rv == rv => p,
                _ => mesh::parse(&translate::node_view(node), &self.cfg.mesh),
            };
            fresh.insert(name, (rv, parsed));
        }
        self.parsed = fresh;
    }
}

fn log_changes(old: Option<&MeshPlan>, new: &MeshPlan) {
    let empty = MeshPlan::default();
    log_peer_changes(&old.unwrap_or(&empty).peers, &new.peers);
    log_peer_changes(&old.unwrap_or(&empty).external, &new.external);
}

fn log_peer_changes(
    old_peers: &BTreeMap<String, mesh::PeerPlan>,
    new_peers: &BTreeMap<String, mesh::PeerPlan>,
) {
    for (name, peer) in new_peers {
        match old_peers.get(name) {
            None => {
                tracing::info!(peer = %name, public_key = %peer.public_key.short(), endpoint = ?peer.endpoint, "peer added")
            }
            Some(o) if o != peer => {
                tracing::info!(peer = %name, endpoint = ?peer.endpoint, "peer changed")
            }
            _ => {}
        }
    }
    for name in old_peers.keys().filter(|n| !new_peers.contains_key(*n)) {
        tracing::info!(peer = %name, "peer removed");
    }
}
