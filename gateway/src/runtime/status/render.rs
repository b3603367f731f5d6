//! The one human renderer of a status report (`edgegw status` without `--json`). It reads the
//! JSON form, so the CLI renders exactly what the daemon answered on its control socket.

use std::fmt::Write as _;

use crate::runtime::metrics::{Adapter, Refusal};

/// The human-readable form of a status report.
pub fn render(v: &serde_json::Value) -> String {
    let get = |path: &[&str]| {
        let mut cur = v;
        for p in path {
            cur = cur.get(p).unwrap_or(&serde_json::Value::Null);
        }
        match cur {
            serde_json::Value::Null => "-".to_owned(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    };
    let mut out = String::new();
    let mut line = |k: &str, val: String| out.push_str(&format!("{k:<20} {val}\n"));
    line("version", get(&["version"]));
    line("uptime", format!("{}s", get(&["uptime_s"])));
    line("uplink", get(&["uplink", "state"]));
    line("uplink url", get(&["uplink", "url"]));
    line("uplink last error", get(&["uplink", "last_error"]));
    line(
        "queue depth",
        format!(
            "{} messages, {} bytes",
            get(&["outbox", "queued"]),
            get(&["outbox", "queued_bytes"])
        ),
    );
    line(
        "oldest queued",
        match get(&["oldest_queued_age_s"]).as_str() {
            "-" => "-".to_owned(),
            s => format!("{s}s ago"),
        },
    );
    line(
        "accepted",
        format!(
            "{}/s (total {})",
            get(&["accepted_per_s"]),
            get(&["outbox", "accepted_total"])
        ),
    );
    line(
        "delivered",
        format!(
            "{}/s (total {})",
            get(&["delivered_per_s"]),
            get(&["outbox", "acked_total"])
        ),
    );
    line(
        "dropped / expired",
        format!(
            "{} / {}",
            get(&["outbox", "dropped_total"]),
            get(&["outbox", "expired_total"])
        ),
    );
    line(
        "quarantined",
        format!(
            "{} messages, {} bytes (total {}, re-queued {}, dropped {}; edgegw quarantine list)",
            get(&["outbox", "quarantined"]),
            get(&["outbox", "quarantined_bytes"]),
            get(&["outbox", "quarantined_total"]),
            get(&["outbox", "requeued_total"]),
            get(&["outbox", "discarded_total"])
        ),
    );
    line("uplink cert", get(&["uplink", "cert", "subject"]));
    line(
        "cert expires in",
        match get(&["cert_expires_in_days"]).as_str() {
            "-" => "-".to_owned(),
            d => format!("{d} days"),
        },
    );
    line("board", get(&["board", "model"]));
    line("board serial", get(&["board", "serial_number"]));
    line("machine id", get(&["board", "machine_id"]));
    line(
        "wired MAC",
        format!("{} ({})", get(&["board", "mac"]), get(&["board", "nic"])),
    );
    if let Some(ports) = v.get("serial").and_then(|p| p.as_array()) {
        for p in ports {
            let f = |k: &str| match p.get(k) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Null) | None => "-".to_owned(),
                Some(other) => other.to_string(),
            };
            line(
                "serial port",
                format!(
                    "{} {} (device {}, client {}, {} published, {} errors, opened {}x)",
                    f("path"),
                    f("state"),
                    f("device"),
                    f("client"),
                    f("published"),
                    f("errors"),
                    f("opens")
                ),
            );
        }
    }
    if let Some(b) = v.get("bootstrap").filter(|b| b.is_object()) {
        let f = |k: &str| match b.get(k) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) | None => "-".to_owned(),
            Some(other) => other.to_string(),
        };
        line(
            "bootstrap",
            format!("{} from {} as {}", f("state"), f("url"), f("external_id")),
        );
        line("bootstrap applied", f("applied_at"));
        line("bootstrap client", f("client_id"));
        let channels: Vec<&str> = b
            .get("channels")
            .and_then(|c| c.as_array())
            .map(|c| c.iter().filter_map(|s| s.as_str()).collect())
            .unwrap_or_default();
        line("bootstrap channels", channels.join(", "));
        if f("last_error") != "-" {
            line(
                "bootstrap error",
                format!(
                    "{} ({} failures, last {})",
                    f("last_error"),
                    f("failures"),
                    f("last_attempt_at")
                ),
            );
        }
    }
    adapter_lines(v, &mut line);
    if let Some(warnings) = v.get("warnings").and_then(|w| w.as_array()) {
        for w in warnings {
            line("WARNING", w.as_str().unwrap_or_default().to_owned());
        }
    }
    out
}

/// The lines for a report's `adapters` and `dtls` (JSON values).
fn adapter_lines(v: &serde_json::Value, line: &mut dyn FnMut(&str, String)) {
    let n = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_u64);
    if let Some(adapters) = v.get("adapters").and_then(|a| a.as_object()) {
        for a in Adapter::ALL {
            let Some(s) = adapters.get(a.label()) else {
                continue;
            };
            let reasons: Vec<String> = s
                .get("refused")
                .and_then(|r| r.as_object())
                .map(|r| {
                    Refusal::ALL
                        .iter()
                        .filter_map(|c| {
                            let k = c.label();
                            r.get(k)
                                .and_then(serde_json::Value::as_u64)
                                .filter(|n| *n > 0)
                                .map(|n| format!("{k} {n}"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut text = format!(
                "{} in, {} refused",
                n(s, "messages_in").unwrap_or(0),
                n(s, "refused_total").unwrap_or(0)
            );
            if !reasons.is_empty() {
                let _ = write!(text, " ({})", reasons.join(", "));
            }
            let _ = write!(
                text,
                ", {} auth failures",
                n(s, "auth_failures").unwrap_or(0)
            );
            if let Some(d) = n(s, "downlink_delivered") {
                let _ = write!(text, ", {d} commands delivered");
            }
            line(&format!("adapter {}", a.label()), text);
        }
    }
    if let Some(d) = v.get("dtls") {
        line(
            "dtls sessions",
            format!(
                "{} established, {} handshaking (handshakes: {} completed, {} failed)",
                n(d, "sessions").unwrap_or(0),
                n(d, "handshakes_in_progress").unwrap_or(0),
                n(d, "handshakes_completed").unwrap_or(0),
                n(d, "handshakes_failed").unwrap_or(0)
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::metrics::Metrics;

    #[test]
    fn status_lines_show_counts_and_dtls() {
        let m = Metrics::new();
        m.message_in(Adapter::Coap);
        m.refused(Adapter::Coap, Refusal::Unauthenticated);
        m.set_dtls_sessions(2, 0);
        let v = serde_json::to_value(m.snapshot()).unwrap();
        let mut lines = Vec::new();
        adapter_lines(&v, &mut |k, val| lines.push(format!("{k}: {val}")));
        assert!(
            lines.contains(
                &"adapter coap: 1 in, 1 refused (auth 1), 1 auth failures, 0 commands delivered"
                    .to_owned()
            ),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"adapter http: 0 in, 0 refused, 0 auth failures".to_owned()),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("dtls sessions: 2 established")),
            "{lines:?}"
        );
    }
}
