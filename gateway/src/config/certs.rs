//! `[certs]`: the gateway's device CA (issues and revokes device certificates), certificate
//! expiry warnings and CRL validity.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Check;
use super::value::Duration;

/// Default warning window before a certificate expires.
pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);
/// Default validity of an exported CRL (its nextUpdate).
pub const DEFAULT_CRL_VALIDITY: Duration = Duration::from_secs(7 * 86_400);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCerts {
    device_ca_cert: Option<PathBuf>,
    device_ca_key: Option<PathBuf>,
    expiry_warning: Option<Duration>,
    crl_validity: Option<Duration>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CertsConfig {
    /// The CA that issues device certificates (`edgegw certs issue`). Unset: issuing is not
    /// possible (the dev profile uses its own dev CA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_ca_cert: Option<PathBuf>,
    /// Its private key (PEM, keep it 0600).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_ca_key: Option<PathBuf>,
    /// Warn this long before one of the gateway's own certificates expires.
    pub expiry_warning: Duration,
    /// How long an exported CRL is valid (nextUpdate = now + this).
    pub crl_validity: Duration,
}

impl RawCerts {
    pub fn validate(self, check: &mut Check<'_>) -> CertsConfig {
        match (&self.device_ca_cert, &self.device_ca_key) {
            (Some(_), None) => check.invalid(
                "certs.device_ca_key",
                "is required when certs.device_ca_cert is set",
            ),
            (None, Some(_)) => check.invalid(
                "certs.device_ca_cert",
                "is required when certs.device_ca_key is set",
            ),
            _ => {}
        }
        if let Some(path) = &self.device_ca_cert {
            check.certificates("certs.device_ca_cert", path);
        }
        if let Some(path) = &self.device_ca_key {
            check.private_key("certs.device_ca_key", path);
        }
        let expiry_warning = self.expiry_warning.unwrap_or(DEFAULT_EXPIRY_WARNING);
        let crl_validity = self.crl_validity.unwrap_or(DEFAULT_CRL_VALIDITY);
        if crl_validity.get().as_secs() == 0 {
            check.invalid("certs.crl_validity", "must be at least 1s");
        }
        CertsConfig {
            device_ca_cert: self.device_ca_cert,
            device_ca_key: self.device_ca_key,
            expiry_warning,
            crl_validity,
        }
    }
}
