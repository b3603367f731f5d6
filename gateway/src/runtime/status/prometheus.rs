//! The one Prometheus text renderer (`GET /metrics`): the adapters' counters and the DTLS
//! session table ([`crate::runtime::metrics`]), the outbox's counts, the uplink's state and the HTTP
//! server's own counters, each family with its HELP and TYPE once. Nothing a peer sends becomes
//! a label.

use std::fmt::Write as _;

use crate::outbox::OutboxStats;
use crate::runtime::metrics::{Adapter, MetricsSnapshot, Refusal};
use crate::runtime::status::uplink::{UplinkState, UplinkStatus};

/// What one scrape shows, read by the presenter (the HTTP API) from the layers below.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub adapters: &'a MetricsSnapshot,
    pub outbox: &'a OutboxStats,
    /// Wall clock now (for the age of the oldest queued message).
    pub now_ms: u64,
    /// Refused authentications on the HTTP server (management API and adapter).
    pub http_auth_failures: u64,
    /// Audit events dropped because the audit queue was full.
    pub audit_dropped: u64,
    /// Absent when the server runs without a status handle (unit tests).
    pub uplink: Option<&'a UplinkStatus>,
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

/// A family with one unlabelled sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// The whole exposition.
pub fn render(i: &Inputs<'_>) -> String {
    let mut out = String::new();
    let s = i.outbox;
    let oldest_age = if s.oldest_received_ms == 0 {
        0.0
    } else {
        i.now_ms.saturating_sub(s.oldest_received_ms) as f64 / 1000.0
    };
    single(
        &mut out,
        "edgegw_http_messages_in_total",
        "counter",
        "Messages accepted by the HTTP adapter.",
        i.adapters
            .adapters
            .get(Adapter::Http.label())
            .map_or(0, |a| a.messages_in),
    );
    single(
        &mut out,
        "edgegw_http_auth_failures_total",
        "counter",
        "Refused authentications on the HTTP server.",
        i.http_auth_failures,
    );
    single(
        &mut out,
        "edgegw_outbox_accepted_total",
        "counter",
        "Messages accepted into the outbox (all adapters).",
        s.accepted_total,
    );
    single(
        &mut out,
        "edgegw_outbox_acked_total",
        "counter",
        "Messages acknowledged by the broker (out).",
        s.acked_total,
    );
    single(
        &mut out,
        "edgegw_outbox_queued",
        "gauge",
        "Messages waiting in the outbox.",
        s.queued,
    );
    single(
        &mut out,
        "edgegw_outbox_queued_bytes",
        "gauge",
        "Bytes waiting in the outbox.",
        s.queued_bytes,
    );
    single(
        &mut out,
        "edgegw_outbox_quarantined",
        "gauge",
        "Messages in the quarantine (refused by the upstream uplink.quarantine_after times).",
        s.quarantined,
    );
    single(
        &mut out,
        "edgegw_outbox_quarantined_bytes",
        "gauge",
        "Bytes in the quarantine.",
        s.quarantined_bytes,
    );
    single(
        &mut out,
        "edgegw_outbox_quarantined_total",
        "counter",
        "Messages moved into the quarantine.",
        s.quarantined_total,
    );
    single(
        &mut out,
        "edgegw_outbox_requeued_total",
        "counter",
        "Quarantined messages queued again by an operator.",
        s.requeued_total,
    );
    single(
        &mut out,
        "edgegw_outbox_quarantine_dropped_total",
        "counter",
        "Quarantined messages dropped by an operator.",
        s.discarded_total,
    );
    single(
        &mut out,
        "edgegw_outbox_oldest_age_seconds",
        "gauge",
        "Age of the oldest queued message.",
        format_args!("{oldest_age:.3}"),
    );
    single(
        &mut out,
        "edgegw_auth_audit_dropped_total",
        "counter",
        "Audit events dropped (queue full).",
        i.audit_dropped,
    );
    if let Some(up) = i.uplink {
        uplink_families(up, &mut out);
    }
    adapter_families(i.adapters, s.acked_total, &mut out);
    out
}

fn uplink_families(up: &UplinkStatus, out: &mut String) {
    family(
        out,
        "edgegw_uplink_state",
        "gauge",
        "Uplink state (1 for the current one).",
    );
    for state in UplinkState::ALL {
        let _ = writeln!(
            out,
            "edgegw_uplink_state{{state=\"{}\"}} {}",
            state.as_str(),
            u8::from(state == up.state)
        );
    }
    single(
        out,
        "edgegw_uplink_published_total",
        "counter",
        "Messages published upstream.",
        up.published_total,
    );
    single(
        out,
        "edgegw_uplink_delivered_total",
        "counter",
        "Messages acknowledged by the broker.",
        up.delivered_total,
    );
    single(
        out,
        "edgegw_uplink_refused_total",
        "counter",
        "Messages the broker refused (MQTT 5 PUBACK error); kept and resent.",
        up.refused_total,
    );
    single(
        out,
        "edgegw_uplink_connects_total",
        "counter",
        "Uplink connections made.",
        up.connects_total,
    );
}

/// The adapters' families. `delivered_out` is the outbox's acknowledged total: the messages
/// out through the (one) MQTT uplink.
fn adapter_families(snap: &MetricsSnapshot, delivered_out: u64, out: &mut String) {
    let ordered = || {
        Adapter::ALL
            .iter()
            .filter_map(|a| snap.adapters.get(a.label()).map(|s| (a.label(), s)))
    };
    family(
        out,
        "edgegw_messages_in_total",
        "counter",
        "Messages accepted (durable, acknowledged to the sensor), per adapter.",
    );
    for (a, s) in ordered() {
        let _ = writeln!(
            out,
            "edgegw_messages_in_total{{adapter=\"{a}\"}} {}",
            s.messages_in
        );
    }
    family(
        out,
        "edgegw_messages_refused_total",
        "counter",
        "Sensor requests refused, per adapter and reason class.",
    );
    for (a, s) in ordered() {
        for r in Refusal::ALL {
            let n = s.refused.get(r.label()).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "edgegw_messages_refused_total{{adapter=\"{a}\",reason=\"{}\"}} {n}",
                r.label()
            );
        }
    }
    family(
        out,
        "edgegw_auth_failures_total",
        "counter",
        "Failed sensor authentications (refused credentials; for coaps also DTLS handshakes refused on authentication), per adapter.",
    );
    for (a, s) in ordered() {
        let _ = writeln!(
            out,
            "edgegw_auth_failures_total{{adapter=\"{a}\"}} {}",
            s.auth_failures
        );
    }
    family(
        out,
        "edgegw_downlink_delivered_total",
        "counter",
        "Downlink commands handed to sensors, per adapter.",
    );
    for (a, s) in ordered() {
        if let Some(n) = s.downlink_delivered {
            let _ = writeln!(
                out,
                "edgegw_downlink_delivered_total{{adapter=\"{a}\"}} {n}"
            );
        }
    }
    family(
        out,
        "edgegw_downlink_refused_total",
        "counter",
        "Downlink commands refused for delivery (serial: a line break, a subtopic level that is not a token, or a trailing *HH without checksums), per adapter.",
    );
    for (a, s) in ordered() {
        if let Some(n) = s.downlink_refused {
            let _ = writeln!(out, "edgegw_downlink_refused_total{{adapter=\"{a}\"}} {n}");
        }
    }
    family(
        out,
        "edgegw_messages_out_total",
        "counter",
        "Messages delivered upstream (acknowledged by the broker), per uplink.",
    );
    let _ = writeln!(
        out,
        "edgegw_messages_out_total{{uplink=\"mqtt\"}} {delivered_out}"
    );
    let d = &snap.dtls;
    family(
        out,
        "edgegw_dtls_sessions",
        "gauge",
        "Established DTLS sessions on the CoAPS listener.",
    );
    let _ = writeln!(out, "edgegw_dtls_sessions {}", d.sessions);
    family(
        out,
        "edgegw_dtls_handshakes_in_progress",
        "gauge",
        "Half-open DTLS handshakes on the CoAPS listener.",
    );
    let _ = writeln!(
        out,
        "edgegw_dtls_handshakes_in_progress {}",
        d.handshakes_in_progress
    );
    family(
        out,
        "edgegw_dtls_handshakes_total",
        "counter",
        "DTLS handshakes by result (failed: errors, timeouts, refusals, authentication; \
         no_common_suite: refused at once, no usable cipher suite offered).",
    );
    let _ = writeln!(
        out,
        "edgegw_dtls_handshakes_total{{result=\"completed\"}} {}",
        d.handshakes_completed
    );
    let _ = writeln!(
        out,
        "edgegw_dtls_handshakes_total{{result=\"failed\"}} {}",
        d.handshakes_failed
    );
    let _ = writeln!(
        out,
        "edgegw_dtls_handshakes_total{{result=\"no_common_suite\"}} {}",
        d.handshakes_no_common_suite
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::runtime::metrics::{HandshakeCounts, Metrics};

    /// Parses `name{labels} value` lines into (name{labels}, value).
    fn samples(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').expect("sample line");
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    #[test]
    fn counts_render_with_labels_and_one_help_and_type_per_family() {
        let m = Metrics::new();
        m.message_in(Adapter::Coap);
        m.message_in(Adapter::Coap);
        m.message_in(Adapter::Http);
        m.refused(Adapter::Coaps, Refusal::TooLarge);
        m.refused(Adapter::Serial, Refusal::Unauthenticated);
        m.downlink_delivered(Adapter::Serial);
        m.downlink_refused(Adapter::Serial);
        m.downlink_refused(Adapter::Serial);
        m.set_dtls_sessions(3, 1);
        let mut reported = HandshakeCounts::default();
        m.sync_dtls(
            &HandshakeCounts {
                completed: 5,
                failed: 2,
                auth_failed: 1,
                no_common_suite: 0,
            },
            &mut reported,
        );
        let snap = m.snapshot();
        let outbox = OutboxStats {
            acked_total: 7,
            ..OutboxStats::default()
        };
        let out = render(&Inputs {
            adapters: &snap,
            outbox: &outbox,
            now_ms: 0,
            http_auth_failures: 0,
            audit_dropped: 0,
            uplink: None,
        });
        let s = samples(&out);
        let get = |k: &str| {
            s.get(k)
                .map(String::as_str)
                .unwrap_or_else(|| panic!("{k} missing:\n{out}"))
        };
        assert_eq!(get("edgegw_messages_in_total{adapter=\"coap\"}"), "2");
        assert_eq!(get("edgegw_messages_in_total{adapter=\"coaps\"}"), "0");
        assert_eq!(get("edgegw_messages_in_total{adapter=\"http\"}"), "1");
        assert_eq!(
            get("edgegw_messages_refused_total{adapter=\"coaps\",reason=\"too_large\"}"),
            "1"
        );
        assert_eq!(
            get("edgegw_messages_refused_total{adapter=\"serial\",reason=\"auth\"}"),
            "1"
        );
        // An auth refusal is an auth failure; a DTLS handshake auth failure too (coaps).
        assert_eq!(get("edgegw_auth_failures_total{adapter=\"serial\"}"), "1");
        assert_eq!(get("edgegw_auth_failures_total{adapter=\"coaps\"}"), "1");
        assert_eq!(get("edgegw_auth_failures_total{adapter=\"coap\"}"), "0");
        assert_eq!(
            get("edgegw_downlink_delivered_total{adapter=\"serial\"}"),
            "1"
        );
        assert!(!s.contains_key("edgegw_downlink_delivered_total{adapter=\"http\"}"));
        assert_eq!(
            get("edgegw_downlink_refused_total{adapter=\"serial\"}"),
            "2"
        );
        assert_eq!(get("edgegw_downlink_refused_total{adapter=\"coap\"}"), "0");
        assert!(!s.contains_key("edgegw_downlink_refused_total{adapter=\"http\"}"));
        assert_eq!(get("edgegw_messages_out_total{uplink=\"mqtt\"}"), "7");
        assert_eq!(get("edgegw_dtls_sessions"), "3");
        assert_eq!(get("edgegw_dtls_handshakes_in_progress"), "1");
        assert_eq!(
            get("edgegw_dtls_handshakes_total{result=\"completed\"}"),
            "5"
        );
        assert_eq!(get("edgegw_dtls_handshakes_total{result=\"failed\"}"), "2");
        // 4 adapters × 8 kinds, all present.
        assert_eq!(
            s.keys()
                .filter(|k| k.starts_with("edgegw_messages_refused_total{"))
                .count(),
            32
        );
        // HELP and TYPE exactly once per family, before its samples.
        let mut seen = std::collections::BTreeSet::new();
        for l in out.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(seen.insert(name.to_owned()), "TYPE twice for {name}");
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(seen.contains(name), "{name} sample before its TYPE");
            }
        }
        assert_eq!(out.matches("# HELP ").count(), seen.len());
        // 9 families from the adapters' counters, 8 from the HTTP server, outbox and audit,
        // 5 of the quarantine.
        assert_eq!(seen.len(), 22);
    }

    #[test]
    fn the_uplink_state_is_one_hot_and_its_counters_are_shown() {
        let mut up = UplinkStatus::disabled();
        up.state = UplinkState::Backoff;
        up.connects_total = 3;
        let out = render(&Inputs {
            adapters: &MetricsSnapshot::default(),
            outbox: &OutboxStats::default(),
            now_ms: 0,
            http_auth_failures: 2,
            audit_dropped: 0,
            uplink: Some(&up),
        });
        let s = samples(&out);
        assert_eq!(s["edgegw_uplink_state{state=\"backoff\"}"], "1");
        assert_eq!(s["edgegw_uplink_state{state=\"connected\"}"], "0");
        assert_eq!(
            s.keys()
                .filter(|k| k.starts_with("edgegw_uplink_state{"))
                .count(),
            UplinkState::ALL.len()
        );
        assert_eq!(s["edgegw_uplink_connects_total"], "3");
        assert_eq!(s["edgegw_http_auth_failures_total"], "2");
    }
}

#[cfg(test)]
mod quarantine_tests {
    use super::*;
    use crate::runtime::metrics::MetricsSnapshot;

    #[test]
    fn the_quarantine_is_counted_in_its_own_families() {
        let outbox = OutboxStats {
            quarantined: 2,
            quarantined_bytes: 40,
            quarantined_total: 5,
            requeued_total: 2,
            discarded_total: 1,
            ..OutboxStats::default()
        };
        let out = render(&Inputs {
            adapters: &MetricsSnapshot::default(),
            outbox: &outbox,
            now_ms: 0,
            http_auth_failures: 0,
            audit_dropped: 0,
            uplink: None,
        });
        for (name, value) in [
            ("edgegw_outbox_quarantined", "2"),
            ("edgegw_outbox_quarantined_bytes", "40"),
            ("edgegw_outbox_quarantined_total", "5"),
            ("edgegw_outbox_requeued_total", "2"),
            ("edgegw_outbox_quarantine_dropped_total", "1"),
        ] {
            assert!(
                out.contains(&format!("\n{name} {value}\n")),
                "{name} in:\n{out}"
            );
            assert!(out.contains(&format!("# TYPE {name} ")), "{name} type");
        }
    }
}
