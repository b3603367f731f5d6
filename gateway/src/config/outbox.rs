//! `[outbox]`: the durable queue between the adapters and the uplink (`outbox.db`).

use serde::{Deserialize, Serialize};

use super::Check;
use super::value::{ByteSize, Duration};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOutbox {
    durability: Option<String>,
    max_bytes: Option<ByteSize>,
    max_age: Option<Duration>,
    full_policy: Option<String>,
    max_message_size: Option<ByteSize>,
}

/// When `accept` resolves: after fsync (`synchronous=FULL`) or after the OS has the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Survives power loss: every group commit is fsynced before receipts resolve.
    Fsync,
    /// Survives a crash of the daemon, not a power cut (`synchronous=NORMAL` in WAL mode).
    Os,
}

/// What happens when the outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Refuse new messages (the adapter answers "busy"); nothing is dropped.
    Reject,
    /// Delete the oldest queued messages to make room (counted and logged).
    DropOldest,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutboxConfig {
    pub durability: Durability,
    /// Upper bound of the queued payload bytes.
    pub max_bytes: ByteSize,
    /// Queued messages older than this are removed (counted) instead of sent.
    pub max_age: Duration,
    pub full_policy: FullPolicy,
    /// Largest payload accepted.
    pub max_message_size: ByteSize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            max_bytes: ByteSize(256 << 20),
            max_age: Duration::from_secs(7 * 86_400),
            full_policy: FullPolicy::Reject,
            max_message_size: ByteSize(64 << 10),
        }
    }
}

impl RawOutbox {
    pub fn validate(self, check: &mut Check<'_>) -> OutboxConfig {
        let default = OutboxConfig::default();
        let durability = match self.durability.as_deref().map(str::trim) {
            None | Some("fsync") => Durability::Fsync,
            Some("os") => Durability::Os,
            Some(other) => {
                check.invalid(
                    "outbox.durability",
                    format!("`{other}` must be \"fsync\" or \"os\""),
                );
                default.durability
            }
        };
        let full_policy = match self.full_policy.as_deref().map(str::trim) {
            None | Some("reject") => FullPolicy::Reject,
            Some("drop_oldest") => FullPolicy::DropOldest,
            Some(other) => {
                check.invalid(
                    "outbox.full_policy",
                    format!("`{other}` must be \"reject\" or \"drop_oldest\""),
                );
                default.full_policy
            }
        };
        let max_bytes = self.max_bytes.unwrap_or(default.max_bytes);
        let max_message_size = self.max_message_size.unwrap_or(default.max_message_size);
        if max_message_size.0 == 0 || max_message_size.0 > 16 << 20 {
            check.invalid(
                "outbox.max_message_size",
                "must be between 1 byte and 16MiB",
            );
        }
        if max_bytes < max_message_size {
            check.invalid(
                "outbox.max_bytes",
                format!("must be at least outbox.max_message_size ({max_message_size})"),
            );
        }
        let max_age = self.max_age.unwrap_or(default.max_age);
        if max_age.get().is_zero() {
            check.invalid("outbox.max_age", "must be longer than 0s");
        }
        OutboxConfig {
            durability,
            max_bytes,
            max_age,
            full_policy,
            max_message_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::super::{ConfigError, Profile, Source, load_from};
    use super::*;
    use crate::config::MqttVersion;

    fn load(vars: &[(&str, &str)]) -> Result<super::super::Config, ConfigError> {
        load_from(
            &Source::None,
            Profile::Production,
            vars.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        )
    }

    #[test]
    fn outbox_defaults_and_overrides() {
        let c = load(&[]).unwrap();
        assert_eq!(c.outbox.durability, Durability::Fsync);
        assert_eq!(c.outbox.full_policy, FullPolicy::Reject);
        assert_eq!(c.outbox.max_bytes, ByteSize(256 << 20));
        let c = load(&[
            ("EDGEGW_OUTBOX_DURABILITY", "os"),
            ("EDGEGW_OUTBOX_FULL_POLICY", "drop_oldest"),
            ("EDGEGW_OUTBOX_MAX_BYTES", "10MiB"),
            ("EDGEGW_OUTBOX_MAX_AGE", "1h"),
        ])
        .unwrap();
        assert_eq!(c.outbox.durability, Durability::Os);
        assert_eq!(c.outbox.full_policy, FullPolicy::DropOldest);
        assert_eq!(c.outbox.max_bytes, ByteSize(10 << 20));
        assert_eq!(c.outbox.max_age.get().as_secs(), 3600);
    }

    #[test]
    fn bad_outbox_values_are_named() {
        let err = load(&[
            ("EDGEGW_OUTBOX_DURABILITY", "sometimes"),
            ("EDGEGW_OUTBOX_FULL_POLICY", "panic"),
            ("EDGEGW_OUTBOX_MAX_BYTES", "1KiB"),
        ])
        .unwrap_err()
        .to_string();
        for needle in [
            "outbox.durability",
            "outbox.full_policy",
            "outbox.max_bytes",
            "EDGEGW_OUTBOX_DURABILITY",
        ] {
            assert!(err.contains(needle), "{needle} not in {err}");
        }
    }

    #[test]
    fn uplink_keys_validate() {
        let c = load(&[
            ("EDGEGW_UPLINK_TOPIC_TEMPLATE", "legacy"),
            ("EDGEGW_UPLINK_MQTT_VERSION", "5"),
            ("EDGEGW_UPLINK_CLIENT_ID", "gw-1"),
            ("EDGEGW_UPLINK_INFLIGHT", "10"),
        ])
        .unwrap();
        assert_eq!(
            c.uplink.topic_template.as_str(),
            "channels/{channel}/messages/{subtopic}"
        );
        assert_eq!(c.uplink.mqtt_version, MqttVersion::V5);
        assert_eq!(c.uplink.status_topic.as_deref(), Some("edgegw/gw-1/status"));
        assert_eq!(c.uplink.downlink_subtopic, "cmd");
        assert_eq!(c.uplink.inflight, 10);
        let err = load(&[
            ("EDGEGW_UPLINK_TOPIC_TEMPLATE", "m/{domain}/x"),
            ("EDGEGW_UPLINK_MQTT_VERSION", "6"),
            ("EDGEGW_UPLINK_INFLIGHT", "0"),
            ("EDGEGW_UPLINK_DOWNLINK_SUBTOPIC", "a/#"),
            ("EDGEGW_UPLINK_RECONNECT_MIN", "2m"),
        ])
        .unwrap_err()
        .to_string();
        for needle in [
            "uplink.topic_template",
            "uplink.mqtt_version",
            "uplink.inflight",
            "uplink.downlink_subtopic",
            "uplink.reconnect_min",
        ] {
            assert!(err.contains(needle), "{needle} not in {err}");
        }
    }
}
