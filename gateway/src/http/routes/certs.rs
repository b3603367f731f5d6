//! `/certs…` (device certificates: issue, list, revoke) and `/audit`.

use std::sync::Arc;

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
use crate::http::AppState;

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
    revoke(&state, &headers, serial).await
}

/// SuperMQ's `PATCH /{domainID}/certs/{id}/revoke`: 204, no body (`certs/api/http/responses.go`,
/// `revokeCertRes`).
pub(super) async fn revoke_cert_patch(
    State(state): St,
    headers: HeaderMap,
    Path(serial): Path<String>,
) -> Result<StatusCode, ApiError> {
    let _revoked = revoke(&state, &headers, serial).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub(super) struct RevokeOf {
    client_id: String,
}

/// The walkthroughs' `DELETE /certs/revoke {"client_id"}`: every certificate of that client.
pub(super) async fn revoke_certs_of(
    State(state): St,
    headers: HeaderMap,
    Json(req): Json<RevokeOf>,
) -> Result<Json<Value>, ApiError> {
    revoke(&state, &headers, req.client_id).await
}

async fn revoke(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    serial: String,
) -> Result<Json<Value>, ApiError> {
    authenticate(state, headers)?.require("certs", "delete", Some(&serial))?;
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
    issue(state, headers, req).await
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct IssueFor {
    ttl: Option<String>,
    csr: Option<String>,
}

/// SuperMQ's `POST /{domainID}/certs/issue/{entityID}` with `{ttl}` (201:
/// `certs/api/http/responses.go`, `issueCertRes`).
pub(super) async fn issue_cert_for(
    State(state): St,
    headers: HeaderMap,
    Path(client_id): Path<String>,
    body: Option<Json<IssueFor>>,
) -> Result<Response, ApiError> {
    let b = body.map(|Json(b)| b).unwrap_or_default();
    let req = IssueCert {
        client_id,
        ttl: b.ttl,
        csr: b.csr,
    };
    issue(state, headers, req).await
}

async fn issue(
    state: Arc<AppState>,
    headers: HeaderMap,
    req: IssueCert,
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
            return ApiError::new(
                match a {
                    AuthError::NotFound { .. } => StatusCode::NOT_FOUND,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                },
                a.to_string(),
            );
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
    let events = with_db(&state, move |db| Ok(db.recent_audit(limit)?)).await?;
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
