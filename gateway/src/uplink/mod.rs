//! The uplink: one task that drains the outbox into the upstream MQTT broker over mutual TLS
//! (rumqttc + rustls/aws-lc-rs) and feeds downlink commands to the [`DownlinkHub`].
//!
//! QoS 1 with an in-flight window ([`window::Window`], sans-IO); an outbox entry is deleted
//! only after its PUBACK (acks are batched into the outbox's next group commit). Entries go
//! out in sequence order on one connection, so order per channel holds; after a reconnect the
//! unacknowledged ones are sent again first (at least once). Reconnects back off 1 s → 60 s
//! with jitter. SIGHUP (the supervisor's reload generation) re-reads the TLS files: good ones
//! replace the connection, bad ones are logged and the current connection stays.
//! This module owns no SQLite handle of its own and never decides what is durable.

mod commands;
mod mqtt;
pub mod subscriptions;
pub mod topics;
mod url;
pub mod window;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::UplinkConfig;
use crate::downlink::{ChannelSet, DownlinkHub};
use crate::outbox::Outbox;
use crate::runtime::status::StatusHandle;
pub use crate::runtime::status::uplink::{UplinkState, UplinkStatus, status_channel};
use crate::tls::{self, UplinkTls, UplinkTlsFiles};
pub use mqtt::ConnectionFailed;
use subscriptions::Subscriptions;
use topics::Topics;
pub use url::parse_url;
use window::{Backoff, Window};

/// Why the uplink cannot start.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("uplink.url `{0}` is not mqtts://host[:port] or mqtt://host[:port]")]
    BadUrl(String),
    #[error("uplink TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Everything the uplink task needs; built by [`crate::pipeline`].
#[derive(Debug)]
pub struct Uplink {
    config: UplinkConfig,
    host: String,
    port: u16,
    files: UplinkTlsFiles,
    tls: Option<UplinkTls>,
    max_packet: usize,
    outbox: Outbox,
    hub: DownlinkHub,
    channels: watch::Receiver<ChannelSet>,
    /// Every channel of the auth store (upstream domain and id); `None`: no auth store (test
    /// harnesses), local ids are the upstream ids.
    directory: Option<watch::Receiver<ChannelSet>>,
    topics: Topics,
    subs: Subscriptions,
    reloads: watch::Receiver<u64>,
    status: watch::Sender<UplinkStatus>,
    report: StatusHandle,
    /// `gateway.runtime_dir`: where the TLS bridge's socket goes (see [`mqtt`]).
    runtime_dir: Option<std::path::PathBuf>,
}

/// How long a certificate rotation waits for in-flight PUBACKs before reconnecting.
const ROTATION_DRAIN: Duration = Duration::from_secs(5);

enum SessionEnd {
    Stopped,
    Reconnect,
    /// Could not connect.
    Failed(ConnectionFailed),
    /// Connected, then lost (closed by the broker or the network).
    Lost(ConnectionFailed),
}

impl Uplink {
    /// Checks the URL and builds the TLS configuration (a broken file stops the start).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: UplinkConfig,
        outbox: Outbox,
        hub: DownlinkHub,
        channels: watch::Receiver<ChannelSet>,
        directory: Option<watch::Receiver<ChannelSet>>,
        reloads: watch::Receiver<u64>,
        status: watch::Sender<UplinkStatus>,
        report: StatusHandle,
        max_packet: usize,
    ) -> Result<Self, UplinkError> {
        let url = config.url.clone().unwrap_or_default();
        let (use_tls, host, port) = parse_url(&url)?;
        let files = UplinkTlsFiles {
            client_cert: config.client_cert.clone(),
            client_key: config.client_key.clone(),
            ca_certs: config.ca_certs.clone(),
        };
        let tls = if use_tls {
            Some(tls::uplink_client(&files)?)
        } else {
            None
        };
        let mut topics = Topics::new(
            config.platform,
            config.topic_template.clone(),
            config.downlink_subtopic.clone(),
        );
        if let Some(d) = &directory {
            topics.handle_directory(&d.borrow());
        }
        let uplink = Self {
            topics,
            subs: Subscriptions::new(config.quarantine_after),
            directory,
            config,
            host,
            port,
            files,
            tls,
            max_packet,
            outbox,
            hub,
            channels,
            reloads,
            status,
            report,
            runtime_dir: None,
        };
        uplink.status.send_modify(|s| {
            s.state = UplinkState::Connecting;
            s.url = Some(url);
        });
        uplink.note_certificate();
        Ok(uplink)
    }

    /// Records the client certificate's expiry in the status; warns within 30 days.
    fn note_certificate(&self) {
        let cert = self.tls.as_ref().and_then(|t| t.cert.clone());
        let warning = cert.as_ref().and_then(|c| {
            let now = SystemTime::now();
            c.expires_soon(now).then(|| {
                format!(
                    "uplink certificate {} expires in {} days",
                    c.subject,
                    c.remaining(now).as_secs() / 86_400
                )
            })
        });
        // Logged when it first appears and when the day count changes (once a day at most).
        if let Some(w) = &warning
            && self.status.borrow().cert_warning.as_ref() != Some(w)
        {
            warn!("{w}: renew it and send SIGHUP");
        }
        self.status.send_modify(|s| {
            s.cert = cert;
            s.cert_warning = warning;
        });
    }

    fn params(&self) -> mqtt::ConnectParams {
        mqtt::ConnectParams {
            host: self.host.clone(),
            port: self.port,
            tls: self.tls.as_ref().map(|t| t.config.clone()),
            client_id: self.config.client_id.clone(),
            keep_alive: self.config.keep_alive.get(),
            version: self.config.mqtt_version,
            inflight: self.config.inflight,
            username: self.config.username.clone(),
            password: self.config.password.expose().to_owned(),
            will_topic: self.status_topic().map(str::to_owned),
            connect_timeout: self.config.connect_timeout.get(),
            max_packet: self.max_packet,
            session_expiry: self.config.session_expiry.get(),
            socket_dir: self.runtime_dir.clone(),
        }
    }

    /// The status topic, when there is one and the platform allows it now.
    fn status_topic(&self) -> Option<&str> {
        self.config
            .status_topic
            .as_deref()
            .filter(|t| self.topics.status_allowed(t))
    }

    /// Re-reads the TLS files. `true`: new material in place, reconnect.
    fn reload_tls(&mut self) -> bool {
        if self.tls.is_none() {
            info!("reload: the uplink uses plain MQTT; nothing to re-read");
            return false;
        }
        match tls::uplink_client(&self.files) {
            Ok(new) => {
                info!(
                    subject = new.cert.as_ref().map_or("(none)", |c| c.subject.as_str()),
                    "reload: uplink TLS files re-read; reconnecting with them"
                );
                self.tls = Some(new);
                self.note_certificate();
                true
            }
            Err(e) => {
                error!(
                    "reload: cannot use the new uplink TLS files, keeping the current ones: {e}"
                );
                self.status
                    .send_modify(|s| s.last_error = Some(format!("reload refused: {e}")));
                false
            }
        }
    }

    /// Runs until `token` is cancelled; then delivers what is in flight (bounded by the
    /// supervisor's drain deadline), says `offline`, disconnects and returns.
    pub async fn run(mut self, token: CancellationToken) {
        let mut backoff = Backoff::new(
            self.config.reconnect_min.get(),
            self.config.reconnect_max.get(),
        );
        let mut window = Window::new(
            usize::from(self.config.inflight),
            self.config.quarantine_after,
        );
        let mut committed = self.outbox.committed();
        let mut reloads_open = true;
        loop {
            if token.is_cancelled() {
                break;
            }
            self.status
                .send_modify(|s| s.state = UplinkState::Connecting);
            let end = self
                .session(&mut window, &mut committed, &token, &mut backoff)
                .await;
            self.outbox.ack(&window.poll_acks());
            let end = match end {
                SessionEnd::Lost(e) => {
                    let (blamed, refused) = self.subs.handle_connection_lost();
                    if let Some(r) = refused {
                        error!(
                            filter = %r.filter,
                            "uplink: no more command subscription on this filter: {}; is the gateway's client connected to that channel upstream? (SIGHUP asks again)",
                            r.reason
                        );
                    }
                    if blamed {
                        // A SUBSCRIBE was in flight, and nothing was published since it went out.
                        window.handle_disconnect();
                    } else {
                        window.handle_connection_lost(std::time::Instant::now());
                    }
                    self.quarantine(&mut window);
                    if window.suspects() > 0 {
                        info!(
                            suspects = window.suspects(),
                            "uplink: the connection was lost with messages in flight; they are sent one at a time until each is acknowledged (a message the upstream closes the connection on is quarantined after uplink.quarantine_after tries)"
                        );
                    }
                    SessionEnd::Failed(e)
                }
                other => {
                    window.handle_disconnect();
                    self.subs.handle_disconnect();
                    other
                }
            };
            self.status.send_modify(|s| s.connected_since_ms = None);
            match end {
                SessionEnd::Stopped => break,
                SessionEnd::Reconnect | SessionEnd::Lost(_) => {}
                SessionEnd::Failed(e) => {
                    let delay = backoff.poll_delay(fastrand::f64());
                    warn!(
                        url = self.config.url.as_deref().unwrap_or_default(),
                        "uplink connection failed: {e}; queued messages stay in the outbox; retrying in {:.1}s",
                        delay.as_secs_f64()
                    );
                    self.status.send_modify(|s| {
                        s.state = UplinkState::Backoff;
                        s.last_error = Some(e.to_string());
                    });
                    tokio::select! {
                        () = token.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                        r = self.reloads.changed(), if reloads_open => {
                            if r.is_err() {
                                reloads_open = false;
                            } else {
                                self.reload_tls();
                            }
                        }
                    }
                }
            }
        }
        self.status.send_modify(|s| s.state = UplinkState::Stopped);
        info!("uplink stopped");
    }

    async fn session(
        &mut self,
        window: &mut Window,
        committed: &mut watch::Receiver<u64>,
        token: &CancellationToken,
        backoff: &mut Backoff,
    ) -> SessionEnd {
        if let Some(d) = &mut self.directory {
            self.topics.handle_directory(&d.borrow_and_update());
        }
        if let Some(t) = &self.config.status_topic
            && self.status_topic().is_none()
        {
            warn!(
                status_topic = %t,
                "uplink: no status published: the status topic is not a channel topic of a channel this gateway mirrors (uplink.platform = \"supermq\")"
            );
        }
        let (client, mut events) = mqtt::connect(&self.params());
        loop {
            tokio::select! {
                () = token.cancelled() => return SessionEnd::Stopped,
                r = events.poll() => match r {
                    Ok(mqtt::Event::ConnAck) => break,
                    Ok(_) => {}
                    Err(e) => return SessionEnd::Failed(e),
                }
            }
        }
        backoff.handle_connected();
        info!(
            url = self.config.url.as_deref().unwrap_or_default(),
            client_id = %self.config.client_id,
            "uplink connected"
        );
        self.status.send_modify(|s| {
            s.state = UplinkState::Connected;
            s.last_error = None;
            s.connected_since_ms = Some(now_ms());
            s.connects_total += 1;
        });
        if let Some(status_topic) = self.status_topic()
            && client
                .publish(status_topic, Bytes::from_static(b"online"), true, None)
                .is_ok()
        {
            window.handle_own_publish();
        }
        self.subs.handle_disconnect();
        self.sync_subscriptions(&client);
        let mut stats_tick = tokio::time::interval(self.config.status_interval.get());
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Leaving this connection: (because of shutdown, deadline). Shutdown waits for the
        // supervisor's drain deadline; a certificate rotation waits at most ROTATION_DRAIN for
        // the PUBACKs in flight, so the new connection does not resend them.
        let mut leaving: Option<(bool, tokio::time::Instant)> = None;
        let mut channels_open = true;
        let mut reloads_open = true;
        // When the messages the broker refused are sent again.
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let draining = leaving.is_some();
            if !draining && let Err(e) = self.fill(window, committed).await {
                error!("uplink: cannot read the outbox: {e}");
            }
            let mut published = 0;
            // Nothing is published while a SUBSCRIBE waits for its SUBACK (see subscriptions.rs).
            while !self.subs.busy()
                && let Some(entry) = window.poll_publish()
            {
                let (seq, m) = (entry.seq, &entry.message);
                let topic = match self.topics.message(m) {
                    Ok(t) => t,
                    Err(e) => {
                        // Never sent: the platform would refuse it (SuperMQ closes the
                        // connection). It stays in the outbox, held out of the window.
                        self.unpublishable(window, seq, &e);
                        continue;
                    }
                };
                if client
                    .publish_for(
                        topic,
                        m.payload.clone(),
                        false,
                        m.content_format.as_deref(),
                        Some(&m.client_id),
                    )
                    .is_err()
                {
                    window.handle_publish_refused(seq);
                    break;
                }
                published += 1;
            }
            if published > 0 {
                self.status.send_modify(|s| s.published_total += published);
            }
            let acks = window.poll_acks();
            if !acks.is_empty() {
                self.outbox.ack(&acks);
                self.status
                    .send_modify(|s| s.delivered_total += acks.len() as u64);
            }
            if let Some((stop, deadline)) = leaving
                && (window.is_drained() || tokio::time::Instant::now() >= deadline)
            {
                self.goodbye(&client, &mut events).await;
                return if stop {
                    SessionEnd::Stopped
                } else {
                    SessionEnd::Reconnect
                };
            }
            let stopping = leaving.is_some_and(|(stop, _)| stop);
            let deadline = leaving.map(|(_, d)| d);
            tokio::select! {
                r = events.poll() => {
                    match r {
                        Ok(ev) => self.handle_event(ev, &client, window, &mut retry_at),
                        Err(e) => return SessionEnd::Lost(e),
                    }
                    // The rest of a run rumqttc decoded from one read (PUBACKs come in runs),
                    // in this wake-up rather than one loop round each.
                    while let Some(ev) = events.next_buffered() {
                        self.handle_event(ev, &client, window, &mut retry_at);
                    }
                }
                () = token.cancelled(), if !stopping => {
                    info!(in_flight = window.inflight(), "uplink: delivering what is in flight, then disconnecting");
                    leaving = Some((true, tokio::time::Instant::now() + Duration::from_secs(86_400)));
                }
                () = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {}
                () = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() && !draining => {
                    info!(messages = window.held(), "uplink: sending the messages the broker refused again");
                    window.handle_retry();
                    retry_at = None;
                }
                _ = committed.changed(), if !draining => {}
                r = self.reloads.changed(), if reloads_open => {
                    if r.is_err() {
                        reloads_open = false;
                    } else {
                        // Refused command subscriptions are asked for again.
                        self.subs.handle_reload();
                        self.sync_subscriptions(&client);
                        if self.reload_tls() && leaving.is_none() {
                            leaving = Some((false, tokio::time::Instant::now() + ROTATION_DRAIN));
                        }
                    }
                }
                r = async {
                    match &mut self.directory {
                        Some(d) => d.changed().await,
                        None => std::future::pending().await,
                    }
                }, if self.directory.is_some() => {
                    match r {
                        Err(_) => self.directory = None,
                        Ok(()) => {
                            if let Some(d) = &mut self.directory {
                                self.topics.handle_directory(&d.borrow_and_update());
                            }
                            self.sync_subscriptions(&client);
                        }
                    }
                }
                r = self.channels.changed(), if channels_open => {
                    if r.is_err() {
                        channels_open = false;
                    } else {
                        self.sync_subscriptions(&client);
                    }
                }
                _ = stats_tick.tick() => {
                    // A long-running daemon crosses the 30-day line without a restart.
                    self.note_certificate();
                    let report = self.report.report();
                    match serde_json::to_vec(&report) {
                        Ok(json) if self.status_topic().is_some() => {
                            let topic = format!("{}/stats", self.status_topic().unwrap_or_default());
                            if client
                                .publish(&topic, Bytes::from(json), true, Some("application/json"))
                                .is_ok()
                            {
                                window.handle_own_publish();
                            }
                        }
                        Ok(_) => {}
                        Err(e) => debug!("cannot encode the status: {e}"),
                    }
                }
            }
        }
    }

    /// One event of the connection: the window's bookkeeping, a command, a SUBACK.
    fn handle_event(
        &mut self,
        ev: mqtt::Event,
        client: &mqtt::Client,
        window: &mut Window,
        retry_at: &mut Option<tokio::time::Instant>,
    ) {
        match ev {
            mqtt::Event::Sent(pkid) => window.handle_sent(pkid, std::time::Instant::now()),
            mqtt::Event::PubAck { pkid, ok: true, .. } => {
                window.handle_puback(pkid);
            }
            mqtt::Event::PubAck { pkid, reason, .. } => {
                let refused = window.handle_puback_refused(pkid, &reason);
                if refused.is_some() {
                    self.status.send_modify(|s| s.refused_total += 1);
                }
                match refused {
                    Some((_, window::Refused::GivenUp)) => self.quarantine(window),
                    // Once per retry round, not once per message.
                    Some((_, window::Refused::Held)) if retry_at.is_none() => {
                        let delay = self.config.refused_retry.get();
                        error!(reason, retry_in = ?delay, "broker refused a message (MQTT 5 PUBACK); it stays in the outbox and is sent again (quarantined after uplink.quarantine_after refusals)");
                        *retry_at = Some(tokio::time::Instant::now() + delay);
                    }
                    _ => {}
                }
            }
            mqtt::Event::Publish { topic, payload } => self.handle_command(&topic, payload),
            mqtt::Event::SubAck { ok, reason } => {
                let filter = self.subs.in_flight().map(str::to_owned);
                match self.subs.handle_suback(ok, &reason) {
                    Some(r) => {
                        error!(filter = %r.filter, "uplink: the broker refused the command subscription ({}); not asked again until SIGHUP", r.reason)
                    }
                    None => {
                        if let Some(filter) = filter {
                            debug!(filter, "uplink: subscribed for commands");
                        }
                    }
                }
                self.send_subscription(client);
            }
            _ => {}
        }
    }

    /// Buffers more outbox entries when there is room and something new was committed: from
    /// the outbox's in-memory feed of what was just made durable, or, for a backlog (after a
    /// restart, an outage, a feed overflow), from the database on a blocking thread.
    async fn fill(
        &self,
        window: &mut Window,
        committed: &mut watch::Receiver<u64>,
    ) -> Result<(), crate::outbox::OutboxError> {
        let want = window.want();
        let latest = *committed.borrow_and_update();
        if want == 0 || latest <= window.cursor() {
            return Ok(());
        }
        let after = window.cursor();
        let fetched = match self.outbox.take_fed(after, want) {
            Some(fetched) => fetched,
            None => {
                let outbox = self.outbox.clone();
                tokio::task::spawn_blocking(move || outbox.fetch_backlog(after, want))
                    .await
                    .map_err(|e| {
                        crate::outbox::OutboxError::Thread(std::io::Error::other(e.to_string()))
                    })??
            }
        };
        window.handle_fetched_through(fetched.entries, fetched.through);
        Ok(())
    }

    /// Retained `offline`, DISCONNECT, and wait (briefly) until it is written.
    async fn goodbye(&self, client: &mqtt::Client, events: &mut mqtt::EventLoop) {
        if let Some(status_topic) = self.status_topic() {
            let _ = client.publish(status_topic, Bytes::from_static(b"offline"), true, None);
        }
        let _ = client.disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(ev) = events.poll().await {
                if ev == mqtt::Event::Disconnected {
                    break;
                }
            }
        })
        .await;
        events.close().await;
        info!("uplink disconnected");
    }

    /// Moves the entries the window gave up on into the outbox's quarantine (durable in its
    /// next group commit; the window never sends them again).
    fn quarantine(&self, window: &mut Window) {
        for g in window.poll_quarantine() {
            error!(
                seq = g.seq,
                attempts = g.attempts,
                "uplink: message quarantined: {}; other messages keep flowing (edgegw quarantine list / requeue / drop)",
                g.reason
            );
            self.outbox.quarantine(g.seq, g.reason, g.attempts);
        }
    }

    /// Sets `gateway.domain_id`, the upstream domain of channels without one.
    #[must_use]
    pub fn with_gateway_domain(mut self, domain: &str) -> Self {
        self.topics.set_gateway_domain(domain);
        self
    }

    /// Sets `gateway.runtime_dir`, where the TLS bridge's private socket directory goes
    /// (instead of the temporary directory).
    #[must_use]
    pub fn with_runtime_dir(mut self, dir: &std::path::Path) -> Self {
        self.runtime_dir = Some(dir.to_owned());
        self
    }

    /// A message that has no valid upstream topic: held out of the window (still in the
    /// outbox), logged once per entry.
    fn unpublishable(&self, window: &mut Window, seq: u64, reason: &topics::TopicRefusal) {
        if window.handle_unpublishable(seq) {
            error!(
                seq,
                "uplink: message not sent: {reason}; it stays in the outbox"
            );
            self.status.send_modify(|s| s.refused_total += 1);
        }
    }
}
