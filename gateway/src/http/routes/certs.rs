//! `/certs…` (device certificates: issue, list, revoke) and `/audit`.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::caller::authenticate;
use super::error::ApiError;
use super::{St, with_db};

use crate::auth::AuthError;

pub(super) async fn list_certs(
    State(state): St,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.require("certs", "read", None)?;
    let all = state.auth.list_certificates()?;
    Ok(Json(json!({ "total": all.len(), "certs": all })))
}

pub(super) async fn revoke_cert(
    State(state): St,
    headers: HeaderMap,
    Path(serial): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.require("certs", "delete", Some(&serial))?;
    let auth = state.auth.clone();
    let revoked = tokio::task::spawn_blocking(move || auth.revoke_certificate(&serial))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store task failed"))??;
    if revoked.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no unrevoked certificate matches",
        ));
    }
    Ok(Json(json!({ "revoked": revoked })))
}

#[derive(Debug, Deserialize)]
pub(super) struct IssueCert {
    client_id: String,
    /// e.g. `"8760h"`; default one year.
    ttl: Option<String>,
    /// PEM CSR: sign it instead of generating a key (the key stays on the device).
    csr: Option<String>,
}

pub(super) async fn issue_cert(
    State(state): St,
    headers: HeaderMap,
    Json(req): Json<IssueCert>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?.require("certs", "create", None)?;
    if req.csr.as_ref().is_some_and(|c| c.len() > 16 * 1024) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "csr is too large"));
    }
    let config = state.config.clone();
    let auth = state.auth.clone();
    let result = tokio::task::spawn_blocking(move || {
        let out = crate::pki::issue_in_memory(
            &config,
            &req.client_id,
            req.ttl.as_deref().unwrap_or("8760h"),
            req.csr.as_deref(),
        )?;
        auth.reload_now()?;
        anyhow::Ok(out)
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "certificate task failed"))?;
    let (record, issued) = result.map_err(|e| {
        let status = if let Some(a) = e.downcast_ref::<AuthError>() {
            return ApiError::from(AuthError::Invalid(a.to_string())).with_status(match a {
                AuthError::NotFound { .. } => StatusCode::NOT_FOUND,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            });
        } else if let Some(p) = e.downcast_ref::<crate::pki::PkiCommandError>() {
            match p {
                crate::pki::PkiCommandError::BadTtl { .. } => StatusCode::BAD_REQUEST,
                crate::pki::PkiCommandError::NoDeviceCa => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            }
        } else if e.downcast_ref::<certs::PkiError>().is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError::new(status, e.to_string())
    })?;
    Ok((
        StatusCode::CREATED,
        axum::Extension(crate::http::audit::AuditEntity(record.serial_hex.clone())),
        Json(json!({
            "serial": record.serial_hex,
            "client_id": record.client_id,
            "fingerprint_sha256": record.fingerprint_sha256_hex,
            "not_before": record.not_before,
            "not_after": record.not_after,
            "certificate": issued.cert_pem,
            "key": issued.key_pem,
        })),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct AuditQuery {
    limit: Option<u32>,
}

pub(super) async fn audit(
    State(state): St,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.require("audit", "read", None)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let events = with_db(&state, move |db| db.recent_audit(limit)).await?;
    let items: Vec<Value> = events
        .into_iter()
        .map(|e| {
            json!({
                "at_ms": e.at_ms, "method": e.method, "identity": e.identity,
                "client_id": e.client_id, "remote": e.remote, "outcome": e.outcome,
                "actor": e.actor, "action": e.action, "entity_type": e.entity_type,
                "entity_id": e.entity_id, "reason": e.reason,
            })
        })
        .collect();
    Ok(Json(json!({ "total": items.len(), "events": items })))
}
