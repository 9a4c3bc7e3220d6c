//! Client credentials: the bearer token (`DIR/token`, generated once) and the kubeconfig
//! (`DIR/kubeconfig`) pointing clients at the server with the CA and token.

use std::path::Path;

use base64::Engine;

use crate::persist::{PersistError, atomic_write};

/// Loads `DIR/token` or generates a random one (256 bits, hex) and stores it.
pub fn load_or_create_token(dir: &Path) -> Result<String, PersistError> {
    let path = dir.join("token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(PersistError::Io { path, source }),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| PersistError::Io {
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let token = hex::encode(bytes);
    atomic_write(&path, token.as_bytes(), 0o600)?;
    Ok(token)
}

/// The kubeconfig YAML for `server` (e.g. `https://127.0.0.1:6443`).
pub fn render(server: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    // JSON string syntax is valid YAML double-quoted scalar syntax.
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: test-apiserver\n\
         \x20 cluster:\n\
         \x20   server: {server}\n\
         \x20   certificate-authority-data: {ca}\n\
         users:\n\
         - name: test-admin\n\
         \x20 user:\n\
         \x20   token: {token}\n\
         contexts:\n\
         - name: test-apiserver\n\
         \x20 context:\n\
         \x20   cluster: test-apiserver\n\
         \x20   user: test-admin\n\
         \x20   namespace: default\n\
         current-context: test-apiserver\n\
         preferences: {{}}\n",
        server = q(server),
        ca = q(&ca),
        token = q(token),
    )
}

/// Writes `DIR/kubeconfig` atomically (mode 0600).
pub fn write(dir: &Path, server: &str, ca_pem: &str, token: &str) -> Result<(), PersistError> {
    atomic_write(
        &dir.join("kubeconfig"),
        render(server, ca_pem, token).as_bytes(),
        0o600,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_stable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = load_or_create_token(dir.path()).expect("token");
        assert_eq!(a.len(), 64);
        assert_eq!(load_or_create_token(dir.path()).expect("token"), a);
    }

    #[test]
    fn kubeconfig_is_valid_yaml_with_the_credentials() {
        let text = render("https://127.0.0.1:6443", "PEM", "tok");
        let v: serde_json::Value = serde_saphyr::from_str(&text).expect("yaml");
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:6443"
        );
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            "UEVN"
        );
        assert_eq!(v["users"][0]["user"]["token"], "tok");
        assert_eq!(v["current-context"], "test-apiserver");
    }
}
