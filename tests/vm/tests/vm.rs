//! Tests against a real kernel WireGuard: the netlink adapter inside the test VM, the
//! backend choice, and a mixed mesh of a kernel node (the VM) and userspace nodes (the
//! testbed), with the VM node switching backends and losing its device. One VM for the
//! whole binary (see `wgmesh_vm`); `hack/test.sh` runs this binary with `cargo test`,
//! in one process, not under nextest.

mod kernel;
mod mesh;

use std::time::Duration;

use wgmesh_testbed::Exec;
use wgmesh_vm::Vm;

#[test]
fn the_vm_runs_debian_s_kernel_with_wireguard_and_this_machine_s_binaries() {
    let vm = Vm::shared();
    let uname = vm.exec_ok(&["uname", "-r"]);
    assert_eq!(uname.trim(), vm.kernel_release());
    assert_ne!(
        uname.trim(),
        wgmesh_testkit::run("uname", ["-r"]).trim(),
        "the VM runs its own kernel"
    );
    let out = vm.run(
        &["sh", "-c", "cat; echo \"in=$WGMESH_VM\""],
        "hello\n",
        Duration::from_secs(30),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\nin=1\n");
    assert!(!vm.exec(&["false"]).status.success());
    eprintln!("FIGURE vm_boot_seconds {:.1}", vm.boot_time().as_secs_f64());
}

/// The start of an agent with `--wireguard-backend auto` (it then fails: no API
/// server), run by `run` as a shell script: what it logged.
fn agent_start_log(run: impl FnOnce(&str) -> std::process::Output, wgmesh: &str) -> String {
    let script = format!(
        "d=$(mktemp -d) && RUST_LOG=info NO_COLOR=1 timeout 30 {wgmesh} agent --node-name probe \
         --kubeconfig \"$d/none\" --state-dir \"$d/state\" --cni-conf-dir \"$d/cni\" \
         --metrics-addr 127.0.0.1:0 --wireguard-backend auto 2>&1; rm -rf \"$d\""
    );
    let out = run(&script);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn auto_picks_the_kernel_in_the_vm_and_userspace_on_this_machine_and_says_why() {
    let wgmesh = wgmesh_testkit::workspace_bin("wgmesh");
    let wgmesh = wgmesh.to_string_lossy();
    let vm = Vm::shared();
    // In a network namespace of its own: the agent installs its guard (nftables,
    // routes) before it fails, which must not touch the VM node of the mesh tests.
    let inside = agent_start_log(
        |s| {
            vm.run(
                &["unshare", "--net", "sh", "-c", s],
                "",
                Duration::from_secs(120),
            )
        },
        &wgmesh,
    );
    assert!(
        inside.contains("WireGuard backend chosen") && inside.contains("backend=\"kernel\""),
        "in the VM:\n{inside}"
    );
    assert!(inside.contains("auto:"), "the reason is logged:\n{inside}");
    let ns = wgmesh_testkit::TestNs::new("wgau");
    let outside = agent_start_log(|s| ns.exec("sh", ["-c", s]), &wgmesh);
    assert!(
        outside.contains("WireGuard backend chosen") && outside.contains("backend=\"userspace\""),
        "on this machine (no WireGuard module):\n{outside}"
    );
    assert!(
        outside.contains("cannot create a WireGuard link"),
        "the reason is logged:\n{outside}"
    );
}
