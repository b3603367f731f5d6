//! `/quarantine`: the messages the upstream refused `uplink.quarantine_after` times, kept in
//! the outbox database (`GET` lists them, `POST /quarantine/{id}/requeue` queues one again at
//! the end of the queue, `DELETE /quarantine/{id}` drops one, counted). The same operations as
//! `edgegw quarantine`; the outbox does the work. Scope entity type `quarantine` for PATs.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::St;
use super::caller::authenticate;
use super::error::ApiError;
use crate::http::AppState;
use crate::outbox::QuarantineError;
use crate::outbox::quarantine::LIST_MAX;

/// The quarantine's routes (merged into the API router).
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/quarantine", get(list))
        .route("/quarantine/{id}", delete(drop_one))
        .route("/quarantine/{id}/requeue", post(requeue))
}

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    /// Only ids above this one.
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

fn answer(e: QuarantineError) -> ApiError {
    let status = match e {
        QuarantineError::NotFound(_) => StatusCode::NOT_FOUND,
        QuarantineError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        QuarantineError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.to_string())
}

async fn list(
    State(state): St,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.require("quarantine", "view", None)?;
    let limit = q.limit.unwrap_or(100).clamp(1, LIST_MAX);
    let outbox = state.outbox.clone();
    let list = tokio::task::spawn_blocking(move || outbox.quarantined(q.after, limit))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "outbox task failed"))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(json!({
        "total": state.outbox.stats().quarantined,
        "after": q.after,
        "limit": limit,
        "quarantine": list,
    })))
}

async fn requeue(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.require("quarantine", "update", Some(&id.to_string()))?;
    let seq = state.outbox.requeue(id).await.map_err(answer)?;
    Ok(Json(json!({ "id": id, "requeued_as": seq })))
}

async fn drop_one(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Result<StatusCode, ApiError> {
    authenticate(&state, &headers)?.require("quarantine", "delete", Some(&id.to_string()))?;
    state.outbox.discard(id).await.map_err(answer)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt as _;

    use super::*;
    use crate::http::test_state;
    use crate::outbox::Message;

    const TOKEN: &str = "quarantine-admin-token-0123456789";

    async fn call(app: &Router, method: &str, path: &str, auth: bool) -> (StatusCode, Value) {
        let mut req = axum::http::Request::builder().method(method).uri(path);
        if auth {
            req = req.header("authorization", format!("Bearer {TOKEN}"));
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn list_requeue_and_drop_act_on_the_outbox_quarantine() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _worker) = test_state(dir.path());
        let mut state = Arc::try_unwrap(state).map_err(|_| "shared").unwrap();
        state.config = crate::config::load_from(
            &crate::config::Source::None,
            crate::config::Profile::Production,
            [
                ("EDGEGW_STANDALONE_EMAIL", "admin@example.com"),
                ("EDGEGW_STANDALONE_TOKEN", TOKEN),
            ]
            .map(|(k, v)| (std::ffi::OsString::from(k), std::ffi::OsString::from(v))),
        )
        .unwrap();
        let state = Arc::new(state);
        let outbox = state.outbox.clone();
        let mut seqs = Vec::new();
        for p in ["a", "b"] {
            let m = Message {
                client_id: "k".into(),
                channel_id: "refused".into(),
                domain_id: "d".into(),
                subtopic: String::new(),
                content_format: None,
                payload: bytes::Bytes::from(p),
                received_at: std::time::SystemTime::now(),
            };
            seqs.push(outbox.accept(m).unwrap().await.unwrap());
        }
        for s in &seqs {
            outbox.quarantine(*s, "closed".into(), 3);
        }
        // A barrier: a drop of an unknown id commits after the moves.
        assert!(outbox.discard(u64::MAX).await.is_err());
        let app = super::super::router(state);
        assert_eq!(
            call(&app, "GET", "/quarantine", false).await.0,
            StatusCode::UNAUTHORIZED
        );
        let (status, body) = call(&app, "GET", "/quarantine", true).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["total"], 2);
        assert_eq!(body["quarantine"][0]["id"], seqs[0]);
        assert_eq!(body["quarantine"][0]["payload"], "a");
        assert_eq!(body["quarantine"][0]["reason"], "closed");
        let (status, body) = call(
            &app,
            "POST",
            &format!("/quarantine/{}/requeue", seqs[0]),
            true,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["requeued_as"].as_u64().unwrap() > seqs[1]);
        let (status, _) = call(
            &app,
            "POST",
            &format!("/quarantine/{}/requeue", seqs[0]),
            true,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = call(&app, "DELETE", &format!("/quarantine/{}", seqs[1]), true).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (_, body) = call(&app, "GET", "/quarantine", true).await;
        assert_eq!(body["total"], 0, "{body}");
        let stats = outbox.stats();
        assert_eq!(
            (stats.requeued_total, stats.discarded_total, stats.queued),
            (1, 1, 1)
        );
    }
}
