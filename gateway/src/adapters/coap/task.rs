//! The async shells of the CoAP adapters: one task owns one UDP socket, one CoAP core and
//! (for CoAPS) one DTLS session table. It `select!`s over the socket, finished decisions,
//! downlink notifications, the next timer and cancellation, then drains every `poll_*`.
//! No lock is held around protocol state; every channel is bounded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::dtls::{SessionEvent, Sessions};
use super::proto::{
    Credentials, Event, ExchangeId, Outcome, Refusal, Server, ServerConfig, Target, Transmit,
};
use crate::auth::{ClientRef, Op};
use crate::downlink::{Command, Subscription};
use crate::intake::{self, Admitted, Intake};
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
    decisions: JoinSet<(ExchangeId, Outcome)>,
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
            decisions: JoinSet::new(),
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

    async fn send(&self, t: Transmit) {
        if let Err(e) = self.socket.send_to(&t.payload, t.peer).await {
            debug!(peer = %t.peer, "send failed: {e}");
        }
    }

    /// Who sent a request: on CoAPS the client of the peer's DTLS session (`Ok(Some(c))`), on
    /// plain CoAP nobody yet (`Ok(None)`: the query carries the credentials). A CoAPS peer
    /// without an authenticated session is refused.
    fn caller(&self, peer: SocketAddr) -> Result<Option<ClientRef>, Refusal> {
        let Some(sessions) = &self.sessions else {
            return Ok(None);
        };
        match sessions.principal(peer) {
            Some(p) => Ok(Some(ClientRef {
                id: p.client_id.clone(),
                identity: p.identity.clone(),
            })),
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

    /// Throttle → authenticate → authorize → checks, by intake.
    fn admit(
        &self,
        peer: SocketAddr,
        target: &Target,
        credentials: &Credentials,
        op: Op,
    ) -> Result<Admitted, Refusal> {
        let session = self.caller(peer)?;
        let credentials = match (&session, credentials) {
            (Some(client), _) => intake::Credentials::Session(client),
            (None, Credentials::None) => intake::Credentials::None,
            (None, Credentials::Secret(secret)) => intake::Credentials::Secret(secret),
            (None, Credentials::UsernamePassword { username, password }) => {
                intake::Credentials::IdentitySecret {
                    identity: username,
                    secret: password,
                }
            }
        };
        self.intake.admit(Some(peer.ip()), credentials, target, op)
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
                            &admitted,
                            bytes::Bytes::from(payload),
                            content_format.map(content_format_name),
                        )
                    });
                match durable {
                    Ok(durable) => {
                        let (metrics, adapter) = (self.metrics.clone(), self.adapter);
                        self.decisions.spawn(async move {
                            let outcome = match durable.await {
                                Ok(_) => {
                                    metrics.message_in(adapter);
                                    Outcome::Stored
                                }
                                Err(r) => Outcome::Refused(r),
                            };
                            (exchange, outcome)
                        });
                    }
                    Err(r) => self.server.complete(exchange, Outcome::Refused(r), now),
                }
            }
            Event::Subscribe {
                exchange,
                peer,
                target,
                credentials,
            } => match self.admit(peer, &target, &credentials, Op::Subscribe) {
                Ok(admitted) => {
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
            Event::ObserveEnded { observer } => {
                // Dropping the subscription marks the client offline: later commands are
                // kept for it.
                self.observations.remove(&observer);
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
mod tests {
    use super::*;
    use crate::adapters::coap::backend::StoreBackend;
    use crate::intake::testkit::{Fixture, LONELY_SECRET, OFF_SECRET, OutboxState, SECRET};
    use crate::runtime::metrics::Refusal as Kind;
    use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

    fn post(secret: &str) -> Vec<u8> {
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Request(RequestType::Post);
        p.header.message_id = 7;
        p.set_token(vec![1]);
        for seg in ["m", "dom", "c", "temps"] {
            p.add_option(CoapOption::UriPath, seg.as_bytes().to_vec());
        }
        p.add_option(CoapOption::UriQuery, format!("auth={secret}").into_bytes());
        p.payload = b"21.5".to_vec();
        p.to_bytes().unwrap()
    }

    /// Disabled client, not connected, outbox full, shutdown: each answered as README
    /// "Refusals" says and counted once in the metrics (adapter `coap`), under its kind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_refusal_has_its_documented_code_and_is_counted_once() {
        let cases = [
            (
                OutboxState::Open,
                OFF_SECRET,
                ResponseType::Unauthorized,
                Kind::Unauthenticated,
                false,
            ),
            (
                OutboxState::Open,
                LONELY_SECRET,
                ResponseType::Forbidden,
                Kind::Forbidden,
                false,
            ),
            (
                OutboxState::Full,
                SECRET,
                ResponseType::ServiceUnavailable,
                Kind::Busy,
                true,
            ),
            (
                OutboxState::Closed,
                SECRET,
                ResponseType::ServiceUnavailable,
                Kind::Unavailable,
                true,
            ),
        ];
        for (outbox, secret, code, kind, max_age) in cases {
            let f = Fixture::new(outbox);
            let metrics = Metrics::new();
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = socket.local_addr().unwrap();
            let cancel = CancellationToken::new();
            let task = tokio::spawn(serve(
                socket,
                ServerConfig::default(),
                None,
                Arc::new(StoreBackend {
                    auth: f.auth.clone(),
                }),
                f.intake.clone(),
                metrics.clone(),
                cancel.clone(),
            ));
            let sensor = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            sensor.send_to(&post(secret), addr).await.unwrap();
            let mut buf = [0u8; 1500];
            let n = tokio::time::timeout(Duration::from_secs(10), sensor.recv(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
            let resp = Packet::from_bytes(&buf[..n]).unwrap();
            assert_eq!(resp.header.code, MessageClass::Response(code), "{kind:?}");
            assert_eq!(
                resp.get_first_option(CoapOption::MaxAge).is_some(),
                max_age,
                "{kind:?}"
            );
            cancel.cancel();
            task.await.unwrap().unwrap();
            let snap = metrics.snapshot();
            let coap = &snap.adapters["coap"];
            assert_eq!(coap.refused[kind.label()], 1, "{kind:?}: {coap:?}");
            assert_eq!(coap.refused_total, 1, "{kind:?}: counted once");
            assert_eq!(coap.messages_in, 0);
        }
        // A storage failure is the shutdown answer: 5.03 with Max-Age.
        let storage =
            crate::intake::ingest_refusal(&crate::outbox::IngestError::storage_for_tests());
        let answer = super::super::proto::coap_answer(&storage);
        assert_eq!(answer.code, ResponseType::ServiceUnavailable);
        assert_eq!(answer.max_age, Some(Duration::from_secs(30)));
    }
}
