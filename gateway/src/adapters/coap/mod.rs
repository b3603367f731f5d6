//! CoAP (udp/5683) and CoAP-over-DTLS (udp/5684) adapters: the sensor-facing intake.
//!
//! `proto` is the sans-IO CoAP server core, `dtls` the DTLS session table over dimpl, `task`
//! the async shells that own the sockets. Sensor requests are decided by [`crate::intake`]
//! (authentication, authorization, durability); the DTLS table asks its credentials of a
//! [`task::Backend`], so this module never touches SQLite itself.

pub mod backend;
mod batch;
mod decisions;
pub mod dtls;
pub mod proto;
pub mod task;

use std::sync::Arc;

use tokio::net::UdpSocket;
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
pub fn dtls_settings(config: &Config) -> Result<Option<dtls::DtlsSettings>, ConfigFileError> {
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

/// Runs the CoAP and CoAPS listeners on the sockets the composition root bound
/// ([`crate::runtime::listeners`]) in the intake stage; `None`: that listener is off.
/// CoAPS needs its DTLS files (`[coap_dtls]`), which are checked here (exit 78 when unusable).
pub fn start(
    config: &Config,
    supervisor: &Supervisor,
    auth: &AuthStore,
    pipeline: &Pipeline,
    coap: Option<UdpSocket>,
    coaps: Option<UdpSocket>,
) -> Result<(), ConfigFileError> {
    let backend: Arc<dyn task::Backend> = Arc::new(backend::StoreBackend {
        auth: auth.clone(),
        tracker: supervisor.tracker(Stage::Intake),
        cancel: supervisor.token(Stage::Intake),
    });
    let intake = crate::intake::Intake::new(
        auth.clone(),
        pipeline.outbox.clone(),
        pipeline.downlink.clone(),
    )
    .with_gateway_domain(&config.gateway.domain_id);
    if let Some(socket) = coap {
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
            if let Some(socket) = coaps {
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
