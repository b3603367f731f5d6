//! Routes and handlers of the management API and the HTTP adapter. Store access goes through
//! `auth::store::Db` (the same functions as the CLI) on blocking threads; the daemon's
//! `AuthStore` picks the changes up through its watcher.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::pats::{PatError, Scope};
use super::tokens::Kind;
use super::{AppState, HttpMetrics};
use crate::auth::store::{Client, Db};
use crate::auth::{AuthError, Op};
use crate::outbox::{IngestError, Message};

type St = State<Arc<AppState>>;

/// An error answer: status + `{"error": …}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
    fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
    fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "missing or invalid credentials")
    }
    fn forbidden() -> Self {
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

impl From<PatError> for ApiError {
    fn from(e: PatError) -> Self {
        let status = match &e {
            PatError::NotFound(_) => StatusCode::NOT_FOUND,
            PatError::Invalid(_) => StatusCode::BAD_REQUEST,
            PatError::Unauthenticated => StatusCode::UNAUTHORIZED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

pub(super) fn timeout_response() -> Response {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "request timed out").into_response()
}

/// Runs `f` on an `auth.db` connection on a blocking thread.
async fn with_db<T: Send + 'static>(
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
// Authentication of API callers

/// Who calls the API.
#[derive(Debug)]
enum Principal {
    Admin,
    Pat(super::pats::Pat),
}

impl Principal {
    fn require(
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
    fn admin_only(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Pat(_) => Err(ApiError::forbidden()),
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn standalone_token_matches(state: &AppState, presented: &str) -> bool {
    let admin = &state.config.standalone.token;
    !admin.is_empty() && crate::auth::secret::ct_eq(admin.expose().as_bytes(), presented.as_bytes())
}

/// Who the bearer credentials name, without counting failures.
fn identify(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let token = bearer(headers).ok_or_else(ApiError::unauthorized)?;
    if token.starts_with(super::pats::PREFIX) {
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
pub(super) fn actor(state: &AppState, headers: &HeaderMap) -> String {
    match identify(state, headers) {
        Ok(Principal::Admin) => "admin".to_owned(),
        Ok(Principal::Pat(p)) => format!("pat:{}", p.id),
        Err(_) => "anonymous".to_owned(),
    }
}

fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let result = identify(state, headers);
    if result.is_err() {
        HttpMetrics::inc(&state.metrics.auth_failures);
    }
    result
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
        .route("/m/{domain}/c/{channel}", post(publish))
        .route(
            "/m/{domain}/c/{channel}/{*subtopic}",
            post(publish_subtopic),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.adapters.clone(),
            crate::metrics::http_adapter,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            super::audit::layer,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "pass", "version": env!("CARGO_PKG_VERSION"), "service": "edgegw" }))
}

async fn metrics(State(state): St) -> Response {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    let adapters = state.adapters.snapshot();
    let s = state.outbox.stats();
    let m = &state.metrics;
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let oldest_age = if s.oldest_received_ms == 0 {
        0.0
    } else {
        now_ms.saturating_sub(s.oldest_received_ms) as f64 / 1000.0
    };
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    };
    metric(
        "edgegw_http_messages_in_total",
        "counter",
        "Messages accepted by the HTTP adapter.",
        adapters
            .adapters
            .get(crate::metrics::Adapter::Http.label())
            .map_or(0, |a| a.messages_in)
            .to_string(),
    );
    metric(
        "edgegw_http_auth_failures_total",
        "counter",
        "Refused authentications on the HTTP server.",
        m.auth_failures.load(Relaxed).to_string(),
    );
    metric(
        "edgegw_outbox_accepted_total",
        "counter",
        "Messages accepted into the outbox (all adapters).",
        s.accepted_total.to_string(),
    );
    metric(
        "edgegw_outbox_acked_total",
        "counter",
        "Messages acknowledged by the broker (out).",
        s.acked_total.to_string(),
    );
    metric(
        "edgegw_outbox_queued",
        "gauge",
        "Messages waiting in the outbox.",
        s.queued.to_string(),
    );
    metric(
        "edgegw_outbox_queued_bytes",
        "gauge",
        "Bytes waiting in the outbox.",
        s.queued_bytes.to_string(),
    );
    metric(
        "edgegw_outbox_oldest_age_seconds",
        "gauge",
        "Age of the oldest queued message.",
        format!("{oldest_age:.3}"),
    );
    metric(
        "edgegw_auth_audit_dropped_total",
        "counter",
        "Audit events dropped (queue full).",
        state.auth.audit_dropped().to_string(),
    );
    if let Some(status) = &state.status {
        let report = status.report();
        let up = &report.uplink;
        let current = serde_json::to_value(up.state).unwrap_or_default();
        let current = current.as_str().unwrap_or("unknown");
        let _ = write!(
            out,
            "# HELP edgegw_uplink_state Uplink state (1 for the current one).\n# TYPE edgegw_uplink_state gauge\n"
        );
        for name in ["disabled", "connecting", "connected", "backoff", "stopped"] {
            let _ = writeln!(
                out,
                "edgegw_uplink_state{{state=\"{name}\"}} {}",
                u8::from(name == current)
            );
        }
        let _ = write!(
            out,
            "# HELP edgegw_uplink_published_total Messages published upstream.\n# TYPE edgegw_uplink_published_total counter\nedgegw_uplink_published_total {}\n\
             # HELP edgegw_uplink_delivered_total Messages acknowledged by the broker.\n# TYPE edgegw_uplink_delivered_total counter\nedgegw_uplink_delivered_total {}\n\
             # HELP edgegw_uplink_refused_total Messages the broker refused (MQTT 5 PUBACK error); kept and resent.\n# TYPE edgegw_uplink_refused_total counter\nedgegw_uplink_refused_total {}\n\
             # HELP edgegw_uplink_connects_total Uplink connections made.\n# TYPE edgegw_uplink_connects_total counter\nedgegw_uplink_connects_total {}\n",
            up.published_total, up.delivered_total, up.refused_total, up.connects_total
        );
    }
    // Per-adapter counts, DTLS session table, messages out (crate::metrics).
    adapters.render_prometheus(s.acked_total, &mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

// ---------------------------------------------------------------------------------------------
// Tokens

#[derive(Debug, Deserialize)]
struct IssueRequest {
    #[serde(alias = "email", alias = "identity")]
    username: Option<String>,
    #[serde(alias = "secret")]
    password: Option<String>,
}

async fn issue_token(
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
    let pair = state
        .tokens
        .issue(&admin.email)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((StatusCode::CREATED, Json(pair)).into_response())
}

async fn refresh_token(State(state): St, headers: HeaderMap) -> Result<Response, ApiError> {
    let token = bearer(&headers).ok_or_else(ApiError::unauthorized)?;
    let subject = state.tokens.verify(token, Kind::Refresh).map_err(|_| {
        HttpMetrics::inc(&state.metrics.auth_failures);
        ApiError::unauthorized()
    })?;
    if subject != state.config.standalone.email {
        return Err(ApiError::unauthorized());
    }
    let pair = state
        .tokens
        .issue(&subject)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((StatusCode::CREATED, Json(pair)).into_response())
}

#[derive(Debug, Deserialize, Default)]
struct RotateKey {
    #[serde(default)]
    revoke_previous: bool,
}

/// Makes a new JWT signing key (administrator only: the standalone token or an access token).
/// Tokens signed by the old key stay valid until they expire, unless `revoke_previous`.
async fn rotate_key(
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
        axum::Extension(super::audit::AuditEntity(ids.kid.clone())),
        Json(json!({
            "kid": ids.kid,
            "previous_kid": ids.previous_kid,
            "revoked_previous": revoke_previous,
        })),
    )
        .into_response())
}

// ---------------------------------------------------------------------------------------------
// Clients

fn client_json(c: &Client, with_secret: bool) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        let mut creds = json!({ "identity": c.identity });
        if with_secret {
            creds["secret"] = json!(c.secret);
        }
        obj.insert("credentials".into(), creds);
    }
    v
}

#[derive(Debug, Deserialize)]
struct Credentials {
    identity: Option<String>,
    secret: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CreateClient {
    name: Option<String>,
    credentials: Option<Credentials>,
    identity: Option<String>,
    metadata: Option<Value>,
    status: Option<String>,
}

fn metadata_text(m: Option<Value>) -> Option<String> {
    m.map(|v| v.to_string())
}

async fn create_client(
    State(state): St,
    headers: HeaderMap,
    Json(req): Json<CreateClient>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?.require("clients", "create", None)?;
    let (identity, secret) = match req.credentials {
        Some(c) => (c.identity.or(req.identity), c.secret),
        None => (req.identity, None),
    };
    let identity = identity.or_else(|| req.name.clone()).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "credentials.identity (or name) is required",
        )
    })?;
    let disabled = match req.status.as_deref() {
        None | Some("enabled") => false,
        Some("disabled") => true,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "status must be enabled or disabled",
            ));
        }
    };
    let name = req.name;
    let metadata = metadata_text(req.metadata);
    let client = with_db(&state, move |db| {
        let c = db.add_client(
            &identity,
            name.as_deref(),
            secret.as_deref(),
            metadata.as_deref(),
        )?;
        if disabled {
            let secret = c.secret.clone();
            let mut c = db.set_client_enabled(&c.id, false)?;
            c.secret = secret;
            return Ok(c);
        }
        Ok(c)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Extension(super::audit::AuditEntity(client.id.clone())),
        Json(client_json(&client, true)),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
struct Page {
    offset: Option<usize>,
    limit: Option<usize>,
}

impl Page {
    fn bounds(&self) -> (usize, usize) {
        (
            self.offset.unwrap_or(0),
            self.limit.unwrap_or(10).clamp(1, 100),
        )
    }

    /// `{total, offset, limit, <key>: [...]}`: this page of `all`, each item shown by `show`.
    fn json<T>(&self, key: &str, all: &[T], show: impl Fn(&T) -> Value) -> Json<Value> {
        let (offset, limit) = self.bounds();
        let items: Vec<Value> = all.iter().skip(offset).take(limit).map(show).collect();
        Json(json!({ "total": all.len(), "offset": offset, "limit": limit, key: items }))
    }
}

async fn list_clients(
    State(state): St,
    headers: HeaderMap,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.require("clients", "read", None)?;
    let all = with_db(&state, |db| db.list_clients()).await?;
    Ok(page.json("clients", &all, |c| client_json(c, false)))
}

async fn get_client(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let p = authenticate(&state, &headers)?;
    let c = with_db(&state, move |db| db.client(&id)).await?;
    p.require("clients", "read", Some(&c.id))?;
    Ok(Json(client_json(&c, false)))
}

#[derive(Debug, Deserialize)]
struct UpdateClient {
    name: Option<String>,
    metadata: Option<Value>,
}

/// Resolves `key` (id or identity) to the client id, then checks the principal's scope on it.
async fn authorized_client(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    key: String,
    op: &str,
) -> Result<String, ApiError> {
    let p = authenticate(state, headers)?;
    let c = with_db(state, move |db| db.client(&key)).await?;
    p.require("clients", op, Some(&c.id))?;
    Ok(c.id)
}

async fn update_client(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<UpdateClient>,
) -> Result<Json<Value>, ApiError> {
    let id = authorized_client(&state, &headers, id, "update").await?;
    let metadata = metadata_text(req.metadata);
    let c = with_db(&state, move |db| {
        db.update_client(&id, req.name.as_deref(), metadata.as_deref())
    })
    .await?;
    Ok(Json(client_json(&c, false)))
}

async fn set_enabled(
    state: Arc<AppState>,
    headers: HeaderMap,
    id: String,
    enabled: bool,
) -> Result<Json<Value>, ApiError> {
    let id = authorized_client(&state, &headers, id, "update").await?;
    let c = with_db(&state, move |db| db.set_client_enabled(&id, enabled)).await?;
    Ok(Json(client_json(&c, false)))
}

async fn enable_client(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_enabled(state, headers, id, true).await
}

async fn disable_client(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_enabled(state, headers, id, false).await
}

async fn delete_client(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = authorized_client(&state, &headers, id, "delete").await?;
    with_db(&state, move |db| db.remove_client(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, Default)]
struct RotateSecret {
    secret: Option<String>,
}

async fn rotate_secret(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<RotateSecret>>,
) -> Result<Json<Value>, ApiError> {
    let id = authorized_client(&state, &headers, id, "update").await?;
    let secret = body.map(|Json(b)| b.secret).unwrap_or_default();
    let c = with_db(&state, move |db| db.rotate_secret(&id, secret.as_deref())).await?;
    Ok(Json(client_json(&c, true)))
}

async fn client_connections(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = authorized_client(&state, &headers, id, "read").await?;
    let list = with_db(&state, move |db| db.connections_of(&id)).await?;
    let items: Vec<Value> = list
        .into_iter()
        .map(|(ch, g)| json!({ "channel": ch, "publish": g.publish, "subscribe": g.subscribe }))
        .collect();
    Ok(Json(json!({ "total": items.len(), "connections": items })))
}

// ---------------------------------------------------------------------------------------------
// Channels and connections

#[derive(Debug, Deserialize)]
struct CreateChannel {
    name: String,
    domain_id: Option<String>,
    metadata: Option<Value>,
    /// Caller-chosen local id (e.g. the SuperMQ channel id it mirrors).
    id: Option<String>,
    /// The channel's id upstream [default: the local id].
    upstream_id: Option<String>,
}

async fn create_channel(
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
        axum::Extension(super::audit::AuditEntity(ch.id.clone())),
        Json(ch),
    )
        .into_response())
}

async fn list_channels(
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

async fn get_channel(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let p = authenticate(&state, &headers)?;
    let ch = with_db(&state, move |db| db.channel(&id)).await?;
    p.require("channels", "read", Some(&ch.id))?;
    Ok(Json(serde_json::to_value(ch).unwrap_or_default()))
}

async fn delete_channel(
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
struct ConnectRequest {
    client_ids: Vec<String>,
    channel_ids: Vec<String>,
    /// `publish` and/or `subscribe`; default both.
    types: Option<Vec<String>>,
}

async fn connect_or_not(
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
    Ok((status, axum::Extension(super::audit::AuditEntity(entity))).into_response())
}

async fn connect(
    State(state): St,
    headers: HeaderMap,
    Json(req): Json<ConnectRequest>,
) -> Result<Response, ApiError> {
    connect_or_not(state, headers, req, true).await
}

async fn disconnect(
    State(state): St,
    headers: HeaderMap,
    Json(req): Json<ConnectRequest>,
) -> Result<Response, ApiError> {
    connect_or_not(state, headers, req, false).await
}

// ---------------------------------------------------------------------------------------------
// Certificates and audit

async fn list_certs(State(state): St, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.require("certs", "read", None)?;
    let all = state.auth.list_certificates()?;
    Ok(Json(json!({ "total": all.len(), "certs": all })))
}

async fn revoke_cert(
    State(state): St,
    headers: HeaderMap,
    Path(serial): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.require("certs", "delete", Some(&serial))?;
    let auth = state.auth.clone();
    let revoked = tokio::task::spawn_blocking(move || auth.revoke_certificate(&serial))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store task failed"))??;
    if revoked.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no unrevoked certificate matches",
        ));
    }
    Ok(Json(json!({ "revoked": revoked })))
}

#[derive(Debug, Deserialize)]
struct IssueCert {
    client_id: String,
    /// e.g. `"8760h"`; default one year.
    ttl: Option<String>,
    /// PEM CSR: sign it instead of generating a key (the key stays on the device).
    csr: Option<String>,
}

async fn issue_cert(
    State(state): St,
    headers: HeaderMap,
    Json(req): Json<IssueCert>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?.require("certs", "create", None)?;
    if req.csr.as_ref().is_some_and(|c| c.len() > 16 * 1024) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "csr is too large"));
    }
    let config = state.config.clone();
    let auth = state.auth.clone();
    let result = tokio::task::spawn_blocking(move || {
        let out = crate::pki::issue_in_memory(
            &config,
            &req.client_id,
            req.ttl.as_deref().unwrap_or("8760h"),
            req.csr.as_deref(),
        )?;
        auth.reload_now()?;
        anyhow::Ok(out)
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "certificate task failed"))?;
    let (record, issued) = result.map_err(|e| {
        let status = if let Some(a) = e.downcast_ref::<AuthError>() {
            return ApiError::from(AuthError::Invalid(a.to_string())).with_status(match a {
                AuthError::NotFound { .. } => StatusCode::NOT_FOUND,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            });
        } else if let Some(p) = e.downcast_ref::<crate::pki::PkiCommandError>() {
            match p {
                crate::pki::PkiCommandError::BadTtl { .. } => StatusCode::BAD_REQUEST,
                crate::pki::PkiCommandError::NoDeviceCa => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            }
        } else if e.downcast_ref::<certs::PkiError>().is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError::new(status, e.to_string())
    })?;
    Ok((
        StatusCode::CREATED,
        axum::Extension(super::audit::AuditEntity(record.serial_hex.clone())),
        Json(json!({
            "serial": record.serial_hex,
            "client_id": record.client_id,
            "fingerprint_sha256": record.fingerprint_sha256_hex,
            "not_before": record.not_before,
            "not_after": record.not_after,
            "certificate": issued.cert_pem,
            "key": issued.key_pem,
        })),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    limit: Option<u32>,
}

async fn audit(
    State(state): St,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.require("audit", "read", None)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let events = with_db(&state, move |db| db.recent_audit(limit)).await?;
    let items: Vec<Value> = events
        .into_iter()
        .map(|e| {
            json!({
                "at_ms": e.at_ms, "method": e.method, "identity": e.identity,
                "client_id": e.client_id, "remote": e.remote, "outcome": e.outcome,
                "actor": e.actor, "action": e.action, "entity_type": e.entity_type,
                "entity_id": e.entity_id, "reason": e.reason,
            })
        })
        .collect();
    Ok(Json(json!({ "total": items.len(), "events": items })))
}

// ---------------------------------------------------------------------------------------------
// PATs (administrator only)

#[derive(Debug, Deserialize)]
struct CreatePat {
    name: String,
    #[serde(default)]
    description: String,
    /// e.g. `"720h"`; default 30 days.
    duration: Option<String>,
}

fn parse_duration(text: Option<&str>) -> Result<std::time::Duration, ApiError> {
    match text {
        None => Ok(std::time::Duration::from_secs(30 * 86_400)),
        Some(t) => t
            .parse::<crate::config::value::Duration>()
            .map(crate::config::value::Duration::get)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("duration: {e}"))),
    }
}

async fn pat_blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(&super::pats::PatStore) -> Result<T, PatError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || f(&state.pats))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "PAT task failed"))?
        .map_err(ApiError::from)
}

fn pat_with_secret(pat: &super::pats::Pat, secret: &str) -> Value {
    let mut v = serde_json::to_value(pat).unwrap_or_default();
    v["secret"] = json!(secret);
    v
}

async fn create_pat(
    State(state): St,
    headers: HeaderMap,
    Json(req): Json<CreatePat>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?.admin_only()?;
    let duration = parse_duration(req.duration.as_deref())?;
    let now = crate::auth::store::now_unix();
    let (pat, secret) = pat_blocking(&state, move |s| {
        s.create(&req.name, &req.description, duration, now)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Extension(super::audit::AuditEntity(pat.id.clone())),
        Json(pat_with_secret(&pat, &secret)),
    )
        .into_response())
}

async fn list_pats(State(state): St, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.admin_only()?;
    let pats = state.pats.list();
    Ok(Json(json!({ "total": pats.len(), "pats": pats })))
}

async fn get_pat(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.admin_only()?;
    Ok(Json(
        serde_json::to_value(state.pats.get(&id)?).unwrap_or_default(),
    ))
}

async fn delete_pat(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    authenticate(&state, &headers)?.admin_only()?;
    pat_blocking(&state, move |s| s.delete(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke_pat(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.admin_only()?;
    let pat = pat_blocking(&state, move |s| s.revoke(&id)).await?;
    Ok(Json(serde_json::to_value(pat).unwrap_or_default()))
}

#[derive(Debug, Deserialize, Default)]
struct ResetPat {
    duration: Option<String>,
}

async fn reset_pat(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<ResetPat>>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&state, &headers)?.admin_only()?;
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let duration = parse_duration(body.duration.as_deref())?;
    let now = crate::auth::store::now_unix();
    let (pat, secret) = pat_blocking(&state, move |s| s.reset(&id, duration, now)).await?;
    Ok(Json(pat_with_secret(&pat, &secret)))
}

#[derive(Debug, Deserialize)]
struct Scopes {
    scopes: Vec<Scope>,
}

async fn add_scope(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<Scopes>,
) -> Result<Json<Value>, ApiError> {
    change_scopes(&state, &headers, id, req, true).await
}

async fn remove_scope(
    State(state): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(req): Json<Scopes>,
) -> Result<Json<Value>, ApiError> {
    change_scopes(&state, &headers, id, req, false).await
}

/// Adds (`add`) or removes the scopes of PAT `id`; the standalone admin only.
async fn change_scopes(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    id: String,
    req: Scopes,
    add: bool,
) -> Result<Json<Value>, ApiError> {
    authenticate(state, headers)?.admin_only()?;
    let pat = pat_blocking(state, move |s| {
        if add {
            s.add_scopes(&id, &req.scopes)
        } else {
            s.remove_scopes(&id, &req.scopes)
        }
    })
    .await?;
    Ok(Json(serde_json::to_value(pat).unwrap_or_default()))
}

// ---------------------------------------------------------------------------------------------
// HTTP adapter

async fn publish(
    State(state): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((domain, channel)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    accept_message(&state, peer, &domain, &channel, "", &headers, body).await
}

async fn publish_subtopic(
    State(state): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((domain, channel, subtopic)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    accept_message(&state, peer, &domain, &channel, &subtopic, &headers, body).await
}

/// `Authorization: Client <secret>` (SuperMQ); `Basic`-less on purpose.
fn client_secret(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, secret) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("client").then(|| secret.trim())
}

fn ingest_error(e: &IngestError) -> ApiError {
    match e {
        IngestError::Busy { retry_after } => ApiError {
            retry_after: Some(retry_after.as_secs().max(1)),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "outbox full, retry later")
        },
        IngestError::TooLarge { max } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("payload larger than {max} bytes"),
        ),
        IngestError::Closed => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
        IngestError::Storage(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "outbox storage failed")
        }
    }
}

async fn accept_message(
    state: &AppState,
    peer: SocketAddr,
    domain: &str,
    channel: &str,
    subtopic: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let ip = Some(peer.ip());
    state.auth.throttle_check(ip, None).map_err(|t| ApiError {
        retry_after: Some(t.retry_after.as_secs().max(1)),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed authentications",
        )
    })?;
    let secret = client_secret(headers).ok_or_else(|| {
        HttpMetrics::inc(&state.metrics.auth_failures);
        ApiError::unauthorized()
    })?;
    let client = state
        .auth
        .authenticate_secret_from(ip, secret.as_bytes())
        .map_err(|e| {
            HttpMetrics::inc(&state.metrics.auth_failures);
            if e.is_unauthenticated() {
                ApiError::unauthorized()
            } else {
                ApiError::from(e)
            }
        })?;
    let ch = state
        .auth
        .authorize(&client, channel, Op::Publish)
        .map_err(|e| {
            if e.is_forbidden() {
                ApiError::forbidden()
            } else {
                ApiError::from(e)
            }
        })?;
    if !ch.domain_id.is_empty() && ch.domain_id != domain {
        return Err(ApiError::forbidden());
    }
    let subtopic = crate::topic::validate_subtopic(subtopic)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let content_format = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(128).collect::<String>());
    let Some(content_format) = content_format else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type is required",
        ));
    };
    let domain_id = if ch.domain_id.is_empty() {
        domain.to_owned()
    } else {
        ch.domain_id
    };
    let msg = Message {
        client_id: client.id,
        channel_id: ch.id,
        domain_id,
        subtopic,
        content_format: Some(content_format),
        payload: body,
        received_at: SystemTime::now(),
    };
    let receipt = state.outbox.accept(msg).map_err(|e| ingest_error(&e))?;
    receipt.await.map_err(|e| ingest_error(&e))?;
    // Counted as accepted by crate::metrics::http_adapter (the 202).
    Ok(StatusCode::ACCEPTED)
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

    use axum::body::Body;
    use tower::ServiceExt as _;

    use super::*;
    use crate::http::test_state;

    const OPENAPI: &str = include_str!("../../../docs/openapi.yaml");

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
