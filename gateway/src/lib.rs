//! edgegw, the gateway daemon: configuration, CLI, supervisor, and (as they land) adapters,
//! the local auth store, the outbox and the uplink. The binary `edgegw` (main.rs) is the
//! composition root; this library exists so tests can drive the modules directly.

pub mod auth;
pub mod board;
pub mod cli;
pub mod coap;
pub mod config;
pub mod control;
pub mod downlink;
pub mod exit;
pub mod http;
pub mod intake;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod ownership;
pub mod pipeline;
pub mod pki;
pub mod serial;
pub mod supervisor;
pub mod tls;
pub mod topic;
pub mod uplink;
pub mod watchdog;
