//! `[bootstrap]`: zero-touch provisioning from SuperMQ's bootstrap service. The gateway asks
//! `<url>/clients/bootstrap/<external_id>` (or `/secure/…`) with `Authorization: Client
//! <external_key>` for its upstream identity, channels, certificates and a config fragment
//! (`crate::bootstrap` fetches and applies it; this file only validates the settings).

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Check;
use super::value::{Duration, Secret, boolean, redact_userinfo, redact_userinfo_in};

/// The bootstrap service's base URL, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapEndpoint {
    pub tls: bool,
    /// Host name or IP (without brackets).
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing `/` (often empty).
    pub base: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("`{0}` must be http://host[:port][/path] or https://host[:port][/path]")]
    Scheme(String),
    #[error("`{0}` has no host")]
    NoHost(String),
    #[error("`{0}` has an invalid port")]
    Port(String),
    #[error("`{0}` must not carry credentials, a query or a fragment")]
    Extra(String),
}

impl BootstrapEndpoint {
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(UrlError::Scheme(url.to_owned()));
        };
        if rest.contains(['?', '#', '@']) || rest.chars().any(|c| c.is_whitespace()) {
            return Err(UrlError::Extra(url.to_owned()));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| UrlError::NoHost(url.to_owned()))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::NoHost(url.to_owned()));
        }
        let port = match port {
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| UrlError::Port(url.to_owned()))?,
        };
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
            base: path.trim_end_matches('/').to_owned(),
        })
    }

    /// A loopback IP or `localhost`: plain HTTP there does not cross a network.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost" || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => host,
            (_, port) => format!("{host}:{port}"),
        }
    }

    /// `http[s]://host:port` for logs and the status (never with a key in it).
    pub fn origin(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.host_header()
        )
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBootstrap {
    url: Option<String>,
    external_id: Option<String>,
    external_key: Option<Secret>,
    #[serde(deserialize_with = "boolean")]
    secure: bool,
    encryption_key: Option<Secret>,
    ca_certs: Option<PathBuf>,
    timeout: Option<Duration>,
    retry_min: Option<Duration>,
    retry_max: Option<Duration>,
    recheck_interval: Option<Duration>,
}

/// The bootstrap settings. `url` absent: no bootstrap (the default).
#[derive(Debug, Clone, Serialize)]
pub struct BootstrapConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The id the bootstrap config is registered under (default: the wired MAC address, else
    /// the machine id).
    pub external_id: String,
    pub external_key: Secret,
    /// Use `/clients/bootstrap/secure/…`: the key is sent encrypted, the answer comes back
    /// AES-CFB encrypted with `encryption_key`.
    pub secure: bool,
    pub encryption_key: Secret,
    /// CA bundle for an `https://` url (default: the system bundle).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certs: Option<PathBuf>,
    /// Connect + request + answer deadline.
    pub timeout: Duration,
    /// Backoff between failed attempts: first delay and cap.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Ask again this often for changes (zero: only at first start, on SIGHUP and
    /// `edgegw bootstrap`).
    pub recheck_interval: Duration,
}

impl BootstrapConfig {
    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }
}

/// The board identity used when `bootstrap.external_id` is not set: the first wired NIC's MAC
/// address, else the machine id.
fn board_external_id() -> Option<String> {
    let root = hal::identity::SysRoot::system();
    hal::identity::first_wired_nic(&root)
        .map(|(_, mac)| mac)
        .or_else(|| hal::identity::machine_id(&root))
}

impl RawBootstrap {
    pub fn validate(self, check: &mut Check<'_>) -> BootstrapConfig {
        let url = self
            .url
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty());
        let enabled = url.is_some();
        if let Some(url) = &url {
            match BootstrapEndpoint::parse(url) {
                Ok(endpoint) if !endpoint.tls && !endpoint.is_loopback() => check.warn(format!(
                    "bootstrap.url `{}` is plain HTTP: the external key and the answer \
                     (client secret, private key) cross the network unencrypted; use https://",
                    redact_userinfo(url)
                )),
                Ok(_) => {}
                Err(e) => check.invalid("bootstrap.url", redact_userinfo_in(&e.to_string())),
            }
        }
        let external_id = self
            .external_id
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .or_else(|| if enabled { board_external_id() } else { None })
            .unwrap_or_default();
        if enabled && external_id.is_empty() {
            check.invalid(
                "bootstrap.external_id",
                "is required: this board has no wired MAC address or machine id to default to",
            );
        }
        if external_id.len() > 256 || external_id.chars().any(char::is_control) {
            check.invalid(
                "bootstrap.external_id",
                "must be at most 256 bytes without control characters",
            );
        }
        let external_key = self.external_key.unwrap_or_default();
        if enabled && external_key.is_empty() {
            check.invalid(
                "bootstrap.external_key",
                "is required with bootstrap.url: the key the bootstrap config was registered with",
            );
        }
        if external_key.expose().chars().any(char::is_control) {
            check.invalid(
                "bootstrap.external_key",
                "must not contain control characters",
            );
        }
        let encryption_key = self.encryption_key.unwrap_or_default();
        if self.secure && !matches!(encryption_key.expose().len(), 16 | 24 | 32) {
            check.invalid(
                "bootstrap.encryption_key",
                "with bootstrap.secure = true it must be the bootstrap service's encryption key \
                 (SMQ_BOOTSTRAP_ENCRYPT_KEY): 16, 24 or 32 bytes (AES-128/192/256)",
            );
        }
        if let Some(path) = &self.ca_certs {
            check.certificates("bootstrap.ca_certs", path);
        }
        let timeout = self.timeout.unwrap_or(Duration::from_secs(10));
        if timeout.get() < std::time::Duration::from_secs(1) {
            check.invalid("bootstrap.timeout", "must be at least 1s");
        }
        let retry_min = self.retry_min.unwrap_or(Duration::from_secs(5));
        let retry_max = self.retry_max.unwrap_or(Duration::from_secs(300));
        if retry_min.get() < std::time::Duration::from_millis(100) || retry_min > retry_max {
            check.invalid(
                "bootstrap.retry_min",
                "must be at least 100ms and at most bootstrap.retry_max",
            );
        }
        let recheck_interval = self.recheck_interval.unwrap_or(Duration::from_secs(0));
        if !recheck_interval.get().is_zero()
            && recheck_interval.get() < std::time::Duration::from_secs(1)
        {
            check.invalid(
                "bootstrap.recheck_interval",
                "must be 0s (off) or at least 1s",
            );
        }
        BootstrapConfig {
            url,
            external_id,
            external_key,
            secure: self.secure,
            encryption_key,
            ca_certs: self.ca_certs,
            timeout,
            retry_min,
            retry_max,
            recheck_interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::BootstrapEndpoint as Endpoint;
    use crate::config::{Profile, Source, load_from};

    fn load(vars: &[(&str, &str)]) -> Result<crate::config::Config, String> {
        let vars: Vec<(OsString, OsString)> = vars
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect();
        load_from(&Source::None, Profile::Production, vars).map_err(|e| e.to_string())
    }

    #[test]
    fn urls_split_into_scheme_host_port_and_base() {
        let e = Endpoint::parse("https://bs.example.com:9013/api/").unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.base.as_str()),
            (true, "bs.example.com", 9013, "/api")
        );
        let e = Endpoint::parse("http://[::1]").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 80));
        assert!(e.is_loopback());
        assert_eq!(e.origin(), "http://[::1]");
        assert!(Endpoint::parse("mqtts://x").is_err());
        assert!(Endpoint::parse("http://").is_err());
        assert!(Endpoint::parse("http://x:0").is_err());
        assert!(Endpoint::parse("http://u:p@x").is_err());
        assert!(Endpoint::parse("http://x/?k=1").is_err());
    }

    #[test]
    fn env_sets_url_id_and_key_and_the_key_is_redacted() {
        let c = load(&[
            ("EDGEGW_BOOTSTRAP_URL", "https://bs.example:9013"),
            ("EDGEGW_BOOTSTRAP_EXTERNAL_ID", "aa:bb:cc:dd:ee:ff"),
            ("EDGEGW_BOOTSTRAP_EXTERNAL_KEY", "very-secret-key"),
        ])
        .unwrap();
        assert!(c.bootstrap.enabled());
        assert_eq!(c.bootstrap.external_id, "aa:bb:cc:dd:ee:ff");
        assert_eq!(c.bootstrap.external_key.expose(), "very-secret-key");
        let shown = c.to_redacted_toml();
        assert!(!shown.contains("very-secret-key"), "{shown}");
        assert!(shown.contains("external_key = \"<redacted>\""), "{shown}");
        assert!(!load(&[]).unwrap().bootstrap.enabled());
    }

    #[test]
    fn key_and_url_scheme_and_encryption_key_are_checked_by_name() {
        let e = load(&[
            ("EDGEGW_BOOTSTRAP_URL", "https://bs"),
            ("EDGEGW_BOOTSTRAP_EXTERNAL_ID", "x"),
        ])
        .unwrap_err();
        assert!(e.contains("EDGEGW_BOOTSTRAP_URL") || e.contains("bootstrap.external_key"));
        assert!(e.contains("bootstrap.external_key"), "{e}");
        let e = load(&[
            ("EDGEGW_BOOTSTRAP_URL", "ftp://bs"),
            ("EDGEGW_BOOTSTRAP_EXTERNAL_ID", "x"),
            ("EDGEGW_BOOTSTRAP_EXTERNAL_KEY", "k"),
        ])
        .unwrap_err();
        assert!(e.contains("bootstrap.url"), "{e}");
        let e = load(&[
            ("EDGEGW_BOOTSTRAP_URL", "https://bs"),
            ("EDGEGW_BOOTSTRAP_EXTERNAL_ID", "x"),
            ("EDGEGW_BOOTSTRAP_EXTERNAL_KEY", "k"),
            ("EDGEGW_BOOTSTRAP_SECURE", "true"),
            ("EDGEGW_BOOTSTRAP_ENCRYPTION_KEY", "short"),
        ])
        .unwrap_err();
        assert!(e.contains("bootstrap.encryption_key"), "{e}");
        assert!(!e.contains("short"), "the key itself is not shown: {e}");
    }

    #[test]
    fn a_layer_sits_under_the_environment_and_its_errors_name_it() {
        use crate::config::{Layer, load_layered};
        let layer = |text: &str| Layer {
            table: text.parse().unwrap(),
            label: "bootstrap config (http://bs for gw)".into(),
        };
        let vars = |list: &[(&str, &str)]| -> Vec<(OsString, OsString)> {
            list.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect()
        };
        let good = layer(
            "[uplink]\nplatform = \"supermq\"\nusername = \"gw\"\npassword = \"pw\"\n\
             url = \"mqtts://a:8883\"\n[gateway]\ndomain_id = \"d1\"",
        );
        let c = load_layered(&Source::None, Profile::Production, vars(&[]), Some(&good)).unwrap();
        assert_eq!(c.uplink.url.as_deref(), Some("mqtts://a:8883"));
        assert_eq!(c.uplink.platform, crate::config::Platform::Supermq);
        assert_eq!(c.gateway.domain_id, "d1");
        let c = load_layered(
            &Source::None,
            Profile::Production,
            vars(&[("EDGEGW_UPLINK_URL", "mqtts://local:8883")]),
            Some(&good),
        )
        .unwrap();
        assert_eq!(c.uplink.url.as_deref(), Some("mqtts://local:8883"));
        let bad = layer("[uplink]\nurl = \"ftp://a\"");
        let e = load_layered(&Source::None, Profile::Production, vars(&[]), Some(&bad))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bootstrap config (http://bs for gw)") && e.contains("uplink.url"),
            "{e}"
        );
    }

    #[test]
    fn plain_http_off_loopback_is_warned_about() {
        let c = load(&[
            ("EDGEGW_BOOTSTRAP_URL", "http://bs.example"),
            ("EDGEGW_BOOTSTRAP_EXTERNAL_ID", "x"),
            ("EDGEGW_BOOTSTRAP_EXTERNAL_KEY", "k"),
        ])
        .unwrap();
        assert!(
            c.warnings.iter().any(|w| w.contains("plain HTTP")),
            "{:?}",
            c.warnings
        );
        let c = load(&[
            ("EDGEGW_BOOTSTRAP_URL", "http://127.0.0.1:9013"),
            ("EDGEGW_BOOTSTRAP_EXTERNAL_ID", "x"),
            ("EDGEGW_BOOTSTRAP_EXTERNAL_KEY", "k"),
        ])
        .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }
}
