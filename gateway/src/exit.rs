//! Process exit statuses (sysexits.h) and how errors map to them. 78 (EX_CONFIG) tells systemd
//! (`RestartPreventExitStatus=78`) that restarting a broken install will not help.

use std::process::ExitCode;

pub const OK: u8 = 0;
pub const FAILURE: u8 = 1;
pub const USAGE: u8 = 64;
pub const UNAVAILABLE: u8 = 69;
pub const CONFIG: u8 = 78;

/// A command whose feature has not landed in this build yet.
#[derive(Debug, thiserror::Error)]
#[error("`edgegw {command}` is not available in this build yet (tracked in issue #{issue})")]
pub struct NotYet {
    pub command: &'static str,
    pub issue: u32,
}

/// The exit status for an error: the first cause in the chain that has a known status decides.
pub fn code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<crate::config::ConfigError>() || cause.is::<ConfigFileError>() {
            return CONFIG;
        }
        if let Some(e) = cause.downcast_ref::<crate::auth::AuthError>() {
            return e.exit_code();
        }
        if let Some(e) = cause.downcast_ref::<crate::pki::PkiCommandError>() {
            return e.exit_code();
        }
        if let Some(e) = cause.downcast_ref::<crate::http::HttpError>() {
            return e.exit_code();
        }
        if cause.is::<NotYet>() {
            return UNAVAILABLE;
        }
        // A corrupt outbox or unusable uplink TLS files: restarting will not help.
        if matches!(
            cause.downcast_ref::<crate::outbox::OutboxError>(),
            Some(crate::outbox::OutboxError::Corrupt { .. })
        ) || cause.is::<crate::uplink::UplinkError>()
        {
            return CONFIG;
        }
        // `edgegw status` without a running daemon.
        if matches!(
            cause.downcast_ref::<crate::control::ControlError>(),
            Some(crate::control::ControlError::NotRunning { .. })
        ) {
            return UNAVAILABLE;
        }
    }
    FAILURE
}

/// A file named by the configuration that exists but cannot be used at start (a state
/// directory that is a file, a key that does not parse). Exits 78 like a config error.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {reason}")]
pub struct ConfigFileError {
    pub what: &'static str,
    pub path: String,
    pub reason: String,
}

/// Prints `error: …` and the cause chain one per line on stderr, and returns the status.
pub fn report(err: &anyhow::Error) -> ExitCode {
    eprintln!("edgegw: error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    ExitCode::from(code_for(err))
}
