//! A peer's public key: 32 raw Ed25519 bytes, written as the 44-character
//! base64 string `keygen` prints. Certificates and TLS stay in the QUIC
//! layer; the protocol only names keys.

use base64::Engine as _;
use thiserror::Error;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32 key
/// bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A public key: 32 raw Ed25519 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

/// A public key string is malformed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("public key {text:?} is invalid: {why}; expected the 44-character base64 string printed by `keygen`")]
pub struct PublicKeyError {
    /// The string.
    pub text: String,
    /// Why.
    pub why: &'static str,
}

impl PublicKey {
    /// Extracts an Ed25519 key from a DER SubjectPublicKeyInfo.
    pub fn from_spki(spki: &[u8]) -> Option<PublicKey> {
        let rest = spki.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
        let raw: [u8; 32] = rest.try_into().ok()?;
        Some(PublicKey(raw))
    }

    /// The key as a DER SubjectPublicKeyInfo.
    pub fn to_spki(&self) -> Vec<u8> {
        let mut v = ED25519_SPKI_PREFIX.to_vec();
        v.extend_from_slice(&self.0);
        v
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl std::str::FromStr for PublicKey {
    type Err = PublicKeyError;
    fn from_str(s: &str) -> Result<PublicKey, PublicKeyError> {
        let bad = |why| PublicKeyError {
            text: s.to_string(),
            why,
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| bad("not base64"))?;
        let raw: [u8; 32] = raw.try_into().map_err(|_| bad("not 32 bytes"))?;
        Ok(PublicKey(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_spki_round_trip_and_bad_text_says_why() {
        let k = PublicKey([7; 32]);
        assert_eq!(k.to_string().len(), 44);
        assert_eq!(k.to_string().parse::<PublicKey>(), Ok(k));
        assert_eq!(PublicKey::from_spki(&k.to_spki()), Some(k));
        assert_eq!(PublicKey::from_spki(&[0; 44]), None);
        assert_eq!("!!".parse::<PublicKey>().unwrap_err().why, "not base64");
        assert_eq!("AAAA".parse::<PublicKey>().unwrap_err().why, "not 32 bytes");
    }
}
