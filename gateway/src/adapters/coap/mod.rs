//! CoAP (udp/5683) and CoAP-over-DTLS (udp/5684) adapters: the sensor-facing intake.
//!
//! `proto` is the sans-IO CoAP server core, `dtls` the DTLS session table over dimpl, `task`
//! the async shells that own the sockets. Sensor requests are decided by [`crate::intake`]
//! (authentication, authorization, durability); the DTLS table asks its credentials of a
//! [`task::Backend`], so this module never touches SQLite itself.

pub mod backend;
pub mod dtls;
pub mod proto;
pub mod task;

use std::sync::Arc;

use anyhow::Context as _;
use tracing::{info, warn};

use crate::auth::AuthStore;
use crate::config::Config;
use crate::config::ConfigFileError;
use crate::pipeline::Pipeline;
use crate::runtime::supervisor::{Stage, Supervisor};

/// The CoAP core limits from `[coap]`.
pub fn server_config(config: &Config) -> proto::ServerConfig {
    proto::ServerConfig {
        max_payload: usize::try_from(config.coap.max_payload.0).unwrap_or(usize::MAX),
        max_pending: config.coap.max_pending,
        max_observers: config.coap.max_observers,
        max_dedup_entries: config.coap.max_dedup_entries,
        initial_message_id: initial_message_id(),
        ..proto::ServerConfig::default()
    }
}

fn initial_message_id() -> u16 {
    let mut b = [0u8; 2];
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let _ = provider.secure_random.fill(&mut b);
    u16::from_be_bytes(b)
}

/// The DTLS listener settings from `[coap_dtls]`; `None` when cert or key is unset. Files that
/// cannot be used are a configuration error (exit 78).
pub fn dtls_settings(config: &Config) -> anyhow::Result<Option<dtls::DtlsSettings>> {
    let c = &config.coap_dtls;
    let (Some(cert_path), Some(key_path)) = (&c.cert, &c.key) else {
        return Ok(None);
    };
    let file_error = |what: &'static str, path: &std::path::Path, reason: String| ConfigFileError {
        what,
        path: path.display().to_string(),
        reason,
    };
    let chain = certs::load_certificates(cert_path)
        .map_err(|e| file_error("coap_dtls.cert", cert_path, e.to_string()))?;
    let key = certs::load_private_key(key_path)
        .map_err(|e| file_error("coap_dtls.key", key_path, e.to_string()))?;
    let client_cas = match &c.client_ca_certs {
        Some(path) => certs::load_certificates(path)
            .map_err(|e| file_error("coap_dtls.client_ca_certs", path, e.to_string()))?,
        None => Vec::new(),
    };
    let client_intermediates = match &c.client_intermediate_certs {
        Some(path) => certs::load_certificates(path)
            .map_err(|e| file_error("coap_dtls.client_intermediate_certs", path, e.to_string()))?,
        None => Vec::new(),
    };
    let leaf = chain
        .first()
        .ok_or_else(|| file_error("coap_dtls.cert", cert_path, "no certificate".into()))?;
    Ok(Some(dtls::DtlsSettings {
        certificate: dimpl::DtlsCertificate {
            certificate: leaf.to_vec(),
            private_key: key.secret_der().to_vec(),
        },
        client_cas,
        client_intermediates,
        max_sessions: c.max_sessions,
        max_handshakes: c.max_handshakes,
        max_sessions_per_client: c.max_sessions_per_client,
        handshake_timeout: c.handshake_timeout.get(),
        idle_timeout: c.idle_timeout.get(),
        server_only_auth: c.server_only_auth,
    }))
}

/// Receive buffer asked for each listener: a burst from many sensors must not overflow the
/// kernel's default (~200 KiB) while the task is busy. Capped by `net.core.rmem_max`.
const RECV_BUFFER_BYTES: usize = 4 << 20;

fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let context = || format!("cannot bind the {what} listener to udp {addr}");
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .with_context(context)?;
    if addr.is_ipv6() {
        // `[::]` serves IPv4 too, as a plain std bind would with the Linux default.
        socket.set_only_v6(false).with_context(context)?;
    }
    if let Err(e) = socket.set_recv_buffer_size(RECV_BUFFER_BYTES) {
        warn!("{what}: cannot enlarge the receive buffer: {e}");
    }
    socket.bind(&addr.into()).with_context(context)?;
    socket.set_nonblocking(true)?;
    Ok(tokio::net::UdpSocket::from_std(socket.into())?)
}

/// Binds a listener. A gateway that cannot listen must not pretend to run (error); in the
/// development profile, where several daemons may share a machine (and the test suite runs
/// several at once), a taken port only disables that listener, loudly.
fn bind_or_skip(
    config: &Config,
    addr: std::net::SocketAddr,
    what: &str,
) -> anyhow::Result<Option<tokio::net::UdpSocket>> {
    match bind(addr, what) {
        Ok(s) => Ok(Some(s)),
        Err(e) if config.profile.is_dev() => {
            warn!("{e:#}: the {what} listener is off (development profile)");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Binds the CoAP and CoAPS listeners and runs them in the intake stage (call inside the
/// runtime, before "ready").
pub fn start(
    config: &Config,
    supervisor: &Supervisor,
    auth: &AuthStore,
    pipeline: &Pipeline,
) -> anyhow::Result<()> {
    let backend: Arc<dyn task::Backend> = Arc::new(backend::StoreBackend { auth: auth.clone() });
    let intake = crate::intake::Intake::new(
        auth.clone(),
        pipeline.outbox.clone(),
        pipeline.downlink.clone(),
    )
    .with_gateway_domain(&config.gateway.domain_id);
    if !config.coap.enabled {
        info!("coap listener disabled (coap.enabled = false)");
    } else if let Some(socket) = bind_or_skip(config, config.coap.bind, "CoAP")? {
        let (core, backend, intake, token) = (
            server_config(config),
            backend.clone(),
            intake.clone(),
            supervisor.token(Stage::Intake),
        );
        let metrics = pipeline.status.metrics().clone();
        supervisor.spawn(Stage::Intake, async move {
            if let Err(e) = task::serve(socket, core, None, backend, intake, metrics, token).await {
                tracing::error!("coap listener failed: {e}");
            }
        });
    }
    match dtls_settings(config)? {
        Some(settings) => {
            match (settings.client_cas.is_empty(), settings.server_only_auth) {
                (true, false) => {
                    warn!("coap_dtls.client_ca_certs is not set: CoAPS accepts DTLS-PSK only");
                }
                (true, true) => warn!(
                    "coap_dtls.client_ca_certs is not set: CoAPS accepts DTLS-PSK and \
                     server-only sessions (secret in ?auth=), no device certificates"
                ),
                _ => {}
            }
            if settings.server_only_auth {
                info!(
                    "coaps: server-only sessions (no client certificate, secret in each request's \
                     query) are on; coap_dtls.server_only_auth = false turns them off"
                );
            }
            let sessions = dtls::Sessions::new(
                settings,
                Arc::new(task::BackendCredentials(backend.clone())),
            )
            .map_err(|e| ConfigFileError {
                what: "coap_dtls",
                path: config
                    .coap_dtls
                    .cert
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                reason: e.to_string(),
            })?;
            if let Some(socket) = bind_or_skip(config, config.coap_dtls.bind, "CoAPS")? {
                let (core, token) = (server_config(config), supervisor.token(Stage::Intake));
                let metrics = pipeline.status.metrics().clone();
                supervisor.spawn(Stage::Intake, async move {
                    let sessions = Some(sessions);
                    if let Err(e) =
                        task::serve(socket, core, sessions, backend, intake, metrics, token).await
                    {
                        tracing::error!("coaps listener failed: {e}");
                    }
                });
            }
        }
        None => {
            if let Some(reason) = config.coap_dtls.disabled_reason() {
                warn!("{reason}: the CoAPS (DTLS) listener is off");
            }
        }
    }
    Ok(())
}
