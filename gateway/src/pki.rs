//! `edgegw certs …` and the daemon's certificate expiry checks. The PKI itself (keys,
//! certificates, CSRs, CRLs) is the `certs` crate; this module adds the configuration (which CA,
//! which files), the auth store (through [`registry`], the only place that touches it), output
//! for people and for `--json`, and logging.
//!
//! Expiry: the gateway's own certificates (uplink client, device CA; the DTLS server certificate
//! once `[coap]` exists) are checked at start, daily and on SIGHUP. Within
//! `certs.expiry_warning` of its end a certificate is warned about; an expired one is an error.
//! Only an expired uplink certificate with `uplink.refuse_expired = true` stops the start
//! (exit 78); otherwise the daemon runs and keeps buffering.

pub mod registry;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use certs::{Authority, PkiError, Revoked};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cli::CertsCommand;
use crate::config::ConfigFileError;
use crate::config::{Config, Profile, value};
use registry::{CertificateRecord, Registry};

/// How often the daemon re-checks certificate expiry.
pub const EXPIRY_CHECK_PERIOD: Duration = Duration::from_secs(86_400);

/// Where the dev profile keeps its PKI, under the dev root.
pub fn dev_pki_dir(root: &Path) -> PathBuf {
    root.join("pki")
}

/// Errors of the `certs` commands that are the operator's to fix (the exit status for each is
/// decided at the edge, main.rs's exit table).
#[derive(Debug, thiserror::Error)]
pub enum PkiCommandError {
    #[error("--ttl {ttl}: {reason}")]
    BadTtl { ttl: String, reason: String },
    #[error(
        "no device CA configured: set certs.device_ca_cert and certs.device_ca_key \
         (EDGEGW_CERTS_DEVICE_CA_CERT / _KEY), or use --dev for the development CA"
    )]
    NoDeviceCa,
    #[error("device CA {cert} / {key}: {source}")]
    DeviceCa {
        cert: String,
        key: String,
        source: PkiError,
    },
    #[error("{path} already exists; refusing to overwrite it (remove it or choose another --out)")]
    OutputExists { path: String },
    #[error("cannot read CSR {path}: {source}")]
    ReadCsr {
        path: String,
        source: std::io::Error,
    },
    #[error("no unrevoked certificate matches `{target}` (give a client id, identity or serial)")]
    NothingToRevoke { target: String },
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
pub fn with_dev_pki(config: &Config) -> anyhow::Result<Config> {
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

fn device_ca(config: &Config) -> anyhow::Result<Authority> {
    let config = with_dev_pki(config)?;
    let (Some(cert), Some(key)) = (&config.certs.device_ca_cert, &config.certs.device_ca_key)
    else {
        return Err(PkiCommandError::NoDeviceCa.into());
    };
    if let Ok(meta) = std::fs::metadata(key) {
        use std::os::unix::fs::PermissionsExt as _;
        if meta.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "edgegw: warning: the device CA key {} is readable by other users; chmod 600 it",
                key.display()
            );
        }
    }
    Authority::load(cert, key).map_err(|source| {
        PkiCommandError::DeviceCa {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            source,
        }
        .into()
    })
}

// ---------------------------------------------------------------------------------------------
// Commands

/// Runs one `edgegw certs …` command.
pub fn command(config: &Config, cmd: &CertsCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::InitDev { dir } => init_dev(dir, json),
        CertsCommand::Issue {
            client,
            ttl,
            out,
            csr,
        } => issue(
            config,
            client,
            ttl,
            out.as_deref().unwrap_or(Path::new(".")),
            csr.as_deref(),
            json,
        ),
        CertsCommand::Revoke { target } => revoke(config, target, json),
        CertsCommand::List => list(config, json),
        CertsCommand::Crl { out } => crl(config, out, json),
    }
}

fn init_dev(dir: &Path, json: bool) -> anyhow::Result<()> {
    let pki = certs::init_dev(dir, now_unix())?;
    let files: Vec<PathBuf> = certs::dev::DEV_FILES
        .iter()
        .map(|f| pki.dir.join(f))
        .collect();
    if json {
        println!("{}", serde_json::json!({ "dir": pki.dir, "files": files }));
    } else {
        println!("created a development PKI in {}:", pki.dir.display());
        for file in files {
            println!("  {}", file.display());
        }
    }
    Ok(())
}

/// What `certs issue` prints.
#[derive(Debug, Serialize)]
struct IssueOutput {
    client: String,
    identity: String,
    serial: String,
    fingerprint_sha256: String,
    not_before: i64,
    not_after: i64,
    cert: PathBuf,
    key: Option<PathBuf>,
    recorded: bool,
}

fn parse_ttl(ttl: &str) -> Result<Duration, PkiCommandError> {
    ttl.parse::<value::Duration>()
        .map(value::Duration::get)
        .map_err(|reason| PkiCommandError::BadTtl {
            ttl: ttl.to_owned(),
            reason,
        })
}

/// A file name for a certificate of `identity`: unsafe characters become `_`.
fn file_stem(identity: &str) -> String {
    let stem: String = identity
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match stem.trim_start_matches('.') {
        "" => "device".to_owned(),
        s => s.to_owned(),
    }
}

fn issue(
    config: &Config,
    client: &str,
    ttl_text: &str,
    out: &Path,
    csr: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let ttl = parse_ttl(ttl_text)?;
    let ca = device_ca(config)?;
    // Only known clients get certificates; the CN is the client's identity.
    let mut registry = Registry::open(config)?;
    let (client_id, identity) = registry.client(client)?;
    let csr_pem = csr
        .map(|path| {
            std::fs::read_to_string(path).map_err(|source| PkiCommandError::ReadCsr {
                path: path.display().to_string(),
                source,
            })
        })
        .transpose()?;
    let issued = sign(&ca, &identity, ttl, ttl_text, csr_pem.as_deref())?;

    let stem = file_stem(&identity);
    let cert_path = out.join(format!("{stem}.crt"));
    let key_path = issued
        .key_pem
        .as_ref()
        .map(|_| out.join(format!("{stem}.key")));
    for path in std::iter::once(&cert_path).chain(key_path.as_ref()) {
        if path.exists() {
            return Err(PkiCommandError::OutputExists {
                path: path.display().to_string(),
            }
            .into());
        }
    }
    // Record first: a certificate that exists must be revocable.
    registry.record(&record_of(&issued, &client_id))?;
    registry.record_audit(config, "cert.issue", &issued.info.serial_hex);
    if !out.exists() {
        certs::files::ensure_private_dir(out).map_err(|source| PkiError::Io {
            path: out.display().to_string(),
            source,
        })?;
    }
    if let (Some(path), Some(key)) = (&key_path, &issued.key_pem) {
        certs::files::write_atomic(path, key.as_bytes(), 0o600).map_err(|source| PkiError::Io {
            path: path.display().to_string(),
            source,
        })?;
    }
    certs::files::write_atomic(&cert_path, issued.cert_pem.as_bytes(), 0o644).map_err(
        |source| PkiError::Io {
            path: cert_path.display().to_string(),
            source,
        },
    )?;

    let output = IssueOutput {
        client: client_id,
        identity,
        serial: issued.info.serial_hex,
        fingerprint_sha256: issued.info.fingerprint_sha256_hex,
        not_before: issued.info.not_before,
        not_after: issued.info.not_after,
        cert: cert_path,
        key: key_path,
        recorded: true,
    };
    if json {
        println!("{}", serde_json::to_string(&output)?);
    } else {
        println!("issued a device certificate for {}", output.identity);
        println!("  serial       {}", output.serial);
        println!("  sha256       {}", output.fingerprint_sha256);
        println!("  not after    {}", rfc3339(output.not_after));
        println!("  certificate  {}", output.cert.display());
        match &output.key {
            Some(key) => println!("  key          {} (0600)", key.display()),
            None => println!("  key          stays with the device (CSR signed)"),
        }
    }
    Ok(())
}

/// A certificate as `certs list` / `certs revoke` show it.
#[derive(Debug, Serialize)]
struct ListedCert<'a> {
    serial: &'a str,
    client_id: &'a str,
    /// The client's identity (the CN); empty if the client was removed since.
    identity: String,
    fingerprint_sha256: &'a str,
    not_before: i64,
    not_after: i64,
    revoked_at: Option<i64>,
    status: &'static str,
}

fn status_of(rec: &CertificateRecord, now: i64) -> &'static str {
    match rec.revoked_at {
        Some(_) => "revoked",
        None if rec.not_after <= now => "expired",
        None => "valid",
    }
}

fn print_records(
    registry: &Registry,
    records: &[CertificateRecord],
    json: bool,
) -> anyhow::Result<()> {
    let now = now_unix();
    let listed: Vec<ListedCert<'_>> = records
        .iter()
        .map(|r| ListedCert {
            serial: &r.serial_hex,
            client_id: &r.client_id,
            identity: registry
                .client(&r.client_id)
                .map(|(_, identity)| identity)
                .unwrap_or_default(),
            fingerprint_sha256: &r.fingerprint_sha256_hex,
            not_before: r.not_before,
            not_after: r.not_after,
            revoked_at: r.revoked_at,
            status: status_of(r, now),
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string(&listed)?);
        return Ok(());
    }
    println!(
        "{:<32}  {:<24}  {:<20}  STATUS",
        "SERIAL", "CLIENT", "NOT AFTER"
    );
    for c in &listed {
        let client = if c.identity.is_empty() {
            c.client_id
        } else {
            &c.identity
        };
        println!(
            "{:<32}  {:<24}  {:<20}  {}",
            c.serial,
            client,
            rfc3339(c.not_after),
            c.status
        );
    }
    Ok(())
}

fn revoke(config: &Config, target: &str, json: bool) -> anyhow::Result<()> {
    let mut registry = Registry::open(config)?;
    let revoked = registry.revoke(target)?;
    if revoked.is_empty() {
        return Err(PkiCommandError::NothingToRevoke {
            target: target.to_owned(),
        }
        .into());
    }
    for r in &revoked {
        registry.record_audit(config, "cert.revoke", &r.serial_hex);
    }
    print_records(&registry, &revoked, json)?;
    Ok(())
}

fn list(config: &Config, json: bool) -> anyhow::Result<()> {
    let registry = Registry::open(config)?;
    print_records(&registry, &registry.list()?, json)?;
    Ok(())
}

fn crl(config: &Config, out: &Path, json: bool) -> anyhow::Result<()> {
    let ca = device_ca(config)?;
    let registry = Registry::open(config)?;
    let revoked: Vec<Revoked> = registry
        .list()?
        .into_iter()
        .filter_map(|r| {
            r.revoked_at.map(|at| Revoked {
                serial_hex: r.serial_hex,
                revoked_at: at,
            })
        })
        .collect();
    let pem = ca.crl_pem(&revoked, config.certs.crl_validity.get(), now_unix())?;
    certs::files::write_atomic(out, pem.as_bytes(), 0o644).map_err(|source| PkiError::Io {
        path: out.display().to_string(),
        source,
    })?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "crl": out, "revoked": revoked.len() })
        );
    } else {
        println!(
            "wrote a CRL with {} revoked certificate(s) to {}",
            revoked.len(),
            out.display()
        );
    }
    Ok(())
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

/// Issues a device certificate for `client` (id or identity) and records it, keeping the PEMs in
/// memory (the management API's `POST /certs`). `csr_pem`: sign the device's CSR instead of
/// generating a key. Errors as `certs issue` (`PkiCommandError::BadTtl`, `AuthError::NotFound`,
/// `PkiCommandError::NoDeviceCa`).
pub fn issue_in_memory(
    config: &Config,
    client: &str,
    ttl_text: &str,
    csr_pem: Option<&str>,
) -> anyhow::Result<(CertificateRecord, certs::Issued)> {
    let ttl = parse_ttl(ttl_text)?;
    let ca = device_ca(config)?;
    let mut registry = Registry::open(config)?;
    let (client_id, identity) = registry.client(client)?;
    let issued = sign(&ca, &identity, ttl, ttl_text, csr_pem)?;
    let record = record_of(&issued, &client_id);
    registry.record(&record)?;
    Ok((record, issued))
}

/// A device certificate for `identity` from `ca`, valid `ttl` from now: a new key, or the
/// key of `csr_pem`. A TTL the CA cannot give is `PkiCommandError::BadTtl` (exit 64).
fn sign(
    ca: &Authority,
    identity: &str,
    ttl: Duration,
    ttl_text: &str,
    csr_pem: Option<&str>,
) -> anyhow::Result<certs::Issued> {
    let now = now_unix();
    match csr_pem {
        Some(pem) => ca.sign_device_csr(identity, pem, ttl, now),
        None => ca.issue_device(identity, ttl, now),
    }
    .map_err(|e| match e {
        PkiError::TtlBeyondCa { .. } | PkiError::ZeroTtl | PkiError::TtlOutOfRange => {
            anyhow::Error::from(PkiCommandError::BadTtl {
                ttl: ttl_text.to_owned(),
                reason: e.to_string(),
            })
        }
        other => anyhow::Error::from(other),
    })
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
