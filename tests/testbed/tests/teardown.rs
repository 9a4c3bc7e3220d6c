//! Tearing a testbed down leaves nothing behind: no namespaces, processes or mounts,
//! also when the test using it panics. Needs root.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use wgmesh_testbed::Testbed;
use wgmesh_testkit::{require_root, run};

/// What a testbed created that must be gone after it.
#[derive(Debug)]
struct Footprint {
    run_id: String,
    netns: Vec<String>,
    pids: Vec<u32>,
    mount_namespaces: Vec<(u64, u64)>,
    /// Open namespace files: they keep the nodes' mount namespaces (not their processes)
    /// alive, so their inode numbers are not reused by another test's new namespaces.
    _pins: Vec<std::fs::File>,
    log_dir: PathBuf,
    api_dir: PathBuf,
}

fn ns_id(path: &str) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn footprint(tb: &Testbed) -> Footprint {
    let mut pids = Vec::new();
    let mut mount_namespaces = Vec::new();
    let mut pins = Vec::new();
    for node in tb.nodes() {
        pids.push(node.holder_pid());
        pids.extend(node.agent_pid());
        let pin = std::fs::File::open(format!("/proc/{}/ns/mnt", node.holder_pid()))
            .expect("a running holder");
        let meta = pin.metadata().expect("stat a namespace");
        mount_namespaces.push((meta.dev(), meta.ino()));
        pins.push(pin);
    }
    Footprint {
        run_id: tb.run_id().to_string(),
        netns: tb.netns_names(),
        pids,
        mount_namespaces,
        _pins: pins,
        log_dir: tb.dir().to_path_buf(),
        api_dir: tb.api().root.path().to_path_buf(),
    }
}

/// Processes (pid and command line) inside any of `mount_namespaces`.
fn processes_in(mount_namespaces: &[(u64, u64)]) -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            ns_id(&format!("/proc/{pid}/ns/mnt")).is_some_and(|id| mount_namespaces.contains(&id))
        })
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            (pid, String::from_utf8_lossy(&cmdline).replace('\0', " "))
        })
        .collect()
}

fn assert_nothing_left(fp: &Footprint) {
    let listed = run("ip", ["netns", "list"]);
    for name in &fp.netns {
        assert!(!listed.contains(name.as_str()), "{name} is left:\n{listed}");
    }
    assert!(!listed.contains(&fp.run_id), "{listed}");
    for pid in &fp.pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || ns_id(&format!("/proc/{pid}/ns/mnt"))
                    .is_none_or(|id| !fp.mount_namespaces.contains(&id)),
            "process {pid} of the testbed is still running"
        );
    }
    let inside = processes_in(&fp.mount_namespaces);
    assert!(inside.is_empty(), "processes {inside:?} are left in a node");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(&fp.run_id),
        "mounts of {} are left on the host:\n{mounts}",
        fp.run_id
    );
    assert!(!fp.api_dir.exists(), "{} is left", fp.api_dir.display());
    assert!(!Path::new("/etc/cni/net.d/10-wgmesh.conflist").exists());
    assert!(!Path::new("/run/wireguard/wgmesh0.sock").exists());
}

#[test]
fn teardown_leaves_no_namespaces_processes_or_mounts_behind() {
    require_root!();
    let tb = Testbed::builder().nodes(3).build();
    let pod = tb.add_pod(1, "doomed");
    let _other = tb.add_pod(2, "forgotten");
    let fp = footprint(&tb);
    assert_eq!(fp.netns.len(), 6, "router, internet, api and 3 nodes");
    // The long-lived ones; an agent's short-lived children (nft) may come and go.
    let inside: Vec<(u32, String)> = processes_in(&fp.mount_namespaces)
        .into_iter()
        .filter(|(_, cmd)| cmd.starts_with("sleep infinity") || cmd.contains(" agent "))
        .collect();
    assert_eq!(
        inside.len(),
        6,
        "a holder and an agent per node: {inside:#?}"
    );
    tb.delete_pod(pod);
    // `forgotten` is never deleted: it goes with its node.
    drop(tb);
    assert_nothing_left(&fp);
    assert!(
        !fp.log_dir.exists(),
        "the logs of a passing test are removed"
    );
}

#[test]
fn a_panicking_test_still_tears_everything_down_and_keeps_the_logs() {
    require_root!();
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::panic::catch_unwind(|| {
        let tb = Testbed::builder().nodes(2).build();
        let _pod = tb.add_pod(0, "bystander");
        tx.send(footprint(&tb)).expect("the test thread listens");
        panic!("a test failing while its testbed runs");
    });
    assert!(outcome.is_err());
    let fp = rx.recv().expect("the footprint was sent");
    assert_nothing_left(&fp);
    let log = std::fs::read_to_string(fp.log_dir.join("node0-agent.log"))
        .expect("the agents' logs are kept after a panic");
    assert!(log.contains("starting the agent"), "{log}");
    std::fs::remove_dir_all(&fp.log_dir).expect("remove the kept logs");
}
