//! edgegw, the gateway daemon, grouped like its data path: `adapters` (the wire) -> `intake`
//! (admission) -> `outbox` (durable) -> `uplink` (MQTT over mTLS), with `auth`, `bootstrap` (provisioning from SuperMQ), `downlink`,
//! the management API (`http`), `cli`, `pki`, `config` and the `runtime` (supervisor,
//! watchdog, notify, status, metrics, control socket). The binary `edgegw` (main.rs) is the
//! composition root; this library exists so tests can drive the modules directly.

pub mod adapters;
pub mod auth;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod downlink;
pub mod http;
pub mod intake;
pub mod outbox;
pub mod pipeline;
pub mod pki;
pub mod runtime;
pub mod tls;
pub mod topic;
pub mod uplink;
