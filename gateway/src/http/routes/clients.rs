//! `/clients…`: sensors (create, list, show, update, enable/disable, secret rotation,
//! their connections).

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
use crate::auth::store::Client;
use crate::http::AppState;

pub(super) fn client_json(c: &Client, with_secret: bool) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        let mut creds = json!({ "identity": c.identity });
        if with_secret {
            creds["secret"] = json!(c.secret);
        }
        obj.insert("credentials".into(), creds);
    }
    v
}

#[derive(Debug, Deserialize)]
pub(super) struct Credentials {
    identity: Option<String>,
    secret: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct CreateClient {
    name: Option<String>,
    credentials: Option<Credentials>,
    identity: Option<String>,
    metadata: Option<Value>,
    status: Option<String>,
}

pub(super) fn metadata_text(m: Option<Value>) -> Option<String> {
    m.map(|v| v.to_string())
}

/// `?psk_compatible=true` on client creation and secret rotation: a generated secret has 16
/// characters (a tinydtls DTLS-PSK key) instead of 43. Ignored when a secret is given.
#[derive(Debug, Deserialize, Default)]
pub(super) struct SecretQuery {
    #[serde(default)]
    psk_compatible: bool,
}

impl SecretQuery {
    fn secret_or_generated(&self, given: Option<String>) -> Result<Option<String>, ApiError> {
        match given {
            None if self.psk_compatible => Ok(Some(crate::auth::secret::generate_kind(
                crate::auth::secret::SecretKind::PskCompatible,
            )?)),
            given => Ok(given),
        }
    }
}

pub(super) async fn create_client(
    State(state): St,
    headers: HeaderMap,
    Query(query): Query<SecretQuery>,
    Json(req): Json<CreateClient>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?.require("clients", "create", None)?;
    let (identity, secret) = match req.credentials {
        Some(c) => (c.identity.or(req.identity), c.secret),
        None => (req.identity, None),
    };
    let secret = query.secret_or_generated(secret)?;
    // SuperMQ generates what is missing: without an identity the name serves when it is a
    // valid identity, otherwise one is generated (`client-<uuid>`, returned in the answer).
    let identity = match identity.or_else(|| {
        req.name
            .clone()
            .filter(|n| crate::auth::store::validate_identity(n).is_ok())
    }) {
        Some(i) => i,
        None if req.name.is_some() => format!("client-{}", crate::auth::secret::new_uuid()?),
        None => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "credentials.identity (or name) is required",
            ));
        }
    };
    let disabled = match req.status.as_deref() {
        None | Some("enabled") => false,
        Some("disabled") => true,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "status must be enabled or disabled",
            ));
        }
    };
    let name = req.name;
    let metadata = metadata_text(req.metadata);
    let client = with_db(&state, move |db| {
        let c = db.add_client(
            &identity,
            name.as_deref(),
            secret.as_deref(),
            metadata.as_deref(),
        )?;
        if disabled {
            let secret = c.secret.clone();
            let mut c = db.set_client_enabled(&c.id, false)?;
            c.secret = secret;
            return Ok(c);
        }
        Ok(c)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Extension(crate::http::audit::AuditEntity(client.id.clone())),
        Json(client_json(&client, true)),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct Page {
    offset: Option<usize>,
    limit: Option<usize>,
}

impl Page {
    pub(super) fn bounds(&self) -> (usize, usize) {
        (
            self.offset.unwrap_or(0),
            self.limit.unwrap_or(10).clamp(1, 100),
        )
    }

    /// `{total, offset, limit, <key>: [...]}`: this page of `all`, each item shown by `show`.
    pub(super) fn json<T>(&self, key: &str, all: &[T], show: impl Fn(&T) -> Value) -> Json<Value> {
        let (offset, limit) = self.bounds();
        let items: Vec<Value> = all.iter().skip(offset).take(limit).map(show).collect();
        Json(json!({ "total": all.len(), "offset": offset, "limit": limit, key: items }))
    }
}

pub(super) async fn list_clients(
    State(state): St,
    headers: HeaderMap,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.require("clients", "read", None)?;
    let all = with_db(&state, |db| db.list_clients()).await?;
    Ok(page.json("clients", &all, |c| client_json(c, false)))
}

pub(super) async fn get_client(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let p = authenticate(&state, &headers)?;
    let key = id.clone();
    let c = with_db(&state, move |db| db.client(&key))
        .await
        .map_err(|e| p.hide_missing("clients", "read", &id, e))?;
    p.require("clients", "read", Some(&c.id))?;
    Ok(Json(client_json(&c, false)))
}

#[derive(Debug, Deserialize)]
pub(super) struct UpdateClient {
    name: Option<String>,
    metadata: Option<Value>,
}

/// Resolves `key` (id or identity) to the client id, then checks the principal's scope on it.
pub(super) async fn authorized_client(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    key: String,
    op: &str,
) -> Result<String, ApiError> {
    let p = authenticate(state, headers)?;
    let k = key.clone();
    let c = with_db(state, move |db| db.client(&k))
        .await
        .map_err(|e| p.hide_missing("clients", op, &key, e))?;
    p.require("clients", op, Some(&c.id))?;
    Ok(c.id)
}

pub(super) async fn update_client(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<UpdateClient>,
) -> Result<Json<Value>, ApiError> {
    let id = authorized_client(&state, &headers, id, "update").await?;
    let metadata = metadata_text(req.metadata);
    let c = with_db(&state, move |db| {
        db.update_client(&id, req.name.as_deref(), metadata.as_deref())
    })
    .await?;
    Ok(Json(client_json(&c, false)))
}

pub(super) async fn set_enabled(
    state: Arc<AppState>,
    headers: HeaderMap,
    id: String,
    enabled: bool,
) -> Result<Json<Value>, ApiError> {
    let id = authorized_client(&state, &headers, id, "update").await?;
    let c = with_db(&state, move |db| db.set_client_enabled(&id, enabled)).await?;
    Ok(Json(client_json(&c, false)))
}

pub(super) async fn enable_client(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_enabled(state, headers, id, true).await
}

pub(super) async fn disable_client(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_enabled(state, headers, id, false).await
}

pub(super) async fn delete_client(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = authorized_client(&state, &headers, id, "delete").await?;
    with_db(&state, move |db| db.remove_client(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct RotateSecret {
    secret: Option<String>,
}

pub(super) async fn rotate_secret(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<SecretQuery>,
    body: Option<Json<RotateSecret>>,
) -> Result<Json<Value>, ApiError> {
    let secret = body.map(|Json(b)| b.secret).unwrap_or_default();
    // Only the administrator chooses a secret: a PAT may rotate to a generated one, so "another
    // client already uses this secret" cannot serve it as an oracle for other clients' secrets.
    if secret.is_some() && !authenticate(&state, &headers)?.is_admin() {
        return Err(ApiError::forbidden());
    }
    let secret = query.secret_or_generated(secret)?;
    let id = authorized_client(&state, &headers, id, "update").await?;
    let c = with_db(&state, move |db| db.rotate_secret(&id, secret.as_deref())).await?;
    Ok(Json(client_json(&c, true)))
}

pub(super) async fn client_connections(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = authorized_client(&state, &headers, id, "read").await?;
    let list = with_db(&state, move |db| db.connections_of(&id)).await?;
    let items: Vec<Value> = list
        .into_iter()
        .map(|(ch, g)| json!({ "channel": ch, "publish": g.publish, "subscribe": g.subscribe }))
        .collect();
    Ok(Json(json!({ "total": items.len(), "connections": items })))
}
