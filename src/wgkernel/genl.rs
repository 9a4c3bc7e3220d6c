//! A blocking generic-netlink socket for the "wireguard" family: resolves the family id
//! once, then sends requests and collects their answers (acks, errors, dump parts).
//! Adapter. The socket lives in the network namespace of the thread that opened it.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_generic::GenlMessage;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_wireguard::WireguardMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

use super::Error;

/// The generic netlink family of the kernel's WireGuard.
pub const FAMILY: &str = "wireguard";
/// Room for one answer: the kernel sizes dump parts from the reader's buffer, capped
/// well below this.
const RECV_BUFFER: usize = 64 * 1024;

/// An open socket with the family resolved.
pub struct Genl {
    socket: Socket,
    family: u16,
    seq: u32,
}

impl std::fmt::Debug for Genl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Genl")
            .field("family", &self.family)
            .finish()
    }
}

impl Genl {
    /// Opens a socket and looks the WireGuard family up. Asking for an unknown family
    /// makes the kernel try to load its module; [`Error::NoKernelSupport`] when that
    /// fails too.
    pub fn open() -> Result<Self, Error> {
        let mut socket = Socket::new(NETLINK_GENERIC).map_err(Error::Socket)?;
        socket.bind_auto().map_err(Error::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(Error::Socket)?;
        let mut genl = Genl {
            socket,
            family: 0,
            seq: 0,
        };
        genl.family = genl.resolve(FAMILY)?;
        Ok(genl)
    }

    fn resolve(&mut self, name: &str) -> Result<u16, Error> {
        let request = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(name.to_string())],
        });
        let answers = match self.exchange(request, NLM_F_REQUEST | NLM_F_ACK) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(Error::NoKernelSupport);
            }
            other => other.map_err(|source| Error::Kernel {
                op: "look up the generic netlink family",
                interface: name.to_string(),
                source,
            })?,
        };
        answers
            .iter()
            .flat_map(|m: &GenlCtrl| m.nlas.iter())
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or(Error::Decode {
                op: "look up the generic netlink family",
                detail: "no family id in the answer".into(),
            })
    }

    /// Sends one `WG_CMD_SET_DEVICE` message and waits for its ack.
    pub fn set(&mut self, message: WireguardMessage) -> io::Result<()> {
        let mut request = GenlMessage::from_payload(message);
        request.set_resolved_family_id(self.family);
        self.exchange::<WireguardMessage>(request, NLM_F_REQUEST | NLM_F_ACK)
            .map(|_| ())
    }

    /// Sends a `WG_CMD_GET_DEVICE` dump request and returns every part of the answer.
    pub fn dump(&mut self, message: WireguardMessage) -> io::Result<Vec<WireguardMessage>> {
        let mut request = GenlMessage::from_payload(message);
        request.set_resolved_family_id(self.family);
        self.exchange(request, NLM_F_REQUEST | NLM_F_DUMP)
    }

    /// Sends `request` with `flags` and reads until its ack, error or end of dump;
    /// returns the payloads received on the way.
    fn exchange<F>(&mut self, request: GenlMessage<F>, flags: u16) -> io::Result<Vec<F>>
    where
        F: netlink_packet_generic::GenlFamily
            + netlink_packet_core::Emitable
            + netlink_packet_core::ParseableParametrized<[u8], netlink_packet_generic::GenlHeader>
            + std::fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
        msg.finalize();
        let mut out = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut out);
        self.socket.send(&out, 0)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answers = Vec::new();
        let mut buf = vec![0u8; RECV_BUFFER];
        loop {
            let n = self.socket.recv(&mut &mut buf[..], 0)?;
            let mut data = &buf[..n];
            while !data.is_empty() {
                let len = NetlinkBuffer::new_checked(data)
                    .map_err(|e| invalid(e.to_string()))?
                    .length() as usize;
                let len = len.min(data.len());
                let msg = NetlinkMessage::<GenlMessage<F>>::deserialize(&data[..len])
                    .map_err(|e| invalid(e.to_string()))?;
                data = &data[align4(len).min(data.len())..];
                if msg.header.sequence_number != seq {
                    // An answer to an earlier request that gave up: not ours.
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => answers.push(m.payload),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            // The ack.
                            None => Ok(answers),
                            Some(_) => Err(e.to_io()),
                        };
                    }
                    NetlinkPayload::Done(_) if dump => return Ok(answers),
                    _ => {}
                }
            }
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn invalid(detail: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, detail)
}
