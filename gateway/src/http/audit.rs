//! Audit of management actions on the HTTP API: one middleware sees every mutating management
//! request (the table [`ACTIONS`]; the HTTP adapter's publishes are audited as authentications by
//! the auth store instead) and writes who did it (`admin`, `pat:<id>`, `anonymous`; never a
//! secret), the action, the entity type and id, the outcome (`ok`, `refused` or `failed` with a
//! reason class) and the remote address.
//!
//! Successful actions are written to `auth.db` before the answer leaves (they changed
//! something; their trace must not be dropped). Refused and failed ones go through the auth
//! store's bounded audit queue: anyone can send those, so they never wait on the disk and are
//! counted as dropped when the queue is full. Handlers name the entity they created (its id is
//! not in the path) with an [`AuditEntity`] response extension.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use crate::auth::store::AuditEvent;

/// The id of the entity a successful request created or changed, when the path does not
/// name it (a response extension set by the handler).
#[derive(Debug, Clone)]
pub struct AuditEntity(pub String);

/// (method, route as in `ROUTES`, action, entity type) of every audited request.
pub const ACTIONS: &[(&str, &str, &str, &str)] = &[
    ("post", "/users/tokens/issue", "token.issue", "tokens"),
    ("post", "/users/tokens/refresh", "token.refresh", "tokens"),
    (
        "post",
        "/users/tokens/rotate-key",
        "key.rotate",
        "signing_key",
    ),
    (
        "post",
        "/quarantine/{id}/requeue",
        "quarantine.requeue",
        "quarantine",
    ),
    (
        "delete",
        "/quarantine/{id}",
        "quarantine.drop",
        "quarantine",
    ),
    ("post", "/clients", "client.create", "clients"),
    ("patch", "/clients/{id}", "client.update", "clients"),
    ("delete", "/clients/{id}", "client.delete", "clients"),
    ("post", "/clients/{id}/enable", "client.enable", "clients"),
    ("post", "/clients/{id}/disable", "client.disable", "clients"),
    (
        "patch",
        "/clients/{id}/secret",
        "client.rotate_secret",
        "clients",
    ),
    (
        "patch",
        "/clients/{id}/tags",
        "client.update_tags",
        "clients",
    ),
    ("post", "/channels", "channel.create", "channels"),
    ("patch", "/channels/{id}", "channel.update", "channels"),
    ("delete", "/channels/{id}", "channel.delete", "channels"),
    (
        "patch",
        "/channels/{id}/tags",
        "channel.update_tags",
        "channels",
    ),
    ("post", "/connect", "connection.create", "connections"),
    (
        "post",
        "/channels/connect",
        "connection.create",
        "connections",
    ),
    (
        "post",
        "/channels/disconnect",
        "connection.delete",
        "connections",
    ),
    (
        "post",
        "/channels/{id}/connect",
        "connection.create",
        "connections",
    ),
    (
        "post",
        "/channels/{id}/disconnect",
        "connection.delete",
        "connections",
    ),
    ("post", "/disconnect", "connection.delete", "connections"),
    ("post", "/certs", "cert.issue", "certs"),
    // Static segments before `{serial}`: the first match wins.
    ("delete", "/certs/revoke", "cert.revoke", "certs"),
    ("delete", "/certs/{serial}", "cert.revoke", "certs"),
    ("post", "/certs/issue/{entity_id}", "cert.issue", "certs"),
    ("patch", "/certs/{serial}/revoke", "cert.revoke", "certs"),
    ("post", "/pats", "pat.create", "pats"),
    ("delete", "/pats/{id}", "pat.delete", "pats"),
    ("delete", "/pats", "pat.delete_all", "pats"),
    ("patch", "/pats/{id}/name", "pat.rename", "pats"),
    ("patch", "/pats/{id}/description", "pat.describe", "pats"),
    ("patch", "/pats/{id}/revoke", "pat.revoke", "pats"),
    ("patch", "/pats/{id}/reset", "pat.reset", "pats"),
    ("delete", "/pats/{id}/scope", "pat.scope_clear", "pats"),
    ("patch", "/pats/{id}/secret/revoke", "pat.revoke", "pats"),
    ("patch", "/pats/{id}/secret/reset", "pat.reset", "pats"),
    ("patch", "/pats/{id}/scope/add", "pat.scope_add", "pats"),
    (
        "patch",
        "/pats/{id}/scope/remove",
        "pat.scope_remove",
        "pats",
    ),
];

/// The audited action of a request: (action, entity type, the path's `{…}` segment).
fn classify<'p>(
    method: &Method,
    path: &'p str,
) -> Option<(&'static str, &'static str, Option<&'p str>)> {
    // The HTTP adapter's hot path (publish, `/hc/` health checks: audited as authentications
    // by the auth store) and every read leave at once.
    if method == Method::GET
        || method == Method::HEAD
        || path.starts_with("/m/")
        || path.starts_with("/hc/")
    {
        return None;
    }
    let method = method.as_str().to_ascii_lowercase();
    let segments: Vec<&str> = path.split('/').collect();
    ACTIONS.iter().find_map(|(m, route, action, entity_type)| {
        if *m != method {
            return None;
        }
        let pattern: Vec<&str> = route.split('/').collect();
        if pattern.len() != segments.len() {
            return None;
        }
        let mut id = None;
        for (p, s) in pattern.iter().zip(&segments) {
            if p.starts_with('{') {
                if s.is_empty() {
                    return None;
                }
                id = Some(*s);
            } else if p != s {
                return None;
            }
        }
        Some((*action, *entity_type, id))
    })
}

/// Untrusted text (a path segment) for the audit table: bounded and escaped.
fn bounded(s: &str) -> String {
    let mut out: String = s.chars().take(128).flat_map(char::escape_debug).collect();
    if s.chars().count() > 128 {
        out.push('…');
    }
    out
}

/// `ok`, or `refused` / `failed` with the reason class.
fn outcome(status: StatusCode) -> (&'static str, Option<&'static str>) {
    match status.as_u16() {
        200..=299 => ("ok", None),
        401 => ("refused", Some("unauthenticated")),
        403 => ("refused", Some("forbidden")),
        429 => ("refused", Some("throttled")),
        404 => ("failed", Some("not_found")),
        409 => ("failed", Some("conflict")),
        400..=499 => ("failed", Some("invalid")),
        _ => ("failed", Some("error")),
    }
}

/// Queues its event when dropped before the handler answered.
struct Unfinished {
    auth: crate::auth::AuthStore,
    event: Option<AuditEvent>,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(event) = self.event.take() {
            self.auth.record_audit(event);
        }
    }
}

/// The middleware (`axum::middleware::from_fn_with_state`).
pub async fn layer(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let keep = state.config.auth.audit_max_events;
    let Some((action, entity_type, path_id)) = classify(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    if keep == 0 {
        return next.run(req).await;
    }
    let path_id = path_id.map(bounded);
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip().to_string());
    // Who, decided before the handler runs (it may revoke the very PAT that calls it). The
    // token endpoints authenticate with credentials or a refresh token: admin when they succeed.
    let token_endpoint = entity_type == "tokens";
    let actor = if token_endpoint {
        None
    } else {
        Some(super::routes::actor(&state, req.headers()))
    };
    // The server's request timeout drops this future mid-handler; the action may have been
    // done, so that is audited too (`failed` / `timeout`: effect unknown).
    let mut unfinished = Unfinished {
        auth: state.auth.clone(),
        event: Some({
            let actor = actor.as_deref().unwrap_or("anonymous");
            let mut e = AuditEvent::management("api", actor, action, entity_type, path_id.clone());
            e.outcome = "failed";
            e.reason = Some("timeout".to_owned());
            e.remote = remote.clone();
            e
        }),
    };
    let response = next.run(req).await;
    unfinished.event = None;
    let status = response.status();
    let (outcome, reason) = outcome(status);
    let actor = actor.unwrap_or_else(|| {
        if outcome == "ok" {
            "admin".to_owned()
        } else {
            "anonymous".to_owned()
        }
    });
    let entity_id = response
        .extensions()
        .get::<AuditEntity>()
        .map(|e| bounded(&e.0))
        .or(path_id);
    let mut event = AuditEvent::management("api", &actor, action, entity_type, entity_id);
    event.outcome = outcome;
    event.reason = reason.map(str::to_owned);
    event.remote = remote;
    if outcome != "ok" {
        state.auth.record_audit(event);
        return response;
    }
    let st = Arc::clone(&state);
    let written = tokio::task::spawn_blocking(move || {
        let mut db = st.db.take()?;
        db.append_audit(&[event], keep)?;
        st.db.put(db);
        Ok::<(), crate::auth::StoreError>(())
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("{action}: done, but the audit event was not written: {e}"),
        Err(e) => tracing::warn!("{action}: done, but the audit task failed: {e}"),
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mutating_management_route_is_audited() {
        for (method, route) in super::super::ROUTES {
            // The `/{domainID}/…` forms are audited as the route they are rewritten to.
            if *method == "get"
                || route.starts_with("/m/")
                || route.starts_with("/hc/")
                || route.starts_with("/{domainID}/")
            {
                continue;
            }
            assert!(
                ACTIONS.iter().any(|(m, r, ..)| m == method && r == route),
                "{method} {route} is not in audit::ACTIONS"
            );
        }
        for (m, r, ..) in ACTIONS {
            assert!(
                super::super::ROUTES.contains(&(*m, *r)),
                "{m} {r} is audited but not served"
            );
        }
    }

    #[test]
    fn requests_are_classified_by_route() {
        assert_eq!(
            classify(&Method::POST, "/clients"),
            Some(("client.create", "clients", None))
        );
        assert_eq!(
            classify(&Method::DELETE, "/clients/abc"),
            Some(("client.delete", "clients", Some("abc")))
        );
        assert_eq!(
            classify(&Method::PATCH, "/pats/p1/scope/add"),
            Some(("pat.scope_add", "pats", Some("p1")))
        );
        assert_eq!(classify(&Method::GET, "/clients"), None);
        assert_eq!(classify(&Method::POST, "/m/d/c/ch"), None);
        assert_eq!(classify(&Method::POST, "/hc/d"), None);
        assert_eq!(classify(&Method::DELETE, "/clients/"), None);
    }

    #[test]
    fn outcomes_are_classed() {
        assert_eq!(outcome(StatusCode::CREATED), ("ok", None));
        assert_eq!(
            outcome(StatusCode::FORBIDDEN),
            ("refused", Some("forbidden"))
        );
        assert_eq!(
            outcome(StatusCode::UNAUTHORIZED),
            ("refused", Some("unauthenticated"))
        );
        assert_eq!(
            outcome(StatusCode::NOT_FOUND),
            ("failed", Some("not_found"))
        );
        assert_eq!(
            outcome(StatusCode::INTERNAL_SERVER_ERROR),
            ("failed", Some("error"))
        );
    }

    #[tokio::test]
    async fn a_request_dropped_by_the_timeout_is_audited() {
        use axum::routing::post;
        use tower::ServiceExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (state, _worker) = super::super::test_state(dir.path());
        let auth_db = state.auth_db.clone();
        // A handler that never answers, as one stuck behind a slow disk.
        let app: axum::Router = axum::Router::new()
            .route(
                "/clients/{id}/enable",
                post(std::future::pending::<StatusCode>),
            )
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&state),
                layer,
            ));
        let mut req = axum::http::Request::builder()
            .method("POST")
            .uri("/clients/c-1/disable")
            .body(axum::body::Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 7], 1))));
        // The route does not exist: the middleware still sees the request, the handler (404)
        // answers at once. Then the stuck one, cut by a timeout as `http::serve` does.
        let answered = app.clone().oneshot(req).await.unwrap();
        assert_eq!(answered.status(), StatusCode::NOT_FOUND);
        let mut req = axum::http::Request::builder()
            .method("POST")
            .uri("/clients/c-2/enable")
            .body(axum::body::Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 7], 1))));
        let timed_out =
            tokio::time::timeout(std::time::Duration::from_millis(50), app.oneshot(req)).await;
        assert!(timed_out.is_err());
        drop(state); // the last AuthStore clone: flushes the audit queue
        let db = crate::auth::store::Db::open(&auth_db).unwrap();
        let events = db.recent_audit(10).unwrap();
        assert_eq!(events.len(), 2, "{events:?}");
        // Newest first: the timed-out request, then the 404.
        assert_eq!(events[0].outcome, "failed");
        assert_eq!(events[0].reason.as_deref(), Some("timeout"));
        assert_eq!(events[0].entity_id.as_deref(), Some("c-2"));
        assert_eq!(events[0].actor.as_deref(), Some("anonymous"));
        assert_eq!(events[0].remote.as_deref(), Some("192.0.2.7"));
        assert_eq!(events[0].action.as_deref(), Some("client.enable"));
        assert_eq!(events[1].action.as_deref(), Some("client.disable"));
        assert_eq!(events[1].reason.as_deref(), Some("not_found"));
    }

    #[test]
    fn path_ids_are_bounded_and_escaped() {
        let long = "x".repeat(500);
        assert_eq!(bounded(&long).chars().count(), 129);
        assert_eq!(bounded("a\nb"), "a\\nb");
    }
}
