//! Issuing and revoking device certificates: the one typed API that `edgegw certs issue|revoke`
//! and the management API's `POST /certs` / `DELETE /certs…` (and their SuperMQ forms) both
//! call. One request type ([`IssueRequest`], with its parsed [`Ttl`]) and one error enum
//! ([`CertError`]); the CLI maps the enum to exit statuses (main.rs's table) and the HTTP
//! routes to statuses (`http/routes/certs.rs`), each in one place. Nothing here speaks of
//! command-line flags or HTTP: the words of each front end stay in it.

use std::time::Duration;

use certs::{Authority, PkiError};

use super::registry::{CertificateRecord, Registry};
use super::{now_unix, rfc3339, with_dev_pki};
use crate::auth::AuthError;
use crate::config::{Config, ConfigFileError, value};

/// The lifetime given when a request names none: one year.
pub const DEFAULT_TTL: &str = "8760h";

/// Why a certificate was not issued or revoked.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The requested lifetime: a caller's mistake.
    #[error("ttl `{ttl}` {problem}")]
    BadTtl { ttl: String, problem: TtlProblem },
    #[error(
        "no device CA configured: set certs.device_ca_cert and certs.device_ca_key \
         (EDGEGW_CERTS_DEVICE_CA_CERT / _KEY), or use the development profile's CA"
    )]
    NoDeviceCa,
    #[error("device CA {cert} / {key}: {source}")]
    DeviceCa {
        cert: String,
        key: String,
        #[source]
        source: PkiError,
    },
    #[error(transparent)]
    DevPki(#[from] ConfigFileError),
    #[error("no client `{client}`")]
    UnknownClient { client: String },
    /// The request (its CSR, or the client's identity as a subject) cannot be signed.
    #[error("the certificate request was refused: {0}")]
    Refused(#[source] PkiError),
    /// Signing failed for a reason of the gateway's own (key generation, encoding).
    #[error("cannot issue the certificate: {0}")]
    Issue(#[source] PkiError),
    #[error("no unrevoked certificate matches `{target}` (a client id, identity or serial)")]
    NothingToRevoke { target: String },
    #[error(transparent)]
    Store(AuthError),
}

/// What is wrong with a requested lifetime.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlProblem {
    #[error("is not a duration with a unit (e.g. 30d, 8760h)")]
    Syntax,
    #[error("must be longer than zero")]
    Zero,
    #[error("is out of range")]
    OutOfRange,
    #[error("reaches beyond the CA's own validity (the CA ends at {})", rfc3339(*ca_not_after))]
    BeyondCa { ca_not_after: i64 },
}

impl From<AuthError> for CertError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::NotFound {
                what: "client",
                value,
            } => Self::UnknownClient { client: value },
            other => Self::Store(other),
        }
    }
}

impl From<crate::auth::StoreError> for CertError {
    fn from(e: crate::auth::StoreError) -> Self {
        Self::Store(e.into())
    }
}

/// A requested certificate lifetime, as given and as parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ttl {
    text: String,
    duration: Duration,
}

impl Ttl {
    /// `30d`, `8760h`, … (the config file's duration syntax).
    pub fn parse(text: &str) -> Result<Ttl, CertError> {
        let duration = text
            .parse::<value::Duration>()
            .map_err(|_| CertError::BadTtl {
                ttl: text.to_owned(),
                problem: TtlProblem::Syntax,
            })?
            .get();
        Ok(Ttl {
            text: text.to_owned(),
            duration,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn get(&self) -> Duration {
        self.duration
    }

    fn refused(&self, problem: TtlProblem) -> CertError {
        CertError::BadTtl {
            ttl: self.text.clone(),
            problem,
        }
    }
}

/// A device certificate request: for which client, how long, and optionally the device's own
/// CSR (then its key stays on the device).
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// The client's id or identity; the certificate's CN is its identity.
    pub client: String,
    pub ttl: Ttl,
    pub csr_pem: Option<String>,
}

/// A certificate signed for a known client but not recorded yet: nobody may receive it before
/// [`Signed::record`] made it revocable. Dropping it discards the certificate.
#[derive(Debug)]
#[must_use = "a signed certificate must be recorded before it is handed out"]
pub struct Signed {
    pub client_id: String,
    pub identity: String,
    issued: certs::Issued,
}

/// An issued, recorded device certificate.
#[derive(Debug)]
pub struct IssuedCert {
    pub identity: String,
    pub record: CertificateRecord,
    pub issued: certs::Issued,
}

impl Signed {
    /// Whether the gateway generated the key (no CSR): then the key is handed out too.
    pub fn has_key(&self) -> bool {
        self.issued.key_pem.is_some()
    }

    /// Records the certificate in the auth store, so it can be revoked.
    pub fn record(self, registry: &mut Registry) -> Result<IssuedCert, CertError> {
        let record = record_of(&self.issued, &self.client_id);
        registry.record(&record)?;
        Ok(IssuedCert {
            identity: self.identity,
            record,
            issued: self.issued,
        })
    }
}

/// Signs `req` with `ca` for a client the auth store knows (its identity becomes the CN).
/// Checks the client, then the lifetime against the CA, then the CSR.
pub fn sign(ca: &Authority, registry: &Registry, req: &IssueRequest) -> Result<Signed, CertError> {
    let (client_id, identity) = registry.client(&req.client)?;
    let now = now_unix();
    let issued = match &req.csr_pem {
        Some(pem) => ca.sign_device_csr(&identity, pem, req.ttl.get(), now),
        None => ca.issue_device(&identity, req.ttl.get(), now),
    }
    .map_err(|e| match e {
        PkiError::ZeroTtl => req.ttl.refused(TtlProblem::Zero),
        PkiError::TtlOutOfRange => req.ttl.refused(TtlProblem::OutOfRange),
        PkiError::TtlBeyondCa { ca_not_after, .. } => {
            req.ttl.refused(TtlProblem::BeyondCa { ca_not_after })
        }
        e @ (PkiError::BadCsr { .. }
        | PkiError::CsrKeyNotP256
        | PkiError::CsrSubjectMismatch { .. }
        | PkiError::Pem(_)
        | PkiError::InvalidName { .. }
        | PkiError::BadSan { .. }) => CertError::Refused(e),
        e => CertError::Issue(e),
    })?;
    Ok(Signed {
        client_id,
        identity,
        issued,
    })
}

/// The whole issue: device CA (the dev profile's when none is configured), the auth store,
/// [`sign`], [`Signed::record`]. What `POST /certs` does.
pub fn issue(config: &Config, req: &IssueRequest) -> Result<IssuedCert, CertError> {
    let ca = device_ca(config)?;
    let mut registry = Registry::open(config)?;
    sign(&ca, &registry, req)?.record(&mut registry)
}

/// Revokes the certificate with serial `target`, or every unrevoked one of the client `target`
/// (id or identity). Nothing to revoke is an error.
pub fn revoke(registry: &mut Registry, target: &str) -> Result<Vec<CertificateRecord>, CertError> {
    let nothing = || CertError::NothingToRevoke {
        target: target.to_owned(),
    };
    let revoked = match registry.revoke(target) {
        Ok(revoked) => revoked,
        Err(AuthError::NotFound { .. }) => return Err(nothing()),
        Err(e) => return Err(e.into()),
    };
    if revoked.is_empty() {
        return Err(nothing());
    }
    Ok(revoked)
}

/// The configured device CA, or the dev profile's.
pub fn device_ca(config: &Config) -> Result<Authority, CertError> {
    let config = with_dev_pki(config)?;
    let (Some(cert), Some(key)) = (&config.certs.device_ca_cert, &config.certs.device_ca_key)
    else {
        return Err(CertError::NoDeviceCa);
    };
    if key_exposed(key) {
        tracing::warn!(
            key = %key.display(),
            "the device CA key is readable by other users; chmod 600 it"
        );
    }
    Authority::load(cert, key).map_err(|source| CertError::DeviceCa {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        source,
    })
}

/// Whether a key file is readable by group or others.
pub fn key_exposed(key: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(key).is_ok_and(|meta| meta.permissions().mode() & 0o077 != 0)
}

/// The auth store's record of `issued`, a certificate of client `client_id`.
fn record_of(issued: &certs::Issued, client_id: &str) -> CertificateRecord {
    CertificateRecord {
        serial_hex: issued.info.serial_hex.clone(),
        client_id: client_id.to_owned(),
        fingerprint_sha256_hex: issued.info.fingerprint_sha256_hex.clone(),
        not_before: issued.info.not_before,
        not_after: issued.info.not_after,
        revoked_at: None,
    }
}
