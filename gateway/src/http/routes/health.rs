//! `GET /health` and the Prometheus text of `GET /metrics`.

use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::St;

pub(super) async fn health() -> Json<Value> {
    Json(json!({ "status": "pass", "version": env!("CARGO_PKG_VERSION"), "service": "edgegw" }))
}

pub(super) async fn metrics(State(state): St) -> Response {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    let adapters = state.adapters.snapshot();
    let s = state.outbox.stats();
    let m = &state.metrics;
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let oldest_age = if s.oldest_received_ms == 0 {
        0.0
    } else {
        now_ms.saturating_sub(s.oldest_received_ms) as f64 / 1000.0
    };
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    };
    metric(
        "edgegw_http_messages_in_total",
        "counter",
        "Messages accepted by the HTTP adapter.",
        adapters
            .adapters
            .get(crate::metrics::Adapter::Http.label())
            .map_or(0, |a| a.messages_in)
            .to_string(),
    );
    metric(
        "edgegw_http_auth_failures_total",
        "counter",
        "Refused authentications on the HTTP server.",
        m.auth_failures.load(Relaxed).to_string(),
    );
    metric(
        "edgegw_outbox_accepted_total",
        "counter",
        "Messages accepted into the outbox (all adapters).",
        s.accepted_total.to_string(),
    );
    metric(
        "edgegw_outbox_acked_total",
        "counter",
        "Messages acknowledged by the broker (out).",
        s.acked_total.to_string(),
    );
    metric(
        "edgegw_outbox_queued",
        "gauge",
        "Messages waiting in the outbox.",
        s.queued.to_string(),
    );
    metric(
        "edgegw_outbox_queued_bytes",
        "gauge",
        "Bytes waiting in the outbox.",
        s.queued_bytes.to_string(),
    );
    metric(
        "edgegw_outbox_oldest_age_seconds",
        "gauge",
        "Age of the oldest queued message.",
        format!("{oldest_age:.3}"),
    );
    metric(
        "edgegw_auth_audit_dropped_total",
        "counter",
        "Audit events dropped (queue full).",
        state.auth.audit_dropped().to_string(),
    );
    if let Some(status) = &state.status {
        let report = status.report();
        let up = &report.uplink;
        let current = serde_json::to_value(up.state).unwrap_or_default();
        let current = current.as_str().unwrap_or("unknown");
        let _ = write!(
            out,
            "# HELP edgegw_uplink_state Uplink state (1 for the current one).\n# TYPE edgegw_uplink_state gauge\n"
        );
        for name in ["disabled", "connecting", "connected", "backoff", "stopped"] {
            let _ = writeln!(
                out,
                "edgegw_uplink_state{{state=\"{name}\"}} {}",
                u8::from(name == current)
            );
        }
        let _ = write!(
            out,
            "# HELP edgegw_uplink_published_total Messages published upstream.\n# TYPE edgegw_uplink_published_total counter\nedgegw_uplink_published_total {}\n\
             # HELP edgegw_uplink_delivered_total Messages acknowledged by the broker.\n# TYPE edgegw_uplink_delivered_total counter\nedgegw_uplink_delivered_total {}\n\
             # HELP edgegw_uplink_refused_total Messages the broker refused (MQTT 5 PUBACK error); kept and resent.\n# TYPE edgegw_uplink_refused_total counter\nedgegw_uplink_refused_total {}\n\
             # HELP edgegw_uplink_connects_total Uplink connections made.\n# TYPE edgegw_uplink_connects_total counter\nedgegw_uplink_connects_total {}\n",
            up.published_total, up.delivered_total, up.refused_total, up.connects_total
        );
    }
    // Per-adapter counts, DTLS session table, messages out (crate::metrics).
    adapters.render_prometheus(s.acked_total, &mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
