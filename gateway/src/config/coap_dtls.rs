//! `[coap_dtls]`: the CoAP-over-DTLS listener (udp/5684): PSK, certificate and (unless
//! `server_only_auth = false`) SuperMQ's server-certificate-only mode on one port.
//!
//! SuperMQ rule: if `cert` or `key` is unset the listener is off (with a warning); a file that
//! is set but unreadable stops the daemon (exit 78).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::coap::{bind_addr, opt_number, positive};
use super::value::Duration;
use super::value::boolean;
use super::{Check, Profile};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCoapDtls {
    bind: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca_certs: Option<PathBuf>,
    client_intermediate_certs: Option<PathBuf>,
    #[serde(deserialize_with = "opt_number")]
    max_sessions: Option<usize>,
    #[serde(deserialize_with = "opt_number")]
    max_handshakes: Option<usize>,
    #[serde(deserialize_with = "opt_number")]
    max_sessions_per_client: Option<usize>,
    handshake_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    #[serde(deserialize_with = "opt_boolean")]
    server_only_auth: Option<bool>,
}

fn opt_boolean<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    boolean(d).map(Some)
}

/// The validated `[coap_dtls]` section.
#[derive(Debug, Clone, Serialize)]
pub struct CoapDtlsConfig {
    pub bind: SocketAddr,
    /// Server certificate chain (PEM, ECDSA P-256). Unset: listener off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Server private key (PEM). Unset: listener off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// CA bundle that signs device certificates. Unset: no device certificates (PSK, and
    /// server-only sessions unless `server_only_auth` is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_certs: Option<PathBuf>,
    /// Intermediate CAs between `client_ca_certs` and the device certificates (chain
    /// building only, not trusted by themselves). Unset: devices signed directly by a CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_intermediate_certs: Option<PathBuf>,
    pub max_sessions: usize,
    pub max_handshakes: usize,
    /// Established sessions of one client (PSK identity or certificate CN); a new session
    /// beyond it ends that client's least recently active one.
    pub max_sessions_per_client: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// SuperMQ's CoAPS model: a DTLS session with the server certificate only (no client
    /// certificate, no PSK), every request then authenticated by its own secret in the
    /// Uri-Query (`auth=`, `username=&password=`), as on plain CoAP. Default on.
    pub server_only_auth: bool,
}

impl CoapDtlsConfig {
    /// Whether the listener starts: both `cert` and `key` set.
    pub fn enabled(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }

    /// Why the listener is off, if it is (for the start-up warning).
    pub fn disabled_reason(&self) -> Option<&'static str> {
        match (&self.cert, &self.key) {
            (Some(_), Some(_)) => None,
            (None, None) => Some("coap_dtls.cert and coap_dtls.key are not set"),
            (None, Some(_)) => Some("coap_dtls.cert is not set"),
            (Some(_), None) => Some("coap_dtls.key is not set"),
        }
    }
}

impl RawCoapDtls {
    pub fn validate(self, profile: &Profile, check: &mut Check<'_>) -> CoapDtlsConfig {
        let bind = bind_addr(
            check,
            "coap_dtls.bind",
            self.bind,
            SocketAddr::new(profile.default_listen_ip(), 5684),
        );
        // A file that is named must be usable (exit 78 otherwise), even if the listener ends
        // up off because its partner is unset; `run` logs why the listener is off.
        if let Some(cert) = &self.cert {
            check.certificates("coap_dtls.cert", cert);
        }
        if let Some(key) = &self.key {
            check.private_key("coap_dtls.key", key);
        }
        if let Some(ca) = &self.client_ca_certs {
            check.certificates("coap_dtls.client_ca_certs", ca);
        }
        if let Some(intermediates) = &self.client_intermediate_certs {
            check.certificates("coap_dtls.client_intermediate_certs", intermediates);
            if self.client_ca_certs.is_none() {
                check.warn(
                    "coap_dtls.client_intermediate_certs is set but coap_dtls.client_ca_certs \
                     is not: certificate mode stays off",
                );
            }
        }
        let handshake_timeout = self.handshake_timeout.unwrap_or(Duration::from_secs(10));
        let idle_timeout = self.idle_timeout.unwrap_or(Duration::from_secs(600));
        if handshake_timeout.get().is_zero() {
            check.invalid("coap_dtls.handshake_timeout", "must be longer than 0s");
        }
        if idle_timeout.get().is_zero() {
            check.invalid("coap_dtls.idle_timeout", "must be longer than 0s");
        }
        CoapDtlsConfig {
            bind,
            cert: self.cert,
            key: self.key,
            client_ca_certs: self.client_ca_certs,
            client_intermediate_certs: self.client_intermediate_certs,
            max_sessions: positive(check, "coap_dtls.max_sessions", self.max_sessions, 4096),
            max_handshakes: positive(check, "coap_dtls.max_handshakes", self.max_handshakes, 256),
            max_sessions_per_client: positive(
                check,
                "coap_dtls.max_sessions_per_client",
                self.max_sessions_per_client,
                16,
            ),
            handshake_timeout,
            idle_timeout,
            server_only_auth: self.server_only_auth.unwrap_or(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use crate::config::{Profile, Source, load_from};

    #[test]
    fn max_sessions_per_client_defaults_to_16_and_must_be_positive() {
        let env = |v: &str| {
            vec![(
                OsString::from("EDGEGW_COAP_DTLS_MAX_SESSIONS_PER_CLIENT"),
                OsString::from(v),
            )]
        };
        let config = load_from(&Source::None, Profile::Production, Vec::new()).unwrap();
        assert_eq!(config.coap_dtls.max_sessions_per_client, 16);
        let config = load_from(&Source::None, Profile::Production, env("2")).unwrap();
        assert_eq!(config.coap_dtls.max_sessions_per_client, 2);
        let err = load_from(&Source::None, Profile::Production, env("0"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("coap_dtls.max_sessions_per_client"), "{err}");
    }
}
