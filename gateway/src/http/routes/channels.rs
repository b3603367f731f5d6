//! `/channels…` and the connections between clients and channels (`/connect`,
//! `/disconnect`).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::Value;

use super::caller::authenticate;
use super::clients::{Page, Tags, metadata_text};
use super::error::ApiError;
use super::{PathDomain, St, with_db};
use crate::http::AppState;

#[derive(Debug, Deserialize)]
pub(super) struct CreateChannel {
    name: String,
    domain_id: Option<String>,
    metadata: Option<Value>,
    /// Caller-chosen local id (e.g. the SuperMQ channel id it mirrors).
    id: Option<String>,
    /// The channel's id upstream [default: the local id].
    upstream_id: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

/// Under `/{domainID}/channels` the channel's domain defaults to the path's, and a body
/// `domain_id` naming another one is refused (403, as SuperMQ's domain authorization:
/// `api/http/common.go`, `EncodeError`).
pub(super) async fn create_channel(
    State(state): St,
    headers: HeaderMap,
    path_domain: Option<Extension<PathDomain>>,
    Json(req): Json<CreateChannel>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?.require("channels", "create", None)?;
    let path_domain = path_domain.map(|Extension(PathDomain(d))| d);
    if let (Some(p), Some(b)) = (&path_domain, &req.domain_id)
        && p != b
    {
        return Err(ApiError::forbidden());
    }
    let domain = req
        .domain_id
        .or(path_domain)
        .unwrap_or_else(|| state.config.gateway.domain_id.clone());
    crate::auth::check_upstream_domain(&state.config, &domain)?;
    let metadata = metadata_text(req.metadata);
    let ch = with_db(&state, move |db| {
        db.add_channel_as(&crate::auth::store::NewChannel {
            name: &req.name,
            domain_id: &domain,
            metadata: metadata.as_deref(),
            id: req.id.as_deref(),
            upstream_id: req.upstream_id.as_deref(),
            tags: &req.tags,
        })
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Extension(crate::http::audit::AuditEntity(ch.id.clone())),
        Json(ch),
    )
        .into_response())
}

pub(super) async fn list_channels(
    State(state): St,
    headers: HeaderMap,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.require("channels", "read", None)?;
    let all = with_db(&state, |db| db.list_channels()).await?;
    Ok(page.json("channels", &all, |ch| {
        serde_json::to_value(ch).unwrap_or_default()
    }))
}

pub(super) async fn get_channel(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    path_domain: Option<Extension<PathDomain>>,
) -> Result<Json<Value>, ApiError> {
    let p = authenticate(&state, &headers)?;
    let key = id.clone();
    let ch = with_db(&state, move |db| db.channel(&key))
        .await
        .map_err(|e| p.hide_missing("channels", "read", &id, e))?;
    p.require("channels", "read", Some(&ch.id))?;
    same_domain(path_domain, &ch.domain_id)?;
    Ok(Json(serde_json::to_value(ch).unwrap_or_default()))
}

#[derive(Debug, Deserialize)]
pub(super) struct UpdateChannel {
    name: Option<String>,
    metadata: Option<Value>,
    tags: Option<Vec<String>>,
}

/// Resolves `key` (id or name) under the principal's `op` scope and the path's domain.
async fn authorized_channel(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    key: String,
    op: &str,
    path_domain: Option<Extension<PathDomain>>,
) -> Result<String, ApiError> {
    let p = authenticate(state, headers)?;
    let k = key.clone();
    let ch = with_db(state, move |db| db.channel(&k))
        .await
        .map_err(|e| p.hide_missing("channels", op, &key, e))?;
    p.require("channels", op, Some(&ch.id))?;
    same_domain(path_domain, &ch.domain_id)?;
    Ok(ch.id)
}

/// SuperMQ's `PATCH /{domainID}/channels/{chanID}` (name, metadata, tags; 200 and the channel:
/// `channels/api/http/requests.go`, `updateChannelReq`; `responses.go`, `updateChannelRes`).
pub(super) async fn update_channel(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    path_domain: Option<Extension<PathDomain>>,
    Json(req): Json<UpdateChannel>,
) -> Result<Json<Value>, ApiError> {
    let id = authorized_channel(&state, &headers, id, "update", path_domain).await?;
    let metadata = metadata_text(req.metadata);
    let ch = with_db(&state, move |db| {
        db.update_channel(
            &id,
            req.name.as_deref(),
            metadata.as_deref(),
            req.tags.as_deref(),
        )
    })
    .await?;
    Ok(Json(serde_json::to_value(ch).unwrap_or_default()))
}

/// SuperMQ's `PATCH /{domainID}/channels/{chanID}/tags` (`updateChannelTagsReq`).
pub(super) async fn update_channel_tags(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    path_domain: Option<Extension<PathDomain>>,
    Json(req): Json<Tags>,
) -> Result<Json<Value>, ApiError> {
    let id = authorized_channel(&state, &headers, id, "update", path_domain).await?;
    let ch = with_db(&state, move |db| db.set_channel_tags(&id, &req.tags)).await?;
    Ok(Json(serde_json::to_value(ch).unwrap_or_default()))
}

pub(super) async fn delete_channel(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    path_domain: Option<Extension<PathDomain>>,
) -> Result<StatusCode, ApiError> {
    let id = authorized_channel(&state, &headers, id, "delete", path_domain).await?;
    with_db(&state, move |db| db.remove_channel(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A channel that has a domain is reachable under `/{domainID}/…` of that domain only (403
/// otherwise, SuperMQ's authorization answer: `api/http/common.go`, `EncodeError`).
fn same_domain(path: Option<Extension<PathDomain>>, entity: &str) -> Result<(), ApiError> {
    match path {
        Some(Extension(PathDomain(d))) if !entity.is_empty() && d != entity => {
            Err(ApiError::forbidden())
        }
        _ => Ok(()),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ConnectRequest {
    client_ids: Vec<String>,
    channel_ids: Vec<String>,
    /// `publish` and/or `subscribe`; default both.
    types: Option<Vec<String>>,
}

pub(super) async fn connect_or_not(
    state: Arc<AppState>,
    headers: HeaderMap,
    req: ConnectRequest,
    grant: bool,
) -> Result<Response, ApiError> {
    let p = authenticate(&state, &headers)?;
    let op = if grant { "create" } else { "delete" };
    // Checked: on a 32-bit target the product of two large lists could wrap.
    let pairs = req.client_ids.len().checked_mul(req.channel_ids.len());
    if req.client_ids.is_empty() || req.channel_ids.is_empty() || pairs.is_none_or(|n| n > 1024) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "client_ids and channel_ids: 1 to 1024 pairs",
        ));
    }
    // Both ends: a PAT scoped to one channel must not attach any client to it.
    for id in req.channel_ids.iter().chain(&req.client_ids) {
        p.require("connections", op, Some(id))?;
    }
    let types = req
        .types
        .unwrap_or_else(|| vec!["publish".into(), "subscribe".into()]);
    let mut publish = false;
    let mut subscribe = false;
    for t in &types {
        match t.as_str() {
            "publish" => publish = true,
            "subscribe" => subscribe = true,
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "types: publish and/or subscribe",
                ));
            }
        }
    }
    let entity = format!("{}>{}", req.client_ids.join(","), req.channel_ids.join(","));
    with_db(&state, move |db| {
        for client in &req.client_ids {
            for channel in &req.channel_ids {
                if grant {
                    db.connect(client, channel, publish, subscribe)?;
                } else {
                    db.disconnect(client, channel, publish, subscribe)?;
                }
            }
        }
        Ok(())
    })
    .await?;
    let status = if grant {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    };
    Ok((
        status,
        axum::Extension(crate::http::audit::AuditEntity(entity)),
    )
        .into_response())
}

pub(super) async fn connect(
    State(state): St,
    headers: HeaderMap,
    Json(req): Json<ConnectRequest>,
) -> Result<Response, ApiError> {
    connect_or_not(state, headers, req, true).await
}

pub(super) async fn disconnect(
    State(state): St,
    headers: HeaderMap,
    Json(req): Json<ConnectRequest>,
) -> Result<Response, ApiError> {
    connect_or_not(state, headers, req, false).await
}

#[derive(Debug, Deserialize)]
pub(super) struct ChannelConnect {
    client_ids: Vec<String>,
    types: Option<Vec<String>>,
}

impl ChannelConnect {
    /// The pairs of the one channel in the path.
    fn on(self, channel_id: String) -> ConnectRequest {
        ConnectRequest {
            client_ids: self.client_ids,
            channel_ids: vec![channel_id],
            types: self.types,
        }
    }
}

/// SuperMQ's `POST /{domainID}/channels/{channelID}/connect` (`channels/api/http/transport.go`).
pub(super) async fn connect_channel(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<ChannelConnect>,
) -> Result<Response, ApiError> {
    connect_or_not(state, headers, req.on(id), true).await
}

/// SuperMQ's `POST /{domainID}/channels/{channelID}/disconnect`.
pub(super) async fn disconnect_channel(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<ChannelConnect>,
) -> Result<Response, ApiError> {
    connect_or_not(state, headers, req.on(id), false).await
}
