//! `/pats…`: personal access tokens (administrator only).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::St;
use super::caller::authenticate;
use super::error::ApiError;
use crate::http::AppState;
use crate::http::pats::{PatError, Scope};

#[derive(Debug, Deserialize)]
pub(super) struct CreatePat {
    name: String,
    #[serde(default)]
    description: String,
    /// e.g. `"720h"`; default 30 days.
    duration: Option<String>,
}

pub(super) fn parse_duration(text: Option<&str>) -> Result<std::time::Duration, ApiError> {
    match text {
        None => Ok(std::time::Duration::from_secs(30 * 86_400)),
        Some(t) => t
            .parse::<crate::config::value::Duration>()
            .map(crate::config::value::Duration::get)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("duration: {e}"))),
    }
}

pub(super) async fn pat_blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(&crate::http::pats::PatStore) -> Result<T, PatError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || f(&state.pats))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "PAT task failed"))?
        .map_err(ApiError::from)
}

pub(super) fn pat_with_secret(pat: &crate::http::pats::Pat, secret: &str) -> Value {
    let mut v = serde_json::to_value(pat).unwrap_or_default();
    v["secret"] = json!(secret);
    v
}

pub(super) async fn create_pat(
    State(state): St,
    headers: HeaderMap,
    Json(req): Json<CreatePat>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?.admin_only()?;
    let duration = parse_duration(req.duration.as_deref())?;
    let now = crate::auth::store::now_unix();
    let (pat, secret) = pat_blocking(&state, move |s| {
        s.create(&req.name, &req.description, duration, now)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Extension(crate::http::audit::AuditEntity(pat.id.clone())),
        Json(pat_with_secret(&pat, &secret)),
    )
        .into_response())
}

pub(super) async fn list_pats(
    State(state): St,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.admin_only()?;
    let pats = state.pats.list();
    Ok(Json(json!({ "total": pats.len(), "pats": pats })))
}

pub(super) async fn get_pat(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.admin_only()?;
    Ok(Json(
        serde_json::to_value(state.pats.get(&id)?).unwrap_or_default(),
    ))
}

pub(super) async fn delete_pat(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authenticate(&state, &headers)?.admin_only()?;
    pat_blocking(&state, move |s| s.delete(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn revoke_pat(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.admin_only()?;
    let pat = pat_blocking(&state, move |s| s.revoke(&id)).await?;
    Ok(Json(serde_json::to_value(pat).unwrap_or_default()))
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct ResetPat {
    duration: Option<String>,
}

pub(super) async fn reset_pat(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<ResetPat>>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.admin_only()?;
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let duration = parse_duration(body.duration.as_deref())?;
    let now = crate::auth::store::now_unix();
    let (pat, secret) = pat_blocking(&state, move |s| s.reset(&id, duration, now)).await?;
    Ok(Json(pat_with_secret(&pat, &secret)))
}

#[derive(Debug, Deserialize)]
pub(super) struct Scopes {
    scopes: Vec<Scope>,
}

pub(super) async fn add_scope(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<Scopes>,
) -> Result<Json<Value>, ApiError> {
    change_scopes(&state, &headers, id, req, true).await
}

pub(super) async fn remove_scope(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<Scopes>,
) -> Result<Json<Value>, ApiError> {
    change_scopes(&state, &headers, id, req, false).await
}

/// Adds (`add`) or removes the scopes of PAT `id`; the standalone admin only.
pub(super) async fn change_scopes(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    id: String,
    req: Scopes,
    add: bool,
) -> Result<Json<Value>, ApiError> {
    authenticate(state, headers)?.admin_only()?;
    let pat = pat_blocking(state, move |s| {
        if add {
            s.add_scopes(&id, &req.scopes)
        } else {
            s.remove_scopes(&id, &req.scopes)
        }
    })
    .await?;
    Ok(Json(serde_json::to_value(pat).unwrap_or_default()))
}
