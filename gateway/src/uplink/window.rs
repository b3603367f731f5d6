//! The uplink's delivery state, sans-IO: which outbox entries are buffered, in flight (sent,
//! waiting for PUBACK) and acknowledged; the packet-id ↔ sequence mapping; and the reconnect
//! backoff. Driven by `handle_*` and drained by `poll_*`; no sockets, no clock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use crate::outbox::Entry;

/// Entries between the outbox and the broker.
#[derive(Debug)]
pub struct Window {
    capacity: usize,
    /// Highest sequence number fetched from the outbox.
    cursor: u64,
    unsent: VecDeque<Entry>,
    inflight: BTreeMap<u64, Entry>,
    /// Entries the broker refused (an MQTT 5 PUBACK with an error reason): out of the window,
    /// still in the outbox, sent again by [`Window::handle_retry`] or after a reconnect.
    held: BTreeMap<u64, Entry>,
    /// Publish requests handed to the MQTT client, in order, waiting for their packet id:
    /// `Some(seq)` for outbox entries, `None` for the uplink's own (status) publishes.
    awaiting_pkid: VecDeque<Option<u64>>,
    pkids: HashMap<u16, u64>,
    acked: Vec<u64>,
}

impl Window {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            cursor: 0,
            unsent: VecDeque::new(),
            inflight: BTreeMap::new(),
            held: BTreeMap::new(),
            awaiting_pkid: VecDeque::new(),
            pkids: HashMap::new(),
            acked: Vec::new(),
        }
    }

    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// How many entries to fetch: none while a window's worth is buffered, else enough for
    /// two windows (one outbox read per window, not per PUBACK).
    pub fn want(&self) -> usize {
        if self.unsent.len() >= self.capacity {
            0
        } else {
            2 * self.capacity - self.unsent.len()
        }
    }

    pub fn handle_fetched(&mut self, entries: Vec<Entry>) {
        for e in entries {
            if e.seq > self.cursor {
                self.cursor = e.seq;
                self.unsent.push_back(e);
            }
        }
    }

    /// As [`Window::handle_fetched`], and everything up to `through` has now been seen (the
    /// numbers in between are no longer queued): the cursor moves there.
    pub fn handle_fetched_through(&mut self, entries: Vec<Entry>, through: u64) {
        self.handle_fetched(entries);
        self.cursor = self.cursor.max(through);
    }

    /// The next entry to publish, if the in-flight window has room (it is in flight from now
    /// on; borrowed, not copied: no allocation per message).
    pub fn poll_publish(&mut self) -> Option<&Entry> {
        if self.inflight.len() >= self.capacity {
            return None;
        }
        let entry = self.unsent.pop_front()?;
        let seq = entry.seq;
        self.awaiting_pkid.push_back(Some(seq));
        Some(self.inflight.entry(seq).or_insert(entry))
    }

    /// The client refused the request (queue full): send it again later, first.
    pub fn handle_publish_refused(&mut self, seq: u64) {
        if let Some(entry) = self.inflight.remove(&seq) {
            self.awaiting_pkid.pop_back();
            self.unsent.push_front(entry);
        }
    }

    /// The uplink published something of its own (status); its packet id is not an entry's.
    pub fn handle_own_publish(&mut self) {
        self.awaiting_pkid.push_back(None);
    }

    /// A publish went out with `pkid` (rumqttc reports them in request order).
    pub fn handle_sent(&mut self, pkid: u16) {
        if let Some(Some(seq)) = self.awaiting_pkid.pop_front() {
            self.pkids.insert(pkid, seq);
        }
    }

    /// PUBACK for `pkid`: the entry is delivered.
    pub fn handle_puback(&mut self, pkid: u16) -> Option<u64> {
        let seq = self.pkids.remove(&pkid)?;
        self.inflight.remove(&seq)?;
        self.acked.push(seq);
        Some(seq)
    }

    /// The broker refused `pkid` (MQTT 5 PUBACK with an error reason). The entry leaves the
    /// window, so refused messages cannot fill it and stall everything else, and waits in
    /// `held` (it is still in the outbox) for [`Window::handle_retry`].
    pub fn handle_puback_refused(&mut self, pkid: u16) -> Option<u64> {
        let seq = self.pkids.remove(&pkid)?;
        let entry = self.inflight.remove(&seq)?;
        self.held.insert(seq, entry);
        Some(seq)
    }

    /// An entry polled for publishing that cannot be sent (no valid upstream topic): held like
    /// a refused one. `false` if it was not in flight.
    pub fn handle_unpublishable(&mut self, seq: u64) -> bool {
        let Some(entry) = self.inflight.remove(&seq) else {
            return false;
        };
        self.awaiting_pkid.pop_back();
        self.held.insert(seq, entry);
        true
    }

    /// Entries refused by the broker and waiting for a retry.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Time to try the refused entries again: they are sent next, oldest first.
    pub fn handle_retry(&mut self) {
        let held = std::mem::take(&mut self.held);
        for (_, entry) in held.into_iter().rev() {
            self.unsent.push_front(entry);
        }
    }

    /// Delivered entries since the last call (to delete from the outbox in one batch).
    pub fn poll_acks(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.acked)
    }

    /// The connection is gone: everything in flight is sent again, first and in order.
    pub fn handle_disconnect(&mut self) {
        let mut inflight = std::mem::take(&mut self.inflight);
        inflight.append(&mut self.held);
        for (_, entry) in inflight.into_iter().rev() {
            self.unsent.push_front(entry);
        }
        self.awaiting_pkid.clear();
        self.pkids.clear();
    }

    /// Entries dropped from the outbox (expired or dropped) may still be buffered: harmless,
    /// they are sent once more. Nothing to do here; kept for symmetry of the API.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    pub fn is_drained(&self) -> bool {
        self.inflight.is_empty()
    }
}

/// Reconnect delays: exponential from `min` to `max`, each with up to +50 % jitter (capped at
/// `max`) so a fleet does not reconnect in lockstep after a broker restart.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The next delay; `jitter` in [0, 1).
    pub fn poll_delay(&mut self, jitter: f64) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(1.0 + jitter.clamp(0.0, 1.0) / 2.0)
            .min(self.max)
    }

    pub fn handle_connected(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use bytes::Bytes;

    use super::*;
    use crate::outbox::Message;

    fn entries(seqs: impl IntoIterator<Item = u64>) -> Vec<Entry> {
        seqs.into_iter()
            .map(|seq| Entry {
                seq,
                message: Message {
                    client_id: "k".into(),
                    channel_id: "c".into(),
                    domain_id: "d".into(),
                    subtopic: String::new(),
                    content_format: None,
                    payload: Bytes::from(seq.to_string()),
                    received_at: SystemTime::UNIX_EPOCH,
                },
            })
            .collect()
    }

    fn publish_all(w: &mut Window) -> Vec<u64> {
        std::iter::from_fn(|| w.poll_publish().map(|e| e.seq)).collect()
    }

    #[test]
    fn the_window_limits_what_is_in_flight_and_acks_free_room() {
        let mut w = Window::new(3);
        assert_eq!(w.want(), 6);
        w.handle_fetched(entries(1..=5));
        assert_eq!(w.want(), 0, "a window's worth is buffered");
        assert_eq!(w.poll_publish().map(|e| e.seq), Some(1));
        w.handle_own_publish(); // a status publish between entries
        assert_eq!(publish_all(&mut w), vec![2, 3]);
        w.handle_sent(10);
        w.handle_sent(11);
        w.handle_sent(12);
        w.handle_sent(13);
        assert_eq!(w.handle_puback(11), None, "pkid 11 was the status publish");
        assert_eq!(w.handle_puback(12), Some(2));
        assert_eq!(publish_all(&mut w), vec![4]);
        assert_eq!(w.handle_puback(10), Some(1));
        assert_eq!(w.poll_acks(), vec![2, 1]);
        assert_eq!(w.poll_acks(), Vec::<u64>::new());
    }

    #[test]
    fn a_disconnect_resends_everything_unacknowledged_in_order() {
        let mut w = Window::new(4);
        w.handle_fetched(entries(1..=6));
        assert_eq!(publish_all(&mut w), vec![1, 2, 3, 4]);
        for pkid in 1..=4 {
            w.handle_sent(pkid);
        }
        w.handle_puback(2);
        w.handle_disconnect();
        assert_eq!(w.inflight(), 0);
        assert_eq!(publish_all(&mut w), vec![1, 3, 4, 5]);
        // Old packet ids mean nothing on the new connection.
        assert_eq!(w.handle_puback(1), None);
        assert_eq!(w.cursor(), 6);
    }

    #[test]
    fn refused_entries_leave_the_window_and_are_retried_in_order() {
        let mut w = Window::new(2);
        w.handle_fetched(entries(1..=5));
        assert_eq!(publish_all(&mut w), vec![1, 2]);
        w.handle_sent(1);
        w.handle_sent(2);
        assert_eq!(w.handle_puback_refused(1), Some(1));
        assert_eq!(w.handle_puback_refused(7), None, "unknown packet id");
        assert_eq!((w.inflight(), w.held()), (1, 1));
        // The refused entry no longer takes a slot: the window moves on.
        assert_eq!(publish_all(&mut w), vec![3]);
        w.handle_sent(3);
        assert_eq!(w.handle_puback_refused(3), Some(3));
        assert_eq!(publish_all(&mut w), vec![4]);
        assert!(
            w.poll_acks().is_empty(),
            "refused entries are not delivered"
        );
        w.handle_retry();
        assert_eq!(w.held(), 0);
        w.handle_sent(4);
        w.handle_puback(2);
        w.handle_puback(4);
        assert_eq!(publish_all(&mut w), vec![1, 3]);
        assert_eq!(w.poll_acks(), vec![2, 4]);
    }

    #[test]
    fn a_disconnect_resends_refused_entries_too_in_order() {
        let mut w = Window::new(3);
        w.handle_fetched(entries(1..=4));
        assert_eq!(publish_all(&mut w), vec![1, 2, 3]);
        for pkid in 1..=3 {
            w.handle_sent(pkid);
        }
        w.handle_puback_refused(2);
        w.handle_disconnect();
        assert_eq!((w.inflight(), w.held()), (0, 0));
        assert_eq!(publish_all(&mut w), vec![1, 2, 3]);
    }

    #[test]
    fn already_fetched_entries_are_not_buffered_twice() {
        let mut w = Window::new(10);
        w.handle_fetched(entries(1..=3));
        w.handle_fetched(entries(2..=4));
        assert_eq!(publish_all(&mut w), vec![1, 2, 3, 4]);
    }

    #[test]
    fn backoff_doubles_from_min_to_max_with_bounded_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let delays: Vec<u64> = (0..8).map(|_| b.poll_delay(0.0).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        b.handle_connected();
        let d = b.poll_delay(0.99);
        assert!(
            d > Duration::from_secs(1) && d < Duration::from_millis(1500),
            "{d:?}"
        );
        let mut b = Backoff::new(Duration::from_secs(40), Duration::from_secs(60));
        assert!(b.poll_delay(0.99) <= Duration::from_secs(60));
    }
}
