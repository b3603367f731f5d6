//! The store-facing side of `edgegw certs`: record issued certificates, revoke, list. Everything
//! that needs the auth store (issue 3) goes through this one module.
//!
//! STUB: the auth store has not landed in this branch. `Registry::open` reports [`NotYet`]; the
//! commands that cannot work without it (revoke, list, crl) fail with exit 69, and `issue`
//! issues without recording (and says so). `registry_auth.rs` next to this file is the real
//! implementation, written against `gateway::auth::AuthStore`; wiring it = replacing this
//! file's body with that file's (see its header).

use crate::config::Config;
use crate::exit::NotYet;

/// One issued device certificate as the auth store keeps it (mirrors
/// `gateway::auth::CertificateRecord`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertificateRecord {
    pub serial_hex: String,
    pub client_id: String,
    pub fingerprint_sha256_hex: String,
    pub not_before: i64,
    pub not_after: i64,
    pub revoked_at: Option<i64>,
}

/// Why the registry failed.
pub type RegistryError = NotYet;

/// The auth store, as `edgegw certs` uses it.
#[derive(Debug)]
pub struct Registry {
    _private: (),
}

impl Registry {
    pub fn open(_config: &Config) -> Result<Self, RegistryError> {
        Err(NotYet {
            command: "certs (auth store)",
            issue: 3,
        })
    }

    /// The client's id and identity (the certificate's CN), looked up by id or identity.
    pub fn client(&self, _client: &str) -> Result<(String, String), RegistryError> {
        Err(self.not_yet())
    }

    pub fn record(&mut self, _rec: &CertificateRecord) -> Result<(), RegistryError> {
        Err(self.not_yet())
    }

    pub fn revoke(
        &mut self,
        _client_or_serial: &str,
    ) -> Result<Vec<CertificateRecord>, RegistryError> {
        Err(self.not_yet())
    }

    pub fn list(&self) -> Result<Vec<CertificateRecord>, RegistryError> {
        Err(self.not_yet())
    }

    fn not_yet(&self) -> NotYet {
        NotYet {
            command: "certs (auth store)",
            issue: 3,
        }
    }
}
