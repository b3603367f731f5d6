//! Configuration: a TOML file (`/etc/edgegw/edgegw.toml` or `--config PATH`) overlaid with
//! `EDGEGW_<SECTION>_<KEY>` environment variables, validated into one [`Config`].
//!
//! Raw serde structs (`deny_unknown_fields`) live next to the validated type of each section;
//! only validated types leave this module. Loading reads the files the config names (to check
//! they parse) but has no other side effect: it creates nothing and logs nothing; warnings are
//! returned in [`Config::warnings`] for the caller to log.

mod auth;
mod board;
mod bootstrap;
mod certs;
mod coap;
mod coap_dtls;
mod env;
mod gateway;
mod http;
mod outbox;
mod serial;
mod standalone;
mod uplink;
pub mod value;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use auth::AuthConfig;
pub use board::BoardConfig;
pub use bootstrap::{BootstrapConfig, BootstrapEndpoint, UrlError};
pub use certs::CertsConfig;
pub use coap::CoapConfig;
pub use coap_dtls::CoapDtlsConfig;
pub use gateway::GatewayConfig;
pub use http::HttpConfig;
pub use outbox::{Durability, FullPolicy, OutboxConfig};
pub use serial::{SerialConfig, SerialPortConfig};
pub use standalone::StandaloneConfig;
pub use uplink::{DownlinkLimits, MqttVersion, Platform, UplinkConfig, supermq_channel_topic};

/// The production config path.
pub const DEFAULT_PATH: &str = "/etc/edgegw/edgegw.toml";

/// Sections, as they appear in the file and in `EDGEGW_<SECTION>_<KEY>`.
const SECTIONS: &[&str] = &[
    "gateway",
    "standalone",
    "uplink",
    "outbox",
    "auth",
    "certs",
    "serial",
    "board",
    "coap",
    "coap_dtls",
    "http",
    "bootstrap",
];

/// Why a configuration cannot be used. Every variant names the file, key or variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("environment variable {var} does not name a config key (sections: {sections})")]
    UnknownEnv { var: String, sections: String },
    #[error("environment variable {var} is not valid UTF-8")]
    EnvNotUtf8 { var: String },
    #[error("{origin}: `{key}` {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
    #[error("{count} problems in the configuration:\n{}", list.join("\n"))]
    Several { count: usize, list: Vec<String> },
}

/// A file named by the configuration that exists but cannot be used at start (a state
/// directory that is a file, a key that does not parse, a configured watchdog device that will
/// not open). The edge maps it to exit status 78 like a [`ConfigError`].
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {reason}")]
pub struct ConfigFileError {
    pub what: &'static str,
    pub path: String,
    pub reason: String,
}

/// Which defaults apply: the installed daemon, or `--dev` (everything local, unprivileged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Profile {
    Production,
    /// The development profile rooted at a directory (normally `./.edgegw-dev`).
    Dev {
        root: PathBuf,
    },
}

impl Profile {
    pub fn dev_in_current_dir() -> Self {
        Self::Dev {
            root: PathBuf::from(".edgegw-dev"),
        }
    }

    pub fn is_dev(&self) -> bool {
        matches!(self, Self::Dev { .. })
    }

    fn default_state_dir(&self) -> PathBuf {
        match self {
            Self::Production => PathBuf::from("/var/lib/edgegw"),
            Self::Dev { root } => root.join("state"),
        }
    }

    fn default_runtime_dir(&self) -> PathBuf {
        match self {
            Self::Production => PathBuf::from("/run/edgegw"),
            Self::Dev { root } => root.join("run"),
        }
    }

    /// Default listen address: every interface on a gateway, loopback only in development.
    pub fn default_listen_ip(&self) -> std::net::IpAddr {
        match self {
            Self::Production => std::net::Ipv6Addr::UNSPECIFIED.into(),
            Self::Dev { .. } => std::net::Ipv4Addr::LOCALHOST.into(),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub standalone: StandaloneConfig,
    pub uplink: UplinkConfig,
    pub outbox: OutboxConfig,
    pub auth: AuthConfig,
    pub certs: CertsConfig,
    pub serial: SerialConfig,
    pub board: BoardConfig,
    pub coap: CoapConfig,
    pub coap_dtls: CoapDtlsConfig,
    pub http: HttpConfig,
    pub bootstrap: BootstrapConfig,
    /// Things that are allowed but deserve a warning at start (plain MQTT, disabled listeners).
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// The file this came from, if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    #[serde(skip)]
    pub profile: Profile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    gateway: gateway::RawGateway,
    standalone: standalone::RawStandalone,
    uplink: uplink::RawUplink,
    outbox: outbox::RawOutbox,
    auth: auth::RawAuth,
    certs: certs::RawCerts,
    serial: serial::RawSerial,
    board: board::RawBoard,
    coap: coap::RawCoap,
    coap_dtls: coap_dtls::RawCoapDtls,
    http: http::RawHttp,
    bootstrap: bootstrap::RawBootstrap,
}

/// Where to read the configuration from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `--config PATH`: the file must exist.
    Explicit(PathBuf),
    /// The default path: used if present; absent means defaults plus environment.
    Default(PathBuf),
    /// No file (the dev profile without `--config`).
    None,
}

/// Loads the configuration from `source` and the process environment.
pub fn load(source: &Source, profile: Profile) -> Result<Config, ConfigError> {
    load_from(source, profile, std::env::vars_os())
}

/// Loads the configuration from `source` and the given environment (tests pass their own).
pub fn load_from(
    source: &Source,
    profile: Profile,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Config, ConfigError> {
    load_layered(source, profile, vars, None)
}

/// Settings that sit below the config file: defaults < `layer` < file < environment. The
/// applied bootstrap answer is such a layer (`crate::bootstrap`); errors in its keys name
/// `label` as their origin.
#[derive(Debug, Clone, Default)]
pub struct Layer {
    pub table: toml::Table,
    pub label: String,
}

/// [`load_from`] with a [`Layer`] under the file, validated exactly like the file itself.
pub fn load_layered(
    source: &Source,
    profile: Profile,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    layer: Option<&Layer>,
) -> Result<Config, ConfigError> {
    let (text, path) = match source {
        Source::Explicit(path) => (read(path)?, Some(path.clone())),
        Source::Default(path) => match std::fs::read_to_string(path) {
            Ok(text) => (text, Some(path.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), None),
            Err(source) => {
                return Err(ConfigError::ReadFile {
                    path: path.clone(),
                    source,
                });
            }
        },
        Source::None => (String::new(), None),
    };
    let file_label = path.as_ref().map_or_else(
        || "defaults".to_owned(),
        |p| format!("config file {}", p.display()),
    );
    let mut table: toml::Table =
        text.parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                path: path.clone().unwrap_or_default(),
                message: syntax_message(&text, &e),
            })?;
    let layered = match layer {
        Some(layer) => merge_under(&mut table, &layer.table),
        None => Vec::new(),
    };
    let origins = env::overlay(&mut table, vars, SECTIONS)?;
    let origin_of = |key: &str| match origins.get(key) {
        Some(var) => format!("environment variable {var}"),
        None => match layer {
            Some(layer) if layered.iter().any(|k| k == key) => layer.label.clone(),
            _ => file_label.clone(),
        },
    };

    let raw: RawConfig =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let message = e.into_inner().to_string();
            let message = if is_secret_key(&key) {
                without_quoted_values(&message)
            } else if key.ends_with("url") {
                value::redact_userinfo_in(&message)
            } else {
                message
            };
            // toml appends "in `section`" on a second line; the key path already says where.
            let message = message.lines().next().unwrap_or_default().trim_end();
            let message = match message
                .strip_prefix("unknown field `")
                .and_then(|m| m.split_once('`'))
            {
                Some((_, rest)) => format!("is not a known key{rest}"),
                None => message.to_owned(),
            };
            ConfigError::Invalid {
                origin: origin_of(&key),
                key,
                message,
            }
        })?;

    let mut check = Check {
        origin_of: &origin_of,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let config = Config {
        gateway: raw.gateway.validate(&profile, &mut check),
        standalone: raw.standalone.validate(&mut check),
        uplink: raw.uplink.validate(&profile, &mut check),
        outbox: raw.outbox.validate(&mut check),
        auth: raw.auth.validate(&mut check),
        certs: raw.certs.validate(&mut check),
        serial: raw.serial.validate(&mut check),
        board: raw.board.validate(&mut check),
        coap: raw.coap.validate(&profile, &mut check),
        coap_dtls: raw.coap_dtls.validate(&profile, &mut check),
        http: raw.http.validate(&mut check),
        bootstrap: raw.bootstrap.validate(&mut check),
        warnings: Vec::new(),
        source: path,
        profile,
    };
    let Check {
        errors, warnings, ..
    } = check;
    match errors.len() {
        0 => Ok(Config { warnings, ..config }),
        1 => Err(errors.into_iter().next().expect("invariant: one error")),
        count => Err(ConfigError::Several {
            count,
            list: errors.iter().map(|e| format!("  - {e}")).collect(),
        }),
    }
}

/// A TOML syntax error as position and reason, without toml's excerpt of the offending line:
/// that line may hold a secret (a token with a stray quote).
fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let reason = e.message().lines().next().unwrap_or_default().trim_end();
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {reason}")
        }
        None => reason.to_owned(),
    }
}

/// Keys whose values are secrets: never echoed in an error.
fn is_secret_key(key: &str) -> bool {
    let name = key.rsplit('.').next().unwrap_or(key);
    [
        "token",
        "password",
        "secret",
        "external_key",
        "encryption_key",
    ]
    .iter()
    .any(|s| name == *s || name.ends_with(&format!("_{s}")))
}

/// `message` with every `` `…` `` and `"…"` quoted part replaced by `<redacted>` (serde
/// quotes the value it could not use).
fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find(['`', '"']) {
        let quote = rest[i..].chars().next().unwrap_or('`');
        out.push_str(&rest[..i]);
        match rest[i + 1..].find(quote) {
            Some(j) => {
                out.push(quote);
                out.push_str("<redacted>");
                out.push(quote);
                rest = &rest[i + 1 + j + 1..];
            }
            None => {
                out.push_str("<redacted>");
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Puts the keys of `layer` into `table` where the file did not set them (per key inside a
/// section); returns the `section.key` names taken from the layer.
fn merge_under(table: &mut toml::Table, layer: &toml::Table) -> Vec<String> {
    let mut taken = Vec::new();
    for (section, value) in layer {
        let toml::Value::Table(keys) = value else {
            continue;
        };
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(target) = entry else {
            continue;
        };
        for (key, v) in keys {
            if !target.contains_key(key) {
                target.insert(key.clone(), v.clone());
                taken.push(format!("{section}.{key}"));
            }
        }
    }
    taken
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })
}

/// Collects every validation problem (not just the first), so one run of `check-config` shows
/// them all.
pub struct Check<'a> {
    origin_of: &'a dyn Fn(&str) -> String,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
}

impl std::fmt::Debug for Check<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Check")
            .field("errors", &self.errors)
            .finish_non_exhaustive()
    }
}

impl Check<'_> {
    pub fn invalid(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError::Invalid {
            origin: (self.origin_of)(key),
            key: key.to_owned(),
            message: message.into(),
        });
    }

    pub fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }

    /// The file at `path` must hold at least one PEM certificate.
    pub fn certificates(&mut self, key: &str, path: &Path) {
        if let Err(e) = ::certs::load_certificates(path) {
            self.invalid(key, e.to_string());
        }
    }

    /// The file at `path` must hold a PEM private key.
    pub fn private_key(&mut self, key: &str, path: &Path) {
        if let Err(e) = ::certs::load_private_key(path) {
            self.invalid(key, e.to_string());
        }
    }
}

impl Config {
    /// The effective configuration as TOML, secrets redacted (`edgegw check-config`).
    /// URLs (`uplink.url`, any `*url` key) are shown without their userinfo.
    pub fn to_redacted_toml(&self) -> String {
        let mut table = match toml::Table::try_from(self) {
            Ok(t) => t,
            Err(e) => return format!("# cannot render configuration: {e}\n"),
        };
        for (_, section) in table.iter_mut() {
            let toml::Value::Table(keys) = section else {
                continue;
            };
            for (key, v) in keys.iter_mut() {
                if let toml::Value::String(url) = v
                    && key.ends_with("url")
                {
                    *url = value::redact_userinfo(url);
                }
            }
        }
        toml::to_string(&table).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests;
