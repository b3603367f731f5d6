//! The serial sensor adapter: newline-framed text over UARTs and USB-serial adapters.
//!
//! `codec` (pure line codec), `proto` (sans-IO session: authentication state, answers in
//! order, durability), `task` (threads per port, reopen with backoff, the async shell).
//! It decides nothing about who may publish: the auth store does, through [`task::Backend`].

pub mod backend;
pub mod codec;
pub mod proto;
/// Per-port status lives in the status layer (it is read by the control socket).
pub use crate::runtime::status::serial as status;
pub mod task;

use std::sync::Arc;

use hal::serial::{LinuxSerial, SerialOpener};

pub use backend::GatewayBackend;
pub use status::SerialStatus;
use task::{AdapterConfig, Backend, PortSpec};

use crate::config::SerialConfig;
use crate::runtime::supervisor::{Stage, Supervisor};

/// Starts one adapter task per configured port in the intake stage (nothing without ports).
pub fn start(
    config: &SerialConfig,
    backend: Arc<dyn Backend>,
    status: &SerialStatus,
    supervisor: &Supervisor,
) {
    start_with(config, backend, Arc::new(LinuxSerial), status, supervisor);
}

/// As [`start`], with another way of opening ports (tests use hal's fakes).
pub fn start_with(
    config: &SerialConfig,
    backend: Arc<dyn Backend>,
    opener: Arc<dyn SerialOpener>,
    status: &SerialStatus,
    supervisor: &Supervisor,
) {
    let adapter = AdapterConfig {
        max_line: config.max_line,
        max_pending: config.max_pending,
        reopen_min: config.reopen_min.get(),
        reopen_max: config.reopen_max.get(),
    };
    for port in &config.ports {
        let spec = PortSpec {
            path: port.path.clone(),
            settings: port.settings,
            client: port.client.clone(),
        };
        tracing::info!(
            port = %port.path.display(),
            baud = port.baud,
            bound = port.client.as_deref().unwrap_or("-"),
            "serial adapter starting"
        );
        let handle = task::spawn_port(
            spec,
            adapter.clone(),
            Arc::clone(&opener),
            Arc::clone(&backend),
            status.register(&port.path.display().to_string()),
            supervisor.token(Stage::Intake),
        );
        supervisor.spawn(Stage::Intake, async move {
            if let Err(e) = handle.await {
                tracing::error!("serial adapter task failed: {e}");
            }
        });
    }
}
