//! The node guard wgmesh-cni insists on before it wires a pod (test fixture): the
//! agent's unreachable routes (protocol 87) and its nftables drop rule, put in place by
//! hand in a test's node namespace, shaped as the agent shapes them.

use crate::TestNs;

/// Installs in `node` an unreachable wgmesh route for each of `subnets` and the table
/// `inet wgmesh` whose `egress_guard` chain drops them on any interface but loopback,
/// `bridge` and `wgmesh0`.
pub fn install(node: &TestNs, subnets: &[&str], bridge: &str) {
    let mut rules = String::new();
    for subnet in subnets {
        node.ip([
            "route",
            "add",
            "unreachable",
            subnet,
            "proto",
            "87",
            "metric",
            "4096",
        ]);
        let family = if subnet.contains(':') { "ip6" } else { "ip" };
        rules.push_str(&format!(
            "    {family} daddr {subnet} oifname != {{ \"lo\", \"{bridge}\", \"wgmesh0\" }} counter drop\n"
        ));
    }
    let table = format!(
        "table inet wgmesh {{\n  chain egress_guard {{\n    type filter hook postrouting priority filter; policy accept;\n{rules}  }}\n}}\n"
    );
    let mut cmd = node.command("nft");
    cmd.args(["-f", "-"]);
    let out = crate::output_with_stdin(cmd, table.as_bytes());
    assert!(
        out.status.success(),
        "nft -f failed in {}: {}\n{table}",
        node.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes what [`install`] put in `node` (a reboot's loss, or an agent's uninstall).
pub fn remove(node: &TestNs) {
    let _ = node.exec("nft", ["delete", "table", "inet", "wgmesh"]);
    let _ = node.exec("ip", ["route", "flush", "proto", "87"]);
    let _ = node.exec("ip", ["-6", "route", "flush", "proto", "87"]);
}
