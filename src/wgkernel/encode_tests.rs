use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::WireguardTimeSpec;

use super::*;

fn key(n: u16) -> PublicKey {
    let mut b = [7u8; 32];
    b[..2].copy_from_slice(&n.to_be_bytes());
    PublicKey::from_bytes(b)
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// The bytes of `m` on the wire, netlink header included.
fn wire_len(m: &WireguardMessage) -> usize {
    let mut genl = GenlMessage::from_payload(m.clone());
    genl.set_resolved_family_id(21);
    let mut nl = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(genl));
    nl.finalize();
    nl.buffer_len()
}

fn peers_of(m: &WireguardMessage) -> Vec<&WireguardPeer> {
    m.attributes
        .iter()
        .flat_map(|a| match a {
            WireguardAttribute::Peers(p) => p.iter().collect(),
            _ => Vec::new(),
        })
        .collect()
}

fn peer_key(p: &WireguardPeer) -> PublicKey {
    p.0.iter()
        .find_map(|a| match a {
            WireguardPeerAttribute::PublicKey(k) => Some(PublicKey::from_bytes(*k)),
            _ => None,
        })
        .unwrap()
}

fn flags(p: &WireguardPeer) -> WireguardPeerFlags {
    p.0.iter()
        .find_map(|a| match a {
            WireguardPeerAttribute::Flags(f) => Some(*f),
            _ => None,
        })
        .unwrap_or(WireguardPeerFlags::empty())
}

fn ips(p: &WireguardPeer) -> Vec<IpNet> {
    p.0.iter()
        .flat_map(|a| match a {
            WireguardPeerAttribute::AllowedIps(v) => v.iter().filter_map(allowed_ip_net).collect(),
            _ => Vec::new(),
        })
        .collect()
}

fn thousand_peers() -> ConfigUpdate {
    ConfigUpdate {
        private_key: Some(Some(PrivateKey::from_bytes([9; 32]))),
        listen_port: Some(51820),
        replace_peers: true,
        peers: (0..1000u16)
            .map(|i| {
                PeerUpdate::from_config(PeerConfig {
                    endpoint: Some(SocketAddr::from(([192, 0, 2, (i % 250) as u8], 51820))),
                    allowed_ips: vec![net(&format!("10.244.{}.{}/32", i / 256, i % 256))],
                    persistent_keepalive: 25,
                    ..PeerConfig::new(key(i))
                })
            })
            .collect(),
        ..ConfigUpdate::default()
    }
}

#[test]
fn a_thousand_peers_are_split_into_messages_within_one_page_in_order() {
    let msgs = set_messages("wgmesh0", &thousand_peers(), MESSAGE_BUDGET);
    assert!(msgs.len() > 10, "{} messages for 1,000 peers", msgs.len());
    for m in &msgs {
        let len = wire_len(m);
        assert!(len <= MESSAGE_BUDGET, "a message of {len} bytes");
        assert_eq!(
            m.attributes[0],
            WireguardAttribute::IfName("wgmesh0".into())
        );
        assert_eq!(m.cmd, WireguardCmd::SetDevice);
    }
    let keys: Vec<PublicKey> = msgs.iter().flat_map(peers_of).map(peer_key).collect();
    assert_eq!(
        keys,
        (0..1000).map(key).collect::<Vec<_>>(),
        "every peer once, in order"
    );
    // Device settings and "replace peers" only in the first message: repeated later,
    // the flag would remove the peers the earlier messages added.
    let device_attrs = |m: &WireguardMessage| {
        m.attributes
            .iter()
            .filter(|a| {
                !matches!(
                    a,
                    WireguardAttribute::IfName(_) | WireguardAttribute::Peers(_)
                )
            })
            .count()
    };
    assert_eq!(
        device_attrs(&msgs[0]),
        3,
        "key, port, flags: {:?}",
        msgs[0].attributes.len()
    );
    assert!(msgs[1..].iter().all(|m| device_attrs(m) == 0));
}

#[test]
fn a_peer_with_too_many_allowed_ips_for_one_message_continues_in_the_next_without_replacing() {
    let many: Vec<IpNet> = (0..400u16)
        .map(|i| net(&format!("10.{}.{}.0/24", i / 256, i % 256)))
        .collect();
    let update = ConfigUpdate {
        peers: vec![PeerUpdate::from_config(PeerConfig {
            allowed_ips: many.clone(),
            ..PeerConfig::new(key(1))
        })],
        ..ConfigUpdate::default()
    };
    let msgs = set_messages("wg0", &update, MESSAGE_BUDGET);
    assert!(msgs.len() >= 3, "{} messages", msgs.len());
    let parts: Vec<&WireguardPeer> = msgs.iter().flat_map(peers_of).collect();
    assert_eq!(parts.len(), msgs.len(), "one part of the peer per message");
    assert!(flags(parts[0]).contains(WireguardPeerFlags::ReplaceAllowedIps));
    for p in &parts[1..] {
        assert_eq!(peer_key(p), key(1));
        assert_eq!(
            flags(p),
            WireguardPeerFlags::empty(),
            "a continuation replaces nothing"
        );
        assert_eq!(
            p.0.len(),
            2,
            "public key and allowed IPs only: {:?}",
            p.0.len()
        );
    }
    let all: Vec<IpNet> = parts.iter().flat_map(|p| ips(p)).collect();
    assert_eq!(all, many);
    assert!(msgs.iter().all(|m| wire_len(m) <= MESSAGE_BUDGET));
}

#[test]
fn an_empty_update_is_one_message_naming_the_interface() {
    let msgs = set_messages("wg0", &ConfigUpdate::default(), MESSAGE_BUDGET);
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        msgs[0].attributes,
        vec![WireguardAttribute::IfName("wg0".into())]
    );
}

#[test]
fn removal_removing_the_key_and_the_psk_are_explicit_zeroes_and_flags() {
    let update = ConfigUpdate {
        private_key: Some(None),
        peers: vec![
            PeerUpdate::remove(key(1)),
            PeerUpdate {
                preshared_key: Some(None),
                update_only: true,
                ..PeerUpdate::new(key(2))
            },
        ],
        ..ConfigUpdate::default()
    };
    let msgs = set_messages("wg0", &update, MESSAGE_BUDGET);
    assert!(
        msgs[0]
            .attributes
            .contains(&WireguardAttribute::PrivateKey([0; 32]))
    );
    let peers = peers_of(&msgs[0]);
    assert_eq!(peers[0].0.len(), 2);
    assert_eq!(flags(peers[0]), WireguardPeerFlags::RemoveMe);
    assert_eq!(flags(peers[1]), WireguardPeerFlags::UpdateOnly);
    assert!(
        peers[1]
            .0
            .contains(&WireguardPeerAttribute::PresharedKey([0; 32]))
    );
    assert!(
        !peers[1]
            .0
            .iter()
            .any(|a| matches!(a, WireguardPeerAttribute::Endpoint(_))),
        "no endpoint asked for: the current (roamed) one stays"
    );
}

#[test]
fn a_handshake_now_raises_the_keepalive_from_zero_and_restores_the_planned_value() {
    let keepalives = |u: PeerUpdate| -> Vec<(u16, WireguardPeerFlags)> {
        let msgs = set_messages(
            "wg0",
            &ConfigUpdate {
                peers: vec![u],
                ..ConfigUpdate::default()
            },
            MESSAGE_BUDGET,
        );
        peers_of(&msgs[0])
            .iter()
            .map(|p| {
                let k = p.0.iter().find_map(|a| match a {
                    WireguardPeerAttribute::PersistentKeepalive(s) => Some(*s),
                    _ => None,
                });
                (k.unwrap_or(u16::MAX), flags(p))
            })
            .collect()
    };
    let off = PeerUpdate {
        handshake_now: true,
        ..PeerUpdate::from_config(PeerConfig::new(key(3)))
    };
    let upd = WireguardPeerFlags::UpdateOnly;
    assert_eq!(
        keepalives(off),
        vec![
            (0, WireguardPeerFlags::ReplaceAllowedIps),
            (0, upd),
            (1, upd),
            (0, upd)
        ]
    );
    let on = PeerUpdate {
        handshake_now: true,
        ..PeerUpdate::from_config(PeerConfig {
            persistent_keepalive: 25,
            ..PeerConfig::new(key(3))
        })
    };
    assert_eq!(
        keepalives(on),
        vec![
            (25, WireguardPeerFlags::ReplaceAllowedIps),
            (0, upd),
            (25, upd)
        ]
    );
}

#[test]
fn a_dump_becomes_the_device_status_with_a_split_peer_joined() {
    let peer = |k: u16, extra: Vec<WireguardPeerAttribute>| {
        let mut attrs = vec![WireguardPeerAttribute::PublicKey(*key(k).as_bytes())];
        attrs.extend(extra);
        WireguardPeer(attrs)
    };
    let ips = |list: &[&str]| {
        WireguardPeerAttribute::AllowedIps(list.iter().map(|s| allowed_ip(&net(s))).collect())
    };
    let parts = vec![
        WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![
                WireguardAttribute::PrivateKey([5; 32]),
                WireguardAttribute::ListenPort(51820),
                WireguardAttribute::Fwmark(0),
                WireguardAttribute::Peers(vec![
                    peer(
                        1,
                        vec![
                            WireguardPeerAttribute::PresharedKey([0; 32]),
                            WireguardPeerAttribute::Endpoint("0.0.0.0:0".parse().unwrap()),
                            WireguardPeerAttribute::LastHandshake(WireguardTimeSpec::default()),
                            WireguardPeerAttribute::RxBytes(0),
                            ips(&[]),
                        ],
                    ),
                    peer(
                        2,
                        vec![
                            WireguardPeerAttribute::Endpoint("198.51.100.7:40000".parse().unwrap()),
                            WireguardPeerAttribute::PersistentKeepalive(25),
                            WireguardPeerAttribute::LastHandshake(WireguardTimeSpec {
                                seconds: 1_700_000_000,
                                nano_seconds: 5,
                            }),
                            WireguardPeerAttribute::RxBytes(1000),
                            WireguardPeerAttribute::TxBytes(2000),
                            ips(&["10.244.2.0/24"]),
                        ],
                    ),
                ]),
            ],
        },
        WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::Peers(vec![peer(
                2,
                vec![ips(&["fd00::/64"])],
            )])],
        },
    ];
    let status = device_status(&parts);
    assert_eq!(status.private_key, Some(PrivateKey::from_bytes([5; 32])));
    assert_eq!(status.listen_port, 51820);
    assert_eq!(status.peers.len(), 2);
    let (a, b) = (&status.peers[0], &status.peers[1]);
    assert_eq!(a.config, PeerConfig::new(key(1)), "zeroes mean none");
    assert_eq!(a.stats, PeerStats::default());
    assert_eq!(
        b.config.allowed_ips,
        vec![net("10.244.2.0/24"), net("fd00::/64")]
    );
    assert_eq!(b.config.persistent_keepalive, 25);
    assert_eq!(
        b.stats.endpoint,
        Some("198.51.100.7:40000".parse().unwrap())
    );
    assert_eq!((b.stats.rx_bytes, b.stats.tx_bytes), (1000, 2000));
    assert_eq!(
        b.stats.last_handshake,
        Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5))
    );
}
