//! The serial adapter's shell: per configured port, one blocking reader thread (hal is sync)
//! that opens the port with backoff and forwards what it reads, one writer thread, and one
//! async task that owns the [`Session`] and talks to the auth store and the outbox through a
//! [`Backend`]. All channels are bounded. A port that fails never affects another: each has
//! its own threads and task, and errors only ever restart that port's open loop.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use hal::serial::{SerialError, SerialOpener, SerialPort, SerialSettings};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::codec::Target;
use super::proto::{Client, Event, Refusal, Session, SessionConfig, SessionStats, Token};
use super::status::PortHandle;
use crate::downlink::{Command, Subscription};
use crate::runtime::metrics::Adapter;

/// The durable-acknowledgement future of one accepted message: its outbox sequence number.
pub type Durable = Pin<Box<dyn Future<Output = Result<u64, Refusal>> + Send>>;

/// One channel's downlink commands for a session's client, polled by the port task itself.
#[derive(Debug)]
pub struct DownlinkStream {
    /// The channel as the sensor knows it (its name, else its id): `CMD <shown>[/…]`.
    pub shown: String,
    pub commands: Subscription,
    /// What it was admitted for: re-checked on every store change.
    pub admitted: crate::intake::Admitted,
}

/// What the adapter needs from the rest of the gateway: [`crate::intake`] (in
/// `serial::backend`), fakes in tests. Every method is quick and non-blocking: decisions come
/// from caches, and durability is awaited through the returned future.
pub trait Backend: Send + Sync + 'static {
    /// AUTH: throttling, then identity + secret. Wrong secret and unknown identity are the
    /// same [`Refusal::Unauthenticated`].
    fn authenticate(&self, identity: &str, secret: &[u8]) -> Result<Client, Refusal>;
    /// The client a port is bound to by configuration (must exist and be enabled).
    fn bound_client(&self, identity: &str) -> Result<Client, Refusal>;
    /// PUB: authorize `client` on the channel, then hand the message to the outbox.
    fn publish(
        &self,
        client: &Client,
        target: &Target,
        payload: Vec<u8>,
    ) -> Result<Durable, Refusal>;
    /// Downlink commands for `client`, one stream per channel it may subscribe to.
    fn downlink(&self, client: &Client) -> Vec<DownlinkStream>;
    /// Fires on every auth store change (streams are then re-checked).
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<i64>> {
        None
    }
    /// Whether a stream's client may still receive its channel's commands.
    fn still_subscribed(&self, stream: &DownlinkStream) -> bool {
        let _ = stream;
        true
    }
}

/// One port's configuration, already validated.
#[derive(Debug, Clone)]
pub struct PortSpec {
    /// As configured (prefer `/dev/serial/by-id/…`); resolved at every open.
    pub path: PathBuf,
    pub settings: SerialSettings,
    /// Bound client identity: lines from this port need no AUTH.
    pub client: Option<String>,
}

/// Adapter-wide settings.
#[derive(Debug, Clone)]
pub struct AdapterConfig {
    pub max_line: usize,
    pub max_pending: usize,
    pub reopen_min: Duration,
    pub reopen_max: Duration,
}

/// What a reader thread reports.
#[derive(Debug)]
enum PortEvent {
    Opened { device: PathBuf },
    Data(Vec<u8>),
    Closed { reason: String },
}

/// Bytes per read: small enough to keep latency low, large enough for a burst.
const READ_CHUNK: usize = 512;
/// Reader → task and task → writer queue depths (chunks / lines).
const QUEUE: usize = 16;
/// At shutdown, how long to wait for pending PUBs to become durable and be answered.
const FINAL_ANSWERS: Duration = Duration::from_secs(2);

/// Starts one port: its threads and its async task. The task ends when `cancel` fires; the
/// threads notice within one read timeout and end too.
pub fn spawn_port(
    spec: PortSpec,
    config: AdapterConfig,
    opener: Arc<dyn SerialOpener>,
    backend: Arc<dyn Backend>,
    status: PortHandle,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (events_tx, events_rx) = mpsc::channel(QUEUE);
    let (write_tx, write_rx) = mpsc::channel::<WriterMsg>(QUEUE);
    let (stop_tx, stop_rx) = std_mpsc::channel::<()>();
    let name = spec.path.display().to_string();
    let reader = {
        let spec = spec.clone();
        let config = config.clone();
        let write_tx = write_tx.clone();
        std::thread::Builder::new()
            .name("serial-read".into())
            .spawn(move || reader_loop(&spec, &config, &*opener, &events_tx, &write_tx, &stop_rx))
    };
    let writer = std::thread::Builder::new()
        .name("serial-write".into())
        .spawn(move || writer_loop(write_rx));
    if let Err(e) = reader.as_ref().and(writer.as_ref()) {
        warn!(port = %name, "cannot start serial port threads: {e}");
    }
    tokio::spawn(async move {
        port_task(spec, config, backend, status, events_rx, write_tx, cancel).await;
        // Dropping the stop sender wakes the reader out of a backoff wait.
        drop(stop_tx);
    })
}

enum WriterMsg {
    Port(Box<dyn SerialPort>),
    Bytes(Vec<u8>),
}

fn reader_loop(
    spec: &PortSpec,
    config: &AdapterConfig,
    opener: &dyn SerialOpener,
    events: &mpsc::Sender<PortEvent>,
    writer: &mpsc::Sender<WriterMsg>,
    stop: &std_mpsc::Receiver<()>,
) {
    let name = spec.path.display();
    let mut backoff = config.reopen_min;
    let mut failures = 0u32;
    loop {
        match opener.open(&spec.path, &spec.settings) {
            Ok(mut port) => {
                failures = 0;
                let opened_at = std::time::Instant::now();
                let device = port.device().to_owned();
                match port.try_clone() {
                    Ok(w) => {
                        if writer.blocking_send(WriterMsg::Port(w)).is_err() {
                            return;
                        }
                    }
                    Err(e) => warn!(port = %name, "no write handle: {e}"),
                }
                if events.blocking_send(PortEvent::Opened { device }).is_err() {
                    return;
                }
                let Some(reason) = read_until_closed(&mut *port, events, stop) else {
                    return;
                };
                drop(port);
                if events.blocking_send(PortEvent::Closed { reason }).is_err() {
                    return;
                }
                // A port that fails right after opening must not spin: keep backing off
                // unless it stayed up for a while.
                if opened_at.elapsed() >= config.reopen_max {
                    backoff = config.reopen_min;
                }
                if !matches!(
                    stop.recv_timeout(backoff),
                    Err(std_mpsc::RecvTimeoutError::Timeout)
                ) {
                    return;
                }
                backoff = (backoff * 2).min(config.reopen_max);
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    warn!(port = %name, retry_in = ?backoff, "cannot open serial port: {e}");
                } else {
                    debug!(port = %name, retry_in = ?backoff, failures, "still cannot open serial port: {e}");
                }
                match stop.recv_timeout(backoff) {
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                backoff = (backoff * 2).min(config.reopen_max);
            }
        }
    }
}

/// Reads until the device goes away (`Some(reason)`) or the adapter stops (`None`).
fn read_until_closed(
    port: &mut dyn SerialPort,
    events: &mpsc::Sender<PortEvent>,
    stop: &std_mpsc::Receiver<()>,
) -> Option<String> {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        if !matches!(stop.try_recv(), Err(std_mpsc::TryRecvError::Empty)) {
            return None;
        }
        match port.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => {
                // Blocks while the session is busy: backpressure onto the line.
                if events
                    .blocking_send(PortEvent::Data(buf[..n].to_vec()))
                    .is_err()
                {
                    return None;
                }
            }
            // Disconnected (EIO, hang-up, unplug) or any other read failure: reopen.
            Err(e) => return Some(e.to_string()),
        }
    }
}

fn writer_loop(mut rx: mpsc::Receiver<WriterMsg>) {
    let mut port: Option<Box<dyn SerialPort>> = None;
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            WriterMsg::Port(p) => port = Some(p),
            WriterMsg::Bytes(bytes) => {
                let Some(p) = port.as_mut() else { continue };
                match p.write_all(&bytes) {
                    Ok(()) => {}
                    // Gone: the reader sees the same and reopens; answers for the old
                    // connection are moot.
                    Err(e @ SerialError::Disconnected { .. }) => {
                        debug!("serial write failed: {e}");
                        port = None;
                    }
                    // Timed out (flow control holding the line): this answer is lost, the
                    // port stays usable.
                    Err(e) => warn!("serial write failed, answer dropped: {e}"),
                }
            }
        }
    }
}

async fn port_task(
    spec: PortSpec,
    config: AdapterConfig,
    backend: Arc<dyn Backend>,
    status: PortHandle,
    mut events: mpsc::Receiver<PortEvent>,
    writer: mpsc::Sender<WriterMsg>,
    cancel: CancellationToken,
) {
    let name = spec.path.display().to_string();
    let changes = backend.changes();
    let mut shell = Shell {
        session: None,
        generation: 0,
        pending: JoinSet::new(),
        downlink: Vec::new(),
        changes,
        reported: SessionStats::default(),
        backend,
        writer,
        name: name.clone(),
        status,
    };
    let session_config = SessionConfig {
        max_line: config.max_line,
        max_pending: config.max_pending,
    };
    // Input not yet consumed by a full session.
    let mut backlog: Vec<u8> = Vec::new();
    loop {
        let can_read = shell.session.as_ref().is_none_or(|s| !s.is_full()) && backlog.is_empty();
        tokio::select! {
            () = cancel.cancelled() => break,
            event = events.recv(), if can_read => match event {
                None => break,
                Some(PortEvent::Opened { device }) => {
                    info!(port = %name, device = %device.display(), "serial port open");
                    shell.status.update(|p| {
                        p.state = "open";
                        p.device = Some(device.display().to_string());
                        p.opens += 1;
                    });
                    shell.new_session(&spec, session_config.clone());
                    shell.drain().await;
                }
                Some(PortEvent::Data(bytes)) => {
                    backlog = bytes;
                    shell.feed(&mut backlog).await;
                }
                Some(PortEvent::Closed { reason }) => {
                    warn!(port = %name, "serial port closed ({reason}); reopening with backoff");
                    shell.end_session();
                    shell.status.update(|p| {
                        p.state = "waiting";
                        p.client = None;
                        p.last_close = Some(reason);
                    });
                    backlog.clear();
                }
            },
            Some(done) = shell.pending.join_next(), if !shell.pending.is_empty() => {
                if let Ok((generation, token, result)) = done {
                    shell.publish_result(generation, token, result);
                }
                shell.feed(&mut backlog).await;
            }
            Some(()) = changed(&mut shell.changes) => {
                // A client that lost a subscribe grant (disabled, removed, disconnected) stops
                // receiving that channel's commands at once.
                let backend = Arc::clone(&shell.backend);
                shell.downlink.retain(|s| {
                    let keep = backend.still_subscribed(s);
                    if !keep {
                        info!(port = %name, client_id = %s.admitted.client.id, channel = %s.shown, "serial downlink ended: the client lost its subscribe grant");
                    }
                    keep
                });
            }
            (i, cmd) = next_command(&mut shell.downlink), if !shell.downlink.is_empty() => {
                match cmd {
                    Some(cmd) => {
                        if let Some(session) = shell.session.as_mut() {
                            let target = Target {
                                channel: shell.downlink[i].shown.clone(),
                                subtopic: cmd.subtopic,
                            };
                            if let Err(e) = session.handle_command(target, cmd.payload.to_vec()) {
                                warn!(port = %name, client_id = %shell.downlink[i].admitted.client.id, channel = %shell.downlink[i].shown, "command not delivered over serial: {e}");
                            }
                        }
                    }
                    // The hub dropped this stream: stop polling it.
                    None => {
                        shell.downlink.swap_remove(i);
                    }
                }
                shell.drain().await;
            }
        }
    }
    // Intake stopped: read nothing more, but answer the PUBs already handed to the outbox
    // (it is still open; the pipeline stops after intake), so sensors do not resend them.
    let flushed = tokio::time::timeout(FINAL_ANSWERS, async {
        while let Some(done) = shell.pending.join_next().await {
            if let Ok((generation, token, result)) = done {
                shell.publish_result(generation, token, result);
            }
            shell.drain().await;
        }
    })
    .await;
    if flushed.is_err() {
        warn!(port = %name, "stopping with PUBs still waiting for durability; their sensors get no answer");
    }
    debug!(port = %name, "serial adapter stopped");
}

/// The next auth store change (`None` once the source is gone: not polled again).
async fn changed(rx: &mut Option<tokio::sync::watch::Receiver<i64>>) -> Option<()> {
    match rx {
        Some(inner) => {
            if inner.changed().await.is_ok() {
                Some(())
            } else {
                *rx = None;
                None
            }
        }
        None => std::future::pending().await,
    }
}

/// The next command of any of the session's downlink streams (`None`: that stream ended).
/// Commands go straight from the hub into the session, no forwarder tasks.
async fn next_command(streams: &mut [DownlinkStream]) -> (usize, Option<Command>) {
    std::future::poll_fn(|cx| {
        for (i, s) in streams.iter_mut().enumerate() {
            if let std::task::Poll::Ready(cmd) = s.commands.poll_recv(cx) {
                return std::task::Poll::Ready((i, cmd));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

struct Shell {
    session: Option<Session>,
    generation: u64,
    pending: JoinSet<(u64, Token, Result<u64, Refusal>)>,
    downlink: Vec<DownlinkStream>,
    changes: Option<tokio::sync::watch::Receiver<i64>>,
    /// The session's stats when last added to the metrics and the port status.
    reported: SessionStats,
    backend: Arc<dyn Backend>,
    writer: mpsc::Sender<WriterMsg>,
    name: String,
    status: PortHandle,
}

impl Shell {
    fn new_session(&mut self, spec: &PortSpec, config: SessionConfig) {
        self.end_session();
        let bound = spec.client.as_deref().and_then(|identity| {
            match self.backend.bound_client(identity) {
                Ok(client) => Some(client),
                Err(reason) => {
                    warn!(port = %self.name, client = identity, "port is bound to a client that cannot publish ({reason:?}); sensors on it must AUTH");
                    None
                }
            }
        });
        if let Some(client) = &bound {
            self.downlink = self.backend.downlink(client);
        }
        let identity = bound.as_ref().map(|c| c.identity.clone());
        self.status.update(|p| p.client = identity);
        self.session = Some(Session::new(config, bound));
        self.reported = SessionStats::default();
    }

    fn end_session(&mut self) {
        self.session = None;
        self.downlink = Vec::new();
        self.generation += 1;
        // Receipts still in flight belong to the old connection; their messages are durable
        // (or not) regardless, and nobody is left to tell.
        self.pending.detach_all();
    }

    fn publish_result(&mut self, generation: u64, token: Token, result: Result<u64, Refusal>) {
        if generation != self.generation {
            return;
        }
        if let Some(session) = self.session.as_mut() {
            session.handle_publish_result(token, result);
        }
    }

    /// Feeds the backlog into the session as far as it takes it, handling events as they come.
    async fn feed(&mut self, backlog: &mut Vec<u8>) {
        let Some(session) = self.session.as_mut() else {
            backlog.clear();
            return;
        };
        let used = session.handle_input(backlog);
        backlog.drain(..used);
        self.drain().await;
        // AUTH results are immediate, so a pause ends inside drain(); go on while there is room.
        while !backlog.is_empty() {
            let Some(session) = self.session.as_mut() else {
                backlog.clear();
                return;
            };
            if session.is_full() {
                break;
            }
            let used = session.handle_input(backlog);
            backlog.drain(..used);
            self.drain().await;
            if used == 0 {
                break;
            }
        }
    }

    /// Handles every event and sends every answer.
    async fn drain(&mut self) {
        loop {
            let Some(session) = self.session.as_mut() else {
                return;
            };
            if let Some(event) = session.poll_event() {
                match event {
                    Event::Authenticate {
                        token,
                        identity,
                        secret,
                    } => {
                        let result = self.backend.authenticate(&identity, &secret);
                        match &result {
                            Ok(_) => {
                                info!(port = %self.name, client = %identity, "serial sensor authenticated")
                            }
                            Err(reason) => {
                                debug!(port = %self.name, client = %identity, "serial AUTH refused: {reason:?}")
                            }
                        }
                        session.handle_auth_result(token, result);
                    }
                    Event::Publish {
                        token,
                        client,
                        target,
                        payload,
                    } => match self.backend.publish(&client, &target, payload) {
                        Ok(durable) => {
                            let generation = self.generation;
                            self.pending
                                .spawn(async move { (generation, token, durable.await) });
                        }
                        Err(reason) => session.handle_publish_result(token, Err(reason)),
                    },
                    Event::Authenticated { client } => {
                        self.status
                            .update(|p| p.client = Some(client.identity.clone()));
                        self.downlink = self.backend.downlink(&client);
                    }
                }
                continue;
            }
            if let Some(bytes) = session.poll_transmit() {
                if self.writer.send(WriterMsg::Bytes(bytes)).await.is_err() {
                    self.report();
                    return;
                }
                continue;
            }
            self.report();
            return;
        }
    }

    /// Adds what the session answered since the last report to the metrics (adapter
    /// `serial`) and the port status: each answer counted once, by what the session decided.
    fn report(&mut self) {
        let Some(session) = self.session.as_ref() else {
            return;
        };
        let now = session.stats();
        let metrics = self.status.metrics();
        let accepted = now.accepted.saturating_sub(self.reported.accepted);
        let commands = now.commands.saturating_sub(self.reported.commands);
        let commands_refused = now
            .commands_refused
            .saturating_sub(self.reported.commands_refused);
        let refused = now
            .refused
            .total()
            .saturating_sub(self.reported.refused.total());
        for _ in 0..accepted {
            metrics.message_in(Adapter::Serial);
        }
        for _ in 0..commands {
            metrics.downlink_delivered(Adapter::Serial);
        }
        for _ in 0..commands_refused {
            metrics.downlink_refused(Adapter::Serial);
        }
        let mut reported_refused = self.reported.refused;
        metrics.sync_refusals(Adapter::Serial, &now.refused, &mut reported_refused);
        if accepted > 0 || refused > 0 {
            self.status.update(|p| {
                p.published += accepted;
                p.errors += refused;
            });
        }
        self.reported = now;
    }
}

#[cfg(test)]
mod tests;
