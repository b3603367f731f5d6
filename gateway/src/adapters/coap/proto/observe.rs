//! Observe (RFC 7641) registrations and their confirmable notifications.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, ResponseType};

use super::{
    Event, ExchangeId, NotifyError, Refusal, Server, Transmit, coap_answer, encode, encode_uint,
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
        }
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
