//! wgmesh-cni driven as a runtime drives it, against real namespaces, bridges and
//! veths. Needs root; every test builds its own node namespace and cleans up on drop.

mod support;

use std::collections::HashSet;

use serde_json::{Value, json};
use std::time::Duration;
use support::{Node, host_veth_of, ipv4_of};

use wgmesh_testkit::{TestNs, require_root, wait_until};

#[test]
fn two_pods_on_one_bridge_ping_each_other_and_the_gateway() {
    require_root!();
    let node = Node::new(&["10.244.1.0/24"]);
    let (a, b) = (TestNs::new("pod"), TestNs::new("pod"));
    let ra = node.add("pod-a", &a).expect_ok("ADD a");
    let rb = node.add("pod-b", &b).expect_ok("ADD b");
    let (ip_a, ip_b) = (ipv4_of(&ra), ipv4_of(&rb));
    assert_ne!(ip_a, ip_b);
    assert!(a.ping(&ip_b), "pod a cannot reach pod b at {ip_b}");
    assert!(b.ping(&ip_a), "pod b cannot reach pod a at {ip_a}");
    assert!(a.ping("10.244.1.1"), "pod a cannot reach its gateway");
    node.del("pod-a", Some(&a)).expect_ok("DEL a");
    node.del("pod-b", Some(&b)).expect_ok("DEL b");
}

#[test]
fn add_returns_a_full_result_matching_the_kernel_state() {
    require_root!();
    let node = Node::new(&["10.244.2.0/24", "fd00:10:244:2::/64"]);
    let pod = TestNs::new("pod");
    let r = node.add("result-1", &pod).expect_ok("ADD");

    assert_eq!(r["cniVersion"], "1.1.0");
    let ifaces = r["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifaces.len(), 3, "{r}");
    assert_eq!(ifaces[0]["name"], "wgmesh-br");
    assert_eq!(
        ifaces[0]["mac"], "0a:58:0a:f4:02:01",
        "bridge MAC derives from the gateway"
    );
    let host_veth = host_veth_of(&r);
    assert!(
        host_veth.starts_with("wgm") && host_veth.len() <= 15,
        "{host_veth}"
    );
    assert!(ifaces[1].get("sandbox").is_none());
    assert_eq!(ifaces[2]["name"], "eth0");
    assert_eq!(ifaces[2]["sandbox"], pod.path());

    // MACs and placement in the result are the kernel's.
    let pod_link = pod.ip(["-j", "link", "show", "eth0"]);
    let pod_link: Value = serde_json::from_str(&pod_link).unwrap();
    assert_eq!(ifaces[2]["mac"], pod_link[0]["address"]);
    assert_eq!(pod_link[0]["mtu"], 1420);
    let host_link: Value =
        serde_json::from_str(&node.ip(&["-j", "-d", "link", "show", &host_veth])).unwrap();
    assert_eq!(ifaces[1]["mac"], host_link[0]["address"]);
    assert_eq!(host_link[0]["master"], "wgmesh-br");
    assert_eq!(host_link[0]["mtu"], 1420);
    assert_eq!(
        host_link[0]["linkinfo"]["info_slave_data"]["hairpin"], true,
        "hairpin is on"
    );

    assert_eq!(
        r["ips"],
        json!([
            {"interface": 2, "address": "10.244.2.2/24", "gateway": "10.244.2.1"},
            {"interface": 2, "address": "fd00:10:244:2::2/64", "gateway": "fd00:10:244:2::1"},
        ])
    );
    assert_eq!(
        r["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.244.2.1"}, {"dst": "::/0", "gw": "fd00:10:244:2::1"}])
    );
    let routes = pod.ip(["route", "show", "default"]);
    assert!(
        routes.contains("default via 10.244.2.1 dev eth0"),
        "{routes}"
    );
    let routes6 = pod.ip(["-6", "route", "show", "default"]);
    assert!(
        routes6.contains("default via fd00:10:244:2::1 dev eth0"),
        "{routes6}"
    );
    assert!(pod.ping("fd00:10:244:2::1"), "IPv6 gateway unreachable");
    let fwd = node.ns.exec("cat", ["/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(
        String::from_utf8_lossy(&fwd.stdout).trim(),
        "1",
        "forwarding enabled"
    );
    assert_eq!(node.leases(), ["10.244.2.2", "fd00:10:244:2::2"]);
}

#[test]
fn a_version_1_0_0_config_is_served() {
    require_root!();
    let mut node = Node::new(&["10.244.3.0/24"]);
    node.conf["cniVersion"] = json!("1.0.0");
    let pod = TestNs::new("pod");
    let r = node.add("v100", &pod).expect_ok("ADD with 1.0.0");
    assert_eq!(r["cniVersion"], "1.0.0");
    node.del("v100", Some(&pod)).expect_ok("DEL with 1.0.0");
}

#[test]
fn del_twice_and_del_of_an_unknown_container_succeed() {
    require_root!();
    let node = Node::new(&["10.244.4.0/24"]);
    let pod = TestNs::new("pod");
    let r = node.add("twice", &pod).expect_ok("ADD");
    let veth = host_veth_of(&r);
    node.del("twice", Some(&pod)).expect_ok("first DEL");
    assert!(node.leases().is_empty());
    // Cut off at once: gone, or down and off the bridge until the reaper removes it.
    let shown = node.ns.exec("ip", ["-d", "link", "show", &veth]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        !shown.contains("master") && !shown.contains(",UP"),
        "{shown}"
    );
    wait_until(
        Duration::from_secs(5),
        "the host veth to be deleted",
        || (!node.has_link(&veth)).then_some(()),
    );
    wait_until(
        Duration::from_secs(5),
        "the pod's eth0 to be deleted",
        || (!pod.exec("ip", ["link", "show", "eth0"]).status.success()).then_some(()),
    );
    node.del("twice", Some(&pod)).expect_ok("second DEL");
    node.del("never-seen", None)
        .expect_ok("DEL of an unknown container");
}

#[test]
fn add_right_after_del_of_the_same_attachment_succeeds() {
    require_root!();
    let node = Node::new(&["10.244.16.0/24"]);
    let pod = TestNs::new("pod");
    node.add("again", &pod).expect_ok("ADD");
    node.del("again", Some(&pod)).expect_ok("DEL");
    // No wait: the veth of the DEL may still be waiting for its reaper.
    let r = node.add("again", &pod).expect_ok("ADD right after DEL");
    assert!(pod.ping("10.244.16.1"), "the re-added pod works: {r}");
    assert_eq!(node.leases().len(), 1);
}

#[test]
fn del_after_the_netns_vanished_releases_the_address() {
    require_root!();
    let node = Node::new(&["10.244.5.0/24"]);
    let pod = TestNs::new("pod");
    let path = pod.path();
    node.add("gone", &pod).expect_ok("ADD");
    assert_eq!(node.leases(), ["10.244.5.2"]);
    drop(pod);
    let r = node.cmd("DEL", "gone", Some(&path), "eth0", &node.conf);
    r.expect_ok("DEL with a vanished netns");
    assert!(
        node.leases().is_empty(),
        "address released: {:?}",
        node.leases()
    );
}

#[test]
fn check_passes_after_add_and_fails_when_the_pod_address_is_removed() {
    require_root!();
    let node = Node::new(&["10.244.6.0/24"]);
    let pod = TestNs::new("pod");
    let r = node.add("chk", &pod).expect_ok("ADD");
    node.check("chk", &pod, &r)
        .expect_ok("CHECK right after ADD");

    pod.ip(["addr", "del", "10.244.6.2/24", "dev", "eth0"]);
    let failed = node.check("chk", &pod, &r);
    assert_eq!(failed.code(), 104, "{failed:?}");
    assert!(
        failed.json()["details"]
            .as_str()
            .unwrap()
            .contains("10.244.6.2"),
        "{failed:?}"
    );

    let mut no_prev = node.conf.clone();
    no_prev.as_object_mut().unwrap().remove("prevResult");
    assert_eq!(
        node.cmd("CHECK", "chk", Some(&pod.path()), "eth0", &no_prev)
            .code(),
        7
    );
}

#[test]
fn check_fails_when_the_host_veth_left_the_bridge() {
    require_root!();
    let node = Node::new(&["10.244.7.0/24"]);
    let pod = TestNs::new("pod");
    let r = node.add("chk2", &pod).expect_ok("ADD");
    node.ip(&["link", "set", &host_veth_of(&r), "nomaster"]);
    let failed = node.check("chk2", &pod, &r);
    assert_eq!(failed.code(), 104, "{failed:?}");
}

#[test]
fn gc_releases_every_allocation_not_named_as_valid() {
    require_root!();
    let node = Node::new(&["10.244.8.0/24"]);
    let pods: Vec<TestNs> = (0..3).map(|_| TestNs::new("pod")).collect();
    let results: Vec<Value> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| node.add(&format!("gc-{i}"), p).expect_ok("ADD"))
        .collect();
    assert_eq!(node.leases().len(), 3);

    let mut conf = node.conf.clone();
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "gc-1", "ifname": "eth0"}]);
    node.invoke(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        &conf.to_string(),
    )
    .expect_ok("GC");
    assert_eq!(
        node.leases(),
        [ipv4_of(&results[1])],
        "only the valid attachment keeps its address"
    );
    assert!(
        !node.has_link(&host_veth_of(&results[0])),
        "stale host veth removed"
    );
    assert!(
        node.has_link(&host_veth_of(&results[1])),
        "valid host veth kept"
    );

    // The older spelling is understood too.
    let mut conf = node.conf.clone();
    conf["cni.dev/attachments"] = json!([]);
    node.invoke(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        &conf.to_string(),
    )
    .expect_ok("GC");
    assert!(node.leases().is_empty());
}

#[test]
fn status_succeeds_until_the_pool_is_exhausted() {
    require_root!();
    let mut node = Node::new(&["10.244.9.0/30"]);
    node.conf["name"] = json!("tiny");
    let status = |n: &Node| n.invoke(&[("CNI_COMMAND", "STATUS")], &n.conf.to_string());
    status(&node).expect_ok("STATUS on an empty pool");
    let pod = TestNs::new("pod");
    node.add("only", &pod)
        .expect_ok("ADD the one pod a /30 holds");
    assert_eq!(status(&node).code(), 50);
}

#[test]
fn version_lists_the_supported_spec_versions() {
    require_root!();
    let node = Node::new(&["10.244.10.0/24"]);
    let v = node
        .invoke(&[("CNI_COMMAND", "VERSION")], "{\"cniVersion\":\"1.1.0\"}")
        .expect_ok("VERSION");
    assert_eq!(v["cniVersion"], "1.1.0");
    assert_eq!(v["supportedVersions"], json!(["1.0.0", "1.1.0"]));
}

#[test]
fn errors_carry_the_spec_codes_and_change_nothing() {
    require_root!();
    let node = Node::new(&["10.244.11.0/24"]);
    let pod = TestNs::new("pod");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = node.conf.clone();
        f(&mut c);
        c
    };
    let add = |conf: &Value| node.cmd("ADD", "err", Some(&pod.path()), "eth0", conf);

    // 1: incompatible version.
    assert_eq!(add(&with(&|c| c["cniVersion"] = json!("9.9.9"))).code(), 1);
    assert_eq!(add(&with(&|c| c["cniVersion"] = json!("0.4.0"))).code(), 1);
    // 4: missing or invalid CNI_* variables.
    let no_id = node.invoke(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_NETNS", &pod.path()),
            ("CNI_IFNAME", "eth0"),
        ],
        &node.conf.to_string(),
    );
    assert_eq!(no_id.code(), 4);
    assert!(no_id.stdout.contains("CNI_CONTAINERID"), "{no_id:?}");
    let bad_ns = node.cmd("ADD", "err", Some("/proc/self/status"), "eth0", &node.conf);
    assert_eq!(bad_ns.code(), 4, "{bad_ns:?}");
    assert_eq!(
        node.cmd("ADD", "err", Some("/nonexistent/netns"), "eth0", &node.conf)
            .code(),
        4
    );
    // 6: undecodable configuration.
    let garbage = node.invoke(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "err"),
            ("CNI_NETNS", &pod.path()),
            ("CNI_IFNAME", "eth0"),
        ],
        "{not json",
    );
    assert_eq!(garbage.code(), 6);
    assert_eq!(add(&with(&|c| c["mtu"] = json!("big"))).code(), 6);
    // 7: invalid configuration.
    for (key, value) in [
        ("subnets", json!(["10.244.11.0/33"])),
        ("subnets", json!(["fd00::/64", "fd01::/64"])),
        ("subnets", json!([])),
        ("mtu", json!(0)),
        ("mtu", json!(65536)),
        ("bridge", json!("this-name-is-too-long")),
    ] {
        let r = add(&with(&|c| c[key] = value.clone()));
        assert_eq!(r.code(), 7, "{key}={value}: {r:?}");
        assert!(
            !r.json()["details"].as_str().unwrap_or("").is_empty(),
            "a reason is given"
        );
    }
    // Every refusal above left the node untouched.
    assert!(node.leases().is_empty());
    assert!(
        !node.has_link("wgmesh-br"),
        "no bridge created by a refused ADD"
    );
    assert!(!pod.exec("ip", ["link", "show", "eth0"]).status.success());

    // 101: CNI_IFNAME already exists in the pod; the existing lease is kept.
    node.add("err", &pod).expect_ok("first ADD");
    let again = node.add("err", &pod);
    assert_eq!(again.code(), 101, "{again:?}");
    assert_eq!(node.leases(), ["10.244.11.2"]);
    // Nothing was panicking: no Rust backtrace or panic text anywhere.
    for r in [&again, &garbage, &no_id] {
        assert!(!r.stderr.contains("panicked"), "{r:?}");
    }
}

#[test]
fn a_held_ipam_lock_makes_add_answer_try_again_later() {
    require_root!();
    let mut node = Node::new(&["10.244.12.0/24"]);
    node.conf["ipamLockTimeoutMs"] = json!(200);
    let pod = TestNs::new("pod");
    std::fs::create_dir_all(node.ipam_dir()).unwrap();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(node.ipam_dir().join("lock"))
        .unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let r = node.add("locked", &pod);
    assert_eq!(r.code(), 11, "{r:?}");
    assert!(
        !pod.exec("ip", ["link", "show", "eth0"]).status.success(),
        "nothing configured"
    );
    drop(held);
    node.add("locked", &pod)
        .expect_ok("ADD once the lock is free");
}

#[test]
fn a_failure_after_allocation_releases_the_address_and_removes_the_veth() {
    require_root!();
    let node = Node::new(&["10.244.13.0/24", "fd00:10:244:13::/64"]);
    let pod = TestNs::new("pod");
    // With IPv6 disabled in the pod, adding the IPv6 address fails after the veth and
    // both addresses exist: the plugin must roll all of it back.
    for key in [
        "net.ipv6.conf.all.disable_ipv6",
        "net.ipv6.conf.default.disable_ipv6",
    ] {
        let out = pod.exec("sysctl", ["-qw", &format!("{key}=1")]);
        assert!(out.status.success(), "{out:?}");
    }
    let r = node.add("rollback", &pod);
    assert_eq!(r.code(), 100, "{r:?}");
    assert!(node.leases().is_empty(), "leases left: {:?}", node.leases());
    let links = node.ip(&["-br", "link"]);
    let veths: Vec<&str> = links
        .lines()
        .filter(|l| l.starts_with("wgm") && !l.starts_with("wgmesh-br"))
        .collect();
    assert!(veths.is_empty(), "host veth left behind: {veths:?}");
    assert!(
        !pod.exec("ip", ["link", "show", "eth0"]).status.success(),
        "pod eth0 left behind"
    );
}

#[test]
fn forty_parallel_adds_get_forty_distinct_addresses() {
    require_root!();
    let node = Node::new(&["10.244.14.0/24"]);
    let pods: Vec<TestNs> = (0..40).map(|_| TestNs::new("pod")).collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let node = &node;
                s.spawn(move || node.add(&format!("par-{i}"), pod).expect_ok("parallel ADD"))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread"))
            .collect()
    });
    let addrs: HashSet<String> = results.iter().map(ipv4_of).collect();
    assert_eq!(addrs.len(), 40, "duplicates among {addrs:?}");
    assert_eq!(node.leases().len(), 40);
    // And they all work: the first pod reaches the last.
    assert!(pods[0].ping(&ipv4_of(&results[39])));
}

#[test]
fn a_slash_29_hands_out_exactly_five_addresses_then_errors() {
    require_root!();
    let node = Node::new(&["10.244.15.0/29"]);
    let pods: Vec<TestNs> = (0..6).map(|_| TestNs::new("pod")).collect();
    let mut got = Vec::new();
    for (i, pod) in pods.iter().take(5).enumerate() {
        got.push(ipv4_of(
            &node.add(&format!("s29-{i}"), pod).expect_ok("ADD"),
        ));
    }
    assert_eq!(
        got,
        [
            "10.244.15.2",
            "10.244.15.3",
            "10.244.15.4",
            "10.244.15.5",
            "10.244.15.6"
        ]
    );
    let sixth = node.add("s29-5", &pods[5]);
    assert_eq!(sixth.code(), 102, "{sixth:?}");
    assert!(
        sixth.json()["details"]
            .as_str()
            .unwrap()
            .contains("10.244.15.0/29"),
        "{sixth:?}"
    );
    assert!(
        !pods[5]
            .exec("ip", ["link", "show", "eth0"])
            .status
            .success()
    );
    // Releasing one makes it available again.
    node.del("s29-2", Some(&pods[2])).expect_ok("DEL");
    assert_eq!(
        ipv4_of(&node.add("s29-5", &pods[5]).expect_ok("ADD after release")),
        "10.244.15.4"
    );
}

#[test]
fn add_refuses_with_try_again_later_while_the_node_guard_is_missing_and_changes_nothing() {
    require_root!();
    // A rebooted node: the conflist survived on disk, the agent's guard did not.
    let node = Node::unguarded(&["10.244.17.0/24"]);
    let pod = TestNs::new("pod");
    let refused = node.add("guard-1", &pod);
    assert_eq!(refused.code(), 11, "{}", refused.stdout);
    let msg = refused.json()["msg"].as_str().unwrap_or("").to_string()
        + refused.json()["details"].as_str().unwrap_or("");
    for words in [
        "guard",
        "no unreachable route",
        "10.244.17.0/24",
        "wgmesh agent",
    ] {
        assert!(msg.contains(words), "{words:?} missing from {msg:?}");
    }
    assert!(!node.has_link("wgmesh-br"), "no bridge was created");
    assert!(node.leases().is_empty(), "no address was allocated");
    assert!(
        !pod.exec("ip", ["link", "show", "eth0"]).status.success(),
        "the pod got no interface"
    );
    let status = node.cmd("STATUS", "", None, "", &node.conf);
    assert_eq!(status.code(), 50, "STATUS says ADD cannot be served");

    // The agent puts the guard in place: the runtime's retry succeeds.
    wgmesh_testkit::guard::install(&node.ns, &["10.244.17.0/24"], "wgmesh-br");
    node.add("guard-1", &pod).expect_ok("ADD once guarded");
    node.cmd("STATUS", "", None, "", &node.conf)
        .expect_ok("STATUS once guarded");

    // A guard that loses its drop rule (the table deleted) is no guard.
    node.ns.exec("nft", ["delete", "table", "inet", "wgmesh"]);
    let other = TestNs::new("pod");
    let refused = node.add("guard-2", &other);
    assert_eq!(refused.code(), 11);
    assert!(
        refused.stdout.contains("no drop rule"),
        "{}",
        refused.stdout
    );
    assert_eq!(
        node.leases().len(),
        1,
        "only the first pod holds an address"
    );
    node.del("guard-1", Some(&pod))
        .expect_ok("DEL works without the guard");
    node.del("guard-2", Some(&other))
        .expect_ok("DEL of a refused ADD is fine");
}

/// The IPv6 addresses of an ADD result, without prefix.
fn ipv6_of(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter(|a| a.contains(':'))
        .filter_map(|a| a.split('/').next().map(String::from))
        .collect()
}

/// True when `ns` gets an answer to one ping6 of `addr` (DAD done within 5 s).
fn ping6(ns: &TestNs, addr: &str) -> bool {
    wait_until(Duration::from_secs(5), &format!("ping6 {addr}"), || {
        ns.exec("ping", ["-6", "-c", "1", "-W", "1", addr])
            .status
            .success()
            .then_some(())
    });
    true
}

#[test]
fn an_ipv6_only_node_serves_add_check_del_and_gc() {
    require_root!();
    let node = Node::new(&["fd00:10:244:20::/64"]);
    let (a, b) = (TestNs::new("pod"), TestNs::new("pod"));
    let ra = node.add("v6-a", &a).expect_ok("ADD a");
    let rb = node.add("v6-b", &b).expect_ok("ADD b");
    assert_eq!(ipv6_of(&ra), ["fd00:10:244:20::2"], "{ra}");
    assert_eq!(ra["ips"].as_array().map(Vec::len), Some(1), "no IPv4: {ra}");
    assert_eq!(ra["ips"][0]["gateway"], "fd00:10:244:20::1");
    assert_eq!(
        ra["routes"],
        json!([{"dst": "::/0", "gw": "fd00:10:244:20::1"}])
    );
    let bridge: Value =
        serde_json::from_str(&node.ip(&["-j", "link", "show", "wgmesh-br"])).unwrap();
    assert!(
        bridge[0]["address"].as_str().unwrap().starts_with("0a:58:"),
        "{bridge}"
    );
    assert!(ping6(&a, &ipv6_of(&rb)[0]), "pod to pod");
    assert!(ping6(&b, "fd00:10:244:20::1"), "pod to its gateway");
    node.check("v6-a", &a, &ra).expect_ok("CHECK");
    node.del("v6-b", Some(&b)).expect_ok("DEL");
    assert_eq!(node.leases(), ["fd00:10:244:20::2"]);
    let mut conf = node.conf.clone();
    conf["cni.dev/valid-attachments"] = json!([]);
    node.invoke(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        &conf.to_string(),
    )
    .expect_ok("GC");
    assert!(node.leases().is_empty(), "GC released the IPv6 lease");
}

#[test]
fn an_ipv6_slash_125_hands_out_exactly_six_addresses_then_errors() {
    require_root!();
    // Eight addresses: the subnet-router anycast (::0) and the gateway (::1) are never
    // handed out; IPv6 has no broadcast.
    let node = Node::new(&["fd00:10:244:21::/125"]);
    let pods: Vec<TestNs> = (0..7).map(|_| TestNs::new("pod")).collect();
    let got: Vec<String> = pods
        .iter()
        .take(6)
        .enumerate()
        .flat_map(|(i, p)| ipv6_of(&node.add(&format!("s125-{i}"), p).expect_ok("ADD")))
        .collect();
    let want: Vec<String> = (2..=7).map(|i| format!("fd00:10:244:21::{i}")).collect();
    assert_eq!(got, want);
    let seventh = node.add("s125-6", &pods[6]);
    assert_eq!(seventh.code(), 102, "{seventh:?}");
    assert!(
        seventh.stdout.contains("fd00:10:244:21::/125"),
        "{seventh:?}"
    );
    assert_eq!(node.leases().len(), 6);
}

#[test]
fn a_dual_stack_pod_gets_one_address_of_each_family_in_one_result() {
    require_root!();
    let node = Node::new(&["10.244.22.0/24", "fd00:10:244:22::/64"]);
    let pod = TestNs::new("pod");
    let r = node.add("ds", &pod).expect_ok("ADD");
    assert_eq!(ipv4_of(&r), "10.244.22.2");
    assert_eq!(ipv6_of(&r), ["fd00:10:244:22::2"]);
    let routes: Vec<&str> = r["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["dst"].as_str())
        .collect();
    assert_eq!(routes, ["0.0.0.0/0", "::/0"]);
    assert!(ping6(&pod, "fd00:10:244:22::1"));
    assert!(pod.ping("10.244.22.1"));
    // Refused configurations say why: two of a family, or no subnet at all.
    for (subnets, want) in [
        (json!(["fd00:1::/64", "fd00:2::/64"]), "more than one IPv6"),
        (json!([]), "\"subnets\" is required"),
    ] {
        let mut conf = node.conf.clone();
        conf["subnets"] = subnets;
        let other = TestNs::new("pod");
        let refused = node.cmd("ADD", "bad", Some(&other.path()), "eth0", &conf);
        assert_eq!(refused.code(), 7);
        let details = refused.json()["details"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(details.contains(want), "{details}");
    }
}
