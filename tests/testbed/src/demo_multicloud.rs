//! `wgmesh-testbed demo multicloud`: the multi-cloud demo. Two clouds and two home
//! networks behind NATs, on an internet that drops private addresses, one pod per node;
//! each step shows what wgmesh does there with the real tools, and checks it. Every
//! step runs even when an earlier one failed, and the end says which failed. Test
//! infrastructure (part of the `wgmesh-testbed` binary).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use wgmesh_testbed::addressing::cluster_cidr;
use wgmesh_testbed::multicloud::{self, MultiCloud, REGION_LABEL};
use wgmesh_testbed::{Capture, Exec, Pod, annotation, connectivity_matrix, wait_for_connectivity};

use crate::demo::{check, show, step};

/// How long step 3 waits for every pair (issue #14 asks for 15 s from the agents'
/// start; pods come a little later).
const CONNECTIVITY_WAIT: Duration = Duration::from_secs(15);
/// Everything between sites but ARP and the agents' API traffic.
const BETWEEN_SITES: &str = "not arp and not port 6443";

/// Builds the testbed, runs the demo, and tears down (after Ctrl-C or SIGTERM with
/// `keep`).
pub fn main(keep: bool, stop: &AtomicBool) -> ExitCode {
    let mc = MultiCloud::build();
    let pods = mc.add_pod_per_node("pod");
    say!(
        "wgmesh multi-cloud demo (testbed {}): 5 nodes on 4 sites behind NATs, one pod each, built in {:.2} s\n",
        mc.run_id(),
        mc.build_duration().as_secs_f64()
    );
    for line in multicloud::PICTURE.lines() {
        say!("  {line}");
    }
    let results = run(&mc, &pods);
    say!("\n\x1b[1mSummary\x1b[0m");
    let mut failed = 0;
    for (n, what, result) in &results {
        match result {
            Ok(()) => say!("   \x1b[32mOK\x1b[0m     {n}. {what}"),
            Err(why) => {
                failed += 1;
                say!("   \x1b[31mFAILED\x1b[0m {n}. {what}: {why}");
            }
        }
    }
    if failed == 0 {
        say!("\n\x1b[1;32mAll checks passed.\x1b[0m");
    } else {
        say!(
            "\n\x1b[1;31mFAILED: {failed} of {} steps\x1b[0m\n{}",
            results.len(),
            mc.counters()
        );
        if !keep {
            say!("(with --keep the testbed stays up to look around)");
        }
    }
    if keep {
        print_testbed(&mc, &pods);
        crate::demo::keep_until(stop);
    }
    say!("Tearing down.");
    drop(mc);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

type Step = fn(&MultiCloud, &[Pod]) -> Result<(), String>;

/// Every step, numbered, with its result.
pub fn run(mc: &MultiCloud, pods: &[Pod]) -> Vec<(u32, &'static str, Result<(), String>)> {
    let steps: [(&str, Step); 6] = [
        (
            "Each agent published its node's key, endpoint and pod CIDR; Node objects carry the site and addresses",
            published,
        ),
        (
            "The NATs are real: what the internet sees of a pod on each node",
            nats,
        ),
        (
            "Every ordered pod pair reaches each other (20 pairs)",
            pairs,
        ),
        (
            "Between sites the internet carries only WireGuard, never a pod address",
            only_wireguard,
        ),
        (
            "Pod traffic between a1 and a2 stays on cloud-a's LAN, between the VPC addresses",
            stays_on_the_lan,
        ),
        ("wgmesh status on h1 (API + the local device)", status),
    ];
    steps
        .into_iter()
        .zip(1..)
        .map(|((what, f), n)| {
            step(n, what);
            let result = f(mc, pods);
            if let Err(why) = &result {
                say!("   \x1b[31mFAILED\x1b[0m {why}");
            }
            (n, what, result)
        })
        .collect()
}

fn published(mc: &MultiCloud, _: &[Pod]) -> Result<(), String> {
    let kubeconfig = mc.api().kubeconfig().to_string_lossy().into_owned();
    let columns = [
        "NAME:.metadata.name",
        "REGION:.metadata.labels.topology\\.kubernetes\\.io/region",
        "INTERNAL-IP:.status.addresses[?(@.type==\"InternalIP\")].address",
        "EXTERNAL-IP:.status.addresses[?(@.type==\"ExternalIP\")].address",
        "PODCIDR:.spec.podCIDR",
        "ENDPOINT:.metadata.annotations.wgmesh\\.io/endpoint",
        "PUBLISHED-CIDRS:.metadata.annotations.wgmesh\\.io/pod-cidrs",
    ];
    let out = std::process::Command::new("kubectl")
        .args(["--kubeconfig", &kubeconfig, "get", "nodes", "-o"])
        .arg(format!("custom-columns={}", columns.join(",")))
        .env("HOME", mc.dir())
        .output()
        .map_err(|e| format!("kubectl: {e}"))?;
    show(&String::from_utf8_lossy(&out.stdout));
    check(out.status.success(), "kubectl get nodes")?;
    let objects = mc.node_objects();
    for node in mc.nodes() {
        let name = node.name();
        let a = mc.node_annotations(name);
        check(
            a.contains_key(annotation::PUBLIC_KEY)
                && a.get(annotation::ENDPOINT) == Some(&node.expected_endpoint()),
            &format!(
                "{name} published its key and endpoint {}",
                node.expected_endpoint()
            ),
        )?;
        let region = objects
            .get(name)
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get(REGION_LABEL).cloned());
        check(
            region.as_deref() == Some(mc.region_of(name)),
            &format!("{name} is in {}", mc.region_of(name)),
        )?;
    }
    Ok(())
}

fn nats(mc: &MultiCloud, pods: &[Pod]) -> Result<(), String> {
    let whoami = mc.internet().start_whoami(8080);
    for pod in pods {
        let node = pod.node_name();
        let out = pod.exec(&["curl", "-sS", "--max-time", "5", &whoami.url()]);
        let seen = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let gateway = mc.gateway_of(node);
        say!(
            "   {} ({}) on {node} ({}) -> {}: seen as {seen} ({} {})",
            pod.name(),
            pod.ip(),
            mc.node(node).underlay_ip(),
            whoami.url(),
            gateway.name(),
            gateway.nat()
        );
        check(
            seen == mc.public_ip(node).to_string(),
            &format!("{node}'s pod leaves as {}", mc.public_ip(node)),
        )?;
    }
    Ok(())
}

fn pairs(mc: &MultiCloud, pods: &[Pod]) -> Result<(), String> {
    let connected = wait_for_connectivity(pods, CONNECTIVITY_WAIT);
    let matrix = connectivity_matrix(pods);
    show(&matrix.to_string());
    match (connected, mc.agents_started()) {
        (Ok(at), Some(started)) if matrix.all_ok() => {
            say!(
                "   every pair answered {:.1} s after the agents started",
                at.duration_since(started).as_secs_f64()
            );
            check(true, "20 of 20 pod pairs")
        }
        _ => {
            let failed: Vec<String> = matrix
                .failed()
                .iter()
                .map(|(f, t)| format!("{f}→{t}"))
                .collect();
            Err(format!(
                "{} of {} pod pairs (no answer: {}); crossing NATs needs discovered endpoints, hole punching and relays (issue #14)",
                matrix.ok_count(),
                matrix.len(),
                failed.join(" ")
            ))
        }
    }
}

fn only_wireguard(mc: &MultiCloud, pods: &[Pod]) -> Result<(), String> {
    let router = mc.internet_router();
    let (private_before, pods_before) = (router.private_drops(), router.pod_range_drops());
    let links = mc.internet_links();
    let (_, capture) = mc.capture(&links, BETWEEN_SITES, || connectivity_matrix(pods));
    show_some(&capture, 8);
    let wireguard = capture.packets.iter().filter(|p| p.is_wireguard()).count();
    let with_pods = capture.packets_with_addresses_in(cluster_cidr()).len();
    say!(
        "   on {}: {} packets, {wireguard} of them WireGuard, {with_pods} with a pod address",
        links.join(" "),
        capture.len()
    );
    say!(
        "   the internet router dropped {} packets to or from private addresses meanwhile ({} of the pod range)",
        router.private_drops() - private_before,
        router.pod_range_drops() - pods_before
    );
    let to_private = capture
        .packets
        .iter()
        .filter(|p| p.ipv4_addresses().iter().take(2).any(Ipv4Addr::is_private))
        .count();
    if capture.is_empty() {
        return Err(
            "nothing crossed the internet while the pods pinged each other: no pair across sites is connected"
                .into(),
        );
    }
    check(wireguard == capture.len(), "every packet is WireGuard")?;
    check(
        with_pods == 0 && router.pod_range_drops() == pods_before,
        "no pod address on the internet",
    )?;
    check(
        to_private == 0,
        &format!(
            "every packet between public addresses ({to_private} sent to a private address of another site, dropped by the internet)"
        ),
    )
}

fn stays_on_the_lan(mc: &MultiCloud, pods: &[Pod]) -> Result<(), String> {
    let pod = |node: &str| {
        pods.iter()
            .find(|p| p.node_name() == node)
            .ok_or_else(|| format!("no pod on {node}"))
    };
    let (a1, a2) = (pod("a1")?, pod("a2")?);
    let gw = mc.gateway("cloud-a");
    let hairpins = gw.hairpin_drops();
    let mut links = mc.lan_links("cloud-a");
    links.push(format!("{}/wan", gw.name()));
    let ((there, back), capture) = mc.capture(&links, BETWEEN_SITES, || {
        (a1.ping(a2.ip()), a2.ping(a1.ip()))
    });
    let a_addresses: BTreeSet<Ipv4Addr> = ["a1", "a2"]
        .iter()
        .flat_map(|n| {
            let node = mc.node(n);
            [Some(node.underlay_ip()), node.external_ip()]
        })
        .flatten()
        .collect();
    let between_a1_and_a2 = |p: &&wgmesh_testbed::Packet| {
        let addresses = p.ipv4_addresses();
        addresses.len() >= 2 && addresses[..2].iter().all(|a| a_addresses.contains(a))
    };
    let on_lan: Vec<_> = capture
        .packets
        .iter()
        .filter(|p| p.interface != links[links.len() - 1])
        .filter(between_a1_and_a2)
        .collect();
    let on_wan = capture
        .packets
        .iter()
        .filter(|p| p.interface == links[links.len() - 1])
        .filter(between_a1_and_a2)
        .count();
    for p in on_lan.iter().take(4) {
        say!("   | {p}");
    }
    let (ip1, ip2) = (
        IpAddr::V4(mc.node("a1").underlay_ip()),
        IpAddr::V4(mc.node("a2").underlay_ip()),
    );
    check(there && back, "pod-a1 and pod-a2 ping each other")?;
    check(
        !on_lan.is_empty()
            && on_lan.iter().all(|p| {
                p.is_wireguard()
                    && p.ipv4_addresses()[..2]
                        .iter()
                        .all(|a| [ip1, ip2].contains(&IpAddr::V4(*a)))
            }),
        &format!("on cloud-a's LAN: WireGuard between {ip1} and {ip2} only"),
    )?;
    check(
        on_wan == 0 && gw.hairpin_drops() == hairpins,
        "nothing between a1 and a2 went to gw-a's public side (not even to be dropped as a hairpin)",
    )
}

fn status(mc: &MultiCloud, _: &[Pod]) -> Result<(), String> {
    let wgmesh = wgmesh_testkit::workspace_bin("wgmesh")
        .to_string_lossy()
        .into_owned();
    let kubeconfig = mc.node_kubeconfig().to_string_lossy().into_owned();
    let node = mc.node("h1");
    let out = node.exec(&[
        &wgmesh,
        "status",
        "--node-name",
        node.name(),
        "--kubeconfig",
        &kubeconfig,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    show(&text);
    check(out.status.success(), "wgmesh status ran")?;
    let missing: Vec<&str> = mc
        .nodes()
        .map(|n| n.name())
        .filter(|n| !text.contains(n))
        .collect();
    check(
        missing.is_empty(),
        &format!("every node listed (missing: {missing:?})"),
    )
}

/// The first `n` packets of `capture`, and how many there were.
fn show_some(capture: &Capture, n: usize) {
    let lines = capture.lines();
    show(&lines.iter().take(n).cloned().collect::<Vec<_>>().join("\n"));
    if lines.len() > n {
        say!("   | ... {} packets in all", lines.len());
    }
}

fn print_testbed(mc: &MultiCloud, pods: &[Pod]) {
    say!(
        "\nwgmesh multi-cloud testbed {}; logs in {}",
        mc.run_id(),
        mc.dir().display()
    );
    say!(
        "API server: KUBECONFIG={} kubectl get nodes -o wide",
        mc.api().kubeconfig().display()
    );
    say!(
        "\n{:<5} {:<8} {:<12} {:<15} ENTER",
        "NODE",
        "SITE",
        "PRIVATE",
        "PUBLIC"
    );
    for node in mc.nodes() {
        let name = node.name();
        say!(
            "{name:<5} {:<8} {:<12} {:<15} {}",
            mc.region_of(name),
            node.underlay_ip().to_string(),
            mc.public_ip(name).to_string(),
            node.enter_command()
        );
    }
    say!("\n{:<10} {:<5} {:<12} ENTER", "POD", "NODE", "IP");
    for pod in pods {
        say!(
            "{:<10} {:<5} {:<12} {}",
            pod.name(),
            pod.node_name(),
            pod.ip().to_string(),
            pod.enter_command()
        );
    }
    say!();
    for gw in mc.gateways() {
        say!(
            "{:<6} {:<26} {}   (nft list table ip {})",
            gw.name(),
            gw.nat().to_string(),
            gw.enter_command(),
            multicloud::gateway::NFT_TABLE
        );
    }
    say!(
        "router {:<26} {}   (drops private addresses: nft list table ip wgmesh_testbed)",
        "the internet",
        mc.internet_router().enter_command()
    );
    say!(
        "internet host {}: {}",
        mc.internet().ip(),
        mc.internet().enter_command()
    );
    say!("\nCapture links: {}", mc.links().join(" "));
}
