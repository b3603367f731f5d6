//! The HTTP server: the SuperMQ-style management API (tokens, clients, channels, connections,
//! certificates, audit, PATs, health, metrics) and the HTTP adapter, on one listener.
//!
//! `server.rs`-shaped (mini-redis): the composition root binds the listener before READY
//! ([`crate::runtime::listeners`]), [`prepare`] builds the server state around it and [`serve`]
//! runs it on the intake stage. HTTPS when `http.server_cert`/`server_key` are set (config
//! built by [`crate::tls::http_server`]); plain HTTP only on loopback (refused by the config
//! check, exit 78). Bounded: connections (`max_connections`), bodies (`max_body` → 413),
//! header read and request time (`request_timeout`). Handlers never log secrets or tokens.

pub mod adapter;
pub mod audit;
pub mod pats;
mod routes;
pub mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
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

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub auth: AuthStore,
    pub outbox: Outbox,
    pub auth_db: PathBuf,
    pub tokens: tokens::Tokens,
    pub pats: pats::PatStore,
    pub config: Config,
    pub metrics: HttpMetrics,
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
        tokens: tokens::Tokens::open(
            &config.gateway.state_dir,
            http.access_token_ttl.get(),
            http.refresh_token_ttl.get(),
        )?,
        pats: pats::PatStore::open(&config.gateway.state_dir)?,
        config: config.clone(),
        metrics: HttpMetrics::default(),
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

/// Accepts connections until `token` is cancelled; at most `max_connections` at once. Each
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
    let permits = Arc::new(Semaphore::new(http.max_connections));
    let app = router(state);
    let timeout = http.request_timeout.get();
    loop {
        let permit = tokio::select! {
            () = token.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
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
        let app = app.clone();
        let tls = tls.clone();
        let token = token.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    let app = app.clone();
                    async move {
                        use tower::ServiceExt as _;
                        match tokio::time::timeout(
                            timeout,
                            app.oneshot(req.map(axum::body::Body::new)),
                        )
                        .await
                        {
                            Ok(r) => r,
                            Err(_) => Ok(routes::timeout_response()),
                        }
                    }
                },
            );
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .max_buf_size(64 * 1024);
            let result = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_conn(&builder, TokioIo::new(s), service, &token).await,
                        Ok(Err(e)) => {
                            debug!(%peer, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => return,
                    }
                }
                None => serve_conn(&builder, TokioIo::new(stream), service, &token).await,
            };
            if let Err(e) = result {
                debug!(%peer, "HTTP connection ended: {e}");
            }
        });
    }
}

async fn serve_conn<I, S>(
    builder: &hyper::server::conn::http1::Builder,
    io: I,
    service: S,
    token: &CancellationToken,
) -> Result<(), hyper::Error>
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
        r = conn.as_mut() => r,
        () = token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
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
        tokens: tokens::Tokens::new(
            &[1; 32],
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(60),
        ),
        pats: pats::PatStore::open(dir).unwrap(),
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
    let config = crate::config::load_from(
        &crate::config::Source::None,
        crate::config::Profile::Production,
        Vec::<(std::ffi::OsString, std::ffi::OsString)>::new(),
    )
    .unwrap();
    let auth = crate::auth::AuthStore::open(&dir.join("auth.db"), &config.auth).unwrap();
    let (outbox, worker) =
        crate::outbox::Outbox::open(&dir.join("outbox.db"), &config.outbox).unwrap();
    let state = test_state_over(dir, auth, outbox);
    (state, worker)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::runtime::supervisor::{Shutdown, Signal, Stage, Supervisor};

    /// A publish whose body is still arriving when SIGTERM comes is answered (202, durable),
    /// and the pipeline stage is not cancelled while it is open: the connection task is tracked by the
    /// supervisor's intake stage, so the ordered shutdown waits for it.
    #[tokio::test]
    async fn shutdown_waits_for_an_http_publish_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let (state, _worker) = test_state(dir.path());
        let secret = state
            .auth
            .ensure_demo(&state.config.gateway.domain_id)
            .unwrap()
            .expect("demo sensor created");
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = Listener {
            listener: tcp,
            tls: None,
            state: Arc::clone(&state),
        };
        let supervisor = Supervisor::new();
        let (intake, pipeline) = (
            supervisor.token(Stage::Intake),
            supervisor.token(Stage::Pipeline),
        );
        supervisor.spawn(
            Stage::Intake,
            serve(listener, supervisor.tracker(Stage::Intake), intake.clone()),
        );
        let (signals, rx) = tokio::sync::mpsc::channel(4);
        let run = tokio::spawn(supervisor.run(rx, Duration::from_secs(30)));

        let body = b"{\"t\":21.5}";
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /m/{}/c/demo HTTP/1.1\r\nHost: gw\r\nAuthorization: Client {secret}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            state.config.gateway.domain_id,
            body.len()
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        // `100 Continue` comes once the handler reads the body: the request is in flight (a
        // request whose head the server has not read yet is not, and may be refused).
        let mut continued = Vec::new();
        while !continued.ends_with(b"\r\n\r\n") {
            let mut byte = [0; 1];
            let n = conn.read(&mut byte).await.unwrap();
            assert!(n > 0, "closed before 100 Continue");
            continued.push(byte[0]);
        }
        assert!(
            continued.starts_with(b"HTTP/1.1 100"),
            "{}",
            String::from_utf8_lossy(&continued)
        );
        conn.write_all(&body[..4]).await.unwrap();
        signals.send(Signal::Terminate).await.unwrap();
        intake.cancelled().await;
        // The request is open: the pipeline must not be cancelled while it is. Without
        // tracking it is cancelled at once (the accept loop has ended); a second is ample.
        let cancelled_early = tokio::time::timeout(Duration::from_secs(1), pipeline.cancelled())
            .await
            .is_ok();
        if cancelled_early {
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.read_to_end(&mut got)).await;
            panic!(
                "pipeline cancelled with a publish in flight; the connection got: {}",
                String::from_utf8_lossy(&got)
            );
        }
        conn.write_all(&body[4..]).await.unwrap();
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
        assert_eq!(run.await.unwrap(), Shutdown::Clean);
        assert_eq!(state.outbox.stats().queued, 1, "the message is durable");
    }
}
