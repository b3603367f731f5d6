//! `edgegw bootstrap [--json]`: one fetch and apply, now, from the command line.

use anyhow::Context as _;

use super::{Bootstrapper, read_applied};
use crate::config::{Config, Source};

pub fn run(config: &Config, source: Source, json: bool) -> anyhow::Result<()> {
    let b = Bootstrapper::new(config, source)?.context(
        "no bootstrap configured: set bootstrap.url, external_id and external_key \
         (EDGEGW_BOOTSTRAP_URL, …)",
    )?;
    certs::files::ensure_private_dir(b.state_dir())
        .with_context(|| format!("cannot create {}", b.state_dir().display()))?;
    let previous = read_applied(b.state_dir())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let answer = runtime.block_on(b.fetch())?;
    let outcome = b.apply(&answer, previous.as_ref())?;
    let a = &outcome.applied;
    if json {
        let report = serde_json::json!({
            "url": a.origin,
            "external_id": a.external_id,
            "applied_at": crate::pki::rfc3339(a.applied_at),
            "client_id": a.client_id,
            "domain_id": a.domain_id,
            "channels": a.channels,
            "changed": !outcome.changes.is_empty(),
            "changes": outcome.changes,
        });
        println!("{report}");
    } else {
        if outcome.changes.is_empty() {
            println!("bootstrap config from {} unchanged", a.origin);
        } else {
            println!("bootstrap config from {} applied:", a.origin);
            for c in &outcome.changes {
                println!("  {c}");
            }
            println!(
                "a running daemon uses it after a reload (systemctl reload edgegw, or SIGHUP)"
            );
        }
        println!("client {} in domain {}", a.client_id, a.domain_id);
        for ch in &a.channels {
            println!("channel {} ({}) in domain {}", ch.name, ch.id, ch.domain_id);
        }
    }
    Ok(())
}
