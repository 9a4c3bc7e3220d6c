//! Batched UDP I/O: `recvmmsg` (each message possibly a UDP GRO run of datagrams) and
//! `sendmmsg` (each message possibly a UDP GSO run). Adapter.
//!
//! The message headers point into buffers owned here; they are rebuilt right before
//! each call (a few dozen stores), so nothing self-referential outlives a call.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use super::batch::{Message, TxBatch};

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Room for one control message with an int (UDP_GRO) or u16 (UDP_SEGMENT), aligned.
const CONTROL_LEN: usize = 32;
/// The largest UDP payload: what one receive buffer must hold (a GRO run included).
pub const RECV_BUF: usize = 65536;

type Control = [u64; CONTROL_LEN / 8];

/// One received message.
#[derive(Debug)]
pub struct Received<'b> {
    pub data: &'b [u8],
    pub from: Option<SocketAddr>,
    /// The size of each datagram in `data` (a GRO run); 0 when `data` is one datagram.
    pub segment: usize,
    /// The datagram did not fit the buffer and was cut.
    pub truncated: bool,
}

/// Buffers for receiving up to `n` messages per call.
pub struct RecvBatch {
    bufs: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    control: Vec<Control>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    got: usize,
}

impl RecvBatch {
    pub fn new(n: usize) -> RecvBatch {
        let n = n.max(1);
        RecvBatch {
            bufs: vec![0; n * RECV_BUF],
            // SAFETY: all-zero is a valid sockaddr_storage, iovec and mmsghdr.
            names: vec![unsafe { zeroed() }; n],
            control: vec![[0; CONTROL_LEN / 8]; n],
            iovs: vec![unsafe { zeroed() }; n],
            hdrs: vec![unsafe { zeroed() }; n],
            got: 0,
        }
    }

    /// Receives what is queued on `fd`, without waiting (`WouldBlock` when nothing is).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.got = 0;
        let n = self.hdrs.len();
        let base = self.bufs.as_mut_ptr();
        for i in 0..n {
            self.iovs[i] = libc::iovec {
                // SAFETY: i * RECV_BUF + RECV_BUF <= bufs.len().
                iov_base: unsafe { base.add(i * RECV_BUF) }.cast(),
                iov_len: RECV_BUF,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.control[i].as_mut_ptr().cast();
            h.msg_controllen = CONTROL_LEN as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers of the stated sizes, owned by self
        // and not moved during the call.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.got = r as usize;
        Ok(self.got)
    }

    /// Message `i` of the last [`RecvBatch::recv`].
    pub fn get(&self, i: usize) -> Option<Received<'_>> {
        if i >= self.got {
            return None;
        }
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(RECV_BUF);
        Some(Received {
            data: &self.bufs[i * RECV_BUF..i * RECV_BUF + len],
            from: from_raw(&self.names[i], h.msg_hdr.msg_namelen),
            segment: gro_segment(&h.msg_hdr),
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        })
    }
}

/// The UDP_GRO segment size in a received message's control data (0 if absent).
fn gro_segment(h: &libc::msghdr) -> usize {
    // SAFETY: the CMSG macros walk the control buffer the kernel filled, bounded by
    // msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO {
                let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                return data.read_unaligned().max(0) as usize;
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    0
}

/// Headers for sending a batch's messages.
#[derive(Default)]
pub struct SendBatch {
    names: Vec<libc::sockaddr_storage>,
    control: Vec<Control>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl SendBatch {
    /// Sends `messages` (of `tx`) on `fd` with one `sendmmsg`; returns how many went out,
    /// from the first. An error is the first message's.
    pub fn send(&mut self, fd: RawFd, tx: &TxBatch, messages: &[Message]) -> io::Result<usize> {
        let n = messages.len();
        if n == 0 {
            return Ok(0);
        }
        if self.hdrs.len() < n {
            // SAFETY: all-zero is a valid sockaddr_storage, iovec and mmsghdr.
            self.names.resize(n, unsafe { zeroed() });
            self.control.resize(n, [0; CONTROL_LEN / 8]);
            self.iovs.resize(n, unsafe { zeroed() });
            self.hdrs.resize(n, unsafe { zeroed() });
        }
        for (i, m) in messages.iter().enumerate() {
            let bytes = tx.bytes(m.bytes.clone());
            self.iovs[i] = libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            };
            let namelen = to_raw(m.to, &mut self.names[i]);
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = namelen;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_flags = 0;
            if m.segment > 0 {
                h.msg_control = self.control[i].as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE of 2 bytes is within CONTROL_LEN; the header is
                // written inside the control buffer it points at.
                unsafe {
                    h.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    libc::CMSG_DATA(c)
                        .cast::<u16>()
                        .write_unaligned(m.segment.min(usize::from(u16::MAX)) as u16);
                }
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
        }
        // SAFETY: every header points at live buffers (the batch, names, control) that
        // outlive the call.
        let r = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }
}

fn to_raw(addr: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    // SAFETY: sockaddr_storage is large and aligned enough for either address type.
    unsafe {
        match addr {
            SocketAddr::V4(a) => {
                let s = (out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                s.write(libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                });
                size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(a) => {
                let s = (out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                s.write(libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo().to_be(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                });
                size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }
}

fn from_raw(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    let p = (s as *const libc::sockaddr_storage).cast::<u8>();
    match i32::from(s.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel wrote a sockaddr_in of at least this size.
            let a = unsafe { p.cast::<libc::sockaddr_in>().read_unaligned() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(a.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the kernel wrote a sockaddr_in6 of at least this size.
            let a = unsafe { p.cast::<libc::sockaddr_in6>().read_unaligned() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                u32::from_be(a.sin6_flowinfo),
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_round_trip_through_the_raw_form() {
        for a in ["192.0.2.1:51820", "[2001:db8::1]:443", "[fe80::1%3]:1"] {
            let addr: SocketAddr = a.parse().expect("address");
            // SAFETY: all-zero is a valid sockaddr_storage.
            let mut raw: libc::sockaddr_storage = unsafe { zeroed() };
            let len = to_raw(addr, &mut raw);
            assert_eq!(from_raw(&raw, len), Some(addr), "{a}");
            assert_eq!(from_raw(&raw, 2), None, "{a}: short");
        }
    }
}
