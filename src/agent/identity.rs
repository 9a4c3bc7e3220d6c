//! The node's WireGuard identity: `<state-dir>/private.key`. Adapter.
//!
//! Loaded if present, generated and stored otherwise. The directory is 0700 and the
//! file 0600, written atomically. A key file that anyone but root could read, or that
//! does not hold a key, is an error: regenerating silently would change the node's
//! identity under its peers, and a readable key may already be compromised.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::fsutil::write_atomic;
use crate::key::PrivateKey;

pub const KEY_FILE: &str = "private.key";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("private key {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "private key {path} has mode {mode:04o}: it must not be accessible by group or others (chmod 600, and consider rotating it)"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("private key {path} is not a regular file")]
    NotAFile { path: PathBuf },
    // Never includes the file's content.
    #[error(
        "private key {path} does not hold a WireGuard private key (base64 of 32 bytes): {reason}"
    )]
    Content { path: PathBuf, reason: String },
    #[error("cannot generate a private key: {0}")]
    Generate(String),
}

/// Loads the node's private key, generating and storing one on first start.
pub fn load_or_generate(state_dir: &Path) -> Result<PrivateKey, Error> {
    ensure_private_dir(state_dir)?;
    let path = state_dir.join(KEY_FILE);
    match fs::symlink_metadata(&path) {
        Ok(meta) => {
            if !meta.file_type().is_file() {
                return Err(Error::NotAFile { path });
            }
            let mode = meta.mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(Error::Permissions { path, mode });
            }
            let text =
                zeroize::Zeroizing::new(fs::read_to_string(&path).map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?);
            PrivateKey::from_base64(text.trim()).map_err(|e| Error::Content {
                path,
                reason: e.to_string(),
            })
        }
        Err(e) if e.kind() == ErrorKind::NotFound => generate(state_dir),
        Err(source) => Err(Error::Io { path, source }),
    }
}

/// Generates a new key and stores it atomically in place of the current one (first
/// start, and key rotation).
pub fn generate(state_dir: &Path) -> Result<PrivateKey, Error> {
    ensure_private_dir(state_dir)?;
    let path = state_dir.join(KEY_FILE);
    let key = PrivateKey::generate().map_err(|e| Error::Generate(e.to_string()))?;
    let mut text = key.to_base64();
    text.push('\n');
    write_atomic(&path, text.as_bytes(), 0o600).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    tracing::info!(path = %path.display(), public_key = %key.public_key(), "generated a new WireGuard key");
    Ok(key)
}

/// Creates the directory 0700, or tightens an existing one to 0700 (kubelet creates
/// hostPath directories 0755).
fn ensure_private_dir(dir: &Path) -> Result<(), Error> {
    let err = |source| Error::Dir {
        path: dir.to_path_buf(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    let meta = fs::metadata(dir).map_err(err)?;
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_generated_once_with_private_permissions_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = load_or_generate(&state).unwrap();
        let second = load_or_generate(&state).unwrap();
        assert_eq!(first, second);
        assert_eq!(fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
        assert_eq!(
            fs::metadata(state.join(KEY_FILE)).unwrap().mode() & 0o777,
            0o600
        );
        let on_disk = fs::read_to_string(state.join(KEY_FILE)).unwrap();
        assert_eq!(on_disk.trim(), first.to_base64().as_str());
    }

    #[test]
    fn a_world_readable_directory_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        load_or_generate(dir.path()).unwrap();
        assert_eq!(fs::metadata(dir.path()).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn bad_permissions_or_content_are_errors_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let key = PrivateKey::generate().unwrap();
        fs::write(&path, key.to_base64().as_bytes()).unwrap();

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_generate(dir.path()).unwrap_err();
        assert!(
            matches!(err, Error::Permissions { mode: 0o644, .. }),
            "{err}"
        );

        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load_or_generate(dir.path()).unwrap(), key);

        fs::write(&path, "c2VjcmV0IHNlY3JldA==").unwrap();
        let err = load_or_generate(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Content { .. }), "{err}");
        assert!(
            !err.to_string().contains("c2VjcmV0"),
            "the content is never echoed: {err}"
        );
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "c2VjcmV0IHNlY3JldA==",
            "nothing was overwritten"
        );
    }
}
