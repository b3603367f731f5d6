//! The gateway's PKI: development CA, DTLS server and uplink client certificates, device
//! certificates with a TTL, and revocation. Used by `edgegw certs …` and by the dev profile.
//!
//! This crate only reads and writes PEM material; it knows nothing about sockets or the auth
//! store.

pub mod files;

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
