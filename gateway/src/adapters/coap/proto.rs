//! Sans-IO CoAP (RFC 7252) server core for the sensor-facing adapters.
//!
//! It owns message-layer state only: de-duplication per peer, piggy-backed responses,
//! Block1 (RFC 7959) reassembly, Observe (RFC 7641) registrations and confirmable
//! notifications with retransmission. It owns no socket, clock, database or tokio type:
//! datagrams come in through [`Server::handle_datagram`], decisions (authentication,
//! authorization, durability) are asked of the shell through [`Event`]s and answered with
//! [`Server::complete`]; bytes to send come out of [`Server::poll_transmit`]. Every table is
//! bounded so a flood of peers costs a fixed amount of memory.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

pub use crate::intake::refusal::{Refusal, RefusalCounts, RefusalKind};
pub use crate::intake::request::Target;

mod answer;
mod block1;
mod dedup;
mod observe;
mod uri;
mod wire;

pub use answer::{CoapAnswer, coap_answer};
use block1::BlockTransfer;
use dedup::{DedupState, DedupTable};
use observe::Observer;
use uri::{PathError, Resource, parse_query, parse_resource, unsupported_critical_option};
use wire::{Message, decode_uint, encode, encode_uint};

/// RFC 7252 §4.8.2 EXCHANGE_LIFETIME with the default transmission parameters.
pub const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);

/// Limits and timers of the core.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest accepted message payload, reassembled across Block1 transfers.
    pub max_payload: usize,
    /// How long a (peer, message id) is remembered for de-duplication.
    pub exchange_lifetime: Duration,
    /// Cap on remembered (peer, message id) pairs; the oldest is forgotten first.
    pub max_dedup_entries: usize,
    /// Cap on requests waiting for the shell's decision; beyond it: 5.03.
    pub max_pending: usize,
    /// Cap on concurrent Block1 transfers; beyond it: 5.03.
    pub max_block_transfers: usize,
    /// Cap on concurrent Block1 transfers from one IP address; beyond it the address's
    /// least recently active transfer is dropped (a restarted client starts over).
    pub max_block_transfers_per_peer: usize,
    /// A Block1 transfer with no block for this long is dropped (a client retransmits a
    /// block for at most MAX_TRANSMIT_SPAN, 45 s).
    pub block_idle_timeout: Duration,
    /// Cap on Observe registrations; when full, the oldest registration of the peer with
    /// the most is ended (5.03) to make room.
    pub max_observers: usize,
    /// Cap on Observe registrations from one peer (address and port); beyond it the peer's
    /// oldest is ended (5.03).
    pub max_observers_per_peer: usize,
    /// Cap on Observe registrations of one client (checked by the shell, which knows the
    /// client); beyond it the client's oldest is ended (5.03).
    pub max_observers_per_client: usize,
    /// A registration whose peer sent nothing (no request, no ACK) for this long is ended
    /// (RFC 7641 §4.5 asks a server to check a client's interest at least every 24 h).
    pub observe_idle_timeout: Duration,
    /// Notifications queued per observer while one is unacknowledged.
    pub max_queued_notifications: usize,
    /// RFC 7252 ACK_TIMEOUT for our confirmable notifications.
    pub ack_timeout: Duration,
    /// RFC 7252 MAX_RETRANSMIT.
    pub max_retransmit: u32,
    /// First message id used for messages we originate (the shell seeds it randomly).
    pub initial_message_id: u16,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_payload: 64 * 1024,
            exchange_lifetime: EXCHANGE_LIFETIME,
            max_dedup_entries: 16 * 1024,
            max_pending: 1024,
            max_block_transfers: 256,
            max_block_transfers_per_peer: 8,
            block_idle_timeout: Duration::from_secs(60),
            max_observers: 1024,
            max_observers_per_peer: 16,
            max_observers_per_client: 16,
            observe_idle_timeout: Duration::from_secs(24 * 3600),
            max_queued_notifications: 16,
            ack_timeout: Duration::from_secs(2),
            max_retransmit: 4,
            initial_message_id: 1,
        }
    }
}

/// Identifies one request waiting for the shell's decision. For an accepted Observe
/// registration it also identifies the observer afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExchangeId(pub u64);

/// Credentials given in the Uri-Query of a plain-CoAP request.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    None,
    /// `auth=<secret>` (SuperMQ ≤ 0.19).
    Secret(Vec<u8>),
    /// `username=<client>&password=<secret>` (SuperMQ ≥ 0.20).
    UsernamePassword {
        username: String,
        password: Vec<u8>,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Secret(_) => f.write_str("Secret(<redacted>)"),
            Self::UsernamePassword { username, .. } => f
                .debug_struct("UsernamePassword")
                .field("username", username)
                .finish_non_exhaustive(),
        }
    }
}

/// A request the shell must decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// POST: authenticate, authorize publish, store durably, then `complete`.
    Publish {
        exchange: ExchangeId,
        peer: SocketAddr,
        target: Target,
        credentials: Credentials,
        content_format: Option<u16>,
        payload: Vec<u8>,
    },
    /// Block 0 of a Block1 POST with more blocks to come: authenticate and authorize
    /// publish before any transfer state is kept, then `complete` with
    /// [`Outcome::Authorized`] (the transfer starts: 2.31) or a refusal.
    Authorize {
        exchange: ExchangeId,
        peer: SocketAddr,
        target: Target,
        credentials: Credentials,
    },
    /// GET with Observe=0: authenticate, authorize subscribe, then `complete` with
    /// [`Outcome::Subscribed`]; the exchange id then names the observer for [`Server::notify`].
    Subscribe {
        exchange: ExchangeId,
        peer: SocketAddr,
        target: Target,
        credentials: Credentials,
    },
    /// GET without Observe: a sensor polling for a command.
    Poll {
        exchange: ExchangeId,
        peer: SocketAddr,
        target: Target,
        credentials: Credentials,
    },
    /// POST `hc/<domain>`, SuperMQ's health check: authenticate in that domain, then
    /// `complete` with [`Outcome::Checked`] (2.01 Created, as supermq v0.19.1
    /// `coap/api/transport.go` answers a POST). The payload is ignored, nothing is stored.
    HealthCheck {
        exchange: ExchangeId,
        peer: SocketAddr,
        domain: String,
        credentials: Credentials,
    },
    /// An observer is gone (deregistered, reset, re-registered or unreachable).
    ObserveEnded { observer: ExchangeId },
}

/// The shell's decision about an [`Event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The message is durable: 2.04 Changed.
    Stored,
    /// Observe registered: 2.05 Content with the Observe option.
    Subscribed,
    /// Block 0 of a Block1 transfer may go on (see [`Event::Authorize`]).
    Authorized,
    /// Health check passed: 2.01 Created.
    Checked,
    /// Poll answer: 2.05 Content (an empty payload means no command is waiting).
    Content {
        payload: Vec<u8>,
        content_format: Option<u16>,
    },
    Refused(Refusal),
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub peer: SocketAddr,
    pub payload: Vec<u8>,
}

/// Why [`Server::notify`] could not queue a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    #[error("no such observer")]
    UnknownObserver,
    #[error("the observer's notification queue is full")]
    QueueFull,
}

/// Counters for status and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub malformed: u64,
    pub duplicates: u64,
    pub dedup_entries: usize,
    pub pending: usize,
    pub block_transfers: usize,
    pub observers: usize,
    /// Error answers sent (not counting repeats for duplicates), by reason class.
    pub refused: RefusalCounts,
}

#[derive(Debug)]
enum Kind {
    Publish,
    Health,
    Subscribe,
    Poll,
    /// Block 0 of a Block1 transfer waiting for [`Outcome::Authorized`].
    BlockStart(Box<block1::BlockStart>),
}

#[derive(Debug)]
struct Pending {
    peer: SocketAddr,
    message_id: u16,
    confirmable: bool,
    token: Vec<u8>,
    kind: Kind,
    /// Block1 option value to echo in the final response.
    block1: Option<u32>,
}

/// The CoAP server core. See the module docs.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    next_exchange: u64,
    next_message_id: u16,
    dedup: DedupTable,
    pending: HashMap<ExchangeId, Pending>,
    blocks: HashMap<(SocketAddr, String), BlockTransfer>,
    observers: HashMap<ExchangeId, Observer>,
    observer_by_token: HashMap<(SocketAddr, Vec<u8>), ExchangeId>,
    /// When each peer with a registration last sent anything (idle expiry).
    observer_peers: HashMap<SocketAddr, Instant>,
    /// Next sweep for idle registrations.
    next_observe_sweep: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
}

/// A request after the message layer: what the resource layer acts on.
struct Request {
    peer: SocketAddr,
    message_id: u16,
    confirmable: bool,
    token: Vec<u8>,
}

impl Server {
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub fn new(config: ServerConfig) -> Self {
        Self {
            next_message_id: config.initial_message_id,
            dedup: DedupTable::new(config.max_dedup_entries),
            config,
            next_exchange: 1,
            pending: HashMap::new(),
            blocks: HashMap::new(),
            observers: HashMap::new(),
            observer_by_token: HashMap::new(),
            observer_peers: HashMap::new(),
            next_observe_sweep: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            dedup_entries: self.dedup.len(),
            pending: self.pending.len(),
            block_transfers: self.blocks.len(),
            observers: self.observers.len(),
            ..self.stats
        }
    }

    /// Feeds one received datagram.
    pub fn handle_datagram(&mut self, peer: SocketAddr, datagram: &[u8], now: Instant) {
        self.expire(now);
        if let Some(seen) = self.observer_peers.get_mut(&peer) {
            *seen = now;
        }
        let packet = match Message::parse(datagram) {
            Ok(p) => p,
            Err(_) => {
                self.stats.malformed += 1;
                // RFC 7252 §4.2: a malformed confirmable message is rejected with RST.
                if datagram.len() >= 4 && datagram[0] >> 6 == 1 && (datagram[0] >> 4) & 3 == 0 {
                    let mid = u16::from_be_bytes([datagram[2], datagram[3]]);
                    self.send_reset(peer, mid);
                }
                return;
            }
        };
        if packet.version() != 1 {
            self.stats.malformed += 1;
            return;
        }
        let mid = packet.message_id;
        match (packet.message_type(), packet.code()) {
            // Ping: an empty CON is answered with RST.
            (MessageType::Confirmable, MessageClass::Empty) => self.send_reset(peer, mid),
            (MessageType::Acknowledgement, _) => self.handle_ack(peer, mid, now),
            (MessageType::Reset, _) => self.handle_reset(peer, mid),
            (ty, MessageClass::Request(method)) => {
                let confirmable = ty == MessageType::Confirmable;
                if self.is_duplicate(peer, mid, now) {
                    return;
                }
                let request = Request {
                    peer,
                    message_id: mid,
                    confirmable,
                    token: packet.token().to_vec(),
                };
                self.handle_request(request, method, &packet, now);
            }
            // Responses or reserved codes sent to a server: reject a CON, ignore the rest.
            (MessageType::Confirmable, _) => self.send_reset(peer, mid),
            _ => {}
        }
    }

    /// Answers a request the shell decided.
    pub fn complete(&mut self, exchange: ExchangeId, outcome: Outcome, now: Instant) {
        let Some(p) = self.pending.remove(&exchange) else {
            return;
        };
        if matches!(p.kind, Kind::BlockStart(_)) {
            self.complete_block_start(p, outcome, now);
            return;
        }
        let (code, observe, payload, content_format) = match (&p.kind, outcome) {
            (Kind::Publish, Outcome::Stored) => {
                (ResponseType::Changed, None, Vec::new(), None::<u16>)
            }
            (Kind::Health, Outcome::Checked) => (ResponseType::Created, None, Vec::new(), None),
            (Kind::Subscribe, Outcome::Subscribed) => {
                let key = (p.peer, p.token.clone());
                if let Some(old) = self.observer_by_token.remove(&key) {
                    self.observers.remove(&old);
                    self.events.push_back(Event::ObserveEnded { observer: old });
                }
                self.make_observer_room(p.peer);
                if self.observers.len() >= self.config.max_observers {
                    self.respond_failure(
                        &p,
                        Refusal::Busy {
                            retry_after: Duration::from_secs(30),
                        },
                        now,
                    );
                    return;
                }
                self.observer_peers.insert(p.peer, now);
                self.next_observe_sweep
                    .get_or_insert(now + observe::SWEEP_EVERY);
                self.observer_by_token.insert(key, exchange);
                self.observers.insert(
                    exchange,
                    Observer {
                        peer: p.peer,
                        token: p.token.clone(),
                        seq: 1,
                        in_flight: None,
                        queue: VecDeque::new(),
                    },
                );
                (ResponseType::Content, Some(0), Vec::new(), None)
            }
            (
                Kind::Poll,
                Outcome::Content {
                    payload,
                    content_format,
                },
            ) => {
                // A command is handed out once: no cache may answer a later poll with it.
                let mut resp = self.response_to(&p, ResponseType::Content);
                resp.add_option(CoapOption::MaxAge, encode_uint(0));
                if let Some(cf) = content_format {
                    resp.add_option(CoapOption::ContentFormat, encode_uint(u32::from(cf)));
                }
                resp.payload = payload;
                self.finish(&p, resp, now);
                return;
            }
            (_, Outcome::Refused(failure)) => {
                self.respond_failure(&p, failure, now);
                return;
            }
            // An outcome that does not fit the request is a shell bug: 5.03, retry later.
            _ => {
                self.respond_failure(
                    &p,
                    Refusal::Unavailable {
                        retry_after: crate::intake::refusal::SHUTDOWN_RETRY_AFTER,
                    },
                    now,
                );
                return;
            }
        };
        let mut resp = self.response_to(&p, code);
        if let Some(seq) = observe {
            resp.set_observe_value(seq);
        }
        if let Some(cf) = content_format {
            resp.add_option(CoapOption::ContentFormat, encode_uint(u32::from(cf)));
        }
        if let Some(b1) = p.block1 {
            resp.add_option(CoapOption::Block1, encode_uint(b1));
        }
        resp.payload = payload;
        self.finish(&p, resp, now);
    }

    /// Forgets everything about a peer (its DTLS session ended).
    pub fn forget_peer(&mut self, peer: SocketAddr) {
        let ids: Vec<_> = self
            .observers
            .iter()
            .filter(|(_, o)| o.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.cancel_observer(id);
        }
        self.pending.retain(|_, p| p.peer != peer);
        self.blocks.retain(|(p, _), _| *p != peer);
        self.dedup.forget_peer(peer);
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next instant [`Server::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retransmit = self
            .observers
            .values()
            .filter_map(|o| o.in_flight.as_ref().map(|f| f.next))
            .min();
        let dedup = self.dedup.next_expiry();
        let blocks = self.blocks.values().map(|b| b.expires).min();
        [retransmit, dedup, blocks, self.next_observe_sweep]
            .into_iter()
            .flatten()
            .min()
    }

    fn expire(&mut self, now: Instant) {
        self.dedup.expire(now);
        self.blocks.retain(|_, b| b.expires > now);
    }

    fn handle_request(
        &mut self,
        req: Request,
        method: RequestType,
        packet: &Message<'_>,
        now: Instant,
    ) {
        if let Some(code) = unsupported_critical_option(packet) {
            self.respond_now(&req, code, RefusalKind::BadRequest, |_| {});
            return;
        }
        let resource = match parse_resource(packet) {
            Ok(r) => r,
            Err(PathError::NotFound) => {
                self.respond_failure_req(&req, Refusal::NotFound, now);
                return;
            }
            Err(PathError::Bad) => {
                self.respond_failure_req(&req, Refusal::BadRequest, now);
                return;
            }
        };
        let Ok(credentials) = parse_query(packet) else {
            self.respond_failure_req(&req, Refusal::BadRequest, now);
            return;
        };
        let target = match (resource, method) {
            (Resource::Channel(target), _) => target,
            (Resource::Health { domain }, RequestType::Post) => {
                self.start_exchange(req, Kind::Health, None, now, |exchange, peer| {
                    Event::HealthCheck {
                        exchange,
                        peer,
                        domain,
                        credentials,
                    }
                });
                return;
            }
            (Resource::Health { .. }, _) => {
                self.respond_now(
                    &req,
                    ResponseType::MethodNotAllowed,
                    RefusalKind::BadRequest,
                    |_| {},
                );
                return;
            }
        };
        match method {
            RequestType::Post => self.handle_post(req, target, credentials, packet, now),
            RequestType::Get => {
                let observe = packet.first_option(CoapOption::Observe).map(decode_uint);
                match observe {
                    Some(Some(0)) => {
                        self.start_exchange(req, Kind::Subscribe, None, now, |exchange, peer| {
                            Event::Subscribe {
                                exchange,
                                peer,
                                target,
                                credentials,
                            }
                        });
                    }
                    Some(Some(1)) => {
                        if let Some(id) = self.observer_by_token.get(&(req.peer, req.token.clone()))
                        {
                            let id = *id;
                            self.cancel_observer(id);
                        }
                        self.start_exchange(req, Kind::Poll, None, now, |exchange, peer| {
                            Event::Poll {
                                exchange,
                                peer,
                                target,
                                credentials,
                            }
                        });
                    }
                    Some(_) => self.respond_failure_req(&req, Refusal::BadRequest, now),
                    None => self.start_exchange(req, Kind::Poll, None, now, |exchange, peer| {
                        Event::Poll {
                            exchange,
                            peer,
                            target,
                            credentials,
                        }
                    }),
                }
            }
            _ => self.respond_now(
                &req,
                ResponseType::MethodNotAllowed,
                RefusalKind::BadRequest,
                |_| {},
            ),
        }
    }

    fn start_exchange(
        &mut self,
        req: Request,
        kind: Kind,
        block1: Option<u32>,
        now: Instant,
        event: impl FnOnce(ExchangeId, SocketAddr) -> Event,
    ) {
        if self.pending.len() >= self.config.max_pending {
            self.respond_failure_req(
                &req,
                Refusal::Busy {
                    retry_after: Duration::from_secs(1),
                },
                now,
            );
            return;
        }
        let id = ExchangeId(self.next_exchange);
        self.next_exchange += 1;
        self.events.push_back(event(id, req.peer));
        self.pending.insert(
            id,
            Pending {
                peer: req.peer,
                message_id: req.message_id,
                confirmable: req.confirmable,
                token: req.token,
                kind,
                block1,
            },
        );
    }

    fn finish(&mut self, p: &Pending, resp: Packet, _now: Instant) {
        self.send_answer(p.peer, p.message_id, &resp, DedupState::Answered);
    }

    fn response_to(&mut self, p: &Pending, code: ResponseType) -> Packet {
        self.response(p.confirmable, p.message_id, &p.token, code)
    }

    fn response_to_req(&mut self, req: &Request, code: ResponseType) -> Packet {
        self.response(req.confirmable, req.message_id, &req.token, code)
    }

    /// A piggy-backed ACK for a CON, a NON with a fresh message id for a NON.
    fn response(
        &mut self,
        confirmable: bool,
        message_id: u16,
        token: &[u8],
        code: ResponseType,
    ) -> Packet {
        let mut resp = Packet::new();
        if confirmable {
            resp.header.set_type(MessageType::Acknowledgement);
            resp.header.message_id = message_id;
        } else {
            resp.header.set_type(MessageType::NonConfirmable);
            resp.header.message_id = self.fresh_message_id();
        }
        resp.header.code = MessageClass::Response(code);
        resp.set_token(token.to_vec());
        resp
    }

    fn fresh_message_id(&mut self) -> u16 {
        let id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1);
        id
    }

    fn send_reset(&mut self, peer: SocketAddr, mid: u16) {
        let mut rst = Packet::new();
        rst.header.set_type(MessageType::Reset);
        rst.header.message_id = mid;
        rst.header.code = MessageClass::Empty;
        self.transmits.push_back(Transmit {
            peer,
            payload: encode(&rst),
        });
    }
}

#[cfg(test)]
mod tests;
