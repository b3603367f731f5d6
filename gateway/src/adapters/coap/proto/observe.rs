//! Observe (RFC 7641) registrations and their confirmable notifications.
//!
//! The table is bounded without letting one sensor pin it: registrations are capped per
//! peer (`max_observers_per_peer`, here) and per client (`max_observers_per_client`, by the
//! shell, which knows the client); beyond a cap, or when the table is full, the oldest
//! registration of that peer (or of the peer holding the most) is ended with a 5.03, and a
//! registration whose peer sent nothing for `observe_idle_timeout` is ended.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, ResponseType};

use super::{
    Event, ExchangeId, Kind, NotifyError, Refusal, Server, Transmit, coap_answer, encode,
    encode_uint,
};

/// How often idle registrations are looked for.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// What an ended (replaced, idle) registration is told: try again later.
const REPLACED: Refusal = Refusal::Busy {
    retry_after: Duration::from_secs(30),
};

#[derive(Debug)]
pub(super) struct InFlight {
    pub(super) message_id: u16,
    pub(super) bytes: Vec<u8>,
    pub(super) retransmits: u32,
    pub(super) timeout: Duration,
    pub(super) next: Instant,
}

#[derive(Debug)]
pub(super) struct Observer {
    pub(super) peer: SocketAddr,
    pub(super) token: Vec<u8>,
    pub(super) seq: u32,
    pub(super) in_flight: Option<InFlight>,
    pub(super) queue: VecDeque<(Vec<u8>, Option<u16>)>,
}

impl Server {
    /// Queues a confirmable notification for an observer.
    pub fn notify(
        &mut self,
        observer: ExchangeId,
        payload: Vec<u8>,
        content_format: Option<u16>,
        now: Instant,
    ) -> Result<(), NotifyError> {
        let max_queue = self.config.max_queued_notifications;
        let obs = self
            .observers
            .get_mut(&observer)
            .ok_or(NotifyError::UnknownObserver)?;
        if obs.queue.len() >= max_queue {
            return Err(NotifyError::QueueFull);
        }
        obs.queue.push_back((payload, content_format));
        self.send_next_notification(observer, now);
        Ok(())
    }

    /// Ends an observation from the shell's side (client disabled, revoked, session gone).
    pub fn cancel_observer(&mut self, observer: ExchangeId) {
        if let Some(obs) = self.observers.remove(&observer) {
            self.observer_by_token.remove(&(obs.peer, obs.token));
            self.events.push_back(Event::ObserveEnded { observer });
            if !self.observers.values().any(|o| o.peer == obs.peer) {
                self.observer_peers.remove(&obs.peer);
            }
            if self.observers.is_empty() {
                self.next_observe_sweep = None;
            }
        }
    }

    /// Whether a pending Observe registration replaces one of its peer's (same token): the
    /// shell's per-client cap does not count it twice.
    pub fn reregisters(&self, exchange: ExchangeId) -> bool {
        self.pending.get(&exchange).is_some_and(|p| {
            matches!(p.kind, Kind::Subscribe)
                && self
                    .observer_by_token
                    .contains_key(&(p.peer, p.token.clone()))
        })
    }

    /// Ends (5.03) the oldest registration of `peer` while it holds its cap, then, while the
    /// table is full, the oldest of the peer holding the most.
    pub(super) fn make_observer_room(&mut self, peer: SocketAddr) {
        let per_peer = self.config.max_observers_per_peer.max(1);
        loop {
            let mine: Vec<ExchangeId> = self
                .observers
                .iter()
                .filter(|(_, o)| o.peer == peer)
                .map(|(id, _)| *id)
                .collect();
            if mine.len() < per_peer {
                break;
            }
            let Some(oldest) = mine.into_iter().min() else {
                break;
            };
            self.end_observer(oldest, REPLACED);
        }
        while !self.observers.is_empty() && self.observers.len() >= self.config.max_observers {
            let mut per: std::collections::HashMap<SocketAddr, (usize, ExchangeId)> =
                std::collections::HashMap::new();
            for (id, o) in &self.observers {
                let e = per.entry(o.peer).or_insert((0, *id));
                e.0 += 1;
                e.1 = e.1.min(*id);
            }
            let Some((_, (_, oldest))) = per
                .into_iter()
                .max_by(|a, b| a.1.0.cmp(&b.1.0).then(b.1.1.cmp(&a.1.1)))
            else {
                break;
            };
            self.end_observer(oldest, REPLACED);
        }
    }

    /// Ends registrations whose peer was silent for `observe_idle_timeout`.
    fn sweep_observers(&mut self, now: Instant) {
        match self.next_observe_sweep {
            Some(t) if t <= now => {}
            _ => return,
        }
        let idle = self.config.observe_idle_timeout;
        let quiet: Vec<ExchangeId> = self
            .observers
            .iter()
            .filter(|(_, o)| {
                self.observer_peers
                    .get(&o.peer)
                    .is_none_or(|seen| now.saturating_duration_since(*seen) >= idle)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in quiet {
            self.end_observer(id, REPLACED);
        }
        self.next_observe_sweep = (!self.observers.is_empty()).then_some(now + SWEEP_EVERY);
    }

    /// Ends an observation with a final error notification (RFC 7641 §3.2: a response that
    /// is not 2.xx ends it), e.g. 4.03 when the client lost its subscribe grant.
    pub fn end_observer(&mut self, observer: ExchangeId, refusal: Refusal) {
        let Some(obs) = self.observers.get(&observer) else {
            return;
        };
        let (peer, token) = (obs.peer, obs.token.clone());
        let answer = coap_answer(&refusal);
        let mut n = Packet::new();
        n.header.set_type(MessageType::NonConfirmable);
        n.header.message_id = self.fresh_message_id();
        n.header.code = MessageClass::Response(answer.code);
        n.set_token(token);
        self.stats.refused.record(refusal.kind());
        self.transmits.push_back(Transmit {
            peer,
            payload: encode(&n),
        });
        self.cancel_observer(observer);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
        self.sweep_observers(now);
        let due: Vec<ExchangeId> = self
            .observers
            .iter()
            .filter(|(_, o)| o.in_flight.as_ref().is_some_and(|f| f.next <= now))
            .map(|(id, _)| *id)
            .collect();
        let max_retransmit = self.config.max_retransmit;
        for id in due {
            let Some(obs) = self.observers.get_mut(&id) else {
                continue;
            };
            let Some(f) = obs.in_flight.as_mut() else {
                continue;
            };
            if f.retransmits >= max_retransmit {
                // RFC 7641 §4.5: an unacknowledged notification ends the observation.
                self.cancel_observer(id);
                continue;
            }
            f.retransmits += 1;
            f.timeout *= 2;
            f.next = now + f.timeout;
            let payload = f.bytes.clone();
            let peer = obs.peer;
            self.transmits.push_back(Transmit { peer, payload });
        }
    }

    pub(super) fn handle_ack(&mut self, peer: SocketAddr, mid: u16, now: Instant) {
        let found = self
            .observers
            .iter()
            .find(|(_, o)| {
                o.peer == peer && o.in_flight.as_ref().is_some_and(|f| f.message_id == mid)
            })
            .map(|(id, _)| *id);
        if let Some(id) = found {
            if let Some(obs) = self.observers.get_mut(&id) {
                obs.in_flight = None;
            }
            self.send_next_notification(id, now);
        }
    }

    pub(super) fn handle_reset(&mut self, peer: SocketAddr, mid: u16) {
        let found = self
            .observers
            .iter()
            .find(|(_, o)| {
                o.peer == peer && o.in_flight.as_ref().is_some_and(|f| f.message_id == mid)
            })
            .map(|(id, _)| *id);
        if let Some(id) = found {
            self.cancel_observer(id);
        }
    }

    pub(super) fn send_next_notification(&mut self, id: ExchangeId, now: Instant) {
        let mid = self.next_message_id;
        let ack_timeout = self.config.ack_timeout;
        let Some(obs) = self.observers.get_mut(&id) else {
            return;
        };
        if obs.in_flight.is_some() {
            return;
        }
        let Some((payload, cf)) = obs.queue.pop_front() else {
            return;
        };
        obs.seq = (obs.seq + 1) & 0x00FF_FFFF;
        let mut n = Packet::new();
        n.header.set_type(MessageType::Confirmable);
        n.header.message_id = mid;
        n.header.code = MessageClass::Response(ResponseType::Content);
        n.set_token(obs.token.clone());
        n.set_observe_value(obs.seq);
        if let Some(cf) = cf {
            n.add_option(CoapOption::ContentFormat, encode_uint(u32::from(cf)));
        }
        n.payload = payload;
        let bytes = encode(&n);
        obs.in_flight = Some(InFlight {
            message_id: mid,
            bytes: bytes.clone(),
            retransmits: 0,
            timeout: ack_timeout,
            next: now + ack_timeout,
        });
        let peer = obs.peer;
        self.next_message_id = self.next_message_id.wrapping_add(1);
        self.transmits.push_back(Transmit {
            peer,
            payload: bytes,
        });
    }
}
