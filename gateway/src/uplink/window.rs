//! The uplink's delivery state, sans-IO: which outbox entries are buffered, in flight (sent,
//! waiting for PUBACK) and acknowledged; the packet-id ↔ sequence mapping; and the reconnect
//! backoff. Driven by `handle_*` and drained by `poll_*`; no sockets, no clock (the time is an
//! input).
//!
//! It also decides when to give up on an entry the upstream keeps refusing, so that one
//! message can never wedge the queue ([`Window::poll_quarantine`]):
//! - MQTT 5: a PUBACK with an error reason (FluxMQ answers 0x87 "not authorized",
//!   `mqtt/broker/v5_handler.go`) `quarantine_after` times for the same entry;
//! - MQTT 3.1.1: SuperMQ's proxy closes the connection on a PUBLISH it does not authorize
//!   (mgate `pkg/session/stream.go`). Which of the entries in flight did it is not known, so
//!   after a connection is lost with entries in flight the window **probes**: those entries
//!   go out one at a time. A connection closed within [`CLOSE_AFTER_PUBLISH`] of publishing the
//!   only entry in flight is a strike for that entry; `quarantine_after` strikes in a row and
//!   it is given up on. Once every suspect is acknowledged or given up on, the full window is
//!   back.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::outbox::Entry;

/// A connection lost this soon after publishing the only entry in flight counts as that
/// entry's refusal (a proxy that closes on an unauthorized PUBLISH does so at once; a network
/// failure is noticed only at the keep-alive).
pub const CLOSE_AFTER_PUBLISH: Duration = Duration::from_secs(5);

/// An entry the uplink gives up on: to move into the outbox's quarantine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GiveUp {
    pub seq: u64,
    pub reason: String,
    pub attempts: u32,
}

/// What became of a refused entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Held out of the window, sent again by [`Window::handle_retry`].
    Held,
    /// Refused too often: out of the window for good ([`Window::poll_quarantine`]).
    GivenUp,
}

/// Entries between the outbox and the broker.
#[derive(Debug)]
pub struct Window {
    capacity: usize,
    /// Refusals (or strikes) of one entry before it is given up on.
    quarantine_after: u32,
    /// MQTT 5 refusals per entry.
    refusals: HashMap<u64, u32>,
    /// Connections closed right after publishing the entry, in a row.
    strikes: HashMap<u64, u32>,
    /// Entries in flight when a connection was lost: sent one at a time until each is
    /// acknowledged or given up on.
    suspects: BTreeSet<u64>,
    /// When each entry in flight was written.
    sent_at: HashMap<u64, Instant>,
    given_up: Vec<GiveUp>,
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
    pub fn new(capacity: usize, quarantine_after: u32) -> Self {
        Self {
            capacity: capacity.max(1),
            quarantine_after: quarantine_after.max(1),
            refusals: HashMap::new(),
            strikes: HashMap::new(),
            suspects: BTreeSet::new(),
            sent_at: HashMap::new(),
            given_up: Vec::new(),
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
        let room = if self.suspects.is_empty() {
            self.capacity
        } else {
            1
        };
        if self.inflight.len() >= room {
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

    /// A publish went out with `pkid` at `now` (rumqttc reports them in request order).
    pub fn handle_sent(&mut self, pkid: u16, now: Instant) {
        if let Some(Some(seq)) = self.awaiting_pkid.pop_front() {
            self.pkids.insert(pkid, seq);
            self.sent_at.insert(seq, now);
        }
    }

    /// PUBACK for `pkid`: the entry is delivered.
    pub fn handle_puback(&mut self, pkid: u16) -> Option<u64> {
        let seq = self.pkids.remove(&pkid)?;
        self.inflight.remove(&seq)?;
        self.forget(seq);
        self.acked.push(seq);
        Some(seq)
    }

    fn forget(&mut self, seq: u64) {
        self.sent_at.remove(&seq);
        self.refusals.remove(&seq);
        self.strikes.remove(&seq);
        self.suspects.remove(&seq);
    }

    /// The broker refused `pkid` (MQTT 5 PUBACK with reason `reason`). The entry leaves the
    /// window, so refused messages cannot fill it and stall everything else, and waits in
    /// `held` (it is still in the outbox) for [`Window::handle_retry`]; refused
    /// `quarantine_after` times, it is given up on.
    pub fn handle_puback_refused(&mut self, pkid: u16, reason: &str) -> Option<(u64, Refused)> {
        let seq = self.pkids.remove(&pkid)?;
        let entry = self.inflight.remove(&seq)?;
        self.sent_at.remove(&seq);
        let n = self.refusals.entry(seq).or_default();
        *n += 1;
        let attempts = *n;
        if attempts >= self.quarantine_after {
            self.forget(seq);
            self.given_up.push(GiveUp {
                seq,
                reason: format!("the broker refused it (MQTT 5 PUBACK {reason}) {attempts} times"),
                attempts,
            });
            return Some((seq, Refused::GivenUp));
        }
        self.held.insert(seq, entry);
        Some((seq, Refused::Held))
    }

    /// The connection was lost at `now` after it was up (not a clean disconnect). With one
    /// entry in flight, written shortly before, that is a strike for it; with several, they
    /// all become suspects and are probed one at a time. Then everything is
    /// sent again as after [`Window::handle_disconnect`].
    pub fn handle_connection_lost(&mut self, now: Instant) {
        let written: Vec<u64> = self
            .inflight
            .keys()
            .copied()
            .filter(|s| self.sent_at.contains_key(s))
            .collect();
        // Alone in flight (probing, or simply the only one): unambiguous.
        if self.inflight.len() == 1 && written.len() == 1 {
            let seq = written[0];
            let just_sent = self
                .sent_at
                .get(&seq)
                .is_some_and(|t| now.saturating_duration_since(*t) <= CLOSE_AFTER_PUBLISH);
            if just_sent {
                let n = self.strikes.entry(seq).or_default();
                *n += 1;
                let attempts = *n;
                if attempts >= self.quarantine_after {
                    self.inflight.remove(&seq);
                    self.forget(seq);
                    self.given_up.push(GiveUp {
                        seq,
                        reason: format!(
                            "the upstream closed the connection right after it was published, {attempts} times in a row"
                        ),
                        attempts,
                    });
                }
            }
        } else {
            self.suspects.extend(written);
        }
        self.handle_disconnect();
    }

    /// Entries given up on since the last call: the caller moves them into the quarantine.
    pub fn poll_quarantine(&mut self) -> Vec<GiveUp> {
        std::mem::take(&mut self.given_up)
    }

    /// Entries being probed one at a time after a lost connection.
    pub fn suspects(&self) -> usize {
        self.suspects.len()
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
        self.sent_at.clear();
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
        let mut w = Window::new(3, 3);
        assert_eq!(w.want(), 6);
        w.handle_fetched(entries(1..=5));
        assert_eq!(w.want(), 0, "a window's worth is buffered");
        assert_eq!(w.poll_publish().map(|e| e.seq), Some(1));
        w.handle_own_publish(); // a status publish between entries
        assert_eq!(publish_all(&mut w), vec![2, 3]);
        w.handle_sent(10, Instant::now());
        w.handle_sent(11, Instant::now());
        w.handle_sent(12, Instant::now());
        w.handle_sent(13, Instant::now());
        assert_eq!(w.handle_puback(11), None, "pkid 11 was the status publish");
        assert_eq!(w.handle_puback(12), Some(2));
        assert_eq!(publish_all(&mut w), vec![4]);
        assert_eq!(w.handle_puback(10), Some(1));
        assert_eq!(w.poll_acks(), vec![2, 1]);
        assert_eq!(w.poll_acks(), Vec::<u64>::new());
    }

    #[test]
    fn a_disconnect_resends_everything_unacknowledged_in_order() {
        let mut w = Window::new(4, 3);
        w.handle_fetched(entries(1..=6));
        assert_eq!(publish_all(&mut w), vec![1, 2, 3, 4]);
        for pkid in 1..=4 {
            w.handle_sent(pkid, Instant::now());
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
        let mut w = Window::new(2, 3);
        w.handle_fetched(entries(1..=5));
        assert_eq!(publish_all(&mut w), vec![1, 2]);
        w.handle_sent(1, Instant::now());
        w.handle_sent(2, Instant::now());
        assert_eq!(w.handle_puback_refused(1, "x"), Some((1, Refused::Held)));
        assert_eq!(w.handle_puback_refused(7, "x"), None, "unknown packet id");
        assert_eq!((w.inflight(), w.held()), (1, 1));
        // The refused entry no longer takes a slot: the window moves on.
        assert_eq!(publish_all(&mut w), vec![3]);
        w.handle_sent(3, Instant::now());
        assert_eq!(w.handle_puback_refused(3, "x"), Some((3, Refused::Held)));
        assert_eq!(publish_all(&mut w), vec![4]);
        assert!(
            w.poll_acks().is_empty(),
            "refused entries are not delivered"
        );
        w.handle_retry();
        assert_eq!(w.held(), 0);
        w.handle_sent(4, Instant::now());
        w.handle_puback(2);
        w.handle_puback(4);
        assert_eq!(publish_all(&mut w), vec![1, 3]);
        assert_eq!(w.poll_acks(), vec![2, 4]);
    }

    #[test]
    fn a_disconnect_resends_refused_entries_too_in_order() {
        let mut w = Window::new(3, 3);
        w.handle_fetched(entries(1..=4));
        assert_eq!(publish_all(&mut w), vec![1, 2, 3]);
        for pkid in 1..=3 {
            w.handle_sent(pkid, Instant::now());
        }
        w.handle_puback_refused(2, "x");
        w.handle_disconnect();
        assert_eq!((w.inflight(), w.held()), (0, 0));
        assert_eq!(publish_all(&mut w), vec![1, 2, 3]);
    }

    #[test]
    fn an_entry_refused_quarantine_after_times_is_given_up_on_and_the_rest_flows() {
        let mut w = Window::new(2, 3);
        w.handle_fetched(entries(1..=4));
        let now = Instant::now();
        let mut pkid = 0;
        for round in 1..=3 {
            assert_eq!(w.poll_publish().map(|e| e.seq), Some(1), "round {round}");
            pkid += 1;
            w.handle_sent(pkid, now);
            let expect = if round < 3 {
                Refused::Held
            } else {
                Refused::GivenUp
            };
            assert_eq!(
                w.handle_puback_refused(pkid, "NotAuthorized"),
                Some((1, expect))
            );
            if round < 3 {
                assert!(w.poll_quarantine().is_empty(), "not yet after {round}");
                w.handle_retry();
            }
        }
        let given = w.poll_quarantine();
        assert_eq!(given.len(), 1);
        assert_eq!((given[0].seq, given[0].attempts), (1, 3));
        assert!(
            given[0].reason.contains("NotAuthorized"),
            "{}",
            given[0].reason
        );
        assert_eq!(w.held(), 0);
        w.handle_retry();
        // The others go out and are delivered; entry 1 is never sent again.
        assert_eq!(publish_all(&mut w), vec![2, 3]);
        w.handle_sent(10, now);
        w.handle_sent(11, now);
        w.handle_puback(10);
        w.handle_puback(11);
        assert_eq!(publish_all(&mut w), vec![4]);
        w.handle_disconnect();
        assert_eq!(publish_all(&mut w), vec![4]);
        assert_eq!(w.poll_acks(), vec![2, 3]);
    }

    #[test]
    fn connections_closed_right_after_one_entry_is_published_give_it_up_after_n_in_a_row() {
        let mut w = Window::new(8, 2);
        w.handle_fetched(entries(1..=5));
        let t0 = Instant::now();
        // 1 and 2 are acknowledged; 3 is the one the proxy closes on; 4 was written after it.
        assert_eq!(publish_all(&mut w), vec![1, 2, 3, 4, 5]);
        for pkid in 1..=4 {
            w.handle_sent(pkid, t0);
        }
        w.handle_puback(1);
        w.handle_puback(2);
        w.handle_connection_lost(t0);
        assert_eq!(w.suspects(), 2, "3 and 4 were written and not acknowledged");
        assert!(
            w.poll_quarantine().is_empty(),
            "several in flight: nobody to blame yet"
        );
        // Probing: one at a time.
        assert_eq!(publish_all(&mut w), vec![3]);
        w.handle_sent(1, t0);
        w.handle_connection_lost(t0 + Duration::from_millis(10));
        assert!(w.poll_quarantine().is_empty(), "one strike of two");
        assert_eq!(publish_all(&mut w), vec![3]);
        w.handle_sent(1, t0);
        w.handle_connection_lost(t0 + Duration::from_millis(20));
        let given = w.poll_quarantine();
        assert_eq!(
            given
                .iter()
                .map(|g| (g.seq, g.attempts))
                .collect::<Vec<_>>(),
            vec![(3, 2)]
        );
        assert!(
            given[0].reason.contains("closed the connection"),
            "{}",
            given[0].reason
        );
        // Next suspect, alone; acknowledged: the full window is back.
        assert_eq!(publish_all(&mut w), vec![4]);
        w.handle_sent(1, t0);
        assert_eq!(w.handle_puback(1), Some(4));
        assert_eq!(w.suspects(), 0);
        assert_eq!(publish_all(&mut w), vec![5]);
        assert_eq!(w.poll_acks(), vec![1, 2, 4]);
    }

    #[test]
    fn a_connection_lost_long_after_the_publish_or_before_it_is_written_is_no_strike() {
        let mut w = Window::new(4, 1);
        w.handle_fetched(entries(1..=2));
        let t0 = Instant::now();
        assert_eq!(publish_all(&mut w), vec![1, 2]);
        w.handle_sent(1, t0);
        w.handle_sent(2, t0);
        w.handle_connection_lost(t0);
        // Probing 1: lost at the keep-alive, long after it was written: a network failure.
        assert_eq!(publish_all(&mut w), vec![1]);
        w.handle_sent(1, t0);
        w.handle_connection_lost(t0 + CLOSE_AFTER_PUBLISH + Duration::from_secs(1));
        // Probing 1 again: lost before it was even written.
        assert_eq!(publish_all(&mut w), vec![1]);
        w.handle_connection_lost(t0);
        assert!(w.poll_quarantine().is_empty());
        assert_eq!(
            publish_all(&mut w),
            vec![1],
            "still there, still probed alone"
        );
    }

    #[test]
    fn already_fetched_entries_are_not_buffered_twice() {
        let mut w = Window::new(10, 3);
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
