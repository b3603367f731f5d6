//! Logging with `tracing`: human-readable with timestamps and colour on a terminal; under
//! journald (`JOURNAL_STREAM` set) no timestamps (the journal adds them) and no colour.
//!
//! The filter is a `tracing_subscriber::filter::Targets` (`info,gateway::uplink=debug`:
//! a default level and `target=level` directives), not an `EnvFilter`: the same directive
//! syntax without span/field matching, and without the regex engine EnvFilter links
//! (~0.3 MB of the binary, see docs/benchmarks.md).

use std::io::IsTerminal;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Parses a log filter (`info`, `warn,gateway::uplink=debug`, `gateway=trace`).
pub fn parse_filter(filter: &str) -> Result<Targets, tracing_subscriber::filter::ParseError> {
    filter.parse()
}

/// Installs the global subscriber. `filter` was validated by the config.
pub fn init(filter: &str) {
    let filter =
        parse_filter(filter).unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(true);
    let registry = tracing_subscriber::registry().with(filter);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = if journald {
        registry
            .with(layer.without_time().with_ansi(false))
            .try_init()
    } else {
        registry
            .with(layer.with_ansi(std::io::stderr().is_terminal()))
            .try_init()
    };
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::parse_filter;

    #[test]
    fn filters_parse_as_documented() {
        let f = parse_filter("info,gateway::uplink=debug").expect("valid");
        assert!(f.would_enable("gateway::uplink", &Level::DEBUG));
        assert!(f.would_enable("gateway::uplink::session", &Level::DEBUG));
        assert!(!f.would_enable("gateway::adapters::coap", &Level::DEBUG));
        assert!(f.would_enable("gateway::adapters::coap", &Level::INFO));
        let f = parse_filter("warn").expect("valid");
        assert!(!f.would_enable("gateway", &Level::INFO));
        assert!(f.would_enable("rumqttc", &Level::WARN));
    }

    #[test]
    fn bad_filters_are_refused() {
        for bad in ["gateway=loud", "info,gateway::uplink=verbose"] {
            assert!(parse_filter(bad).is_err(), "{bad} accepted");
        }
    }
}
