//! A real container runtime drives wgmesh-cni: podman 4 with its CNI backend runs two
//! containers from a local busybox rootfs on a wgmesh network (the conflist the agent
//! writes: wgmesh-cni, then the reference portmap). Needs root, podman and runc.
//!
//! podman runs inside a node network namespace of its own, so the bridge,
//! portmap's iptables rules and the pods' namespaces never touch the machine's root
//! namespace. These machines need `--runtime runc` (crun rejects the hybrid cgroup
//! setup) and explicit ulimits no higher than the current hard limits (podman's
//! defaults for root exceed them, and the sandbox has no CAP_SYS_RESOURCE to raise
//! them).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use wgmesh::cni::{NetworkConfig, render_conflist};
use wgmesh::netlink::NetNs;
use wgmesh_testkit::{TestNs, require_root, wait_until};

/// A podman installation private to one test: storage, run root, config, plugins.
struct Podman<'a> {
    node: &'a TestNs,
    dir: tempfile::TempDir,
}

impl<'a> Podman<'a> {
    fn new(node: &'a TestNs, conflist: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for sub in [
            "plugins",
            "netconf",
            "storage",
            "run",
            "rootfs/bin",
            "rootfs/tmp",
            "rootfs/www",
        ] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        std::os::unix::fs::symlink(support::PLUGIN, root.join("plugins/wgmesh-cni"))
            .expect("link plugin");
        std::os::unix::fs::symlink("/usr/lib/cni/portmap", root.join("plugins/portmap"))
            .expect("link portmap");
        std::fs::write(root.join("netconf/10-wgmesh.conflist"), conflist).expect("conflist");
        std::fs::write(
            root.join("containers.conf"),
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{p}/plugins\"]\nnetwork_config_dir = \"{p}/netconf\"\n",
                p = root.display()
            ),
        )
        .expect("containers.conf");
        // busybox-static needs no libraries: one file makes a usable rootfs.
        std::fs::copy("/bin/busybox", root.join("rootfs/bin/busybox"))
            .expect("copy busybox (install busybox-static)");
        for applet in ["sh", "sleep", "ping", "httpd", "ip"] {
            std::os::unix::fs::symlink("busybox", root.join("rootfs/bin").join(applet))
                .expect("applet link");
        }
        std::fs::write(root.join("rootfs/www/index.html"), "served-by-c2\n").expect("index");
        Podman { node, dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn podman(&self, args: &[&str]) -> Output {
        let root = self.root();
        // nsenter, not `ip netns exec`: the latter remounts /sys, hiding the cgroup
        // mounts runc needs.
        Command::new("nsenter")
            .arg(format!("--net={}", self.node.path()))
            .args(["--", "podman"])
            .arg("--root")
            .arg(root.join("storage"))
            .arg("--runroot")
            .arg(root.join("run"))
            .args(args)
            .env("CONTAINERS_CONF", root.join("containers.conf"))
            .output()
            .expect("run podman (install podman and runc)")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a detached container from the busybox rootfs on the wgmesh network.
    fn run(&self, name: &str, extra: &[&str], cmd: &[&str]) {
        let rootfs = self.root().join("rootfs");
        let rootfs = rootfs.to_string_lossy();
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--runtime",
            "runc",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--network",
            "wgmesh",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--rootfs", &rootfs]);
        args.extend_from_slice(cmd);
        self.ok(&args);
    }

    fn ipv4_of(&self, name: &str) -> String {
        let out = self.ok(&["exec", name, "ip", "-4", "-o", "addr", "show", "eth0"]);
        out.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("no IPv4 on eth0 of {name}: {out}"))
            .to_string()
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-f", "-a", "-t", "0"]);
    }
}

/// A minimal HTTP/1.0 GET from the calling thread's namespace; `None` on failure.
fn http_get(host: &str, port: u16) -> Option<String> {
    let addr: std::net::SocketAddr = format!("{host}:{port}").parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.starts_with("HTTP/1.").then_some(body)
}

fn leases(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn podman_containers_get_addresses_ping_each_other_and_publish_a_port() {
    require_root!();
    let node = TestNs::new("pmnode");
    wgmesh_testkit::guard::install(&node, &["10.244.30.0/24"], "wgmesh-br");
    let ipam: PathBuf = tempfile::tempdir().expect("tempdir").keep();
    let config = NetworkConfig::from_keys(
        "wgmesh",
        &serde_json::json!({"subnets": ["10.244.30.0/24"], "dataDir": ipam}),
    )
    .expect("config");
    let pm = Podman::new(&node, &render_conflist(&config, "1.0.0"));
    let leases_dir = ipam.join("wgmesh");

    pm.run("c1", &[], &["sleep", "300"]);
    pm.run(
        "c2",
        &["-p", "18080:8080"],
        &["httpd", "-f", "-p", "8080", "-h", "/www"],
    );
    let (ip1, ip2) = (pm.ipv4_of("c1"), pm.ipv4_of("c2"));
    assert_ne!(ip1, ip2);
    for ip in [&ip1, &ip2] {
        assert!(
            ip.starts_with("10.244.30."),
            "{ip} is from the node's subnet"
        );
    }
    let mut want = vec![ip1.clone(), ip2.clone()];
    want.sort();
    assert_eq!(
        leases(&leases_dir),
        want,
        "wgmesh-cni's IPAM holds both addresses"
    );

    let ping = pm.ok(&["exec", "c1", "ping", "-c", "1", "-W", "2", &ip2]);
    assert!(ping.contains("1 packets received"), "{ping}");

    // The published port goes through portmap, chained after wgmesh-cni: from the
    // node, its gateway address on the bridge and localhost both reach c2's server.
    let node_ns = NetNs::open(node.path()).expect("node netns");
    for host in ["10.244.30.1", "127.0.0.1"] {
        let body = wait_until(
            Duration::from_secs(10),
            "c2's httpd through the host port",
            || node_ns.run(|| http_get(host, 18080)).ok().flatten(),
        );
        assert!(body.ends_with("served-by-c2\n"), "{host}: {body}");
    }

    pm.ok(&["stop", "-t", "0", "c1", "c2"]);
    assert!(
        leases(&leases_dir).is_empty(),
        "stopping released the addresses: {:?}",
        leases(&leases_dir)
    );
    drop(pm);
    let _ = std::fs::remove_dir_all(&ipam);
}
