//! The cross-platform UAPI text protocol of wg(8): parsing `set=1` transactions and
//! writing `get=1` answers. Pure.
//!
//! See <https://www.wireguard.com/xplatform/>; wireguard-go's `device/uapi.go` is the
//! reference behaviour. One deliberate difference: a `set` is parsed and validated whole
//! before anything is applied, so a malformed transaction changes nothing (wireguard-go
//! applies the lines before the bad one).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::UNIX_EPOCH;

use ipnet::IpNet;
use zeroize::Zeroizing;

use super::config::{ConfigUpdate, DeviceStatus, PeerUpdate};
use super::error::UapiError;
use super::peer::{PeerConfig, PeerStats, PeerStatus};
use crate::key::{PrivateKey, PublicKey};

/// The answer to a successful `set`.
pub const SET_OK: &str = "errno=0\n\n";

/// The answer to a failed request: wireguard-go sends the errno negated, and wg(8) relies
/// on it (`errno = -value`) to print e.g. "Invalid argument".
pub fn error_response(err: &UapiError) -> String {
    format!("errno={}\n\n", -err.errno)
}

/// Parses the lines of a `set=1` transaction (without the `set=1` line and the blank
/// line that ends it).
pub fn parse_set<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<ConfigUpdate, UapiError> {
    let mut update = ConfigUpdate::default();
    let mut peer: Option<PeerUpdate> = None;
    for line in lines {
        let Some((key, value)) = line.split_once('=') else {
            return Err(UapiError::protocol(format!(
                "failed to parse line {line:?}"
            )));
        };
        if key == "public_key" {
            let public_key = PublicKey::from_hex(value)
                .map_err(|e| UapiError::invalid(format!("invalid public_key: {e}")))?;
            update
                .peers
                .extend(peer.replace(PeerUpdate::new(public_key)));
            continue;
        }
        match peer.as_mut() {
            None => device_line(&mut update, key, value)?,
            Some(p) => peer_line(p, key, value)?,
        }
    }
    update.peers.extend(peer);
    Ok(update)
}

fn device_line(update: &mut ConfigUpdate, key: &str, value: &str) -> Result<(), UapiError> {
    match key {
        "private_key" => {
            let k = PrivateKey::from_hex(value)
                .map_err(|e| UapiError::invalid(format!("invalid private_key: {e}")))?;
            update.private_key = Some((!k.is_zero()).then_some(k));
        }
        "listen_port" => update.listen_port = Some(number(key, value)?),
        "fwmark" => update.fwmark = Some(number(key, value)?),
        "replace_peers" => update.replace_peers = flag(key, value)?,
        _ => {
            return Err(UapiError::invalid(format!(
                "invalid UAPI device key: {key:?}"
            )));
        }
    }
    Ok(())
}

fn peer_line(p: &mut PeerUpdate, key: &str, value: &str) -> Result<(), UapiError> {
    match key {
        "update_only" => p.update_only = flag(key, value)?,
        "remove" => p.remove = flag(key, value)?,
        "preshared_key" => {
            let k = PrivateKey::from_hex(value)
                .map_err(|e| UapiError::invalid(format!("invalid preshared_key: {e}")))?;
            p.preshared_key = Some((!k.is_zero()).then_some(k));
        }
        "endpoint" => p.endpoint = Some(parse_endpoint(value)?),
        "persistent_keepalive_interval" => p.persistent_keepalive = Some(number(key, value)?),
        "replace_allowed_ips" => {
            // Lines apply in order: a replace discards the allowed IPs listed before it.
            p.replace_allowed_ips = flag(key, value)?;
            p.allowed_ips.clear();
        }
        "allowed_ip" => p.allowed_ips.push(parse_allowed_ip(value)?),
        "protocol_version" => {
            if value != "1" {
                return Err(UapiError::invalid(format!(
                    "invalid protocol version: {value:?}"
                )));
            }
        }
        _ => {
            return Err(UapiError::invalid(format!(
                "invalid UAPI peer key: {key:?}"
            )));
        }
    }
    Ok(())
}

/// `true` is the only value wg sends for a flag, and the only one accepted.
fn flag(key: &str, value: &str) -> Result<bool, UapiError> {
    if value == "true" {
        Ok(true)
    } else {
        Err(UapiError::invalid(format!(
            "invalid value for {key}: {value:?}"
        )))
    }
}

/// Plain decimal digits only (no sign, no spaces), within the type's range.
fn number<T: FromStr>(key: &str, value: &str) -> Result<T, UapiError> {
    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    digits
        .then(|| value.parse().ok())
        .flatten()
        .ok_or_else(|| UapiError::invalid(format!("invalid value for {key}: {value:?}")))
}

/// `a.b.c.d:port` or `[v6]:port`, numeric only (wg resolves names itself), port not 0. An
/// IPv4-mapped IPv6 address becomes IPv4 so it goes out of the IPv4 socket.
pub fn parse_endpoint(value: &str) -> Result<SocketAddr, UapiError> {
    let bad = || UapiError::invalid(format!("invalid endpoint: {value:?}"));
    let addr = SocketAddr::from_str(value).map_err(|_| bad())?;
    if addr.port() == 0 {
        return Err(bad());
    }
    Ok(match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    })
}

/// `addr/len` with an explicit length, as wg sends it.
pub fn parse_allowed_ip(value: &str) -> Result<IpNet, UapiError> {
    IpNet::from_str(value).map_err(|_| UapiError::invalid(format!("invalid allowed_ip: {value:?}")))
}

/// The full answer to `get=1`, `errno=0` and the blank line included. It holds the private
/// key, hence the zeroizing buffer.
pub fn get_response(status: &DeviceStatus) -> Zeroizing<String> {
    // Writing to a String cannot fail; the results are ignored.
    let mut out = Zeroizing::new(String::with_capacity(256 + 512 * status.peers.len()));
    let o: &mut String = &mut out;
    if let Some(k) = &status.private_key {
        let _ = writeln!(o, "private_key={}", k.to_hex().as_str());
    }
    if status.listen_port != 0 {
        let _ = writeln!(o, "listen_port={}", status.listen_port);
    }
    if status.fwmark != 0 {
        let _ = writeln!(o, "fwmark={}", status.fwmark);
    }
    for p in &status.peers {
        let _ = writeln!(o, "public_key={}", p.config.public_key.to_hex());
        let psk = p.config.preshared_key.as_ref().map(|k| k.to_hex());
        let zero = "0".repeat(64);
        let _ = writeln!(
            o,
            "preshared_key={}",
            psk.as_ref().map_or(zero.as_str(), |k| k.as_str())
        );
        let _ = writeln!(o, "protocol_version=1");
        if let Some(ep) = p.stats.endpoint {
            let _ = writeln!(o, "endpoint={ep}");
        }
        // Wall-clock Unix time (0 = never): wg prints "N seconds ago" from it.
        let since_epoch = p
            .stats
            .last_handshake
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        let _ = writeln!(o, "last_handshake_time_sec={}", since_epoch.as_secs());
        let _ = writeln!(o, "last_handshake_time_nsec={}", since_epoch.subsec_nanos());
        let _ = writeln!(o, "tx_bytes={}", p.stats.tx_bytes);
        let _ = writeln!(o, "rx_bytes={}", p.stats.rx_bytes);
        let _ = writeln!(
            o,
            "persistent_keepalive_interval={}",
            p.config.persistent_keepalive
        );
        for net in &p.config.allowed_ips {
            let _ = writeln!(o, "allowed_ip={net}");
        }
    }
    o.push_str(SET_OK);
    out
}

/// Parses the answer to `get=1` (what [`get_response`] writes, or what wireguard-go and
/// the kernel's wg(8) answers say), for clients such as `wgmesh status`.
pub fn parse_get(text: &str) -> Result<DeviceStatus, UapiError> {
    let mut status = DeviceStatus::default();
    let mut handshake_sec: u64 = 0;
    let mut handshake_nsec: u32 = 0;
    let finish_handshake = |status: &mut DeviceStatus, sec: &mut u64, nsec: &mut u32| {
        if let Some(p) = status.peers.last_mut()
            && (*sec != 0 || *nsec != 0)
        {
            // Checked: a time past what SystemTime holds is a malformed answer, not a panic.
            let time = UNIX_EPOCH
                .checked_add(std::time::Duration::from_secs(*sec))
                .and_then(|t| t.checked_add(std::time::Duration::from_nanos(u64::from(*nsec))))
                .ok_or_else(|| {
                    UapiError::invalid(format!("last_handshake_time {sec}.{nsec:09} out of range"))
                })?;
            p.stats.last_handshake = Some(time);
        }
        (*sec, *nsec) = (0, 0);
        Ok::<(), UapiError>(())
    };
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| UapiError::invalid(format!("line without '=': {line:?}")))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| UapiError::invalid(format!("{key}={v:?}")))
        };
        match key {
            "errno" => {
                let errno: i32 = value
                    .parse()
                    .map_err(|_| UapiError::invalid(format!("errno={value:?}")))?;
                if errno != 0 {
                    return Err(UapiError {
                        // Saturating: -i32::MIN does not fit an i32.
                        errno: errno.saturating_abs(),
                        message: format!("device answered errno={errno}"),
                    });
                }
            }
            "private_key" => {
                status.private_key = Some(
                    PrivateKey::from_hex(value).map_err(|e| UapiError::invalid(e.to_string()))?,
                )
            }
            "listen_port" => status.listen_port = num(value)? as u16,
            "fwmark" => status.fwmark = num(value)? as u32,
            "public_key" => {
                finish_handshake(&mut status, &mut handshake_sec, &mut handshake_nsec)?;
                let key =
                    PublicKey::from_hex(value).map_err(|e| UapiError::invalid(e.to_string()))?;
                status.peers.push(PeerStatus {
                    config: PeerConfig::new(key),
                    stats: PeerStats::default(),
                });
            }
            "preshared_key" => {
                let k =
                    PrivateKey::from_hex(value).map_err(|e| UapiError::invalid(e.to_string()))?;
                last_peer(&mut status, key)?.config.preshared_key = (!k.is_zero()).then_some(k);
            }
            "endpoint" => {
                let ep = parse_endpoint(value)?;
                let p = last_peer(&mut status, key)?;
                p.stats.endpoint = Some(ep);
                p.config.endpoint = Some(ep);
            }
            "last_handshake_time_sec" => handshake_sec = num(value)?,
            "last_handshake_time_nsec" => handshake_nsec = num(value)? as u32,
            "tx_bytes" => last_peer(&mut status, key)?.stats.tx_bytes = num(value)?,
            "rx_bytes" => last_peer(&mut status, key)?.stats.rx_bytes = num(value)?,
            "persistent_keepalive_interval" => {
                last_peer(&mut status, key)?.config.persistent_keepalive = num(value)? as u16
            }
            "allowed_ip" => {
                let net = parse_allowed_ip(value)?;
                last_peer(&mut status, key)?.config.allowed_ips.push(net);
            }
            // protocol_version and anything newer are not needed by readers.
            _ => {}
        }
    }
    finish_handshake(&mut status, &mut handshake_sec, &mut handshake_nsec)?;
    Ok(status)
}

/// The peer block a `get` line belongs to: the last `public_key` seen.
fn last_peer<'a>(status: &'a mut DeviceStatus, key: &str) -> Result<&'a mut PeerStatus, UapiError> {
    status
        .peers
        .last_mut()
        .ok_or_else(|| UapiError::invalid(format!("{key} before any public_key")))
}

#[cfg(test)]
#[path = "uapi_tests.rs"]
mod tests;
