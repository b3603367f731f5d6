//! `/channels…` and the connections between clients and channels (`/connect`,
//! `/disconnect`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::caller::authenticate;
use super::clients::{Page, metadata_text};
use super::error::ApiError;
use super::{St, with_db};
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
}

pub(super) async fn create_channel(
    State(state): St,
    headers: HeaderMap,
    Json(req): Json<CreateChannel>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?.require("channels", "create", None)?;
    let domain = req
        .domain_id
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
) -> Result<Json<Value>, ApiError> {
    let p = authenticate(&state, &headers)?;
    let ch = with_db(&state, move |db| db.channel(&id)).await?;
    p.require("channels", "read", Some(&ch.id))?;
    Ok(Json(serde_json::to_value(ch).unwrap_or_default()))
}

pub(super) async fn delete_channel(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let p = authenticate(&state, &headers)?;
    let ch = with_db(&state, move |db| db.channel(&id)).await?;
    p.require("channels", "delete", Some(&ch.id))?;
    with_db(&state, move |db| db.remove_channel(&ch.id)).await?;
    Ok(StatusCode::NO_CONTENT)
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
    if req.client_ids.is_empty()
        || req.channel_ids.is_empty()
        || req.client_ids.len() * req.channel_ids.len() > 1024
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "client_ids and channel_ids: 1 to 1024 pairs",
        ));
    }
    for ch in &req.channel_ids {
        p.require("connections", op, Some(ch))?;
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
