//! One emulated node (test infrastructure): a WireGuard identity with a UDP socket of
//! its own and a pod CIDR whose addresses answer pings and UDP echo. Its peers are the
//! real agents of the testbed, one boringtun `noise::Tunn` each (other emulated nodes
//! never talk to each other). It answers and starts handshakes (cookies included, as
//! boringtun does), and counts what it saw.
//!
//! Handling is synchronous and never blocks: datagrams go out with `try_send_to` (a full
//! socket buffer drops them, as a busy link would, and counts them).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use ipnet::Ipv4Net;
use tokio::net::UdpSocket;
use wgmesh::key::{PrivateKey, PublicKey};

use crate::packet;

/// Largest datagram an emulated node handles (the agent's MTU plus WireGuard's overhead
/// stays far below).
pub const MAX_DATAGRAM: usize = 4096;

const MSG_INIT: u8 = 1;
const MSG_RESPONSE: u8 = 2;
const MSG_COOKIE: u8 = 3;

/// What an emulated node saw and did since it started (or since [`Emulated::reset`]
/// for none: counters only grow).
#[derive(Debug, Default)]
pub struct Stats {
    /// Handshakes completed, as responder or initiator.
    pub handshakes: AtomicU64,
    /// Cookie replies received: the agent was under load and asked for proof of address.
    pub cookies: AtomicU64,
    /// Cookie replies sent (an [`Load::Overloaded`] node asking the agent for proof).
    pub cookies_sent: AtomicU64,
    /// Data packets decrypted (keepalives excluded).
    pub received: AtomicU64,
    /// Pod packets answered (echo requests, UDP echo).
    pub answered: AtomicU64,
    /// Echo replies to this node's own pings.
    pub replies: AtomicU64,
    /// Datagrams that could not be sent (socket buffer full).
    pub send_failed: AtomicU64,
    /// Handshake initiations from someone who is not one of its peers.
    pub strangers: AtomicU64,
    /// Datagrams boringtun refused (bad MAC, unknown session, replay...).
    pub errors: AtomicU64,
}

/// A snapshot of [`Stats`], summable over nodes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub handshakes: u64,
    pub cookies: u64,
    pub cookies_sent: u64,
    pub received: u64,
    pub answered: u64,
    pub replies: u64,
    pub send_failed: u64,
    pub strangers: u64,
    pub errors: u64,
}

impl std::ops::Add for Totals {
    type Output = Totals;
    fn add(self, o: Totals) -> Totals {
        Totals {
            handshakes: self.handshakes + o.handshakes,
            cookies: self.cookies + o.cookies,
            cookies_sent: self.cookies_sent + o.cookies_sent,
            received: self.received + o.received,
            answered: self.answered + o.answered,
            replies: self.replies + o.replies,
            send_failed: self.send_failed + o.send_failed,
            strangers: self.strangers + o.strangers,
            errors: self.errors + o.errors,
        }
    }
}

impl std::ops::Sub for Totals {
    type Output = Totals;
    fn sub(self, o: Totals) -> Totals {
        Totals {
            handshakes: self.handshakes - o.handshakes,
            cookies: self.cookies - o.cookies,
            cookies_sent: self.cookies_sent - o.cookies_sent,
            received: self.received - o.received,
            answered: self.answered - o.answered,
            replies: self.replies - o.replies,
            send_failed: self.send_failed - o.send_failed,
            strangers: self.strangers - o.strangers,
            errors: self.errors - o.errors,
        }
    }
}

impl Stats {
    pub fn totals(&self) -> Totals {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Totals {
            handshakes: get(&self.handshakes),
            cookies: get(&self.cookies),
            cookies_sent: get(&self.cookies_sent),
            received: get(&self.received),
            answered: get(&self.answered),
            replies: get(&self.replies),
            send_failed: get(&self.send_failed),
            strangers: get(&self.strangers),
            errors: get(&self.errors),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct State {
    /// One per real agent, in the order of [`Emulated::new`]'s `agents`.
    tunns: Vec<Tunn>,
    scratch: Box<[u8]>,
    /// When this node first got an echo reply to its own pings since
    /// [`Emulated::clear_reply`].
    first_reply: Option<Instant>,
}

/// A real agent an emulated node peers with.
#[derive(Debug, Clone, Copy)]
pub struct Agent {
    pub endpoint: SocketAddr,
    pub key: PublicKey,
}

/// How an emulated node answers handshakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Load {
    /// As any WireGuard node (boringtun's own per-peer limit of 10 a second).
    #[default]
    Normal,
    /// As a node under load: every handshake message must carry a cookie first (a
    /// cookie reply answers those that do not), so its peers go through the cookie path.
    Overloaded,
}

/// One emulated node; see the module documentation.
pub struct Emulated {
    pub index: usize,
    pub name: String,
    key: PrivateKey,
    /// Where its socket listens: the endpoint it publishes.
    pub endpoint: SocketAddrV4,
    pub pod_cidr: Ipv4Net,
    agents: Arc<[Agent]>,
    load: Load,
    socket: Arc<UdpSocket>,
    state: Mutex<State>,
    pub stats: Stats,
}

impl Emulated {
    /// A node with a fresh key, peering with `agents` (the first is the one its pod
    /// pings), on `socket` (bound to `endpoint`).
    pub fn new(
        index: usize,
        name: String,
        endpoint: SocketAddrV4,
        pod_cidr: Ipv4Net,
        agents: Arc<[Agent]>,
        load: Load,
        socket: Arc<UdpSocket>,
    ) -> Emulated {
        assert!(!agents.is_empty(), "an emulated node needs a real agent");
        let key = PrivateKey::generate().expect("the OS random source");
        let tunns = new_tunns(&key, &agents, index, load);
        Emulated {
            index,
            name,
            key,
            endpoint,
            pod_cidr,
            agents,
            load,
            socket,
            state: Mutex::new(State {
                tunns,
                scratch: vec![0u8; MAX_DATAGRAM].into_boxed_slice(),
                first_reply: None,
            }),
            stats: Stats::default(),
        }
    }

    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    pub fn socket(&self) -> &Arc<UdpSocket> {
        &self.socket
    }

    /// The address of its first pod (the one that sends pings).
    pub fn pod_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.pod_cidr.network()) + 1)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves usable tunnels for a test harness.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, datagram: &[u8], to: SocketAddr) {
        if self.socket.try_send_to(datagram, to).is_err() {
            bump(&self.stats.send_failed);
        }
    }

    /// Which tunnel a datagram is for: an initiation by its sender's static key, every
    /// other message by the receiver index (whose upper 24 bits are the tunnel's index).
    fn tunnel_of(&self, datagram: &[u8]) -> Option<usize> {
        match Tunn::parse_incoming_packet(datagram).ok()? {
            Packet::HandshakeInit(init) => {
                let secret = self.key.to_static_secret();
                let public = x25519::PublicKey::from(&secret);
                let half = parse_handshake_anon(&secret, &public, &init).ok()?;
                self.agents
                    .iter()
                    .position(|a| a.key.as_bytes() == &half.peer_static_public)
            }
            Packet::HandshakeResponse(p) => self.by_index(p.receiver_idx),
            Packet::PacketCookieReply(p) => self.by_index(p.receiver_idx),
            Packet::PacketData(p) => self.by_index(p.receiver_idx),
        }
    }

    fn by_index(&self, receiver: u32) -> Option<usize> {
        let k = ((receiver >> 8) as usize).checked_sub(tunnel_index(self.index, 0) as usize)?;
        (k < self.agents.len()).then_some(k)
    }

    /// Handles one datagram from `from`: handshakes answered, pod packets answered,
    /// queued packets flushed once a session exists.
    pub fn receive(&self, from: SocketAddr, datagram: &[u8]) {
        let in_type = datagram.first().copied().unwrap_or(0);
        let Some(k) = self.tunnel_of(datagram) else {
            if in_type == MSG_INIT {
                bump(&self.stats.strangers);
            } else {
                bump(&self.stats.errors);
            }
            return;
        };
        let mut out: Vec<Vec<u8>> = Vec::new();
        {
            let mut st = self.state();
            let State {
                tunns,
                scratch,
                first_reply,
            } = &mut *st;
            let tunn = &mut tunns[k];
            let mut plain = [0u8; MAX_DATAGRAM];
            let pod = self.pod_cidr;
            match tunn.decapsulate(Some(from.ip()), datagram, &mut plain) {
                TunnResult::WriteToNetwork(reply) => {
                    let out_type = reply.first().copied();
                    if (in_type == MSG_INIT && out_type == Some(MSG_RESPONSE))
                        || (in_type == MSG_RESPONSE && out_type != Some(MSG_COOKIE))
                    {
                        bump(&self.stats.handshakes);
                    }
                    if out_type == Some(MSG_COOKIE) {
                        bump(&self.stats.cookies_sent);
                    }
                    out.push(reply.to_vec());
                    flush(tunn, scratch, &mut out);
                }
                TunnResult::WriteToTunnelV4(inner, _) => {
                    bump(&self.stats.received);
                    if packet::echo_reply_to(inner, self.pod_ip()).is_some() {
                        bump(&self.stats.replies);
                        first_reply.get_or_insert_with(Instant::now);
                    } else if let Some(answer) = packet::answer(inner, |ip| pod.contains(&ip)) {
                        bump(&self.stats.answered);
                        if let TunnResult::WriteToNetwork(d) = tunn.encapsulate(&answer, scratch) {
                            out.push(d.to_vec());
                        }
                    }
                    flush(tunn, scratch, &mut out);
                }
                TunnResult::WriteToTunnelV6(..) => bump(&self.stats.received),
                TunnResult::Done => {
                    if in_type == MSG_COOKIE {
                        bump(&self.stats.cookies);
                    }
                }
                TunnResult::Err(_) => bump(&self.stats.errors),
            }
        }
        for d in &out {
            self.send(d, from);
        }
    }

    /// Runs boringtun's timers (retransmissions, keepalives, rekeys); call every 100-250 ms.
    pub fn tick(&self) {
        let mut out = Vec::new();
        {
            let mut st = self.state();
            let State { tunns, scratch, .. } = &mut *st;
            for (k, tunn) in tunns.iter_mut().enumerate() {
                if let TunnResult::WriteToNetwork(d) = tunn.update_timers(scratch) {
                    out.push((d.to_vec(), self.agents[k].endpoint));
                }
            }
        }
        for (d, to) in out {
            self.send(&d, to);
        }
    }

    /// Sends an echo request from its first pod to `dst` through the first agent (a
    /// handshake first, with the packet queued, when there is no session).
    pub fn ping(&self, dst: Ipv4Addr, seq: u16) {
        let request = packet::echo_request(self.pod_ip(), dst, self.index as u16, seq);
        let datagram = {
            let mut st = self.state();
            let State { tunns, scratch, .. } = &mut *st;
            match tunns[0].encapsulate(&request, scratch) {
                TunnResult::WriteToNetwork(d) => Some(d.to_vec()),
                _ => None,
            }
        };
        if let Some(d) = datagram {
            self.send(&d, self.agents[0].endpoint);
        }
    }

    /// When its pod first got an echo reply since [`Emulated::clear_reply`].
    pub fn first_reply(&self) -> Option<Instant> {
        self.state().first_reply
    }

    /// Forgets the first reply: the next one is timed.
    pub fn clear_reply(&self) {
        self.state().first_reply = None;
    }

    /// True while a session with the first agent is established.
    pub fn has_session(&self) -> bool {
        self.state().tunns[0].time_since_last_handshake().is_some()
    }

    /// Forgets every session, as a rebooted node does (same key).
    pub fn reset(&self) {
        let mut st = self.state();
        st.tunns = new_tunns(&self.key, &self.agents, self.index, self.load);
        st.first_reply = None;
    }
}

/// The tunnel index of node `index`'s tunnel to agent `k` (boringtun takes 24 bits and
/// puts them in the upper bits of its session indices). Each node is its own device, so
/// indices only need to differ between its own tunnels.
fn tunnel_index(index: usize, k: usize) -> u32 {
    (((index as u32) << 2) | k as u32) & 0x00ff_ffff
}

fn new_tunns(key: &PrivateKey, agents: &[Agent], index: usize, load: Load) -> Vec<Tunn> {
    assert!(
        agents.len() <= 4,
        "at most 4 real agents, not {}",
        agents.len()
    );
    let secret = key.to_static_secret();
    agents
        .iter()
        .enumerate()
        .map(|(k, agent)| {
            let limiter = match load {
                // Its own limiter, as a separate WireGuard device has.
                Load::Normal => None,
                Load::Overloaded => Some(Arc::new(RateLimiter::new(
                    &x25519::PublicKey::from(&secret),
                    0,
                ))),
            };
            Tunn::new(
                secret.clone(),
                x25519::PublicKey::from(*agent.key.as_bytes()),
                None,
                None,
                tunnel_index(index, k),
                limiter,
            )
        })
        .collect()
}

/// Sends what `Tunn` queued while it had no session (boringtun's "repeat with an empty
/// datagram until Done").
fn flush(tunn: &mut Tunn, scratch: &mut [u8], out: &mut Vec<Vec<u8>>) {
    while let TunnResult::WriteToNetwork(d) = tunn.decapsulate(None, &[], scratch) {
        out.push(d.to_vec());
    }
}
