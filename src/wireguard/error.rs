//! Error types of the WireGuard data plane, one enum per layer. Pure.

use std::io;
use std::path::PathBuf;

/// Opening or configuring the TUN interface failed.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error(
        "{path} is not available ({source}): load the tun module, or give the container the device"
    )]
    Unavailable {
        path: &'static str,
        source: io::Error,
    },
    #[error("invalid interface name {0:?}: 1 to 15 bytes, no '/', ':', '%' or whitespace")]
    InvalidName(String),
    #[error("cannot create TUN interface {name}: {source}")]
    Create { name: String, source: io::Error },
    #[error("TUN interface {name}: {op}: {source}")]
    Io {
        name: String,
        op: &'static str,
        source: io::Error,
    },
}

/// Starting, configuring or serving a device failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Tun(#[from] TunError),
    #[error("UDP port {port} is already in use")]
    PortInUse { port: u16 },
    #[error("cannot open a UDP socket on port {port}: {source}")]
    Bind { port: u16, source: io::Error },
    #[error("cannot set fwmark {mark} on the UDP sockets: {source}")]
    Fwmark { mark: u32, source: io::Error },
    #[error("peer {0} has this device's own public key")]
    OwnPublicKey(String),
    #[error("UAPI socket {}: {source}", path.display())]
    Uapi { path: PathBuf, source: io::Error },
    #[error("UAPI socket {} is in use by another running process", path.display())]
    UapiInUse { path: PathBuf },
    #[error("cannot start thread {name}: {source}")]
    Thread { name: String, source: io::Error },
    #[error("{op}: {source}")]
    Io { op: &'static str, source: io::Error },
}

impl DeviceError {
    /// The errno a UAPI client gets for this error (wireguard-go's conventions).
    pub fn errno(&self) -> i32 {
        match self {
            DeviceError::PortInUse { .. } | DeviceError::Fwmark { .. } => libc::EADDRINUSE,
            DeviceError::Bind { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            DeviceError::OwnPublicKey(_) => libc::EINVAL,
            _ => libc::EIO,
        }
    }
}

/// A UAPI request was refused. `errno` is positive (e.g. `EINVAL`); on the wire it is
/// sent negated, as wireguard-go does and as wg(8) expects (it sets `errno = -value`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (errno {errno})")]
pub struct UapiError {
    pub errno: i32,
    pub message: String,
}

impl UapiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        UapiError {
            errno: libc::EINVAL,
            message: message.into(),
        }
    }

    pub fn protocol(message: impl Into<String>) -> Self {
        UapiError {
            errno: libc::EPROTO,
            message: message.into(),
        }
    }
}

impl From<&DeviceError> for UapiError {
    fn from(e: &DeviceError) -> Self {
        UapiError {
            errno: e.errno(),
            message: e.to_string(),
        }
    }
}
