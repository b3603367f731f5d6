//! Who calls the management API: the standalone administrator (its token or a JWT access
//! token) or a PAT; failures are counted once, here.

use axum::http::{HeaderMap, header};

use super::error::ApiError;
use crate::http::tokens::Kind;
use crate::http::{AppState, HttpMetrics};

/// Who calls the API.
#[derive(Debug)]
pub(super) enum Principal {
    Admin,
    Pat(crate::http::pats::Pat),
}

impl Principal {
    pub(super) fn require(
        &self,
        entity_type: &str,
        operation: &str,
        id: Option<&str>,
    ) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Pat(p) if p.allows(entity_type, operation, id) => Ok(()),
            Principal::Pat(_) => Err(ApiError::forbidden()),
        }
    }
    /// For a PAT, a lookup failure of `key` is answered like a missing scope (403) unless
    /// the PAT may `operation` on `entity_type` `key` (or any): otherwise 404 vs 403 would tell
    /// a PAT whether an entity it has no rights on exists.
    pub(super) fn hide_missing(
        &self,
        entity_type: &str,
        operation: &str,
        key: &str,
        e: ApiError,
    ) -> ApiError {
        match self {
            Principal::Pat(p)
                if e.status == axum::http::StatusCode::NOT_FOUND
                    && !p.allows(entity_type, operation, Some(key)) =>
            {
                ApiError::forbidden()
            }
            _ => e,
        }
    }

    pub(super) fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin)
    }

    pub(super) fn admin_only(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Pat(_) => Err(ApiError::forbidden()),
        }
    }
}

pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub(super) fn standalone_token_matches(state: &AppState, presented: &str) -> bool {
    let admin = &state.config.standalone.token;
    !admin.is_empty() && crate::auth::secret::ct_eq(admin.expose().as_bytes(), presented.as_bytes())
}

/// Who the bearer credentials name, without counting failures.
pub(super) fn identify(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let token = bearer(headers).ok_or_else(ApiError::unauthorized)?;
    if token.starts_with(crate::http::pats::PREFIX) {
        return state
            .pats
            .authenticate(token, crate::auth::store::now_unix())
            .map(Principal::Pat)
            .map_err(|_| ApiError::unauthorized());
    }
    if state.config.standalone.email.is_empty() {
        return Err(ApiError::unauthorized());
    }
    if standalone_token_matches(state, token) {
        return Ok(Principal::Admin);
    }
    state
        .tokens
        .verify(token, Kind::Access)
        .map(|_| Principal::Admin)
        .map_err(|_| ApiError::unauthorized())
}

/// The audit table's actor for these credentials: `admin`, `pat:<id>` or `anonymous`.
pub(crate) fn actor(state: &AppState, headers: &HeaderMap) -> String {
    match identify(state, headers) {
        Ok(Principal::Admin) => "admin".to_owned(),
        Ok(Principal::Pat(p)) => format!("pat:{}", p.id),
        Err(_) => "anonymous".to_owned(),
    }
}

pub(super) fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let result = identify(state, headers);
    if result.is_err() {
        HttpMetrics::inc(&state.metrics.auth_failures);
    }
    result
}
