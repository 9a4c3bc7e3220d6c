//! Binds the UAPI unix socket owner-only (0600) from the moment its path exists.
//! Adapter.
//!
//! bind(2) creates the socket file with mode 0777 & ~umask; a chmod afterwards leaves a
//! window in which anyone the umask lets through may connect, and wg(8) hands private
//! keys over this socket. A umask of 0177 around bind would close it, but the umask
//! belongs to the whole process: the agent's other threads write files (the CNI config,
//! its state, the key) at any moment and would get the narrow mask too, and a mutex
//! only orders the callers that take it. So the socket is bound in a fresh 0700
//! directory beside its path, where nobody else can reach it, made 0600 there, and then
//! hard-linked into place: link(2), like bind(2), fails if the path exists, so a running
//! server's socket is never replaced. The temporary names go in every case.

use std::fs::{DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// Tries at a free staging name (random, so a collision means another server).
const STAGING_ATTEMPTS: usize = 8;

/// Binds a listening socket at `path`, mode 0600 from its first appearance there.
/// `AlreadyExists` if something is at `path`.
pub(crate) fn bind_owner_only(path: &Path) -> io::Result<UnixListener> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let staging = Staging::create(parent)?;
    let staged = staging.dir.join("s");
    let listener = UnixListener::bind(&staged)?;
    std::fs::set_permissions(&staged, Permissions::from_mode(0o600))?;
    std::fs::hard_link(&staged, path)?;
    Ok(listener)
}

/// A private directory beside the socket's path; removed with its content on drop.
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn create(parent: &Path) -> io::Result<Staging> {
        for _ in 0..STAGING_ATTEMPTS {
            let mut random = [0u8; 6];
            getrandom::fill(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
            let dir = parent.join(format!(".uapi-{}", hex::encode(random)));
            match DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Staging { dir }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::from(io::ErrorKind::AlreadyExists))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join("s"));
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixStream;

    /// The inotify events (mask, name) of a directory watch, read without blocking.
    fn events(fd: &OwnedFd) -> Vec<(u32, String)> {
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: reads into a live buffer of the given length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let mut out = Vec::new();
        let mut at = 0;
        let header = std::mem::size_of::<libc::inotify_event>();
        while n > 0 && at + header <= n as usize {
            let mask = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().unwrap());
            let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
            let name = &buf[at + header..at + header + len];
            let name = name.split(|b| *b == 0).next().unwrap_or_default();
            out.push((mask, String::from_utf8_lossy(name).into_owned()));
            at += header + len;
        }
        out
    }

    fn watch(dir: &Path) -> OwnedFd {
        // SAFETY: inotify_init1 has no memory preconditions; the fd is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1: {}", io::Error::last_os_error());
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = CString::new(dir.as_os_str().as_bytes()).unwrap();
        let mask = libc::IN_CREATE | libc::IN_ATTRIB | libc::IN_MOVED_TO;
        // SAFETY: path is a live NUL-terminated string.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
        assert!(wd >= 0, "inotify_add_watch: {}", io::Error::last_os_error());
        fd
    }

    #[test]
    fn the_socket_appears_with_mode_0600_and_its_mode_never_changes_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg0.sock");
        let inotify = watch(dir.path());
        let listener = bind_owner_only(&path).unwrap();

        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600);
        // Created once and never chmod-ed afterwards (that would be an IN_ATTRIB): the
        // mode it has now is the mode it had when it appeared.
        let ours: Vec<u32> = events(&inotify)
            .into_iter()
            .filter(|(_, name)| name == "wg0.sock")
            .map(|(mask, _)| mask)
            .collect();
        assert_eq!(ours, [libc::IN_CREATE], "events on the socket's path");
        // The staging directory is gone; the socket answers at its path.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["wg0.sock"]);
        let _client = UnixStream::connect(&path).unwrap();
        let (_conn, _) = listener.accept().unwrap();
    }

    #[test]
    fn a_path_in_use_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg0.sock");
        let first = bind_owner_only(&path).unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();
        let err = bind_owner_only(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let _client = UnixStream::connect(&path).unwrap();
        assert!(first.accept().is_ok());
    }
}
