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
mod error;
mod health;
mod pats;
mod users;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, patch, post};

use super::AppState;
use crate::auth::AuthError;
use crate::auth::store::Db;

pub(super) use caller::actor;
use certs::*;
use channels::*;
use clients::*;
use error::ApiError;
pub(super) use error::timeout_response;
use health::*;
use pats::*;
use users::*;

type St = State<Arc<AppState>>;

/// Runs `f` on an `auth.db` connection on a blocking thread.
pub(super) async fn with_db<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&mut Db) -> Result<T, AuthError> + Send + 'static,
) -> Result<T, ApiError> {
    let path = state.auth_db.clone();
    let auth = state.auth.clone();
    tokio::task::spawn_blocking(move || {
        let mut db = Db::open(&path)?;
        let out = f(&mut db)?;
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
    Router::new()
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
        .route("/clients/{id}/connections", get(client_connections))
        .route("/channels", post(create_channel).get(list_channels))
        .route("/channels/{id}", get(get_channel).delete(delete_channel))
        .route("/connect", post(connect))
        .route("/disconnect", post(disconnect))
        .route("/certs", get(list_certs).post(issue_cert))
        .route("/certs/{serial}", axum::routing::delete(revoke_cert))
        .route("/audit", get(audit))
        .route("/pats", post(create_pat).get(list_pats))
        .route("/pats/{id}", get(get_pat).delete(delete_pat))
        .route("/pats/{id}/secret/revoke", patch(revoke_pat))
        .route("/pats/{id}/secret/reset", patch(reset_pat))
        .route("/pats/{id}/scope/add", patch(add_scope))
        .route("/pats/{id}/scope/remove", patch(remove_scope))
        .route("/m/{domain}/c/{channel}", post(super::adapter::publish))
        .route(
            "/m/{domain}/c/{channel}/{*subtopic}",
            post(super::adapter::publish_subtopic),
        )
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            super::audit::layer,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
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
    ("get", "/clients/{id}/connections"),
    ("post", "/channels"),
    ("get", "/channels"),
    ("get", "/channels/{id}"),
    ("delete", "/channels/{id}"),
    ("post", "/connect"),
    ("post", "/disconnect"),
    ("get", "/certs"),
    ("post", "/certs"),
    ("delete", "/certs/{serial}"),
    ("get", "/audit"),
    ("post", "/pats"),
    ("get", "/pats"),
    ("get", "/pats/{id}"),
    ("delete", "/pats/{id}"),
    ("patch", "/pats/{id}/secret/revoke"),
    ("patch", "/pats/{id}/secret/reset"),
    ("patch", "/pats/{id}/scope/add"),
    ("patch", "/pats/{id}/scope/remove"),
    ("post", "/m/{domain}/c/{channel}"),
    ("post", "/m/{domain}/c/{channel}/{subtopic}"),
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
}
