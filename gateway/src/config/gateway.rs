//! `[gateway]`: where state lives, logging, shutdown.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::value::Duration;
use super::{Check, Profile};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGateway {
    state_dir: Option<PathBuf>,
    runtime_dir: Option<PathBuf>,
    domain_id: Option<String>,
    log_level: Option<String>,
    drain_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GatewayConfig {
    /// Databases (`auth.db`, `outbox.db`) and generated keys.
    pub state_dir: PathBuf,
    /// The control socket.
    pub runtime_dir: PathBuf,
    /// Upstream domain id (SuperMQ) given to channels created without one.
    pub domain_id: String,
    /// tracing filter, e.g. `info` or `info,gateway::uplink=debug`.
    pub log_level: String,
    /// How long shutdown waits for intake to stop and the outbox to flush.
    pub drain_timeout: Duration,
}

impl RawGateway {
    pub fn validate(self, profile: &Profile, check: &mut Check<'_>) -> GatewayConfig {
        let log_level = self.log_level.unwrap_or_else(|| "info".to_owned());
        if let Err(e) = crate::runtime::logging::parse_filter(&log_level) {
            check.invalid(
                "gateway.log_level",
                format!("`{log_level}` is not a log filter: {e}"),
            );
        }
        let domain_id = self.domain_id.unwrap_or_default();
        if domain_id.contains(['/', '+', '#', ' ']) {
            check.invalid(
                "gateway.domain_id",
                "must not contain '/', '+', '#' or spaces",
            );
        }
        GatewayConfig {
            state_dir: self
                .state_dir
                .unwrap_or_else(|| profile.default_state_dir()),
            runtime_dir: self
                .runtime_dir
                .unwrap_or_else(|| profile.default_runtime_dir()),
            domain_id,
            log_level,
            drain_timeout: self.drain_timeout.unwrap_or(Duration::from_secs(10)),
        }
    }
}
