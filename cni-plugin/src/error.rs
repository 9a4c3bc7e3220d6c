//! The plugin's errors and their CNI error codes (CNI SPEC.md, "Error").
//!
//! Codes 1–99 are the spec's; 100+ are wgmesh-cni's own:
//!
//! | code | meaning |
//! |------|---------|
//! | 100  | a kernel operation (netlink, sysctl) failed |
//! | 101  | CNI_IFNAME already exists in the container |
//! | 102  | the pod subnet has no free address |
//! | 103  | the IPAM store could not be read or written |
//! | 104  | CHECK: the container's network drifted from prevResult |

use rscni_plugin::error::Error as CniError;
use wgmesh::cni::ConfigError;

use crate::ipam;

pub const CODE_KERNEL: u32 = 100;
pub const CODE_IFNAME_EXISTS: u32 = 101;
pub const CODE_EXHAUSTED: u32 = 102;
pub const CODE_IPAM_STORE: u32 = 103;
pub const CODE_DRIFT: u32 = 104;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid CNI_NETNS: {0}")]
    Netns(#[source] wgmesh::netlink::Error),
    #[error("interface {ifname:?} already exists in the container")]
    InterfaceExists { ifname: String },
    #[error(transparent)]
    Ipam(#[from] ipam::Error),
    #[error(transparent)]
    Kernel(#[from] wgmesh::netlink::Error),
    #[error(transparent)]
    Sysctl(#[from] wgmesh::sysctl::Error),
    #[error("CHECK needs prevResult in the configuration")]
    NoPrevResult,
    #[error("container network is not as ADD left it: {0}")]
    Drift(String),
    #[error("plugin cannot serve ADD: {0}")]
    Unavailable(String),
    #[error(
        "this node's wgmesh guard is not in place ({0}), so a pod's traffic to other \
         nodes could leave unencrypted; the wgmesh agent installs the guard when it starts: \
         is it running on this node? (retried by the runtime)"
    )]
    GuardMissing(#[source] wgmesh::dataplane::guard::Missing),
}

impl Error {
    /// The CNI error code for this error.
    pub fn code(&self) -> u32 {
        match self {
            Error::Config(e) if e.is_decode() => 6,
            Error::Config(_) | Error::NoPrevResult => 7,
            Error::Netns(_) => 4,
            Error::InterfaceExists { .. } => CODE_IFNAME_EXISTS,
            Error::Ipam(ipam::Error::LockTimeout { .. }) | Error::GuardMissing(_) => 11,
            Error::Ipam(ipam::Error::Exhausted { .. }) => CODE_EXHAUSTED,
            Error::Ipam(ipam::Error::Io { .. }) => CODE_IPAM_STORE,
            Error::Kernel(_) | Error::Sysctl(_) => CODE_KERNEL,
            Error::Drift(_) => CODE_DRIFT,
            Error::Unavailable(_) => 50,
        }
    }
}

/// Full message with every cause, e.g. "netlink create veth a <-> b: File exists".
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_msg = s.to_string();
        if !msg.contains(&s_msg) {
            msg.push_str(": ");
            msg.push_str(&s_msg);
        }
        cur = s.source();
    }
    msg
}

impl From<Error> for CniError {
    fn from(e: Error) -> Self {
        let details = chain(&e);
        match e.code() {
            4 => CniError::InvalidEnvValue(details),
            6 => CniError::FailedToDecode(details),
            7 => CniError::InvalidNetworkConfig(details),
            11 => CniError::TryAgainLater(details),
            50 => CniError::PluginNotAvailable(details),
            code => {
                let msg = match code {
                    CODE_KERNEL => "kernel operation failed",
                    CODE_IFNAME_EXISTS => "interface already exists",
                    CODE_EXHAUSTED => "no free address",
                    CODE_IPAM_STORE => "IPAM store failure",
                    _ => "container network drifted",
                };
                CniError::Custom(code, msg.to_string(), details)
            }
        }
    }
}
