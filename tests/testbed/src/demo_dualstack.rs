//! `wgmesh-testbed demo dualstack`: the demo on a dual-stack cluster. Three nodes on an
//! IPv6-only underlay (2001:db8:0:<i>::2 behind the router), two pods per node with an
//! IPv4 and an IPv6 address each (10.244.<i>.0/24 and fd00:10:244:<i>::/64); each step
//! shows a property of wgmesh in both families with the real tools, and checks it. Test
//! infrastructure (part of the `wgmesh-testbed` binary).

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use wgmesh_testbed::addressing::{WIREGUARD_PORT, join};
use wgmesh_testbed::capture::UNDERLAY_FILTER;
use wgmesh_testbed::{Exec, Family, Layout, Pod, Testbed, annotation, transfer};

use crate::demo::{check, show, step};

/// The demo's layout.
const LAYOUT: Layout = Layout::DualStackOverIpv6;

/// Builds the cluster, runs the demo, and tears down (after Ctrl-C or SIGTERM with
/// `keep`).
pub fn main(keep: bool, stop: &AtomicBool) -> ExitCode {
    let headline = |tb: &Testbed| {
        format!(
            "wgmesh dual-stack demo (testbed {}): 3 nodes, {}, 2 pods each, built in {:.2} s",
            tb.run_id(),
            LAYOUT.describe(),
            tb.build_duration().as_secs_f64()
        )
    };
    crate::demo::three_nodes(LAYOUT, &headline, run, keep, stop)
}

/// `pod`'s address of `family` (every pod of the layout has both).
fn ip(pod: &Pod, family: Family) -> Result<IpAddr, String> {
    pod.ip_of(family)
        .ok_or_else(|| format!("pod {} has no {family} address", pod.name()))
}

/// Runs every step on `tb` with `pods[node][k]`; the first failed check ends it.
pub fn run(tb: &Testbed, pods: &[Vec<Pod>]) -> Result<(), String> {
    step(
        1,
        "Each agent published its node's key, IPv6 endpoint and pod CIDRs of both families",
    );
    let kubeconfig = tb.api().kubeconfig().to_string_lossy().into_owned();
    let nodes = std::process::Command::new("kubectl")
        .args(["--kubeconfig", &kubeconfig, "get", "nodes", "-o"])
        .arg("custom-columns=NAME:.metadata.name,INTERNAL-IP:.status.addresses[0].address,ENDPOINT:.metadata.annotations.wgmesh\\.io/endpoint,PODCIDRS:.metadata.annotations.wgmesh\\.io/pod-cidrs")
        .env("HOME", tb.dir())
        .output()
        .map_err(|e| format!("kubectl: {e}"))?;
    show(&String::from_utf8_lossy(&nodes.stdout));
    for node in tb.nodes() {
        let published = tb.node_annotations(node.index());
        let (endpoint, cidrs) = (node.expected_endpoint(), join(node.pod_cidrs()));
        check(
            published.get(annotation::ENDPOINT) == Some(&endpoint)
                && published.get(annotation::POD_CIDRS) == Some(&cidrs),
            &format!("{}: endpoint {endpoint}, pod CIDRs {cidrs}", node.name()),
        )?;
    }

    step(
        2,
        "wg show wgmesh0 on node0: a peer per other node at its IPv6 endpoint, allowed both of its pod CIDRs",
    );
    for n in 1..3 {
        pods[0][0].ping(ip(&pods[n][0], Family::Ipv6)?);
    }
    let wg = tb.node(0).exec_ok(&["wg", "show", "wgmesh0"]);
    show(&wg);
    check(
        wg.matches("latest handshake").count() == 2,
        "2 peers with handshakes",
    )?;
    for node in tb.nodes().skip(1) {
        check(
            wg.contains(&format!("endpoint: {}", node.expected_endpoint()))
                && wg.contains(&format!("allowed ips: {}", node.pod_cidrs()[0]))
                && wg.contains(&node.pod_cidrs()[1].to_string()),
            &format!("{}: endpoint and allowed IPs", node.name()),
        )?;
    }

    step(
        3,
        "Pods ping each other on one node and across nodes, over IPv4 and over IPv6",
    );
    for family in [Family::Ipv4, Family::Ipv6] {
        for (a, b) in [
            (&pods[0][0], &pods[0][1]),
            (&pods[0][0], &pods[1][0]),
            (&pods[1][1], &pods[2][0]),
            (&pods[2][1], &pods[0][1]),
        ] {
            let to = ip(b, family)?;
            check(
                a.ping(to),
                &format!(
                    "{family}: {} -> {} ({to}) on {}",
                    a.name(),
                    b.name(),
                    b.node_name()
                ),
            )?;
        }
    }

    step(
        4,
        "TCP across nodes keeps the sender pod's own address, in both families",
    );
    let (from, to) = (&pods[0][0], &pods[2][1]);
    for (family, port) in [(Family::Ipv4, 7000), (Family::Ipv6, 7001)] {
        let t = transfer::tcp(
            &to.host_netns_path(),
            SocketAddr::new(ip(to, family)?, port),
            &from.host_netns_path(),
            4 << 20,
        );
        say!(
            "   {family}: {} -> {}: 4 MiB, the server saw the client as {}",
            from.name(),
            to.name(),
            t.seen_source
        );
        check(t.intact, "content intact (SHA-256 matches)")?;
        check(
            t.seen_source.ip() == ip(from, family)?,
            "the receiver sees the sender pod's own address",
        )?;
    }

    step(
        5,
        "The router sees only WireGuard over IPv6 between node addresses, no pod address of either family",
    );
    let (pinged, capture) = tb.router().capture(UNDERLAY_FILTER, || {
        for family in [Family::Ipv4, Family::Ipv6] {
            pods[0][1].ping(ip(&pods[1][1], family)?);
            pods[1][0].ping(ip(&pods[2][0], family)?);
        }
        Ok::<(), String>(())
    });
    pinged?;
    let lines = capture.lines();
    show(&lines.iter().take(8).cloned().collect::<Vec<_>>().join("\n"));
    if lines.len() > 8 {
        say!("   | ... {} packets in all", lines.len());
    }
    let nodes: Vec<IpAddr> = tb.nodes().map(|n| n.internal_ip()).collect();
    let other = capture.packets_other_than_wireguard_between(&nodes, WIREGUARD_PORT);
    check(
        !capture.is_empty() && other.is_empty(),
        "every packet is WireGuard on UDP port 51820 between node addresses",
    )?;
    for family in [Family::Ipv4, Family::Ipv6] {
        let range = family.cluster_cidr();
        let drops = tb.router().pod_range_drops_of(family);
        check(
            capture.packets_with_addresses_in(range).is_empty() && drops == 0,
            &format!(
                "no {range} address captured; router drops of {family} pod-range packets: {drops}"
            ),
        )?;
    }

    step(
        6,
        "Pods reach the internet over IPv6, masqueraded to their node's IPv6 address",
    );
    let whoami = tb.internet().start_whoami_at(LAYOUT.internet_ip(), 8080);
    for (n, node_pods) in pods.iter().enumerate() {
        let pod = &node_pods[0];
        let seen = pod.exec_ok(&["curl", "-g", "-sS", "--max-time", "5", &whoami.url()]);
        let node_ip = tb.node(n).internal_ip().to_string();
        say!(
            "   {} ({}) -> {}: the server saw {}",
            pod.name(),
            ip(pod, Family::Ipv6)?,
            whoami.url(),
            seen.trim()
        );
        check(
            seen.trim() == node_ip,
            &format!("masqueraded to node{n}'s address {node_ip}"),
        )?;
    }
    say!(
        "   (IPv4 traffic to the internet has no way out: the nodes have no IPv4 address; pods' IPv4 is for the cluster)"
    );

    step(
        7,
        "MTU over an IPv6 underlay: the link's minus 80 (IPv6 40 + UDP 8 + WireGuard 32)",
    );
    let node0 = tb.node(0);
    let mtu = |place: &dyn Fn(&[&str]) -> String, dev: &str| -> Result<u32, String> {
        let out = place(&["ip", "-o", "link", "show", "dev", dev]);
        out.split_whitespace()
            .skip_while(|w| *w != "mtu")
            .nth(1)
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| format!("no MTU of {dev} in {out:?}"))
    };
    let on_node = |args: &[&str]| node0.exec_ok(args);
    let in_pod = |args: &[&str]| pods[0][0].exec_ok(args);
    let (link, wg0, pod) = (
        mtu(&on_node, "eth0")?,
        mtu(&on_node, "wgmesh0")?,
        mtu(&in_pod, "eth0")?,
    );
    say!("   node0 eth0 {link}, wgmesh0 {wg0}; pod-0-0 eth0 {pod}");
    check(
        wg0 == link - 80 && pod == wg0,
        "wgmesh0 and pods: the underlay's MTU minus 80",
    )?;

    step(8, "wgmesh status on node0 (API + the local device)");
    let wgmesh = wgmesh_testkit::workspace_bin("wgmesh")
        .to_string_lossy()
        .into_owned();
    let node_kubeconfig = tb.node_kubeconfig().to_string_lossy().into_owned();
    let status = node0.exec_ok(&[
        &wgmesh,
        "status",
        "--node-name",
        node0.name(),
        "--kubeconfig",
        &node_kubeconfig,
    ]);
    show(&status);
    check(status.lines().count() == 4, "3 nodes listed")?;
    Ok(())
}
