//! TLS: a CA generated once per data directory (kept as `ca.crt`/`ca.key`, so clients'
//! kubeconfigs stay valid across restarts), and a serving certificate issued by it at
//! each start for the addresses clients use.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::persist::atomic_write;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error(transparent)]
    Persist(#[from] crate::persist::PersistError),
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: exists without its counterpart; remove both ca.crt and ca.key to regenerate")]
    HalfCa(String),
    #[error("invalid SAN {0:?}")]
    BadSan(String),
}

/// The cluster CA (PEM).
#[derive(Debug, Clone)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Loads `DIR/ca.crt` + `DIR/ca.key`, or generates and stores them when neither exists.
pub fn load_or_create_ca(dir: &Path) -> Result<Ca, TlsError> {
    let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => Ok(Ca {
            cert_pem: read(&cert_path)?,
            key_pem: read(&key_path)?,
        }),
        (false, false) => {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "test-apiserver-ca");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = params.self_signed(&key)?;
            let ca = Ca {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            };
            // Key first: a crash in between leaves a half CA that is reported, not reused.
            atomic_write(&key_path, ca.key_pem.as_bytes(), 0o600)?;
            atomic_write(&cert_path, ca.cert_pem.as_bytes(), 0o644)?;
            Ok(ca)
        }
        (true, false) => Err(TlsError::HalfCa(cert_path.display().to_string())),
        (false, true) => Err(TlsError::HalfCa(key_path.display().to_string())),
    }
}

/// A subject alternative name of the serving certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    Ip(IpAddr),
    Dns(String),
}

impl San {
    pub fn parse(s: &str) -> San {
        match s.parse::<IpAddr>() {
            Ok(ip) => San::Ip(ip),
            Err(_) => San::Dns(s.to_string()),
        }
    }
}

/// Issues a serving certificate for `sans` from the CA and builds the rustls server
/// configuration (ring provider; ALPN h2 and http/1.1).
pub fn server_config(ca: &Ca, sans: &[San]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "test-apiserver");
    params.distinguished_name = dn;
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s {
            San::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            San::Dns(d) => d
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|_| TlsError::BadSan(d.clone())),
        })
        .collect::<Result<_, _>>()?;
    let cert = params.signed_by(&key, &issuer)?;
    let chain = vec![cert.der().clone(), ca_der(ca)?];
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn ca_der(ca: &Ca) -> Result<CertificateDer<'static>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(ca.cert_pem.as_bytes())
        .map_err(|_| TlsError::Rcgen(rcgen::Error::CouldNotParseCertificate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_created_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = load_or_create_ca(dir.path()).expect("create");
        let b = load_or_create_ca(dir.path()).expect("load");
        assert_eq!(a.cert_pem, b.cert_pem);
        assert_eq!(a.key_pem, b.key_pem);
        assert!(a.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        std::fs::remove_file(dir.path().join("ca.key")).expect("rm");
        assert!(matches!(
            load_or_create_ca(dir.path()),
            Err(TlsError::HalfCa(_))
        ));
    }

    #[test]
    fn serving_config_builds_for_ips_and_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = load_or_create_ca(dir.path()).expect("ca");
        let sans = [
            San::parse("127.0.0.1"),
            San::parse("::1"),
            San::parse("localhost"),
            San::parse("10.0.0.1"),
        ];
        assert_eq!(sans[0], San::Ip("127.0.0.1".parse().expect("ip")));
        assert_eq!(sans[2], San::Dns("localhost".into()));
        let cfg = server_config(&ca, &sans).expect("config");
        assert_eq!(cfg.alpn_protocols.len(), 2);
    }
}
