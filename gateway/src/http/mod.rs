//! The HTTP server: the SuperMQ-style management API (tokens, clients, channels, connections,
//! certificates, audit, PATs, health, metrics) and the HTTP adapter, on one listener.
//!
//! `server.rs`-shaped (mini-redis): the composition root binds the listener before READY
//! ([`crate::runtime::listeners`]), [`prepare`] builds the server state around it and [`serve`]
//! runs it on the intake stage. HTTPS when `http.server_cert`/`server_key` are set (config
//! built by [`crate::tls::http_server`]); plain HTTP only on loopback (refused by the config
//! check, exit 78). Bounded: connections (`max_connections`; when all are taken the most idle
//! one is closed to admit a new one, never one in a request: `conns`), bodies (`max_body` → 413),
//! header read and request time (`request_timeout`). Handlers never log secrets or tokens.

pub mod adapter;
pub mod audit;
mod conns;
pub mod pats;
mod routes;
pub mod sessions;
pub mod tokens;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::auth::AuthStore;
use crate::config::Config;
use crate::outbox::Outbox;

pub use routes::{ROUTES, router};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("HTTPS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Tokens(#[from] tokens::TokenError),
    #[error(transparent)]
    Pats(#[from] pats::PatError),
}

/// Counters for `/metrics` of the whole HTTP server (the HTTP adapter's own are in
/// [`crate::runtime::metrics::Metrics`]).
#[derive(Debug, Default)]
pub struct HttpMetrics {
    pub auth_failures: AtomicU64,
}

impl HttpMetrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Failed authentications on the management API, per remote address (issue 20.6): the auth
/// store's token-bucket policy with its settings (`auth.failure_burst`, `auth.failure_refill`,
/// `auth.throttle_max_tracked`), in buckets of its own. Every 401 the API answers charges the
/// caller's address; while the address has no failure left, each request of it that presents
/// credentials (an `Authorization` header, or the body of `/users/tokens/issue`) is answered
/// 429 with `Retry-After`, the right credentials included, so a guess cannot be confirmed. The
/// HTTP adapter's paths (`/m/…`, `/hc/…`) are throttled by the intake instead.
#[derive(Debug)]
pub struct ApiThrottle {
    buckets: std::sync::Mutex<crate::auth::throttle::Buckets<IpAddr>>,
}

impl ApiThrottle {
    pub fn new(config: &crate::config::AuthConfig) -> Self {
        Self {
            buckets: std::sync::Mutex::new(crate::auth::throttle::Buckets::new(
                config.failure_burst,
                config.failure_refill.get(),
                config.throttle_max_tracked as usize,
            )),
        }
    }

    fn buckets(&self) -> std::sync::MutexGuard<'_, crate::auth::throttle::Buckets<IpAddr>> {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), crate::auth::Throttled> {
        self.buckets().check(&ip.to_canonical(), now)
    }

    pub fn charge(&self, ip: IpAddr, now: Instant) {
        self.buckets().charge(ip.to_canonical(), now);
    }
}

/// `auth.db` connections of the API handlers, kept for reuse (issue 20.15): opening one runs
/// the store's checks (file, schema, integrity) and migrations, which is worth doing once, not
/// on every request. At most [`DbPool::IDLE`] idle connections are kept; one whose work failed
/// is dropped rather than reused. Used on blocking threads only.
#[derive(Debug)]
pub struct DbPool {
    path: PathBuf,
    idle: std::sync::Mutex<Vec<crate::auth::store::Db>>,
    opens: AtomicU64,
}

impl DbPool {
    const IDLE: usize = 4;

    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: std::sync::Mutex::new(Vec::new()),
            opens: AtomicU64::new(0),
        }
    }

    /// An idle connection, or a newly opened (and checked) one.
    pub fn take(&self) -> Result<crate::auth::store::Db, crate::auth::StoreError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        match idle {
            Some(db) => Ok(db),
            None => {
                self.opens.fetch_add(1, Ordering::Relaxed);
                crate::auth::store::Db::open(&self.path)
            }
        }
    }

    /// Gives a connection back after work that succeeded.
    pub fn put(&self, db: crate::auth::store::Db) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < Self::IDLE {
            idle.push(db);
        }
    }

    /// Connections opened so far.
    pub fn opens(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub auth: AuthStore,
    pub outbox: Outbox,
    pub auth_db: PathBuf,
    /// Connections to `auth_db` for the handlers.
    pub db: DbPool,
    pub tokens: tokens::Tokens,
    pub pats: pats::PatStore,
    pub config: Config,
    pub metrics: HttpMetrics,
    pub throttle: ApiThrottle,
    /// Uplink state and totals for `/metrics` (absent in unit tests).
    pub status: Option<crate::runtime::status::StatusHandle>,
    /// The daemon's shared per-adapter counters (adapter `http` is counted by `adapter`).
    pub adapters: crate::runtime::metrics::Metrics,
    /// Where the HTTP adapter hands sensor messages (it carries no downlink, so its hub is
    /// never subscribed to).
    pub intake: crate::intake::Intake,
}

/// A bound listener, ready to serve.
pub struct Listener {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<AppState>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Listener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Loads the signing key and the PAT store and builds TLS around the bound `listener`.
pub fn prepare(
    config: &Config,
    listener: TcpListener,
    auth: AuthStore,
    outbox: Outbox,
    status: Option<crate::runtime::status::StatusHandle>,
) -> Result<Listener, HttpError> {
    let http = &config.http;
    let tls = match http.tls() {
        Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(crate::tls::http_server(
            cert, key,
        )?)),
        None => None,
    };
    let adapters = status
        .as_ref()
        .map(|s| s.metrics().clone())
        .unwrap_or_default();
    let intake = crate::intake::Intake::new(
        auth.clone(),
        outbox.clone(),
        crate::downlink::DownlinkHub::default(),
    )
    .with_gateway_domain(&config.gateway.domain_id);
    let state = Arc::new(AppState {
        intake,
        auth,
        outbox,
        auth_db: crate::auth::path_in(&config.gateway.state_dir),
        db: DbPool::new(crate::auth::path_in(&config.gateway.state_dir)),
        tokens: tokens::Tokens::open(
            &config.gateway.state_dir,
            http.access_token_ttl.get(),
            http.refresh_token_ttl.get(),
            &admin_credential(&config.standalone),
        )?,
        pats: pats::PatStore::open(&config.gateway.state_dir)?,
        config: config.clone(),
        metrics: HttpMetrics::default(),
        throttle: ApiThrottle::new(&config.auth),
        status,
        adapters,
    });
    let addr = listener.local_addr().unwrap_or(http.bind);
    info!(
        %addr,
        scheme = if tls.is_some() { "https" } else { "http" },
        "HTTP API listening"
    );
    Ok(Listener {
        listener,
        tls,
        state,
    })
}

/// What the login sessions are made under: a change of either ends them
/// ([`sessions`]).
fn admin_credential(admin: &crate::config::StandaloneConfig) -> zeroize::Zeroizing<Vec<u8>> {
    let mut c = zeroize::Zeroizing::new(Vec::new());
    c.extend_from_slice(admin.email.as_bytes());
    c.push(0);
    c.extend_from_slice(admin.token.expose().as_bytes());
    c
}

/// Serves the HTTP API and adapter on `listener` (bound by the composition root; `None`: the
/// API is off) on the intake stage.
pub fn start(
    config: &Config,
    supervisor: &crate::runtime::supervisor::Supervisor,
    listener: Option<TcpListener>,
    auth: AuthStore,
    outbox: Outbox,
    status: Option<crate::runtime::status::StatusHandle>,
) -> Result<(), HttpError> {
    use crate::runtime::supervisor::Stage;
    let Some(listener) = listener else {
        return Ok(());
    };
    let listener = prepare(config, listener, auth, outbox, status)?;
    supervisor.spawn(
        Stage::Intake,
        reload_keys_on_sighup(
            Arc::clone(&listener.state),
            supervisor.reloads(),
            supervisor.token(Stage::Intake),
        ),
    );
    supervisor.spawn(
        Stage::Intake,
        serve(
            listener,
            supervisor.tracker(Stage::Intake),
            supervisor.token(Stage::Intake),
        ),
    );
    Ok(())
}

/// Re-reads the JWT signing key file on every SIGHUP (an operator may have replaced it). A
/// bad file is logged and the keys in use stay.
async fn reload_keys_on_sighup(
    state: Arc<AppState>,
    mut reloads: tokio::sync::watch::Receiver<u64>,
    token: CancellationToken,
) {
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            changed = reloads.changed() => if changed.is_err() { break },
        }
        let st = Arc::clone(&state);
        match tokio::task::spawn_blocking(move || st.tokens.reload()).await {
            Ok(Ok(ids)) => info!(
                kid = %ids.kid,
                previous_kid = ids.previous_kid.as_deref().unwrap_or("none"),
                "JWT signing keys reloaded"
            ),
            Ok(Err(e)) => warn!("JWT signing keys not reloaded, the keys in use stay: {e}"),
            Err(e) => warn!("JWT signing key reload task failed: {e}"),
        }
    }
}

/// Accepts connections until `token` is cancelled; at most `max_connections` at once (when
/// all are taken, the most idle one is closed to admit the new one, see `conns`). Each
/// connection runs on `tracker` (the supervisor's intake stage), so shutdown waits for the
/// requests in flight (an HTTP publish waits for its message to be durable) before the
/// pipeline stops; a cancelled connection finishes its current request and closes.
pub async fn serve(listener: Listener, tracker: TaskTracker, token: CancellationToken) {
    let Listener {
        listener,
        tls,
        state,
    } = listener;
    let http = state.config.http.clone();
    let slots = Arc::new(conns::Conns::new(http.max_connections));
    let per_peer = Arc::new(PerPeer::new(per_peer_limit(http.max_connections)));
    let app = router(Arc::clone(&state));
    let timeout = http.request_timeout.get();
    let header_timeout = timeout.min(HEADER_TIMEOUT);
    loop {
        let (stream, peer) = tokio::select! {
            () = token.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!("HTTP accept failed: {e}");
                    // e.g. EMFILE: give the system a moment instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // One address may hold only its share of the slots: the rest is closed at once, so
        // its idle connections cannot keep everyone else out (issue 20.12).
        let Some(peer_slot) = PerPeer::take(&per_peer, peer.ip()) else {
            debug!(%peer, "HTTP connection refused: too many from this address");
            drop(stream);
            continue;
        };
        // All slots taken: the most idle connection is closed to make room (never one in
        // the middle of a request; see `conns`), so idle connections from many addresses
        // cannot keep a client out until their header timeout either.
        let slot = tokio::select! {
            () = token.cancelled() => break,
            slot = slots.admit() => Arc::new(slot),
        };
        let app = app.clone();
        let tls = tls.clone();
        let token = token.clone();
        let state = Arc::clone(&state);
        tracker.spawn(async move {
            let _peer_slot = peer_slot;
            let service = {
                let slot = Arc::clone(&slot);
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    let state = Arc::clone(&state);
                    let slot = Arc::clone(&slot);
                    async move {
                        if !slot.begin_request() {
                            // Chosen to make room just before its header completed: ending.
                            return Ok(closing_response());
                        }
                        let response =
                            answer(app, &state, peer, req.map(axum::body::Body::new), timeout)
                                .await;
                        slot.end_request();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                })
            };
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(64 * 1024);
            let result = match tls {
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(header_timeout, acceptor.accept(stream));
                    let accepted = tokio::select! {
                        () = slot.cut.cancelled() => return,
                        r = handshake => r,
                    };
                    match accepted {
                        Ok(Ok(s)) => {
                            serve_conn(&builder, TokioIo::new(s), service, &token, &slot).await
                        }
                        Ok(Err(e)) => {
                            debug!(%peer, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => return,
                    }
                }
                None => serve_conn(&builder, TokioIo::new(stream), service, &token, &slot).await,
            };
            match result {
                Err(e) => debug!(%peer, "HTTP connection ended: {e}"),
                Ok(true) => debug!(%peer, "idle HTTP connection closed to make room for another"),
                Ok(false) => {}
            }
        });
    }
}

/// The answer of a connection chosen to make room just as its request header completed (its
/// task is cutting it; normally never seen): 503, `Connection: close`.
fn closing_response() -> axum::response::Response {
    let mut r = axum::response::Response::new(axum::body::Body::empty());
    *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    r
}

/// Longest wait for a request's header (from the connection's start or the previous answer),
/// and for the TLS handshake; `http.request_timeout` when shorter. A connection that sends
/// nothing is closed after it.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Connections one remote address may hold: a quarter of `http.max_connections` (at least 1).
fn per_peer_limit(max_connections: usize) -> usize {
    max_connections.div_ceil(4).max(1)
}

/// Open connections per remote address, bounded ([`per_peer_limit`]).
#[derive(Debug)]
struct PerPeer {
    limit: usize,
    open: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
}

/// One connection's place in [`PerPeer`], given back when dropped.
#[derive(Debug)]
struct PeerSlot {
    table: Arc<PerPeer>,
    ip: IpAddr,
}

impl PerPeer {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            open: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<IpAddr, usize>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for `ip`, unless it holds `limit` connections already. The table has at most
    /// one entry per open connection (`max_connections`).
    fn take(table: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let ip = ip.to_canonical();
        let mut open = table.lock();
        let n = open.entry(ip).or_insert(0);
        if *n >= table.limit {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            table: Arc::clone(table),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.table.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// One request: the failed-authentication throttle ([`ApiThrottle`]) around the router, and
/// `request_timeout` (503) on the whole answer.
async fn answer(
    app: axum::Router,
    state: &AppState,
    peer: SocketAddr,
    mut req: axum::extract::Request,
    timeout: std::time::Duration,
) -> axum::response::Response {
    use tower::ServiceExt as _;
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    let path = req.uri().path();
    // The HTTP adapter's paths (publish, SuperMQ's health check) are throttled by the intake.
    let management = !path.starts_with("/m/") && !path.starts_with("/hc/");
    let presents_credentials = req.headers().contains_key(hyper::header::AUTHORIZATION)
        || path.trim_end_matches('/') == "/users/tokens/issue";
    if management
        && presents_credentials
        && let Err(t) = state.throttle.check(peer.ip(), Instant::now())
    {
        return routes::throttled_response(t.retry_after);
    }
    let response = match tokio::time::timeout(timeout, app.oneshot(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(never)) => match never {},
        Err(_) => routes::timeout_response(),
    };
    if management && response.status() == hyper::StatusCode::UNAUTHORIZED {
        state.throttle.charge(peer.ip(), Instant::now());
    }
    response
}

/// Serves one connection until it ends, `token` is cancelled (graceful: the request in
/// progress is finished) or its slot is wanted for another connection: cut at once when it
/// never sent a complete header (`slot.cut`), closed gracefully when idle between requests
/// (`slot.close`). `Ok(true)`: it was closed to make room.
async fn serve_conn<I, S>(
    builder: &hyper::server::conn::http1::Builder,
    io: I,
    service: S,
    token: &CancellationToken,
    slot: &conns::Slot,
) -> Result<bool, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r.map(|()| false),
        () = slot.cut.cancelled() => Ok(true),
        () = slot.close.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await.map(|()| true)
        }
        () = token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await.map(|()| false)
        }
    }
}

/// An [`AppState`] over an existing auth store and outbox (the intake test fixture).
#[cfg(test)]
pub(crate) fn test_state_over(
    dir: &std::path::Path,
    auth: AuthStore,
    outbox: Outbox,
) -> Arc<AppState> {
    let config = crate::config::load_from(
        &crate::config::Source::None,
        crate::config::Profile::Production,
        Vec::<(std::ffi::OsString, std::ffi::OsString)>::new(),
    )
    .unwrap();
    test_state_from(dir, auth, outbox, config)
}

#[cfg(test)]
fn test_state_from(
    dir: &std::path::Path,
    auth: AuthStore,
    outbox: Outbox,
    config: Config,
) -> Arc<AppState> {
    let intake = crate::intake::Intake::new(
        auth.clone(),
        outbox.clone(),
        crate::downlink::DownlinkHub::default(),
    );
    Arc::new(AppState {
        intake,
        auth,
        outbox,
        auth_db: dir.join("auth.db"),
        db: DbPool::new(dir.join("auth.db")),
        tokens: tokens::Tokens::new(
            &[1; 32],
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(60),
        ),
        pats: pats::PatStore::open(dir).unwrap(),
        throttle: ApiThrottle::new(&config.auth),
        config,
        metrics: HttpMetrics::default(),
        status: None,
        adapters: crate::runtime::metrics::Metrics::new(),
    })
}

/// Handler state on fresh SQLite files in `dir`, for the unit tests of the router and its
/// layers. Keep the worker alive as long as the state.
#[cfg(test)]
pub(crate) fn test_state(dir: &std::path::Path) -> (Arc<AppState>, crate::outbox::OutboxWorker) {
    test_state_with(dir, &[])
}

/// [`test_state`] with `EDGEGW_*` settings.
#[cfg(test)]
pub(crate) fn test_state_with(
    dir: &std::path::Path,
    vars: &[(&str, &str)],
) -> (Arc<AppState>, crate::outbox::OutboxWorker) {
    let config = crate::config::load_from(
        &crate::config::Source::None,
        crate::config::Profile::Production,
        vars.iter()
            .map(|(k, v)| (std::ffi::OsString::from(k), std::ffi::OsString::from(v))),
    )
    .unwrap();
    let auth = crate::auth::AuthStore::open(&dir.join("auth.db"), &config.auth).unwrap();
    let (outbox, worker) =
        crate::outbox::Outbox::open(&dir.join("outbox.db"), &config.outbox).unwrap();
    let state = test_state_from(dir, auth, outbox, config);
    (state, worker)
}

#[cfg(test)]
mod tests;
