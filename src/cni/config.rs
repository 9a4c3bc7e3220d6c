//! Keys of the wgmesh-cni plugin configuration: parsing, defaults, validation and
//! rendering into a conflist. Pure.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::subnets::{PodSubnets, SubnetError};

pub const DEFAULT_BRIDGE: &str = "wgmesh-br";
pub const DEFAULT_MTU: u32 = 1420;
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
pub const DEFAULT_IPAM_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// The plugin binary name, the `type` of its conflist entry.
pub const PLUGIN_TYPE: &str = "wgmesh-cni";

/// IPv4's minimum link MTU (RFC 791) and the largest an interface takes.
const MIN_MTU: u32 = 68;
const MAX_MTU: u32 = 65535;
/// IPv6 needs links of at least 1280 bytes (RFC 8200 section 5).
const MIN_MTU_V6: u32 = 1280;
/// Linux IFNAMSIZ minus the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

/// Why a configuration is unusable. [`ConfigError::is_decode`] separates a document
/// that does not decode (CNI error 6) from one that decodes but is invalid (CNI error 7).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot decode the plugin configuration: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("\"subnets\" is required: the node's pod CIDR(s), e.g. [\"10.244.1.0/24\"]")]
    MissingSubnets,
    #[error("invalid \"subnets\": {0}")]
    Subnets(#[from] SubnetError),
    #[error("invalid \"mtu\" {mtu}: must be between {min} and {MAX_MTU}")]
    Mtu { mtu: u32, min: u32 },
    #[error("invalid \"bridge\" {name:?}: {reason}")]
    Bridge { name: String, reason: &'static str },
    #[error("invalid \"dataDir\" {0:?}: must be an absolute path")]
    DataDir(String),
    #[error("invalid network \"name\" {0:?}: must be non-empty and usable as a directory name")]
    Name(String),
}

impl ConfigError {
    /// True when the document itself did not decode (wrong JSON types).
    pub fn is_decode(&self) -> bool {
        matches!(self, Self::Decode(_))
    }
}

/// The plugin-specific keys as they appear in JSON; every key is optional here and
/// unknown keys are ignored, as the CNI spec asks.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawKeys {
    bridge: Option<String>,
    mtu: Option<u32>,
    subnets: Option<Vec<String>>,
    data_dir: Option<String>,
    ipam_lock_timeout_ms: Option<u64>,
}

/// A validated wgmesh-cni network configuration with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The network name; IPAM state lives under `data_dir/name`.
    pub name: String,
    pub bridge: String,
    pub mtu: u32,
    pub subnets: PodSubnets,
    pub data_dir: PathBuf,
    /// How long an ADD waits for another invocation's IPAM lock before answering
    /// "try again later" (CNI error 11).
    pub ipam_lock_timeout: Duration,
}

impl NetworkConfig {
    /// Builds a configuration from the network name and the plugin's own keys (the
    /// JSON object of its conflist entry; other keys are ignored).
    pub fn from_keys(name: &str, keys: &Value) -> Result<Self, ConfigError> {
        let raw = RawKeys::deserialize(keys).map_err(ConfigError::Decode)?;
        validate_name(name)?;
        let subnets = match raw.subnets {
            Some(s) if !s.is_empty() => PodSubnets::parse(&s)?,
            _ => return Err(ConfigError::MissingSubnets),
        };
        let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        validate_ifname(&bridge)?;
        let mtu = raw.mtu.unwrap_or(DEFAULT_MTU);
        let min = if subnets.v6.is_some() {
            MIN_MTU_V6
        } else {
            MIN_MTU
        };
        if !(min..=MAX_MTU).contains(&mtu) {
            return Err(ConfigError::Mtu { mtu, min });
        }
        let data_dir = raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.to_string());
        if !data_dir.starts_with('/') {
            return Err(ConfigError::DataDir(data_dir));
        }
        Ok(Self {
            name: name.to_string(),
            bridge,
            mtu,
            subnets,
            data_dir: PathBuf::from(data_dir),
            ipam_lock_timeout: raw
                .ipam_lock_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_IPAM_LOCK_TIMEOUT),
        })
    }

    /// The conflist entry for this configuration (without `name`/`cniVersion`, which
    /// the list carries).
    pub fn plugin_entry(&self) -> Value {
        let mut entry = json!({
            "type": PLUGIN_TYPE,
            "bridge": self.bridge,
            "mtu": self.mtu,
            "subnets": self.subnets.nets().map(|n| n.to_string()).collect::<Vec<_>>(),
            "dataDir": self.data_dir.to_string_lossy(),
        });
        if self.ipam_lock_timeout != DEFAULT_IPAM_LOCK_TIMEOUT {
            entry["ipamLockTimeoutMs"] = json!(self.ipam_lock_timeout.as_millis() as u64);
        }
        entry
    }

    /// Where this network's IPAM state lives.
    pub fn ipam_dir(&self) -> PathBuf {
        self.data_dir.join(&self.name)
    }
}

/// Renders the node's conflist: wgmesh-cni followed by the reference `portmap` plugin
/// for `hostPort`s. `cni_version` is the version the list declares; 1.0.0 is what
/// runtimes built on libcni < 1.2 (containerd 1.7, podman 4) and the reference plugins
/// up to 1.3 accept, while wgmesh-cni itself speaks 1.1.0 as well.
pub fn render_conflist(config: &NetworkConfig, cni_version: &str) -> String {
    let list = json!({
        "cniVersion": cni_version,
        "name": config.name,
        "plugins": [
            config.plugin_entry(),
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    });
    // A Value always serializes.
    let mut text = serde_json::to_string_pretty(&list).unwrap_or_default();
    text.push('\n');
    text
}

fn validate_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Name(name.to_string()))
    }
}

fn validate_ifname(name: &str) -> Result<(), ConfigError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_IFNAME_LEN {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("not a usable interface name")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Some("contains '/', ':' or whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ConfigError::Bridge {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(keys: Value) -> Result<NetworkConfig, ConfigError> {
        NetworkConfig::from_keys("wgmesh", &keys)
    }

    #[test]
    fn defaults_apply_to_the_minimal_config() {
        let c = parse(json!({"type": "wgmesh-cni", "subnets": ["10.244.1.0/24"]})).unwrap();
        assert_eq!(c.bridge, "wgmesh-br");
        assert_eq!(c.mtu, 1420);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/cni/networks"));
        assert_eq!(c.ipam_dir(), PathBuf::from("/var/lib/cni/networks/wgmesh"));
        assert_eq!(
            c.subnets.v4.map(|n| n.to_string()).as_deref(),
            Some("10.244.1.0/24")
        );
    }

    #[test]
    fn unknown_keys_and_nulls_are_ignored() {
        let c = parse(json!({
            "subnets": ["10.244.1.0/24"], "mtu": null, "somethingElse": {"x": 1},
            "runtimeConfig": {"portMappings": []}, "args": {"cni": {}}
        }))
        .unwrap();
        assert_eq!(c.mtu, 1420);
    }

    #[test]
    fn invalid_values_are_rejected_with_a_reason() {
        let cases = [
            (json!({}), "\"subnets\" is required", false),
            (json!({"subnets": []}), "\"subnets\" is required", false),
            (
                json!({"subnets": ["10.244.1.0/33"]}),
                "is not a CIDR",
                false,
            ),
            (
                json!({"subnets": ["10.244.1.0/24"], "mtu": 0}),
                "invalid \"mtu\" 0",
                false,
            ),
            (
                json!({"subnets": ["10.244.1.0/24"], "mtu": 70000}),
                "invalid \"mtu\" 70000",
                false,
            ),
            (
                json!({"subnets": ["10.244.1.0/24", "fd00::/64"], "mtu": 1000}),
                "between 1280",
                false,
            ),
            (
                json!({"subnets": ["10.244.1.0/24"], "bridge": ""}),
                "invalid \"bridge\"",
                false,
            ),
            (
                json!({"subnets": ["10.244.1.0/24"], "bridge": "a-very-long-bridge-name"}),
                "longer than 15",
                false,
            ),
            (
                json!({"subnets": ["10.244.1.0/24"], "bridge": "br/0"}),
                "contains '/'",
                false,
            ),
            (
                json!({"subnets": ["10.244.1.0/24"], "dataDir": "relative/dir"}),
                "absolute path",
                false,
            ),
            (json!({"subnets": "10.244.1.0/24"}), "cannot decode", true),
            (
                json!({"subnets": ["10.244.1.0/24"], "mtu": "1420"}),
                "cannot decode",
                true,
            ),
            (
                json!({"subnets": ["10.244.1.0/24"], "mtu": -1}),
                "cannot decode",
                true,
            ),
        ];
        for (keys, want, decode) in cases {
            let err = parse(keys.clone()).expect_err(&format!("{keys} must be rejected"));
            assert!(
                err.to_string().contains(want),
                "{keys}: {err:?} does not say {want:?}"
            );
            assert_eq!(err.is_decode(), decode, "{keys}: {err}");
        }
        for bad in ["", "..", "a/b", "with space"] {
            let err =
                NetworkConfig::from_keys(bad, &json!({"subnets": ["10.244.1.0/24"]})).unwrap_err();
            assert!(matches!(err, ConfigError::Name(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn rendered_conflist_parses_back_to_the_same_config() {
        let c = parse(json!({
            "subnets": ["10.244.3.0/24", "fd00:10:244:3::/64"], "mtu": 1400,
            "bridge": "br-test", "dataDir": "/tmp/x", "ipamLockTimeoutMs": 250
        }))
        .unwrap();
        let text = render_conflist(&c, "1.0.0");
        let list: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(list["cniVersion"], "1.0.0");
        assert_eq!(list["name"], "wgmesh");
        assert_eq!(list["plugins"][0]["type"], "wgmesh-cni");
        assert_eq!(
            list["plugins"][1],
            json!({"type": "portmap", "capabilities": {"portMappings": true}})
        );
        let back =
            NetworkConfig::from_keys(list["name"].as_str().unwrap(), &list["plugins"][0]).unwrap();
        assert_eq!(back, c);
    }
}
