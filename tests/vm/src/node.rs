//! The VM as one more node of a testbed (test infrastructure): on the testbed's router
//! in a slot of its own ([`Vm::attach`]), with a Node object as the testbed's kubelet
//! stand-in makes them, the node kubeconfig (the API server through the router), and
//! the built `wgmesh agent` running in the VM's root namespace with the production
//! default paths, as a testbed node's agent runs in its namespaces. Pods are network
//! namespaces in the VM attached by `wgmesh-cni` with the conflist the VM's agent
//! wrote, as the testbed creates pods.
//!
//! The VM has one root namespace, one `wgmesh0` and one pod bridge: one [`VmNode`]
//! exists at a time in a process (the others wait), and each starts from a node with
//! nothing of wgmesh on it and leaves none behind.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use wgmesh_testbed::addressing::{CLUSTER_CIDR, NodeAddresses};
use wgmesh_testbed::node::{CONFLIST_PATH, STATE_DIR};
use wgmesh_testbed::pod::POD_IFNAME;
use wgmesh_testbed::{Exec, Testbed, cni};
use wgmesh_testkit::workspace_bin;

use crate::{Attachment, Vm};
use wgmesh_testbed::annotation;

/// The Kubernetes name of the VM's node.
pub const NODE_NAME: &str = "vm";
/// Where the VM node's files of the test live (in the VM's memory).
const DIR: &str = "/run/wgmesh-vm-node";
/// The agent's log in the VM (every start appended).
const AGENT_LOG: &str = "/run/wgmesh-vm-node/agent.log";
/// What [`VmNode::start_agent`] writes to the agent's log before each start.
const START_MARKER: &str = "=== vm node: starting the agent";
/// The node kubeconfig in the VM.
const KUBECONFIG: &str = "/run/wgmesh-vm-node/kubeconfig";
/// The testbed agents' log filter.
const RUST_LOG: &str = "debug,kube=info,hyper=info,hyper_util=info,rustls=info,tower=info,h2=info";
/// SIGTERM, then this long before SIGKILL (as the testbed's agents).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// One command in the VM (most take well under a second, even under TCG).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Held by the one [`VmNode`] of the process.
static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// The VM as a node of a testbed; see the module documentation. Dropping it stops the
/// agent, removes its pods, everything wgmesh made in the VM and its Node object, and
/// unplugs the VM from the router.
pub struct VmNode<'a> {
    vm: &'a Vm,
    tb: &'a Testbed,
    addresses: NodeAddresses,
    agent: Mutex<Option<u32>>,
    pods: Mutex<Vec<String>>,
    attachment: Option<Attachment<'a>>,
    _exclusive: MutexGuard<'static, ()>,
}

impl<'a> VmNode<'a> {
    /// Makes the VM node [`NODE_NAME`] of `tb` in router slot `slot` (one the testbed
    /// does not use): plugged in, registered (its Node object), its kubeconfig written.
    /// The agent is not started. Waits while another `VmNode` of this process exists.
    pub fn join(vm: &'a Vm, tb: &'a Testbed, slot: usize) -> VmNode<'a> {
        let exclusive = EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner());
        let addresses = NodeAddresses::for_index(slot);
        let mut node = VmNode {
            vm,
            tb,
            addresses,
            agent: Mutex::new(None),
            pods: Mutex::new(Vec::new()),
            attachment: None,
            _exclusive: exclusive,
        };
        // Whatever an earlier VM node of this process left (it should have left nothing).
        node.remove_wgmesh();
        let kubeconfig = std::fs::read_to_string(tb.node_kubeconfig())
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", tb.node_kubeconfig().display()));
        vm.write_file(KUBECONFIG, &kubeconfig);
        node.attachment = Some(vm.attach(tb.router(), &addresses));
        tb.create_foreign_node_object(NODE_NAME, &addresses);
        node
    }

    pub fn name(&self) -> &str {
        NODE_NAME
    }

    /// The node's address on the underlay (its InternalIP).
    pub fn underlay_ip(&self) -> Ipv4Addr {
        self.addresses.underlay_ip
    }

    /// The node's spec.podCIDR.
    pub fn pod_cidr(&self) -> Ipv4Net {
        self.addresses.pod_cidr
    }

    /// The router's interface towards the VM.
    pub fn router_link(&self) -> String {
        wgmesh_testbed::underlay::node_link(self.addresses.index)
    }

    /// Starts the agent in the VM with `extra` arguments after the testbed's defaults
    /// (node name, kubeconfig, `--cluster-cidr`). Panics if it already runs.
    pub fn start_agent(&self, extra: &[&str]) {
        let mut agent = self.agent.lock().unwrap_or_else(|e| e.into_inner());
        assert!(agent.is_none(), "the VM node's agent is already running");
        let wgmesh = workspace_bin("wgmesh");
        let wgmesh = wgmesh.to_string_lossy();
        let mut argv = vec![
            "sh",
            "-c",
            // The agent in the background, detached from the guest's pipes; its pid out.
            "echo \"$MARK (args $*) ===\" >> \"$LOG\"; \
             \"$0\" \"$@\" < /dev/null >> \"$LOG\" 2>&1 & echo $!",
            &wgmesh,
            "agent",
            "--node-name",
            NODE_NAME,
            "--kubeconfig",
            KUBECONFIG,
            "--cluster-cidr",
            CLUSTER_CIDR,
        ];
        argv.extend_from_slice(extra);
        let script_env = format!("LOG={AGENT_LOG}");
        let marker = format!("MARK={START_MARKER}");
        let rust_log = format!("RUST_LOG={RUST_LOG}");
        let mut full = vec!["env", &script_env, &marker, &rust_log, "NO_COLOR=1"];
        full.extend(argv);
        let out = self.vm.exec_ok(&full);
        let pid = out
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no pid from the agent's start: {out:?}"));
        *agent = Some(pid);
    }

    /// Stops the agent with SIGTERM and waits for it to exit (SIGKILL after 10 s). A
    /// no-op when it is not running.
    pub fn stop_agent(&self) {
        let Some(pid) = self.agent.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let pid = pid.to_string();
        let _ = self.vm.exec(&["kill", "-TERM", &pid]);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.alive(&pid) {
            if Instant::now() > deadline {
                eprintln!("vm node: the agent ignored SIGTERM for {STOP_TIMEOUT:?}; killing it");
                let _ = self.vm.exec(&["kill", "-KILL", &pid]);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True while the agent runs.
    pub fn agent_running(&self) -> bool {
        let pid = *self.agent.lock().unwrap_or_else(|e| e.into_inner());
        pid.is_some_and(|p| self.alive(&p.to_string()))
    }

    /// True while process `pid` of the VM runs (an exited one not yet reaped by the
    /// VM's init is a zombie: not running).
    fn alive(&self, pid: &str) -> bool {
        let state = self
            .vm
            .exec(&["sh", "-c", "awk '{print $3}' /proc/$0/stat", pid]);
        let state = String::from_utf8_lossy(&state.stdout);
        !state.trim().is_empty() && state.trim() != "Z"
    }

    /// Everything the agent logged (all of its starts).
    pub fn agent_log(&self) -> String {
        String::from_utf8_lossy(&self.vm.exec(&["cat", AGENT_LOG]).stdout).into_owned()
    }

    /// What the agent logged since its latest start.
    pub fn agent_log_since_start(&self) -> String {
        let log = self.agent_log();
        match log.rfind(START_MARKER) {
            Some(i) => log[i..].to_string(),
            None => log,
        }
    }

    /// The VM's `/etc/cni/net.d/10-wgmesh.conflist`, once the agent wrote it.
    pub fn conflist(&self) -> Option<String> {
        let out = self.vm.exec(&["cat", CONFLIST_PATH]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Node names in the agent's current plan (`mesh.json`), sorted.
    pub fn mesh_peers(&self) -> Vec<String> {
        let path = format!("{STATE_DIR}/{}", wgmesh_testbed::node::MESH_FILE);
        let out = self.vm.exec(&["cat", &path]);
        let mesh: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut peers: Vec<String> = mesh["peers"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        peers.sort();
        peers
    }

    /// Waits until the agent's plan lists exactly `peers` and its conflist is written;
    /// panics with its log after `timeout`.
    pub fn wait_for_peers(&self, peers: &[&str], timeout: Duration) {
        let mut want: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
        want.sort();
        self.expect_within(timeout, &format!("peers {want:?} and a conflist"), || {
            (self.mesh_peers() == want && self.conflist().is_some()).then_some(())
        });
    }

    /// The node's public key as its Node object advertises it.
    pub fn advertised_key(&self) -> Option<String> {
        self.tb
            .node_annotations_named(NODE_NAME)
            .remove(annotation::PUBLIC_KEY)
    }

    /// GET `path` of the agent's telemetry endpoint (port 9474) in the VM: the status
    /// code ("000" when nothing answers) and the body.
    pub fn agent_http(&self, path: &str) -> (String, String) {
        let url = format!("http://127.0.0.1:9474{path}");
        let out = self
            .vm
            .exec(&["curl", "-s", "-m", "5", "-w", "\n%{http_code}", &url]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        match text.rsplit_once('\n') {
            Some((body, code)) => (code.to_string(), body.to_string()),
            None => (text, String::new()),
        }
    }

    /// Creates pod `name` in the VM as a runtime does: its network namespace, its
    /// loopback up, `wgmesh-cni` ADD with the plugin entry of the agent's conflist
    /// (waited for) and a runtime's environment only.
    pub fn add_pod(&self, name: &str) -> VmPod<'a> {
        let conflist =
            self.expect_within(COMMAND_TIMEOUT, "the agent's conflist", || self.conflist());
        let config = cni::plugin_config(&conflist)
            .unwrap_or_else(|e| panic!("the VM agent's conflist is unusable: {e}\n{conflist}"));
        self.vm.exec_ok(&["ip", "netns", "add", name]);
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.to_string());
        self.vm
            .exec_ok(&["ip", "-n", name, "link", "set", "lo", "up"]);
        let container_id = format!("vmnode-{name}");
        let out = self.vm.run(
            &cni_command("ADD", &container_id, name)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            &config.to_string(),
            COMMAND_TIMEOUT,
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "CNI ADD of pod {name} in the VM failed ({}):\nstdout: {stdout}\nstderr: {}\nconfig: {config}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let result: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("CNI ADD of pod {name} printed no JSON ({e}): {stdout}"));
        let ip = cni::ipv4_of(&result)
            .unwrap_or_else(|| panic!("CNI ADD of pod {name} returned no IPv4 address: {stdout}"));
        VmPod {
            vm: self.vm,
            name: name.to_string(),
            ip,
        }
    }

    /// Removes what wgmesh made in the VM: the pods of this node (their namespaces and
    /// IPAM leases), then `wgmesh uninstall` (nftables table, routes, `wgmesh0`, the
    /// bridge, the conflist, the state directory with the key).
    fn remove_wgmesh(&self) {
        for pod in self
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = self.vm.exec(&["ip", "netns", "delete", &pod]);
        }
        let _ = self
            .vm
            .exec(&["rm", "-rf", wgmesh::cni::config::DEFAULT_DATA_DIR, DIR]);
        let wgmesh = workspace_bin("wgmesh");
        let out = self.vm.exec(&[wgmesh.as_os_str(), OsStr::new("uninstall")]);
        assert!(
            out.status.success() || std::thread::panicking(),
            "wgmesh uninstall in the VM failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Polls `cond` until it holds; panics after `timeout` with the agent's log.
    fn expect_within<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = cond() {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "the VM node: timed out after {timeout:?} waiting for {what}; agent running: {}; agent log (last 40 lines):\n{}",
                    self.agent_running(),
                    crate::tail(&self.agent_log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for VmNode<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- the VM node's agent log (last 60 lines):\n{}",
                crate::tail(&self.agent_log(), 60)
            );
        }
        self.stop_agent();
        self.tb.delete_node_object_named(NODE_NAME);
        self.remove_wgmesh();
        // Unplugged from the router (and its address flushed) before the lock goes.
        self.attachment.take();
    }
}

/// Commands in the VM's root namespace: the node.
impl Exec for VmNode<'_> {
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        self.vm.command(program)
    }

    fn place(&self) -> &str {
        "the VM node"
    }
}

/// `env -i` with a runtime's environment, then `wgmesh-cni`: the guest agent runs
/// commands with its own environment, so the CNI variables go on the command line.
fn cni_command(command: &str, container_id: &str, pod: &str) -> Vec<String> {
    let plugin = workspace_bin("wgmesh-cni");
    let plugin_dir = plugin
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    vec![
        "env".into(),
        "-i".into(),
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        format!("CNI_COMMAND={command}"),
        format!("CNI_CONTAINERID={container_id}"),
        format!("CNI_NETNS=/run/netns/{pod}"),
        format!("CNI_IFNAME={POD_IFNAME}"),
        format!("CNI_PATH={plugin_dir}:/usr/lib/cni"),
        plugin.display().to_string(),
    ]
}

/// A pod in the VM (a network namespace there, attached by `wgmesh-cni`). Removed with
/// its [`VmNode`].
pub struct VmPod<'a> {
    vm: &'a Vm,
    name: String,
    ip: Ipv4Addr,
}

impl VmPod<'_> {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pod's IPv4 address, from the CNI result.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
}

/// Commands in the pod's network namespace in the VM.
impl Exec for VmPod<'_> {
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = self.vm.command("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        cmd
    }

    fn place(&self) -> &str {
        &self.name
    }
}
