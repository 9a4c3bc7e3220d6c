//! The connection tracking table of one network namespace (test infrastructure): how
//! many entries it holds, and flushing it as `conntrack -F` does (that tool is not
//! installed; the one netlink message it sends is small enough to send here).
//!
//! A NAT keeps its mappings there: flushing is what a restarted NAT device or a changed
//! NAT rule starts from.

use std::io;
use std::path::Path;

use crate::exec;

/// `NETLINK_NETFILTER` (linux/netlink.h).
const NETLINK_NETFILTER: libc::c_int = 12;
/// `(NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE` (linux/netfilter/nfnetlink.h,
/// nfnetlink_conntrack.h): a delete without a tuple deletes every entry.
const CT_DELETE_ALL: u16 = (1 << 8) | 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;

/// Entries in the conntrack table of the namespace at `netns`.
pub(crate) fn count(netns: &Path) -> u64 {
    let what = format!("the conntrack count of {}", netns.display());
    exec::in_netns_thread(netns, move || {
        // Per network namespace, like all of /proc/sys/net.
        std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
            .map(|s| s.trim().parse().unwrap_or(0))
            // No conntrack module loaded: no entries.
            .unwrap_or_else(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    0
                } else {
                    panic!("cannot read {what}: {e}")
                }
            })
    })
}

/// Deletes every entry of the conntrack table of the namespace at `netns`.
pub(crate) fn flush(netns: &Path) {
    let place = netns.display().to_string();
    exec::in_netns_thread(netns, flush_here)
        .unwrap_or_else(|e| panic!("cannot flush the conntrack table of {place}: {e}"));
}

/// The request: an nlmsghdr and an nfgenmsg for every family (AF_UNSPEC).
fn flush_request() -> Vec<u8> {
    let mut msg = Vec::with_capacity(20);
    msg.extend_from_slice(&20u32.to_ne_bytes());
    msg.extend_from_slice(&CT_DELETE_ALL.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]); // family, version 0, res_id
    msg
}

/// The errno of a netlink acknowledgement (0: success), if `reply` is one.
fn ack_errno(reply: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if kind != NLMSG_ERROR {
        return None;
    }
    let error = i32::from_ne_bytes(reply.get(16..20)?.try_into().ok()?);
    Some(-error)
}

fn flush_here() -> io::Result<()> {
    // SAFETY: plain syscalls on a socket this function owns and closes; the buffers are
    // locals of the stated lengths.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let request = flush_request();
        let mut reply = [0u8; 256];
        let result = if libc::send(fd, request.as_ptr().cast(), request.len(), 0) < 0 {
            Err(io::Error::last_os_error())
        } else {
            let n = libc::recv(fd, reply.as_mut_ptr().cast(), reply.len(), 0);
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                match ack_errno(&reply[..n as usize]) {
                    Some(0) => Ok(()),
                    Some(errno) => Err(io::Error::from_raw_os_error(errno)),
                    None => Err(io::Error::other("no acknowledgement from ctnetlink")),
                }
            }
        };
        libc::close(fd);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flush_request_is_a_ctnetlink_delete_without_a_tuple() {
        let msg = flush_request();
        assert_eq!(msg.len(), 20);
        assert_eq!(u32::from_ne_bytes(msg[0..4].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes(msg[4..6].try_into().unwrap()), 0x0102);
        assert_eq!(u16::from_ne_bytes(msg[6..8].try_into().unwrap()), 5);
        assert_eq!(&msg[16..], &[0, 0, 0, 0]);
    }

    #[test]
    fn acknowledgements_carry_the_negated_errno() {
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(ack_errno(&ack), Some(0));
        ack[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(ack_errno(&ack), Some(libc::EPERM));
        ack[4..6].copy_from_slice(&0x0102u16.to_ne_bytes());
        assert_eq!(ack_errno(&ack), None);
    }
}
