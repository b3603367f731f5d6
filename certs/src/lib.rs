//! The gateway's PKI: development CA, DTLS server and uplink client certificates, device
//! certificates with a TTL, and revocation. Used by `edgegw certs …` and by the dev profile.
//!
//! This crate only reads and writes PEM material; it knows nothing about sockets or the auth
//! store. Keys are ECDSA P-256, generated and signed with aws-lc-rs (rcgen without ring);
//! certificates, CSRs and CRLs are read with x509-parser.

pub mod authority;
pub mod dev;
pub mod files;
pub mod inspect;

pub use authority::{Authority, Issued, Revoked};
pub use dev::{DevPki, init_dev, open_or_init_dev};
pub use inspect::{CertInfo, inspect_der, inspect_file, inspect_pem, serial_from_hex, sha256_hex};

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a PEM file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key (PKCS#8, SEC1 or PKCS#1)")]
    NoPrivateKey { path: String },
    #[error("{path} is not valid PEM: {reason}")]
    Malformed { path: String, reason: String },
}

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not a usable certificate: {reason}")]
    BadCertificate { reason: String },
    #[error("not a usable private key: {reason}")]
    BadKey { reason: String },
    #[error("the CA private key does not belong to the CA certificate")]
    KeyMismatch,
    #[error("certificate `{common_name}` is not a CA (basicConstraints CA:TRUE missing)")]
    NotACa { common_name: String },
    #[error("name `{name}` {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("`{san}` is neither an IP address nor a DNS name")]
    BadSan { san: String },
    #[error("the TTL must be longer than zero")]
    ZeroTtl,
    #[error("the TTL is out of range")]
    TtlOutOfRange,
    #[error(
        "the TTL reaches beyond the CA's own validity (certificate would end at unix time \
         {requested_not_after}, the CA ends at {ca_not_after}); choose a shorter --ttl"
    )]
    TtlBeyondCa {
        requested_not_after: i64,
        ca_not_after: i64,
    },
    #[error("not a usable certificate request: {reason}")]
    BadCsr { reason: String },
    #[error("the certificate request's key is not ECDSA P-256 (devices must use P-256)")]
    CsrKeyNotP256,
    #[error(
        "the certificate request names CN `{csr_common_name}` but the client's identity is \
         `{identity}`"
    )]
    CsrSubjectMismatch {
        csr_common_name: String,
        identity: String,
    },
    #[error("`{serial}` is not a hex serial number")]
    BadSerial { serial: String },
    #[error("cannot generate: {reason}")]
    Generate { reason: String },
    #[error("{path} already exists; refusing to overwrite a PKI (remove the directory first)")]
    AlreadyExists { path: String },
    #[error("{dir} holds an incomplete development PKI (missing: {}); remove it to start over", missing.join(", "))]
    Incomplete { dir: String, missing: Vec<String> },
}

/// Reads every certificate in a PEM file; at least one must be present.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| PemError::Read {
        path: shown.clone(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Malformed {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate { path: shown });
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| PemError::Read {
        path: shown.clone(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => PemError::NoPrivateKey { path: shown },
        other => PemError::Malformed {
            path: shown,
            reason: other.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("certs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not pem at all\n").unwrap();
        let err = load_certificates(&path).unwrap_err();
        assert!(matches!(err, PemError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("empty.pem"));
        let err = load_private_key(&path).unwrap_err();
        assert!(matches!(err, PemError::NoPrivateKey { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_file_is_a_read_error() {
        let err = load_certificates(Path::new("/nonexistent/edgegw/ca.pem")).unwrap_err();
        assert!(matches!(err, PemError::Read { .. }), "{err}");
    }
}
