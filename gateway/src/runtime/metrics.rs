//! Process-wide counters of the sensor-facing adapters (`coap`, `coaps`, `serial`, `http`) and
//! the DTLS session table, for `GET /metrics` (Prometheus text) and `edgegw status`.
//!
//! One [`Metrics`] (an `Arc` of atomics, no lock) lives in the status handle and is handed to
//! every adapter. Labels are fixed, small sets ([`Adapter`], [`Refusal`]): nothing a peer sends
//! (client ids, addresses, topics) ever becomes a label, so the output stays bounded. The
//! sans-IO cores do not touch atomics: they keep plain counts ([`RefusalCounts`], their own
//! `stats()`), and their shells add the differences here. This module knows no wire
//! protocol: refusals arrive as intake's [`Refusal`] kinds, counted by the adapter that
//! answered them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// A sensor-facing adapter (the `adapter` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adapter {
    Coap,
    Coaps,
    Serial,
    Http,
}

impl Adapter {
    pub const ALL: [Adapter; 4] = [
        Adapter::Coap,
        Adapter::Coaps,
        Adapter::Serial,
        Adapter::Http,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Adapter::Coap => "coap",
            Adapter::Coaps => "coaps",
            Adapter::Serial => "serial",
            Adapter::Http => "http",
        }
    }

    /// Whether the adapter carries downlink commands (the HTTP adapter does not).
    pub fn has_downlink(self) -> bool {
        !matches!(self, Adapter::Http)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a sensor's request was refused (the `reason` label): intake's refusal kinds, the same
/// for every adapter. Each adapter counts a refusal once, where it maps it to its wire answer.
pub use crate::intake::{RefusalCounts, RefusalKind as Refusal};

const REFUSALS: usize = Refusal::ALL.len();

/// DTLS handshake counts kept by the session table (plain numbers; see [`Metrics::sync_dtls`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandshakeCounts {
    pub completed: u64,
    /// Handshakes that did not complete: failed, timed out, refused (caps, no usable mode).
    pub failed: u64,
    /// Of `failed`: refused on authentication (wrong PSK, unknown identity, rejected
    /// certificate or CN).
    pub auth_failed: u64,
    /// Refused at once (after the cookie exchange) because the ClientHello offered no cipher
    /// suite the listener can use; not part of `failed`.
    pub no_common_suite: u64,
}

#[derive(Debug, Default)]
struct AdapterCounters {
    messages_in: AtomicU64,
    refused: [AtomicU64; REFUSALS],
    auth_failures: AtomicU64,
    downlink_delivered: AtomicU64,
    downlink_refused: AtomicU64,
}

#[derive(Debug, Default)]
struct DtlsCounters {
    sessions: AtomicU64,
    half_open: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    no_common_suite: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    adapters: [AdapterCounters; 4],
    dtls: DtlsCounters,
}

/// The shared counters. Cheap to clone (one `Arc`); every method is a relaxed atomic.
#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<Inner>);

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    fn adapter(&self, adapter: Adapter) -> &AdapterCounters {
        &self.0.adapters[adapter.index()]
    }

    /// A message accepted: durable and acknowledged to the sensor.
    pub fn message_in(&self, adapter: Adapter) {
        self.adapter(adapter).messages_in.fetch_add(1, Relaxed);
    }

    /// A request refused. An [`Refusal::Unauthenticated`] refusal is also an authentication failure.
    pub fn refused(&self, adapter: Adapter, refusal: Refusal) {
        self.refused_n(adapter, refusal, 1);
    }

    fn refused_n(&self, adapter: Adapter, refusal: Refusal, n: u64) {
        if n == 0 {
            return;
        }
        let a = self.adapter(adapter);
        a.refused[refusal.index()].fetch_add(n, Relaxed);
        if refusal == Refusal::Unauthenticated {
            a.auth_failures.fetch_add(n, Relaxed);
        }
    }

    /// Adds what a core counted since `reported` and remembers the new totals.
    pub fn sync_refusals(
        &self,
        adapter: Adapter,
        current: &RefusalCounts,
        reported: &mut RefusalCounts,
    ) {
        for r in Refusal::ALL {
            self.refused_n(adapter, r, current.get(r).saturating_sub(reported.get(r)));
        }
        *reported = *current;
    }

    /// An authentication that failed without a refused request (a DTLS handshake).
    pub fn auth_failures(&self, adapter: Adapter, n: u64) {
        self.adapter(adapter).auth_failures.fetch_add(n, Relaxed);
    }

    /// A downlink command handed to a sensor.
    pub fn downlink_delivered(&self, adapter: Adapter) {
        self.adapter(adapter)
            .downlink_delivered
            .fetch_add(1, Relaxed);
    }

    /// A downlink command the adapter refused to hand to a sensor (a serial `CMD` that would
    /// not be one faithful line).
    pub fn downlink_refused(&self, adapter: Adapter) {
        self.adapter(adapter).downlink_refused.fetch_add(1, Relaxed);
    }

    /// The DTLS table's current sizes (gauges).
    pub fn set_dtls_sessions(&self, established: usize, half_open: usize) {
        let d = &self.0.dtls;
        d.sessions.store(established as u64, Relaxed);
        d.half_open.store(half_open as u64, Relaxed);
    }

    /// Adds the handshakes the table counted since `reported` (authentication failures go to
    /// the `coaps` adapter) and remembers the new totals.
    pub fn sync_dtls(&self, current: &HandshakeCounts, reported: &mut HandshakeCounts) {
        let d = &self.0.dtls;
        d.completed.fetch_add(
            current.completed.saturating_sub(reported.completed),
            Relaxed,
        );
        d.failed
            .fetch_add(current.failed.saturating_sub(reported.failed), Relaxed);
        d.no_common_suite.fetch_add(
            current
                .no_common_suite
                .saturating_sub(reported.no_common_suite),
            Relaxed,
        );
        self.auth_failures(
            Adapter::Coaps,
            current.auth_failed.saturating_sub(reported.auth_failed),
        );
        *reported = *current;
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let adapters = Adapter::ALL
            .iter()
            .map(|&a| {
                let c = self.adapter(a);
                let refused: BTreeMap<&'static str, u64> = Refusal::ALL
                    .iter()
                    .map(|&r| (r.label(), c.refused[r.index()].load(Relaxed)))
                    .collect();
                (
                    a.label(),
                    AdapterSnapshot {
                        messages_in: c.messages_in.load(Relaxed),
                        refused_total: refused.values().sum(),
                        refused,
                        auth_failures: c.auth_failures.load(Relaxed),
                        downlink_delivered: a
                            .has_downlink()
                            .then(|| c.downlink_delivered.load(Relaxed)),
                        downlink_refused: a
                            .has_downlink()
                            .then(|| c.downlink_refused.load(Relaxed)),
                    },
                )
            })
            .collect();
        let d = &self.0.dtls;
        MetricsSnapshot {
            adapters,
            dtls: DtlsSnapshot {
                sessions: d.sessions.load(Relaxed),
                handshakes_in_progress: d.half_open.load(Relaxed),
                handshakes_completed: d.completed.load(Relaxed),
                handshakes_failed: d.failed.load(Relaxed),
                handshakes_no_common_suite: d.no_common_suite.load(Relaxed),
            },
        }
    }
}

/// One adapter's counters, as `edgegw status --json` shows them.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct AdapterSnapshot {
    pub messages_in: u64,
    pub refused_total: u64,
    /// Per reason class (every class present).
    pub refused: BTreeMap<&'static str, u64>,
    pub auth_failures: u64,
    /// Absent for adapters without downlink (http).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downlink_delivered: Option<u64>,
    /// Commands refused for delivery (serial: would not be one faithful `CMD` line). Absent
    /// for adapters without downlink.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downlink_refused: Option<u64>,
}

/// The DTLS session table of the CoAPS listener.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct DtlsSnapshot {
    /// Established sessions now.
    pub sessions: u64,
    /// Half-open handshakes now.
    pub handshakes_in_progress: u64,
    pub handshakes_completed: u64,
    pub handshakes_failed: u64,
    /// ClientHellos refused at once for offering no usable cipher suite.
    pub handshakes_no_common_suite: u64,
}

/// Everything at one moment (part of the status report).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Keyed by adapter label.
    pub adapters: BTreeMap<&'static str, AdapterSnapshot>,
    pub dtls: DtlsSnapshot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncing_a_core_adds_only_the_difference() {
        let m = Metrics::new();
        let mut core = RefusalCounts::default();
        let mut reported = RefusalCounts::default();
        core.record(Refusal::Unauthenticated);
        core.record(Refusal::TooLarge);
        m.sync_refusals(Adapter::Coap, &core, &mut reported);
        m.sync_refusals(Adapter::Coap, &core, &mut reported);
        core.record(Refusal::Busy);
        m.sync_refusals(Adapter::Coap, &core, &mut reported);
        let snap = m.snapshot();
        let coap = &snap.adapters["coap"];
        assert_eq!(coap.refused["auth"], 1);
        assert_eq!(coap.refused["too_large"], 1);
        assert_eq!(coap.refused["busy"], 1);
        assert_eq!(coap.refused_total, 3);
        assert_eq!(coap.auth_failures, 1);
        assert_eq!(snap.adapters["coaps"].refused_total, 0);
    }
}
