//! `[uplink]`: the MQTT connection to the upstream platform.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::value::{Secret, boolean};
use super::{Check, Profile};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUplink {
    url: Option<String>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    ca_certs: Option<PathBuf>,
    #[serde(deserialize_with = "boolean")]
    insecure: bool,
    username: Option<String>,
    password: Option<Secret>,
    #[serde(deserialize_with = "boolean")]
    refuse_expired: bool,
}

/// Where the uplink connects. Absent: no uplink, messages wait in the outbox.
#[derive(Debug, Clone, Serialize)]
pub struct UplinkConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certs: Option<PathBuf>,
    pub insecure: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    pub password: Secret,
    /// Refuse to start when the uplink client certificate has expired (default: start, log
    /// an error, keep buffering).
    pub refuse_expired: bool,
}

impl RawUplink {
    pub fn validate(self, _profile: &Profile, check: &mut Check<'_>) -> UplinkConfig {
        let url = self.url.filter(|u| !u.trim().is_empty());
        if let Some(url) = &url {
            match url.split_once("://").map(|(scheme, _)| scheme) {
                Some("mqtts") => {}
                Some("mqtt") if self.insecure => check.warn(format!(
                    "uplink.url `{url}` is plain MQTT: data and credentials cross the network \
                     unencrypted (uplink.insecure = true)"
                )),
                Some("mqtt") => check.invalid(
                    "uplink.url",
                    "plain mqtt:// is refused unless uplink.insecure = true; use mqtts://",
                ),
                _ => check.invalid("uplink.url", format!("`{url}` must be mqtts://host:port")),
            }
        }
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => check.invalid(
                "uplink.client_key",
                "is required when uplink.client_cert is set",
            ),
            (None, Some(_)) => check.invalid(
                "uplink.client_cert",
                "is required when uplink.client_key is set",
            ),
            _ => {}
        }
        if let Some(path) = &self.client_cert {
            check.certificates("uplink.client_cert", path);
        }
        if let Some(path) = &self.client_key {
            check.private_key("uplink.client_key", path);
        }
        if let Some(path) = &self.ca_certs {
            check.certificates("uplink.ca_certs", path);
        }
        UplinkConfig {
            url,
            client_cert: self.client_cert,
            client_key: self.client_key,
            ca_certs: self.ca_certs,
            insecure: self.insecure,
            username: self.username,
            password: self.password.unwrap_or_default(),
            refuse_expired: self.refuse_expired,
        }
    }
}
