//! `/users/tokens/*`: the standalone administrator's JWT access and refresh tokens and the
//! signing key rotation.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::St;
use super::caller::authenticate;
use super::error::ApiError;

use super::caller::{bearer, standalone_token_matches};
use crate::http::HttpMetrics;
use crate::http::tokens::TokenError;

#[derive(Debug, Deserialize)]
pub(super) struct IssueRequest {
    #[serde(alias = "email", alias = "identity")]
    username: Option<String>,
    #[serde(alias = "secret")]
    password: Option<String>,
}

pub(super) async fn issue_token(
    State(state): St,
    Json(req): Json<IssueRequest>,
) -> Result<Response, ApiError> {
    let admin = &state.config.standalone;
    let (Some(user), Some(password)) = (req.username, req.password) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "username (or email) and password are required",
        ));
    };
    // Both compared in constant time; an unconfigured admin never matches.
    let user_ok = crate::auth::secret::ct_eq(admin.email.as_bytes(), user.trim().as_bytes());
    let pass_ok = standalone_token_matches(&state, &password);
    if admin.email.is_empty() || !(user_ok & pass_ok) {
        HttpMetrics::inc(&state.metrics.auth_failures);
        return Err(ApiError::unauthorized());
    }
    let st = Arc::clone(&state);
    let pair = tokio::task::spawn_blocking(move || st.tokens.issue(&st.config.standalone.email))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "token task failed"))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((StatusCode::CREATED, Json(pair)).into_response())
}

pub(super) async fn refresh_token(
    State(state): St,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = bearer(&headers)
        .ok_or_else(ApiError::unauthorized)?
        .to_owned();
    // Single use: the refresh names its successor; a token presented twice ends its session.
    let st = Arc::clone(&state);
    let refreshed = tokio::task::spawn_blocking(move || st.tokens.refresh(&token))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "token task failed"))?;
    let (subject, pair) = match refreshed {
        Ok(x) => x,
        Err(TokenError::Sessions(e)) => {
            tracing::warn!("token refresh: {e}");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot record the session",
            ));
        }
        Err(e) => {
            if matches!(e, TokenError::Reused) {
                tracing::warn!("a refresh token was presented twice; its session is ended");
            }
            HttpMetrics::inc(&state.metrics.auth_failures);
            return Err(ApiError::unauthorized());
        }
    };
    if subject != state.config.standalone.email {
        return Err(ApiError::unauthorized());
    }
    Ok((StatusCode::CREATED, Json(pair)).into_response())
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct RotateKey {
    #[serde(default)]
    revoke_previous: bool,
}

/// Makes a new JWT signing key (administrator only: the standalone token or an access token).
/// Tokens signed by the old key stay valid until they expire, unless `revoke_previous`.
pub(super) async fn rotate_key(
    State(state): St,
    headers: HeaderMap,
    body: Option<Json<RotateKey>>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?.admin_only()?;
    let revoke_previous = body.is_some_and(|Json(b)| b.revoke_previous);
    let st = Arc::clone(&state);
    let ids = tokio::task::spawn_blocking(move || st.tokens.rotate(revoke_previous))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "key rotation task failed",
            )
        })?
        .map_err(|e| {
            tracing::warn!("JWT signing key rotation failed, the keys in use stay: {e}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "key rotation failed")
        })?;
    tracing::info!(
        kid = %ids.kid,
        previous_kid = ids.previous_kid.as_deref().unwrap_or("none"),
        revoke_previous,
        "JWT signing key rotated"
    );
    Ok((
        axum::Extension(crate::http::audit::AuditEntity(ids.kid.clone())),
        Json(json!({
            "kid": ids.kid,
            "previous_kid": ids.previous_kid,
            "revoked_previous": revoke_previous,
        })),
    )
        .into_response())
}
