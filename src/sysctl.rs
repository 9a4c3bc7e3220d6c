//! Kernel parameters under /proc/sys. Adapter.
//!
//! Network sysctls are per network namespace: they act on the namespace of the thread
//! that opens the file (see [`crate::netlink::NetNs::write_sysctl`]).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("sysctl {key}: {source}")]
pub struct Error {
    pub key: String,
    #[source]
    pub source: std::io::Error,
}

fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// Reads a sysctl such as `net.ipv4.ip_forward`, trimmed.
pub fn read(key: &str) -> Result<String, Error> {
    std::fs::read_to_string(path(key))
        .map(|s| s.trim().to_string())
        .map_err(|source| Error {
            key: key.to_string(),
            source,
        })
}

/// Sets a sysctl, writing only when it differs (a read is cheaper than a write, and a
/// read-only /proc/sys with the right value already set is not an error).
pub fn write(key: &str, value: &str) -> Result<(), Error> {
    if read(key).is_ok_and(|v| v == value) {
        return Ok(());
    }
    crate::kernel_writes::record(crate::kernel_writes::Kind::Sysctl, 1);
    std::fs::write(path(key), value).map_err(|source| Error {
        key: key.to_string(),
        source,
    })
}
