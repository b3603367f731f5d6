//! The daemon's bootstrap loop. Without an applied config it asks at once and retries with
//! backoff (the daemon meanwhile accepts and buffers: no uplink yet); with one it asks again
//! on SIGHUP and every `bootstrap.recheck_interval`. A changed config is applied, logged (what
//! changed, never a secret) and picked up by restarting the daemon in place ([`Restart`]):
//! every part then starts from the one validated configuration, as on a reboot.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::apply::Applied;
use super::{BootstrapError, Bootstrapper, Outcome};
use crate::runtime::status::bootstrap::BootstrapStatusCell;
use crate::runtime::supervisor::Signal;

/// A request to stop in order and start again with the new configuration; the composition
/// root checks [`Restart::requested`] after the supervisor returned.
#[derive(Debug, Clone)]
pub struct Restart {
    requested: Arc<AtomicBool>,
    signals: mpsc::Sender<Signal>,
}

impl Restart {
    /// `signals`: the supervisor's signal queue (a restart begins as an orderly stop, told to
    /// the service manager as a reload).
    pub fn new(signals: mpsc::Sender<Signal>) -> Self {
        Self {
            requested: Arc::default(),
            signals,
        }
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    async fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let _ = self.signals.send(Signal::Restart).await;
    }
}

fn now_rfc3339() -> String {
    crate::pki::rfc3339(crate::auth::store::now_unix())
}

/// Fills the status with what `applied` says.
pub fn show_applied(status: &BootstrapStatusCell, b: &Bootstrapper, applied: Option<&Applied>) {
    status.update(|s| {
        s.url = b.origin();
        s.external_id = b.external_id().to_owned();
        match applied {
            Some(a) => {
                s.state = "applied".into();
                s.applied_at = Some(crate::pki::rfc3339(a.applied_at));
                s.client_id = Some(a.client_id.clone());
                s.channels = a
                    .channels
                    .iter()
                    .map(|c| format!("{} ({})", c.name, c.id))
                    .collect();
            }
            None => s.state = "waiting".into(),
        }
    });
}

async fn attempt(
    b: &Arc<Bootstrapper>,
    current: Option<&Applied>,
) -> Result<Outcome, BootstrapError> {
    let answer = b.fetch().await?;
    let b = Arc::clone(b);
    let previous = current.cloned();
    tokio::task::spawn_blocking(move || b.apply(&answer, previous.as_ref()))
        .await
        .unwrap_or_else(|e| Err(BootstrapError::ApplyTask(e.to_string())))
}

/// Runs until `token` is cancelled or a changed config was applied (then it asks `restart`).
pub async fn run(
    b: Arc<Bootstrapper>,
    current: Option<Applied>,
    status: BootstrapStatusCell,
    token: CancellationToken,
    mut reloads: watch::Receiver<u64>,
    restart: Restart,
) {
    show_applied(&status, &b, current.as_ref());
    let settings = b.settings().clone();
    let recheck = settings.recheck_interval.get();
    let mut due = current.is_none();
    let mut reason = "first start: no bootstrap config applied yet";
    let mut backoff = settings.retry_min.get();
    let mut reloads_open = true;
    loop {
        if !due {
            let periodic = async {
                if recheck.is_zero() {
                    std::future::pending::<()>().await;
                } else {
                    tokio::time::sleep(recheck).await;
                }
            };
            tokio::select! {
                () = token.cancelled() => return,
                changed = reloads.changed(), if reloads_open => {
                    if changed.is_err() {
                        reloads_open = false;
                        continue;
                    }
                    reason = "reload (SIGHUP)";
                }
                () = periodic => reason = "periodic re-check",
            }
        }
        info!(url = %b.origin(), external_id = %b.external_id(), reason, "asking the bootstrap service");
        let result = tokio::select! {
            () = token.cancelled() => return,
            r = attempt(&b, current.as_ref()) => r,
        };
        status.update(|s| s.last_attempt_at = Some(now_rfc3339()));
        match result {
            Ok(outcome) if outcome.changes.is_empty() => {
                info!("bootstrap config unchanged");
                status.update(|s| {
                    s.state = if current.is_some() {
                        "applied"
                    } else {
                        "waiting"
                    }
                    .into();
                    s.last_error = None;
                    s.failures = 0;
                });
                due = false;
                backoff = settings.retry_min.get();
            }
            Ok(outcome) => {
                for change in &outcome.changes {
                    info!(change = %change, "bootstrap config changed");
                }
                info!(
                    channels = outcome.applied.channels.len(),
                    "bootstrap config applied and persisted; restarting to use it"
                );
                show_applied(&status, &b, Some(&outcome.applied));
                status.update(|s| {
                    s.last_error = None;
                    s.failures = 0;
                });
                restart.request().await;
                return;
            }
            Err(e) => {
                let applied = current.is_some();
                warn!(
                    error = %e,
                    retry_in = ?backoff,
                    "bootstrap failed; {}",
                    if applied {
                        "the applied bootstrap config stays in use"
                    } else {
                        "no uplink until it succeeds: accepted messages wait in the outbox"
                    }
                );
                status.update(|s| {
                    s.state = "failing".into();
                    s.last_error = Some(e.to_string());
                    s.failures += 1;
                });
                let jitter =
                    Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 4));
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(backoff + jitter) => {}
                    // A SIGHUP retries at once.
                    changed = reloads.changed(), if reloads_open => {
                        if changed.is_err() {
                            reloads_open = false;
                        }
                    }
                }
                backoff = (backoff * 2).min(settings.retry_max.get());
                due = true;
                reason = "retry";
            }
        }
    }
}

/// Starts the loop in the supervisor's pipeline stage.
pub fn start(
    b: Bootstrapper,
    current: Option<Applied>,
    status: BootstrapStatusCell,
    supervisor: &crate::runtime::supervisor::Supervisor,
    restart: Restart,
) {
    use crate::runtime::supervisor::Stage;
    supervisor.spawn(
        Stage::Intake,
        run(
            Arc::new(b),
            current,
            status,
            supervisor.token(Stage::Intake),
            supervisor.reloads(),
            restart,
        ),
    );
}
