//! Identities, WireGuard style: each end has an Ed25519 key pair; the
//! public key (32 bytes, base64) is what the operator copies to the other
//! end. On the wire each end presents a self-signed certificate of its key,
//! and a rustls verifier accepts the peer only if the certificate's key is
//! one of the pinned keys. Names, CAs and validity dates play no part.

use fjord_proto::key::{PublicKey, PublicKeyError};
use fjord_proto::SessionId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::path::Path;
use std::sync::{Arc, RwLock};
use thiserror::Error;

/// Problems with keys and key files.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// The key file cannot be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The key file exists and would be overwritten.
    #[error("key file {0} already exists; remove it first if you really mean to replace this node's identity (its peers must then be given the new public key)")]
    Exists(String),
    /// The key file is not an Ed25519 PKCS#8 PEM key.
    #[error("key file {path} is not an fjord private key (Ed25519, PKCS#8 PEM, as written by `keygen`): {why}")]
    BadKeyFile {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// A public key string is malformed.
    #[error(transparent)]
    BadPublicKey(#[from] PublicKeyError),
    /// The private key file may be read (or changed) by users other than
    /// its owner.
    #[error("key file {path} is {} by group or others (mode {mode:04o}); run: chmod 600 {path}", open_to(*.mode))]
    KeyFileMode {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// Certificate generation or TLS configuration failed.
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// How a key file with permission bits `mode` is open to others, for
/// [`IdentityError::KeyFileMode`].
fn open_to(mode: u32) -> &'static str {
    if mode & 0o044 != 0 {
        "readable"
    } else if mode & 0o022 != 0 {
        "writable"
    } else {
        "accessible"
    }
}

/// The key of a certificate.
pub fn key_of_certificate(cert: &CertificateDer<'_>) -> Option<PublicKey> {
    let parsed = ParsedCertificate::try_from(cert).ok()?;
    PublicKey::from_spki(parsed.subject_public_key_info().as_ref())
}

/// This node's key pair and its self-signed certificate.
pub struct Identity {
    key: rcgen::KeyPair,
    cert: CertificateDer<'static>,
    public: PublicKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.public)
    }
}

impl Identity {
    /// A fresh random identity.
    pub fn generate() -> Result<Identity, IdentityError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| IdentityError::Tls(e.to_string()))?;
        Identity::from_key(key)
    }

    fn from_key(key: rcgen::KeyPair) -> Result<Identity, IdentityError> {
        let raw: [u8; 32] = key
            .public_key_raw()
            .try_into()
            .map_err(|_| IdentityError::Tls("Ed25519 public key is not 32 bytes".into()))?;
        let params = rcgen::CertificateParams::new(vec!["fjord".to_string()])
            .map_err(|e| IdentityError::Tls(e.to_string()))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| IdentityError::Tls(e.to_string()))?;
        Ok(Identity {
            cert: cert.der().clone(),
            key,
            public: PublicKey(raw),
        })
    }

    /// Reads a private key file written by [`Identity::save`]. A file that
    /// group or others may read, write or execute is refused
    /// ([`IdentityError::KeyFileMode`]): this node's identity must be
    /// readable by its owner only (mode 0600 or 0400).
    pub fn load(path: &Path) -> Result<Identity, IdentityError> {
        use std::io::Read;
        let name = path.display().to_string();
        let io = |source| IdentityError::Io {
            path: name.clone(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // The mode of the file opened, not of whatever the path names
            // a moment later.
            let mode = file.metadata().map_err(io)?.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(IdentityError::KeyFileMode { path: name, mode });
            }
        }
        let mut pem = String::new();
        file.read_to_string(&mut pem).map_err(io)?;
        let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| IdentityError::BadKeyFile {
            path: name.clone(),
            why: e.to_string(),
        })?;
        if key.algorithm() != &rcgen::PKCS_ED25519 {
            return Err(IdentityError::BadKeyFile {
                path: name,
                why: "not an Ed25519 key".into(),
            });
        }
        Identity::from_key(key)
    }

    /// Writes the private key to a new file readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        use std::io::Write;
        let name = path.display().to_string();
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                IdentityError::Exists(name.clone())
            } else {
                IdentityError::Io {
                    path: name.clone(),
                    source,
                }
            }
        })?;
        f.write_all(self.key.serialize_pem().as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|source| IdentityError::Io { path: name, source })
    }

    /// The public key to give to peers.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// rustls client configuration: present our certificate, accept only
    /// a server whose key is `server_key`.
    pub fn client_tls(&self, server_key: PublicKey) -> Result<rustls::ClientConfig, IdentityError> {
        let provider = provider();
        let verifier = Arc::new(PinnedKeys {
            allowed: AllowedKeys::new(vec![server_key]),
            provider: provider.clone(),
        });
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| IdentityError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(vec![self.cert.clone()], self.private_key_der())
            .map_err(|e| IdentityError::Tls(e.to_string()))?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }

    /// rustls server configuration: present our certificate, require a
    /// client certificate whose key is one of `allowed` at the time of
    /// the handshake (see [`AllowedKeys::replace`]).
    pub fn server_tls(&self, allowed: AllowedKeys) -> Result<rustls::ServerConfig, IdentityError> {
        let provider = provider();
        let verifier = Arc::new(PinnedKeys {
            allowed,
            provider: provider.clone(),
        });
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| IdentityError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.private_key_der())
            .map_err(|e| IdentityError::Tls(e.to_string()))?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }
}

/// The TLS application protocol name.
pub const ALPN: &[u8] = b"fjord";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The peer's key from a connection's TLS identity.
pub fn peer_key(identity: Option<Box<dyn std::any::Any>>) -> Option<PublicKey> {
    let certs = identity?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    key_of_certificate(certs.first()?)
}

/// The pinned keys a server accepts, shared with its TLS verifier so
/// that a reload changes them for the next handshake (connections open
/// already are not affected; the server checks every new stream).
#[derive(Clone, Debug, Default)]
pub struct AllowedKeys(Arc<RwLock<Arc<Vec<PublicKey>>>>);

impl AllowedKeys {
    /// Exactly `keys`.
    pub fn new(keys: Vec<PublicKey>) -> AllowedKeys {
        AllowedKeys(Arc::new(RwLock::new(Arc::new(keys))))
    }

    /// The keys in force now.
    pub fn get(&self) -> Arc<Vec<PublicKey>> {
        match self.0.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// True when `key` is pinned now.
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.get().contains(key)
    }

    /// Pins exactly `keys` from now on.
    pub fn replace(&self, keys: Vec<PublicKey>) {
        let keys = Arc::new(keys);
        match self.0.write() {
            Ok(mut k) => *k = keys,
            Err(poisoned) => *poisoned.into_inner() = keys,
        }
    }
}

/// A verifier that accepts exactly the pinned keys (both directions).
#[derive(Debug)]
struct PinnedKeys {
    allowed: AllowedKeys,
    provider: Arc<CryptoProvider>,
}

impl PinnedKeys {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let key = key_of_certificate(cert).ok_or(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ))?;
        if self.allowed.contains(&key) {
            Ok(())
        } else {
            tracing::warn!(peer_key = %key, "refused a peer whose key is not pinned");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for PinnedKeys {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for PinnedKeys {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The operating system's random number generator failed.
#[derive(Debug, Error)]
#[error("the operating system's random number generator failed")]
pub struct RandomError;

/// A fresh session id from the operating system's cryptographic random
/// number generator (through rustls' ring provider): another key cannot
/// guess it to take a session over.
pub fn try_random_session_id() -> Result<SessionId, RandomError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| RandomError)?;
    Ok(SessionId(u128::from_le_bytes(bytes)))
}

/// A fresh session id, as [`try_random_session_id`].
///
/// # Panics
///
/// When the operating system cannot give random bytes (no entropy source
/// at all): no session can be started safely then.
pub fn random_session_id() -> SessionId {
    match try_random_session_id() {
        Ok(id) => id,
        Err(e) => panic!("{e}; cannot start a session"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_come_from_the_system_rng() {
        let ids: std::collections::HashSet<SessionId> = (0..64)
            .map(|_| try_random_session_id().expect("OS RNG"))
            .collect();
        assert_eq!(ids.len(), 64);
        assert!(ids.iter().all(|id| id.0 != 0));
    }

    #[test]
    fn keys_round_trip_through_files_and_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let id = Identity::generate().unwrap();
        id.save(&path).unwrap();
        assert!(matches!(id.save(&path), Err(IdentityError::Exists(_))));
        let back = Identity::load(&path).unwrap();
        assert_eq!(back.public_key(), id.public_key());
        let text = id.public_key().to_string();
        assert_eq!(text.len(), 44);
        assert_eq!(text.parse::<PublicKey>().unwrap(), id.public_key());
        assert_eq!(key_of_certificate(&id.cert), Some(id.public_key()));
        assert!("nope".parse::<PublicKey>().is_err());
    }

    #[cfg(unix)]
    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[cfg(unix)]
    #[test]
    fn saved_keys_are_owner_only_and_open_ones_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("recv.key");
        let id = Identity::generate().expect("keygen");
        id.save(&path).expect("save");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        for ok in [0o600, 0o400] {
            chmod(&path, ok);
            let back = Identity::load(&path).expect("an owner-only key loads");
            assert_eq!(back.public_key(), id.public_key());
        }
        let shown = path.display().to_string();
        for (bad, word) in [
            (0o644, "readable"),
            (0o640, "readable"),
            (0o604, "readable"),
            (0o620, "writable"),
            (0o610, "accessible"),
        ] {
            chmod(&path, bad);
            match Identity::load(&path) {
                Err(IdentityError::KeyFileMode { path: p, mode }) => {
                    assert_eq!((p.as_str(), mode), (shown.as_str(), bad));
                }
                other => panic!("{bad:o}: {other:?}"),
            }
            let msg = Identity::load(&path).expect_err("refused").to_string();
            assert_eq!(
                msg,
                format!(
                    "key file {shown} is {word} by group or others (mode {bad:04o}); run: chmod 600 {shown}"
                )
            );
        }
    }

    #[test]
    fn the_verifier_accepts_only_pinned_keys() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let v = PinnedKeys {
            allowed: AllowedKeys::new(vec![a.public_key()]),
            provider: provider(),
        };
        assert!(v.check(&a.cert).is_ok());
        assert!(v.check(&b.cert).is_err());
        assert!(v.check(&CertificateDer::from(vec![0u8; 10])).is_err());
        // A reload: b pinned instead of a, for the next handshake.
        v.allowed.replace(vec![b.public_key()]);
        assert!(v.check(&a.cert).is_err());
        assert!(v.check(&b.cert).is_ok());
    }
}
