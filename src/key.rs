//! WireGuard keys (Curve25519): strict parsing, formatting, generation. Pure.
//!
//! Parsing is strict on purpose: a key that is not exactly 32 bytes of canonical
//! base64 (or 64 hex digits on the UAPI) is an error, never silently a zero key.
//! Private keys never print: their `Debug` is `<redacted>` and they zeroize on drop.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::{Zeroize, Zeroizing};

pub const KEY_LEN: usize = 32;
/// Length of a key in base64: 32 bytes -> 44 characters with one `=` of padding.
pub const KEY_BASE64_LEN: usize = 44;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key is not valid base64")]
    NotBase64,
    #[error("key is not valid hex")]
    NotHex,
    #[error("key has {0} bytes, WireGuard keys have 32")]
    WrongLength(usize),
    #[error("could not generate a key: {0}")]
    Random(String),
}

fn decode_base64(s: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let bytes = Zeroizing::new(STANDARD.decode(s.trim()).map_err(|_| KeyError::NotBase64)?);
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| KeyError::WrongLength(bytes.len()))
}

fn decode_hex(s: &str) -> Result<[u8; KEY_LEN], KeyError> {
    if s.len() != 2 * KEY_LEN {
        return Err(
            if s.len() % 2 == 0 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                KeyError::WrongLength(s.len() / 2)
            } else {
                KeyError::NotHex
            },
        );
    }
    let mut out = [0u8; KEY_LEN];
    hex::decode_to_slice(s, &mut out).map_err(|_| KeyError::NotHex)?;
    Ok(out)
}

/// A Curve25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode_base64(s).map(Self)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// The UAPI form: 64 lowercase hex digits.
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        decode_hex(s).map(Self)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The all-zero key: the "no key" value of wg(8), never a usable peer.
    pub fn is_zero(&self) -> bool {
        self.0 == [0u8; KEY_LEN]
    }

    /// First characters of the base64 form, for tables and logs.
    pub fn short(&self) -> String {
        self.to_base64()[..8].to_string()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PublicKey::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::from_base64(s)
    }
}

/// A Curve25519 private key. Zeroized on drop; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; KEY_LEN]);

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl PrivateKey {
    /// A new random key from the operating system's CSPRNG, clamped as wg(8) does.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
        // Curve25519 clamping (RFC 7748 section 5), as `wg genkey` does.
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        Ok(Self(bytes))
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode_base64(s).map(Self)
    }

    /// The base64 form, for the key file only.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0))
    }

    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        decode_hex(s).map(Self)
    }

    /// The UAPI form, for `get=1` answers only.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0))
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0u8; KEY_LEN]
    }

    pub fn public_key(&self) -> PublicKey {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }

    /// The key as boringtun's protocol core takes it.
    pub fn to_static_secret(&self) -> x25519_dalek::StaticSecret {
        x25519_dalek::StaticSecret::from(self.0)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A key pair produced by `wg genkey | tee priv | wg pubkey`.
    const PRIV: &str = "uIUuwRH+77e7qjXQiLR3DZKMDDwC7keFphp7QlIDDUc=";
    const PUB: &str = "AQgXJBr4BnX6Qj+zeAM2rZDvLccfoo/9v+ghoh79Dm4=";

    #[test]
    fn public_key_matches_wg_pubkey() {
        let k = PrivateKey::from_base64(PRIV).unwrap();
        assert_eq!(k.public_key().to_base64(), PUB);
    }

    #[test]
    fn base64_and_hex_round_trip() {
        let p = PublicKey::from_base64(PUB).unwrap();
        assert_eq!(p.to_string(), PUB);
        assert_eq!(PublicKey::from_hex(&p.to_hex()).unwrap(), p);
        assert_eq!(p.to_hex().len(), 64);
        let k = PrivateKey::from_base64(PRIV).unwrap();
        assert_eq!(PrivateKey::from_hex(&k.to_hex()).unwrap(), k);
    }

    #[test]
    fn malformed_keys_are_errors_not_zero_keys() {
        let cases = [
            ("", KeyError::WrongLength(0)),
            ("not base64 at all!", KeyError::NotBase64),
            (
                "AQgXJBr4BnX6Qj+zeAM2rZDvLccfoo/9v+ghoh79Dm=",
                KeyError::NotBase64,
            ),
            (
                "AQgXJBr4BnX6Qj+zeAM2rZDvLccfoo/9v+ghoh79",
                KeyError::WrongLength(30),
            ),
            (
                "AQgXJBr4BnX6Qj+zeAM2rZDvLccfoo/9v+ghoh79Dm4AAA==",
                KeyError::WrongLength(34),
            ),
            // Non-canonical: trailing bits set in the last character.
            (
                "AQgXJBr4BnX6Qj+zeAM2rZDvLccfoo/9v+ghoh79Dm5=",
                KeyError::NotBase64,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                PublicKey::from_base64(input),
                Err(want.clone()),
                "{input:?}"
            );
        }
        assert_eq!(PublicKey::from_hex("zz"), Err(KeyError::NotHex));
        assert_eq!(PublicKey::from_hex("abcd"), Err(KeyError::WrongLength(2)));
        assert_eq!(PublicKey::from_hex(&"g".repeat(64)), Err(KeyError::NotHex));
    }

    #[test]
    fn generated_keys_are_clamped_distinct_and_redacted() {
        let a = PrivateKey::generate().unwrap();
        let b = PrivateKey::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_bytes()[0] & 7, 0);
        assert_eq!(a.as_bytes()[31] & 0xc0, 0x40);
        assert_eq!(format!("{a:?}"), "PrivateKey(<redacted>)");
        assert!(!format!("{a:?}").contains(a.to_base64().as_str()));
    }
}
