//! The kernel WireGuard adapter (`wgmesh::wgkernel`) against the VM's kernel. Each test
//! here runs its twin in `inside` in the VM; `wg` (wireguard-tools, reading the kernel
//! on its own) is the independent witness of what the adapter set.

use wgmesh_vm::Vm;

#[test]
fn the_kernel_adapter_sets_reads_and_diffs_peers_and_keeps_a_roamed_endpoint() {
    Vm::shared().run_test("kernel::inside::sets_reads_and_diffs_peers");
}

#[test]
fn a_thousand_peers_reach_the_kernel_in_batches_within_a_page_each() {
    let out = Vm::shared().run_test("kernel::inside::a_thousand_peers");
    eprintln!("{out}");
}

#[test]
fn a_kernel_device_rotates_its_key_and_its_peer_handshakes_at_once_without_traffic() {
    Vm::shared().run_test("kernel::inside::key_rotation");
}

mod inside {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::time::{Duration, Instant, SystemTime};

    use ipnet::IpNet;
    use wgmesh::dataplane::peers;
    use wgmesh::key::{PrivateKey, PublicKey};
    use wgmesh::netlink::{NetNs, Netlink};
    use wgmesh::wgkernel::{self, KernelDevice, encode};
    use wgmesh::wireguard::{ConfigUpdate, PeerConfig, PeerUpdate};
    use wgmesh_testkit::{TestNs, wait_until};

    fn in_vm() {
        assert_eq!(
            std::env::var("WGMESH_VM").as_deref(),
            Ok("1"),
            "this test runs inside the test VM (its twin outside starts it there)"
        );
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A kernel WireGuard link `name` in `ns`, created by the adapter, and a device on it.
    fn kernel_link(ns: &TestNs, name: &str) -> KernelDevice {
        let netns = NetNs::open(ns.path()).unwrap();
        rt().block_on(async {
            let nl = Netlink::connect_in(&netns).unwrap();
            wgkernel::create_link(&nl, name).await.unwrap();
            let link = nl.link_by_name(name).await.unwrap().unwrap();
            assert_eq!(link.kind.as_deref(), Some(wgkernel::LINK_KIND));
            nl.set_up_with_mtu(link.index, 1420).await.unwrap();
        });
        netns.run(|| KernelDevice::open(name)).unwrap().unwrap()
    }

    fn wg(ns: &TestNs, args: &[&str]) -> String {
        let out = ns.exec("wg", args);
        assert!(
            out.status.success(),
            "wg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn peer(n: u16, endpoint: &str, ips: &[&str], keepalive: u16) -> PeerConfig {
        let mut key = [3u8; 32];
        key[..2].copy_from_slice(&n.to_be_bytes());
        PeerConfig {
            endpoint: Some(endpoint.parse().unwrap()),
            allowed_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            persistent_keepalive: keepalive,
            ..PeerConfig::new(PublicKey::from_bytes(key))
        }
    }

    /// `wg show IF dump` peer lines: key -> (endpoint, allowed ips, keepalive).
    fn wg_dump(ns: &TestNs, ifname: &str) -> BTreeMap<String, (String, String, String)> {
        wg(ns, &["show", ifname, "dump"])
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (
                    f[0].to_string(),
                    (f[2].to_string(), f[3].to_string(), f[7].to_string()),
                )
            })
            .collect()
    }

    #[test]
    #[ignore = "runs inside the test VM"]
    fn sets_reads_and_diffs_peers() {
        in_vm();
        let ns = TestNs::new("wgk");
        let dev = kernel_link(&ns, "wgk0");
        let key = PrivateKey::generate().unwrap();
        let b = peer(2, "192.0.2.2:51820", &["10.244.2.0/24"], 0);
        let c = peer(
            3,
            "[2001:db8::3]:51820",
            &["10.244.3.0/24", "fd00:10:244:3::/64"],
            25,
        );
        dev.apply(&ConfigUpdate {
            private_key: Some(Some(key.clone())),
            listen_port: Some(51820),
            peers: vec![
                PeerUpdate::from_config(b.clone()),
                PeerUpdate::from_config(c.clone()),
            ],
            ..ConfigUpdate::default()
        })
        .unwrap();

        let status = dev.status().unwrap();
        assert_eq!(status.private_key, Some(key.clone()));
        assert_eq!(status.listen_port, 51820);
        let configs: Vec<PeerConfig> = status.peers.iter().map(|p| p.config.clone()).collect();
        let mut want = vec![b.clone(), c.clone()];
        want.sort_by_key(|p| p.public_key);
        let mut got = configs.clone();
        got.sort_by_key(|p| p.public_key);
        assert_eq!(got, want, "the adapter reads back what it set");
        // wg(8), reading the kernel on its own, agrees.
        assert_eq!(
            wg(&ns, &["show", "wgk0", "public-key"]).trim(),
            key.public_key().to_base64()
        );
        let dump = wg_dump(&ns, "wgk0");
        assert_eq!(
            dump[&c.public_key.to_base64()],
            (
                "[2001:db8::3]:51820".into(),
                "10.244.3.0/24,fd00:10:244:3::/64".into(),
                "25".into()
            )
        );
        assert_eq!(dump[&b.public_key.to_base64()].2, "off");

        // A new plan: c goes, b gets a second range, d comes. The peer diff is one
        // transaction; applied, the kernel holds exactly the plan.
        let b2 = PeerConfig {
            allowed_ips: vec![
                "10.244.2.0/24".parse().unwrap(),
                "10.244.20.0/24".parse().unwrap(),
            ],
            ..b.clone()
        };
        let d = peer(4, "192.0.2.4:51820", &["10.244.4.0/24"], 0);
        let desired: BTreeMap<PublicKey, PeerConfig> =
            [(b2.public_key, b2.clone()), (d.public_key, d.clone())].into();
        let last: BTreeMap<PublicKey, Option<SocketAddr>> =
            [(b.public_key, b.endpoint), (c.public_key, c.endpoint)].into();
        let update = peers::updates(&desired, &dev.status().unwrap().peers, &last);
        assert_eq!(update.peers.len(), 3, "{update:?}");
        dev.apply(&update).unwrap();
        let dump = wg_dump(&ns, "wgk0");
        assert_eq!(dump.len(), 2);
        assert!(!dump.contains_key(&c.public_key.to_base64()));
        assert_eq!(
            dump[&b.public_key.to_base64()].1,
            "10.244.2.0/24,10.244.20.0/24"
        );
        assert_eq!(dump[&d.public_key.to_base64()].0, "192.0.2.4:51820");

        // The peer roams (the kernel learned a new endpoint from its packets; here `wg`
        // stands in): the same plan again changes nothing and keeps the roamed endpoint.
        wg(
            &ns,
            &[
                "set",
                "wgk0",
                "peer",
                &b.public_key.to_base64(),
                "endpoint",
                "198.51.100.7:40000",
            ],
        );
        let last: BTreeMap<PublicKey, Option<SocketAddr>> =
            desired.iter().map(|(k, p)| (*k, p.endpoint)).collect();
        let again = peers::updates(&desired, &dev.status().unwrap().peers, &last);
        assert!(again.peers.is_empty(), "{again:?}");
        // A peer changed behind the agent's back is repaired, the roamed endpoint kept.
        wg(
            &ns,
            &[
                "set",
                "wgk0",
                "peer",
                &b.public_key.to_base64(),
                "allowed-ips",
                "0.0.0.0/0",
            ],
        );
        let repair = peers::updates(&desired, &dev.status().unwrap().peers, &last);
        dev.apply(&repair).unwrap();
        let dump = wg_dump(&ns, "wgk0");
        assert_eq!(
            dump[&b.public_key.to_base64()],
            (
                "198.51.100.7:40000".into(),
                "10.244.2.0/24,10.244.20.0/24".into(),
                "off".into()
            )
        );
    }

    #[test]
    #[ignore = "runs inside the test VM"]
    fn a_thousand_peers() {
        in_vm();
        let ns = TestNs::new("wgk");
        let dev = kernel_link(&ns, "wgk0");
        let peers: Vec<PeerConfig> = (0..1000u16)
            .map(|i| {
                peer(
                    i,
                    &format!("192.0.2.{}:{}", i % 250 + 1, 51820 + i),
                    &[&format!("10.{}.{}.0/24", 100 + i / 256, i % 256)],
                    0,
                )
            })
            .collect();
        let update = ConfigUpdate {
            private_key: Some(Some(PrivateKey::generate().unwrap())),
            listen_port: Some(51820),
            replace_peers: true,
            peers: peers.iter().cloned().map(PeerUpdate::from_config).collect(),
            ..ConfigUpdate::default()
        };
        let batches = encode::set_messages("wgk0", &update, encode::MESSAGE_BUDGET).len();
        assert!(batches > 10, "{batches} messages");
        let started = Instant::now();
        dev.apply(&update).unwrap();
        let took = started.elapsed();
        let started = Instant::now();
        let status = dev.status().unwrap();
        let read = started.elapsed();
        assert_eq!(status.peers.len(), 1000);
        let mut got: Vec<PeerConfig> = status.peers.into_iter().map(|p| p.config).collect();
        got.sort_by_key(|p| p.public_key);
        let mut want = peers.clone();
        want.sort_by_key(|p| p.public_key);
        assert_eq!(got, want);
        assert_eq!(wg(&ns, &["show", "wgk0", "peers"]).lines().count(), 1000);
        eprintln!(
            "FIGURE kernel_set_1000_peers messages={batches} set_ms={} get_ms={} (TCG)",
            took.as_millis(),
            read.as_millis()
        );
        // Half of them go in one diff.
        let desired: BTreeMap<PublicKey, PeerConfig> = peers
            .iter()
            .step_by(2)
            .map(|p| (p.public_key, p.clone()))
            .collect();
        let last = peers.iter().map(|p| (p.public_key, p.endpoint)).collect();
        let update = peers::updates(&desired, &dev.status().unwrap().peers, &last);
        assert_eq!(update.peers.len(), 500);
        dev.apply(&update).unwrap();
        assert_eq!(wg(&ns, &["show", "wgk0", "peers"]).lines().count(), 500);
    }

    /// Two namespaces joined by a veth, each with a kernel WireGuard device peering the
    /// other: A rotates its key; B learns it as the agent's peer diff does (old key
    /// out, new key in with a handshake at once). B's new peer handshakes with no
    /// packet sent (the kernel starts handshakes only for packets and keepalives), and
    /// traffic flows.
    #[test]
    #[ignore = "runs inside the test VM"]
    fn key_rotation() {
        in_vm();
        let a = TestNs::new("wgka");
        let b = TestNs::new("wgkb");
        a.ip([
            "link",
            "add",
            "ve",
            "type",
            "veth",
            "peer",
            "name",
            "ve",
            "netns",
            b.name(),
        ]);
        for (ns, ip) in [(&a, "192.0.2.1/24"), (&b, "192.0.2.2/24")] {
            ns.ip(["addr", "add", ip, "dev", "ve"]);
            ns.ip(["link", "set", "ve", "up"]);
        }
        let (wa, wb) = (kernel_link(&a, "wg0"), kernel_link(&b, "wg0"));
        let (ka, kb) = (
            PrivateKey::generate().unwrap(),
            PrivateKey::generate().unwrap(),
        );
        let cfg = |key: &PrivateKey, peer: PublicKey, endpoint: &str, ip: &str| ConfigUpdate {
            private_key: Some(Some(key.clone())),
            listen_port: Some(51820),
            peers: vec![PeerUpdate::from_config(PeerConfig {
                endpoint: Some(endpoint.parse().unwrap()),
                allowed_ips: vec![ip.parse::<IpNet>().unwrap()],
                ..PeerConfig::new(peer)
            })],
            ..ConfigUpdate::default()
        };
        wa.apply(&cfg(
            &ka,
            kb.public_key(),
            "192.0.2.2:51820",
            "10.244.2.1/32",
        ))
        .unwrap();
        wb.apply(&cfg(
            &kb,
            ka.public_key(),
            "192.0.2.1:51820",
            "10.244.1.1/32",
        ))
        .unwrap();
        a.ip([
            "addr",
            "add",
            "10.244.1.1/32",
            "peer",
            "10.244.2.1/32",
            "dev",
            "wg0",
        ]);
        b.ip([
            "addr",
            "add",
            "10.244.2.1/32",
            "peer",
            "10.244.1.1/32",
            "dev",
            "wg0",
        ]);
        // No traffic before the rotation either: a packet received would make the
        // kernel send a keepalive 10 s later (and so a handshake), which must not be
        // what this test sees.
        assert!(wb.status().unwrap().peers[0].stats.last_handshake.is_none());

        let rotated_at = SystemTime::now();
        let new = PrivateKey::generate().unwrap();
        // What the data plane's set_key does: the new key, then a handshake with every
        // peer at once.
        wa.apply(&ConfigUpdate {
            private_key: Some(Some(new.clone())),
            peers: vec![PeerUpdate {
                update_only: true,
                handshake_now: true,
                ..PeerUpdate::new(kb.public_key())
            }],
            ..ConfigUpdate::default()
        })
        .unwrap();
        assert_eq!(wa.status().unwrap().private_key, Some(new.clone()));
        // B's plan now names A's new key: the diff swaps the peer, the new one asked to
        // handshake at once.
        let desired: BTreeMap<PublicKey, PeerConfig> = [(
            new.public_key(),
            PeerConfig {
                endpoint: Some("192.0.2.1:51820".parse().unwrap()),
                allowed_ips: vec!["10.244.1.1/32".parse().unwrap()],
                ..PeerConfig::new(new.public_key())
            },
        )]
        .into();
        let last = [(ka.public_key(), Some("192.0.2.1:51820".parse().unwrap()))].into();
        let update = peers::updates(&desired, &wb.status().unwrap().peers, &last);
        assert!(
            update
                .peers
                .iter()
                .any(|p| p.handshake_now && p.public_key == new.public_key())
        );
        wb.apply(&update).unwrap();
        // No packet is sent by anyone: the handshake comes from the update alone.
        let at = wait_until(
            Duration::from_secs(30),
            "a handshake with A's new key",
            || {
                let s = wb.status().unwrap();
                let p = s
                    .peers
                    .iter()
                    .find(|p| p.config.public_key == new.public_key())?;
                p.stats
                    .last_handshake
                    .filter(|t| *t >= rotated_at - Duration::from_secs(1))
            },
        );
        eprintln!("handshake with the new key at {at:?}");
        assert_eq!(wb.status().unwrap().peers.len(), 1, "the old key is gone");
        assert!(a.ping("10.244.2.1"), "traffic after the rotation");
    }
}
