//! Atomic file replacement. Adapter.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replaces `path` with `contents` atomically: a temporary file in the same directory
/// (created with `mode`, never readable more widely), written and fsynced, renamed over
/// the target, then the directory fsynced. Readers see the old or the new file, never
/// a partial one, also across a crash.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    // A fresh random name each time: the agent runs as PID 1 in its container, so a
    // name from the pid alone collides with the leftover of a crashed predecessor.
    let (tmp, mut f) = loop {
        let tmp = dir.join(format!(
            ".{}.tmp.{}",
            name.to_string_lossy(),
            random_suffix()?
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    };
    let result = (|| {
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// 16 random hex digits.
fn random_suffix() -> io::Result<String> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Writes `path` atomically only when its contents differ; returns whether it wrote.
pub fn write_if_changed(path: &Path, contents: &[u8], mode: u32) -> io::Result<bool> {
    match fs::read(path) {
        Ok(current) if current == contents => Ok(false),
        _ => write_atomic(path, contents, mode).map(|()| true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_writes_replace_the_file_with_the_given_mode_and_leave_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        assert!(write_if_changed(&p, b"one", 0o600).unwrap());
        assert!(
            !write_if_changed(&p, b"one", 0o600).unwrap(),
            "same content: no write"
        );
        assert!(write_if_changed(&p, b"two", 0o600).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_temporary_file_left_by_a_crashed_writer_does_not_block_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mesh.json");
        // What a crashed predecessor with our pid (PID 1 in a container) left behind.
        let stale = dir
            .path()
            .join(format!(".mesh.json.tmp.{}", std::process::id()));
        fs::write(&stale, b"half").unwrap();
        write_atomic(&p, b"whole", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"whole");
        assert_eq!(
            fs::read(&stale).unwrap(),
            b"half",
            "someone else's file is not ours to touch"
        );
    }
}
