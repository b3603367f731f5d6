//! NOT COMPILED (no `mod` names it) until the auth store (issue 3) is merged: the real body of
//! `pki/registry.rs`, written against the auth store as on branch `auth` (58308dc):
//! `auth::store::Db::{open, client, record_certificate, revoke_certificate,
//! list_certificates}`, `auth::path_in`, `auth::{CertificateRecord, AuthError}`. The CLI uses
//! `Db` like `auth::cli` does; the running daemon's `AuthStore` notices revocations made here
//! (its watcher polls the file) and fires `AuthStore::revocations()`.
//! To wire: replace registry.rs with this file (drop this header paragraph). `pki.rs` needs no
//! change: it uses only `Registry::{open, client, record, revoke, list}`, `CertificateRecord`
//! and `RegistryError`.

use crate::auth::store::Db;
use crate::config::Config;

pub use crate::auth::CertificateRecord;
pub type RegistryError = crate::auth::AuthError;

/// The auth store, as `edgegw certs` uses it.
#[derive(Debug)]
pub struct Registry {
    db: Db,
}

impl Registry {
    pub fn open(config: &Config) -> Result<Self, RegistryError> {
        Db::open(&crate::auth::path_in(&config.gateway.state_dir)).map(|db| Self { db })
    }

    /// The client's id and identity (the certificate's CN), looked up by id or identity.
    pub fn client(&self, client: &str) -> Result<(String, String), RegistryError> {
        let found = self.db.client(client)?;
        Ok((found.id, found.identity))
    }

    pub fn record(&mut self, rec: &CertificateRecord) -> Result<(), RegistryError> {
        self.db.record_certificate(rec)
    }

    pub fn revoke(&mut self, client_or_serial: &str) -> Result<Vec<CertificateRecord>, RegistryError> {
        self.db.revoke_certificate(client_or_serial)
    }

    pub fn list(&self) -> Result<Vec<CertificateRecord>, RegistryError> {
        self.db.list_certificates()
    }
}
