//! Status as a bottom layer: the status report and the handle that builds it (outbox counts,
//! the uplink's state, board identity, serial ports, the adapters' counters), the uplink's
//! status type ([`uplink`]) and the renderers ([`render`]: the human `edgegw status` text;
//! [`prometheus`]: the `/metrics` text). The control socket, the HTTP API and the uplink's
//! status topic only present what is built here; nothing here imports them.

pub mod board;
pub mod bootstrap;
pub mod prometheus;
pub mod render;
pub mod serial;
pub mod uplink;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::outbox::{Outbox, OutboxStats};
pub use board::BoardStatus;
pub use render::render;
pub use uplink::{UplinkState, UplinkStatus};

/// Rates are averaged over this window.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// What `edgegw status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub version: &'static str,
    pub uptime_s: u64,
    pub uplink: UplinkStatus,
    pub outbox: OutboxStats,
    /// Age of the oldest queued message in seconds (absent when the queue is empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_queued_age_s: Option<u64>,
    /// Messages accepted / delivered (PUBACK) per second over the last minute.
    pub accepted_per_s: f64,
    pub delivered_per_s: f64,
    /// Days until the uplink client certificate expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_expires_in_days: Option<i64>,
    pub warnings: Vec<String>,
    /// The board: device-tree model and serial, machine id, wired MAC (issue 7).
    pub board: BoardStatus,
    /// Serial ports (issue 7).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub serial: Vec<serial::PortStatus>,
    /// Bootstrap provisioning (issue 15): absent when `[bootstrap]` is not configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<bootstrap::BootstrapStatus>,
    /// Per-adapter counts (`adapters`) and the DTLS session table (`dtls`).
    #[serde(flatten)]
    pub metrics: crate::runtime::metrics::MetricsSnapshot,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    accepted: u64,
    delivered: u64,
}

/// Builds status reports from the outbox and the uplink status.
#[derive(Debug, Clone)]
pub struct StatusHandle {
    outbox: Outbox,
    uplink: tokio::sync::watch::Receiver<UplinkStatus>,
    samples: Arc<Mutex<VecDeque<Sample>>>,
    started: Instant,
    board: Arc<BoardStatus>,
    serial: serial::SerialStatus,
    metrics: crate::runtime::metrics::Metrics,
    bootstrap: bootstrap::BootstrapStatusCell,
}

impl StatusHandle {
    /// `board` is read once by the caller (the composition root): board identity does not
    /// change while the daemon runs, and building a handle touches no file.
    pub fn new(
        outbox: Outbox,
        uplink: tokio::sync::watch::Receiver<UplinkStatus>,
        board: BoardStatus,
    ) -> Self {
        let metrics = crate::runtime::metrics::Metrics::new();
        let handle = Self {
            outbox,
            uplink,
            samples: Arc::default(),
            started: Instant::now(),
            board: Arc::new(board),
            // The serial ports count into the shared metrics through their status handles.
            serial: serial::SerialStatus::with_metrics(metrics.clone()),
            metrics,
            bootstrap: bootstrap::BootstrapStatusCell::default(),
        };
        handle.sample();
        handle
    }

    /// Records the counters now (called every few seconds by the pipeline and on each report).
    pub fn sample(&self) -> (f64, f64) {
        let stats = self.outbox.stats();
        let now = Instant::now();
        let mut samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        samples.push_back(Sample {
            at: now,
            accepted: stats.accepted_total,
            delivered: stats.acked_total,
        });
        while samples.len() > 2
            && samples
                .get(1)
                .is_some_and(|s| now.duration_since(s.at) >= RATE_WINDOW)
        {
            samples.pop_front();
        }
        while samples.len() > 256 {
            samples.pop_front();
        }
        match (samples.front(), samples.back()) {
            (Some(first), Some(last)) if last.at > first.at => {
                let secs = last.at.duration_since(first.at).as_secs_f64();
                (
                    (last.accepted - first.accepted) as f64 / secs,
                    (last.delivered - first.delivered) as f64 / secs,
                )
            }
            _ => (0.0, 0.0),
        }
    }

    /// The outbox the report counts (the control socket's quarantine requests act on it).
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn report(&self) -> StatusReport {
        let (accepted_per_s, delivered_per_s) = self.sample();
        let outbox = self.outbox.stats();
        let uplink = self.uplink.borrow().clone();
        let now = SystemTime::now();
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let oldest_queued_age_s = (outbox.queued > 0 && outbox.oldest_received_ms > 0)
            .then(|| now_ms.saturating_sub(outbox.oldest_received_ms) / 1000);
        let cert_expires_in_days = uplink.cert.as_ref().map(|c| {
            let now_s = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
            (c.not_after - now_s).div_euclid(86_400)
        });
        let mut warnings = Vec::new();
        if let Some(w) = &uplink.cert_warning {
            warnings.push(w.clone());
        }
        StatusReport {
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: self.started.elapsed().as_secs(),
            uplink,
            outbox,
            oldest_queued_age_s,
            accepted_per_s: (accepted_per_s * 10.0).round() / 10.0,
            delivered_per_s: (delivered_per_s * 10.0).round() / 10.0,
            cert_expires_in_days,
            warnings,
            board: (*self.board).clone(),
            serial: self.serial.snapshot(),
            bootstrap: self.bootstrap.get(),
            metrics: self.metrics.snapshot(),
        }
    }

    /// Where the serial adapter reports its ports.
    pub fn serial(&self) -> &serial::SerialStatus {
        &self.serial
    }

    /// Where the bootstrap task reports.
    pub fn bootstrap(&self) -> &bootstrap::BootstrapStatusCell {
        &self.bootstrap
    }

    /// The counters every adapter shares (one instance per daemon).
    pub fn metrics(&self) -> &crate::runtime::metrics::Metrics {
        &self.metrics
    }
}
