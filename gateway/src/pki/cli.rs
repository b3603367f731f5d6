//! `edgegw certs …`: the command-line front end of the PKI. Issue and revoke go through the
//! typed API in [`super::issue`]; this module adds what only a command line has: flags, output
//! files, printing for people and for `--json`, the CLI's audit entries. `anyhow` is allowed
//! here (a CLI command module); the exit status of each error is main.rs's table.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use certs::{PkiError, Revoked};
use serde::Serialize;

use super::issue::{self, CertError, IssueRequest, Ttl};
use super::registry::{CertificateRecord, Registry};
use super::{now_unix, rfc3339};
use crate::cli::CertsCommand;
use crate::config::Config;

/// Errors only the `certs` commands have (output files, CSR files); the exit status for each is
/// decided at the edge, main.rs's exit table.
#[derive(Debug, thiserror::Error)]
pub enum PkiCommandError {
    #[error("{path} already exists; refusing to overwrite it (remove it or choose another --out)")]
    OutputExists { path: String },
    #[error("cannot read CSR {path}: {source}")]
    ReadCsr {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

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

/// `--ttl`: the flag is named in the message, the problem is the API's.
pub(super) fn parse_ttl(ttl: &str) -> anyhow::Result<Ttl> {
    Ttl::parse(ttl).with_context(|| format!("--ttl {ttl}"))
}

/// A file name for a certificate of `identity`: unsafe characters become `_`.
pub(super) fn file_stem(identity: &str) -> String {
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
    if let Some(key) = &config.certs.device_ca_key
        && issue::key_exposed(key)
    {
        eprintln!(
            "edgegw: warning: the device CA key {} is readable by other users; chmod 600 it",
            key.display()
        );
    }
    let ca = issue::device_ca(config).map_err(|e| with_flag(e, ttl_text))?;
    let csr_pem = csr
        .map(|path| {
            std::fs::read_to_string(path).map_err(|source| PkiCommandError::ReadCsr {
                path: path.display().to_string(),
                source,
            })
        })
        .transpose()?;
    let mut registry = Registry::open(config).map_err(CertError::from)?;
    let request = IssueRequest {
        client: client.to_owned(),
        ttl,
        csr_pem,
    };
    let signed = issue::sign(&ca, &registry, &request).map_err(|e| with_flag(e, ttl_text))?;

    let stem = file_stem(&signed.identity);
    let cert_path = out.join(format!("{stem}.crt"));
    let key_path = signed.has_key().then(|| out.join(format!("{stem}.key")));
    for path in std::iter::once(&cert_path).chain(key_path.as_ref()) {
        if path.exists() {
            return Err(PkiCommandError::OutputExists {
                path: path.display().to_string(),
            }
            .into());
        }
    }
    // Record first: a certificate that exists must be revocable.
    let issued = signed.record(&mut registry)?;
    registry.record_audit(config, "cert.issue", &issued.record.serial_hex);
    if !out.exists() {
        certs::files::ensure_private_dir(out).map_err(|source| PkiError::Io {
            path: out.display().to_string(),
            source,
        })?;
    }
    if let (Some(path), Some(key)) = (&key_path, &issued.issued.key_pem) {
        certs::files::write_atomic(path, key.as_bytes(), 0o600).map_err(|source| PkiError::Io {
            path: path.display().to_string(),
            source,
        })?;
    }
    certs::files::write_atomic(&cert_path, issued.issued.cert_pem.as_bytes(), 0o644).map_err(
        |source| PkiError::Io {
            path: cert_path.display().to_string(),
            source,
        },
    )?;

    let output = IssueOutput {
        client: issued.record.client_id,
        identity: issued.identity,
        serial: issued.record.serial_hex,
        fingerprint_sha256: issued.record.fingerprint_sha256_hex,
        not_before: issued.record.not_before,
        not_after: issued.record.not_after,
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

/// The CLI's words around the API's errors: which flag a lifetime came from, and `--dev`.
fn with_flag(e: CertError, ttl_text: &str) -> anyhow::Error {
    match e {
        CertError::BadTtl { .. } => anyhow::Error::from(e).context(format!("--ttl {ttl_text}")),
        CertError::NoDeviceCa => {
            anyhow::Error::from(e).context("certs issue (or pass --dev for the development CA)")
        }
        e => e.into(),
    }
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

pub(super) fn status_of(rec: &CertificateRecord, now: i64) -> &'static str {
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
    let mut registry = Registry::open(config).map_err(CertError::from)?;
    let revoked = issue::revoke(&mut registry, target)?;
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
    let ca = issue::device_ca(config)?;
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
