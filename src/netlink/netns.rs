//! Network namespace handles. Adapter.
//!
//! Namespace membership is per thread, so work inside another namespace runs on a
//! short-lived OS thread that enters it and exits afterwards; the caller's thread (often
//! a tokio worker) never changes namespace.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use super::{Error, Result};

/// An open network namespace (a file under /proc or /run/netns).
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens the namespace at `path` (e.g. the CNI_NETNS of a pod) and checks that it
    /// is one.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| Error::Netns {
            path: path.clone(),
            source,
        })?;
        // A namespace file lives on nsfs; anything else (a regular file, a directory,
        // an unmounted bind-mount target) is not a namespace.
        let st = nix::sys::statfs::fstatfs(&file).map_err(|e| Error::Netns {
            path: path.clone(),
            source: e.into(),
        })?;
        if st.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
            return Err(Error::Netns {
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a network namespace",
                ),
            });
        }
        Ok(Self { file, path })
    }

    /// The network namespace of the calling thread.
    pub fn current() -> Result<Self> {
        Self::open(format!("/proc/self/task/{}/ns/net", nix::unistd::gettid()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the calling thread is in this namespace (same nsfs inode).
    fn is_current_thread_s(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let here = std::fs::metadata(format!("/proc/self/task/{}/ns/net", nix::unistd::gettid()));
        match (here, self.file.metadata()) {
            (Ok(here), Ok(target)) => here.dev() == target.dev() && here.ino() == target.ino(),
            _ => false,
        }
    }

    /// Raw descriptor, e.g. for moving a link into this namespace (IFLA_NET_NS_FD).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Runs `f` on a fresh OS thread that has entered this namespace. A thread that is
    /// in it already does not enter it again: setns(2) needs CAP_SYS_ADMIN, which the
    /// agent's container does not have (it rebinds its sockets in its own namespace).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: `self.file` outlives the scoped thread.
                    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
                    if !self.is_current_thread_s() {
                        setns(borrowed, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Netns {
                            path: self.path.clone(),
                            source: e.into(),
                        })?;
                    }
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(Error::Unexpected(format!(
                        "thread inside {} panicked",
                        self.path.display()
                    )))
                })
        })
    }

    /// Writes a sysctl inside this namespace (/proc/sys/net is per network namespace
    /// of the opening thread).
    pub fn write_sysctl(&self, key: &str, value: &str) -> Result<Result<(), crate::sysctl::Error>> {
        self.run(|| crate::sysctl::write(key, value))
    }
}
