//! The uplink's command subscriptions, sans-IO: which filters are wanted, subscribed, in
//! flight, and refused by the upstream. SuperMQ's proxy closes an MQTT 3.1.1 connection on a
//! SUBSCRIBE it does not authorize (mgate `pkg/session/stream.go`) — the gateway's client is
//! not connected to that channel upstream — so filters go out **one at a time**, each waiting
//! for its SUBACK, and nothing is published meanwhile: a connection lost while a SUBSCRIBE is
//! in flight is that filter's strike (not the messages'), and after `quarantine_after` strikes
//! in a row, or one SUBACK failure (MQTT 5 / brokers that answer), the filter is refused: not
//! asked for again until [`Subscriptions::handle_reload`] (SIGHUP). No sockets, no clock.

use std::collections::{BTreeSet, HashMap, VecDeque};

/// Why a filter is no longer asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedFilter {
    pub filter: String,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Subscriptions {
    quarantine_after: u32,
    wanted: BTreeSet<String>,
    subscribed: BTreeSet<String>,
    pending: VecDeque<String>,
    in_flight: Option<String>,
    strikes: HashMap<String, u32>,
    refused: BTreeSet<String>,
}

impl Subscriptions {
    pub fn new(quarantine_after: u32) -> Self {
        Self {
            quarantine_after: quarantine_after.max(1),
            ..Self::default()
        }
    }

    /// The filters wanted now; returns the subscribed ones no longer wanted (to unsubscribe).
    pub fn handle_wanted(&mut self, wanted: BTreeSet<String>) -> Vec<String> {
        let gone: Vec<String> = self.subscribed.difference(&wanted).cloned().collect();
        for g in &gone {
            self.subscribed.remove(g);
        }
        self.wanted = wanted;
        self.requeue();
        gone
    }

    fn requeue(&mut self) {
        self.pending = self
            .wanted
            .iter()
            .filter(|f| {
                !self.subscribed.contains(*f)
                    && !self.refused.contains(*f)
                    && self.in_flight.as_ref() != Some(*f)
            })
            .cloned()
            .collect();
    }

    /// The next filter to SUBSCRIBE, if none is in flight (it is in flight from now on).
    pub fn poll_subscribe(&mut self) -> Option<String> {
        if self.in_flight.is_some() {
            return None;
        }
        let f = self.pending.pop_front()?;
        self.in_flight = Some(f.clone());
        Some(f)
    }

    /// The client could not take the request: it goes out later.
    pub fn handle_not_sent(&mut self) {
        if let Some(f) = self.in_flight.take() {
            self.pending.push_front(f);
        }
    }

    /// A SUBSCRIBE is waiting for its SUBACK: nothing else goes out meanwhile.
    pub fn busy(&self) -> bool {
        self.in_flight.is_some()
    }

    /// SUBACK for the filter in flight; `Some` when it was refused.
    /// The filter whose SUBACK is awaited, if any.
    pub fn in_flight(&self) -> Option<&str> {
        self.in_flight.as_deref()
    }

    pub fn handle_suback(&mut self, ok: bool, reason: &str) -> Option<RefusedFilter> {
        let f = self.in_flight.take()?;
        self.strikes.remove(&f);
        if ok {
            self.subscribed.insert(f);
            return None;
        }
        self.refused.insert(f.clone());
        Some(RefusedFilter {
            filter: f,
            reason: format!("SUBACK {reason}"),
        })
    }

    /// The connection was lost. `true` if a SUBSCRIBE was in flight (the loss is its strike;
    /// a refusal once it has `quarantine_after` of them, in `refused`).
    pub fn handle_connection_lost(&mut self) -> (bool, Option<RefusedFilter>) {
        let Some(f) = self.in_flight.take() else {
            self.handle_disconnect();
            return (false, None);
        };
        let n = self.strikes.entry(f.clone()).or_default();
        *n += 1;
        let refused = (*n >= self.quarantine_after).then(|| {
            self.strikes.remove(&f);
            self.refused.insert(f.clone());
            RefusedFilter {
                reason: format!(
                    "the upstream closed the connection right after it was asked for, {} times in a row",
                    self.quarantine_after
                ),
                filter: f,
            }
        });
        self.handle_disconnect();
        (true, refused)
    }

    /// A new connection: nothing is subscribed on it yet.
    pub fn handle_disconnect(&mut self) {
        self.in_flight = None;
        self.subscribed.clear();
        self.requeue();
    }

    /// SIGHUP: refused filters are asked for again.
    pub fn handle_reload(&mut self) {
        self.refused.clear();
        self.strikes.clear();
        self.requeue();
    }

    pub fn refused(&self) -> usize {
        self.refused.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn filters_go_out_one_at_a_time_and_a_refused_one_is_not_asked_for_again() {
        let mut s = Subscriptions::new(2);
        assert!(s.handle_wanted(set(&["a", "b"])).is_empty());
        assert_eq!(s.poll_subscribe().as_deref(), Some("a"));
        assert!(s.busy());
        assert_eq!(s.poll_subscribe(), None, "one at a time");
        assert_eq!(s.handle_suback(true, ""), None);
        assert_eq!(s.poll_subscribe().as_deref(), Some("b"));
        // Closed right after asking for b, twice: b is refused, a is asked for again.
        assert_eq!(s.handle_connection_lost(), (true, None));
        assert_eq!(s.poll_subscribe().as_deref(), Some("a"));
        s.handle_suback(true, "");
        assert_eq!(s.poll_subscribe().as_deref(), Some("b"));
        let (blamed, refused) = s.handle_connection_lost();
        assert!(blamed);
        assert_eq!(refused.map(|r| r.filter).as_deref(), Some("b"));
        assert_eq!(s.poll_subscribe().as_deref(), Some("a"));
        s.handle_suback(true, "");
        assert_eq!(s.poll_subscribe(), None, "b is refused");
        assert!(!s.busy());
        // A loss with nothing in flight blames no filter.
        assert_eq!(s.handle_connection_lost(), (false, None));
        // SIGHUP: b is asked for again; a SUBACK failure refuses at once.
        s.handle_reload();
        assert_eq!(s.poll_subscribe().as_deref(), Some("a"));
        s.handle_suback(true, "");
        assert_eq!(s.poll_subscribe().as_deref(), Some("b"));
        assert!(s.handle_suback(false, "NotAuthorized").is_some());
        assert_eq!(s.refused(), 1);
        // No longer wanted: unsubscribed.
        assert_eq!(s.handle_wanted(set(&["b"])), vec!["a".to_owned()]);
    }
}
