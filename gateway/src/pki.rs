//! Device certificates and the daemon's certificate expiry checks. The PKI itself (keys,
//! certificates, CSRs, CRLs) is the `certs` crate; this module adds the configuration (which CA,
//! which files), the auth store (through [`registry`], the only place that touches it), the one
//! typed issue/revoke API the CLI and `POST /certs` share ([`issue`]), the `edgegw certs …`
//! commands ([`cli`]: output for people and for `--json`), and logging.
//!
//! Expiry: the gateway's own certificates (uplink client, device CA; the DTLS server certificate
//! once `[coap]` exists) are checked at start, daily and on SIGHUP. Within
//! `certs.expiry_warning` of its end a certificate is warned about; an expired one is an error.
//! Only an expired uplink certificate with `uplink.refuse_expired = true` stops the start
//! (exit 78); otherwise the daemon runs and keeps buffering.

pub mod cli;
pub mod issue;
pub mod registry;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::ConfigFileError;
use crate::config::{Config, Profile};
pub use cli::{PkiCommandError, command};
pub use issue::{CertError, IssueRequest, IssuedCert, Ttl, TtlProblem};

/// How often the daemon re-checks certificate expiry.
pub const EXPIRY_CHECK_PERIOD: Duration = Duration::from_secs(86_400);

/// Where the dev profile keeps its PKI, under the dev root.
pub fn dev_pki_dir(root: &Path) -> PathBuf {
    root.join("pki")
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `2026-11-22T20:43:40Z` for a unix time.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

// ---------------------------------------------------------------------------------------------
// Dev profile

/// The dev profile's PKI: created under `<dev root>/pki/` on first use, reused later. When no
/// device CA is configured, the returned config uses the dev CA as `[certs]` device CA.
/// Outside the dev profile the config is returned unchanged.
pub fn with_dev_pki(config: &Config) -> Result<Config, ConfigFileError> {
    let mut config = config.clone();
    let Profile::Dev { root } = &config.profile else {
        return Ok(config);
    };
    let dir = dev_pki_dir(root);
    let pki = certs::open_or_init_dev(&dir, now_unix()).map_err(|e| ConfigFileError {
        what: "development PKI",
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    if pki.created {
        info!(dir = %dir.display(), "created the development PKI");
    } else {
        info!(dir = %dir.display(), "using the existing development PKI");
    }
    if config.certs.device_ca_cert.is_none() && config.certs.device_ca_key.is_none() {
        config.certs.device_ca_cert = Some(pki.ca_cert());
        config.certs.device_ca_key = Some(pki.ca_key());
    }
    // CoAPS in the dev profile: the dev DTLS server certificate, device certificates from the
    // dev CA (issue 6).
    if config.coap_dtls.cert.is_none() && config.coap_dtls.key.is_none() {
        config.coap_dtls.cert = Some(pki.dtls_server_cert());
        config.coap_dtls.key = Some(pki.dtls_server_key());
    }
    if config.coap_dtls.client_ca_certs.is_none() {
        config.coap_dtls.client_ca_certs = config.certs.device_ca_cert.clone();
    }
    Ok(config)
}

// ---------------------------------------------------------------------------------------------
// Expiry

/// One of the gateway's own certificates and how long it has left (the status command shows
/// these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertExpiry {
    /// `uplink client`, `device CA`, `DTLS server`.
    pub what: &'static str,
    pub path: PathBuf,
    /// Unix seconds.
    pub not_after: i64,
    /// Whole days left; negative once expired.
    pub days_left: i64,
}

/// Where a certificate stands relative to the warning window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiryState {
    Valid,
    ExpiresSoon,
    Expired,
}

impl CertExpiry {
    pub fn state(&self, now: i64, window: Duration) -> ExpiryState {
        let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
        if self.not_after <= now {
            ExpiryState::Expired
        } else if self.not_after - now <= window {
            ExpiryState::ExpiresSoon
        } else {
            ExpiryState::Valid
        }
    }
}

/// The gateway's own certificates named by the configuration.
fn own_certificates(config: &Config) -> Vec<(&'static str, PathBuf)> {
    let mut list = Vec::new();
    if let Some(path) = &config.uplink.client_cert {
        list.push(("uplink client", path.clone()));
    }
    if let Some(path) = &config.coap_dtls.cert {
        list.push(("DTLS server", path.clone()));
    }
    if let Some(path) = &config.certs.device_ca_cert {
        list.push(("device CA", path.clone()));
    }
    list
}

/// Expiry of each of the gateway's own certificates that can be read (unreadable ones are
/// logged by [`check_expiry`]).
pub fn expiry_report(config: &Config, now: i64) -> Vec<CertExpiry> {
    own_certificates(config)
        .into_iter()
        .filter_map(|(what, path)| {
            let info = certs::inspect_file(&path).ok()?;
            Some(CertExpiry {
                what,
                days_left: info.days_left(now),
                not_after: info.not_after,
                path,
            })
        })
        .collect()
}

/// Logs every own certificate that expires within `certs.expiry_warning` (warn) or has expired
/// (error). At start (`starting = true`), an expired uplink certificate with
/// `uplink.refuse_expired = true` is an error (exit 78).
pub fn check_expiry(config: &Config, now: i64, starting: bool) -> Result<(), ConfigFileError> {
    let window = config.certs.expiry_warning.get();
    for (what, path) in own_certificates(config) {
        if let Err(e) = certs::inspect_file(&path) {
            warn!(certificate = what, path = %path.display(), "cannot check expiry: {e}");
        }
    }
    for cert in expiry_report(config, now) {
        let path = cert.path.display();
        let when = rfc3339(cert.not_after);
        match cert.state(now, window) {
            ExpiryState::Valid => {
                info!(certificate = cert.what, %path, not_after = %when, days_left = cert.days_left, "certificate valid");
            }
            ExpiryState::ExpiresSoon => {
                warn!(certificate = cert.what, %path, not_after = %when, days_left = cert.days_left,
                    "certificate expires in {} days; renew it", cert.days_left);
            }
            ExpiryState::Expired if cert.what == "uplink client" => {
                if starting && config.uplink.refuse_expired {
                    return Err(ConfigFileError {
                        what: "uplink client certificate",
                        path: path.to_string(),
                        reason: format!(
                            "expired at {when}; refusing to start (uplink.refuse_expired = true)"
                        ),
                    });
                }
                error!(certificate = cert.what, %path, not_after = %when,
                    "certificate has expired: the uplink cannot connect; messages stay in the outbox until it is replaced (then SIGHUP)");
            }
            ExpiryState::Expired => {
                error!(certificate = cert.what, %path, not_after = %when, "certificate has expired; replace it");
            }
        }
    }
    Ok(())
}

/// Re-runs `check` every `period` and on every reload (SIGHUP) until `token` is cancelled.
pub async fn expiry_loop(
    period: Duration,
    token: CancellationToken,
    mut reloads: watch::Receiver<u64>,
    mut check: impl FnMut(),
) {
    let mut next = tokio::time::Instant::now() + period;
    let mut reloads_open = true;
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep_until(next) => next += period,
            changed = reloads.changed(), if reloads_open => if changed.is_err() {
                // No more reloads will come; keep the periodic check only.
                reloads_open = false;
                continue;
            },
        }
        check();
    }
}

/// The daemon's daily (and SIGHUP) expiry check.
pub async fn expiry_task(config: Config, token: CancellationToken, reloads: watch::Receiver<u64>) {
    expiry_loop(EXPIRY_CHECK_PERIOD, token, reloads, || {
        let _ = check_expiry(&config, now_unix(), false);
    })
    .await;
}

#[cfg(test)]
mod tests;
