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
use crate::auth::store::{rfc3339, rfc3339_ms};
use crate::http::AppState;
use crate::pki::issue::{CertError, DEFAULT_TTL, IssueRequest, Ttl};
use crate::pki::registry::Registry;

/// A certificate record as the API shows it: times as RFC 3339 strings, as SuperMQ's
/// (`certs/certs.go`, `Cert.ExpiryTime time.Time`).
fn cert_json(r: &crate::auth::CertificateRecord) -> Value {
    json!({
        "serial_hex": r.serial_hex,
        "client_id": r.client_id,
        "fingerprint_sha256_hex": r.fingerprint_sha256_hex,
        "not_before": rfc3339(r.not_before),
        "not_after": rfc3339(r.not_after),
        "revoked_at": r.revoked_at.map(rfc3339),
    })
}

fn certs_json(all: &[crate::auth::CertificateRecord]) -> Vec<Value> {
    all.iter().map(cert_json).collect()
}

pub(super) async fn list_certs(
    State(state): St,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.require("certs", "read", None)?;
    let all = state.auth.list_certificates()?;
    Ok(Json(
        json!({ "total": all.len(), "certs": certs_json(&all) }),
    ))
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
    target: String,
) -> Result<Json<Value>, ApiError> {
    authenticate(state, headers)?.require("certs", "delete", Some(&target))?;
    let config = state.config.clone();
    let auth = state.auth.clone();
    let revoked = tokio::task::spawn_blocking(move || {
        let mut registry = Registry::open(&config)?;
        let revoked = crate::pki::issue::revoke(&mut registry, &target)?;
        // Live CoAPS sessions of a revoked certificate close now, not at the next poll.
        auth.reload_now()?;
        Ok::<_, CertError>(revoked)
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store task failed"))??;
    Ok(Json(json!({ "revoked": certs_json(&revoked) })))
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
    let request = IssueRequest {
        client: req.client_id,
        ttl: Ttl::parse(req.ttl.as_deref().unwrap_or(DEFAULT_TTL))?,
        csr_pem: req.csr,
    };
    let config = state.config.clone();
    let auth = state.auth.clone();
    let out = tokio::task::spawn_blocking(move || {
        let out = crate::pki::issue::issue(&config, &request)?;
        auth.reload_now()?;
        Ok::<_, CertError>(out)
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "certificate task failed"))??;
    let (record, issued) = (out.record, out.issued);
    Ok((
        StatusCode::CREATED,
        axum::Extension(crate::http::audit::AuditEntity(record.serial_hex.clone())),
        Json(json!({
            "serial": record.serial_hex,
            "client_id": record.client_id,
            "fingerprint_sha256": record.fingerprint_sha256_hex,
            "not_before": rfc3339(record.not_before),
            "not_after": rfc3339(record.not_after),
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
                "at": rfc3339_ms(e.at_ms), "method": e.method, "identity": e.identity,
                "client_id": e.client_id, "remote": e.remote, "outcome": e.outcome,
                "actor": e.actor, "action": e.action, "entity_type": e.entity_type,
                "entity_id": e.entity_id, "reason": e.reason,
            })
        })
        .collect();
    Ok(Json(json!({ "total": items.len(), "events": items })))
}

/// The one mapping of the PKI API's errors to HTTP, for `POST /certs`, `DELETE /certs…` and
/// their SuperMQ forms. The caller's mistakes are 4xx with the API's own words; the gateway's
/// own failures are 500 (logged, the answer names no file).
pub(super) fn cert_status(e: &CertError) -> StatusCode {
    match e {
        CertError::BadTtl { .. } | CertError::Refused(_) => StatusCode::BAD_REQUEST,
        CertError::UnknownClient { .. } | CertError::NothingToRevoke { .. } => {
            StatusCode::NOT_FOUND
        }
        CertError::NoDeviceCa => StatusCode::CONFLICT,
        CertError::DeviceCa { .. }
        | CertError::DevPki(_)
        | CertError::Issue(_)
        | CertError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<CertError> for ApiError {
    fn from(e: CertError) -> Self {
        let status = cert_status(&e);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::warn!("management API: certificates: {e}");
            return ApiError::new(status, "certificate operation failed on the gateway");
        }
        ApiError::new(status, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(e: CertError) -> (StatusCode, String) {
        let e = ApiError::from(e);
        (e.status, e.message)
    }

    #[test]
    fn a_bad_ttl_is_400_in_the_apis_words_without_cli_flags() {
        let err = Ttl::parse("soon").unwrap_err();
        let (status, message) = answer(err);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.contains("ttl `soon`"), "{message}");
        assert!(!message.contains("--"), "{message}");
        let beyond = CertError::BadTtl {
            ttl: "3651d".into(),
            problem: crate::pki::TtlProblem::BeyondCa { ca_not_after: 0 },
        };
        let (status, message) = answer(beyond);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.contains("beyond the CA"), "{message}");
        assert!(!message.contains("--"), "{message}");
    }

    #[test]
    fn unknown_clients_and_nothing_to_revoke_are_404() {
        let (status, message) = answer(CertError::UnknownClient {
            client: "nobody".into(),
        });
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(message.contains("nobody"), "{message}");
        let (status, _) = answer(CertError::NothingToRevoke {
            target: "beef".into(),
        });
        assert_eq!(status, StatusCode::NOT_FOUND);
        // The store's "no client" from a lookup becomes UnknownClient, not a 500.
        let from_store = CertError::from(crate::auth::AuthError::NotFound {
            what: "client",
            value: "x".into(),
        });
        assert_eq!(cert_status(&from_store), StatusCode::NOT_FOUND);
    }

    #[test]
    fn no_device_ca_is_409_without_cli_flags() {
        let (status, message) = answer(CertError::NoDeviceCa);
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(!message.contains("--"), "{message}");
    }

    #[test]
    fn a_refused_csr_is_400_and_the_gateways_own_failures_are_500_without_detail() {
        let (status, _) = answer(CertError::Refused(certs::PkiError::CsrKeyNotP256));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let store = CertError::from(crate::auth::StoreError::Io {
            path: "/var/lib/edgegw/auth.db".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        });
        let (status, message) = answer(store);
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!message.contains("/var/lib"), "{message}");
        let device_ca = CertError::DeviceCa {
            cert: "/etc/edgegw/ca.crt".into(),
            key: "/etc/edgegw/ca.key".into(),
            source: certs::PkiError::KeyMismatch,
        };
        assert_eq!(cert_status(&device_ca), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
