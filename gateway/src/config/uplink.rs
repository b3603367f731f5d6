//! `[uplink]`: the MQTT connection to the upstream platform.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::value::{Duration, Secret, boolean, number};
use super::{Check, Profile};
use crate::topic::{TopicTemplate, validate_subtopic};

/// `uplink.inflight` by default: QoS 1 messages sent and not yet PUBACKed. The window caps
/// the uplink at `inflight` ÷ round trip. At 64 it held the uplink near 20,000 msgs/s on
/// loopback (one round trip through the TLS bridge and the broker took ~3 ms); at 256 the
/// uplink still fell behind intake under the 2-core bench (drain 1–3.5 s after a 10 s row),
/// at 512 and 1000 it kept up (docs/benchmarks.md, issue 17, session 12).
pub const DEFAULT_INFLIGHT: u16 = 512;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUplink {
    platform: Option<String>,
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
    topic_template: Option<String>,
    status_topic: Option<String>,
    #[serde(deserialize_with = "number_opt")]
    mqtt_version: Option<u8>,
    #[serde(deserialize_with = "number_opt")]
    inflight: Option<u16>,
    keep_alive: Option<Duration>,
    client_id: Option<String>,
    downlink_subtopic: Option<String>,
    reconnect_min: Option<Duration>,
    reconnect_max: Option<Duration>,
    status_interval: Option<Duration>,
    connect_timeout: Option<Duration>,
    refused_retry: Option<Duration>,
    #[serde(deserialize_with = "number_opt")]
    quarantine_after: Option<u16>,
    session_expiry: Option<Duration>,
    #[serde(deserialize_with = "number_opt")]
    downlink_queue: Option<u16>,
    #[serde(deserialize_with = "number_opt")]
    downlink_backlog: Option<u16>,
    downlink_max_age: Option<Duration>,
}

fn number_opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr + TryFrom<i64>,
    <T as std::str::FromStr>::Err: std::fmt::Display,
{
    number(d).map(Some)
}

/// MQTT protocol version of the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MqttVersion {
    #[serde(rename = "3")]
    V311,
    #[serde(rename = "5")]
    V5,
}

/// What kind of upstream the uplink talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Any MQTT broker: topics from the template, status topic `edgegw/<client_id>/status`.
    Mqtt,
    /// SuperMQ / Magistrala: CONNECT as the gateway's SuperMQ client (username = client id,
    /// password = secret), only `m/<domain>/c/<channel>/…` topics, status off unless it is
    /// given such a topic.
    Supermq,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mqtt => "mqtt",
            Self::Supermq => "supermq",
        }
    }
}

/// Where the uplink connects. Absent: no uplink, messages wait in the outbox.
#[derive(Debug, Clone, Serialize)]
pub struct UplinkConfig {
    pub platform: Platform,
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
    /// Topic of each message (`{domain} {channel} {subtopic} {client}`).
    #[serde(serialize_with = "display")]
    pub topic_template: TopicTemplate,
    /// Retained `online` / `offline` (last will); JSON statistics on `<status_topic>/stats`.
    /// `None`: no status, no statistics, no last will.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_topic: Option<String>,
    pub mqtt_version: MqttVersion,
    /// QoS 1 messages sent but not yet acknowledged (PUBACK), at most.
    pub inflight: u16,
    pub keep_alive: Duration,
    /// MQTT client id.
    pub client_id: String,
    /// Commands come from `<channel topic>/<downlink_subtopic>/#`.
    pub downlink_subtopic: String,
    /// Reconnect backoff: first delay and cap (exponential, with jitter).
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How often the retained statistics are published.
    pub status_interval: Duration,
    /// How long messages the broker refused (MQTT 5 PUBACK with an error reason) wait before
    /// they are sent again.
    pub refused_retry: Duration,
    /// Refusals of one message (MQTT 5 PUBACK errors, or MQTT 3.1.1 connections closed right
    /// after publishing it, in a row) before it is moved to the quarantine.
    pub quarantine_after: u32,
    /// How long the broker keeps the gateway's MQTT session (its command subscriptions and
    /// the commands queued for them) while the gateway is away; zero: a clean session.
    pub session_expiry: Duration,
    /// Bounds of the downlink command queues; see [`UplinkConfig::downlink_limits`].
    pub downlink_queue: usize,
    pub downlink_backlog: usize,
    pub downlink_max_age: Duration,
    /// TCP + TLS + CONNACK deadline.
    pub connect_timeout: Duration,
}

fn display<S: serde::Serializer>(v: &TopicTemplate, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// The default MQTT client id: `edgegw-<hostname>`.
fn default_client_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    if host.is_empty() {
        "edgegw".to_owned()
    } else {
        format!("edgegw-{host}")
    }
}

impl RawUplink {
    pub fn validate(self, _profile: &Profile, check: &mut Check<'_>) -> UplinkConfig {
        let platform = match self.platform.as_deref().map(str::trim) {
            None | Some("" | "mqtt") => Platform::Mqtt,
            Some("supermq" | "magistrala") => Platform::Supermq,
            Some(other) => {
                check.invalid(
                    "uplink.platform",
                    format!("`{other}` must be \"mqtt\" (any broker) or \"supermq\" (SuperMQ / Magistrala)"),
                );
                Platform::Mqtt
            }
        };
        let url = self.url.filter(|u| !u.trim().is_empty());
        if let Some(url) = &url {
            let shown = super::value::redact_userinfo(url);
            match url.split_once("://").map(|(scheme, _)| scheme) {
                Some("mqtts") => {}
                Some("mqtt") if self.insecure => check.warn(format!(
                    "uplink.url `{shown}` is plain MQTT: data and credentials cross the network \
                     unencrypted (uplink.insecure = true)"
                )),
                Some("mqtt") => check.invalid(
                    "uplink.url",
                    "plain mqtt:// is refused unless uplink.insecure = true; use mqtts://",
                ),
                _ => check.invalid("uplink.url", format!("`{shown}` must be mqtts://host:port")),
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
        let topic_template =
            match TopicTemplate::parse(self.topic_template.as_deref().unwrap_or("")) {
                Ok(t) => t,
                Err(e) => {
                    check.invalid("uplink.topic_template", e.to_string());
                    TopicTemplate::parse("").expect("invariant: the default template is valid")
                }
            };
        let client_id = self
            .client_id
            .filter(|c| !c.trim().is_empty())
            .unwrap_or_else(default_client_id);
        if client_id.contains(['/', '+', '#']) || client_id.len() > 128 {
            check.invalid(
                "uplink.client_id",
                "must be at most 128 bytes without '/', '+' or '#'",
            );
        }
        let status_topic = match (platform, self.status_topic) {
            // Explicitly empty: off.
            (_, Some(t)) if t.trim().is_empty() => None,
            (Platform::Mqtt, None) => Some(format!("edgegw/{client_id}/status")),
            // SuperMQ allows only channel topics: no status unless one is named.
            (Platform::Supermq, None) => None,
            (_, Some(t)) => Some(t),
        };
        if let Some(t) = &status_topic {
            if t.contains(['+', '#']) || t.split('/').any(str::is_empty) {
                check.invalid(
                    "uplink.status_topic",
                    "must be a topic without wildcards or empty levels (\"\" turns the status off)",
                );
            } else if platform == Platform::Supermq && supermq_channel_topic(t).is_none() {
                check.invalid(
                    "uplink.status_topic",
                    format!(
                        "`{t}` is not a SuperMQ channel topic: with uplink.platform = \"supermq\" it must be \
                         m/<domain id>/c/<channel id>[/<subtopic>] of a channel the gateway's client is \
                         connected to (or \"\" for no status)"
                    ),
                );
            }
        }
        if platform == Platform::Supermq {
            if self.username.as_deref().is_none_or(|u| u.trim().is_empty()) {
                check.invalid(
                    "uplink.username",
                    "is required with uplink.platform = \"supermq\": set it to the gateway's SuperMQ client id",
                );
            }
            if self.password.as_ref().is_none_or(|p| p.expose().is_empty()) {
                check.invalid(
                    "uplink.password",
                    "is required with uplink.platform = \"supermq\": set it to the gateway's SuperMQ client secret",
                );
            }
            if !topic_template
                .as_str()
                .starts_with("m/{domain}/c/{channel}")
            {
                check.invalid(
                    "uplink.topic_template",
                    "with uplink.platform = \"supermq\" it must start with m/{domain}/c/{channel} \
                     (SuperMQ accepts only channel topics)",
                );
            }
        }
        let mqtt_version = match self.mqtt_version.unwrap_or(3) {
            3 | 4 => MqttVersion::V311,
            5 => MqttVersion::V5,
            other => {
                check.invalid(
                    "uplink.mqtt_version",
                    format!("{other} must be 3 (MQTT 3.1.1) or 5"),
                );
                MqttVersion::V311
            }
        };
        let inflight = self.inflight.unwrap_or(DEFAULT_INFLIGHT);
        if inflight == 0 || inflight > 1000 {
            check.invalid("uplink.inflight", "must be between 1 and 1000");
        }
        let keep_alive = self.keep_alive.unwrap_or(Duration::from_secs(30));
        if keep_alive.get() < std::time::Duration::from_secs(5) {
            check.invalid("uplink.keep_alive", "must be at least 5s");
        }
        let downlink_subtopic =
            match validate_subtopic(self.downlink_subtopic.as_deref().unwrap_or("cmd")) {
                Ok(s) if !s.is_empty() => s,
                Ok(_) => {
                    check.invalid("uplink.downlink_subtopic", "must not be empty");
                    "cmd".to_owned()
                }
                Err(e) => {
                    check.invalid("uplink.downlink_subtopic", e.to_string());
                    "cmd".to_owned()
                }
            };
        let reconnect_min = self.reconnect_min.unwrap_or(Duration::from_secs(1));
        let reconnect_max = self.reconnect_max.unwrap_or(Duration::from_secs(60));
        if reconnect_min.get().is_zero() || reconnect_min > reconnect_max {
            check.invalid(
                "uplink.reconnect_min",
                "must be longer than 0s and at most uplink.reconnect_max",
            );
        }
        let status_interval = self.status_interval.unwrap_or(Duration::from_secs(60));
        if status_interval.get() < std::time::Duration::from_secs(1) {
            check.invalid("uplink.status_interval", "must be at least 1s");
        }
        let refused_retry = self.refused_retry.unwrap_or(Duration::from_secs(30));
        if refused_retry.get() < std::time::Duration::from_secs(1) {
            check.invalid("uplink.refused_retry", "must be at least 1s");
        }
        let quarantine_after = self.quarantine_after.unwrap_or(5);
        if quarantine_after == 0 || quarantine_after > 1000 {
            check.invalid("uplink.quarantine_after", "must be between 1 and 1000");
        }
        let session_expiry = self.session_expiry.unwrap_or(Duration::from_secs(86_400));
        if session_expiry.get() > std::time::Duration::from_secs(u64::from(u32::MAX)) {
            check.invalid(
                "uplink.session_expiry",
                "must be at most 4294967295s (MQTT's limit)",
            );
        }
        let defaults = DownlinkLimits::default();
        let queue = self.downlink_queue.map_or(defaults.queue, usize::from);
        if queue == 0 || queue > 1024 {
            check.invalid("uplink.downlink_queue", "must be between 1 and 1024");
        }
        let backlog = self.downlink_backlog.map_or(defaults.backlog, usize::from);
        if backlog > 1024 {
            check.invalid("uplink.downlink_backlog", "must be between 0 and 1024");
        }
        let downlink_max_age = self
            .downlink_max_age
            .unwrap_or(Duration::from_secs(defaults.max_age.as_secs()));
        if downlink_max_age.get() < std::time::Duration::from_secs(1) {
            check.invalid("uplink.downlink_max_age", "must be at least 1s");
        }
        let connect_timeout = self.connect_timeout.unwrap_or(Duration::from_secs(10));
        if connect_timeout.get() < std::time::Duration::from_secs(1) {
            check.invalid("uplink.connect_timeout", "must be at least 1s");
        }
        UplinkConfig {
            platform,
            topic_template,
            status_topic,
            mqtt_version,
            inflight,
            keep_alive,
            client_id,
            downlink_subtopic,
            reconnect_min,
            reconnect_max,
            status_interval,
            connect_timeout,
            refused_retry,
            quarantine_after: u32::from(quarantine_after),
            session_expiry,
            downlink_queue: queue,
            downlink_backlog: backlog,
            downlink_max_age,
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

/// `m/<domain>/c/<channel>[/<subtopic>]` with non-empty domain and channel, as SuperMQ's topic
/// parser (`pkg/messaging/topics.go`, `ParseTopic`) reads it: (domain, channel).
pub fn supermq_channel_topic(topic: &str) -> Option<(&str, &str)> {
    let mut levels = topic.splitn(5, '/');
    let (Some("m"), Some(domain), Some("c"), Some(channel)) =
        (levels.next(), levels.next(), levels.next(), levels.next())
    else {
        return None;
    };
    if domain.is_empty() || channel.is_empty() {
        return None;
    }
    match levels.next() {
        Some(sub) if validate_subtopic(sub).is_err() || sub.is_empty() => None,
        _ => Some((domain, channel)),
    }
}

impl UplinkConfig {
    /// The bounds of the downlink command queues these settings give.
    pub fn downlink_limits(&self) -> DownlinkLimits {
        DownlinkLimits {
            queue: self.downlink_queue,
            backlog: self.downlink_backlog,
            max_age: self.downlink_max_age.get(),
        }
    }
}

/// Bounds of the downlink queues.
#[derive(Debug, Clone, Copy)]
pub struct DownlinkLimits {
    /// Commands waiting in a live subscription's receiver.
    pub queue: usize,
    /// Commands kept for a client that is not subscribed right now.
    pub backlog: usize,
    /// Kept commands older than this are dropped.
    pub max_age: std::time::Duration,
}

impl Default for DownlinkLimits {
    fn default() -> Self {
        Self {
            queue: 16,
            backlog: 32,
            max_age: std::time::Duration::from_secs(3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use crate::config::{Platform, Profile, Source, load_from};

    fn load(vars: &[(&str, &str)]) -> Result<crate::config::Config, String> {
        let vars: Vec<(OsString, OsString)> = vars
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect();
        load_from(&Source::None, Profile::Production, vars).map_err(|e| e.to_string())
    }

    #[test]
    fn supermq_requires_the_gateway_client_id_and_secret_by_key() {
        let e = load(&[("EDGEGW_UPLINK_PLATFORM", "supermq")]).unwrap_err();
        assert!(
            e.contains("uplink.username") && e.contains("SuperMQ client id"),
            "{e}"
        );
        assert!(e.contains("uplink.password") && e.contains("secret"), "{e}");
        let ok = load(&[
            ("EDGEGW_UPLINK_PLATFORM", "supermq"),
            (
                "EDGEGW_UPLINK_USERNAME",
                "9e1b6f3c-0000-4000-8000-000000000001",
            ),
            ("EDGEGW_UPLINK_PASSWORD", "s3cret"),
        ])
        .unwrap();
        assert_eq!(ok.uplink.platform, Platform::Supermq);
        // No status topic by default: SuperMQ allows only channel topics.
        assert_eq!(ok.uplink.status_topic, None);
        let generic = load(&[]).unwrap();
        assert_eq!(generic.uplink.platform, Platform::Mqtt);
        assert!(generic.uplink.status_topic.is_some());
    }

    #[test]
    fn supermq_status_topic_and_template_must_be_channel_topics() {
        let base = [
            ("EDGEGW_UPLINK_PLATFORM", "supermq"),
            ("EDGEGW_UPLINK_USERNAME", "gw"),
            ("EDGEGW_UPLINK_PASSWORD", "pw"),
        ];
        for bad in [
            "edgegw/gw/status",
            "m//c/ch/status",
            "m/d/c//status",
            "m/d/x/ch",
        ] {
            let mut vars = base.to_vec();
            vars.push(("EDGEGW_UPLINK_STATUS_TOPIC", bad));
            let e = load(&vars).unwrap_err();
            assert!(e.contains("uplink.status_topic"), "{bad}: {e}");
        }
        let mut vars = base.to_vec();
        vars.push(("EDGEGW_UPLINK_STATUS_TOPIC", "m/dom/c/ch-1/status"));
        assert_eq!(
            load(&vars).unwrap().uplink.status_topic.as_deref(),
            Some("m/dom/c/ch-1/status")
        );
        let mut vars = base.to_vec();
        vars.push(("EDGEGW_UPLINK_TOPIC_TEMPLATE", "legacy"));
        assert!(load(&vars).unwrap_err().contains("uplink.topic_template"));
        let mut vars = base.to_vec();
        vars.push(("EDGEGW_UPLINK_PLATFORM", "kafka"));
        assert!(load(&vars[1..]).unwrap_err().contains("uplink.platform"));
    }
}
