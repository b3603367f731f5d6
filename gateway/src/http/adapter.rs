//! The HTTP adapter: `POST /m/<domain>/c/<channel>[/<subtopic>]` with a sensor's credentials,
//! answered 202 once the message is durable, and `POST /hc/<domain>`, SuperMQ's health
//! (authentication) check, answered 200. It translates HTTP ↔ intake and nothing else:
//! throttling, authentication, authorization and the hand-off to the outbox are
//! [`crate::intake`]'s; [`http_answer`] is the one mapping from a refusal to a status, and
//! the one place this adapter's answers are counted (`crate::runtime::metrics`, adapter `http`).
//!
//! Credentials, as SuperMQ's HTTP adapter takes them (supermq v0.19.1 `http/handler.go`,
//! `authAccess`): `Authorization: Client <secret>`, `Authorization: Basic
//! base64(<client id or identity>:<secret>)`, or the bare secret as the header value.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;

use super::{AppState, HttpMetrics};
use crate::auth::Op;
use crate::intake::{Credentials, Refusal, Target};
use crate::runtime::metrics::Adapter;

type St = State<Arc<AppState>>;

/// Longest Content-Type kept with a message.
const MAX_CONTENT_TYPE: usize = 128;

pub(super) async fn publish(
    State(state): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((domain, channel)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let target = Target {
        domain: Some(domain),
        channel,
        subtopic: String::new(),
    };
    answer(&state, accept(&state, peer, &target, &headers, body).await)
}

pub(super) async fn publish_subtopic(
    State(state): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((domain, channel, subtopic)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let target = Target {
        domain: Some(domain),
        channel,
        subtopic,
    };
    answer(&state, accept(&state, peer, &target, &headers, body).await)
}

/// `POST /hc/{domain}`: SuperMQ's health (authentication) check (supermq v0.19.1
/// `http/api/transport.go` route, `http/api/response.go` `healthCheckRes`: 200, empty body;
/// `http/handler.go` `authAccess`: the client authenticates in that domain, no channel
/// authorization). Same credentials, throttling, audit and refusal answers as a publish
/// ([`crate::intake::Intake::check_health`]); nothing is stored or counted as a message.
pub(super) async fn health_check(
    State(state): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(domain): Path<String>,
    headers: HeaderMap,
) -> Response {
    let credentials = header_credentials(&headers);
    let decision =
        match state
            .intake
            .check_health(Some(peer.ip()), credentials.as_intake(), &domain)
        {
            Ok(_) => Decision::Checked,
            Err(r) => Decision::Refused(r, detail(&r)),
        };
    answer(&state, decision)
}

/// The sensor credentials of an `Authorization` header value (see the module docs).
/// Undecodable Basic credentials are no credentials.
pub(super) fn credentials(value: &str) -> SensorCredentials {
    let value = value.trim();
    if value.is_empty() {
        return SensorCredentials::None;
    }
    match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("client") => {
            SensorCredentials::Secret(rest.trim().as_bytes().to_vec())
        }
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => {
            // Standard base64 (RFC 7617, curl -u); SuperMQ's own decoder takes the URL-safe
            // alphabet (supermq v0.19.1 `http/handler.go` `decodeAuth`): either.
            let rest = rest.trim();
            let Ok(decoded) = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(rest))
            else {
                return SensorCredentials::None;
            };
            let Ok(decoded) = String::from_utf8(decoded) else {
                return SensorCredentials::None;
            };
            match decoded.split_once(':') {
                Some((user, secret)) if !user.is_empty() && !secret.is_empty() => {
                    SensorCredentials::UserSecret {
                        user: user.to_owned(),
                        secret: secret.as_bytes().to_vec(),
                    }
                }
                _ => SensorCredentials::None,
            }
        }
        // Another scheme (Bearer …) is not a sensor credential.
        Some(_) => SensorCredentials::None,
        None => SensorCredentials::Secret(value.as_bytes().to_vec()),
    }
}

/// Owned form of the credentials an `Authorization` header carried.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum SensorCredentials {
    None,
    Secret(Vec<u8>),
    UserSecret { user: String, secret: Vec<u8> },
}

impl std::fmt::Debug for SensorCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Secret(_) => f.write_str("Secret(<redacted>)"),
            Self::UserSecret { user, .. } => f
                .debug_struct("UserSecret")
                .field("user", user)
                .finish_non_exhaustive(),
        }
    }
}

impl SensorCredentials {
    fn as_intake(&self) -> Credentials<'_> {
        match self {
            Self::None => Credentials::None,
            Self::Secret(s) => Credentials::Secret(s),
            Self::UserSecret { user, secret } => Credentials::IdentitySecret {
                identity: user,
                secret,
            },
        }
    }
}

fn header_credentials(headers: &HeaderMap) -> SensorCredentials {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map_or(SensorCredentials::None, credentials)
}

/// What the handler decided: accepted, or refused (with a detail for the JSON body).
enum Decision {
    Accepted,
    /// A health check passed (`/hc/{domain}`): 200, no message.
    Checked,
    Refused(Refusal, &'static str),
    /// No Content-Type: a bad request HTTP has its own status for (415).
    NoContentType,
}

async fn accept(
    state: &AppState,
    peer: SocketAddr,
    target: &Target,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Decision {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let max = usize::try_from(state.config.http.max_body.0).unwrap_or(usize::MAX);
            return Decision::Refused(Refusal::TooLarge { max }, "payload too large");
        }
        Err(_) => return Decision::Refused(Refusal::BadRequest, "cannot read the body"),
    };
    let credentials = header_credentials(headers);
    let admitted = match state.intake.admit(
        Some(peer.ip()),
        credentials.as_intake(),
        target,
        Op::Publish,
    ) {
        Ok(a) => a,
        Err(r) => return Decision::Refused(r, detail(&r)),
    };
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(MAX_CONTENT_TYPE).collect::<String>())
    else {
        return Decision::NoContentType;
    };
    let durable = match state.intake.publish(admitted, body, Some(content_type)) {
        Ok(d) => d,
        Err(r) => return Decision::Refused(r, detail(&r)),
    };
    match durable.await {
        Ok(_) => Decision::Accepted,
        Err(r) => Decision::Refused(r, detail(&r)),
    }
}

fn detail(r: &Refusal) -> &'static str {
    match r {
        Refusal::BadRequest => "bad request",
        Refusal::Unauthenticated => "missing or invalid credentials",
        Refusal::Forbidden => "not allowed",
        Refusal::NotFound => "not found",
        Refusal::TooLarge { .. } => "payload too large",
        Refusal::Busy { .. } => "outbox full, retry later",
        Refusal::Throttled { .. } => "too many failed authentications",
        Refusal::Unavailable { .. } => "cannot store the message now, retry later",
    }
}

/// Counts the answer (once) and builds it.
fn answer(state: &AppState, decision: Decision) -> Response {
    match decision {
        Decision::Accepted => {
            state.adapters.message_in(Adapter::Http);
            StatusCode::ACCEPTED.into_response()
        }
        Decision::Checked => StatusCode::OK.into_response(),
        Decision::Refused(refusal, detail) => {
            state.adapters.refused(Adapter::Http, refusal.kind());
            if refusal == Refusal::Unauthenticated {
                HttpMetrics::inc(&state.metrics.auth_failures);
            }
            http_answer(&refusal, detail)
        }
        Decision::NoContentType => {
            state
                .adapters
                .refused(Adapter::Http, Refusal::BadRequest.kind());
            (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Json(json!({ "error": "Content-Type is required" })),
            )
                .into_response()
        }
    }
}

/// The one mapping from intake's refusal to the HTTP adapter's answer (README "Refusals"):
/// storage failure and shutdown are 503 + Retry-After, like a full outbox.
pub fn http_answer(refusal: &Refusal, detail: &str) -> Response {
    let status = match refusal {
        Refusal::BadRequest => StatusCode::BAD_REQUEST,
        Refusal::Unauthenticated => StatusCode::UNAUTHORIZED,
        Refusal::Forbidden => StatusCode::FORBIDDEN,
        Refusal::NotFound => StatusCode::NOT_FOUND,
        Refusal::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Refusal::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
        Refusal::Busy { .. } | Refusal::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut r = (status, Json(json!({ "error": detail }))).into_response();
    if let Some(after) = refusal.retry_after()
        && let Ok(v) = HeaderValue::from_str(&after.as_secs().max(1).to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Client"));
    }
    r
}

#[cfg(test)]
mod tests;
