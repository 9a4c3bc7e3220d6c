//! Tests of the UAPI text protocol: parsing, errors, and `get` output as wg(8) reads it. Pure.

use std::time::{Duration, SystemTime};

use super::*;
use crate::wireguard::peer::{PeerConfig, PeerStats, PeerStatus};

const PRIV_HEX: &str = "b8852ec111feefb7bbaa35d088b4770d928c0c3c02ee4785a61a7b4252030d47";
const PUB_HEX: &str = "010817241af80675fa423fb3780336ad90ef2dc71fa28ffdbfe821a21efd0e6e";

fn pub_hex() -> String {
    PUB_HEX.to_string()
}

fn parse(text: &str) -> Result<ConfigUpdate, UapiError> {
    parse_set(text.lines())
}

#[test]
fn a_full_wg_setconf_transaction_parses() {
    let text = format!(
        "private_key={PRIV_HEX}\nlisten_port=51820\nfwmark=0\nreplace_peers=true\n\
         public_key={pk}\npreshared_key={z}\nendpoint=192.0.2.2:51821\n\
         persistent_keepalive_interval=25\nreplace_allowed_ips=true\n\
         allowed_ip=10.244.1.0/24\nallowed_ip=fd00::/64\n\
         public_key={pk}\nendpoint=[2001:db8::1]:7\nprotocol_version=1\nremove=true\n",
        pk = pub_hex(),
        z = "0".repeat(64),
    );
    let u = parse(&text).unwrap();
    assert!(matches!(&u.private_key, Some(Some(k)) if k.to_hex().as_str() == PRIV_HEX));
    assert_eq!(u.listen_port, Some(51820));
    assert_eq!(u.fwmark, Some(0));
    assert!(u.replace_peers);
    assert_eq!(u.peers.len(), 2);
    let p = &u.peers[0];
    assert_eq!(p.public_key.to_hex(), pub_hex());
    assert_eq!(
        p.preshared_key,
        Some(None),
        "an all-zero key removes the key"
    );
    assert_eq!(p.endpoint, Some("192.0.2.2:51821".parse().unwrap()));
    assert_eq!(p.persistent_keepalive, Some(25));
    assert!(p.replace_allowed_ips);
    assert_eq!(
        p.allowed_ips,
        [
            "10.244.1.0/24".parse().unwrap(),
            "fd00::/64".parse().unwrap()
        ]
    );
    assert_eq!(
        u.peers[1].endpoint,
        Some("[2001:db8::1]:7".parse().unwrap())
    );
    assert!(u.peers[1].remove);
}

#[test]
fn an_empty_transaction_changes_nothing() {
    assert_eq!(parse("").unwrap(), ConfigUpdate::default());
}

#[test]
fn malformed_lines_get_the_errno_wg_expects() {
    let pk = pub_hex();
    let cases: Vec<(String, i32)> = vec![
        ("no equals sign".into(), libc::EPROTO),
        ("private_key=abcd".into(), libc::EINVAL),
        (format!("private_key={}", "zz".repeat(32)), libc::EINVAL),
        ("listen_port=65536".into(), libc::EINVAL),
        ("listen_port=+1".into(), libc::EINVAL),
        ("listen_port=".into(), libc::EINVAL),
        ("fwmark=-1".into(), libc::EINVAL),
        ("replace_peers=false".into(), libc::EINVAL),
        ("bogus=1".into(), libc::EINVAL),
        ("endpoint=192.0.2.1:1".into(), libc::EINVAL),
        (
            "public_key=AQgXJBr4BnX6Qj+zeAM2rZDvLccfoo/9v+ghoh79Dm4=".into(),
            libc::EINVAL,
        ),
        (format!("public_key={pk}\nendpoint=192.0.2.1"), libc::EINVAL),
        (
            format!("public_key={pk}\nendpoint=192.0.2.1:0"),
            libc::EINVAL,
        ),
        (
            format!("public_key={pk}\nendpoint=host.example:51820"),
            libc::EINVAL,
        ),
        (
            format!("public_key={pk}\nendpoint=2001:db8::1:51820"),
            libc::EINVAL,
        ),
        (
            format!("public_key={pk}\nallowed_ip=10.244.0.1"),
            libc::EINVAL,
        ),
        (
            format!("public_key={pk}\nallowed_ip=10.244.0.0/33"),
            libc::EINVAL,
        ),
        (format!("public_key={pk}\nprotocol_version=2"), libc::EINVAL),
        (
            format!("public_key={pk}\npersistent_keepalive_interval=65536"),
            libc::EINVAL,
        ),
        (format!("public_key={pk}\nremove=yes"), libc::EINVAL),
        (format!("public_key={pk}\nlisten_port=1"), libc::EINVAL),
        (format!("public_key={pk}\nunknown_key=1"), libc::EINVAL),
    ];
    for (text, errno) in cases {
        let err = parse(&text).expect_err(&text);
        assert_eq!(err.errno, errno, "{text:?}: {err}");
    }
}

#[test]
fn a_bad_line_anywhere_rejects_the_whole_transaction() {
    let text = format!(
        "listen_port=1000\npublic_key={}\nallowed_ip=bad\n",
        pub_hex()
    );
    assert!(parse(&text).is_err());
}

#[test]
fn replace_allowed_ips_discards_the_ones_listed_before_it() {
    let text = format!(
        "public_key={}\nallowed_ip=10.244.1.0/24\nreplace_allowed_ips=true\nallowed_ip=10.244.2.0/24\n",
        pub_hex()
    );
    let u = parse(&text).unwrap();
    assert_eq!(u.peers[0].allowed_ips, ["10.244.2.0/24".parse().unwrap()]);
    assert!(u.peers[0].replace_allowed_ips);
}

#[test]
fn ipv4_mapped_endpoints_become_ipv4() {
    assert_eq!(
        parse_endpoint("[::ffff:192.0.2.9]:51820").unwrap(),
        "192.0.2.9:51820".parse().unwrap()
    );
}

#[test]
fn errors_are_answered_negated_like_wireguard_go() {
    assert_eq!(error_response(&UapiError::invalid("x")), "errno=-22\n\n");
}

#[test]
fn get_lists_device_then_peers_in_wg_order_with_unix_handshake_time() {
    let key = PrivateKey::from_hex(PRIV_HEX).unwrap();
    let peer_key = PublicKey::from_hex(&pub_hex()).unwrap();
    let when = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123);
    let status = DeviceStatus {
        private_key: Some(key),
        listen_port: 51820,
        fwmark: 0,
        peers: vec![
            PeerStatus {
                config: PeerConfig {
                    persistent_keepalive: 25,
                    allowed_ips: vec!["10.244.1.0/24".parse().unwrap()],
                    ..PeerConfig::new(peer_key)
                },
                stats: PeerStats {
                    rx_bytes: 10,
                    tx_bytes: 20,
                    last_handshake: Some(when),
                    endpoint: Some("[2001:db8::1]:51821".parse().unwrap()),
                },
            },
            PeerStatus {
                config: PeerConfig::new(PublicKey::from_bytes([2; 32])),
                stats: PeerStats::default(),
            },
        ],
    };
    let want = format!(
        "private_key={PRIV_HEX}\nlisten_port=51820\n\
         public_key={pk}\npreshared_key={z}\nprotocol_version=1\nendpoint=[2001:db8::1]:51821\n\
         last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=123\n\
         tx_bytes=20\nrx_bytes=10\npersistent_keepalive_interval=25\nallowed_ip=10.244.1.0/24\n\
         public_key={two}\npreshared_key={z}\nprotocol_version=1\n\
         last_handshake_time_sec=0\nlast_handshake_time_nsec=0\n\
         tx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=0\n\
         errno=0\n\n",
        pk = pub_hex(),
        z = "0".repeat(64),
        two = "02".repeat(32),
    );
    assert_eq!(get_response(&status).as_str(), want);
}

#[test]
fn get_of_an_unconfigured_device_is_just_errno() {
    assert_eq!(
        get_response(&DeviceStatus::default()).as_str(),
        "errno=0\n\n"
    );
}

#[test]
fn fwmark_is_listed_only_when_set() {
    let status = DeviceStatus {
        fwmark: 51820,
        ..DeviceStatus::default()
    };
    assert_eq!(get_response(&status).as_str(), "fwmark=51820\nerrno=0\n\n");
}

#[test]
fn what_get_writes_set_reads_back() {
    let key = PrivateKey::generate().unwrap();
    let status = DeviceStatus {
        private_key: Some(key.clone()),
        listen_port: 1234,
        fwmark: 5,
        peers: vec![PeerStatus {
            config: PeerConfig {
                preshared_key: Some(PrivateKey::generate().unwrap()),
                allowed_ips: vec!["10.244.0.0/16".parse().unwrap()],
                ..PeerConfig::new(PublicKey::from_bytes([9; 32]))
            },
            stats: PeerStats {
                endpoint: Some("198.51.100.1:9".parse().unwrap()),
                ..PeerStats::default()
            },
        }],
    };
    let text = get_response(&status);
    // The read-only keys of `get` are not settable: keep the ones `set` knows.
    let settable: Vec<&str> = text
        .lines()
        .filter(|l| !l.is_empty())
        .filter(|l| {
            !l.starts_with("last_handshake") && !l.contains("x_bytes") && !l.starts_with("errno")
        })
        .collect();
    let u = parse_set(settable).unwrap();
    assert_eq!(u.private_key, Some(Some(key)));
    assert_eq!(u.listen_port, Some(1234));
    assert_eq!(u.fwmark, Some(5));
    assert_eq!(
        u.peers[0].preshared_key,
        Some(status.peers[0].config.preshared_key.clone())
    );
    assert_eq!(u.peers[0].endpoint, status.peers[0].stats.endpoint);
    assert_eq!(u.peers[0].allowed_ips, status.peers[0].config.allowed_ips);
}

#[test]
fn get_answers_parse_back_to_the_same_status() {
    let key = PrivateKey::generate().unwrap();
    let peer_key = PrivateKey::generate().unwrap().public_key();
    let status = DeviceStatus {
        private_key: Some(key),
        listen_port: 51820,
        fwmark: 7,
        peers: vec![PeerStatus {
            config: PeerConfig {
                public_key: peer_key,
                preshared_key: None,
                endpoint: Some("192.0.2.2:51820".parse().unwrap()),
                allowed_ips: vec!["10.244.2.0/24".parse().unwrap()],
                persistent_keepalive: 25,
            },
            stats: PeerStats {
                rx_bytes: 1234,
                tx_bytes: 5678,
                last_handshake: Some(UNIX_EPOCH + std::time::Duration::new(1_800_000_000, 5)),
                endpoint: Some("192.0.2.2:51820".parse().unwrap()),
            },
        }],
    };
    let back = parse_get(&get_response(&status)).unwrap();
    assert_eq!(back, status);
    let err = parse_get("errno=-22\n\n").unwrap_err();
    assert_eq!(err.errno, 22);
    assert!(
        parse_get("rx_bytes=1\n\n").is_err(),
        "a peer field before any peer"
    );
    assert!(parse_get("public_key=zz\n\n").is_err());
}

/// Found by fuzzing (fuzz/corpus/uapi/regress-*): answers no device gives are refused
/// with a reason, not a panic.
#[test]
fn absurd_get_answers_are_errors_not_panics() {
    let err = parse_get("errno=-2147483648\n\n").unwrap_err();
    assert_eq!(err.errno, i32::MAX, "saturated, still an error");
    let peer = "1010101010101010101010101010101010101010101010101010101010101010";
    let err = parse_get(&format!(
        "public_key={peer}\nlast_handshake_time_sec=18446744073709551615\n\
         last_handshake_time_nsec=4000000000\n\n"
    ))
    .unwrap_err();
    assert!(err.message.contains("out of range"), "{}", err.message);
}
