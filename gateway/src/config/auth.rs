//! `[auth]`: the standalone-mode auth store's throttling of failed authentications and its
//! audit trail. (The local administrator is `[standalone]`.)

use serde::{Deserialize, Serialize};

use super::Check;
use super::value::{Duration, number};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    #[serde(deserialize_with = "number")]
    failure_burst: u32,
    failure_refill: Duration,
    #[serde(deserialize_with = "number")]
    throttle_max_tracked: u32,
    #[serde(deserialize_with = "number")]
    audit_max_events: u64,
}

impl Default for RawAuth {
    fn default() -> Self {
        let d = AuthConfig::default();
        Self {
            failure_burst: d.failure_burst,
            failure_refill: d.failure_refill,
            throttle_max_tracked: d.throttle_max_tracked,
            audit_max_events: d.audit_max_events,
        }
    }
}

/// Throttling and audit settings of the auth store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthConfig {
    /// Failed authentications allowed in a burst, per remote address and per identity, before
    /// further attempts are refused with "too many requests".
    pub failure_burst: u32,
    /// One more failure is allowed every `failure_refill` (the token bucket's refill period).
    pub failure_refill: Duration,
    /// Most addresses / identities tracked by the throttle (memory bound); fully refilled
    /// entries are forgotten first.
    pub throttle_max_tracked: u32,
    /// Audit events kept in `auth.db`; the oldest are rotated out. 0 disables the audit table
    /// (authentications are still logged).
    pub audit_max_events: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            failure_burst: 10,
            failure_refill: Duration::from_secs(6),
            throttle_max_tracked: 10_000,
            audit_max_events: 100_000,
        }
    }
}

impl RawAuth {
    pub fn validate(self, check: &mut Check<'_>) -> AuthConfig {
        if self.failure_burst == 0 {
            check.invalid("auth.failure_burst", "must be at least 1");
        }
        if self.failure_refill.get().is_zero() {
            check.invalid("auth.failure_refill", "must be longer than 0s");
        }
        if self.throttle_max_tracked < 16 {
            check.invalid("auth.throttle_max_tracked", "must be at least 16");
        }
        AuthConfig {
            failure_burst: self.failure_burst,
            failure_refill: self.failure_refill,
            throttle_max_tracked: self.throttle_max_tracked,
            audit_max_events: self.audit_max_events,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use crate::config::{Profile, Source, load_from};

    fn env(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        list.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn auth_keys_come_from_the_environment_and_are_validated() {
        let config = load_from(
            &Source::None,
            Profile::Production,
            env(&[
                ("EDGEGW_AUTH_FAILURE_BURST", "3"),
                ("EDGEGW_AUTH_FAILURE_REFILL", "1m"),
                ("EDGEGW_AUTH_AUDIT_MAX_EVENTS", "0"),
            ]),
        )
        .unwrap();
        assert_eq!(config.auth.failure_burst, 3);
        assert_eq!(config.auth.failure_refill.get().as_secs(), 60);
        assert_eq!(config.auth.audit_max_events, 0);
        assert_eq!(config.auth.throttle_max_tracked, 10_000);
        let err = load_from(
            &Source::None,
            Profile::Production,
            env(&[
                ("EDGEGW_AUTH_FAILURE_BURST", "0"),
                ("EDGEGW_AUTH_FAILURE_REFILL", "0s"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("EDGEGW_AUTH_FAILURE_BURST") && err.contains("auth.failure_refill"),
            "{err}"
        );
    }
}
