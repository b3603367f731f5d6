//! `[http]`: the management API and HTTP adapter listener (one HTTP server).
//!
//! SuperMQ rule: `server_cert` and `server_key` both set → HTTPS; otherwise plain HTTP, which is
//! allowed on a loopback address only (checked here, so `check-config` and `run` refuse it with
//! exit 78). A named file that cannot be read stops the daemon (exit 78).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Check;
use super::coap::{bind_addr, opt_number, positive};
use super::value::{ByteSize, Duration, boolean};

/// The default listen address: loopback, so a fresh install never serves plain HTTP to the
/// network. Set `http.bind` together with `server_cert`/`server_key` to expose it.
pub const DEFAULT_PORT: u16 = 9080;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp {
    #[serde(deserialize_with = "opt_boolean")]
    enabled: Option<bool>,
    bind: Option<String>,
    server_cert: Option<PathBuf>,
    server_key: Option<PathBuf>,
    access_token_ttl: Option<Duration>,
    refresh_token_ttl: Option<Duration>,
    max_body: Option<ByteSize>,
    request_timeout: Option<Duration>,
    #[serde(deserialize_with = "opt_number")]
    max_connections: Option<usize>,
}

fn opt_boolean<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    boolean(d).map(Some)
}

/// The validated `[http]` section.
#[derive(Debug, Clone, Serialize)]
pub struct HttpConfig {
    pub enabled: bool,
    pub bind: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_key: Option<PathBuf>,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// Largest request body (API JSON and adapter payloads); beyond it 413.
    pub max_body: ByteSize,
    /// A request (headers and body) not answered by then gets 408/503 and the connection closes.
    pub request_timeout: Duration,
    /// Open connections; further ones wait in the kernel backlog.
    pub max_connections: usize,
}

impl HttpConfig {
    /// HTTPS: both `server_cert` and `server_key` set.
    pub fn tls(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        match (&self.server_cert, &self.server_key) {
            (Some(c), Some(k)) => Some((c, k)),
            _ => None,
        }
    }
}

impl RawHttp {
    pub fn validate(self, check: &mut Check<'_>) -> HttpConfig {
        let bind = bind_addr(
            check,
            "http.bind",
            self.bind,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT),
        );
        if let Some(cert) = &self.server_cert {
            check.certificates("http.server_cert", cert);
        }
        if let Some(key) = &self.server_key {
            check.private_key("http.server_key", key);
        }
        let enabled = self.enabled.unwrap_or(true);
        let tls = self.server_cert.is_some() && self.server_key.is_some();
        if self.server_cert.is_some() != self.server_key.is_some() {
            check.warn(
                "http: only one of http.server_cert and http.server_key is set; the API serves \
                 plain HTTP (loopback only)",
            );
        }
        if enabled && !tls && !bind.ip().is_loopback() {
            check.invalid(
                "http.bind",
                format!(
                    "`{bind}` is not a loopback address, and plain HTTP is allowed on loopback \
                     only: set http.server_cert and http.server_key (HTTPS), or bind 127.0.0.1"
                ),
            );
        }
        let access_token_ttl = self.access_token_ttl.unwrap_or(Duration::from_secs(3600));
        let refresh_token_ttl = self
            .refresh_token_ttl
            .unwrap_or(Duration::from_secs(24 * 3600));
        let request_timeout = self.request_timeout.unwrap_or(Duration::from_secs(30));
        for (key, d) in [
            ("http.access_token_ttl", access_token_ttl),
            ("http.refresh_token_ttl", refresh_token_ttl),
            ("http.request_timeout", request_timeout),
        ] {
            if d.get().is_zero() {
                check.invalid(key, "must be longer than 0s");
            }
        }
        let max_body = self.max_body.unwrap_or(ByteSize(1 << 20));
        if max_body.0 == 0 || max_body.0 > 64 << 20 {
            check.invalid("http.max_body", "must be between 1 B and 64 MiB");
        }
        HttpConfig {
            enabled,
            bind,
            server_cert: self.server_cert,
            server_key: self.server_key,
            access_token_ttl,
            refresh_token_ttl,
            max_body,
            request_timeout,
            max_connections: positive(check, "http.max_connections", self.max_connections, 64),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use crate::config::{Profile, Source, load_from};

    fn load(vars: &[(&str, &str)]) -> Result<crate::config::Config, crate::config::ConfigError> {
        let vars: Vec<(OsString, OsString)> = vars
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect();
        load_from(&Source::None, Profile::Production, vars)
    }

    #[test]
    fn defaults_are_loopback_plain_http_with_documented_limits() {
        let c = load(&[]).unwrap().http;
        assert!(c.enabled);
        assert_eq!(c.bind.to_string(), "127.0.0.1:9080");
        assert!(c.tls().is_none());
        assert_eq!(c.access_token_ttl.get().as_secs(), 3600);
        assert_eq!(c.refresh_token_ttl.get().as_secs(), 86_400);
        assert_eq!(c.max_body.0, 1 << 20);
        assert_eq!(c.max_connections, 64);
    }

    #[test]
    fn plain_http_on_a_network_address_is_refused_but_https_is_allowed() {
        let err = load(&[("EDGEGW_HTTP_BIND", "[::]:9080")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("http.bind") && err.contains("loopback"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let pki = certs::init_dev(dir.path(), crate::pki::now_unix()).unwrap();
        let cert = pki.dtls_server_cert();
        let key = pki.dtls_server_key();
        let c = load(&[
            ("EDGEGW_HTTP_BIND", "[::]:9080"),
            ("EDGEGW_HTTP_SERVER_CERT", cert.to_str().unwrap()),
            ("EDGEGW_HTTP_SERVER_KEY", key.to_str().unwrap()),
        ])
        .unwrap()
        .http;
        assert!(c.tls().is_some());
        // Disabled: the bind does not matter.
        assert!(
            load(&[
                ("EDGEGW_HTTP_BIND", "[::]:9080"),
                ("EDGEGW_HTTP_ENABLED", "false")
            ])
            .is_ok()
        );
    }

    #[test]
    fn a_missing_certificate_file_and_zero_limits_are_errors() {
        let err = load(&[("EDGEGW_HTTP_SERVER_CERT", "/nonexistent/http.crt")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("http.server_cert"), "{err}");
        assert!(load(&[("EDGEGW_HTTP_MAX_CONNECTIONS", "0")]).is_err());
        assert!(load(&[("EDGEGW_HTTP_ACCESS_TOKEN_TTL", "0s")]).is_err());
        assert!(load(&[("EDGEGW_HTTP_MAX_BODY", "0")]).is_err());
    }
}
