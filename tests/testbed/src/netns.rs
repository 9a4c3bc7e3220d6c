//! A named network namespace of the testbed (test infrastructure): created with
//! `ip netns add`, loopback up, deleted on drop (only the one this value created); and
//! the veth links that wire namespaces together.
//!
//! IPv6 is disabled on every testbed link of an IPv4 underlay (both ends, before they
//! come up), so captures show only what the testbed and the product send, not router
//! solicitations and MLD. Links of an IPv6 underlay keep IPv6 as quiet as it gets: no
//! router solicitations, no autoconfiguration, no duplicate address detection (an
//! address is usable at once); neighbour discovery and MLD reports remain (captures
//! leave them out with [`crate::capture::UNDERLAY_FILTER`]).

use std::ffi::OsStr;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;

use crate::exec::{self, Exec};

#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace `name` (which must be unique: the caller's run id is in it).
    pub fn create(name: &str) -> NetNs {
        let mut add = Command::new("ip");
        add.args(["netns", "add", name]);
        exec::output_ok(add, None);
        let ns = NetNs {
            name: name.to_string(),
        };
        ns.ip_batch(&["link set lo up".to_string()]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>` in the host's mount namespace.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip` commands (one per line, `ip -batch` syntax) in this namespace with one
    /// process; panics when one fails.
    pub fn ip_batch(&self, lines: &[String]) {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name, "-batch", "-"]);
        exec::output_ok(cmd, Some(lines.join("\n").as_bytes()));
    }

    /// Creates a veth pair: `link` here, `peer_link` in `peer`, both down, IPv6
    /// disabled on both ends.
    pub fn add_veth(&self, link: &str, peer: &NetNs, peer_link: &str) {
        self.ip_batch(&[format!(
            "link add {link} type veth peer name {peer_link} netns {}",
            peer.name()
        )]);
        // Before the links come up, so not even one IPv6 packet is sent.
        self.disable_ipv6(link);
        peer.disable_ipv6(peer_link);
    }

    /// Creates a veth pair like [`NetNs::add_veth`], but with IPv6 on both ends, as
    /// quiet as [`NetNs::quiet_ipv6`] makes it: a link of an IPv6 underlay.
    pub fn add_veth_ipv6(&self, link: &str, peer: &NetNs, peer_link: &str) {
        self.ip_batch(&[format!(
            "link add {link} type veth peer name {peer_link} netns {}",
            peer.name()
        )]);
        self.quiet_ipv6(link);
        peer.quiet_ipv6(peer_link);
    }

    /// Disables IPv6 on `link` of this namespace.
    pub fn disable_ipv6(&self, link: &str) {
        self.set_sysctl(&format!("net.ipv6.conf.{link}.disable_ipv6"), "1");
    }

    /// Enables IPv6 on `link` (still down) without what a host does on its own when the
    /// link comes up: router solicitations, autoconfiguration from router
    /// advertisements, duplicate address detection (addresses are usable at once).
    pub fn quiet_ipv6(&self, link: &str) {
        for (key, value) in [
            ("accept_ra", "0"),
            ("autoconf", "0"),
            ("router_solicitations", "0"),
            ("accept_dad", "0"),
            ("dad_transmits", "0"),
            ("disable_ipv6", "0"),
        ] {
            self.set_sysctl(&format!("net.ipv6.conf.{link}.{key}"), value);
        }
    }

    /// Gives `link` the address `ip/prefix_len`, brings it up, and routes everything
    /// else of that family via `gateway`: how a host is plugged into its subnet.
    pub fn plug_in(
        &self,
        link: &str,
        ip: impl Into<IpAddr>,
        prefix_len: u8,
        gateway: impl Into<IpAddr>,
    ) {
        let (ip, gateway) = (ip.into(), gateway.into());
        let (flags, default) = match ip {
            IpAddr::V4(_) => ("", "default"),
            // nodad: usable at once, whatever the link's sysctls.
            IpAddr::V6(_) => (" nodad", "::/0"),
        };
        self.ip_batch(&[
            format!("addr add {ip}/{prefix_len} dev {link}{flags}"),
            format!("link set {link} up"),
            format!("route add {default} via {gateway}"),
        ]);
    }

    /// The MAC address of `link` in this namespace.
    pub fn link_mac(&self, link: &str) -> crate::raw::Mac {
        let json = self.exec_ok(&["ip", "-j", "link", "show", "dev", link]);
        let links: serde_json::Value = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("ip -j printed no JSON ({e}): {json}"));
        links[0]["address"]
            .as_str()
            .and_then(crate::raw::parse_mac)
            .unwrap_or_else(|| panic!("no MAC address of {link} in {}: {json}", self.name))
    }

    /// Writes a sysctl of this namespace (`net.ipv4.ip_forward` style key). `/proc/sys/net`
    /// is per network namespace of the writing thread.
    pub fn set_sysctl(&self, key: &str, value: &str) {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        let value = value.to_string();
        let what = format!("{key}={value} in {}", self.name);
        exec::in_netns_thread(&self.path(), move || {
            std::fs::write(&path, value.as_bytes())
                .unwrap_or_else(|e| panic!("cannot set {what}: {e}"));
        });
    }
}

impl Exec for NetNs {
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        exec::in_net(&self.path(), program)
    }

    fn place(&self) -> &str {
        &self.name
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let mut del = Command::new("ip");
        del.args(["netns", "delete", &self.name]);
        let out = exec::output(del, None);
        if !out.status.success() {
            eprintln!(
                "testbed: could not delete network namespace {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
