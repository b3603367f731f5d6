//! Routes of the management API (the HTTP adapter's handler is `http::adapter`): the router and the route table here,
//! the handlers per entity family beside it (`clients`, `channels` with connections, `certs`
//! with audit, `pats`, `users` for tokens, `health` with metrics), who calls (`caller`) and the
//! error answer (`error`). Store access goes through `auth::store::Db` (the same functions as
//! the CLI) on blocking threads; the daemon's `AuthStore` picks the changes up through its
//! watcher.

mod caller;
mod certs;
mod channels;
mod clients;
#[cfg(test)]
mod contract;
mod error;
mod health;
mod pats;
mod quarantine;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, patch, post};
use tower::ServiceExt as _;

use super::AppState;
use crate::auth::AuthError;
use crate::auth::store::Db;

pub(super) use caller::actor;
use certs::*;
use channels::*;
use clients::*;
use error::ApiError;
pub(super) use error::{throttled_response, timeout_response};
use health::*;
use pats::*;
use users::*;

type St = State<Arc<AppState>>;

/// Runs `f` on an `auth.db` connection (from the state's pool) on a blocking thread. Callers
/// check what they can of the caller's rights before, so a refused request costs no store work.
pub(super) async fn with_db<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(&mut Db) -> Result<T, AuthError> + Send + 'static,
) -> Result<T, ApiError> {
    let st = Arc::clone(state);
    let auth = state.auth.clone();
    tokio::task::spawn_blocking(move || {
        let mut db = st.db.take()?;
        let out = f(&mut db)?;
        st.db.put(db);
        // Changes take effect for the adapters before the API answers.
        auth.reload_now()?;
        Ok::<T, AuthError>(out)
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store task failed"))?
    .map_err(ApiError::from)
}

// ---------------------------------------------------------------------------------------------
// Router

pub fn router(state: Arc<AppState>) -> Router {
    let limit = usize::try_from(state.config.http.max_body.0).unwrap_or(usize::MAX);
    let api = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/users/tokens/issue", post(issue_token))
        .route("/users/tokens/refresh", post(refresh_token))
        .route("/users/tokens/rotate-key", post(rotate_key))
        .route("/clients", post(create_client).get(list_clients))
        .route(
            "/clients/{id}",
            get(get_client).patch(update_client).delete(delete_client),
        )
        .route("/clients/{id}/enable", post(enable_client))
        .route("/clients/{id}/disable", post(disable_client))
        .route("/clients/{id}/secret", patch(rotate_secret))
        .route("/clients/{id}/tags", patch(update_client_tags))
        .route("/clients/{id}/connections", get(client_connections))
        .route("/channels", post(create_channel).get(list_channels))
        .route(
            "/channels/{id}",
            get(get_channel)
                .patch(update_channel)
                .delete(delete_channel),
        )
        .route("/channels/{id}/tags", patch(update_channel_tags))
        .route("/channels/connect", post(connect))
        .route("/channels/disconnect", post(disconnect))
        .route("/channels/{id}/connect", post(connect_channel))
        .route("/channels/{id}/disconnect", post(disconnect_channel))
        .route("/connect", post(connect))
        .route("/disconnect", post(disconnect))
        .route("/certs", get(list_certs).post(issue_cert))
        .route("/certs/{serial}", delete(revoke_cert))
        .route("/certs/revoke", delete(revoke_certs_of))
        .route("/certs/issue/{entity_id}", post(issue_cert_for))
        .route("/certs/{serial}/revoke", patch(revoke_cert_patch))
        .route("/audit", get(audit))
        .route(
            "/pats",
            post(create_pat).get(list_pats).delete(delete_all_pats),
        )
        .route("/pats/{id}", get(get_pat).delete(delete_pat))
        .route("/pats/{id}/name", patch(rename_pat))
        .route("/pats/{id}/description", patch(describe_pat))
        .route("/pats/{id}/secret/revoke", patch(revoke_pat))
        .route("/pats/{id}/secret/reset", patch(reset_pat))
        .route("/pats/{id}/revoke", patch(revoke_pat))
        .route("/pats/{id}/reset", patch(reset_pat))
        .route("/pats/{id}/scope", get(list_scopes).delete(clear_scopes))
        .route("/pats/{id}/scope/add", patch(add_scope))
        .route("/pats/{id}/scope/remove", patch(remove_scope))
        .route("/m/{domain}/c/{channel}", post(super::adapter::publish))
        .route("/hc/{domain}", post(super::adapter::health_check))
        .route(
            "/m/{domain}/c/{channel}/{*subtopic}",
            post(super::adapter::publish_subtopic),
        )
        .merge(quarantine::routes())
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            super::audit::layer,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(Arc::clone(&state));
    // SuperMQ's paths carry the domain first (`/{domainID}/clients…`,
    // `clients/api/http/clients.go`; `/{domainID}/channels…`, `channels/api/http/transport.go`;
    // `/{domainID}/certs…`, `certs/api/http/transport.go`): the same handlers, reached by
    // checking the domain and dropping the segment.
    let inner = api.clone();
    let alias = any(move |req: Request| domain_alias(inner.clone(), Arc::clone(&state), req));
    let mut router = Router::new();
    for family in ["clients", "channels", "certs"] {
        router = router
            .route(&format!("/{{domain}}/{family}"), alias.clone())
            .route(&format!("/{{domain}}/{family}/{{*rest}}"), alias.clone());
    }
    router.merge(api)
}

/// The domain segment of a SuperMQ path, for handlers that check an entity's domain.
#[derive(Debug, Clone)]
pub(super) struct PathDomain(pub(super) String);

/// `/{domainID}/<rest>`: a domain other than the gateway's (`gateway.domain_id`; any when that
/// is empty) is refused as SuperMQ refuses a domain the caller has no rights in — after
/// authentication (401 without valid credentials), 403 (`api/http/common.go`, `EncodeError`:
/// authorization errors → 403). Otherwise the request goes on as `/<rest>`, with the domain
/// attached for the entity checks.
async fn domain_alias(inner: Router, state: Arc<AppState>, req: Request) -> Response {
    let uri = req.uri().clone();
    let Some((domain, rest)) = uri.path().strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let gateway = &state.config.gateway.domain_id;
    if !gateway.is_empty() && domain != gateway {
        return match caller::authenticate(&state, req.headers()) {
            Err(e) => e.into_response(),
            Ok(_) => ApiError::forbidden().into_response(),
        };
    }
    let target = match uri.query() {
        Some(q) => format!("/{rest}?{q}"),
        None => format!("/{rest}"),
    };
    let Ok(target) = target.parse::<Uri>() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // A fresh request: the outer route's path parameters (kept in the extensions) must not
    // reach the inner handlers' `Path` extractors; the peer address is carried over.
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().copied();
    let (parts, body) = req.into_parts();
    let mut fresh = Request::new(body);
    *fresh.method_mut() = parts.method;
    *fresh.uri_mut() = target;
    *fresh.version_mut() = parts.version;
    *fresh.headers_mut() = parts.headers;
    if let Some(peer) = peer {
        fresh.extensions_mut().insert(peer);
    }
    fresh.extensions_mut().insert(PathDomain(domain.to_owned()));
    match inner.oneshot(fresh).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// Every (method, path) the router serves, as `docs/openapi.yaml` spells them. The tests below
/// check both directions: the document lists exactly these, and the router answers each.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/metrics"),
    ("post", "/users/tokens/issue"),
    ("post", "/users/tokens/refresh"),
    ("post", "/users/tokens/rotate-key"),
    ("post", "/clients"),
    ("get", "/clients"),
    ("get", "/clients/{id}"),
    ("patch", "/clients/{id}"),
    ("delete", "/clients/{id}"),
    ("post", "/clients/{id}/enable"),
    ("post", "/clients/{id}/disable"),
    ("patch", "/clients/{id}/secret"),
    ("patch", "/clients/{id}/tags"),
    ("get", "/clients/{id}/connections"),
    ("post", "/channels"),
    ("get", "/channels"),
    ("get", "/channels/{id}"),
    ("patch", "/channels/{id}"),
    ("delete", "/channels/{id}"),
    ("patch", "/channels/{id}/tags"),
    ("post", "/channels/connect"),
    ("post", "/channels/disconnect"),
    ("post", "/channels/{id}/connect"),
    ("post", "/channels/{id}/disconnect"),
    ("post", "/connect"),
    ("post", "/disconnect"),
    ("get", "/certs"),
    ("post", "/certs"),
    ("delete", "/certs/{serial}"),
    ("delete", "/certs/revoke"),
    ("post", "/certs/issue/{entity_id}"),
    ("patch", "/certs/{serial}/revoke"),
    ("get", "/audit"),
    ("post", "/pats"),
    ("get", "/pats"),
    ("delete", "/pats"),
    ("get", "/pats/{id}"),
    ("delete", "/pats/{id}"),
    ("patch", "/pats/{id}/name"),
    ("patch", "/pats/{id}/description"),
    ("patch", "/pats/{id}/secret/revoke"),
    ("patch", "/pats/{id}/secret/reset"),
    ("patch", "/pats/{id}/revoke"),
    ("patch", "/pats/{id}/reset"),
    ("get", "/pats/{id}/scope"),
    ("delete", "/pats/{id}/scope"),
    ("patch", "/pats/{id}/scope/add"),
    ("patch", "/pats/{id}/scope/remove"),
    ("post", "/m/{domain}/c/{channel}"),
    ("post", "/m/{domain}/c/{channel}/{subtopic}"),
    ("post", "/hc/{domain}"),
    ("get", "/quarantine"),
    ("delete", "/quarantine/{id}"),
    ("post", "/quarantine/{id}/requeue"),
    // SuperMQ's domain-first forms of the clients, channels and certs routes.
    ("post", "/{domainID}/clients"),
    ("get", "/{domainID}/clients"),
    ("get", "/{domainID}/clients/{id}"),
    ("patch", "/{domainID}/clients/{id}"),
    ("delete", "/{domainID}/clients/{id}"),
    ("post", "/{domainID}/clients/{id}/enable"),
    ("post", "/{domainID}/clients/{id}/disable"),
    ("patch", "/{domainID}/clients/{id}/secret"),
    ("patch", "/{domainID}/clients/{id}/tags"),
    ("get", "/{domainID}/clients/{id}/connections"),
    ("post", "/{domainID}/channels"),
    ("get", "/{domainID}/channels"),
    ("get", "/{domainID}/channels/{id}"),
    ("patch", "/{domainID}/channels/{id}"),
    ("delete", "/{domainID}/channels/{id}"),
    ("patch", "/{domainID}/channels/{id}/tags"),
    ("post", "/{domainID}/channels/connect"),
    ("post", "/{domainID}/channels/disconnect"),
    ("post", "/{domainID}/channels/{id}/connect"),
    ("post", "/{domainID}/channels/{id}/disconnect"),
    ("get", "/{domainID}/certs"),
    ("post", "/{domainID}/certs"),
    ("delete", "/{domainID}/certs/{serial}"),
    ("delete", "/{domainID}/certs/revoke"),
    ("post", "/{domainID}/certs/issue/{entity_id}"),
    ("patch", "/{domainID}/certs/{serial}/revoke"),
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::SocketAddr;

    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use tower::ServiceExt as _;

    use super::*;
    use crate::http::test_state;

    const OPENAPI: &str = include_str!("../../../../docs/openapi.yaml");

    /// (method, path) pairs of the document's `paths:` section (two-space path keys, four-space
    /// method keys).
    fn documented() -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        let mut in_paths = false;
        let mut path = None;
        for line in OPENAPI.lines() {
            if !line.starts_with(' ') {
                in_paths = line.trim_end() == "paths:";
                continue;
            }
            if !in_paths {
                continue;
            }
            if let Some(p) = line.strip_prefix("  /") {
                path = Some(format!("/{}", p.trim_end().trim_end_matches(':')));
            } else if let Some(m) = line.strip_prefix("    ")
                && let Some(m) = m.strip_suffix(':')
                && ["get", "post", "patch", "put", "delete"].contains(&m)
                && let Some(p) = &path
            {
                out.insert((m.to_owned(), p.clone()));
            }
        }
        out
    }

    #[test]
    fn openapi_paths_match_the_router() {
        let routes: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        let documented = documented();
        assert!(documented.len() > 20, "parsed {documented:?}");
        assert_eq!(
            routes.difference(&documented).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "served but not in docs/openapi.yaml"
        );
        assert_eq!(
            documented.difference(&routes).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "in docs/openapi.yaml but not in ROUTES"
        );
    }

    #[tokio::test]
    async fn router_serves_every_listed_route_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _worker) = test_state(dir.path());
        let app = router(state);
        let call = |method: &str, path: &str| {
            let app = app.clone();
            let mut req = axum::http::Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(path)
                .body(Body::empty())
                .unwrap();
            req.extensions_mut()
                .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 1))));
            async move { app.oneshot(req).await.unwrap().status() }
        };
        for (method, path) in ROUTES {
            let concrete = path.replace("{subtopic}", "a/b").replace(['{', '}'], "");
            let status = call(method, &concrete).await;
            assert!(
                status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {concrete}: {status}"
            );
        }
        assert_eq!(call("get", "/nope").await, StatusCode::NOT_FOUND);
        assert_eq!(
            call("put", "/clients").await,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    /// A PAT with `scopes` and a request helper answering (status, body text).
    async fn pat_call(
        app: &Router,
        secret: &str,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, String) {
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {secret}"));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let mut req = req
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 1))));
        let r = app.clone().oneshot(req).await.unwrap();
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn scope(t: &str, op: &str, id: &str) -> crate::http::pats::Scope {
        crate::http::pats::Scope {
            entity_type: t.into(),
            operation: op.into(),
            entity_id: id.into(),
        }
    }

    /// Issue 20 item 11: a PAT learns nothing about entities outside its scopes, cannot attach
    /// any client to the channel it may connect, and cannot probe other clients' secrets.
    #[tokio::test]
    async fn pat_scopes_leak_no_existence_secrets_or_connections() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _worker) = test_state(dir.path());
        let (a, b, ch) = {
            let mut db = Db::open(&state.auth_db).unwrap();
            let a = db.add_client("sensor-a", None, None, None).unwrap();
            let b = db
                .add_client("sensor-b", None, Some("b-secret-0123456789"), None)
                .unwrap();
            let ch = db.add_channel("kitchen", "", None).unwrap();
            (a, b, ch)
        };
        let now = crate::auth::store::now_unix();
        let (pat, secret) = state
            .pats
            .create("t", "", std::time::Duration::from_secs(3600), now)
            .unwrap();
        state
            .pats
            .add_scopes(
                &pat.id,
                &[
                    scope("clients", "read", &a.id),
                    scope("clients", "update", &a.id),
                    scope("connections", "create", &ch.id),
                ],
            )
            .unwrap();
        let app = router(Arc::clone(&state));

        // Existence: an unknown id and another client's id answer alike (403).
        let (unknown, _) = pat_call(&app, &secret, "GET", "/clients/no-such-client", None).await;
        let (other, _) = pat_call(&app, &secret, "GET", &format!("/clients/{}", b.id), None).await;
        assert_eq!(
            (unknown, other),
            (StatusCode::FORBIDDEN, StatusCode::FORBIDDEN)
        );
        let (mine, _) = pat_call(&app, &secret, "GET", &format!("/clients/{}", a.id), None).await;
        assert_eq!(mine, StatusCode::OK);
        let (no_channel, _) = pat_call(&app, &secret, "GET", "/channels/nope", None).await;
        assert_eq!(no_channel, StatusCode::FORBIDDEN);

        // Connections: the channel scope alone does not let client B be attached.
        let connect = |client: &str| serde_json::json!({ "client_ids": [client], "channel_ids": [ch.id.clone()] });
        let (status, text) =
            pat_call(&app, &secret, "POST", "/connect", Some(connect(&b.id))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
        state
            .pats
            .add_scopes(&pat.id, &[scope("connections", "create", &a.id)])
            .unwrap();
        let (status, text) =
            pat_call(&app, &secret, "POST", "/connect", Some(connect(&a.id))).await;
        assert_eq!(status, StatusCode::CREATED, "{text}");

        // Secrets: choosing one (e.g. B's) is the administrator's; no "already uses" answer.
        let (status, text) = pat_call(
            &app,
            &secret,
            "PATCH",
            &format!("/clients/{}/secret", a.id),
            Some(serde_json::json!({ "secret": "b-secret-0123456789" })),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
        assert!(!text.contains("already"), "{text}");
        let (status, _) = pat_call(
            &app,
            &secret,
            "PATCH",
            &format!("/clients/{}/secret", a.id),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }

    /// Issue 20 item 15: more than 1024 pairs are refused (the count is a checked product, so
    /// it cannot wrap on 32-bit targets either).
    #[tokio::test]
    async fn connect_pair_count_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _worker) = test_state(dir.path());
        let now = crate::auth::store::now_unix();
        let (pat, secret) = state
            .pats
            .create("t", "", std::time::Duration::from_secs(3600), now)
            .unwrap();
        state
            .pats
            .add_scopes(&pat.id, &[scope("connections", "*", "*")])
            .unwrap();
        let app = router(Arc::clone(&state));
        let ids: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
        let body = serde_json::json!({ "client_ids": ids, "channel_ids": ids });
        let (status, text) = pat_call(&app, &secret, "POST", "/connect", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    }
}
