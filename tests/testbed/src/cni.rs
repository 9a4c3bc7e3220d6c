//! Calling `wgmesh-cni` the way a container runtime does (test infrastructure).
//!
//! libcni reads the node's conflist, hands each plugin its entry with the list's `name`
//! and `cniVersion` injected, and execs the plugin binary with the `CNI_*` environment
//! and that entry on stdin. The testbed does the same inside the node's namespaces, with
//! the conflist the node's agent wrote: if the agent writes a config the plugin rejects,
//! pod creation fails here as it would on a real node.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Output;

use serde_json::Value;
use wgmesh_testkit::workspace_bin;

use crate::exec;
use crate::holder::Holder;

/// The plugin entry a runtime hands `wgmesh-cni`: `plugins[0]` of `conflist` with the
/// list's `name` and `cniVersion`.
pub fn plugin_config(conflist: &str) -> Result<Value, String> {
    let list: Value =
        serde_json::from_str(conflist).map_err(|e| format!("the conflist is not JSON: {e}"))?;
    let mut entry = list["plugins"]
        .get(0)
        .cloned()
        .ok_or("the conflist has no plugins")?;
    if entry["type"] != "wgmesh-cni" {
        return Err(format!(
            "the first plugin is {}, not wgmesh-cni",
            entry["type"]
        ));
    }
    for key in ["name", "cniVersion"] {
        let value = list
            .get(key)
            .filter(|v| v.is_string())
            .ok_or(format!("the conflist has no {key}"))?;
        entry[key] = value.clone();
    }
    Ok(entry)
}

/// One plugin invocation: `CNI_COMMAND` and the attachment it is about.
#[derive(Debug, Clone, Copy)]
pub struct Invocation<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    /// `CNI_NETNS`, a path inside the node (`/run/netns/<pod>`).
    pub netns: &'a str,
    pub ifname: &'a str,
}

/// Execs `wgmesh-cni` inside the node held by `holder` with a runtime's environment
/// (nothing inherited but PATH) and `config` on stdin.
pub(crate) fn invoke(holder: &Holder, call: Invocation<'_>, config: &Value) -> Output {
    let plugin = workspace_bin("wgmesh-cni");
    let plugin_dir = plugin
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let mut cmd = holder.command(&plugin);
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_PATH", format!("{plugin_dir}:/usr/lib/cni"));
    exec::output(cmd, Some(config.to_string().as_bytes()))
}

/// The first IPv4 address (without prefix) of an ADD result.
pub fn ipv4_of(result: &Value) -> Option<Ipv4Addr> {
    ips_of(result).into_iter().find_map(|ip| match ip {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    })
}

/// Every address (without prefix) of an ADD result, in its order.
pub fn ips_of(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_plugin_gets_its_entry_with_the_list_s_name_and_version() {
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "wgmesh",
            "plugins": [
                {"type": "wgmesh-cni", "subnets": ["10.244.1.0/24"]},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
        .to_string();
        assert_eq!(
            plugin_config(&conflist).unwrap(),
            json!({"type": "wgmesh-cni", "subnets": ["10.244.1.0/24"],
                   "name": "wgmesh", "cniVersion": "1.0.0"})
        );
    }

    #[test]
    fn a_conflist_without_wgmesh_cni_first_is_refused() {
        let other = json!({"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "bridge"}]});
        assert!(plugin_config(&other.to_string()).is_err());
        assert!(plugin_config("{").is_err());
        let unnamed = json!({"cniVersion": "1.0.0", "plugins": [{"type": "wgmesh-cni"}]});
        assert!(plugin_config(&unnamed.to_string()).is_err());
    }

    #[test]
    fn the_pod_address_is_the_first_ipv4_of_the_result() {
        let result = json!({"ips": [
            {"address": "fd00::5/64"},
            {"address": "10.244.1.5/24", "gateway": "10.244.1.1"}
        ]});
        assert_eq!(ipv4_of(&result), Some(Ipv4Addr::new(10, 244, 1, 5)));
        assert_eq!(ipv4_of(&json!({})), None);
        assert_eq!(
            ips_of(&result),
            [
                "fd00::5".parse::<IpAddr>().unwrap(),
                "10.244.1.5".parse().unwrap()
            ]
        );
        assert!(ips_of(&json!({})).is_empty());
    }
}
