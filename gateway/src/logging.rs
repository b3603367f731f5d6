//! Logging with `tracing`: human-readable with timestamps and colour on a terminal; under
//! journald (`JOURNAL_STREAM` set) no timestamps (the journal adds them) and no colour.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `filter` was validated by the config.
pub fn init(filter: &str) {
    let filter = EnvFilter::builder().parse_lossy(filter);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = if journald {
        builder.without_time().with_ansi(false).try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}
