//! The store-facing side of `edgegw certs`: record issued certificates, revoke, list, look up
//! clients. Everything that touches the auth store goes through this one module. The CLI opens
//! `auth.db` with `auth::store::Db`, like `auth::cli` does; a running daemon's `AuthStore`
//! notices revocations made here (its watcher polls the file) and fires
//! `AuthStore::revocations()`, which the CoAPS listener uses to close live sessions.

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
        Ok(Self {
            db: Db::open(&crate::auth::path_in(&config.gateway.state_dir))?,
        })
    }

    /// The client's id and identity (the certificate's CN), looked up by id or identity.
    pub fn client(&self, client: &str) -> Result<(String, String), RegistryError> {
        let found = self.db.client(client)?;
        Ok((found.id, found.identity))
    }

    pub fn record(&mut self, rec: &CertificateRecord) -> Result<(), RegistryError> {
        self.db.record_certificate(rec)
    }

    pub fn revoke(
        &mut self,
        client_or_serial: &str,
    ) -> Result<Vec<CertificateRecord>, RegistryError> {
        self.db.revoke_certificate(client_or_serial)
    }

    /// Records a certificate action of the CLI in the audit table (actor `cli`).
    pub fn record_audit(&mut self, config: &Config, action: &str, serial: &str) {
        crate::auth::cli::record_audit(&mut self.db, config, action, "certs", serial);
    }

    pub fn list(&self) -> Result<Vec<CertificateRecord>, RegistryError> {
        self.db.list_certificates()
    }
}
