//! The client side of the UAPI: ask a running device (ours, wireguard-go, ...) for its
//! state over `<dir>/<ifname>.sock`, as `wg show` does. Adapter.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::config::DeviceStatus;
use super::uapi::parse_get;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the UAPI socket {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("UAPI {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("UAPI {path}: {message}")]
    Protocol { path: String, message: String },
}

/// The device's configuration and counters (`get=1`).
pub fn get(dir: &Path, ifname: &str) -> Result<DeviceStatus, ClientError> {
    let path = dir.join(format!("{ifname}.sock"));
    let shown = path.display().to_string();
    let io = |source| ClientError::Io {
        path: shown.clone(),
        source,
    };
    let mut stream = UnixStream::connect(&path).map_err(|source| ClientError::Connect {
        path: shown.clone(),
        source,
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    stream.write_all(b"get=1\n\n").map_err(io)?;
    let mut text = String::new();
    let mut reader = BufReader::new(stream);
    // The answer ends with a blank line after `errno=`.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(io)? == 0 || line == "\n" {
            break;
        }
        text.push_str(&line);
    }
    parse_get(&text).map_err(|e| ClientError::Protocol {
        path: shown,
        message: e.message,
    })
}
