//! `[coap]`: the plain CoAP listener (udp/5683), secret in the Uri-Query.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::value::{ByteSize, boolean, number};
use super::{Check, Profile};

/// Largest `coap.max_payload` accepted: reassembly buffers are per transfer.
pub const MAX_PAYLOAD_LIMIT: u64 = 1 << 20;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCoap {
    #[serde(deserialize_with = "opt_boolean")]
    enabled: Option<bool>,
    bind: Option<String>,
    max_payload: Option<ByteSize>,
    #[serde(deserialize_with = "opt_number")]
    max_pending: Option<usize>,
    #[serde(deserialize_with = "opt_number")]
    max_observers: Option<usize>,
    #[serde(deserialize_with = "opt_number")]
    max_dedup_entries: Option<usize>,
}

pub(super) fn opt_number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr + TryFrom<i64>,
    <T as std::str::FromStr>::Err: std::fmt::Display,
{
    number(d).map(Some)
}

fn opt_boolean<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    boolean(d).map(Some)
}

/// The validated `[coap]` section.
#[derive(Debug, Clone, Serialize)]
pub struct CoapConfig {
    pub enabled: bool,
    pub bind: SocketAddr,
    /// Largest message payload, Block1-reassembled; beyond it 4.13.
    pub max_payload: ByteSize,
    /// Requests waiting to become durable; beyond it 5.03.
    pub max_pending: usize,
    /// Observe registrations (downlink subscribers).
    pub max_observers: usize,
    /// Remembered (peer, message id) pairs for de-duplication.
    pub max_dedup_entries: usize,
}

/// Parses a `host:port` bind address (port 0: an ephemeral port, for tests).
pub(super) fn bind_addr(
    check: &mut Check<'_>,
    key: &str,
    value: Option<String>,
    default: SocketAddr,
) -> SocketAddr {
    let Some(text) = value else {
        return default;
    };
    match text.trim().parse::<SocketAddr>() {
        Ok(addr) => addr,
        Err(_) => {
            check.invalid(
                key,
                format!("`{text}` is not an address:port (e.g. `[::]:5683`, `127.0.0.1:5683`)"),
            );
            default
        }
    }
}

/// Upper bound of `coap.max_dedup_entries`: ~80 MiB of table when full (the table's index is
/// sized for the cap when the first message comes).
pub const MAX_DEDUP_ENTRIES: usize = 1 << 20;

pub(super) fn positive(
    check: &mut Check<'_>,
    key: &str,
    value: Option<usize>,
    default: usize,
) -> usize {
    match value {
        Some(0) => {
            check.invalid(key, "must be at least 1");
            default
        }
        Some(v) => v,
        None => default,
    }
}

impl RawCoap {
    pub fn validate(self, profile: &Profile, check: &mut Check<'_>) -> CoapConfig {
        let bind = bind_addr(
            check,
            "coap.bind",
            self.bind,
            SocketAddr::new(profile.default_listen_ip(), 5683),
        );
        let max_payload = self.max_payload.unwrap_or(ByteSize(64 * 1024));
        if max_payload.0 < 16 || max_payload.0 > MAX_PAYLOAD_LIMIT {
            check.invalid("coap.max_payload", "must be between 16B and 1MiB");
        }
        let max_dedup_entries = positive(
            check,
            "coap.max_dedup_entries",
            self.max_dedup_entries,
            16 * 1024,
        );
        if max_dedup_entries > MAX_DEDUP_ENTRIES {
            check.invalid("coap.max_dedup_entries", "must be at most 1048576");
        }
        CoapConfig {
            enabled: self.enabled.unwrap_or(true),
            bind,
            max_payload,
            max_pending: positive(check, "coap.max_pending", self.max_pending, 1024),
            max_observers: positive(check, "coap.max_observers", self.max_observers, 1024),
            max_dedup_entries,
        }
    }
}
