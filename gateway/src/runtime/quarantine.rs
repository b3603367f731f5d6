//! `edgegw quarantine list|requeue|drop`: the messages the upstream refused, asked of the
//! running daemon over its control socket (the daemon owns `outbox.db`'s writer, so a
//! re-queued message is handed to its uplink at once and every count stays true). A CLI
//! command module: it prints, and returns `anyhow` errors for main.rs to map.

use std::path::Path;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::cli::QuarantineCommand;
use crate::runtime::control;

/// Runs one `edgegw quarantine` command against the daemon of `runtime_dir`.
pub fn command(runtime_dir: &Path, cmd: &QuarantineCommand, json: bool) -> anyhow::Result<()> {
    let line = match cmd {
        QuarantineCommand::List { after } => format!("quarantine list {after}"),
        QuarantineCommand::Requeue { id } => format!("quarantine requeue {id}"),
        QuarantineCommand::Drop { id } => format!("quarantine drop {id}"),
    };
    let answer = control::request(runtime_dir, &line).context("asking the daemon")?;
    if let Some(e) = answer.get("error").and_then(Value::as_str) {
        bail!("{e}");
    }
    if json {
        println!("{answer}");
        return Ok(());
    }
    match cmd {
        QuarantineCommand::List { .. } => print!("{}", render_list(&answer)),
        QuarantineCommand::Requeue { id } => println!(
            "message {id} queued again as {}",
            answer["requeued_as"].as_u64().unwrap_or_default()
        ),
        QuarantineCommand::Drop { id } => println!("message {id} dropped"),
    }
    Ok(())
}

/// The listing for people: one line per message.
fn render_list(answer: &Value) -> String {
    let items = answer["quarantine"].as_array().cloned().unwrap_or_default();
    let mut out = format!(
        "{} message(s) in quarantine\n",
        answer["total"].as_u64().unwrap_or(items.len() as u64)
    );
    for q in &items {
        let s = |k: &str| q[k].as_str().unwrap_or_default().to_owned();
        out.push_str(&format!(
            "{:>8}  channel {} (domain {}) client {}  {} attempt(s): {}\n          payload ({} bytes): {}\n",
            q["id"].as_u64().unwrap_or_default(),
            s("channel_id"),
            s("domain_id"),
            s("client_id"),
            q["attempts"].as_u64().unwrap_or_default(),
            s("reason"),
            q["payload_size"].as_u64().unwrap_or_default(),
            s("payload").escape_debug(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_shows_id_channel_reason_and_payload_escaped() {
        let answer = serde_json::json!({
            "total": 1,
            "quarantine": [{ "id": 7, "channel_id": "ch", "domain_id": "d", "client_id": "k",
              "attempts": 3, "reason": "closed", "payload_size": 4, "payload": "a\nb" }]
        });
        let text = render_list(&answer);
        assert!(text.starts_with("1 message(s) in quarantine\n"), "{text}");
        assert!(
            text.contains("       7  channel ch (domain d) client k  3 attempt(s): closed"),
            "{text}"
        );
        assert!(text.contains("payload (4 bytes): a\\nb"), "{text}");
    }
}
