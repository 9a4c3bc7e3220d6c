//! The control plane of a device: configuration transactions applied to the model, then
//! to the data plane (peers, keys, sockets) in one step, and status read back. Adapter.
//!
//! Every change serializes on the control mutex, which packet threads never take: they see
//! the result as a new immutable snapshot. I/O that can fail (binding a port) happens
//! before anything is committed, so a failed transaction changes nothing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use super::config::{Changes, ConfigUpdate, DeviceStatus, Model};
use super::dataplane::{Peer, Shared, Snapshot};
use super::error::DeviceError;
use super::inbound;
use super::offloads::Offloads;
use super::peer::{PeerConfig, PeerStatus};
use super::supervisor::{Supervised, ThreadKind};
use super::sys::lock;
use super::tunnel::{INIT_LEN, Identity, Outbox, Tunnel};
use super::udp::UdpSockets;
use crate::key::PublicKey;
use crate::netlink::NetNs;

/// What the UAPI server shares with the device.
pub(crate) struct Inner {
    pub shared: Arc<Shared>,
    pub control: Mutex<Control>,
    /// The namespace the device was started in: a rebind opens its sockets there, whatever
    /// thread (UAPI client, agent task) asks for it.
    pub netns: NetNs,
    /// The offloads asked for, for sockets bound later.
    pub offloads: Offloads,
}

pub(crate) struct Control {
    pub model: Model,
    pub peers: HashMap<PublicKey, Arc<Peer>>,
    pub indices: HashSet<u32>,
    pub identity: Option<Arc<Identity>>,
    pub sockets: Arc<UdpSockets>,
    /// Receive threads, current and retired (they exit once their sockets are closed).
    pub receivers: Vec<JoinHandle<()>>,
}

impl Inner {
    /// Applies `update` in one step; returns what changed.
    pub(crate) fn apply(&self, update: &ConfigUpdate) -> Result<Changes, DeviceError> {
        self.transact(|_| update.clone())
    }

    /// Builds the update from the current model and applies it under the same lock, so
    /// nothing changes in between (e.g. "remove every peer not in this list").
    pub(crate) fn transact(
        &self,
        build: impl FnOnce(&Model) -> ConfigUpdate,
    ) -> Result<Changes, DeviceError> {
        let mut ctl = lock(&self.control);
        let update = build(&ctl.model);
        let mut model = ctl.model.clone();
        let ch = model.apply(&update);

        // I/O that can fail comes first, so a failure leaves everything as it was.
        let rebind = ch
            .listen_port
            .filter(|p| *p == 0 || *p != ctl.sockets.port());
        let new_sockets = match rebind {
            Some(port) => {
                let fwmark = model.fwmark;
                let bound = self
                    .netns
                    .run(|| UdpSockets::bind(port, fwmark, self.offloads))
                    .map_err(|e| DeviceError::Io {
                        op: "enter the device's network namespace",
                        source: std::io::Error::other(e.to_string()),
                    })??;
                Some(Arc::new(bound))
            }
            None => {
                if let Some(mark) = ch.fwmark {
                    ctl.sockets.set_fwmark(mark)?;
                }
                None
            }
        };
        let mut retired = None;
        if let Some(sockets) = new_sockets {
            let receivers = spawn_receivers(&self.shared, &sockets).inspect_err(|_| {
                // Ends the receivers that did start: nothing of this transaction stays.
                sockets.close();
            })?;
            // Receivers of sockets retired earlier have exited: forget them.
            ctl.receivers.retain(|t| !t.is_finished());
            ctl.receivers.extend(receivers);
            model.listen_port = sockets.port();
            retired = Some(std::mem::replace(&mut ctl.sockets, sockets));
        }

        // Commit.
        let now = Instant::now();
        if ch.private_key {
            ctl.identity = model
                .private_key
                .as_ref()
                .map(|k| Arc::new(Identity::new(k)));
        }
        for key in &ch.removed {
            if let Some(p) = ctl.peers.remove(key) {
                ctl.indices.remove(&p.index);
                tracing::debug!(peer = %key.short(), "peer removed");
            }
        }
        let identity = ctl.identity.clone();
        let mut added = Vec::new();
        for (key, pm) in &model.peers {
            match ctl.peers.get(key) {
                Some(peer) => {
                    let mut t = lock(&peer.tunnel);
                    if ch.private_key {
                        t.set_identity(identity.as_deref());
                    }
                    t.set_preshared_key(identity.as_deref(), pm.preshared_key.clone());
                    if t.persistent_keepalive() != pm.persistent_keepalive {
                        t.set_persistent_keepalive(pm.persistent_keepalive, now);
                    }
                }
                None => {
                    let index = ctl.new_index();
                    let mut t = Tunnel::new(
                        identity.as_deref(),
                        *key,
                        pm.preshared_key.clone(),
                        index,
                        now,
                    );
                    t.set_persistent_keepalive(pm.persistent_keepalive, now);
                    let peer = Arc::new(Peer {
                        key: *key,
                        index,
                        tunnel: Mutex::new(t),
                    });
                    ctl.peers.insert(*key, Arc::clone(&peer));
                    added.push(peer);
                    tracing::debug!(peer = %key.short(), index, "peer added");
                }
            }
        }
        for (key, endpoint) in &ch.endpoints {
            if let Some(peer) = ctl.peers.get(key) {
                lock(&peer.tunnel).set_endpoint(*endpoint);
            }
        }
        ctl.model = model;
        self.shared.publish(ctl.snapshot());
        let sockets = Arc::clone(&ctl.sockets);
        // A peer that sent its initiation a moment before it was added: answered now,
        // from the published snapshot (its answer comes back by index), and its
        // handshake is under way without one of ours.
        let mut outbox = Outbox::default();
        let mut answered = HashSet::new();
        for peer in &added {
            if answer_early_init(&self.shared, peer, &sockets, &mut outbox) {
                answered.insert(peer.key);
            }
        }
        let due: Vec<Arc<Peer>> = ch
            .keepalive_on
            .iter()
            .filter(|k| !answered.contains(*k))
            .filter_map(|k| ctl.peers.get(k).cloned())
            .collect();
        drop(ctl);

        if let Some(old) = retired {
            old.close();
        }
        // A keepalive switched on goes out at once (and starts a handshake), as in wg.
        for peer in due {
            outbox.clear();
            let endpoint = {
                let mut t = lock(&peer.tunnel);
                t.keepalive_now(&mut outbox);
                t.endpoint()
            };
            if let Some(ep) = endpoint {
                for d in outbox.iter() {
                    let _ = sockets.send_to(d, ep);
                }
            }
        }
        Ok(ch)
    }

    pub(crate) fn status(&self) -> DeviceStatus {
        let ctl = lock(&self.control);
        let mut allowed = ctl.model.allowed_ips();
        let peers = ctl
            .model
            .peers
            .keys()
            .filter_map(|key| {
                let peer = ctl.peers.get(key)?;
                let t = lock(&peer.tunnel);
                let stats = t.stats();
                let config = PeerConfig {
                    public_key: *key,
                    preshared_key: t.preshared_key().cloned(),
                    endpoint: stats.endpoint,
                    allowed_ips: allowed.remove(key).unwrap_or_default(),
                    persistent_keepalive: t.persistent_keepalive(),
                };
                Some(PeerStatus { config, stats })
            })
            .collect();
        DeviceStatus {
            private_key: ctl.model.private_key.clone(),
            listen_port: ctl.sockets.port(),
            fwmark: ctl.model.fwmark,
            peers,
        }
    }
}

/// Hands `peer` the initiation it sent before it was added, if one was kept (see
/// [`super::early`]), and sends the answer. Whether one was answered.
fn answer_early_init(
    shared: &Shared,
    peer: &Peer,
    sockets: &UdpSockets,
    outbox: &mut Outbox,
) -> bool {
    let Some(init) = lock(&shared.early_inits).take(Instant::now(), &peer.key) else {
        return false;
    };
    outbox.clear();
    let mut plain = [0u8; INIT_LEN];
    let decap = lock(&peer.tunnel).decapsulate(init.from, &init.datagram, &mut plain, outbox);
    tracing::debug!(peer = %peer.key.short(), from = %init.from, ?decap, "initiation sent before the peer was added");
    for d in outbox.iter() {
        let _ = sockets.send_to(d, init.from);
    }
    !outbox.is_empty()
}

impl Control {
    pub(crate) fn new(sockets: Arc<UdpSockets>, fwmark: u32) -> Control {
        Control {
            model: Model {
                listen_port: sockets.port(),
                fwmark,
                ..Model::default()
            },
            peers: HashMap::new(),
            indices: HashSet::new(),
            identity: None,
            sockets,
            receivers: Vec::new(),
        }
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            identity: self.identity.clone(),
            by_index: self
                .peers
                .values()
                .map(|p| (p.index, Arc::clone(p)))
                .collect(),
            by_key: self.peers.clone(),
            routes: self.model.routes.map(|k| self.peers.get(k).cloned()),
            sockets: Arc::clone(&self.sockets),
        }
    }

    /// A random, unused 24-bit peer index (random so indices reveal nothing).
    fn new_index(&mut self) -> u32 {
        let mut counter = self.indices.len() as u32;
        loop {
            let mut b = [0u8; 4];
            let candidate = match getrandom::fill(&mut b) {
                Ok(()) => u32::from_le_bytes(b) & 0x00ff_ffff,
                Err(_) => {
                    counter = counter.wrapping_add(1);
                    counter & 0x00ff_ffff
                }
            };
            if candidate != 0 && self.indices.insert(candidate) {
                return candidate;
            }
        }
    }
}

pub(crate) fn spawn(
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, DeviceError> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|source| DeviceError::Thread { name, source })
}

/// Starts `body` on its own thread under a [`Supervised`]: restarted if it panics or
/// returns while the device is not stopping and `retired` is false.
pub(crate) fn spawn_supervised(
    name: String,
    kind: ThreadKind,
    shared: &Arc<Shared>,
    retired: impl Fn() -> bool + Send + 'static,
    mut body: impl FnMut() + Send + 'static,
) -> Result<JoinHandle<()>, DeviceError> {
    let shared = Arc::clone(shared);
    spawn(name, move || {
        Supervised {
            health: &shared.threads,
            kind,
            finished: || shared.stop.is_set() || retired(),
            sleep: |wait| shared.stop.sleep(wait),
        }
        .run(&mut body)
    })
}

/// One receive thread per socket; each writes to its own TUN queue when there are several.
/// A receiver whose sockets were closed (a rebind retired them) ends for good.
pub(crate) fn spawn_receivers(
    shared: &Arc<Shared>,
    sockets: &Arc<UdpSockets>,
) -> Result<Vec<JoinHandle<()>>, DeviceError> {
    let queues = shared.tun.queues().len().max(1);
    let mut threads = Vec::new();
    for (i, family) in sockets.families().into_iter().enumerate() {
        let (s, socks) = (Arc::clone(shared), Arc::clone(sockets));
        let closed = Arc::clone(sockets);
        let queue = i % queues;
        threads.push(spawn_supervised(
            format!("wg-{}", family.name()),
            family.into(),
            shared,
            move || closed.is_closed(),
            move || inbound::udp_loop(&s, &socks, family, queue),
        )?);
    }
    Ok(threads)
}
