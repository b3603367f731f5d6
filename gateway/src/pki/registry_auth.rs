//! NOT COMPILED (no `mod` names it) until the auth store (issue 3) is merged: the real body of
//! `pki/registry.rs`, written against the agreed `gateway::auth` API:
//!   AuthStore::open(path: &Path, config: &AuthConfig) -> Result<AuthStore, AuthError>
//!   record_certificate(&self, &CertificateRecord) -> Result<(), AuthError>
//!   revoke_certificate(&self, client_or_serial: &str) -> Result<Vec<CertificateRecord>, AuthError>
//!   list_certificates(&self) -> Result<Vec<CertificateRecord>, AuthError>
//!   CertificateRecord { serial_hex, client_id, fingerprint_sha256_hex, not_before: i64,
//!                       not_after: i64, revoked_at: Option<i64> }
//! To wire: replace registry.rs with this file (drop this header), then fix up the two
//! assumptions marked ASSUMPTION below to the store's real names: where auth.db lives and
//! `config.auth`, and the client lookup by id or identity. `pki.rs` needs no change: it uses
//! only `Registry::{open, client, record, revoke, list}`, `CertificateRecord` and
//! `RegistryError` (must implement std::error::Error + Send + Sync + 'static).

use crate::config::Config;

pub use crate::auth::CertificateRecord;
pub type RegistryError = crate::auth::AuthError;

/// The auth store, as `edgegw certs` uses it.
#[derive(Debug)]
pub struct Registry {
    store: crate::auth::AuthStore,
}

impl Registry {
    pub fn open(config: &Config) -> Result<Self, RegistryError> {
        // ASSUMPTION: the store lives at <state_dir>/auth.db and its config is `config.auth`.
        let path = config.gateway.state_dir.join("auth.db");
        crate::auth::AuthStore::open(&path, &config.auth).map(|store| Self { store })
    }

    /// The client's id and identity (the certificate's CN), looked up by id or identity.
    pub fn client(&self, client: &str) -> Result<(String, String), RegistryError> {
        // ASSUMPTION: the store's lookup by id or identity; adjust to its real name.
        let found = self.store.client(client)?;
        Ok((found.id.clone(), found.identity.clone()))
    }

    pub fn record(&self, rec: &CertificateRecord) -> Result<(), RegistryError> {
        self.store.record_certificate(rec)
    }

    pub fn revoke(&self, client_or_serial: &str) -> Result<Vec<CertificateRecord>, RegistryError> {
        self.store.revoke_certificate(client_or_serial)
    }

    pub fn list(&self) -> Result<Vec<CertificateRecord>, RegistryError> {
        self.store.list_certificates()
    }
}
