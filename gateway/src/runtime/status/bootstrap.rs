//! The bootstrap's part of the status: when and from where the applied bootstrap config came,
//! which channels it mirrors, and how the last attempt went. Written by `crate::bootstrap`'s
//! task, read by the status report; holds no secret.

use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BootstrapStatus {
    /// `applied` (a bootstrap config is in use), `waiting` (none yet: no uplink, messages
    /// buffer), `failing` (the last attempt failed; the applied one, if any, stays in use).
    pub state: String,
    /// The bootstrap service (`https://host:port`) and the external id asked for.
    pub url: String,
    pub external_id: String,
    /// RFC 3339 time the config in use was fetched and applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
    /// The upstream client the uplink connects as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Mirrored channels, `name (id)`.
    pub channels: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Failed attempts since the last success.
    pub failures: u64,
}

/// Shared slot the bootstrap task writes and the status reads; empty when `[bootstrap]` is
/// not configured.
#[derive(Debug, Clone, Default)]
pub struct BootstrapStatusCell(Arc<Mutex<Option<BootstrapStatus>>>);

impl BootstrapStatusCell {
    pub fn update(&self, f: impl FnOnce(&mut BootstrapStatus)) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(slot.get_or_insert_with(BootstrapStatus::default));
    }

    pub fn get(&self) -> Option<BootstrapStatus> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
