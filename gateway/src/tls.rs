//! The one place that builds TLS configurations (STYLE: "one place builds TLS configs").
//! Here: the uplink's rustls client config (aws-lc-rs, TLS 1.2/1.3, server name verified by
//! webpki, optional client certificate), and the facts the status reports about the uplink
//! certificate (subject, expiry). Reads files; no sockets.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::ClientConfig;
use rustls_pki_types::CertificateDer;

/// Used when `uplink.ca_certs` is not set: Debian's system bundle.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Certificates that expire within this window are warned about (log and status).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pem(#[from] certs::PemError),
    #[error("no usable CA certificate in {path}: {reason}")]
    BadCa { path: String, reason: String },
    #[error("client certificate {cert} and key {key} cannot be used together: {reason}")]
    ClientAuth {
        cert: String,
        key: String,
        reason: String,
    },
    #[error("cannot parse certificate {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Facts about a certificate shown in the status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertInfo {
    pub subject: String,
    /// Seconds since the epoch.
    pub not_after: i64,
}

impl CertInfo {
    /// Time left until expiry (zero if already expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        Duration::from_secs(u64::try_from(self.not_after - now).unwrap_or(0))
    }

    pub fn expires_soon(&self, now: SystemTime) -> bool {
        self.remaining(now) < EXPIRY_WARNING
    }
}

/// The uplink client TLS configuration and what it was built from.
#[derive(Debug, Clone)]
pub struct UplinkTls {
    pub config: Arc<ClientConfig>,
    /// The client certificate, if one is configured.
    pub cert: Option<CertInfo>,
}

/// Where the uplink's TLS material comes from (re-read on every reload).
#[derive(Debug, Clone, Default)]
pub struct UplinkTlsFiles {
    pub client_cert: Option<std::path::PathBuf>,
    pub client_key: Option<std::path::PathBuf>,
    pub ca_certs: Option<std::path::PathBuf>,
}

/// Parses subject and expiry of a DER certificate.
pub fn cert_info(der: &CertificateDer<'_>, path: &str) -> Result<CertInfo, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| TlsError::Parse {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Builds the uplink's rustls client config from the files (TLS 1.2+, aws-lc-rs).
pub fn uplink_client(files: &UplinkTlsFiles) -> Result<UplinkTls, TlsError> {
    let ca_path = files
        .ca_certs
        .as_deref()
        .unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs::load_certificates(ca_path)?);
    if added == 0 {
        return Err(TlsError::BadCa {
            path: ca_path.display().to_string(),
            reason: "none of its certificates could be parsed".into(),
        });
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots);
    let (config, cert) = match (&files.client_cert, &files.client_key) {
        (Some(cert_path), Some(key_path)) => {
            let chain = certs::load_certificates(cert_path)?;
            let key = certs::load_private_key(key_path)?;
            let shown = cert_path.display().to_string();
            let info = cert_info(&chain[0], &shown)?;
            let config =
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsError::ClientAuth {
                        cert: shown,
                        key: key_path.display().to_string(),
                        reason: e.to_string(),
                    })?;
            (config, Some(info))
        }
        _ => (builder.with_no_client_auth(), None),
    };
    Ok(UplinkTls {
        config: Arc::new(config),
        cert,
    })
}

/// The HTTPS client config of the bootstrap fetch: TLS 1.2/1.3 on aws-lc-rs, server verified
/// against `ca_certs` (default: the system bundle), no client certificate, ALPN `http/1.1`.
pub fn https_client(ca_certs: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let ca_path = ca_certs.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs::load_certificates(ca_path)?);
    if added == 0 {
        return Err(TlsError::BadCa {
            path: ca_path.display().to_string(),
            reason: "none of its certificates could be parsed".into(),
        });
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Builds the HTTPS server config of the management API (`http.server_cert`/`server_key`):
/// TLS 1.2/1.3 on aws-lc-rs, no client authentication, ALPN `http/1.1`.
pub fn http_server(
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certs::load_certificates(cert_path)?;
    let key = certs::load_private_key(key_path)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::ClientAuth {
            cert: cert_path.display().to_string(),
            key: key_path.display().to_string(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
