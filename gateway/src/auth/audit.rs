//! The audit trail: decisions hand events to a bounded queue (never blocking; when it is full
//! the event is counted as dropped), and one thread owned by this module writes them to
//! `auth.db` in batches, rotating out the oldest beyond the configured count.
//!
//! Successful authentications are aggregated here, whoever calls: per client × remote
//! address × method and per interval ([`AGGREGATE_EVERY`]), the first success is written at
//! once (`count` 1) and the rest of that interval as one row at its end (`count` = how many
//! more, `at_ms` = the last of them). A plain-CoAP sensor authenticates with every message;
//! a row per message would make the audit writer one of the gateway's biggest costs.
//!
//! Failures from a source that authenticated recently (a sensor with a stale secret) are one
//! row each. Failures from any other source (what an attacker, spoofed or not, sends) are
//! summed the same way per method × outcome × remote × identity and interval; beyond
//! [`MAX_KEYS`] such keys in one interval they are summed per method × outcome with no remote
//! or identity. Management actions are one row each, with their own retention
//! (`Db::append_audit`). The sum of `count` over the rows is the number of decisions.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::warn;

use super::StoreError;
use super::store::{AuditEvent, Db, now_ms};

/// Events waiting to be written; beyond this they are dropped (and counted), never queued.
/// Counted by hand on an unbounded channel: std's bounded channel allocates and touches
/// every slot up front (4 096 × ~250 B, 1 MiB resident from the start), the unbounded one
/// takes memory in blocks of 31 events as they queue and gives it back as they are written.
const QUEUE: usize = 4096;
/// Most events written in one transaction.
const BATCH: usize = 512;
/// The interval over which successful authentications of one client × remote × method are
/// summed into one row (after the first, which is written at once).
pub const AGGREGATE_EVERY: Duration = Duration::from_secs(60);
/// Most client × remote × method keys aggregated per interval; successes beyond them are
/// written one row each (as before aggregation), so the map stays bounded.
pub const MAX_KEYS: usize = 4096;

/// Failures of one method × outcome × remote × identity (`None` beyond [`MAX_KEYS`]).
type FailureKey = (&'static str, &'static str, Option<IpAddr>, Option<String>);

/// Failures of one key in the current interval, after the first.
#[derive(Debug)]
struct FailTally {
    more: u64,
    last_ms: i64,
}

/// Successes of one key in the current interval, after the first.
#[derive(Debug)]
struct Tally {
    identity: String,
    more: u64,
    last_ms: i64,
}

/// client id → (method, remote) → tally: looked up with a borrowed client id, so a repeated
/// success allocates nothing.
type Tallies = HashMap<String, HashMap<(&'static str, Option<IpAddr>), Tally>>;

#[derive(Debug, Default)]
struct Aggregate {
    tallies: Tallies,
    keys: usize,
    failures: HashMap<FailureKey, FailTally>,
}

#[derive(Debug)]
pub struct Audit {
    tx: Option<Sender<AuditEvent>>,
    /// Events sent and not yet received by the writer (at most [`QUEUE`]).
    queued: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
    aggregate: Arc<Mutex<Aggregate>>,
}

impl Audit {
    /// Starts the writer on its own connection to `path` (already opened and migrated).
    pub fn start(path: &Path, keep: u64) -> Result<Audit, StoreError> {
        Self::start_every(path, keep, AGGREGATE_EVERY)
    }

    /// [`Audit::start`] with another aggregation interval.
    pub fn start_every(path: &Path, keep: u64, every: Duration) -> Result<Audit, StoreError> {
        let db = Db::attach(path)?;
        let (tx, rx) = channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&dropped);
        let rx = Queue {
            rx,
            queued: Arc::clone(&queued),
        };
        let aggregate = Arc::new(Mutex::new(Aggregate::default()));
        let tallies = Arc::clone(&aggregate);
        let thread = std::thread::Builder::new()
            .name("edgegw-audit".into())
            .spawn(move || write_loop(db, &rx, keep, &counter, &tallies, every))
            .map_err(|source| StoreError::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(Audit {
            tx: Some(tx),
            queued,
            thread: Some(thread),
            dropped,
            aggregate,
        })
    }

    /// A successful authentication: the first of its client × remote × method in this
    /// interval is queued as a row now; the others are counted into one row at the end of
    /// the interval.
    pub fn record_success(
        &self,
        method: &'static str,
        client_id: &str,
        identity: &str,
        remote: Option<IpAddr>,
    ) {
        let at_ms = now_ms();
        {
            let mut agg = self
                .aggregate
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let Aggregate { tallies, keys, .. } = &mut *agg;
            if let Some(t) = tallies
                .get_mut(client_id)
                .and_then(|per| per.get_mut(&(method, remote)))
            {
                t.more += 1;
                t.last_ms = at_ms;
                return;
            }
            if *keys < MAX_KEYS {
                *keys += 1;
                tallies.entry(client_id.to_owned()).or_default().insert(
                    (method, remote),
                    Tally {
                        identity: identity.to_owned(),
                        more: 0,
                        last_ms: at_ms,
                    },
                );
            }
        }
        self.record(AuditEvent {
            at_ms,
            method,
            identity: Some(identity.to_owned()),
            client_id: Some(client_id.to_owned()),
            remote: remote.map(|ip| ip.to_string()),
            outcome: "ok",
            count: 1,
            ..AuditEvent::default()
        });
    }

    /// A failed authentication from a source that has not authenticated recently: the first
    /// of its method × outcome × remote × identity in this interval is queued now, the others
    /// are summed into one row at the end of the interval.
    pub fn record_failure(&self, event: AuditEvent, remote: Option<IpAddr>) {
        {
            let mut agg = self
                .aggregate
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let failures = &mut agg.failures;
            let mut key = (event.method, event.outcome, remote, event.identity.clone());
            if !failures.contains_key(&key) && failures.len() >= MAX_KEYS {
                // A flood of distinct sources: one sum per method × outcome.
                key = (event.method, event.outcome, None, None);
                let t = failures.entry(key).or_insert(FailTally {
                    more: 0,
                    last_ms: event.at_ms,
                });
                t.more += 1;
                t.last_ms = event.at_ms;
                return;
            }
            if let Some(t) = failures.get_mut(&key) {
                t.more += 1;
                t.last_ms = event.at_ms;
                return;
            }
            failures.insert(
                key,
                FailTally {
                    more: 0,
                    last_ms: event.at_ms,
                },
            );
        }
        self.record(event);
    }

    /// Queues an event without waiting.
    pub fn record(&self, event: AuditEvent) {
        let Some(tx) = &self.tx else {
            return;
        };
        // Full: not sent. Sent to a writer that is gone: not queued either.
        if self.queued.fetch_add(1, Ordering::AcqRel) >= QUEUE || tx.send(event).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Audit {
    /// Flushes what is queued, then stops the writer.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// At most one "events dropped" warning per this interval.
const DROP_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The rows of an interval's aggregated successes (after the first of each key), and an
/// empty map for the next interval.
fn take_tallies(aggregate: &Mutex<Aggregate>) -> Vec<AuditEvent> {
    let (tallies, failures) = {
        let mut agg = aggregate.lock().unwrap_or_else(PoisonError::into_inner);
        agg.keys = 0;
        (
            std::mem::take(&mut agg.tallies),
            std::mem::take(&mut agg.failures),
        )
    };
    let mut rows = Vec::new();
    for ((method, outcome, remote, identity), t) in failures {
        if t.more > 0 {
            rows.push(AuditEvent {
                at_ms: t.last_ms,
                method,
                identity,
                remote: remote.map(|ip| ip.to_string()),
                outcome,
                count: t.more,
                ..AuditEvent::default()
            });
        }
    }
    for (client_id, per) in tallies {
        for ((method, remote), t) in per {
            if t.more > 0 {
                rows.push(AuditEvent {
                    at_ms: t.last_ms,
                    method,
                    identity: Some(t.identity),
                    client_id: Some(client_id.clone()),
                    remote: remote.map(|ip| ip.to_string()),
                    outcome: "ok",
                    count: t.more,
                    ..AuditEvent::default()
                });
            }
        }
    }
    rows.sort_by_key(|r| r.at_ms);
    rows
}

/// The writer's end of the queue: every event taken out of it is uncounted.
struct Queue {
    rx: Receiver<AuditEvent>,
    queued: Arc<AtomicUsize>,
}

impl Queue {
    fn recv_timeout(&self, wait: Duration) -> Result<AuditEvent, RecvTimeoutError> {
        let ev = self.rx.recv_timeout(wait)?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Ok(ev)
    }

    fn try_recv(&self) -> Option<AuditEvent> {
        let ev = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Some(ev)
    }
}

fn write_loop(
    mut db: Db,
    rx: &Queue,
    keep: u64,
    dropped: &AtomicU64,
    aggregate: &Mutex<Aggregate>,
    every: Duration,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut reported = 0;
    let mut last_warning: Option<std::time::Instant> = None;
    let mut interval_end = Instant::now() + every;
    let mut rotated = 0;
    loop {
        let wait = interval_end.saturating_duration_since(Instant::now());
        let open = match rx.recv_timeout(wait) {
            Ok(first) => {
                batch.push(first);
                true
            }
            Err(RecvTimeoutError::Timeout) => true,
            Err(RecvTimeoutError::Disconnected) => false,
        };
        while open && batch.len() < BATCH {
            match rx.try_recv() {
                Some(ev) => batch.push(ev),
                None => break,
            }
        }
        if !open || Instant::now() >= interval_end {
            batch.extend(take_tallies(aggregate));
            interval_end = Instant::now() + every;
        }
        if batch.is_empty() {
            if !open {
                break;
            }
            continue;
        }
        if let Err(e) = db.append_audit_from(&batch, keep, &mut rotated) {
            warn!(error = %e, events = batch.len(), "cannot write audit events; dropped");
        }
        batch.clear();
        let now_dropped = dropped.load(Ordering::Relaxed);
        if now_dropped > reported && last_warning.is_none_or(|t| t.elapsed() >= DROP_WARNING_EVERY)
        {
            warn!(
                dropped = now_dropped - reported,
                "audit queue full: events dropped (decisions were not delayed)"
            );
            reported = now_dropped;
            last_warning = Some(std::time::Instant::now());
        }
        if !open {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queue holds at most QUEUE events however fast they come and however slow the
    /// writer is; each one beyond is counted as dropped, and room taken out by the writer is
    /// room again.
    #[test]
    fn the_queue_is_bounded_and_counts_what_it_drops() {
        let (tx, rx) = channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let audit = Audit {
            tx: Some(tx),
            queued: Arc::clone(&queued),
            thread: None,
            dropped: Arc::new(AtomicU64::new(0)),
            aggregate: Arc::default(),
        };
        let writer = Queue { rx, queued };
        for _ in 0..QUEUE + 10 {
            audit.record(AuditEvent::default());
        }
        assert_eq!(audit.dropped(), 10);
        for _ in 0..5 {
            assert!(writer.try_recv().is_some());
        }
        for _ in 0..7 {
            audit.record(AuditEvent::default());
        }
        assert_eq!(audit.dropped(), 12);
        let mut left = 0;
        while writer.try_recv().is_some() {
            left += 1;
        }
        assert_eq!(left, QUEUE);
        assert!(writer.recv_timeout(Duration::from_millis(1)).is_err());
    }
}
