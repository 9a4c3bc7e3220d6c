//! Names of the links the plugin creates. Pure.

use sha2::{Digest, Sha256};

/// The host end of a pod's veth: `wgm` + 11 hex digits of a hash of the attachment
/// (container id and interface name), so DEL and GC can find it from the attachment
/// alone, even after the pod's namespace is gone. 14 bytes, within IFNAMSIZ.
pub fn host_veth(container_id: &str, ifname: &str) -> String {
    let digest = Sha256::new()
        .chain_update(container_id.as_bytes())
        .chain_update(b"/")
        .chain_update(ifname.as_bytes())
        .finalize();
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("wgm{}", &hex[..11])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_short_and_distinct() {
        let a = host_veth("0123456789abcdef", "eth0");
        assert_eq!(a, host_veth("0123456789abcdef", "eth0"));
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("wgm"));
        assert_ne!(a, host_veth("0123456789abcdef", "eth1"));
        assert_ne!(a, host_veth("0123456789abcdee", "eth0"));
    }
}
