//! Durable storage of objects in the data directory: a JSON snapshot plus an append-only
//! journal of mutations, compacted into a new snapshot at start-up (and when it grows).
//!
//! Every mutation is appended (one JSON line) and, unless disabled, `fdatasync`ed before
//! the request is answered, so the server loses nothing it acknowledged, whether it is
//! stopped, killed or the host crashes (without fsync: anything but a host crash).
//! Snapshots are always written atomically: temp file, fsync, rename, fsync of the dir.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Stored objects: storage key → (namespace, name) → object.
pub type Objects = BTreeMap<String, BTreeMap<(String, String), Arc<Value>>>;

const SNAPSHOT: &str = "objects.json";
const JOURNAL: &str = "objects.log";
/// Journal length that triggers a compaction while running.
const COMPACT_AFTER: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: corrupt record at line {line}: {source}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    #[error("{0} is used by another test-apiserver (lock held)")]
    Locked(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PersistError + '_ {
    move |source| PersistError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One journal line: the object as stored at `rv`, or `None` when it was deleted.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    rv: u64,
    key: String,
    ns: String,
    name: String,
    object: Option<Value>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    #[serde(rename = "resourceVersion")]
    resource_version: u64,
    objects: Vec<SnapshotEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotEntry {
    key: String,
    object: Value,
}

/// Writes `data` to `path` atomically (temp file in the same dir, fsync, rename, fsync of
/// the directory) with the given permission bits.
pub fn atomic_write(path: &Path, data: &[u8], mode: u32) -> Result<(), PersistError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        PersistError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    })
}

/// An exclusive `flock` on `DIR/lock`, held for the life of the server so that two
/// servers never write the same data directory.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<Self, PersistError> {
        let path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(PersistError::Locked(dir.to_path_buf()));
        }
        Ok(DirLock { _file: file })
    }
}

/// The append-only journal of the object store.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    log: File,
    entries: usize,
    fsync: bool,
}

/// What [`Journal::open`] recovered.
#[derive(Debug, Default)]
pub struct Recovered {
    pub resource_version: u64,
    pub objects: Objects,
}

impl Journal {
    /// Loads the snapshot, replays the journal over it, writes a fresh snapshot and
    /// starts an empty journal.
    pub fn open(dir: &Path, fsync: bool) -> Result<(Journal, Recovered), PersistError> {
        let mut rec = Recovered::default();
        let snap_path = dir.join(SNAPSHOT);
        match fs::read(&snap_path) {
            Ok(bytes) => {
                let snap: Snapshot =
                    serde_json::from_slice(&bytes).map_err(|source| PersistError::Corrupt {
                        path: snap_path.clone(),
                        line: 1,
                        source,
                    })?;
                rec.resource_version = snap.resource_version;
                for e in snap.objects {
                    let key = (
                        crate::meta::namespace(&e.object).to_string(),
                        crate::meta::name(&e.object).to_string(),
                    );
                    rec.objects
                        .entry(e.key)
                        .or_default()
                        .insert(key, Arc::new(e.object));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(PersistError::Io {
                    path: snap_path,
                    source: e,
                });
            }
        }
        let log_path = dir.join(JOURNAL);
        match File::open(&log_path) {
            Ok(f) => replay(&log_path, f, &mut rec)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(PersistError::Io {
                    path: log_path,
                    source: e,
                });
            }
        }
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            log: open_log(&log_path, false)?,
            entries: 0,
            fsync,
        };
        journal.compact(rec.resource_version, &rec.objects)?;
        Ok((journal, rec))
    }

    /// Appends one mutation: the object stored at `rv`, or its deletion.
    pub fn append(
        &mut self,
        rv: u64,
        key: &str,
        ns: &str,
        name: &str,
        object: Option<&Value>,
    ) -> Result<(), PersistError> {
        let rec = Record {
            rv,
            key: key.into(),
            ns: ns.into(),
            name: name.into(),
            object: object.cloned(),
        };
        let mut line = serde_json::to_vec(&rec).map_err(|e| PersistError::Io {
            path: self.dir.join(JOURNAL),
            source: io::Error::other(e),
        })?;
        line.push(b'\n');
        let path = self.dir.join(JOURNAL);
        self.log.write_all(&line).map_err(io_err(&path))?;
        if self.fsync {
            self.log.sync_data().map_err(io_err(&path))?;
        }
        self.entries += 1;
        Ok(())
    }

    /// True when the journal is long enough to be worth folding into a snapshot.
    pub fn wants_compaction(&self) -> bool {
        self.entries >= COMPACT_AFTER
    }

    /// Writes a snapshot of `objects` at `rv` and empties the journal.
    pub fn compact(&mut self, rv: u64, objects: &Objects) -> Result<(), PersistError> {
        let snap = Snapshot {
            resource_version: rv,
            objects: objects
                .iter()
                .flat_map(|(key, objs)| {
                    objs.values().map(move |o| SnapshotEntry {
                        key: key.clone(),
                        object: (**o).clone(),
                    })
                })
                .collect(),
        };
        let path = self.dir.join(SNAPSHOT);
        let bytes = serde_json::to_vec(&snap).map_err(|e| PersistError::Io {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        atomic_write(&path, &bytes, 0o600)?;
        // The snapshot now holds everything; records replayed again after a crash right
        // here are skipped by their rv.
        self.log = open_log(&self.dir.join(JOURNAL), true)?;
        self.entries = 0;
        Ok(())
    }
}

fn open_log(path: &Path, truncate: bool) -> Result<File, PersistError> {
    let mut opts = OpenOptions::new();
    opts.create(true).mode(0o600);
    if truncate {
        opts.write(true).truncate(true);
    } else {
        opts.append(true);
    }
    opts.open(path).map_err(io_err(path))
}

fn replay(path: &Path, f: File, rec: &mut Recovered) -> Result<(), PersistError> {
    let lines: Vec<String> = BufReader::new(f)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(io_err(path))?;
    let n = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: Record = match serde_json::from_str(&line) {
            Ok(r) => r,
            // A torn last line is a write the server never acknowledged.
            Err(_) if i + 1 == n => break,
            Err(source) => {
                return Err(PersistError::Corrupt {
                    path: path.to_path_buf(),
                    line: i + 1,
                    source,
                });
            }
        };
        if r.rv <= rec.resource_version {
            continue;
        }
        rec.resource_version = r.rv;
        let objs = rec.objects.entry(r.key).or_default();
        match r.object {
            Some(o) => {
                objs.insert((r.ns, r.name), Arc::new(o));
            }
            None => {
                objs.remove(&(r.ns, r.name));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, rv: u64) -> Value {
        json!({"metadata": {"name": name, "resourceVersion": rv.to_string()}})
    }

    #[test]
    fn journal_survives_reopen_and_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut j, rec) = Journal::open(dir.path(), false).expect("open");
            assert_eq!(rec.resource_version, 0);
            j.append(1, "core/nodes", "", "a", Some(&node("a", 1)))
                .expect("append");
            j.append(2, "core/nodes", "", "b", Some(&node("b", 2)))
                .expect("append");
            j.append(3, "core/nodes", "", "a", None).expect("append");
        }
        // A write cut short by a crash.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL))
            .expect("log");
        f.write_all(b"{\"rv\":4,\"key\":\"core/no").expect("write");
        drop(f);
        let (_j, rec) = Journal::open(dir.path(), false).expect("reopen");
        assert_eq!(rec.resource_version, 3);
        let nodes = &rec.objects["core/nodes"];
        assert_eq!(nodes.len(), 1);
        assert!(nodes.contains_key(&(String::new(), "b".to_string())));
        // The reopen compacted everything into the snapshot.
        assert_eq!(fs::read(dir.path().join(JOURNAL)).expect("log").len(), 0);
        let (_j, rec) = Journal::open(dir.path(), true).expect("third open");
        assert_eq!(rec.resource_version, 3);
    }

    #[test]
    fn corrupt_middle_record_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join(JOURNAL),
            "garbage\n{\"rv\":1,\"key\":\"k\",\"ns\":\"\",\"name\":\"a\",\"object\":null}\n",
        )
        .expect("write");
        assert!(matches!(
            Journal::open(dir.path(), false),
            Err(PersistError::Corrupt { line: 1, .. })
        ));
    }

    #[test]
    fn dir_lock_is_exclusive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DirLock::acquire(dir.path()).expect("first lock");
        assert!(matches!(
            DirLock::acquire(dir.path()),
            Err(PersistError::Locked(_))
        ));
        drop(first);
        DirLock::acquire(dir.path()).expect("relock");
    }

    #[test]
    fn atomic_write_replaces_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        atomic_write(&p, b"one", 0o600).expect("write");
        atomic_write(&p, b"two", 0o600).expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }
}
