//! Wiring of the pipeline stage: opens the outbox, starts the uplink (if `uplink.url` is set),
//! the control socket and the rate sampler, and closes the outbox last on shutdown. Used by
//! `main.rs` and by test harnesses that need the same composition without adapters.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tracing::info;

use crate::config::Config;
use crate::control::{self, StatusHandle};
use crate::downlink::{ChannelSet, DownlinkHub, DownlinkLimits};
use crate::outbox::{self, Outbox};
use crate::supervisor::{Stage, Supervisor};
use crate::uplink::{self, Uplink};

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

/// Starts the pipeline stage on `supervisor` (call inside the runtime). Errors: a corrupt
/// outbox, unusable uplink TLS files, a control socket in use.
pub fn start(config: &Config, supervisor: &Supervisor) -> anyhow::Result<Pipeline> {
    let path = outbox::default_path(&config.gateway.state_dir);
    let (outbox, worker) = Outbox::open(&path, &config.outbox)?;
    let stats = outbox.stats();
    info!(
        path = %path.display(),
        queued = stats.queued,
        "outbox open{}",
        if stats.queued > 0 { ": replaying queued messages" } else { "" }
    );
    let downlink = DownlinkHub::new(DownlinkLimits::default());
    let (status_tx, status_rx) = uplink::status_channel(config.uplink.url.is_some());
    let status = StatusHandle::new(outbox.clone(), status_rx);
    let (channels, channels_rx) = watch::channel::<ChannelSet>(Arc::new(Vec::new()));
    let max_packet = usize::try_from(config.outbox.max_message_size.0)
        .unwrap_or(usize::MAX)
        .saturating_add(64 << 10);
    let uplink = match &config.uplink.url {
        Some(_) => Some(Uplink::new(
            config.uplink.clone(),
            outbox.clone(),
            downlink.clone(),
            channels_rx,
            supervisor.reloads(),
            status_tx,
            status.clone(),
            max_packet,
        )?),
        None => None,
    };
    let listener =
        control::bind(&config.gateway.runtime_dir).context("cannot open the control socket")?;

    let token = supervisor.token(Stage::Pipeline);
    supervisor.spawn(
        Stage::Pipeline,
        control::serve(listener, status.clone(), token.clone()),
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
    supervisor.spawn(Stage::Pipeline, async move {
        match uplink {
            Some(uplink) => uplink.run(token).await,
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
