//! Tests against a real kernel WireGuard: the netlink adapter inside the test VM, the
//! backend choice, and a mixed mesh of a kernel node (the VM) and a userspace node
//! (the testbed). One VM for the whole binary (see `wgmesh_vm`); `hack/test.sh` runs
//! this binary with `cargo test`, in one process, not under nextest.

mod kernel;

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
