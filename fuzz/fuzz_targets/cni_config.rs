//! CNI network configurations, through the real parsers: `NetworkConfig::from_keys` on
//! any JSON value, and the plugin's own path from its stdin (rscni-plugin's `NetConf`,
//! then the custom keys into `from_keys`, as `wgmesh-cni` does).
//!
//! Checked: nothing panics, and every accepted configuration survives
//! `render_conflist` (what the agent writes) and `plugin_entry` unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rscni_plugin::types::NetConf;
use serde_json::Value;
use wgmesh::cni::{NetworkConfig, render_conflist};

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        let name = value
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("wgmesh");
        from_keys(name, &value);
        // The entries of a conflist, named by the list.
        if let Some(plugins) = value.get("plugins").and_then(Value::as_array) {
            for entry in plugins.iter().take(8) {
                from_keys(name, entry);
            }
        }
    }
    // The plugin's stdin: one configuration, its keys among the "custom" ones.
    if let Ok(conf) = serde_json::from_slice::<NetConf>(data) {
        let _ = conf.version();
        let named = conf.validate_name().is_ok();
        let keys = Value::Object(
            conf.custom
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        if let Some(config) = from_keys(&conf.name, &keys) {
            // wgmesh's name rule is the spec's, except that it allows a leading '_',
            // '.' or '-' (a directory name all the same).
            assert!(named || !conf.name.starts_with(|c: char| c.is_ascii_alphanumeric()));
            assert_eq!(config.name, conf.name);
        }
    }
});

/// Parses; an accepted configuration must be valid and round-trip.
fn from_keys(name: &str, keys: &Value) -> Option<NetworkConfig> {
    let config = match NetworkConfig::from_keys(name, keys) {
        Ok(c) => c,
        Err(e) => {
            // Decode errors (CNI code 6) are exactly the documents serde refuses.
            let _ = (e.is_decode(), e.to_string());
            return None;
        }
    };
    assert!(!config.name.is_empty() && !config.name.contains('/'));
    assert!(config.data_dir.is_absolute(), "{:?}", config.data_dir);
    assert!(config.ipam_dir().starts_with(&config.data_dir));
    assert!(!config.bridge.is_empty() && config.bridge.len() <= 15);
    assert!((68..=65535).contains(&config.mtu));
    assert!(config.subnets.v6.is_none() || config.mtu >= 1280);

    for version in ["1.0.0", "1.1.0"] {
        let text = render_conflist(&config, version);
        let list: Value = serde_json::from_str(&text).expect("the conflist is JSON");
        assert_eq!(list["cniVersion"], version);
        assert_eq!(list["name"], config.name.as_str());
        let list_name = list["name"].as_str().expect("a name");
        let back = NetworkConfig::from_keys(list_name, &list["plugins"][0])
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(back, config, "{text}");
        // ... and as the plugin reads it: the list's name and version injected into
        // the entry, the entry's keys other than the spec's as custom keys.
        let mut entry = list["plugins"][0].clone();
        entry["name"] = list["name"].clone();
        entry["cniVersion"] = list["cniVersion"].clone();
        let conf: NetConf = serde_json::from_value(entry).expect("a NetConf");
        assert_eq!(conf.name, config.name);
        let keys = Value::Object(conf.custom.into_iter().collect());
        assert_eq!(
            NetworkConfig::from_keys(&conf.name, &keys).ok(),
            Some(config.clone())
        );
    }
    let entry = config.plugin_entry();
    assert_eq!(
        NetworkConfig::from_keys(name, &entry).ok().as_ref(),
        Some(&config)
    );
    Some(config)
}
