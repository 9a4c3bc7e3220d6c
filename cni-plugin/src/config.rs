//! From the runtime's invocation to wgmesh's validated [`NetworkConfig`].

use rscni_plugin::types::Args;
use serde_json::Value;
use wgmesh::cni::NetworkConfig;

use crate::error::Error;
use crate::ipam::Owner;

/// The network configuration of this invocation, validated, defaults applied.
pub fn network(args: &Args) -> Result<NetworkConfig, Error> {
    let conf = args.config();
    // The plugin's own keys arrive among the "custom" (non-spec) keys of the entry.
    let keys = Value::Object(
        conf.custom
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    Ok(NetworkConfig::from_keys(&conf.name, &keys)?)
}

/// The attachment this invocation is about. The dispatcher has already checked that
/// CNI_CONTAINERID and CNI_IFNAME are set for ADD, DEL and CHECK.
pub fn owner(args: &Args) -> Owner {
    Owner {
        container_id: args
            .container_id()
            .map(|c| c.to_string())
            .unwrap_or_default(),
        ifname: args.ifname().map(|i| i.to_string()).unwrap_or_default(),
    }
}
