//! A WireGuard device: TUN interface, UDP sockets, packet threads, and the in-process
//! configuration API the agent drives (the UAPI server drives the same API). Adapter.
//!
//! Threads: one per TUN queue (`available_parallelism` queues by default) running
//! TUN → encrypt → UDP, one per UDP socket (IPv4, IPv6) running UDP → decrypt → TUN, and
//! one for the timers. Plain OS threads, not async: each batch runs to completion on the
//! thread that read it, with reused buffers and no hand-off, which is the cheapest path
//! on a small machine. I/O is batched (recvmmsg/sendmmsg) and, where the kernel has them,
//! offloaded ([`Offloads`]: TUN TSO/USO with virtio_net_hdr, UDP GSO and GRO), so one
//! system call moves up to 64 KiB of one flow; see docs/performance.md.
//!
//! Locks: configuration changes serialize on one control mutex (see `control`), which the
//! packet threads never take; they pick up an immutable snapshot instead. A peer's tunnel
//! mutex is the only lock a packet takes, never held across a syscall.
//!
//! The device lives in the network namespace of the thread that starts it (its sockets
//! too, also when rebound later from another thread).
//!
//! ```no_run
//! use wgmesh::key::PrivateKey;
//! use wgmesh::wireguard::{Device, DeviceConfig, PeerConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let peer_key = PrivateKey::generate()?.public_key();
//! let mut config = DeviceConfig::new("wgmesh0");
//! config.listen_port = 51820;
//! config.private_key = Some(PrivateKey::generate()?);
//! let device = Device::start(config)?;
//! device.set_peer(PeerConfig {
//!     endpoint: Some("192.0.2.2:51820".parse()?),
//!     allowed_ips: vec!["10.244.1.0/24".parse()?],
//!     persistent_keepalive: 25,
//!     ..PeerConfig::new(peer_key)
//! })?;
//! let stats = device.peer_stats(&peer_key);
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::config::{ConfigUpdate, DeviceStatus, PeerUpdate};
use super::control::{Control, Inner, spawn_receivers, spawn_supervised};
use super::dataplane::{self, CloseReason, Shared};
use super::drops::DropCounters;
use super::error::DeviceError;
use super::offloads::{Offloads, TunGrant, negotiate_tun};
use super::outbound;
use super::peer::{PeerConfig, PeerStats, PeerStatus};
use super::supervisor::{ThreadHealth, ThreadKind};
use super::sys::{Stop, lock};
use super::tun::Tun;
use super::uapi_server::UapiServer;
use super::udp::UdpSockets;
use crate::key::{PrivateKey, PublicKey};
use crate::netlink::NetNs;

/// The MTU a new interface gets, as wireguard-go: 1500 minus the WireGuard, UDP and IPv6
/// overheads.
pub const DEFAULT_MTU: u32 = 1420;

/// How to start a device.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// The TUN interface to create (1-15 bytes).
    pub name: String,
    /// 0 picks a free port; [`Device::listen_port`] tells which.
    pub listen_port: u16,
    pub private_key: Option<PrivateKey>,
    /// SO_MARK of the UDP sockets; 0 = off.
    pub fwmark: u32,
    pub mtu: u32,
    /// TUN queues and their threads; 0 = the machine's available parallelism.
    pub queues: usize,
    /// Keep the interface (and its routes) when the device stops, so a restarted
    /// process re-attaches to it (the agent); `false` removes it (`wgmesh-wg`).
    pub persist: bool,
    /// The offloads to use where the kernel has them; [`DeviceConfig::new`] takes them
    /// from `WGMESH_OFFLOADS` (default: all).
    pub offloads: Offloads,
}

impl DeviceConfig {
    pub fn new(name: impl Into<String>) -> Self {
        DeviceConfig {
            name: name.into(),
            listen_port: 0,
            private_key: None,
            fwmark: 0,
            mtu: DEFAULT_MTU,
            queues: 0,
            persist: false,
            offloads: Offloads::from_env(),
        }
    }
}

/// A running device. Dropping it stops every thread and removes its UAPI socket; the
/// interface goes away with the last queue.
pub struct Device {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
    uapi: Mutex<Option<UapiServer>>,
}

impl Device {
    /// Creates the interface, binds the port and starts the threads.
    pub fn start(config: DeviceConfig) -> Result<Device, DeviceError> {
        let queues = match config.queues {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let netns = NetNs::current().map_err(|e| DeviceError::Io {
            op: "open the network namespace",
            source: std::io::Error::other(e.to_string()),
        })?;
        let want = config.offloads;
        let tun = Tun::create(&config.name, queues, config.persist, want.tun)?;
        // Without TUN offloads, Tun::create already cleared what a previous process may
        // have set on a persistent interface.
        let tun_offloads = if want.tun {
            negotiate_tun(|flags| tun.set_offload(flags))
        } else {
            TunGrant {
                flags: 0,
                refused: Vec::new(),
            }
        };
        tun.set_mtu(config.mtu)?;
        let sockets = Arc::new(UdpSockets::bind(config.listen_port, config.fwmark, want)?);
        log_offloads(&config.name, want, &tun_offloads, &sockets);
        let stop = Stop::new().map_err(|source| DeviceError::Io {
            op: "eventfd",
            source,
        })?;
        let control = Control::new(Arc::clone(&sockets), config.fwmark);
        let shared = Arc::new(Shared::new(tun, stop, control.snapshot()));
        let mut device = Device {
            inner: Arc::new(Inner {
                shared: Arc::clone(&shared),
                control: Mutex::new(control),
                netns,
                offloads: want,
            }),
            threads: Vec::new(),
            uapi: Mutex::new(None),
        };
        // From here on, dropping `device` on an error stops what was started.
        {
            let mut ctl = lock(&device.inner.control);
            ctl.receivers = spawn_receivers(&shared, &sockets)?;
        }
        for q in 0..queues {
            let s = Arc::clone(&shared);
            device.threads.push(spawn_supervised(
                format!("wg-tun-{q}"),
                ThreadKind::Tun,
                &shared,
                || false,
                move || outbound::tun_loop(&s, q),
            )?);
        }
        let s = Arc::clone(&shared);
        device.threads.push(spawn_supervised(
            "wg-timers".into(),
            ThreadKind::Timers,
            &shared,
            || false,
            move || dataplane::timer_loop(&s),
        )?);
        if let Some(key) = config.private_key {
            device.set_private_key(Some(key))?;
        }
        tracing::info!(
            device = device.name(),
            port = device.listen_port(),
            queues,
            "device started"
        );
        Ok(device)
    }

    pub fn name(&self) -> &str {
        self.inner.shared.tun.name()
    }

    /// The interface index.
    pub fn ifindex(&self) -> u32 {
        self.inner.shared.tun.index()
    }

    /// The bound UDP port.
    pub fn listen_port(&self) -> u16 {
        lock(&self.inner.control).sockets.port()
    }

    pub fn public_key(&self) -> Option<PublicKey> {
        lock(&self.inner.control).model.public_key()
    }

    /// Sets (or with `None` removes) the private key. Sessions restart; peers stay.
    pub fn set_private_key(&self, key: Option<PrivateKey>) -> Result<(), DeviceError> {
        self.apply(&ConfigUpdate {
            private_key: Some(key),
            ..ConfigUpdate::default()
        })
    }

    /// Rebinds to `port` (0 = any free port) and returns the bound port. Fails, changing
    /// nothing, if the port is in use.
    pub fn set_listen_port(&self, port: u16) -> Result<u16, DeviceError> {
        self.apply(&ConfigUpdate {
            listen_port: Some(port),
            ..ConfigUpdate::default()
        })?;
        Ok(self.listen_port())
    }

    /// Sets the sockets' SO_MARK; 0 = off.
    pub fn set_fwmark(&self, mark: u32) -> Result<(), DeviceError> {
        self.apply(&ConfigUpdate {
            fwmark: Some(mark),
            ..ConfigUpdate::default()
        })
    }

    /// Adds the peer, or updates it in place to exactly `config`: an endpoint or allowed
    /// IPs change keeps the session; so does an unchanged preshared key.
    pub fn set_peer(&self, config: PeerConfig) -> Result<(), DeviceError> {
        self.check_not_own(&config.public_key)?;
        self.apply(&ConfigUpdate {
            peers: vec![PeerUpdate::from_config(config)],
            ..ConfigUpdate::default()
        })
    }

    /// Like [`Device::set_peer`] but only for an existing peer; false if there is none.
    pub fn update_peer(&self, config: PeerConfig) -> Result<bool, DeviceError> {
        let key = config.public_key;
        let mut existed = false;
        self.inner.transact(|model| {
            existed = model.peers.contains_key(&key);
            ConfigUpdate {
                peers: vec![PeerUpdate {
                    update_only: true,
                    ..PeerUpdate::from_config(config)
                }],
                ..ConfigUpdate::default()
            }
        })?;
        Ok(existed)
    }

    /// Removes the peer; false if there was none.
    pub fn remove_peer(&self, key: &PublicKey) -> Result<bool, DeviceError> {
        let ch = self.inner.apply(&ConfigUpdate {
            peers: vec![PeerUpdate::remove(*key)],
            ..ConfigUpdate::default()
        })?;
        Ok(ch.removed.contains(key))
    }

    /// Makes the peer set exactly `peers`, in one step. Peers that stay keep their
    /// sessions (like `wg syncconf`, unlike UAPI `replace_peers`).
    pub fn replace_peers(&self, peers: Vec<PeerConfig>) -> Result<(), DeviceError> {
        for p in &peers {
            self.check_not_own(&p.public_key)?;
        }
        let keep: HashSet<PublicKey> = peers.iter().map(|p| p.public_key).collect();
        self.inner.transact(|model| {
            let mut updates: Vec<PeerUpdate> = model
                .peers
                .keys()
                .filter(|k| !keep.contains(k))
                .map(|k| PeerUpdate::remove(*k))
                .collect();
            updates.extend(peers.into_iter().map(PeerUpdate::from_config));
            ConfigUpdate {
                peers: updates,
                ..ConfigUpdate::default()
            }
        })?;
        Ok(())
    }

    /// Applies a whole transaction atomically (what a UAPI `set=1` does): all of it, or on
    /// error nothing.
    pub fn apply(&self, update: &ConfigUpdate) -> Result<(), DeviceError> {
        crate::kernel_writes::record(
            crate::kernel_writes::Kind::WireguardPeer,
            update.peers.len() as u64,
        );
        self.inner.apply(update).map(|_| ())
    }

    /// Configuration and counters of every peer, as `wg show` reports them.
    pub fn status(&self) -> DeviceStatus {
        self.inner.status()
    }

    pub fn peer(&self, key: &PublicKey) -> Option<PeerStatus> {
        self.status()
            .peers
            .into_iter()
            .find(|p| &p.config.public_key == key)
    }

    /// One peer's counters, without building the whole status.
    pub fn peer_stats(&self, key: &PublicKey) -> Option<PeerStats> {
        let peer = lock(&self.inner.control).peers.get(key).cloned()?;
        let stats = lock(&peer.tunnel).stats();
        Some(stats)
    }

    /// Packets dropped, by reason, since start.
    pub fn drops(&self) -> &DropCounters {
        &self.inner.shared.drops
    }

    /// The packet threads' restarts since start, by kind (a thread is restarted when its
    /// loop panics or ends while the device runs).
    pub fn threads(&self) -> &ThreadHealth {
        &self.inner.shared.threads
    }

    /// True while the device runs and every packet thread is running: false from a
    /// thread's death until its restart, for good if one cannot come back, and once the
    /// device stopped. For readiness.
    pub fn threads_alive(&self) -> bool {
        !self.inner.shared.stop.is_set() && self.inner.shared.threads.all_running()
    }

    /// Makes the next loop of `kind` to run an iteration panic outside its per-packet
    /// guard, as a bug would: for tests of the restarts. Costs the loops one relaxed load
    /// per iteration.
    #[doc(hidden)]
    pub fn inject_fault(&self, kind: ThreadKind) {
        self.inner.shared.threads.inject(kind);
    }

    /// Serves the wg(8) UAPI on `<dir>/<name>.sock` (dir created 0755, socket 0600) and
    /// returns the socket path; `wg` looks in [`UAPI_DIR`]. With `close_if_removed`, the
    /// device closes when the socket file is deleted (the xplatform contract).
    pub fn serve_uapi(&self, dir: &Path, close_if_removed: bool) -> Result<PathBuf, DeviceError> {
        let server = UapiServer::start(Arc::clone(&self.inner), dir, close_if_removed)?;
        let path = server.path().to_path_buf();
        *lock(&self.uapi) = Some(server);
        Ok(path)
    }

    /// Asks the device to stop; [`Device::wait`] returns.
    pub fn close(&self) {
        self.inner.shared.close(CloseReason::Requested);
    }

    /// A handle that can close the device from another thread (e.g. a signal handler).
    pub fn closer(&self) -> Closer {
        Closer(Arc::clone(&self.inner.shared))
    }

    /// Blocks until the device stops: closed, interface deleted, or UAPI socket deleted.
    pub fn wait(&self) -> CloseReason {
        self.inner
            .shared
            .wait_closed(None)
            .unwrap_or(CloseReason::Requested)
    }

    pub fn wait_timeout(&self, timeout: Duration) -> Option<CloseReason> {
        self.inner.shared.wait_closed(Some(timeout))
    }

    fn check_not_own(&self, key: &PublicKey) -> Result<(), DeviceError> {
        if self.public_key().as_ref() == Some(key) {
            return Err(DeviceError::OwnPublicKey(key.short()));
        }
        Ok(())
    }
}

/// Closes a device from anywhere; see [`Device::closer`].
#[derive(Clone)]
pub struct Closer(Arc<Shared>);

impl Closer {
    pub fn close(&self) {
        self.0.close(CloseReason::Requested);
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // A persistent interface outlives us: leave it without offloads, so that
        // whatever attaches next (an older version, another tool) without a
        // virtio_net_hdr is not handed super-packets.
        let tun = &self.inner.shared.tun;
        if tun.vnet_hdr()
            && let Err(e) = tun.set_offload(0)
        {
            tracing::debug!(device = tun.name(), error = %e, "clearing TUN offloads failed");
        }
        self.inner.shared.close(CloseReason::Requested);
        // The UAPI server goes first so the socket disappears before the interface.
        drop(lock(&self.uapi).take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let receivers = std::mem::take(&mut lock(&self.inner.control).receivers);
        for t in receivers {
            let _ = t.join();
        }
    }
}

/// Says which offloads the device got, and why any it asked for is missing.
fn log_offloads(name: &str, want: Offloads, tun: &TunGrant, sockets: &UdpSockets) {
    if want == Offloads::NONE {
        tracing::info!(
            device = name,
            "offloads off (by configuration): one packet per TUN read and write, batched UDP I/O"
        );
        return;
    }
    for (flags, error) in &tun.refused {
        tracing::info!(device = name, flags = format!("{flags:#x}"), %error, "TUN offload set refused; trying fewer");
    }
    let udp = sockets.families();
    let gso = udp.iter().all(|f| sockets.gso(*f));
    let gro = udp.iter().all(|f| sockets.gro(*f));
    let missing = (want.tun && !tun.tso()) || (want.udp_gso && !gso) || (want.udp_gro && !gro);
    let level_msg = if missing {
        "some offloads are unavailable here: falling back to per-packet work for those"
    } else {
        "offloads on"
    };
    tracing::info!(
        device = name,
        tun_vnet_hdr = want.tun,
        tun_tso = tun.tso(),
        tun_uso = tun.uso(),
        udp_gso = gso,
        udp_gro = gro,
        "{level_msg}"
    );
}

/// The default directory of UAPI sockets, where wg(8) looks.
pub const UAPI_DIR: &str = "/var/run/wireguard";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_can_be_shared_across_threads_and_tasks() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Device>();
        send_sync::<Closer>();
    }

    #[test]
    fn a_new_config_asks_for_any_port_wireguard_gos_mtu_one_queue_per_core_and_every_offload() {
        let c = DeviceConfig::new("wg0");
        assert_eq!((c.listen_port, c.mtu, c.queues, c.fwmark), (0, 1420, 0, 0));
        assert!(c.private_key.is_none());
        assert!(!c.persist);
        // The offloads come from WGMESH_OFFLOADS (offloads.rs tests the values); the test
        // run does not set it, and unset means all of them.
        match std::env::var_os(crate::wireguard::offloads::ENV) {
            None => assert_eq!(
                c.offloads,
                Offloads {
                    tun: true,
                    udp_gso: true,
                    udp_gro: true
                }
            ),
            Some(v) => eprintln!("WGMESH_OFFLOADS={v:?} is set: the default is not checked"),
        }
    }
}
