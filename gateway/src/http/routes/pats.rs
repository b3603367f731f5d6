//! `/pats…`: personal access tokens (administrator only).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::St;
use super::caller::authenticate;
use super::clients::Page;
use super::error::ApiError;
use crate::auth::store::rfc3339;
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

/// A PAT as the API shows it: `issued_at` / `expires_at` as RFC 3339 strings, as SuperMQ's
/// (`auth/pat.go`, `PAT`: `time.Time`). The PAT file keeps unix seconds.
pub(super) fn pat_json(pat: &crate::http::pats::Pat) -> Value {
    let mut v = serde_json::to_value(pat).unwrap_or_default();
    v["issued_at"] = json!(rfc3339(pat.issued_at));
    v["expires_at"] = json!(rfc3339(pat.expires_at));
    v
}

pub(super) fn pat_with_secret(pat: &crate::http::pats::Pat, secret: &str) -> Value {
    let mut v = pat_json(pat);
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
    let pats: Vec<Value> = state.pats.list().iter().map(pat_json).collect();
    Ok(Json(json!({ "total": pats.len(), "pats": pats })))
}

pub(super) async fn get_pat(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.admin_only()?;
    Ok(Json(pat_json(&state.pats.get(&id)?)))
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

/// 204 and no body, as SuperMQ (`auth/api/http/pats/responses.go`, `revokePatSecretRes`).
pub(super) async fn revoke_pat(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authenticate(&state, &headers)?.admin_only()?;
    pat_blocking(&state, move |s| s.revoke(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /pats`: removes every PAT (SuperMQ `RemoveAllPAT`, 200 and no body:
/// `auth/api/http/pats/responses.go`, `clearAllRes`).
pub(super) async fn delete_all_pats(
    State(state): St,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    authenticate(&state, &headers)?.admin_only()?;
    pat_blocking(&state, |s| s.delete_all()).await?;
    Ok(StatusCode::OK)
}

#[derive(Debug, Deserialize)]
pub(super) struct PatName {
    name: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct PatDescription {
    description: String,
}

/// 202 and the PAT, as SuperMQ (`updatePatNameRes`).
pub(super) async fn rename_pat(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<PatName>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?.admin_only()?;
    let pat = pat_blocking(&state, move |s| s.rename(&id, &req.name)).await?;
    Ok((StatusCode::ACCEPTED, Json(pat_json(&pat))).into_response())
}

/// 202 and the PAT, as SuperMQ (`updatePatDescriptionRes`).
pub(super) async fn describe_pat(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<PatDescription>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?.admin_only()?;
    let pat = pat_blocking(&state, move |s| s.describe(&id, &req.description)).await?;
    Ok((StatusCode::ACCEPTED, Json(pat_json(&pat))).into_response())
}

fn scope_json(s: &Scope, pat_id: &str) -> Value {
    json!({
        "id": s.id(), "pat_id": pat_id, "entity_type": s.entity_type,
        "operation": s.operation, "entity_id": s.entity_id,
    })
}

/// `GET /pats/{id}/scope`: SuperMQ's scopes page (`listScopeRes`).
pub(super) async fn list_scopes(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.admin_only()?;
    let pat = state.pats.get(&id)?;
    Ok(page.json("scopes", &pat.scopes, |s| scope_json(s, &pat.id)))
}

/// `DELETE /pats/{id}/scope`: removes every scope (200, no body: `clearAllRes`).
pub(super) async fn clear_scopes(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authenticate(&state, &headers)?.admin_only()?;
    pat_blocking(&state, move |s| s.clear_scopes(&id)).await?;
    Ok(StatusCode::OK)
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

/// A scope as edgegw or either SuperMQ shape spells it: v0.19.1 carries `domain_id`
/// (`auth/pat.go`, `Scope`), ≤ 0.18 `optional_domain_id`; `id` / `pat_id` (which SuperMQ
/// returns and scripts echo back) are ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScopeIn {
    #[serde(default, rename = "id")]
    _id: Option<String>,
    #[serde(default, rename = "pat_id")]
    _pat_id: Option<String>,
    #[serde(default, alias = "optional_domain_id")]
    domain_id: Option<String>,
    entity_type: String,
    operation: String,
    entity_id: String,
}

/// SuperMQ's operation names (v0.19.1 `auth/pat.go` maps `create`/`list` to
/// `create_clients`/`list_clients`…; ≤ 0.18 has `read`/`list`; the roles use `view`,
/// `connect_to_channel`, `disconnect_from_channel`…) to edgegw's (entity type, operation).
/// `None`: an operation edgegw has no counterpart for.
fn map_operation(entity_type: &str, operation: &str) -> Option<(String, &'static str)> {
    let own = |op| Some((entity_type.to_owned(), op));
    match operation {
        "*" => own("*"),
        "create" | "create_clients" | "create_channels" => own("create"),
        "read" | "view" | "list" | "list_clients" | "list_channels" => own("read"),
        "update" => own("update"),
        "delete" => own("delete"),
        op if op.starts_with("connect") => Some(("connections".to_owned(), "create")),
        op if op.starts_with("disconnect") => Some(("connections".to_owned(), "delete")),
        _ => None,
    }
}

impl ScopeIn {
    /// Checks the domain (empty, or the gateway's when it has one) and maps the operation.
    fn into_scope(self, gateway_domain: &str) -> Result<Scope, ApiError> {
        if let Some(d) = self.domain_id.as_deref().filter(|d| !d.is_empty())
            && !gateway_domain.is_empty()
            && d != gateway_domain
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("scope domain_id `{d}` is not this gateway's domain"),
            ));
        }
        let (entity_type, operation) = map_operation(&self.entity_type, &self.operation)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "operation `{}` has no counterpart here (create, read/view/list, update, \
                         delete, connect*, disconnect*, *)",
                        self.operation
                    ),
                )
            })?;
        let scope = Scope {
            entity_type,
            operation: operation.to_owned(),
            entity_id: self.entity_id,
        };
        scope.validate()?;
        Ok(scope)
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct Scopes {
    #[serde(default)]
    scopes: Vec<ScopeIn>,
    /// SuperMQ v0.19.1's `scope/remove` names the scopes by id (`requests.go`, `scopes_id`).
    #[serde(default)]
    scopes_id: Vec<String>,
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
    let domain = &state.config.gateway.domain_id;
    let scopes = req
        .scopes
        .into_iter()
        .map(|s| s.into_scope(domain))
        .collect::<Result<Vec<_>, _>>()?;
    let ids = req.scopes_id;
    let pat = pat_blocking(state, move |s| {
        if add {
            s.add_scopes(&id, &scopes)
        } else {
            s.remove_scopes(&id, &scopes)?;
            s.remove_scope_ids(&id, &ids)
        }
    })
    .await?;
    Ok(Json(pat_json(&pat)))
}
