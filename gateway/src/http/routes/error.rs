//! The API's error answer (`{"error": …}` + status) and the mapping of store, PAT and
//! timeout failures to it.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::{AuthError, Invalid, StoreError};
use crate::http::pats::PatError;

/// An error answer: status + `{"error": …}`.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) message: String,
    pub(super) retry_after: Option<u64>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
    pub(super) fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "missing or invalid credentials")
    }
    pub(super) fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, "not allowed")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({ "error": self.message }))).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = header::HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = match &e {
            AuthError::NotFound { .. } => StatusCode::NOT_FOUND,
            AuthError::Duplicate { .. } => StatusCode::CONFLICT,
            AuthError::Invalid(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::warn!("management API: {e}");
        }
        Self::new(status, e.to_string())
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        AuthError::from(e).into()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        AuthError::from(e).into()
    }
}

impl From<PatError> for ApiError {
    fn from(e: PatError) -> Self {
        let status = match &e {
            PatError::NotFound { .. } => StatusCode::NOT_FOUND,
            PatError::Invalid(_) => StatusCode::BAD_REQUEST,
            PatError::Unauthenticated => StatusCode::UNAUTHORIZED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

pub(crate) fn timeout_response() -> Response {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "request timed out").into_response()
}

/// 429 with `Retry-After` (whole seconds, rounded up) for an address the failed-authentication
/// throttle refuses.
pub(crate) fn throttled_response(retry_after: std::time::Duration) -> Response {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too many failed authentications from this address",
    );
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    e.retry_after = Some(secs.max(1));
    e.into_response()
}
