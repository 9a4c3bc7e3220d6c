//! A pod on a testbed node, created the way a container runtime does (test
//! infrastructure).
//!
//! The runtime creates the pod's network namespace inside the node (`ip netns add` in
//! the node's mount namespace, so it lives in the node's own `/run/netns`), brings its
//! loopback up (the CNI `loopback` plugin's job), and calls `wgmesh-cni` ADD with the
//! plugin entry of the node's conflist. Deletion is CNI DEL with the configuration used
//! at ADD (libcni's cached config), then the namespace goes. A pod that is never deleted
//! disappears with its node.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use serde_json::Value;

use crate::addressing::Family;
use crate::cni::{self, Invocation};
use crate::exec::{self, Exec};
use crate::holder::Holder;
use crate::node::Node;

/// A CNI ADD the plugin refused (the runtime tore the sandbox down again).
#[derive(Debug, Clone)]
pub struct CniRefusal {
    pub pod: String,
    /// The CNI error code (11: try again later).
    pub code: Option<u64>,
    /// The error's `msg` and `details`.
    pub message: String,
    /// Everything the plugin printed, for failure messages.
    pub output: String,
}

impl std::fmt::Display for CniRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.output)
    }
}

/// The pod's interface, as kubelet names it.
pub const POD_IFNAME: &str = "eth0";

/// A pod attached by wgmesh-cni. Dropping it does nothing: delete it with
/// `Testbed::delete_pod`, or let it go with its node.
#[derive(Debug)]
pub struct Pod {
    name: String,
    node_index: usize,
    node_name: String,
    holder_pid: u32,
    /// Its addresses from the CNI result, in the result's order.
    ips: Vec<IpAddr>,
    container_id: String,
    config: Value,
    result: Value,
}

impl Pod {
    /// Creates pod `name` on `node` (held by `holder`) with the node's `conflist`.
    pub(crate) fn create(node: &Node, holder: &Holder, name: &str, conflist: &str) -> Pod {
        Pod::try_create(node, holder, name, conflist)
            .unwrap_or_else(|refused| panic!("{}: {refused}", node.name()))
    }

    /// Like [`Pod::create`], but a refused ADD is returned, as a runtime sees it: the
    /// sandbox (the namespace) is torn down and the error kept for a later retry.
    pub(crate) fn try_create(
        node: &Node,
        holder: &Holder,
        name: &str,
        conflist: &str,
    ) -> Result<Pod, CniRefusal> {
        assert!(
            !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{name:?} is not a pod name (lowercase letters, digits and '-', at most 63)"
        );
        let config = cni::plugin_config(conflist).unwrap_or_else(|e| {
            panic!(
                "{}: the agent's conflist is unusable: {e}\n{conflist}",
                node.name()
            )
        });
        node.exec_ok(&["ip", "netns", "add", name]);
        node.exec_ok(&["ip", "-n", name, "link", "set", "lo", "up"]);

        let container_id = format!("testbed-{name}");
        let netns = format!("/run/netns/{name}");
        let call = Invocation {
            command: "ADD",
            container_id: &container_id,
            netns: &netns,
            ifname: POD_IFNAME,
        };
        let out = cni::invoke(holder, call, &config);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            let _ = node.exec(&["ip", "netns", "delete", name]);
            let error: Value = serde_json::from_str(&stdout).unwrap_or_default();
            return Err(CniRefusal {
                pod: name.to_string(),
                code: error["code"].as_u64(),
                message: format!(
                    "{} {}",
                    error["msg"].as_str().unwrap_or_default(),
                    error["details"].as_str().unwrap_or_default()
                ),
                output: format!(
                    "CNI ADD of pod {name} failed ({}):\nstdout: {stdout}\nstderr: {}\nconfig: {config}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        let result: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("CNI ADD of pod {name} printed no JSON ({e}): {stdout}"));
        let ips = cni::ips_of(&result);
        let mut families: Vec<Family> = ips.iter().map(|ip| Family::of(*ip)).collect();
        families.sort();
        assert_eq!(
            families,
            node.layout().pod_families(),
            "CNI ADD of pod {name} returned addresses of other families than the node's pods have ({}): {stdout}",
            node.layout().describe()
        );
        Ok(Pod {
            name: name.to_string(),
            node_index: node.index(),
            node_name: node.name().to_string(),
            holder_pid: holder.pid(),
            ips,
            container_id,
            config,
            result,
        })
    }

    /// CNI DEL (panics if it fails: DEL must succeed), then removes the namespace.
    pub(crate) fn delete(self, holder: &Holder) {
        let netns = self.netns_path();
        let call = Invocation {
            command: "DEL",
            container_id: &self.container_id,
            netns: &netns,
            ifname: POD_IFNAME,
        };
        let out = cni::invoke(holder, call, &self.config);
        assert!(
            out.status.success(),
            "{}: CNI DEL of pod {} failed ({}):\nstdout: {}\nstderr: {}",
            self.node_name,
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut rm = holder.command("ip");
        rm.args(["netns", "delete", &self.name]);
        exec::output_ok(rm, None);
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The slot of the pod's node.
    pub fn node(&self) -> usize {
        self.node_index
    }

    /// The Kubernetes name of the pod's node.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The pod's IPv4 address, from the CNI result. Panics for a pod without one (an
    /// IPv6-only pod network: see [`Pod::ips`]).
    pub fn ip(&self) -> Ipv4Addr {
        match self.ip_of(Family::Ipv4) {
            Some(IpAddr::V4(ip)) => ip,
            _ => panic!("pod {} has no IPv4 address: {:?}", self.name, self.ips),
        }
    }

    /// The pod's IPv6 address, from the CNI result. Panics for a pod without one.
    pub fn ip6(&self) -> Ipv6Addr {
        match self.ip_of(Family::Ipv6) {
            Some(IpAddr::V6(ip)) => ip,
            _ => panic!("pod {} has no IPv6 address: {:?}", self.name, self.ips),
        }
    }

    /// The pod's address of `family`, if it has one.
    pub fn ip_of(&self, family: Family) -> Option<IpAddr> {
        self.ips
            .iter()
            .copied()
            .find(|ip| Family::of(*ip) == family)
    }

    /// Every address of the pod (one per family of its node's pods, IPv4 first).
    pub fn ips(&self) -> &[IpAddr] {
        &self.ips
    }

    /// `CNI_CONTAINERID` of the pod.
    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    /// The result wgmesh-cni returned for ADD.
    pub fn cni_result(&self) -> &Value {
        &self.result
    }

    /// The plugin configuration the pod was added with.
    pub fn cni_config(&self) -> &Value {
        &self.config
    }

    /// `CNI_NETNS`: the pod's namespace as seen inside its node.
    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// The pod's network namespace file as the test process can open it.
    pub fn host_netns_path(&self) -> std::path::PathBuf {
        crate::transfer::node_netns_file(self.holder_pid, &self.name)
    }

    /// How a person gets a shell in the pod: the node's mount namespace (where the pod's
    /// namespace file is) and the pod's network namespace, opened through the holder's
    /// root because nsenter opens it before entering the node.
    pub fn enter_command(&self) -> String {
        format!(
            "nsenter --target {pid} --mount --net=/proc/{pid}/root/run/netns/{name}",
            pid = self.holder_pid,
            name = self.name
        )
    }
}

/// Commands in the pod: the node's mount namespace, the pod's network namespace.
impl Exec for Pod {
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["--target", &self.holder_pid.to_string(), "--mount"])
            .arg(format!(
                "--net=/proc/{}/root/run/netns/{}",
                self.holder_pid, self.name
            ))
            .arg("--")
            .arg(program);
        cmd
    }

    fn place(&self) -> &str {
        &self.name
    }
}
