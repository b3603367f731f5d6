//! Wiring of the pipeline stage: opens the outbox, starts the uplink (if `uplink.url` is set),
//! serves the control socket (bound by the caller) and runs the rate sampler, and closes the
//! outbox last on shutdown. Used by `main.rs` and by test harnesses that need the same
//! composition without adapters.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tracing::info;

use crate::config::Config;
use crate::downlink::{ChannelSet, DownlinkHub, Recipients};
use crate::outbox::{self, Outbox};
use crate::runtime::control;
use crate::runtime::status::{BoardStatus, StatusHandle, UplinkStatus};
use crate::runtime::supervisor::{Stage, Supervisor};
use crate::runtime::watchdog;
use crate::uplink::{self, Uplink};

/// Why the pipeline cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Outbox(#[from] outbox::OutboxError),
    #[error(transparent)]
    Uplink(#[from] uplink::UplinkError),
}

/// What the adapters and the auth store use from the pipeline.
#[derive(Debug)]
pub struct Pipeline {
    /// The Ingest API.
    pub outbox: Outbox,
    /// Downlink commands for subscribed clients.
    pub downlink: DownlinkHub,
    /// The channels with subscribe-connected clients (the auth store sends updates).
    pub channels: watch::Sender<ChannelSet>,
    pub status: StatusHandle,
}

impl Pipeline {
    /// Keeps the uplink's downlink subscriptions equal to the auth store's channels with
    /// subscribe-connected clients, as the store learns of changes (CLI, API).
    pub fn follow_subscriptions(
        &self,
        supervisor: &Supervisor,
        mut source: watch::Receiver<ChannelSet>,
    ) {
        let channels = self.channels.clone();
        let token = supervisor.token(Stage::Pipeline);
        supervisor.spawn(Stage::Pipeline, async move {
            loop {
                channels.send_replace(source.borrow_and_update().clone());
                tokio::select! {
                    () = token.cancelled() => break,
                    changed = source.changed() => if changed.is_err() { break },
                }
            }
        });
    }
}

/// Starts the pipeline stage on `supervisor` (call inside the runtime), serving `control` (the
/// control socket, bound by the composition root: [`control::bind`]) and reporting `board`
/// (read once by the caller). `directory` is the auth store's channel directory (each
/// channel's upstream domain and id) the uplink's topics are made from (`None`: local ids
/// upstream). `recipients` names a channel's downlink recipients (the auth
/// store's subscribe-connected clients; `None` in harnesses without one). Errors: a corrupt
/// outbox, unusable uplink TLS files.
pub fn start(
    config: &Config,
    supervisor: &Supervisor,
    recipients: Option<Recipients>,
    control: UnixListener,
    board: BoardStatus,
    directory: Option<watch::Receiver<ChannelSet>>,
) -> Result<Pipeline, PipelineError> {
    let path = outbox::default_path(&config.gateway.state_dir);
    let (outbox, worker) = Outbox::open(&path, &config.outbox)?;
    let stats = outbox.stats();
    info!(
        path = %path.display(),
        queued = stats.queued,
        "outbox open{}",
        if stats.queued > 0 { ": replaying queued messages" } else { "" }
    );
    let downlink = match recipients {
        Some(r) => DownlinkHub::with_recipients(config.uplink.downlink_limits(), r),
        None => DownlinkHub::new(config.uplink.downlink_limits()),
    };
    let (status_tx, status_rx) = uplink::status_channel(config.uplink.url.is_some());
    outbox.watch_progress(
        supervisor.heartbeat("outbox writer"),
        supervisor.beat_interval(),
    );
    report_mode_changes(supervisor, status_tx.subscribe(), outbox.clone());
    let status = StatusHandle::new(outbox.clone(), status_rx, board);
    let (channels, channels_rx) = watch::channel::<ChannelSet>(Arc::new(Vec::new()));
    let max_packet = usize::try_from(config.outbox.max_message_size.0)
        .unwrap_or(usize::MAX)
        .saturating_add(64 << 10);
    let uplink = match &config.uplink.url {
        Some(_) => Some(
            Uplink::new(
                config.uplink.clone(),
                outbox.clone(),
                downlink.clone(),
                channels_rx,
                directory,
                supervisor.reloads(),
                status_tx,
                status.clone(),
                max_packet,
            )?
            .with_gateway_domain(&config.gateway.domain_id)
            .with_runtime_dir(&config.gateway.runtime_dir),
        ),
        None => None,
    };
    let token = supervisor.token(Stage::Pipeline);
    supervisor.spawn(
        Stage::Pipeline,
        control::serve(
            control,
            status.clone(),
            supervisor.tracker(Stage::Pipeline),
            token.clone(),
        ),
    );
    let sampler = status.clone();
    let sampler_token = token.clone();
    supervisor.spawn(Stage::Pipeline, async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                () = sampler_token.cancelled() => break,
                _ = tick.tick() => { sampler.sample(); }
            }
        }
    });
    let closing = outbox.clone();
    // Only a configured uplink is watched: without one there is no loop to stall.
    let uplink = uplink.map(|u| (u, supervisor.heartbeat("uplink")));
    let beat_every = supervisor.beat_interval();
    supervisor.spawn(Stage::Pipeline, async move {
        match uplink {
            Some((uplink, heartbeat)) => {
                watchdog::beat_while(heartbeat, beat_every, uplink.run(token)).await;
            }
            None => token.cancelled().await,
        }
        // Intake has stopped and the uplink is done: commit the last acks and close.
        closing.close();
        if tokio::task::spawn_blocking(move || worker.join())
            .await
            .is_err()
        {
            tracing::error!("outbox writer did not stop cleanly");
        }
        info!("outbox closed");
    });
    Ok(Pipeline {
        outbox,
        downlink,
        channels,
        status,
    })
}

/// Tells systemd (`STATUS=`) whenever the uplink changes state, with the queue depth then. The
/// state at start is not reported: READY=1 carries the starting mode.
fn report_mode_changes(
    supervisor: &Supervisor,
    mut status: watch::Receiver<UplinkStatus>,
    outbox: Outbox,
) {
    let notifier = supervisor.notifier();
    let token = supervisor.token(Stage::Pipeline);
    let mut last = status.borrow_and_update().state;
    supervisor.spawn(Stage::Pipeline, async move {
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                changed = status.changed() => if changed.is_err() { break },
            }
            let state = status.borrow_and_update().state;
            if state != last {
                last = state;
                let queued = outbox.stats().queued;
                notifier.status(&format!("uplink {}; {queued} queued", state.as_str()));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::notify::Notifier;

    #[tokio::test]
    async fn uplink_state_changes_become_systemd_status_lines() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::load_from(
            &crate::config::Source::None,
            crate::config::Profile::Production,
            Vec::new(),
        )
        .unwrap();
        let (outbox, _worker) = Outbox::open(&dir.path().join("outbox.db"), &cfg.outbox).unwrap();
        let notifier = Notifier::recording(None);
        let supervisor = Supervisor::with_notifier(notifier.clone());
        let (tx, rx) = uplink::status_channel(true);
        report_mode_changes(&supervisor, rx, outbox.clone());
        let statuses = || -> Vec<String> {
            notifier
                .recorded()
                .into_iter()
                .filter(|d| d.starts_with("STATUS="))
                .collect()
        };
        // Counters alone are not a mode change; each state change is reported once.
        for change in [
            |s: &mut UplinkStatus| s.published_total += 1,
            |s: &mut UplinkStatus| s.state = crate::runtime::status::UplinkState::Connected,
            |s: &mut UplinkStatus| s.delivered_total += 1,
            |s: &mut UplinkStatus| s.state = crate::runtime::status::UplinkState::Backoff,
        ] {
            tx.send_modify(change);
            // Let the reporter see each value (watch keeps only the latest).
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            statuses(),
            vec![
                "STATUS=uplink connected; 0 queued",
                "STATUS=uplink backoff; 0 queued"
            ]
        );
        outbox.close();
    }
}
