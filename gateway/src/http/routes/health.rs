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
    use std::sync::atomic::Ordering::Relaxed;
    let adapters = state.adapters.snapshot();
    let outbox = state.outbox.stats();
    let report = state
        .status
        .as_ref()
        .map(crate::runtime::status::StatusHandle::report);
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    // The one Prometheus renderer; this handler only gathers what it shows.
    let out =
        crate::runtime::status::prometheus::render(&crate::runtime::status::prometheus::Inputs {
            adapters: &adapters,
            outbox: &outbox,
            now_ms,
            http_auth_failures: state.metrics.auth_failures.load(Relaxed),
            audit_dropped: state.auth.audit_dropped(),
            uplink: report.as_ref().map(|r| &r.uplink),
        });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
