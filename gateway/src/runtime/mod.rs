//! Runtime: what keeps the daemon alive and visible, below and beside the data path: the
//! supervisor (tasks, signals, shutdown order), the progress watchdog and systemd notify, the
//! status and metrics types (a bottom layer the control socket and the HTTP API only present),
//! the control socket, the network listeners the composition root binds, board facts, logging,
//! and file ownership hand-over for root CLI runs.

pub mod board;
pub mod control;
pub mod listeners;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod ownership;
pub mod quarantine;
pub mod status;
pub mod supervisor;
pub mod watchdog;
