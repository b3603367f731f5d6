//! The HTTP server's connection slots (`http.max_connections`), issue 20.12: when every slot
//! is taken, a new connection is admitted by closing one that is doing nothing, so idle
//! connections (from any number of addresses) cannot keep a real client out until their
//! header timeout.
//!
//! Each open connection is in one [`State`]. The one closed to make room is, first, the
//! connection that has been open longest without a complete request header (never served: it
//! is cut at once, TLS handshake included); failing that, the one that has waited longest for
//! its next request after an answer (closed gracefully: hyper closes it only while it is idle,
//! otherwise after the message in progress). A connection in the middle of a request is never
//! closed to make room: when every connection is, the new one waits for a slot as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What an open connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No complete request header yet (or still in its TLS handshake).
    Fresh,
    /// A request is being handled.
    Busy,
    /// Answered; waiting for its next request.
    Idle,
    /// Chosen to make room, never sent a complete header: cut at once.
    Cut,
    /// Chosen to make room while idle after an answer: closing gracefully (a request that
    /// hyper had already begun to read is still answered, then the connection closes).
    Closing,
}

#[derive(Debug)]
struct Entry {
    state: State,
    /// When it opened (`Fresh`) or last answered (`Idle`).
    since: Instant,
    /// Cut at once (a `Fresh` connection).
    cut: CancellationToken,
    /// Close gracefully (an `Idle` connection).
    close: CancellationToken,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Entry>,
    /// Entries in `Cut` or `Closing`: already counted as gone when deciding whether to close
    /// another.
    closing: usize,
}

/// The slots of one listener.
#[derive(Debug)]
pub(super) struct Conns {
    max: usize,
    table: Mutex<Table>,
    /// A slot was given back, or a connection became closable.
    changed: Notify,
}

/// One connection's slot, given back when the last handle is dropped.
#[derive(Debug)]
pub(super) struct Slot {
    conns: Arc<Conns>,
    id: u64,
    /// Cancelled when the connection must be cut at once.
    pub(super) cut: CancellationToken,
    /// Cancelled when the connection must close gracefully.
    pub(super) close: CancellationToken,
}

impl Conns {
    pub(super) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            table: Mutex::new(Table::default()),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a slot: at once while one is free; when all are taken, closes the most idle
    /// connection (see the module docs) and takes its slot once it is gone; when every
    /// connection is in a request, waits until one ends or becomes idle.
    pub(super) async fn admit(self: &Arc<Self>) -> Slot {
        loop {
            let changed = self.changed.notified();
            if let Some(slot) = self.try_admit(Instant::now()) {
                return slot;
            }
            changed.await;
        }
    }

    /// A slot now, or `None` (having started to close a connection when one is closable).
    fn try_admit(self: &Arc<Self>, now: Instant) -> Option<Slot> {
        let mut t = self.lock();
        if t.open.len() < self.max {
            let id = t.next_id;
            t.next_id += 1;
            let (cut, close) = (CancellationToken::new(), CancellationToken::new());
            t.open.insert(
                id,
                Entry {
                    state: State::Fresh,
                    since: now,
                    cut: cut.clone(),
                    close: close.clone(),
                },
            );
            return Some(Slot {
                conns: Arc::clone(self),
                id,
                cut,
                close,
            });
        }
        if t.open.len() - t.closing >= self.max {
            // Nobody is on the way out yet: close the most idle connection, if any.
            let victim = t
                .open
                .iter()
                .filter(|(_, e)| matches!(e.state, State::Fresh | State::Idle))
                .min_by_key(|(id, e)| (e.state != State::Fresh, e.since, **id))
                .map(|(id, _)| *id);
            if let Some(id) = victim {
                t.closing += 1;
                if let Some(e) = t.open.get_mut(&id) {
                    if e.state == State::Fresh {
                        e.state = State::Cut;
                        e.cut.cancel();
                    } else {
                        e.state = State::Closing;
                        e.close.cancel();
                    }
                }
            }
        }
        None
    }

    /// Moves `id` from one of `from` to `to`; the state it was in (`None`: gone).
    fn set(&self, id: u64, from: &[State], to: State, now: Instant) -> Option<State> {
        let mut t = self.lock();
        let e = t.open.get_mut(&id)?;
        let was = e.state;
        if from.contains(&was) {
            e.state = to;
            e.since = now;
        }
        Some(was)
    }

    #[cfg(test)]
    fn states(&self) -> Vec<(u64, State)> {
        let mut v: Vec<_> = self
            .lock()
            .open
            .iter()
            .map(|(i, e)| (*i, e.state))
            .collect();
        v.sort_unstable_by_key(|(i, _)| *i);
        v
    }
}

impl Slot {
    /// A complete request header arrived: the connection is busy (never closed to make room
    /// until answered). False when it was chosen to be cut just before (it is ending).
    pub(super) fn begin_request(&self) -> bool {
        let was = self.conns.set(
            self.id,
            &[State::Fresh, State::Idle],
            State::Busy,
            Instant::now(),
        );
        was != Some(State::Cut)
    }

    /// The request was answered: the connection waits for its next one (closable).
    pub(super) fn end_request(&self) {
        let was = self
            .conns
            .set(self.id, &[State::Busy], State::Idle, Instant::now());
        if was == Some(State::Busy) {
            self.conns.changed.notify_waiters();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut t = self.conns.lock();
            if let Some(e) = t.open.remove(&self.id)
                && matches!(e.state, State::Cut | State::Closing)
            {
                t.closing -= 1;
            }
        }
        self.conns.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_full_table_closes_the_oldest_fresh_then_the_oldest_idle_never_a_busy_one() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let conns = Arc::new(Conns::new(3));
        let a = conns.try_admit(at(0)).unwrap();
        let b = conns.try_admit(at(1)).unwrap();
        let c = conns.try_admit(at(2)).unwrap();
        // a is in a request, b answered one and waits (idle), c never sent a header.
        assert!(a.begin_request());
        assert!(b.begin_request());
        b.end_request();
        assert!(conns.try_admit(at(3)).is_none());
        assert!(c.cut.is_cancelled(), "the fresh connection is cut first");
        assert!(!b.close.is_cancelled() && !a.cut.is_cancelled() && !a.close.is_cancelled());
        // Asking again while c is on its way out closes nothing more.
        assert!(conns.try_admit(at(4)).is_none());
        assert!(!b.close.is_cancelled());
        // A header that arrives after the choice does not save it.
        assert!(!c.begin_request());
        drop(c);
        let d = conns.try_admit(at(5)).unwrap();
        assert!(d.begin_request());
        // Full again, no fresh connection: the idle one closes (gracefully); a request it
        // had begun to read by then is still answered.
        assert!(conns.try_admit(at(6)).is_none());
        assert!(b.close.is_cancelled() && !b.cut.is_cancelled());
        assert!(b.begin_request());
        b.end_request();
        assert!(conns.try_admit(at(6)).is_none());
        assert!(
            !d.close.is_cancelled(),
            "closed a second one for one newcomer"
        );
        drop(b);
        let e = conns.try_admit(at(7)).unwrap();
        assert!(e.begin_request());
        // Every connection in a request: nothing is closed, the newcomer waits.
        assert!(conns.try_admit(at(8)).is_none());
        for s in [&a, &d, &e] {
            assert!(!s.cut.is_cancelled() && !s.close.is_cancelled());
        }
        assert!(conns.states().iter().all(|(_, s)| *s == State::Busy));
        a.end_request();
        assert!(conns.try_admit(at(9)).is_none());
        assert!(a.close.is_cancelled());
    }

    #[test]
    fn among_fresh_connections_the_longest_open_goes_first() {
        let t0 = Instant::now();
        let conns = Arc::new(Conns::new(4));
        let slots: Vec<Slot> = (0..4)
            .map(|i| conns.try_admit(t0 + Duration::from_millis(i)).unwrap())
            .collect();
        assert!(conns.try_admit(t0 + Duration::from_millis(10)).is_none());
        let cut: Vec<bool> = slots.iter().map(|s| s.cut.is_cancelled()).collect();
        assert_eq!(cut, [true, false, false, false]);
    }

    #[tokio::test]
    async fn admit_waits_for_the_closed_connection_to_give_its_slot_back() {
        let conns = Arc::new(Conns::new(1));
        let idle = conns.admit().await;
        let waiter = tokio::spawn({
            let conns = Arc::clone(&conns);
            async move { conns.admit().await.id }
        });
        idle.cut.cancelled().await;
        assert!(!waiter.is_finished());
        drop(idle);
        assert_eq!(waiter.await.unwrap(), 1);
    }
}
