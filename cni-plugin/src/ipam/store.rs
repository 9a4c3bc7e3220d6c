//! File-backed IPAM state under `dataDir/<network>/`. Adapter.
//!
//! The layout follows host-local so operators find it familiar: one file per
//! allocated address, named by the address and holding `containerID\r\nifname`, and
//! `last_reserved_ip.<family>` for round-robin. Every operation happens while holding
//! an exclusive `flock` on `lock`, so parallel plugin invocations never hand out one
//! address twice; the lock is released when the [`Store`] is dropped (or the process
//! dies).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use super::Error;

const LOCK_FILE: &str = "lock";
const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub container_id: String,
    pub ifname: String,
}

/// One allocated address and its owner (`None` when the file is unreadable or empty,
/// e.g. after a crash between create and write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: IpAddr,
    pub owner: Option<Owner>,
}

/// The locked IPAM directory of one network.
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

impl Store {
    /// Creates the directory if needed and takes the lock, waiting up to `timeout`
    /// for another invocation to finish (then [`Error::LockTimeout`]).
    pub fn lock(dir: &Path, timeout: Duration) -> Result<Store, Error> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("create directory", dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("open lock", &lock_path))?;
        let deadline = Instant::now() + timeout;
        // Poll with a non-blocking flock: a blocking one could not honour the timeout.
        // The backoff starts tiny because the lock is normally held for well under a
        // millisecond.
        let mut backoff = Duration::from_micros(50);
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => {
                    return Ok(Store {
                        dir: dir.to_path_buf(),
                        _lock: lock,
                    });
                }
                Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                    file = f;
                    if Instant::now() >= deadline {
                        return Err(Error::LockTimeout {
                            path: lock_path,
                            waited: timeout,
                        });
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(5));
                }
                Err((_, errno)) => {
                    return Err(Error::Io {
                        op: "lock",
                        path: lock_path,
                        source: std::io::Error::from(errno),
                    });
                }
            }
        }
    }

    fn path_of(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// Addresses currently allocated (from file names only: no reads).
    pub fn used(&self) -> Result<HashSet<IpAddr>, Error> {
        let mut used = HashSet::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))? {
            let entry = entry.map_err(io_err("list", &self.dir))?;
            if let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            {
                used.insert(ip);
            }
        }
        Ok(used)
    }

    /// Every allocation with its owner.
    pub fn leases(&self) -> Result<Vec<Lease>, Error> {
        let mut leases: Vec<Lease> = self
            .used()?
            .into_iter()
            .map(|ip| Lease {
                ip,
                owner: self.owner_of(ip),
            })
            .collect();
        leases.sort_by_key(|l| l.ip);
        Ok(leases)
    }

    fn owner_of(&self, ip: IpAddr) -> Option<Owner> {
        let text = fs::read_to_string(self.path_of(ip)).ok()?;
        let mut lines = text.split(['\r', '\n']).filter(|l| !l.is_empty());
        let container_id = lines.next()?.trim().to_string();
        let ifname = lines.next().unwrap_or("").trim().to_string();
        Some(Owner {
            container_id,
            ifname,
        })
    }

    /// Records `ip` for `owner`; `Ok(false)` if someone already holds it.
    pub fn reserve(&self, ip: IpAddr, owner: &Owner) -> Result<bool, Error> {
        let path = self.path_of(ip);
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_err("create", &path)(e)),
        };
        let written =
            file.write_all(format!("{}\r\n{}", owner.container_id, owner.ifname).as_bytes());
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(io_err("write", &path)(e));
        }
        Ok(true)
    }

    /// Frees `ip`; freeing a free address is not an error.
    pub fn release(&self, ip: IpAddr) -> Result<(), Error> {
        let path = self.path_of(ip);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    /// The last address handed out in address family slot `family` (0 = IPv4, 1 = IPv6).
    pub fn last_reserved(&self, family: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("{LAST_RESERVED_PREFIX}{family}")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn set_last_reserved(&self, family: usize, ip: IpAddr) -> Result<(), Error> {
        let path = self.dir.join(format!("{LAST_RESERVED_PREFIX}{family}"));
        fs::write(&path, ip.to_string()).map_err(io_err("write", &path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(id: &str) -> Owner {
        Owner {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn reserve_is_exclusive_and_release_makes_the_address_reusable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::lock(dir.path(), Duration::from_secs(1)).unwrap();
        let ip: IpAddr = "10.244.1.2".parse().unwrap();
        assert!(store.reserve(ip, &owner("a")).unwrap());
        assert!(!store.reserve(ip, &owner("b")).unwrap());
        assert_eq!(
            store.leases().unwrap(),
            vec![Lease {
                ip,
                owner: Some(owner("a"))
            }]
        );
        store.release(ip).unwrap();
        store.release(ip).unwrap();
        assert!(store.reserve(ip, &owner("b")).unwrap());
    }

    #[test]
    fn host_local_files_are_understood() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("10.244.1.5"), "abc123\r\neth1").unwrap();
        fs::write(dir.path().join("10.244.1.6"), "").unwrap();
        fs::write(dir.path().join("last_reserved_ip.0"), "10.244.1.6").unwrap();
        let store = Store::lock(dir.path(), Duration::from_secs(1)).unwrap();
        let leases = store.leases().unwrap();
        assert_eq!(
            leases[0].owner,
            Some(Owner {
                container_id: "abc123".into(),
                ifname: "eth1".into()
            })
        );
        assert_eq!(leases[1].owner, None);
        assert_eq!(store.last_reserved(0), Some("10.244.1.6".parse().unwrap()));
        assert_eq!(store.last_reserved(1), None);
    }

    #[test]
    fn a_held_lock_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Store::lock(dir.path(), Duration::from_secs(1)).unwrap();
        // flock locks belong to the open file description, so a second open in the
        // same process contends like another process would.
        let err = Store::lock(dir.path(), Duration::from_millis(30))
            .err()
            .unwrap();
        assert!(matches!(err, Error::LockTimeout { .. }), "{err}");
    }
}
