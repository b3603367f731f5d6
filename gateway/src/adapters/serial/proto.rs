//! The serial session, sans-IO: bytes in ([`Session::handle_input`]), decisions out
//! ([`Session::poll_event`]: authenticate this, publish that), answers in
//! (`handle_auth_result`, `handle_publish_result`), bytes out ([`Session::poll_transmit`]).
//! It owns no port, store, clock or tokio type.
//!
//! Answers leave in request order: a `PUB` gets `OK <seq>` only once the outbox says the
//! message is durable, and an error for a later line waits behind it. At most `max_pending`
//! answers may be outstanding; the shell stops feeding input while [`Session::is_full`].
//! Input is buffered up to one line (`max_line`); an overlong line is answered `ERR too-long`
//! at once and the rest of it is discarded up to its newline.

use std::collections::VecDeque;

use super::codec::{self, DecodeError, Frame, Line, Reason, Target, UnsafeCommand};
pub use crate::intake::refusal::{Refusal, RefusalCounts, RefusalKind};

/// What a session answered, in plain counts (its shell adds the differences to the metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// `OK <seq>`: messages acknowledged durable.
    pub accepted: u64,
    /// `ERR …` answers, by intake's refusal kind.
    pub refused: RefusalCounts,
    /// `CMD …` lines written.
    pub commands: u64,
    /// Commands not written because they would not be one faithful `CMD` line
    /// ([`codec::check_command`]).
    pub commands_refused: u64,
}

/// Which request a refusal answers: `AUTH` refusals of credentials say `auth`, later ones
/// (client disabled or removed since) `not-authenticated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answering {
    Auth,
    Pub,
}

/// The one mapping from intake's refusal to the serial wire (README "Refusals"): storage
/// failure and shutdown are `ERR unavailable`, a full outbox `ERR busy`.
pub fn wire_reason(refusal: &Refusal, answering: Answering) -> Reason {
    match refusal {
        Refusal::Unauthenticated if answering == Answering::Auth => Reason::Auth,
        Refusal::Unauthenticated => Reason::NotAuthenticated,
        Refusal::Forbidden => Reason::NotConnected,
        Refusal::BadRequest | Refusal::NotFound => Reason::BadRequest,
        Refusal::TooLarge { .. } => Reason::TooLarge,
        Refusal::Busy { .. } => Reason::Busy,
        Refusal::Throttled { .. } => Reason::Throttled,
        Refusal::Unavailable { .. } => Reason::Unavailable,
    }
}

/// The refusal kind of a line the codec refused (no intake decision involved).
fn codec_kind(reason: Reason) -> RefusalKind {
    match reason {
        Reason::TooLong | Reason::TooLarge => RefusalKind::TooLarge,
        Reason::Auth | Reason::NotAuthenticated => RefusalKind::Unauthenticated,
        Reason::NotConnected => RefusalKind::Forbidden,
        Reason::Busy => RefusalKind::Busy,
        Reason::Throttled => RefusalKind::Throttled,
        Reason::Unavailable => RefusalKind::Unavailable,
        Reason::Checksum | Reason::UnknownCommand | Reason::BadRequest => RefusalKind::BadRequest,
    }
}

/// The client a session speaks for: its store id and identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub id: String,
    pub identity: String,
}

/// Identifies one request awaiting an answer from the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(u64);

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Check these credentials, then call [`Session::handle_auth_result`]. Input processing
    /// pauses until then, so a `PUB` right behind an `AUTH` sees its outcome.
    Authenticate {
        token: Token,
        identity: String,
        secret: Vec<u8>,
    },
    /// Authorize and store this message, then call [`Session::handle_publish_result`] once it
    /// is durable (or refused).
    Publish {
        token: Token,
        client: Client,
        target: Target,
        payload: Vec<u8>,
    },
    /// The session is now authenticated as `client` (subscribe it to its downlink channels).
    Authenticated { client: Client },
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Longest accepted line in bytes, without the newline.
    pub max_line: usize,
    /// Most answers outstanding (PUBs waiting for durability) before input is paused.
    pub max_pending: usize,
}

#[derive(Debug)]
enum Slot {
    Waiting(Token),
    Done(Line),
}

#[derive(Debug)]
struct Answer {
    slot: Slot,
    checksummed: bool,
}

/// One serial session (one port, from open to close).
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    /// Bound to a client by configuration: no AUTH needed.
    bound: Option<Client>,
    client: Option<Client>,
    buf: Vec<u8>,
    discarding: bool,
    /// An AUTH is out: stop decoding until its result.
    auth_pending: Option<Token>,
    answers: VecDeque<Answer>,
    events: VecDeque<Event>,
    transmit: VecDeque<Vec<u8>>,
    next_token: u64,
    /// The sensor used checksums on its last line: downlink commands carry one too.
    peer_checksums: bool,
    stats: SessionStats,
}

impl Session {
    pub fn new(config: SessionConfig, bound: Option<Client>) -> Self {
        let max_line = config.max_line;
        Self {
            config,
            client: bound.clone(),
            bound,
            buf: Vec::with_capacity(max_line.min(4096) + 1),
            discarding: false,
            auth_pending: None,
            answers: VecDeque::new(),
            events: VecDeque::new(),
            transmit: VecDeque::new(),
            next_token: 0,
            peer_checksums: false,
            stats: SessionStats::default(),
        }
    }

    /// What the session answered so far.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// The authenticated (or bound) client, if any.
    pub fn client(&self) -> Option<&Client> {
        self.client.as_ref()
    }

    /// Too many answers outstanding: do not feed more input until one resolves.
    pub fn is_full(&self) -> bool {
        self.answers.len() >= self.config.max_pending
    }

    /// Waiting for an authentication result: input is not consumed until it arrives.
    pub fn is_paused(&self) -> bool {
        self.auth_pending.is_some()
    }

    /// Feeds bytes read from the port. Returns how many were consumed; fewer than `data.len()`
    /// when the session paused (an AUTH to decide, or [`Session::is_full`]): feed the rest
    /// after handling the events.
    pub fn handle_input(&mut self, data: &[u8]) -> usize {
        let mut used = 0;
        // Lines already buffered first (left over from a pause).
        self.process_buffer();
        while used < data.len() && !self.is_paused() && !self.is_full() {
            let rest = &data[used..];
            if self.discarding {
                match rest.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        used += i + 1;
                        self.discarding = false;
                    }
                    None => used = data.len(),
                }
                continue;
            }
            // Take at most up to the next newline, and never more than one line's worth.
            let room = self.config.max_line + 1 - self.buf.len().min(self.config.max_line + 1);
            let take = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| i + 1)
                .min(room.max(1));
            self.buf.extend_from_slice(&rest[..take]);
            used += take;
            self.process_buffer();
        }
        used
    }

    fn process_buffer(&mut self) {
        while !self.is_paused() && !self.is_full() && !self.buf.is_empty() {
            match codec::decode(&self.buf, self.config.max_line) {
                Ok(None) => break,
                Ok(Some((frame, n))) => {
                    self.buf.drain(..n);
                    self.handle_frame(frame);
                }
                Err(DecodeError {
                    reason,
                    consumed,
                    unterminated,
                    checksummed,
                }) => {
                    self.buf.drain(..consumed);
                    if unterminated {
                        self.discarding = true;
                    }
                    self.stats.refused.record(codec_kind(reason));
                    self.answer(Line::Err(reason), checksummed);
                }
            }
        }
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        Token(self.next_token)
    }

    fn answer(&mut self, line: Line, checksummed: bool) {
        self.answers.push_back(Answer {
            slot: Slot::Done(line),
            checksummed,
        });
        self.flush_answers();
    }

    fn handle_frame(&mut self, frame: Frame) {
        let Frame { line, checksummed } = frame;
        self.peer_checksums = checksummed;
        match line {
            Line::Auth { identity, secret } => {
                let token = self.token();
                self.auth_pending = Some(token);
                self.answers.push_back(Answer {
                    slot: Slot::Waiting(token),
                    checksummed,
                });
                self.events.push_back(Event::Authenticate {
                    token,
                    identity,
                    secret,
                });
            }
            Line::Pub { target, payload } => {
                let Some(client) = self.client.clone() else {
                    let reason = self.refuse(&Refusal::Unauthenticated, Answering::Pub);
                    self.answer(Line::Err(reason), checksummed);
                    return;
                };
                let token = self.token();
                self.answers.push_back(Answer {
                    slot: Slot::Waiting(token),
                    checksummed,
                });
                self.events.push_back(Event::Publish {
                    token,
                    client,
                    target,
                    payload,
                });
            }
            // Gateway-to-sensor messages are not requests.
            Line::Cmd { .. } | Line::Ok(_) | Line::Err(_) => {
                self.stats
                    .refused
                    .record(codec_kind(Reason::UnknownCommand));
                self.answer(Line::Err(Reason::UnknownCommand), checksummed);
            }
        }
    }

    /// Counts a refusal (once) and maps it to its word.
    fn refuse(&mut self, refusal: &Refusal, answering: Answering) -> Reason {
        self.stats.refused.record(refusal.kind());
        wire_reason(refusal, answering)
    }

    /// The outcome of an [`Event::Authenticate`]. A failed AUTH leaves the session as it was
    /// before (bound client, or unauthenticated).
    pub fn handle_auth_result(&mut self, token: Token, result: Result<Client, Refusal>) {
        if self.auth_pending != Some(token) {
            return;
        }
        self.auth_pending = None;
        let line = match result {
            Ok(client) => {
                self.client = Some(client.clone());
                self.events.push_back(Event::Authenticated { client });
                Line::Ok(None)
            }
            Err(refusal) => {
                self.client = self.bound.clone();
                Line::Err(self.refuse(&refusal, Answering::Auth))
            }
        };
        self.resolve(token, line);
        self.process_buffer();
    }

    /// The outcome of an [`Event::Publish`]: the outbox sequence number once durable.
    pub fn handle_publish_result(&mut self, token: Token, result: Result<u64, Refusal>) {
        let line = match result {
            Ok(seq) => {
                self.stats.accepted += 1;
                Line::Ok(Some(seq))
            }
            Err(refusal) => Line::Err(self.refuse(&refusal, Answering::Pub)),
        };
        self.resolve(token, line);
        self.process_buffer();
    }

    fn resolve(&mut self, token: Token, line: Line) {
        if let Some(answer) = self
            .answers
            .iter_mut()
            .find(|a| matches!(a.slot, Slot::Waiting(t) if t == token))
        {
            answer.slot = Slot::Done(line);
        }
        self.flush_answers();
    }

    fn flush_answers(&mut self) {
        while let Some(Answer {
            slot: Slot::Done(_),
            ..
        }) = self.answers.front()
        {
            if let Some(Answer {
                slot: Slot::Done(line),
                checksummed,
            }) = self.answers.pop_front()
            {
                self.transmit.push_back(codec::encode(&line, checksummed));
            }
        }
    }

    /// A downlink command for this session's client. One that cannot be written as exactly
    /// one `CMD` line (a line break in the payload, a subtopic level that is not a token, a
    /// trailing `*HH` without checksums) is refused and counted, never written: it would let
    /// whoever publishes upstream forge `OK <seq>` or `CMD` lines to the sensor.
    pub fn handle_command(
        &mut self,
        target: Target,
        payload: Vec<u8>,
    ) -> Result<(), UnsafeCommand> {
        if let Err(e) = codec::check_command(&target, &payload, self.peer_checksums) {
            self.stats.commands_refused += 1;
            return Err(e);
        }
        let line = Line::Cmd { target, payload };
        self.stats.commands += 1;
        self.transmit
            .push_back(codec::encode(&line, self.peer_checksums));
        Ok(())
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session::new(
            SessionConfig {
                max_line: 64,
                max_pending: 4,
            },
            None,
        )
    }

    fn client() -> Client {
        Client {
            id: "c-1".into(),
            identity: "sensor-1".into(),
        }
    }

    fn sent(s: &mut Session) -> Vec<String> {
        std::iter::from_fn(|| s.poll_transmit())
            .map(|b| String::from_utf8(b).unwrap())
            .collect()
    }

    /// The shell's loop: feed, answer AUTHs (success for the secret "right"); returns the
    /// other events.
    fn feed_all(s: &mut Session, mut data: &[u8]) -> Vec<Event> {
        let mut others = Vec::new();
        while !data.is_empty() {
            let n = s.handle_input(data);
            data = &data[n..];
            while let Some(ev) = s.poll_event() {
                match ev {
                    Event::Authenticate { token, secret, .. } => {
                        let result = if secret == b"right" {
                            Ok(client())
                        } else {
                            Err(Refusal::Unauthenticated)
                        };
                        s.handle_auth_result(token, result);
                    }
                    other => others.push(other),
                }
            }
            if n == 0 && s.is_full() {
                break;
            }
        }
        others
    }

    #[test]
    fn pub_before_auth_is_refused_then_auth_then_pub_is_acked_when_durable() {
        let mut s = session();
        let input = b"PUB temp 1\nAUTH sensor-1 right\nPUB temp/a 2\n";
        let n = s.handle_input(input);
        assert_eq!(n, 31, "input stops after the AUTH line");
        assert_eq!(sent(&mut s), ["ERR not-authenticated\n"]);
        // The AUTH pauses decoding: the PUB behind it is not yet seen.
        let Some(Event::Authenticate {
            token, identity, ..
        }) = s.poll_event()
        else {
            panic!("expected an authenticate event")
        };
        assert_eq!(identity, "sensor-1");
        assert!(s.is_paused());
        assert_eq!(s.handle_input(&input[n..]), 0, "paused");
        s.handle_auth_result(token, Ok(client()));
        assert_eq!(
            s.poll_event(),
            Some(Event::Authenticated { client: client() })
        );
        assert_eq!(s.handle_input(&input[n..]), input.len() - n);
        let Some(Event::Publish {
            token,
            client: c,
            target,
            payload,
        }) = s.poll_event()
        else {
            panic!("expected a publish event")
        };
        assert_eq!(c, client());
        assert_eq!(target.subtopic, "a");
        assert_eq!(payload, b"2");
        assert_eq!(sent(&mut s), ["OK\n"]);
        s.handle_publish_result(token, Ok(17));
        assert_eq!(sent(&mut s), ["OK 17\n"]);
    }

    #[test]
    fn answers_leave_in_request_order() {
        let mut s = session();
        feed_all(&mut s, b"AUTH sensor-1 right\n");
        assert_eq!(sent(&mut s), ["OK\n"]);
        let tokens: Vec<Token> = feed_all(&mut s, b"PUB a 1\nPUB b 2\nBOGUS\n")
            .into_iter()
            .filter_map(|e| match e {
                Event::Publish { token, .. } => Some(token),
                _ => None,
            })
            .collect();
        assert_eq!(tokens.len(), 2);
        // The error for BOGUS and the second ack wait for the first PUB.
        s.handle_publish_result(tokens[1], Ok(2));
        assert!(sent(&mut s).is_empty());
        s.handle_publish_result(
            tokens[0],
            Err(Refusal::Busy {
                retry_after: std::time::Duration::from_secs(1),
            }),
        );
        assert_eq!(
            sent(&mut s),
            ["ERR busy\n", "OK 2\n", "ERR unknown-command\n"]
        );
    }

    #[test]
    fn wrong_secret_keeps_the_session_unauthenticated_and_working() {
        let mut s = session();
        feed_all(
            &mut s,
            b"AUTH sensor-1 wrong\nPUB a 1\nAUTH sensor-1 right\n",
        );
        assert_eq!(
            sent(&mut s),
            ["ERR auth\n", "ERR not-authenticated\n", "OK\n"]
        );
        assert_eq!(s.client(), Some(&client()));
    }

    #[test]
    fn checksummed_requests_get_checksummed_answers() {
        let mut s = session();
        let auth = codec::encode(
            &Line::Auth {
                identity: "sensor-1".into(),
                secret: b"right".to_vec(),
            },
            true,
        );
        feed_all(&mut s, &auth);
        feed_all(&mut s, b"PUB a 1*00\n");
        let out = sent(&mut s);
        assert_eq!(
            out[0],
            String::from_utf8(codec::encode(&Line::Ok(None), true)).unwrap()
        );
        assert_eq!(
            out[1],
            String::from_utf8(codec::encode(&Line::Err(Reason::Checksum), true)).unwrap()
        );
        // Downlink commands follow the sensor's choice.
        s.handle_command(
            Target {
                channel: "ctl".into(),
                subtopic: String::new(),
            },
            b"reboot".to_vec(),
        )
        .unwrap();
        let cmd = s.poll_transmit().unwrap();
        assert!(cmd.starts_with(b"CMD ctl reboot*"), "{cmd:?}");
    }

    #[test]
    fn a_command_that_would_forge_lines_is_refused_counted_and_never_written() {
        let mut s = session();
        let target = |subtopic: &str| Target {
            channel: "ctl".into(),
            subtopic: subtopic.into(),
        };
        assert_eq!(
            s.handle_command(target(""), b"x\nOK 999999\nCMD other/y z".to_vec()),
            Err(UnsafeCommand::LineBreak)
        );
        assert_eq!(
            s.handle_command(target("a b"), b"on".to_vec()),
            Err(UnsafeCommand::Target)
        );
        assert_eq!(
            s.handle_command(target(""), b"dim*4F".to_vec()),
            Err(UnsafeCommand::ChecksumLike)
        );
        assert_eq!(s.poll_transmit(), None, "nothing written");
        s.handle_command(target("a"), b"on".to_vec()).unwrap();
        assert_eq!(sent(&mut s), ["CMD ctl/a on\n"]);
        let stats = s.stats();
        assert_eq!((stats.commands, stats.commands_refused), (1, 3));
    }

    #[test]
    fn an_overlong_line_is_answered_at_once_and_the_rest_of_it_discarded() {
        let mut s = session();
        let long = [b'x'; 200];
        // Fed in small pieces: the buffer never grows beyond one line.
        for chunk in long.chunks(7) {
            assert_eq!(s.handle_input(chunk), chunk.len());
            assert!(s.buf.len() <= 65);
        }
        assert_eq!(sent(&mut s), ["ERR too-long\n"]);
        feed_all(&mut s, b"still the long line\nAUTH sensor-1 right\n");
        assert_eq!(sent(&mut s), ["OK\n"]);
    }

    #[test]
    fn bound_port_publishes_without_auth_and_a_failed_auth_keeps_the_binding() {
        let mut s = Session::new(
            SessionConfig {
                max_line: 64,
                max_pending: 4,
            },
            Some(client()),
        );
        let events = feed_all(&mut s, b"AUTH other wrong\nPUB a 1\n");
        assert_eq!(sent(&mut s), ["ERR auth\n"]);
        assert!(matches!(
            events.as_slice(),
            [Event::Publish { client: c, .. }] if *c == client()
        ));
    }

    #[test]
    fn input_pauses_when_too_many_answers_are_pending() {
        let mut s = session();
        feed_all(&mut s, b"AUTH sensor-1 right\n");
        sent(&mut s);
        std::iter::from_fn(|| s.poll_event()).count();
        let input = b"PUB a 1\nPUB a 2\nPUB a 3\nPUB a 4\nPUB a 5\n";
        let n = s.handle_input(input);
        assert!(s.is_full());
        assert!(n < input.len());
        let tokens: Vec<Token> = std::iter::from_fn(|| s.poll_event())
            .filter_map(|e| match e {
                Event::Publish { token, .. } => Some(token),
                _ => None,
            })
            .collect();
        assert_eq!(tokens.len(), 4);
        s.handle_publish_result(tokens[0], Ok(1));
        assert!(!s.is_full());
        let m = s.handle_input(&input[n..]);
        assert_eq!(n + m, input.len());
        assert!(matches!(s.poll_event(), Some(Event::Publish { payload, .. }) if payload == b"5"));
    }
}
