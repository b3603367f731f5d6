//! Process exit statuses (sysexits.h) and the one table from error to exit status. 78
//! (EX_CONFIG) tells systemd (`RestartPreventExitStatus=78`) that restarting a broken install
//! will not help.
//!
//! This module belongs to the binary (`main.rs` declares it), not to the `gateway` library:
//! no domain module can import it. Domain errors stay typed; this table matches on them.

use std::error::Error as StdError;
use std::process::ExitCode;

use gateway::auth::{AuthError, Invalid, StoreError};
use gateway::bootstrap::BootstrapError;
use gateway::config::{ConfigError, ConfigFileError};
use gateway::http::HttpError;
use gateway::outbox::OutboxError;
use gateway::pipeline::PipelineError;
use gateway::pki::PkiCommandError;
use gateway::runtime::control::ControlError;
use gateway::uplink::UplinkError;

pub const OK: u8 = 0;
pub const FAILURE: u8 = 1;
pub const USAGE: u8 = 64;
pub const UNAVAILABLE: u8 = 69;
pub const CONFIG: u8 = 78;

/// The exit status for an error: the first cause in the chain that has a known status decides.
pub fn code_for(err: &anyhow::Error) -> u8 {
    err.chain().find_map(status_of).unwrap_or(FAILURE)
}

/// The table. `None`: this cause does not decide; look further down the chain.
fn status_of(cause: &(dyn StdError + 'static)) -> Option<u8> {
    if cause.is::<ConfigError>() || cause.is::<ConfigFileError>() {
        return Some(CONFIG);
    }
    if let Some(e) = cause.downcast_ref::<AuthError>() {
        return Some(match e {
            AuthError::Store(s) => auth_store_status(s),
            AuthError::Invalid(_) => USAGE,
            AuthError::Duplicate { .. } | AuthError::NotFound { .. } | AuthError::Random(_) => {
                FAILURE
            }
        });
    }
    if let Some(e) = cause.downcast_ref::<StoreError>() {
        return Some(auth_store_status(e));
    }
    if cause.is::<Invalid>() {
        return Some(USAGE);
    }
    if let Some(e) = cause.downcast_ref::<PkiCommandError>() {
        return Some(match e {
            PkiCommandError::BadTtl { .. } => USAGE,
            PkiCommandError::NoDeviceCa | PkiCommandError::DeviceCa { .. } => CONFIG,
            PkiCommandError::OutputExists { .. }
            | PkiCommandError::ReadCsr { .. }
            | PkiCommandError::NothingToRevoke { .. } => FAILURE,
        });
    }
    if let Some(e) = cause.downcast_ref::<HttpError>() {
        // TLS files and key/PAT files are configuration problems; a port in use is not.
        return Some(match e {
            HttpError::Bind { .. } => FAILURE,
            _ => CONFIG,
        });
    }
    // A corrupt outbox or unusable uplink TLS files: restarting will not help.
    if let Some(e) = cause.downcast_ref::<PipelineError>() {
        return match e {
            PipelineError::Outbox(OutboxError::Corrupt { .. }) | PipelineError::Uplink(_) => {
                Some(CONFIG)
            }
            PipelineError::Outbox(_) => None,
        };
    }
    if matches!(
        cause.downcast_ref::<OutboxError>(),
        Some(OutboxError::Corrupt { .. })
    ) || cause.is::<UplinkError>()
    {
        return Some(CONFIG);
    }
    // Bootstrap: a record or settings that restarting cannot fix; a service that is not there.
    if let Some(e) = cause.downcast_ref::<BootstrapError>() {
        return match e {
            BootstrapError::Record { .. }
            | BootstrapError::Url(_)
            | BootstrapError::Tls(_)
            | BootstrapError::KeyRefused { .. }
            | BootstrapError::KeyMissing { .. }
            | BootstrapError::UnknownId { .. }
            | BootstrapError::ChannelClash { .. } => Some(CONFIG),
            BootstrapError::Fetch { .. } | BootstrapError::Status { .. } => Some(UNAVAILABLE),
            _ => None,
        };
    }
    // `edgegw status` without a running daemon.
    if matches!(
        cause.downcast_ref::<ControlError>(),
        Some(ControlError::NotRunning { .. })
    ) {
        return Some(UNAVAILABLE);
    }
    None
}

/// A store the operator must restore or move away: restarting will not help.
fn auth_store_status(e: &StoreError) -> u8 {
    if e.needs_operator() { CONFIG } else { FAILURE }
}

/// Prints `error: …` and the cause chain one per line on stderr, and returns the status.
pub fn report(err: &anyhow::Error) -> ExitCode {
    eprintln!("edgegw: error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    ExitCode::from(code_for(err))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use anyhow::Context as _;

    use super::*;

    fn code(e: impl StdError + Send + Sync + 'static) -> u8 {
        code_for(&anyhow::Error::from(e))
    }

    #[test]
    fn configuration_problems_exit_78() {
        let file = ConfigFileError {
            what: "uplink client certificate",
            path: "/x.crt".into(),
            reason: "expired".into(),
        };
        assert_eq!(code(file), CONFIG);
        let corrupt = || StoreError::Corrupt {
            path: PathBuf::from("/x/auth.db"),
            reason: "not a database".into(),
        };
        assert_eq!(code(corrupt()), CONFIG);
        // Wrapped as a management operation's error (a CLI command opening the store) too.
        assert_eq!(code(AuthError::from(corrupt())), CONFIG);
        let too_new = StoreError::SchemaTooNew {
            path: PathBuf::from("/x/auth.db"),
            found: 9,
            supported: 1,
        };
        assert_eq!(code(too_new), CONFIG);
        let sqlite = StoreError::Sqlite {
            path: PathBuf::from("/x/auth.db"),
            source: rusqlite::Error::InvalidQuery,
        };
        assert_eq!(code(AuthError::from(sqlite)), FAILURE);
        assert_eq!(code(PkiCommandError::NoDeviceCa), CONFIG);
        assert_eq!(code(UplinkError::BadUrl("x".into())), CONFIG);
        let record = BootstrapError::Record {
            path: PathBuf::from("/x/bootstrap.json"),
            reason: "not JSON".into(),
        };
        assert_eq!(code(record), CONFIG);
        let down = BootstrapError::Status {
            origin: "https://bs".into(),
            status: 503,
        };
        assert_eq!(code(down), UNAVAILABLE);
    }

    #[test]
    fn usage_unavailable_and_plain_failures() {
        let ttl = PkiCommandError::BadTtl {
            ttl: "30".into(),
            reason: "no unit".into(),
        };
        assert_eq!(code(ttl), USAGE);
        assert_eq!(code(Invalid::IdentityLength), USAGE);
        assert_eq!(code(AuthError::from(Invalid::SecretInUse)), USAGE);
        let not_running = ControlError::NotRunning {
            path: PathBuf::from("/run/edgegw/control.sock"),
            reason: "no such file".into(),
        };
        assert_eq!(code(not_running), UNAVAILABLE);
        let bind = HttpError::Bind {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        assert_eq!(code(bind), FAILURE);
        assert_eq!(
            code(AuthError::NotFound {
                what: "client",
                value: "x".into()
            }),
            FAILURE
        );
        assert_eq!(code_for(&anyhow::anyhow!("something else")), FAILURE);
    }

    #[test]
    fn the_first_known_cause_in_the_chain_decides() {
        let err = Err::<(), _>(PkiCommandError::NoDeviceCa)
            .context("certs issue")
            .unwrap_err();
        assert_eq!(code_for(&err), CONFIG);
    }
}
