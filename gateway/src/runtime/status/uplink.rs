//! The uplink's state as the status report, `/metrics`, systemd's `STATUS=` and the retained
//! status topic show it. Written by the uplink task (a `watch` sender), read by the presenters;
//! it lives here, below the uplink and the control socket, so neither imports the other.

use serde::Serialize;
use tokio::sync::watch;

use crate::tls::CertInfo;

/// What the uplink is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UplinkState {
    /// No `uplink.url`: messages wait in the outbox.
    Disabled,
    Connecting,
    Connected,
    /// Waiting before the next connection attempt.
    Backoff,
    Stopped,
}

impl UplinkState {
    pub const ALL: [UplinkState; 5] = [
        Self::Disabled,
        Self::Connecting,
        Self::Connected,
        Self::Backoff,
        Self::Stopped,
    ];

    /// The state as `edgegw status` and systemd's STATUS= show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Backoff => "backoff",
            Self::Stopped => "stopped",
        }
    }
}

/// The uplink's state as `edgegw status` and the status topic show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UplinkStatus {
    pub state: UplinkState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected_since_ms: Option<u64>,
    pub published_total: u64,
    pub delivered_total: u64,
    /// PUBACKs with an error reason (MQTT 5): those messages stay queued and are retried.
    pub refused_total: u64,
    pub connects_total: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<CertInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_warning: Option<String>,
}

impl UplinkStatus {
    pub fn disabled() -> Self {
        Self {
            state: UplinkState::Disabled,
            url: None,
            last_error: None,
            connected_since_ms: None,
            published_total: 0,
            delivered_total: 0,
            refused_total: 0,
            connects_total: 0,
            cert: None,
            cert_warning: None,
        }
    }
}

/// The uplink status channel's initial value depends on whether an uplink is configured.
pub fn status_channel(
    configured: bool,
) -> (watch::Sender<UplinkStatus>, watch::Receiver<UplinkStatus>) {
    let mut status = UplinkStatus::disabled();
    if configured {
        status.state = UplinkState::Connecting;
    }
    watch::channel(status)
}
