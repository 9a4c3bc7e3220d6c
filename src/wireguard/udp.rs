//! The UDP sockets of a device: one per address family on the listen port (the IPv6 one
//! `IPV6_V6ONLY`), with the fwmark applied. Adapter.
//!
//! Sockets stay blocking so a full send buffer pushes back on the sender instead of
//! dropping; receives use `MSG_DONTWAIT` and the loop waits in `poll` when idle.
//!
//! Offloads, per socket and only when asked for: `UDP_GRO` is switched on (the kernel
//! then hands a run of datagrams from one sender over as one buffer), and `UDP_SEGMENT`
//! support is probed (a run of equal-sized datagrams goes out in one send). GSO can be
//! switched off later, when a send shows the route cannot do it (`EIO`).

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::error::DeviceError;
use super::offloads::Offloads;

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;

/// Socket buffers big enough for bursts at a few Gbit/s (the default is ~200 KiB).
const SOCKET_BUFFER: usize = 4 << 20;
/// Attempts at finding a port free in both families when any port will do.
const RANDOM_PORT_ATTEMPTS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4 = 0,
    V6 = 1,
}

impl Family {
    pub fn of(addr: &SocketAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "udp4",
            Family::V6 => "udp6",
        }
    }
}

/// The bound sockets. Closed (for a rebind) with [`UdpSockets::close`], which wakes the
/// receive loops so they exit.
#[derive(Debug)]
pub struct UdpSockets {
    v4: Option<Socket>,
    v6: Option<Socket>,
    port: u16,
    closed: AtomicBool,
    /// UDP GSO usable, per family (v4, v6).
    gso: [AtomicBool; 2],
    /// UDP GRO on, per family.
    gro: [bool; 2],
}

impl UdpSockets {
    /// Binds `port` in both families (0 = any port free in both), with the UDP offloads
    /// of `offloads` the kernel has.
    pub fn bind(port: u16, fwmark: u32, offloads: Offloads) -> Result<UdpSockets, DeviceError> {
        let mut s = Self::bind_port(port, fwmark)?;
        for (i, socket) in [&s.v4, &s.v6].into_iter().enumerate() {
            if let Some(socket) = socket {
                let gso = offloads.udp_gso && probe_gso(socket);
                s.gso[i].store(gso, Ordering::Relaxed);
                s.gro[i] = offloads.udp_gro && enable_gro(socket);
            }
        }
        Ok(s)
    }

    fn bind_port(port: u16, fwmark: u32) -> Result<UdpSockets, DeviceError> {
        if port != 0 {
            return Self::bind_exact(port, fwmark);
        }
        let mut last = None;
        for _ in 0..RANDOM_PORT_ATTEMPTS {
            let v4 = open(Family::V4, 0).map_err(|source| DeviceError::Bind { port: 0, source })?;
            let chosen = local_port(&v4)?;
            match open(Family::V6, chosen) {
                Ok(v6) => return Self::finish(Some(v4), Some(v6), chosen, fwmark),
                Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => last = Some(e),
                Err(e) if v6_unsupported(&e) => {
                    return Self::finish(Some(v4), None, chosen, fwmark);
                }
                Err(source) => {
                    return Err(DeviceError::Bind {
                        port: chosen,
                        source,
                    });
                }
            }
        }
        Err(DeviceError::Bind {
            port: 0,
            source: last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EADDRINUSE)),
        })
    }

    fn bind_exact(port: u16, fwmark: u32) -> Result<UdpSockets, DeviceError> {
        let map = |source: io::Error| {
            if source.raw_os_error() == Some(libc::EADDRINUSE) {
                DeviceError::PortInUse { port }
            } else {
                DeviceError::Bind { port, source }
            }
        };
        let v4 = open(Family::V4, port).map_err(map)?;
        let v6 = match open(Family::V6, port) {
            Ok(s) => Some(s),
            Err(e) if v6_unsupported(&e) => None,
            Err(e) => return Err(map(e)),
        };
        Self::finish(Some(v4), v6, port, fwmark)
    }

    fn finish(
        v4: Option<Socket>,
        v6: Option<Socket>,
        port: u16,
        fwmark: u32,
    ) -> Result<UdpSockets, DeviceError> {
        let s = UdpSockets {
            v4,
            v6,
            port,
            closed: AtomicBool::new(false),
            gso: [AtomicBool::new(false), AtomicBool::new(false)],
            gro: [false, false],
        };
        if fwmark != 0 {
            s.set_fwmark(fwmark)?;
        }
        Ok(s)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn get(&self, family: Family) -> Option<&Socket> {
        match family {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        }
    }

    /// True while UDP GSO is usable on the family's socket.
    #[inline]
    pub fn gso(&self, family: Family) -> bool {
        self.gso[family as usize].load(Ordering::Relaxed)
    }

    /// Stops using UDP GSO on the family's socket (a send failed with `EIO`: the route's
    /// device cannot checksum or segment). Returns true the first time.
    pub fn disable_gso(&self, family: Family) -> bool {
        self.gso[family as usize].swap(false, Ordering::Relaxed)
    }

    /// True when UDP GRO is on for the family's socket.
    pub fn gro(&self, family: Family) -> bool {
        self.gro[family as usize]
    }

    pub fn families(&self) -> Vec<Family> {
        [Family::V4, Family::V6]
            .into_iter()
            .filter(|f| self.get(*f).is_some())
            .collect()
    }

    /// Sets SO_MARK (0 clears it) so routing rules can keep tunnel traffic out of the tunnel.
    pub fn set_fwmark(&self, mark: u32) -> Result<(), DeviceError> {
        for s in self.v4.iter().chain(self.v6.iter()) {
            s.set_mark(mark)
                .map_err(|source| DeviceError::Fwmark { mark, source })?;
        }
        Ok(())
    }

    #[inline]
    pub fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<()> {
        let socket = match to {
            SocketAddr::V4(_) => self.v4.as_ref(),
            SocketAddr::V6(_) => self.v6.as_ref(),
        };
        let socket = socket.ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))?;
        socket.send_to(datagram, &SockAddr::from(to)).map(|_| ())
    }

    /// Marks the sockets closed, wakes receivers blocked in `poll`, and releases the port
    /// at once: the descriptors are pointed at /dev/null, so a thread still holding an old
    /// snapshot gets an error (a counted drop) instead of keeping the port bound.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let null = std::fs::File::open("/dev/null");
        for s in self.v4.iter().chain(self.v6.iter()) {
            let _ = s.shutdown(std::net::Shutdown::Both);
            if let Ok(null) = &null {
                // SAFETY: replaces a descriptor we own with another open one; concurrent
                // syscalls on the old socket keep their own reference until they return.
                unsafe {
                    libc::dup2(null.as_raw_fd(), s.as_raw_fd());
                }
            }
        }
    }

    #[inline]
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// Receives one datagram without blocking (`WouldBlock` when there is none).
#[inline]
pub fn recv_from(socket: &Socket, buf: &mut [u8]) -> io::Result<(usize, Option<SocketAddr>)> {
    // SAFETY: [u8] and [MaybeUninit<u8>] have the same layout, and the kernel only writes
    // initialized bytes into the buffer.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    let (n, from) = socket.recv_from_with_flags(uninit, libc::MSG_DONTWAIT)?;
    Ok((n, from.as_socket()))
}

pub fn raw_fd(socket: &Socket) -> RawFd {
    socket.as_raw_fd()
}

fn open(family: Family, port: u16) -> io::Result<Socket> {
    let (domain, addr) = match family {
        Family::V4 => (
            Domain::IPV4,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        ),
        Family::V6 => (
            Domain::IPV6,
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
        ),
    };
    let s = Socket::new(domain, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    if family == Family::V6 {
        s.set_only_v6(true)?;
    }
    set_buffers(&s);
    s.bind(&SockAddr::from(addr))?;
    Ok(s)
}

/// Bigger buffers, forced past `rmem_max` when we may (root); best effort either way.
fn set_buffers(s: &Socket) {
    let size = SOCKET_BUFFER as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        // SAFETY: setsockopt reads one c_int from a live local.
        let forced = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                force,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if forced != 0 {
            // SAFETY: as above.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    plain,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
}

/// True if the kernel knows UDP_SEGMENT (Linux 4.18+): reading it succeeds.
fn probe_gso(s: &Socket) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into a live c_int.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            SOL_UDP,
            UDP_SEGMENT,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0
}

/// Switches UDP_GRO on (Linux 5.0+); false if the kernel refuses.
fn enable_gro(s: &Socket) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads one c_int from a live local.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            SOL_UDP,
            UDP_GRO,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

fn local_port(s: &Socket) -> Result<u16, DeviceError> {
    s.local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.port())
        .ok_or_else(|| DeviceError::Io {
            op: "read the bound port",
            source: io::Error::from_raw_os_error(libc::EINVAL),
        })
}

fn v6_unsupported(e: &io::Error) -> bool {
    super::sys::errno_is(
        e,
        &[
            libc::EAFNOSUPPORT,
            libc::EADDRNOTAVAIL,
            libc::EPROTONOSUPPORT,
        ],
    )
}
