//! The async shells of the CoAP adapters: one task owns one UDP socket, one CoAP core and
//! (for CoAPS) one DTLS session table. It `select!`s over the socket, finished decisions,
//! downlink notifications, the next timer and cancellation, then drains every `poll_*`.
//! No lock is held around protocol state; every channel is bounded.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::dtls::{SessionEvent, Sessions};
use super::proto::{
    Credentials, Event, ExchangeId, Failure, Outcome, Server, ServerConfig, Target, Transmit,
};
use crate::metrics::{Adapter, Metrics};

pub use super::dtls::Principal;

/// Who sent a request: query credentials (plain CoAP) or the DTLS session's principal.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    Query(&'a Credentials),
    Session(&'a Principal),
}

/// A downlink command delivered to an observing (or polling) sensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downlink {
    pub payload: Vec<u8>,
    pub content_format: Option<u16>,
}

/// What a publish resolves to once durable (or refused).
pub type PublishFuture = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>>;

/// The decisions the adapters ask for: authentication, authorization, durability, downlink.
/// Implemented over the auth store and the outbox in `coap::backend`; tests use fakes.
pub trait Backend: Send + Sync + 'static {
    /// Throttle, authenticate, authorize publish and enqueue; the future resolves once the
    /// message is durable.
    fn publish(
        &self,
        peer: SocketAddr,
        who: Who<'_>,
        target: &Target,
        content_format: Option<u16>,
        payload: Vec<u8>,
    ) -> PublishFuture;
    /// Authenticate, authorize subscribe, and return the command stream for that channel.
    fn subscribe(
        &self,
        peer: SocketAddr,
        who: Who<'_>,
        target: &Target,
    ) -> Result<mpsc::Receiver<Downlink>, Failure>;
    /// A GET without Observe: the next waiting command, if any.
    fn poll(
        &self,
        peer: SocketAddr,
        who: Who<'_>,
        target: &Target,
    ) -> Result<Option<Downlink>, Failure> {
        let _ = (peer, who, target);
        Ok(None)
    }
    /// DTLS-PSK: the key for an identity (an enabled client's secret), or `None`.
    fn psk(&self, identity: &[u8]) -> Option<Vec<u8>>;
    /// DTLS-PSK: the principal of an identity whose key just proved right.
    fn psk_principal(&self, identity: &str) -> Option<Principal>;
    /// DTLS certificate: the principal for a chain-verified certificate's CN and serial
    /// (known enabled client, not revoked).
    fn certificate_principal(
        &self,
        cn: &str,
        serial_hex: &str,
        fingerprint_sha256_hex: &str,
    ) -> Result<Principal, Failure>;
    /// Whether a live session's principal is still acceptable (client enabled, certificate
    /// not revoked). Checked periodically for every session; must be cheap (cached).
    fn still_valid(&self, principal: &Principal) -> bool {
        let _ = principal;
        true
    }
    /// Client ids whose live sessions must end at once (revoked certificate).
    fn ended_clients(&self) -> Option<mpsc::Receiver<String>> {
        None
    }
}

/// The DTLS session table's credentials port, answered by a [`Backend`].
pub struct BackendCredentials(pub Arc<dyn Backend>);

impl std::fmt::Debug for BackendCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackendCredentials")
    }
}

impl super::dtls::DtlsCredentials for BackendCredentials {
    fn psk(&self, identity: &[u8]) -> Option<Vec<u8>> {
        self.0.psk(identity)
    }
    fn psk_principal(&self, identity: &str) -> Option<Principal> {
        self.0.psk_principal(identity)
    }
    fn principal_for_certificate(
        &self,
        cn: &str,
        serial_hex: &str,
        fingerprint_sha256_hex: &str,
    ) -> Option<Principal> {
        self.0
            .certificate_principal(cn, serial_hex, fingerprint_sha256_hex)
            .ok()
    }
    fn still_valid(&self, principal: &Principal) -> bool {
        self.0.still_valid(principal)
    }
}

/// Largest datagram read (UDP payload maximum).
const RECV_BUFFER: usize = 65_535;
/// How often the DTLS table is swept: handshake deadlines, idle sessions, and principals
/// checked against the auth store (disabled clients).
const REVALIDATE_EVERY: Duration = Duration::from_secs(1);
/// How long a stopping listener waits to answer publishes that are becoming durable.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Notifications waiting for the shell from all subscriptions together.
const NOTIFY_QUEUE: usize = 256;

/// Serves plain CoAP on an already-bound socket until `cancel`.
pub async fn serve_plain(
    socket: UdpSocket,
    config: ServerConfig,
    backend: Arc<dyn Backend>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    serve(socket, config, None, backend, Metrics::new(), cancel).await
}

/// Serves CoAP over DTLS on an already-bound socket until `cancel`.
pub async fn serve_dtls(
    socket: UdpSocket,
    config: ServerConfig,
    sessions: Sessions,
    backend: Arc<dyn Backend>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    serve(
        socket,
        config,
        Some(sessions),
        backend,
        Metrics::new(),
        cancel,
    )
    .await
}

/// Serves CoAP (`sessions` = `None`) or CoAPS until `cancel`, counting into `metrics` as
/// adapter `coap` or `coaps`.
pub async fn serve(
    socket: UdpSocket,
    config: ServerConfig,
    sessions: Option<Sessions>,
    backend: Arc<dyn Backend>,
    metrics: Metrics,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let mut shell = Shell::new(socket, config, backend, sessions);
    shell.metrics = metrics;
    shell.run(cancel).await
}

struct Shell {
    socket: UdpSocket,
    server: Server,
    sessions: Option<Sessions>,
    backend: Arc<dyn Backend>,
    decisions: JoinSet<(ExchangeId, Outcome)>,
    notify_tx: mpsc::Sender<(ExchangeId, Downlink)>,
    notify_rx: mpsc::Receiver<(ExchangeId, Downlink)>,
    forwarders: std::collections::HashMap<ExchangeId, AbortHandle>,
    ended: Option<mpsc::Receiver<String>>,
    last_counts: (usize, usize),
    metrics: Metrics,
    adapter: Adapter,
    /// What the cores' counters were when last added to `metrics`.
    reported_refusals: crate::metrics::RefusalCounts,
    reported_handshakes: crate::metrics::HandshakeCounts,
}

impl Shell {
    fn new(
        socket: UdpSocket,
        config: ServerConfig,
        backend: Arc<dyn Backend>,
        sessions: Option<Sessions>,
    ) -> Self {
        let (notify_tx, notify_rx) = mpsc::channel(NOTIFY_QUEUE);
        let ended = if sessions.is_some() {
            backend.ended_clients()
        } else {
            None
        };
        let adapter = if sessions.is_some() {
            Adapter::Coaps
        } else {
            Adapter::Coap
        };
        Self {
            socket,
            server: Server::new(config),
            sessions,
            backend,
            decisions: JoinSet::new(),
            notify_tx,
            notify_rx,
            forwarders: std::collections::HashMap::new(),
            adapter,
            ended,
            last_counts: (0, 0),
            metrics: Metrics::new(),
            reported_refusals: Default::default(),
            reported_handshakes: Default::default(),
        }
    }

    async fn run(mut self, cancel: CancellationToken) -> std::io::Result<()> {
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut revalidate = tokio::time::interval(REVALIDATE_EVERY);
        revalidate.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let scheme = if self.sessions.is_some() {
            "coaps"
        } else {
            "coap"
        };
        info!(addr = %self.socket.local_addr()?, "{scheme} listening");
        loop {
            let deadline = self.poll_timeout();
            let sleep_until = deadline.map_or_else(
                || tokio::time::Instant::now() + Duration::from_secs(3600),
                tokio::time::Instant::from_std,
            );
            tokio::select! {
                () = cancel.cancelled() => break,
                received = self.socket.recv_from(&mut buf) => {
                    match received {
                        Ok((len, peer)) => self.handle_datagram(peer, &buf[..len]),
                        // ICMP port unreachable from an earlier send surfaces here on Linux.
                        Err(e) if is_transient(&e) => debug!("{scheme} recv: {e}"),
                        Err(e) => return Err(e),
                    }
                }
                Some(done) = self.decisions.join_next(), if !self.decisions.is_empty() => {
                    match done {
                        Ok((exchange, outcome)) => self.server.complete(exchange, outcome, Instant::now()),
                        Err(e) => warn!("{scheme}: a publish decision task failed: {e}"),
                    }
                }
                Some((observer, cmd)) = self.notify_rx.recv() => {
                    match self.server.notify(observer, cmd.payload, cmd.content_format, Instant::now()) {
                        Ok(_) => self.metrics.downlink_delivered(self.adapter),
                        Err(e) => warn!(?observer, "{scheme}: command not delivered: {e}"),
                    }
                }
                ended = recv_opt(&mut self.ended) => match ended {
                    Some(client_id) => {
                        if let Some(sessions) = self.sessions.as_mut() {
                            sessions.end_client(&client_id, Instant::now());
                        }
                    }
                    // The source is gone: stop polling it (it would return None at once).
                    None => self.ended = None,
                },
                _ = revalidate.tick(), if self.sessions.is_some() => {
                    if let Some(s) = self.sessions.as_mut() {
                        s.sweep(Instant::now());
                    }
                }
                () = tokio::time::sleep_until(sleep_until) => {
                    let now = Instant::now();
                    if let Some(s) = self.sessions.as_mut() {
                        s.handle_timeout(now);
                    }
                    self.server.handle_timeout(now);
                }
            }
            self.drain().await;
        }
        // Intake stops taking datagrams. Publishes already handed to the outbox get their
        // answer if they become durable soon (the outbox is flushed after intake stops);
        // past the grace period the sensor retransmits to the restarted gateway instead.
        let grace = tokio::time::sleep(SHUTDOWN_GRACE);
        tokio::pin!(grace);
        while !self.decisions.is_empty() {
            tokio::select! {
                () = &mut grace => break,
                Some(done) = self.decisions.join_next() => {
                    if let Ok((exchange, outcome)) = done {
                        self.server.complete(exchange, outcome, Instant::now());
                    }
                    self.drain().await;
                }
            }
        }
        self.decisions.detach_all();
        for (_, h) in self.forwarders.drain() {
            h.abort();
        }
        Ok(())
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let a = self.server.poll_timeout();
        let b = self.sessions.as_ref().and_then(Sessions::poll_timeout);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_datagram(&mut self, peer: SocketAddr, datagram: &[u8]) {
        let now = Instant::now();
        match self.sessions.as_mut() {
            Some(s) => s.handle_datagram(peer, datagram, now),
            None => self.server.handle_datagram(peer, datagram, now),
        }
    }

    /// Moves everything the state machines produced to where it goes.
    async fn drain(&mut self) {
        loop {
            let mut progressed = false;
            if let Some(sessions) = self.sessions.as_mut() {
                while let Some(ev) = sessions.poll_event() {
                    progressed = true;
                    match ev {
                        SessionEvent::Data { peer, data } => {
                            self.server.handle_datagram(peer, &data, Instant::now());
                        }
                        SessionEvent::Closed { peer } => self.server.forget_peer(peer),
                    }
                }
            }
            while let Some(ev) = self.server.poll_event() {
                progressed = true;
                self.handle_event(ev);
            }
            while let Some(t) = self.server.poll_transmit() {
                progressed = true;
                match self.sessions.as_mut() {
                    Some(s) => s.send(t.peer, &t.payload, Instant::now()),
                    None => self.send(t).await,
                }
            }
            if let Some(sessions) = self.sessions.as_mut() {
                let mut out = Vec::new();
                while let Some(t) = sessions.poll_transmit() {
                    out.push(t);
                }
                for t in out {
                    progressed = true;
                    self.send(t).await;
                }
            }
            if !progressed {
                break;
            }
        }
        self.metrics.sync_refusals(
            self.adapter,
            &self.server.stats().refused,
            &mut self.reported_refusals,
        );
        if let Some(s) = self.sessions.as_ref() {
            self.metrics
                .sync_dtls(&s.handshakes(), &mut self.reported_handshakes);
            let counts = s.counts();
            if counts != self.last_counts {
                self.metrics.set_dtls_sessions(counts.0, counts.1);
                self.last_counts = counts;
                debug!(
                    "coaps session table: sessions={} handshakes={}",
                    counts.0, counts.1
                );
            }
        }
    }

    async fn send(&self, t: Transmit) {
        if let Err(e) = self.socket.send_to(&t.payload, t.peer).await {
            debug!(peer = %t.peer, "send failed: {e}");
        }
    }

    /// Who sent a request: on CoAPS the principal of the peer's DTLS session (`Some(Some(p))`),
    /// on plain CoAP nobody yet (`Some(None)`: the query carries the credentials). `None`: a
    /// CoAPS peer without an authenticated session, already answered 4.01.
    fn caller(
        &mut self,
        exchange: ExchangeId,
        peer: SocketAddr,
        now: Instant,
    ) -> Option<Option<Principal>> {
        let Some(sessions) = &self.sessions else {
            return Some(None);
        };
        if let Some(p) = sessions.principal(peer) {
            return Some(Some(p.clone()));
        }
        self.server
            .complete(exchange, Outcome::Refused(Failure::Unauthenticated), now);
        None
    }

    fn handle_event(&mut self, ev: Event) {
        let now = Instant::now();
        match ev {
            Event::Publish {
                exchange,
                peer,
                target,
                credentials,
                content_format,
                payload,
            } => {
                let Some(principal) = self.caller(exchange, peer, now) else {
                    return;
                };
                let who = principal
                    .as_ref()
                    .map_or(Who::Query(&credentials), Who::Session);
                let fut = self
                    .backend
                    .publish(peer, who, &target, content_format, payload);
                let (metrics, adapter) = (self.metrics.clone(), self.adapter);
                self.decisions.spawn(async move {
                    let outcome = match fut.await {
                        Ok(()) => {
                            metrics.message_in(adapter);
                            Outcome::Stored
                        }
                        Err(f) => Outcome::Refused(f),
                    };
                    (exchange, outcome)
                });
            }
            Event::Subscribe {
                exchange,
                peer,
                target,
                credentials,
            } => {
                let Some(principal) = self.caller(exchange, peer, now) else {
                    return;
                };
                let who = principal
                    .as_ref()
                    .map_or(Who::Query(&credentials), Who::Session);
                match self.backend.subscribe(peer, who, &target) {
                    Ok(mut rx) => {
                        let tx = self.notify_tx.clone();
                        let handle = tokio::spawn(async move {
                            while let Some(cmd) = rx.recv().await {
                                if tx.send((exchange, cmd)).await.is_err() {
                                    break;
                                }
                            }
                        });
                        self.forwarders.insert(exchange, handle.abort_handle());
                        self.server.complete(exchange, Outcome::Subscribed, now);
                    }
                    Err(f) => self.server.complete(exchange, Outcome::Refused(f), now),
                }
            }
            Event::Poll {
                exchange,
                peer,
                target,
                credentials,
            } => {
                let Some(principal) = self.caller(exchange, peer, now) else {
                    return;
                };
                let who = principal
                    .as_ref()
                    .map_or(Who::Query(&credentials), Who::Session);
                let outcome = match self.backend.poll(peer, who, &target) {
                    Ok(Some(d)) => {
                        self.metrics.downlink_delivered(self.adapter);
                        Outcome::Content {
                            payload: d.payload,
                            content_format: d.content_format,
                        }
                    }
                    Ok(None) => Outcome::Content {
                        payload: Vec::new(),
                        content_format: None,
                    },
                    Err(f) => Outcome::Refused(f),
                };
                self.server.complete(exchange, outcome, now);
            }
            Event::ObserveEnded { observer } => {
                if let Some(h) = self.forwarders.remove(&observer) {
                    h.abort();
                }
            }
        }
    }
}

async fn recv_opt(rx: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused
            | ConnectionReset
            | WouldBlock
            | Interrupted
            | HostUnreachable
            | NetworkUnreachable
    )
}
