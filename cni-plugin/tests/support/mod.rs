//! Drives the built `wgmesh-cni` binary the way a container runtime does: exec with
//! the CNI_* environment and the network configuration on stdin.
//!
//! Each [`Node`] is a network namespace of its own standing in for a node's root
//! namespace, so tests can run in parallel with the same subnets, and nothing they do
//! (bridges, sysctls, routes) touches the machine's real root namespace.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};
use wgmesh_testkit::TestNs;

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_wgmesh-cni");

/// A node: its namespace, a private IPAM directory and the network config to use.
pub struct Node {
    pub ns: TestNs,
    pub data: tempfile::TempDir,
    pub conf: Value,
}

/// What one plugin invocation returned.
#[derive(Debug)]
pub struct Reply {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Reply {
    fn from(out: Output) -> Self {
        Reply {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?} stderr: {:?}",
                self.stdout, self.stderr
            )
        })
    }

    /// The CNI error code of a failed invocation.
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "expected a failure, got success: {}", self.stdout);
        self.json()["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code in {}", self.stdout))
    }

    /// Asserts success and returns the stdout JSON (or Null when empty).
    pub fn expect_ok(&self, what: &str) -> Value {
        assert!(self.ok, "{what} failed: {} {}", self.stdout, self.stderr);
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }
}

impl Node {
    /// A node with `subnets` as its pod CIDRs on bridge `wgmesh-br`, guarded as the
    /// agent guards it (wgmesh-cni refuses ADD otherwise).
    pub fn new(subnets: &[&str]) -> Self {
        let node = Self::unguarded(subnets);
        wgmesh_testkit::guard::install(&node.ns, subnets, "wgmesh-br");
        node
    }

    /// A node whose agent has not installed the guard (yet): a fresh or rebooted node.
    pub fn unguarded(subnets: &[&str]) -> Self {
        let ns = TestNs::new("node");
        let data = tempfile::tempdir().expect("tempdir");
        let conf = json!({
            "cniVersion": "1.1.0",
            "name": "wgmesh",
            "type": "wgmesh-cni",
            "subnets": subnets,
            "dataDir": data.path(),
        });
        Node { ns, data, conf }
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.data.path().join("wgmesh")
    }

    /// Addresses with a lease file.
    pub fn leases(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.ipam_dir())
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Runs the plugin inside this node with `env` and `conf` on stdin.
    pub fn invoke(&self, env: &[(&str, &str)], stdin: &str) -> Reply {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns.name(), PLUGIN])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn wgmesh-cni");
        if let Some(mut stdin_pipe) = child.stdin.take() {
            let _ = stdin_pipe.write_all(stdin.as_bytes());
        }
        Reply::from(child.wait_with_output().expect("wait for wgmesh-cni"))
    }

    /// A CNI command for one attachment with this node's config.
    pub fn cmd(
        &self,
        command: &str,
        id: &str,
        netns: Option<&str>,
        ifname: &str,
        conf: &Value,
    ) -> Reply {
        let mut env = vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", id),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", "/usr/lib/cni"),
        ];
        if let Some(n) = netns {
            env.push(("CNI_NETNS", n));
        }
        self.invoke(&env, &conf.to_string())
    }

    pub fn add(&self, id: &str, pod: &TestNs) -> Reply {
        self.cmd("ADD", id, Some(&pod.path()), "eth0", &self.conf)
    }

    pub fn del(&self, id: &str, pod: Option<&TestNs>) -> Reply {
        let path = pod.map(|p| p.path());
        self.cmd("DEL", id, path.as_deref(), "eth0", &self.conf)
    }

    /// CHECK with `prev` as prevResult.
    pub fn check(&self, id: &str, pod: &TestNs, prev: &Value) -> Reply {
        let mut conf = self.conf.clone();
        conf["prevResult"] = prev.clone();
        self.cmd("CHECK", id, Some(&pod.path()), "eth0", &conf)
    }

    /// `ip <args>` in the node namespace.
    pub fn ip(&self, args: &[&str]) -> String {
        self.ns.ip(args)
    }

    /// True if a link called `name` exists in the node namespace.
    pub fn has_link(&self, name: &str) -> bool {
        self.ns.exec("ip", ["link", "show", name]).status.success()
    }
}

/// The first IPv4 address of an ADD result, without prefix.
pub fn ipv4_of(result: &Value) -> String {
    result["ips"]
        .as_array()
        .and_then(|ips| {
            ips.iter()
                .find(|ip| !ip["address"].as_str().unwrap_or("").contains(':'))
        })
        .and_then(|ip| ip["address"].as_str())
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no IPv4 address in {result}"))
        .to_string()
}

/// The host veth name of an ADD result (interfaces[1]).
pub fn host_veth_of(result: &Value) -> String {
    result["interfaces"][1]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("no host veth in {result}"))
        .to_string()
}

/// A command line for shells in messages.
pub fn describe(cmd: &Command) -> String {
    format!("{cmd:?}")
}
