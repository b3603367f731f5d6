//! The async shells of the CoAP adapters: one task owns one UDP socket, one CoAP core and
//! (for CoAPS) one DTLS session table. It `select!`s over the socket, finished decisions,
//! downlink notifications, the next timer and cancellation, then drains every `poll_*`.
//! No lock is held around protocol state; every channel is bounded.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::dtls::{SessionEvent, Sessions};
use super::proto::{
    Credentials, Event, ExchangeId, Outcome, Refusal, Server, ServerConfig, Target,
};
use crate::auth::{ClientRef, Op};
use crate::downlink::{Command, Subscription};
use crate::intake::{self, Admitted, Durable, Intake};
use crate::runtime::metrics::{Adapter, Metrics};

pub use super::dtls::Principal;

/// What the DTLS session table asks of the auth store: PSK keys, principals, revocation.
/// Implemented over the auth store in `coap::backend`; tests use fakes. Sensor requests do
/// not go through here: the shell hands them to [`Intake`].
pub trait Backend: Send + Sync + 'static {
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
    ) -> Result<Principal, Refusal>;
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
    /// DTLS-PSK from `remote`: the principal of an identity whose key proved right.
    fn psk_principal_from(&self, remote: IpAddr, identity: &str) -> Option<Principal> {
        let _ = remote;
        self.psk_principal(identity)
    }
    /// DTLS-PSK: whether the handshake from the proven address `remote` naming `identity`
    /// is throttled (the store gives a trusted pair its pass, see `auth::throttle`).
    fn psk_throttled(&self, remote: IpAddr, identity: &str) -> bool {
        let _ = (remote, identity);
        false
    }
    /// DTLS-PSK: a failed handshake from `remote` naming `identity` (audit, throttle).
    fn psk_failed(&self, remote: IpAddr, identity: &str) {
        let _ = (remote, identity);
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
    fn psk_principal_from(&self, remote: IpAddr, identity: &str) -> Option<Principal> {
        self.0.psk_principal_from(remote, identity)
    }
    fn psk_throttled(&self, remote: IpAddr, identity: &str) -> bool {
        self.0.psk_throttled(remote, identity)
    }
    fn psk_failed(&self, remote: IpAddr, identity: &str) {
        self.0.psk_failed(remote, identity);
    }
}

/// Largest datagram read (UDP payload maximum).
const RECV_BUFFER: usize = 65_535;
/// Datagrams read from the socket per wake-up before the answers are sent.
const RECV_BATCH: usize = 32;
/// How long the shell sleeps when no core has a deadline.
const IDLE_WAKE: Duration = Duration::from_secs(3600);
/// How often the DTLS table is swept: handshake deadlines, idle sessions, and principals
/// checked against the auth store (disabled clients).
const REVALIDATE_EVERY: Duration = Duration::from_secs(1);
/// How long a stopping listener waits to answer publishes that are becoming durable.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Serves CoAP (`sessions` = `None`) or CoAPS until `cancel`, counting into `metrics` as
/// adapter `coap` or `coaps`.
pub async fn serve(
    socket: UdpSocket,
    config: ServerConfig,
    sessions: Option<Sessions>,
    backend: Arc<dyn Backend>,
    intake: Intake,
    metrics: Metrics,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let mut shell = Shell::new(socket, config, backend, intake, sessions);
    shell.metrics = metrics;
    shell.run(cancel).await
}

/// A live Observe registration: what it was admitted for and the hub's command stream.
struct Observation {
    admitted: Admitted,
    commands: Subscription,
}

struct Shell {
    socket: UdpSocket,
    server: Server,
    sessions: Option<Sessions>,
    intake: Intake,
    /// Publishes handed to the outbox and not yet durable, in the order they were handed
    /// over. The one writer commits them in that order, so the front one resolves first:
    /// only it is polled (no task per message).
    decisions: VecDeque<(ExchangeId, Durable)>,
    /// Decisions that resolved, waiting to be completed in the core.
    decided: Vec<(ExchangeId, Result<u64, Refusal>)>,
    observations: HashMap<ExchangeId, Observation>,
    /// Auth store changes: every observation is re-checked.
    changes: tokio::sync::watch::Receiver<i64>,
    /// CoAPS clients whose session ends once the current answers are out (lost a grant).
    to_end: Vec<String>,
    ended: Option<mpsc::Receiver<String>>,
    last_counts: (usize, usize),
    metrics: Metrics,
    adapter: Adapter,
    /// What the cores' counters were when last added to `metrics`.
    reported_refusals: crate::runtime::metrics::RefusalCounts,
    reported_handshakes: crate::runtime::metrics::HandshakeCounts,
}

impl Shell {
    fn new(
        socket: UdpSocket,
        config: ServerConfig,
        backend: Arc<dyn Backend>,
        intake: Intake,
        sessions: Option<Sessions>,
    ) -> Self {
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
            changes: intake.changes(),
            to_end: Vec::new(),
            intake,
            decisions: VecDeque::new(),
            decided: Vec::new(),
            observations: HashMap::new(),
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
        // One timer, moved only when the cores' next deadline changes (not a new timer
        // registration per datagram).
        let timer = tokio::time::sleep(IDLE_WAKE);
        tokio::pin!(timer);
        let mut armed: Option<Option<Instant>> = None;
        loop {
            let deadline = self.poll_timeout();
            if armed != Some(deadline) {
                let at = deadline.map_or_else(
                    || tokio::time::Instant::now() + IDLE_WAKE,
                    tokio::time::Instant::from_std,
                );
                timer.as_mut().reset(at);
                armed = Some(deadline);
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                received = self.socket.recv_from(&mut buf) => {
                    match received {
                        Ok((len, peer)) => {
                            self.handle_datagram(peer, &buf[..len]);
                            // Whatever else is already queued on the socket, up to a bound,
                            // before the answers go out: one drain for many datagrams.
                            for _ in 1..RECV_BATCH {
                                match self.socket.try_recv_from(&mut buf) {
                                    Ok((len, peer)) => self.handle_datagram(peer, &buf[..len]),
                                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                                    Err(e) if is_transient(&e) => debug!("{scheme} recv: {e}"),
                                    Err(e) => return Err(e),
                                }
                            }
                        }
                        // ICMP port unreachable from an earlier send surfaces here on Linux.
                        Err(e) if is_transient(&e) => debug!("{scheme} recv: {e}"),
                        Err(e) => return Err(e),
                    }
                }
                () = super::decisions::next(&mut self.decisions, &mut self.decided), if !self.decisions.is_empty() => {
                    self.complete_decided();
                }
                (observer, cmd) = next_command(&mut self.observations), if !self.observations.is_empty() => {
                    match cmd {
                        Some(cmd) => match self.server.notify(observer, cmd.payload.to_vec(), None, Instant::now()) {
                            Ok(()) => self.metrics.downlink_delivered(self.adapter),
                            Err(e) => warn!(?observer, "{scheme}: command not delivered: {e}"),
                        },
                        // The hub dropped this stream: end the observation.
                        None => self.server.cancel_observer(observer),
                    }
                }
                Ok(()) = self.changes.changed() => self.revalidate_observations(),
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
                () = &mut timer => {
                    // Fired: re-armed at the top of the loop whatever the next deadline is.
                    armed = None;
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
                () = super::decisions::next(&mut self.decisions, &mut self.decided) => {
                    self.complete_decided();
                    self.drain().await;
                }
            }
        }
        Ok(())
    }

    /// Hands the resolved publish decisions to the core (2.04, or the refusal).
    fn complete_decided(&mut self) {
        let now = Instant::now();
        for (exchange, result) in self.decided.drain(..) {
            let outcome = match result {
                Ok(_) => {
                    self.metrics.message_in(self.adapter);
                    Outcome::Stored
                }
                Err(r) => Outcome::Refused(r),
            };
            self.server.complete(exchange, outcome, now);
        }
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
            let mut out = Vec::new();
            while let Some(t) = self.server.poll_transmit() {
                progressed = true;
                match self.sessions.as_mut() {
                    Some(s) => s.send(t.peer, &t.payload, Instant::now()),
                    None => out.push(t),
                }
            }
            if let Some(sessions) = self.sessions.as_mut() {
                while let Some(t) = sessions.poll_transmit() {
                    progressed = true;
                    out.push(t);
                }
            }
            // Everything this round produced, in as few system calls as the kernel takes.
            super::batch::send_all(&self.socket, &out).await;
            if !progressed {
                if self.to_end.is_empty() {
                    break;
                }
                // The final notifications are out: now end those sessions.
                let now = Instant::now();
                for client_id in std::mem::take(&mut self.to_end) {
                    if let Some(sessions) = self.sessions.as_mut() {
                        sessions.end_client(&client_id, now);
                    }
                }
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

    /// Who sent a request: on CoAPS the client of the peer's DTLS session (`Ok(Some(c))`), on
    /// plain CoAP and in a server-only CoAPS session nobody yet (`Ok(None)`: the query carries
    /// the credentials, authenticated and throttled per request). Any other CoAPS peer is
    /// refused.
    fn caller(&self, peer: SocketAddr) -> Result<Option<ClientRef>, Refusal> {
        let Some(sessions) = &self.sessions else {
            return Ok(None);
        };
        match sessions.principal(peer) {
            Some(p) => Ok(Some(ClientRef {
                id: p.client_id.clone(),
                identity: p.identity.clone(),
            })),
            None if sessions.is_server_only(peer) => Ok(None),
            None => Err(Refusal::Unauthenticated),
        }
    }

    /// After a store change: an observation whose client lost the subscribe grant (disabled,
    /// removed, disconnected) gets a final 4.03 and ends; on CoAPS its session ends too.
    fn revalidate_observations(&mut self) {
        let lost: Vec<(ExchangeId, String)> = self
            .observations
            .iter()
            .filter(|(_, o)| !self.intake.still_subscribed(&o.admitted))
            .map(|(id, o)| (*id, o.admitted.client.id.clone()))
            .collect();
        for (id, client_id) in lost {
            info!(
                client_id,
                "observation ended: the client lost its subscribe grant"
            );
            self.observations.remove(&id);
            self.server.end_observer(id, Refusal::Forbidden);
            if self.sessions.is_some() && !self.to_end.contains(&client_id) {
                self.to_end.push(client_id);
            }
        }
    }

    /// Ends (5.03) the oldest observations of `client_id` while it holds
    /// `max_observers_per_client`: one client cannot take the whole Observe table, from
    /// however many sockets.
    fn cap_client_observations(&mut self, client_id: &str) {
        let cap = self.server.config().max_observers_per_client.max(1);
        let mut mine: Vec<ExchangeId> = self
            .observations
            .iter()
            .filter(|(_, o)| o.admitted.client.id == client_id)
            .map(|(id, _)| *id)
            .collect();
        if mine.len() < cap {
            return;
        }
        mine.sort();
        let excess = mine.len() + 1 - cap;
        for id in mine.into_iter().take(excess) {
            self.observations.remove(&id);
            self.server.end_observer(
                id,
                Refusal::Busy {
                    retry_after: Duration::from_secs(30),
                },
            );
        }
    }

    /// Throttle → authenticate → authorize → checks, by intake.
    fn admit(
        &self,
        peer: SocketAddr,
        target: &Target,
        credentials: &Credentials,
        op: Op,
    ) -> Result<Admitted, Refusal> {
        let session = self.caller(peer)?;
        let credentials = intake_credentials(session.as_ref(), credentials);
        self.intake.admit(Some(peer.ip()), credentials, target, op)
    }

    /// `hc/<domain>`: throttle → authenticate → domain membership, by intake.
    fn check_health(
        &self,
        peer: SocketAddr,
        domain: &str,
        credentials: &Credentials,
    ) -> Result<ClientRef, Refusal> {
        let session = self.caller(peer)?;
        let credentials = intake_credentials(session.as_ref(), credentials);
        self.intake
            .check_health(Some(peer.ip()), credentials, domain)
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
                let durable = self
                    .admit(peer, &target, &credentials, Op::Publish)
                    .and_then(|admitted| {
                        self.intake.publish(
                            admitted,
                            bytes::Bytes::from(payload),
                            content_format.map(content_format_name),
                        )
                    });
                match durable {
                    Ok(durable) => self.decisions.push_back((exchange, durable)),
                    Err(r) => self.server.complete(exchange, Outcome::Refused(r), now),
                }
            }
            Event::Authorize {
                exchange,
                peer,
                target,
                credentials,
            } => {
                // Block 0 of a Block1 transfer: the same checks as the publish it starts.
                let outcome = match self.admit(peer, &target, &credentials, Op::Publish) {
                    Ok(_) => Outcome::Authorized,
                    Err(r) => Outcome::Refused(r),
                };
                self.server.complete(exchange, outcome, now);
            }
            Event::Subscribe {
                exchange,
                peer,
                target,
                credentials,
            } => match self.admit(peer, &target, &credentials, Op::Subscribe) {
                Ok(admitted) => {
                    if !self.server.reregisters(exchange) {
                        self.cap_client_observations(&admitted.client.id);
                    }
                    let commands = self.intake.subscribe(&admitted);
                    self.observations
                        .insert(exchange, Observation { admitted, commands });
                    self.server.complete(exchange, Outcome::Subscribed, now);
                }
                Err(r) => self.server.complete(exchange, Outcome::Refused(r), now),
            },
            Event::Poll {
                exchange,
                peer,
                target,
                credentials,
            } => {
                let outcome = match self.admit(peer, &target, &credentials, Op::Subscribe) {
                    // A GET without Observe takes the oldest kept command of (client, channel),
                    // after the same checks as an Observe registration. Like Observe it is
                    // channel-wide: a subtopic in the path does not filter. The command leaves
                    // the hub here and goes into this one response (at most once: see README
                    // "Polling for commands").
                    Ok(admitted) => match self.intake.take(&admitted) {
                        Some(cmd) => {
                            self.metrics.downlink_delivered(self.adapter);
                            Outcome::Content {
                                payload: cmd.payload.to_vec(),
                                content_format: None,
                            }
                        }
                        None => Outcome::Content {
                            payload: Vec::new(),
                            content_format: None,
                        },
                    },
                    Err(r) => Outcome::Refused(r),
                };
                self.server.complete(exchange, outcome, now);
            }
            Event::HealthCheck {
                exchange,
                peer,
                domain,
                credentials,
            } => {
                let outcome = match self.check_health(peer, &domain, &credentials) {
                    Ok(_) => Outcome::Checked,
                    Err(r) => Outcome::Refused(r),
                };
                self.server.complete(exchange, outcome, now);
            }
            Event::ObserveEnded { observer } => {
                // Dropping the subscription marks the client offline: later commands are
                // kept for it.
                self.observations.remove(&observer);
            }
        }
    }
}

/// The intake credentials of a request: the DTLS session's client if it has one (its query
/// is not looked at), else what the Uri-Query carried.
fn intake_credentials<'a>(
    session: Option<&'a ClientRef>,
    query: &'a Credentials,
) -> intake::Credentials<'a> {
    match (session, query) {
        (Some(client), _) => intake::Credentials::Session(client),
        (None, Credentials::None) => intake::Credentials::None,
        (None, Credentials::Secret(secret)) => intake::Credentials::Secret(secret),
        (None, Credentials::UsernamePassword { username, password }) => {
            intake::Credentials::IdentitySecret {
                identity: username,
                secret: password,
            }
        }
    }
}

/// The next command of any observation (`None` for one whose stream ended). Polled by the
/// shell's `select!`: commands go straight from the hub into the core, no forwarder tasks.
async fn next_command(
    observations: &mut HashMap<ExchangeId, Observation>,
) -> (ExchangeId, Option<Command>) {
    std::future::poll_fn(|cx| {
        for (id, o) in observations.iter_mut() {
            if let Poll::Ready(cmd) = o.commands.poll_recv(cx) {
                return Poll::Ready((*id, cmd));
            }
        }
        Poll::Pending
    })
    .await
}

/// A well-known CoAP Content-Format number as a media type (RFC 7252 §12.3, RFC 8428).
fn content_format_name(cf: u16) -> String {
    match cf {
        0 => "text/plain;charset=utf-8".into(),
        40 => "application/link-format".into(),
        41 => "application/xml".into(),
        42 => "application/octet-stream".into(),
        50 => "application/json".into(),
        60 => "application/cbor".into(),
        110 => "application/senml+json".into(),
        112 => "application/senml+cbor".into(),
        other => other.to_string(),
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

#[cfg(test)]
mod tests;
