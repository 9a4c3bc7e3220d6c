//! The TUN interface: `/dev/net/tun` opened once per queue with
//! `IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE`, so each worker thread reads its own queue.
//! Adapter.
//!
//! With offloads (`IFF_VNET_HDR`), every packet read or written is preceded by a
//! `virtio_net_hdr` (see `vnet`), and `TUNSETOFFLOAD` lets the kernel hand over TCP (and
//! UDP) super-packets of up to 64 KiB with partial checksums; writes may be super-packets
//! too, given as several buffers in one `writev`. Without offloads the queue carries
//! plain IP packets, and the offload flags are cleared explicitly: a persistent interface
//! may still have those a previous process set, and would then hand over super-packets
//! with no header to describe them.
//!
//! By default the interface lives as long as its queues are open: when the process
//! exits, it goes away. A persistent interface (TUNSETPERSIST) outlives the process, with
//! its addresses and routes; packets routed to it meanwhile are dropped by the kernel,
//! and the next process attaches new queues to it under the same name and index. Queue
//! descriptors are non-blocking; the packet loops wait in `poll` only when a queue is
//! empty.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::error::TunError;
use super::vnet::VNET_HDR_LEN;

const TUN_PATH: &str = "/dev/net/tun";
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

/// `struct ifreq`: a name and a 24-byte union (flags, MTU or index, all at offset 0).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> IfReq {
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req
    }

    fn set_short(&mut self, v: libc::c_short) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }

    fn set_int(&mut self, v: libc::c_int) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }

    fn int(&self) -> libc::c_int {
        libc::c_int::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }

    fn name(&self) -> String {
        CStr::from_bytes_until_nul(&self.name)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

fn ioctl(fd: RawFd, request: libc::c_ulong, req: &mut IfReq) -> io::Result<()> {
    // SAFETY: every request used here reads or writes a `struct ifreq`, which IfReq is.
    let r = unsafe { libc::ioctl(fd, request as _, req as *mut IfReq) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One queue of the interface: read packets the kernel routes to it, write packets to
/// deliver them to the kernel.
#[derive(Debug)]
pub struct TunQueue {
    fd: OwnedFd,
}

impl TunQueue {
    #[inline]
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for buf.len() bytes of writes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    #[inline]
    pub fn write(&self, packet: &[u8]) -> io::Result<usize> {
        // SAFETY: packet is valid for packet.len() bytes of reads.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one packet given in pieces (a virtio_net_hdr and head, then payloads).
    #[inline]
    pub fn write_vectored(&self, parts: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n = parts.len().min(libc::c_int::MAX as usize) as libc::c_int;
        // SAFETY: IoSlice is ABI-compatible with iovec, and every slice is valid for reads.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), parts.as_ptr().cast(), n) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A multi-queue TUN interface, and a socket for interface ioctls (MTU, index) opened in
/// the same network namespace.
#[derive(Debug)]
pub struct Tun {
    name: String,
    index: libc::c_int,
    queues: Vec<TunQueue>,
    control: OwnedFd,
    vnet_hdr: bool,
}

/// Checks what the kernel's `dev_valid_name` checks, and refuses `%` templates so the
/// name we were given is the name we get (the UAPI socket is named after it).
pub fn validate_name(name: &str) -> Result<(), TunError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == b'%' || b.is_ascii_whitespace() || b == 0);
    if ok {
        Ok(())
    } else {
        Err(TunError::InvalidName(name.to_string()))
    }
}

impl Tun {
    /// Creates interface `name` with `queues` queues (at least one), or attaches new
    /// queues to an existing persistent multi-queue TUN of that name. With `persist`,
    /// the interface stays when the queues close. With `vnet_hdr`, packets carry a
    /// virtio_net_hdr (offloads are then set with [`Tun::set_offload`]).
    pub fn create(
        name: &str,
        queues: usize,
        persist: bool,
        vnet_hdr: bool,
    ) -> Result<Tun, TunError> {
        validate_name(name)?;
        let io_err = |op, source| TunError::Io {
            name: name.to_string(),
            op,
            source,
        };
        let mut opened = Vec::new();
        let mut actual = name.to_string();
        for _ in 0..queues.max(1) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(TUN_PATH)
                .map_err(|source| TunError::Unavailable {
                    path: TUN_PATH,
                    source,
                })?;
            let mut req = IfReq::new(&actual);
            let vnet = if vnet_hdr { IFF_VNET_HDR } else { 0 };
            req.set_short(IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE | vnet);
            ioctl(file.as_raw_fd(), TUNSETIFF, &mut req).map_err(|source| TunError::Create {
                name: name.to_string(),
                source,
            })?;
            actual = req.name();
            if !vnet_hdr && opened.is_empty() {
                // A persistent interface keeps the offloads a previous process set: clear
                // them before any packet can come, or the kernel would hand this header-less
                // queue super-packets.
                if let Err(e) = set_offload(file.as_raw_fd(), 0) {
                    tracing::debug!(error = %e, "clearing TUN offloads failed");
                }
            }
            if persist && opened.is_empty() {
                // SAFETY: TUNSETPERSIST takes an integer argument, not a pointer.
                let r = unsafe {
                    libc::ioctl(file.as_raw_fd(), TUNSETPERSIST as _, 1 as libc::c_ulong)
                };
                if r < 0 {
                    return Err(io_err("TUNSETPERSIST", io::Error::last_os_error()));
                }
            }
            if vnet_hdr && opened.is_empty() {
                // The header size is the device's, and may have been changed by another
                // process on a persistent interface: ask for the 10-byte header.
                let size = VNET_HDR_LEN as libc::c_int;
                // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer.
                let r = unsafe {
                    libc::ioctl(
                        file.as_raw_fd(),
                        TUNSETVNETHDRSZ as _,
                        &size as *const libc::c_int,
                    )
                };
                if r < 0 {
                    return Err(io_err("TUNSETVNETHDRSZ", io::Error::last_os_error()));
                }
            }
            opened.push(TunQueue { fd: file.into() });
        }
        // SAFETY: socket() has no memory preconditions; the result is checked.
        let control =
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if control < 0 {
            return Err(io_err("control socket", io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor we own.
        let control = unsafe { OwnedFd::from_raw_fd(control) };
        let mut req = IfReq::new(&actual);
        ioctl(control.as_raw_fd(), libc::SIOCGIFINDEX as _, &mut req)
            .map_err(|e| io_err("SIOCGIFINDEX", e))?;
        Ok(Tun {
            name: actual,
            index: req.int(),
            queues: opened,
            control,
            vnet_hdr,
        })
    }

    /// True when packets carry a virtio_net_hdr.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// TUNSETOFFLOAD: which offloads (`TUN_F_*`) the kernel may use towards this
    /// interface. Device-wide; 0 clears them.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        let q = self
            .queues
            .first()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        set_offload(q.raw_fd(), flags)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn index(&self) -> u32 {
        self.index as u32
    }

    pub fn queues(&self) -> &[TunQueue] {
        &self.queues
    }

    pub fn mtu(&self) -> io::Result<u32> {
        let mut req = IfReq::new(&self.name);
        ioctl(self.control.as_raw_fd(), libc::SIOCGIFMTU as _, &mut req)?;
        Ok(req.int().max(0) as u32)
    }

    pub fn set_mtu(&self, mtu: u32) -> Result<(), TunError> {
        let mut req = IfReq::new(&self.name);
        req.set_int(mtu.min(i32::MAX as u32) as libc::c_int);
        ioctl(self.control.as_raw_fd(), libc::SIOCSIFMTU as _, &mut req).map_err(|source| {
            TunError::Io {
                name: self.name.clone(),
                op: "set MTU",
                source,
            }
        })
    }

    /// False once the interface is gone (deleted, or its namespace with it). Looked up by
    /// index, so a rename does not count as a removal.
    pub fn exists(&self) -> bool {
        let mut req = IfReq::new("");
        req.set_int(self.index);
        match ioctl(self.control.as_raw_fd(), libc::SIOCGIFNAME as _, &mut req) {
            Ok(()) => true,
            Err(e) => e.raw_os_error() != Some(libc::ENODEV),
        }
    }
}

/// True for the errors a queue returns once its interface was deleted.
pub fn is_gone(e: &io::Error) -> bool {
    super::sys::errno_is(e, &[libc::EBADFD, libc::ENXIO, libc::ENODEV])
}

/// TUNSETOFFLOAD on one queue's descriptor (the setting is the device's).
fn set_offload(fd: RawFd, flags: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes an integer argument, not a pointer.
    let r = unsafe { libc::ioctl(fd, TUNSETOFFLOAD as _, flags as libc::c_ulong) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_follow_the_kernels_rules() {
        for ok in ["wg0", "wgmesh", "a", "fifteen-chars15", "wg.mesh_0-x"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "sixteen-chars-16",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "wg%d",
            "a\tb",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
