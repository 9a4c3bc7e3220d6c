//! The wg(8) UAPI text protocol, through the real parsers: the lines of a `set=1`
//! transaction as the UAPI server reads them (up to the blank line) into
//! `uapi::parse_set`, then applied to a device `Model` as the device does; and the
//! same text as an answer to `get=1` into `uapi::parse_get`, as `wgmesh status` reads
//! a device.
//!
//! Checked: nothing panics; a parsed `get` answer written back by `get_response` parses
//! to the same status; a parsed and applied `set` leaves a consistent model, whose
//! status also round-trips through `get_response` and `parse_get`.

#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use wgmesh::wireguard::config::Model;
use wgmesh::wireguard::uapi;
use wgmesh::wireguard::{DeviceStatus, PeerConfig, PeerStats, PeerStatus};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // A leading `set=1` / `get=1` line, as a client sends it, is allowed in the seeds.
    let body = text
        .strip_prefix("set=1\n")
        .or_else(|| text.strip_prefix("get=1\n"))
        .unwrap_or(&text);

    // The server's read_transaction: lines up to the first blank one, '\n' removed.
    let lines = body.split('\n').take_while(|l| !l.is_empty());
    if let Ok(update) = uapi::parse_set(lines) {
        let mut model = Model::default();
        // Twice: the second application meets existing peers and routes.
        for _ in 0..2 {
            model.apply(&update);
            check_model(&model);
        }
    }

    if let Ok(status) = uapi::parse_get(body) {
        let text = uapi::get_response(&status);
        let back = uapi::parse_get(&text).unwrap_or_else(|e| panic!("{:?}: {e}", text.as_str()));
        assert_eq!(back, status, "{:?}", text.as_str());
    }
});

fn check_model(model: &Model) {
    let own = model.public_key();
    assert!(
        own.is_none_or(|k| !model.peers.contains_key(&k)),
        "a peer with our own key"
    );
    let routes = model.allowed_ips();
    let owners: BTreeSet<_> = routes.keys().collect();
    assert!(
        owners.iter().all(|k| model.peers.contains_key(k)),
        "a route to no peer"
    );
    for (key, nets) in &routes {
        for net in nets {
            assert_eq!(net.trunc(), *net, "stored with host bits");
            let found = model.routes.lookup(net.network());
            assert!(found.is_some(), "{net} is not found");
            if net.prefix_len() == net.max_prefix_len() {
                assert_eq!(found, Some(key), "{net}");
            }
        }
    }

    // What a device configured so would answer to `get=1`.
    let status = DeviceStatus {
        private_key: model.private_key.clone(),
        listen_port: model.listen_port,
        fwmark: model.fwmark,
        peers: model
            .peers
            .iter()
            .map(|(key, p)| PeerStatus {
                config: PeerConfig {
                    preshared_key: p.preshared_key.clone(),
                    persistent_keepalive: p.persistent_keepalive,
                    allowed_ips: routes.get(key).cloned().unwrap_or_default(),
                    ..PeerConfig::new(*key)
                },
                stats: PeerStats::default(),
            })
            .collect(),
    };
    let text = uapi::get_response(&status);
    assert_eq!(
        uapi::parse_get(&text).as_ref(),
        Ok(&status),
        "{:?}",
        text.as_str()
    );
}
