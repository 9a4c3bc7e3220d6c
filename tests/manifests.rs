//! The Kubernetes manifests (`manifests/wgmesh.yaml`), the kind helper and the image
//! layout, checked for what matters to security and for agreement with the code: RBAC
//! exactly as used, one privileged container (the sysctl one), the admission policy,
//! the Peer CRD's key pattern against real keys, the agent's arguments against the
//! real binary's parser, and the init containers' scripts run against temporary
//! directories. Schema validation and the policy's CEL are evaluated by
//! `hack/validate-manifests.sh`, run here too.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde_json::Value;
use wgmesh::k8s::translate::NETWORK_UNAVAILABLE;
use wgmesh::key::{PrivateKey, PublicKey};
use wgmesh::model::{Endpoint, annotation};

const NAMESPACE: &str = "wgmesh-system";
const SERVICE_ACCOUNT: &str = "wgmesh";
const METRICS_PORT: i32 = 9474;
const KEY_PATTERN: &str = "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text).expect("valid multi-document YAML")
}

fn manifest() -> Vec<Value> {
    yaml_docs(&read("manifests/wgmesh.yaml"))
}

/// The one object of `kind` named `name`, typed.
fn object<T: DeserializeOwned>(docs: &[Value], kind: &str, name: &str) -> T {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind}/{name}");
    serde_json::from_value(found[0].clone()).unwrap_or_else(|e| panic!("{kind}/{name}: {e}"))
}

fn daemonset() -> DaemonSet {
    object(&manifest(), "DaemonSet", "wgmesh")
}

fn pod_spec(ds: &DaemonSet) -> PodSpec {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod template spec")
}

fn container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn all_containers(spec: &PodSpec) -> Vec<&Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .collect()
}

fn is_privileged(c: &Container) -> bool {
    c.security_context
        .as_ref()
        .and_then(|s| s.privileged)
        .unwrap_or(false)
}

/// The value of `--flag=value` (or `--flag value`) in the container's args.
fn arg_value(c: &Container, flag: &str) -> Option<String> {
    let args = c.args.as_deref().unwrap_or_default();
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
            Some(v.to_string())
        } else if a == flag {
            args.get(i + 1).cloned()
        } else {
            None
        }
    })
}

fn script(c: &Container) -> String {
    assert_eq!(
        c.command.as_deref(),
        Some(&["/bin/sh".to_string(), "-c".to_string()][..]),
        "{}: a shell script as the single argument",
        c.name
    );
    c.args.as_ref().expect("args")[0].clone()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn kind_sh(args: &[&str]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("hack/kind.sh")).args(args);
    cmd
}

// ---- objects --------------------------------------------------------------------

#[test]
fn the_manifest_holds_the_expected_objects_in_apply_order() {
    let got: Vec<(String, String, Option<String>)> = manifest()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["metadata"]["name"].as_str().unwrap().to_string(),
                d["metadata"]["namespace"].as_str().map(String::from),
            )
        })
        .collect();
    let ns = || Some(NAMESPACE.to_string());
    let want = [
        ("Namespace", NAMESPACE, None),
        ("CustomResourceDefinition", "peers.wgmesh.io", None),
        ("ServiceAccount", SERVICE_ACCOUNT, ns()),
        ("ClusterRole", "wgmesh", None),
        ("ClusterRoleBinding", "wgmesh", None),
        ("Role", "wgmesh-events", Some("default".to_string())),
        ("RoleBinding", "wgmesh-events", Some("default".to_string())),
        ("ValidatingAdmissionPolicy", "wgmesh-node-restriction", None),
        (
            "ValidatingAdmissionPolicyBinding",
            "wgmesh-node-restriction",
            None,
        ),
        ("ConfigMap", "wgmesh-config", ns()),
        ("DaemonSet", "wgmesh", ns()),
    ];
    let want: Vec<(String, String, Option<String>)> = want
        .into_iter()
        .map(|(k, n, ns)| (k.to_string(), n.to_string(), ns))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn the_namespace_is_privileged_for_pod_security() {
    let ns: Namespace = object(&manifest(), "Namespace", NAMESPACE);
    let labels = ns.metadata.labels.unwrap_or_default();
    for mode in ["enforce", "audit", "warn"] {
        assert_eq!(
            labels
                .get(&format!("pod-security.kubernetes.io/{mode}"))
                .map(String::as_str),
            Some("privileged"),
            "pod-security {mode}"
        );
    }
}

// ---- RBAC -----------------------------------------------------------------------

/// (apiGroup, resource, verb) triples of a set of rules; panics on wildcards,
/// resourceNames or nonResourceURLs.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in rules {
        assert!(r.resource_names.is_none() && r.non_resource_urls.is_none());
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    for s in [g, res, v] {
                        assert!(!s.contains('*'), "wildcard in {r:?}");
                    }
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}

fn set(items: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
    items
        .iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect()
}

#[test]
fn rbac_grants_exactly_what_the_agent_uses() {
    let docs = manifest();
    let cr: ClusterRole = object(&docs, "ClusterRole", "wgmesh");
    let cluster = grants(cr.rules.as_deref().unwrap_or_default());
    assert_eq!(
        cluster,
        set(&[
            ("", "nodes", "get"),
            ("", "nodes", "list"),
            ("", "nodes", "watch"),
            ("", "nodes", "patch"),
            ("", "nodes/status", "patch"),
            ("wgmesh.io", "peers", "get"),
            ("wgmesh.io", "peers", "list"),
            ("wgmesh.io", "peers", "watch"),
        ])
    );
    assert!(cr.aggregation_rule.is_none());
    // Events: in "default" only, where src/k8s/events.rs writes them, and only created
    // (core/v1, not events.k8s.io): the agent posts a new Event per finding.
    let role: Role = object(&docs, "Role", "wgmesh-events");
    assert_eq!(role.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(
        grants(role.rules.as_deref().unwrap_or_default()),
        set(&[("", "events", "create")])
    );
    for (g, r, _) in cluster.iter() {
        assert!(
            r != "secrets" && !r.starts_with("serviceaccounts"),
            "{g}/{r}"
        );
    }

    // Both bindings give their role to the agent's service account, and to nothing else.
    let sa: ServiceAccount = object(&docs, "ServiceAccount", SERVICE_ACCOUNT);
    assert_eq!(sa.metadata.namespace.as_deref(), Some(NAMESPACE));
    let crb: ClusterRoleBinding = object(&docs, "ClusterRoleBinding", "wgmesh");
    let rb: RoleBinding = object(&docs, "RoleBinding", "wgmesh-events");
    for (role_ref, subjects) in [(&crb.role_ref, &crb.subjects), (&rb.role_ref, &rb.subjects)] {
        let subjects = subjects.as_deref().unwrap_or_default();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, SERVICE_ACCOUNT);
        assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
        assert_eq!(role_ref.api_group, "rbac.authorization.k8s.io");
    }
    assert_eq!(
        (crb.role_ref.kind.as_str(), crb.role_ref.name.as_str()),
        ("ClusterRole", "wgmesh")
    );
    assert_eq!(
        (rb.role_ref.kind.as_str(), rb.role_ref.name.as_str()),
        ("Role", "wgmesh-events")
    );
    let pod = pod_spec(&daemonset());
    assert_eq!(pod.service_account_name.as_deref(), Some(SERVICE_ACCOUNT));
}

// ---- DaemonSet ------------------------------------------------------------------

#[test]
fn the_agent_runs_on_every_linux_node_in_the_host_network() {
    let ds = daemonset();
    let spec = ds.spec.as_ref().unwrap();
    let pod = pod_spec(&ds);
    assert_eq!(pod.host_network, Some(true));
    assert_ne!(pod.host_pid, Some(true));
    assert_ne!(pod.host_ipc, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(
        pod.node_selector,
        Some(BTreeMap::from([(
            "kubernetes.io/os".to_string(),
            "linux".to_string()
        )]))
    );
    // Every taint tolerated: operator Exists with no key, for every effect (no effect
    // set) or for both NoSchedule and NoExecute.
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    let blanket: Vec<_> = tolerations
        .iter()
        .filter(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none())
        .collect();
    let tolerates = |effect: &str| {
        blanket
            .iter()
            .any(|t| t.effect.is_none() || t.effect.as_deref() == Some(effect))
    };
    assert!(
        tolerates("NoSchedule") && tolerates("NoExecute"),
        "{tolerations:?}"
    );
    assert!(pod.termination_grace_period_seconds.is_some());

    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)));

    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert!(!selector.is_empty());
    assert!(
        selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "the selector matches the template"
    );

    let agent = container(&pod, "agent");
    let env = agent.env.as_deref().unwrap_or_default();
    let node_name = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    let field = node_name
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("NODE_NAME from the downward API");
    assert_eq!(field.field_path, "spec.nodeName");
}

#[test]
fn only_the_sysctl_init_container_is_privileged() {
    let pod = pod_spec(&daemonset());
    let privileged: Vec<&str> = all_containers(&pod)
        .into_iter()
        .filter(|c| is_privileged(c))
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(privileged, ["sysctls"]);
    let inits: Vec<&str> = pod
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        inits,
        ["sysctls", "install-cni"],
        "the sysctl init container is an init container"
    );
    // It touches nothing but /proc/sys: no volumes, no environment but the CIDR, a
    // read-only root filesystem.
    let sysctls = container(&pod, "sysctls");
    assert_eq!(
        sysctls
            .security_context
            .as_ref()
            .and_then(|s| s.read_only_root_filesystem),
        Some(true)
    );
    assert!(
        sysctls
            .volume_mounts
            .as_deref()
            .unwrap_or_default()
            .is_empty()
    );
    assert!(sysctls.ports.is_none());
    let s = script(sysctls);
    for write in [
        "set_sysctl net/ipv4/ip_forward 1",
        "set_sysctl net/ipv4/conf/default/rp_filter 2",
        "set_sysctl net/ipv6/conf/all/forwarding 1",
    ] {
        assert!(s.contains(write), "sysctl script sets {write}");
    }
}

/// The calls src/k8s/events.rs makes on its `Api<Event>`: the Role must grant them.
#[test]
fn the_agent_only_creates_core_events() {
    let source = read("src/k8s/events.rs");
    let core_event =
        regex::Regex::new(r"use k8s_openapi::api::core::v1::\{[^}]*\bEvent\b").unwrap();
    assert!(core_event.is_match(&source) && source.contains("api: Api<Event>"));
    assert!(!source.contains("events.k8s.io") && !source.contains("api::events::"));
    let calls: BTreeSet<&str> = regex::Regex::new(r"self\.api\s*\.\s*(\w+)\(")
        .unwrap()
        .captures_iter(&source)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    assert_eq!(calls, BTreeSet::from(["create"]));
}

#[test]
fn the_agent_is_unprivileged_with_net_admin_only() {
    let pod = pod_spec(&daemonset());
    for c in all_containers(&pod) {
        if c.name == "sysctls" {
            continue;
        }
        let sc = c.security_context.as_ref().expect("securityContext");
        assert_eq!(sc.privileged, Some(false), "{}", c.name);
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
        let caps = sc.capabilities.as_ref().expect("capabilities");
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
        // The agent: TUN, rtnetlink, nftables, SO_MARK (see the manifest); nothing of
        // it needs CAP_NET_RAW. install-cni: owner permissions on /opt/cni/bin.
        let want: BTreeSet<&str> = match c.name.as_str() {
            "agent" => ["NET_ADMIN"].into(),
            _ => BTreeSet::new(),
        };
        assert_eq!(added, want, "{} capabilities", c.name);
    }
    let agent = container(&pod, "agent");
    let res = agent.resources.as_ref().expect("resources");
    let requests = res.requests.clone().unwrap_or_default();
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    assert!(
        res.limits
            .clone()
            .unwrap_or_default()
            .contains_key("memory")
    );
    assert_eq!(
        pod.security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref())
            .map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
}

#[test]
fn volumes_are_the_needed_host_paths_and_the_agent_cannot_write_cni_binaries() {
    let pod = pod_spec(&daemonset());
    let host_paths: BTreeMap<String, (String, Option<String>)> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            v.host_path
                .as_ref()
                .map(|h| (v.name.clone(), (h.path.clone(), h.type_.clone())))
        })
        .collect();
    let want: BTreeMap<String, (String, Option<String>)> = [
        ("dev-net-tun", "/dev/net/tun", "CharDevice"),
        ("cni-conf", "/etc/cni/net.d", "DirectoryOrCreate"),
        ("state", "/var/lib/wgmesh", "DirectoryOrCreate"),
        ("cni-bin", "/opt/cni/bin", "DirectoryOrCreate"),
    ]
    .into_iter()
    .map(|(n, p, t)| (n.to_string(), (p.to_string(), Some(t.to_string()))))
    .collect();
    assert_eq!(
        host_paths, want,
        "no other host paths (no /var/lib/cni, /lib/modules, xtables lock)"
    );

    let mounts = |c: &Container| -> BTreeMap<String, (String, bool)> {
        c.volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                (
                    m.name.clone(),
                    (m.mount_path.clone(), m.read_only.unwrap_or(false)),
                )
            })
            .collect()
    };
    let agent = container(&pod, "agent");
    let am = mounts(agent);
    assert_eq!(am["dev-net-tun"].0, "/dev/net/tun");
    assert_eq!(am["state"].0, "/var/lib/wgmesh");
    assert_eq!(am["cni-conf"], ("/etc/cni/net.d".to_string(), false));
    assert!(
        !am.contains_key("cni-bin"),
        "the agent has no /opt/cni/bin mount"
    );
    assert!(am.values().all(|(p, _)| !p.starts_with("/opt/cni")));
    // The directories the agent is told to use are the mounted ones.
    assert_eq!(
        arg_value(agent, "--state-dir").as_deref(),
        Some("/var/lib/wgmesh")
    );
    assert_eq!(
        arg_value(agent, "--cni-conf-dir").as_deref(),
        Some("/etc/cni/net.d")
    );
    // Only install-cni mounts the CNI binary directory.
    for c in all_containers(&pod) {
        assert_eq!(
            mounts(c).contains_key("cni-bin"),
            c.name == "install-cni",
            "{}",
            c.name
        );
    }
}

#[test]
fn probes_use_the_agent_health_endpoints() {
    let pod = pod_spec(&daemonset());
    let agent = container(&pod, "agent");
    let http = |probe: Option<&k8s_openapi::api::core::v1::Probe>| {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .expect("an httpGet probe");
        assert!(
            get.host.is_none(),
            "probe the pod IP (the node's, hostNetwork)"
        );
        (get.path.clone().unwrap_or_default(), get.port.clone())
    };
    let port = IntOrString::Int(METRICS_PORT);
    assert_eq!(
        http(agent.liveness_probe.as_ref()),
        ("/healthz".to_string(), port.clone())
    );
    assert_eq!(
        http(agent.readiness_probe.as_ref()),
        ("/readyz".to_string(), port.clone())
    );
    assert_eq!(
        http(agent.startup_probe.as_ref()),
        ("/healthz".to_string(), port)
    );
    let ports: BTreeMap<String, (i32, String)> = agent
        .ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                (p.container_port, p.protocol.clone().unwrap_or_default()),
            )
        })
        .collect();
    assert_eq!(ports["metrics"], (METRICS_PORT, "TCP".to_string()));
    // The WireGuard port declared is the one the agent listens on.
    let listen: i32 = arg_value(agent, "--listen-port")
        .expect("--listen-port")
        .parse()
        .unwrap();
    assert_eq!(ports["wireguard"], (listen, "UDP".to_string()));
    // The probes rely on --metrics-addr's default (0.0.0.0:9474) unless it is set.
    if let Some(addr) = arg_value(agent, "--metrics-addr") {
        assert!(addr.ends_with(&format!(":{METRICS_PORT}")), "{addr}");
    }
}

/// The agent's args with `$(VAR)` expanded as the kubelet does, from the container's
/// environment (literal values, the ConfigMap, the downward API).
fn expanded_agent_args() -> Vec<String> {
    let docs = manifest();
    let cm: ConfigMap = object(&docs, "ConfigMap", "wgmesh-config");
    let data = cm.data.unwrap_or_default();
    let pod = pod_spec(&object(&docs, "DaemonSet", "wgmesh"));
    let agent = container(&pod, "agent");
    let mut vars = BTreeMap::new();
    for e in agent.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => match (&from.config_map_key_ref, &from.field_ref) {
                (Some(r), _) => {
                    assert_eq!(r.name, "wgmesh-config");
                    data.get(&r.key)
                        .unwrap_or_else(|| panic!("ConfigMap has no key {}", r.key))
                        .clone()
                }
                (None, Some(_)) => "node-1".to_string(),
                _ => panic!("unsupported env source for {}", e.name),
            },
            _ => String::new(),
        };
        vars.insert(e.name.clone(), value);
    }
    let mut args = agent.command.clone().unwrap_or_default();
    assert_eq!(args, ["/usr/local/bin/wgmesh"]);
    args.remove(0);
    args.extend(agent.args.clone().unwrap_or_default());
    args.into_iter()
        .map(|a| {
            let mut a = a;
            for (k, v) in &vars {
                a = a.replace(&format!("$({k})"), v);
            }
            assert!(!a.contains("$("), "unresolved variable in {a}");
            a
        })
        .collect()
}

#[test]
fn the_agent_args_are_accepted_by_the_real_binary() {
    let args = expanded_agent_args();
    assert_eq!(args[0], "agent");
    let bin = env!("CARGO_BIN_EXE_wgmesh");
    // Every flag is one `wgmesh agent` documents...
    let help = run(Command::new(bin).args(["agent", "--help"])).stdout;
    let help = String::from_utf8(help).unwrap();
    for a in &args[1..] {
        let flag = a.split('=').next().unwrap();
        assert!(flag.starts_with("--"), "{a}: flags as --name=value");
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "`wgmesh agent --help` has no {flag}"
        );
    }
    // ... and the parser accepts every value: clap parses the arguments before it
    // reaches --help, so a bad value fails this run.
    let out = run(Command::new(bin)
        .args(&args)
        .arg("--help")
        .env("NODE_NAME", "node-1"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: wgmesh agent"));
    let bad = Command::new(bin)
        .args(["agent", "--cluster-cidr=10.244.0.0/33", "--help"])
        .output()
        .unwrap();
    assert!(
        !bad.status.success(),
        "the parser must reject a bad value before --help"
    );
}

// ---- init container scripts, run for real ----------------------------------------

fn write_executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn portmap_stub(supported: &str) -> String {
    format!(
        "#!/bin/sh\n[ \"$CNI_COMMAND\" = VERSION ] || exit 1\ncat >/dev/null\n\
         echo '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[{supported}]}}'\n"
    )
}

#[test]
fn install_cni_replaces_binaries_by_renaming_a_temporary_copy() {
    let pod = pod_spec(&daemonset());
    let s = script(container(&pod, "install-cni"));
    // The mechanism: a temporary name in the destination directory, then a rename.
    assert!(
        s.contains(r#"tmp="$dst/."#),
        "temporary file in the same directory"
    );
    assert!(
        s.contains(r#"mv -f "$tmp" "$dst/$1""#),
        "rename over the target"
    );
    assert!(s.contains("src=${WGMESH_CNI_SRC:-/opt/wgmesh/cni}"));
    assert!(s.contains("dst=${WGMESH_CNI_DST:-/host/opt/cni/bin}"));

    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    write_executable(&src.join("wgmesh-cni"), "#!/bin/sh\necho new wgmesh-cni\n");
    write_executable(&src.join("portmap"), &portmap_stub("\"1.0.0\""));
    let install = |dst_portmap: Option<&str>| {
        std::fs::write(dst.join(".wgmesh-cni.wgmesh-tmp"), "stale").unwrap();
        write_executable(&dst.join("wgmesh-cni"), "#!/bin/sh\necho old\n");
        let _ = std::fs::remove_file(dst.join("portmap"));
        if let Some(text) = dst_portmap {
            write_executable(&dst.join("portmap"), text);
        }
        let old_inode = std::fs::metadata(dst.join("wgmesh-cni")).unwrap().ino();
        let out = run(Command::new("sh")
            .args(["-c", &s])
            .env("WGMESH_CNI_SRC", &src)
            .env("WGMESH_CNI_DST", &dst));
        let meta = std::fs::metadata(dst.join("wgmesh-cni")).unwrap();
        assert_ne!(meta.ino(), old_inode, "replaced by rename, not rewritten");
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        assert_eq!(
            std::fs::read(dst.join("wgmesh-cni")).unwrap(),
            std::fs::read(src.join("wgmesh-cni")).unwrap()
        );
        let left: Vec<_> = std::fs::read_dir(&dst)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
        (
            String::from_utf8(out.stdout).unwrap(),
            std::fs::read_to_string(dst.join("portmap")).unwrap(),
        )
    };
    let ours = std::fs::read_to_string(src.join("portmap")).unwrap();
    // No portmap on the node: ours is installed.
    let (log, portmap) = install(None);
    assert_eq!(portmap, ours, "{log}");
    // A node portmap that speaks CNI 1.0.0 (say a newer one): kept.
    let newer = portmap_stub("\"0.4.0\",\"1.0.0\",\"1.1.0\"");
    let (log, portmap) = install(Some(&newer));
    assert_eq!(portmap, newer, "{log}");
    assert!(log.contains("kept"), "{log}");
    // One that does not (CNI plugins 0.8): replaced.
    let (log, portmap) = install(Some(&portmap_stub("\"0.3.1\",\"0.4.0\"")));
    assert_eq!(portmap, ours, "{log}");
    // One that does not run: replaced.
    let (log, portmap) = install(Some("#!/bin/sh\nexit 1\n"));
    assert_eq!(portmap, ours, "{log}");
}

#[test]
fn the_sysctl_script_sets_forwarding_and_loose_reverse_path_filtering() {
    let pod = pod_spec(&daemonset());
    let s = script(container(&pod, "sysctls"));
    let run_with = |cidr: &str, bridge_exists: bool| {
        let root = tempfile::tempdir().unwrap();
        let files = [
            ("net/ipv4/ip_forward", "0"),
            ("net/ipv4/conf/all/rp_filter", "1"),
            ("net/ipv4/conf/default/rp_filter", "1"),
            ("net/ipv4/conf/eth0/rp_filter", "1"),
            ("net/ipv6/conf/all/forwarding", "0"),
        ];
        let mut files: Vec<_> = files.to_vec();
        if bridge_exists {
            files.push(("net/ipv4/conf/wgmesh-br/rp_filter", "1"));
        }
        for (f, v) in &files {
            let p = root.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{v}\n")).unwrap();
        }
        let out = run(Command::new("sh")
            .args(["-c", &s])
            .env("WGMESH_SYSCTL_ROOT", root.path())
            .env("CLUSTER_CIDR", cidr));
        let values: BTreeMap<String, String> = files
            .iter()
            .map(|(f, _)| {
                let v = std::fs::read_to_string(root.path().join(f)).unwrap();
                (f.to_string(), v.trim().to_string())
            })
            .collect();
        let again = run(Command::new("sh")
            .args(["-c", &s])
            .env("WGMESH_SYSCTL_ROOT", root.path())
            .env("CLUSTER_CIDR", cidr));
        let again = String::from_utf8(again.stdout).unwrap();
        assert!(
            again.lines().all(|l| l.ends_with("(already)")),
            "a second run writes nothing:\n{again}"
        );
        (values, String::from_utf8(out.stdout).unwrap())
    };
    // IPv4 only: forwarding on, loose rp_filter inherited by new interfaces and set
    // on an existing bridge; conf/all and other interfaces untouched; no IPv6 change.
    let (v, log) = run_with("10.244.0.0/16", true);
    assert_eq!(v["net/ipv4/ip_forward"], "1", "{log}");
    assert_eq!(v["net/ipv4/conf/default/rp_filter"], "2");
    assert_eq!(v["net/ipv4/conf/wgmesh-br/rp_filter"], "2");
    assert_eq!(v["net/ipv4/conf/all/rp_filter"], "1");
    assert_eq!(v["net/ipv4/conf/eth0/rp_filter"], "1");
    assert_eq!(v["net/ipv6/conf/all/forwarding"], "0");
    // Dual-stack: IPv6 forwarding too.
    let (v, _) = run_with("10.244.0.0/16,fd00:10:244::/56", false);
    assert_eq!(v["net/ipv6/conf/all/forwarding"], "1");
    assert_eq!(v["net/ipv4/ip_forward"], "1");
}

// ---- admission policy -------------------------------------------------------------

#[test]
fn the_admission_policy_confines_the_agent_to_its_own_node() {
    let docs = manifest();
    let policy: ValidatingAdmissionPolicy = object(
        &docs,
        "ValidatingAdmissionPolicy",
        "wgmesh-node-restriction",
    );
    let binding: ValidatingAdmissionPolicyBinding = object(
        &docs,
        "ValidatingAdmissionPolicyBinding",
        "wgmesh-node-restriction",
    );
    let spec = policy.spec.as_ref().unwrap();
    let bspec = binding.spec.as_ref().unwrap();
    assert_eq!(
        bspec.policy_name.as_deref(),
        policy.metadata.name.as_deref()
    );
    assert_eq!(
        bspec.validation_actions.as_deref(),
        Some(&["Deny".to_string()][..])
    );
    assert!(bspec.param_ref.is_none() && bspec.match_resources.is_none());
    assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));

    // UPDATE of nodes and of nodes/status (which can change metadata too).
    let rules = spec
        .match_constraints
        .as_ref()
        .and_then(|m| m.resource_rules.clone())
        .unwrap_or_default();
    let mut matched = BTreeSet::new();
    for r in &rules {
        assert_eq!(r.api_groups.as_deref(), Some(&[String::new()][..]));
        assert_eq!(r.operations.as_deref(), Some(&["UPDATE".to_string()][..]));
        matched.extend(r.resources.iter().flatten().cloned());
    }
    assert_eq!(
        matched,
        BTreeSet::from(["nodes".to_string(), "nodes/status".to_string()])
    );

    // Only for the agent's service account.
    let conditions = spec.match_conditions.clone().unwrap_or_default();
    assert_eq!(conditions.len(), 1);
    assert_eq!(
        conditions[0].expression,
        format!(
            "request.userInfo.username == 'system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}'"
        )
    );

    let cel: String = spec
        .variables
        .iter()
        .flatten()
        .map(|v| v.expression.clone())
        .chain(
            spec.validations
                .iter()
                .flatten()
                .map(|v| v.expression.clone()),
        )
        .collect::<Vec<_>>()
        .join("\n");
    assert!(cel.contains("request.userInfo.extra['authentication.kubernetes.io/node-name']"));
    assert!(cel.contains("object.metadata.name"));
    assert!(cel.contains("oldObject.metadata.annotations"));
    assert!(cel.contains(&format!("'{NETWORK_UNAVAILABLE}'")));

    // The annotations the agent may change are exactly the ones it publishes
    // (src/model.rs), never the user-set ones.
    let allowed = spec
        .variables
        .iter()
        .flatten()
        .find(|v| v.name == "agentAnnotations")
        .expect("agentAnnotations variable");
    let quoted = regex::Regex::new(r"'([^']*)'").unwrap();
    let keys: BTreeSet<&str> = quoted
        .captures_iter(&allowed.expression)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            annotation::PUBLIC_KEY,
            annotation::ENDPOINT,
            annotation::ENDPOINTS,
            annotation::POD_CIDRS,
            annotation::PUBLIC_ENDPOINT,
            annotation::DISCOVERED_ENDPOINTS,
            annotation::NO_DIRECT_PATH,
        ])
    );
    assert!(keys.iter().all(|k| k.starts_with(annotation::PREFIX)));
    assert!(!keys.contains(annotation::FORCE_ENDPOINT));
    assert!(!keys.contains(annotation::PERSISTENT_KEEPALIVE));
    assert!(!keys.contains(annotation::ROTATE_KEY));
    for v in spec.validations.iter().flatten() {
        assert_eq!(v.reason.as_deref(), Some("Forbidden"));
        assert!(v.message.is_some(), "{}", v.expression);
    }
}

// ---- Peer CRD ---------------------------------------------------------------------

fn peer_crd() -> CustomResourceDefinition {
    object(&manifest(), "CustomResourceDefinition", "peers.wgmesh.io")
}

fn prop<'a>(s: &'a JSONSchemaProps, name: &str) -> &'a JSONSchemaProps {
    s.properties
        .as_ref()
        .and_then(|p| p.get(name))
        .unwrap_or_else(|| panic!("no property {name}"))
}

#[test]
fn the_peer_crd_requires_a_key_and_allowed_ips() {
    let crd = peer_crd();
    assert_eq!(crd.spec.group, "wgmesh.io");
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.kind, "Peer");
    assert_eq!(crd.spec.names.plural, "peers");
    assert_eq!(crd.spec.versions.len(), 1);
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    assert!(v.served && v.storage);
    assert!(v.subresources.as_ref().is_some_and(|s| s.status.is_some()));
    let columns: BTreeSet<&str> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.json_path.as_str())
        .collect();
    for c in [".spec.publicKey", ".spec.endpoint", ".spec.allowedIPs"] {
        assert!(columns.contains(c), "printer column {c}");
    }
    let root = v
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    let spec = prop(root, "spec");
    let required: BTreeSet<&str> = spec.required.iter().flatten().map(String::as_str).collect();
    assert_eq!(required, BTreeSet::from(["publicKey", "allowedIPs"]));
    let key = prop(spec, "publicKey");
    assert_eq!(key.pattern.as_deref(), Some(KEY_PATTERN));
    assert_eq!((key.min_length, key.max_length), (Some(44), Some(44)));
    let ips = prop(spec, "allowedIPs");
    assert_eq!(ips.type_.as_deref(), Some("array"));
    assert_eq!(ips.min_items, Some(1));
    let item = match ips.items.as_ref() {
        Some(JSONSchemaPropsOrArray::Schema(s)) => s,
        other => panic!("allowedIPs items: {other:?}"),
    };
    assert_eq!(item.format.as_deref(), Some("cidr"));
    let keepalive = prop(spec, "persistentKeepalive");
    assert_eq!(keepalive.type_.as_deref(), Some("integer"));
    assert_eq!(
        (keepalive.minimum, keepalive.maximum),
        (Some(0.0), Some(65535.0))
    );
    assert_eq!(prop(spec, "endpoint").type_.as_deref(), Some("string"));
}

fn key_regex() -> regex::Regex {
    regex::Regex::new(KEY_PATTERN).unwrap()
}

#[test]
fn the_key_pattern_accepts_real_public_keys() {
    let re = key_regex();
    let mut keys = vec![
        // `wg genkey | wg pubkey`, as in the example Peer.
        "EDM7l6k2KP26uw/BSjH52tw1cxaffmJ68TA5nIKAi2g=".to_string(),
    ];
    for _ in 0..64 {
        keys.push(PrivateKey::generate().unwrap().public_key().to_base64());
    }
    // A live `wg` when the machine has wireguard-tools (hack/install-deps.sh installs it).
    if let Ok(gen_key) = Command::new("wg").arg("genkey").output() {
        if gen_key.status.success() {
            let mut pubkey = Command::new("wg")
                .arg("pubkey")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            pubkey
                .stdin
                .take()
                .unwrap()
                .write_all(&gen_key.stdout)
                .unwrap();
            let out = pubkey.wait_with_output().unwrap();
            assert!(out.status.success());
            keys.push(String::from_utf8(out.stdout).unwrap().trim().to_string());
        }
    }
    for k in &keys {
        assert!(re.is_match(k), "{k}");
        assert!(PublicKey::from_base64(k).is_ok());
    }
    let example = yaml_docs(&read("manifests/examples/peer.yaml"));
    let example_key = example[0]["spec"]["publicKey"].as_str().unwrap();
    assert!(re.is_match(example_key));
}

#[test]
fn the_key_pattern_rejects_what_is_not_a_key() {
    let re = key_regex();
    let good = "EDM7l6k2KP26uw/BSjH52tw1cxaffmJ68TA5nIKAi2g=";
    let bad = [
        "",
        &good[..43],                                    // no padding
        &format!("{good}="),                            // 45 characters
        "EDM7l6k2KP26uw/BSjH52tw1cxaffmJ68TA5nIKAi2h=", // non-zero padding bits
        "EDM7l6k2KP26uw_BSjH52tw1cxaffmJ68TA5nIKAi2g=", // URL-safe alphabet
        "EDM7l6k2KP26uw/BSjH52tw1cxaffmJ68TA5nIKAi==",  // 31 bytes
        " EDM7l6k2KP26uw/BSjH52tw1cxaffmJ68TA5nIKAi2g=",
        "EDM7l6k2KP26uw/BSjH52tw1cxaffmJ68TA5nIKAi2g=\n",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", // hex
    ];
    for b in bad {
        assert!(!re.is_match(b), "{b:?} must not match");
    }
}

proptest! {
    /// The CRD's pattern accepts exactly what the agent's key parser accepts, for
    /// strings near the shape of a key (44 characters of the base64 alphabet and a
    /// few others).
    #[test]
    fn the_key_pattern_agrees_with_the_key_parser(
        s in "[A-Za-z0-9+/=_-]{42}[A-Za-z0-9+/=_-]{0,3}",
        bytes in proptest::array::uniform32(any::<u8>()),
    ) {
        let re = key_regex();
        prop_assert_eq!(re.is_match(&s), PublicKey::from_base64(&s).is_ok(), "{}", s);
        let key = PublicKey::from_bytes(bytes).to_base64();
        prop_assert!(re.is_match(&key));
    }
}

#[test]
fn the_endpoint_pattern_lets_through_only_endpoints_the_agent_parses() {
    let crd = peer_crd();
    let root = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .unwrap()
        .clone();
    let pattern = prop(prop(&root, "spec"), "endpoint")
        .pattern
        .clone()
        .unwrap();
    let re = regex::Regex::new(&pattern).unwrap();
    let accepted = [
        "192.0.2.10:51820",
        "[2001:db8::1]:51820",
        "198.51.100.7:1",
        "alice.example.com:51820",
        "vpn:65535",
        "Node-A.Example.COM.:443",
    ];
    for e in accepted {
        assert!(re.is_match(e), "{e} must match");
        assert!(Endpoint::parse(e, true).is_ok(), "{e} must parse");
    }
    let rejected = [
        "192.0.2.10",
        "alice.example.com",
        "alice.example.com:0",
        "alice.example.com:65536",
        "2001:db8::1:51820",
        "[2001:db8::1]",
        "-bad.example.com:1",
        "a b:1",
        "",
    ];
    for e in rejected {
        assert!(!re.is_match(e), "{e} must not match");
    }
}

// ---- kind helper and image ----------------------------------------------------------

#[test]
fn the_kind_config_disables_the_default_cni_and_matches_the_cluster_cidr() {
    let out = run(&mut kind_sh(&["render-config"]));
    let docs = yaml_docs(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(docs.len(), 1);
    let cfg = &docs[0];
    assert_eq!(cfg["kind"], "Cluster");
    assert_eq!(cfg["apiVersion"], "kind.x-k8s.io/v1alpha4");
    assert_eq!(cfg["networking"]["disableDefaultCNI"], true);
    assert_eq!(cfg["networking"]["podSubnet"], "10.244.0.0/16");
    let roles: Vec<&str> = cfg["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["control-plane", "worker", "worker"]);
    let cm: ConfigMap = object(&manifest(), "ConfigMap", "wgmesh-config");
    assert_eq!(
        cm.data.unwrap_or_default()["cluster-cidr"],
        "10.244.0.0/16",
        "the manifest's cluster CIDR is kind's podSubnet"
    );
}

#[test]
fn rendering_replaces_every_image_and_nothing_else() {
    let image = "registry.example.com/wgmesh:test-1@sha256:0123abcd";
    let out = run(&mut kind_sh(&["render-manifests", image]));
    let mut rendered = yaml_docs(&String::from_utf8(out.stdout).unwrap());
    let mut source = manifest();
    let images = |docs: &mut [Value], set: Option<&str>| {
        let mut seen = Vec::new();
        for d in docs.iter_mut().filter(|d| d["kind"] == "DaemonSet") {
            let spec = &mut d["spec"]["template"]["spec"];
            for list in ["initContainers", "containers"] {
                for c in spec[list].as_array_mut().unwrap() {
                    seen.push(c["image"].as_str().unwrap().to_string());
                    if let Some(s) = set {
                        c["image"] = Value::String(s.to_string());
                    }
                }
            }
        }
        seen
    };
    let rendered_images = images(&mut rendered, None);
    assert_eq!(rendered_images, vec![image.to_string(); 3]);
    images(&mut source, Some(image));
    assert_eq!(rendered, source);

    let bad = kind_sh(&["render-manifests", "x; rm -rf /"])
        .output()
        .unwrap();
    assert!(
        !bad.status.success(),
        "an invalid image reference is refused"
    );
}

#[test]
fn the_image_provides_what_the_manifest_runs() {
    let dockerfile = read("Dockerfile");
    for needed in [
        "--locked",
        "COPY --from=build /out/wgmesh /out/wgmesh-wg /usr/local/bin/",
        "COPY --from=build /out/wgmesh-cni /opt/wgmesh/cni/wgmesh-cni",
        "COPY --from=cni-plugins /usr/lib/cni/portmap /opt/wgmesh/cni/portmap",
        "nftables wireguard-tools",
        "ENTRYPOINT [\"/usr/local/bin/wgmesh\"]",
        "org.opencontainers.image.source",
    ] {
        assert!(dockerfile.contains(needed), "Dockerfile: {needed}");
    }
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("ARG ") && l.contains("_IMAGE="))
        .collect();
    assert_eq!(froms.len(), 2);
    for f in froms {
        let image = f.split('=').nth(1).unwrap();
        assert!(image.contains(':') && !image.ends_with(":latest"), "{f}");
        assert!(
            image.contains("bookworm"),
            "builder and runtime on Debian 12: {f}"
        );
    }
    let dockerignore = read(".dockerignore");
    assert!(dockerignore.lines().any(|l| l == "target"));
    assert!(dockerignore.lines().any(|l| l == ".git"));
}

// ---- schemas and CEL, by the validation script ----------------------------------------

#[test]
fn the_manifests_pass_schema_and_admission_policy_validation() {
    let out = run(Command::new("bash")
        .arg(repo().join("hack/validate-manifests.sh"))
        .current_dir(repo()));
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(text.contains("manifests valid"));
    assert!(text.contains("admission policy:") && text.contains(" 0 failed"));
}
