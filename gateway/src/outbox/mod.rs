//! The outbox: every accepted message is written durably to `outbox.db` (SQLite, WAL) before
//! its [`Receipt`] resolves, and deleted only once the uplink reports its PUBACK.
//!
//! One writer thread owns the write connection and does group commit: everything that arrived
//! while the previous transaction was committing goes into the next one, so one fsync covers
//! many messages. Admission (full → busy or drop oldest) is the pure [`policy`]. What a commit
//! made durable is also handed to the uplink from memory (a bounded feed,
//! [`Outbox::take_fed`]), so the steady state never reads back what was just written; the
//! uplink reads the database with its own connection only for a backlog (after a restart, an
//! outage, a feed that overflowed: [`Outbox::fetch_backlog`]). It reports acknowledgements with
//! [`Outbox::ack`]; they are deleted in the next group commit. This module never talks MQTT.
//!
//! A message the upstream keeps refusing is moved by the uplink into the **quarantine**
//! ([`Outbox::quarantine`]): a table of the same database, kept durable under the entry's
//! sequence number with the reason and the number of attempts, never expired and never
//! dropped to make room. An operator lists it ([`Outbox::quarantined`]), queues an entry again
//! (at the end of the queue, under a new sequence number: [`Outbox::requeue`]) or drops it
//! ([`Outbox::discard`], counted).

mod error;
mod feed;
pub mod policy;
pub mod quarantine;
mod store;
mod writer;

use crate::runtime::watchdog::Heartbeat;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::config::OutboxConfig;
use error::commit_refusal;
pub use error::{DISK_FULL_RETRY_AFTER, IngestError, OutboxError};
#[cfg(test)]
use feed::FEED_MAX_ENTRIES;
use feed::Feed;
use policy::{Admission, Limits, Load};
use quarantine::QuarantineReply;
pub use quarantine::{QuarantineError, QuarantineReceipt, Quarantined};

/// One message from a sensor, as the adapters hand it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub client_id: String,
    pub channel_id: String,
    pub domain_id: String,
    /// Validated with [`crate::topic::validate_subtopic`]; may be empty.
    pub subtopic: String,
    pub content_format: Option<String>,
    pub payload: Bytes,
    pub received_at: SystemTime,
}

impl Message {
    /// Bytes this message counts for against `outbox.max_bytes`.
    pub fn weight(&self) -> u64 {
        (self.payload.len()
            + self.client_id.len()
            + self.channel_id.len()
            + self.domain_id.len()
            + self.subtopic.len()
            + self.content_format.as_ref().map_or(0, String::len)) as u64
    }
}

/// A stored message and its sequence number (strictly increasing, never reused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub message: Message,
}

/// Counters and gauges of the outbox (status, metrics).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct OutboxStats {
    pub queued: u64,
    pub queued_bytes: u64,
    /// Receive time of the oldest queued message, milliseconds since the epoch (0: empty).
    pub oldest_received_ms: u64,
    pub accepted_total: u64,
    pub acked_total: u64,
    pub dropped_total: u64,
    pub expired_total: u64,
    pub commits_total: u64,
    /// Highest committed sequence number.
    pub last_seq: u64,
    /// Messages in the quarantine now, and their bytes.
    pub quarantined: u64,
    pub quarantined_bytes: u64,
    /// Messages moved into the quarantine, queued again from it, and dropped from it by an
    /// operator, since start.
    pub quarantined_total: u64,
    pub requeued_total: u64,
    pub discarded_total: u64,
}

#[derive(Debug, Default)]
struct Counters {
    queued: AtomicU64,
    queued_bytes: AtomicU64,
    oldest_received_ms: AtomicU64,
    accepted_total: AtomicU64,
    acked_total: AtomicU64,
    dropped_total: AtomicU64,
    expired_total: AtomicU64,
    commits_total: AtomicU64,
    last_seq: AtomicU64,
    quarantined: AtomicU64,
    quarantined_bytes: AtomicU64,
    quarantined_total: AtomicU64,
    requeued_total: AtomicU64,
    discarded_total: AtomicU64,
}

type Reply = oneshot::Sender<Result<u64, IngestError>>;

#[derive(Debug, Default)]
struct Pending {
    appends: Vec<(Message, u64, Reply)>,
    acks: Vec<u64>,
    quarantine: Vec<store::ToQuarantine>,
    requeue: Vec<(u64, QuarantineReply)>,
    discard: Vec<(u64, QuarantineReply)>,
    bytes: u64,
    /// Bytes of the batch being committed right now (not yet in the stored counter).
    committing_bytes: u64,
    closing: bool,
}

/// What the uplink gets from [`Outbox::take_fed`] or [`Outbox::fetch_backlog`]: entries in
/// sequence order, and the sequence number up to which it has now seen everything committed
/// (entries, or numbers no longer queued).
#[derive(Debug, Default)]
pub struct Fetched {
    pub entries: Vec<Entry>,
    pub through: u64,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    feed: Mutex<Feed>,
    wake: Condvar,
    counters: Counters,
    committed: watch::Sender<u64>,
    limits: Limits,
    max_age: Duration,
    /// The writer thread beats this on every wake-up (see [`Outbox::watch_progress`]).
    heartbeat: Mutex<Option<Heartbeat>>,
    beat_every_ms: AtomicU64,
}

impl Shared {
    fn beat(&self) {
        if let Some(heartbeat) = self
            .heartbeat
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            heartbeat.beat();
        }
    }
}

/// Handle to the outbox: cheap to clone, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
    reader: Arc<Mutex<store::Reader>>,
}

/// The writer thread. [`OutboxWorker::join`] after [`Outbox::close`] waits until every
/// pending write is committed.
#[derive(Debug)]
pub struct OutboxWorker {
    thread: std::thread::JoinHandle<()>,
}

impl OutboxWorker {
    /// Waits for the writer thread to finish (blocking).
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("outbox writer thread panicked");
        }
    }
}

/// Resolves once the message is durable, with its sequence number.
#[derive(Debug)]
pub struct Receipt {
    rx: oneshot::Receiver<Result<u64, IngestError>>,
}

impl Future for Receipt {
    type Output = Result<u64, IngestError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(IngestError::Closed)))
    }
}

impl Outbox {
    /// Registers the writer thread with the progress watchdog: it beats `heartbeat` on every
    /// wake-up and wakes at least every `every`, so a writer stuck in a commit (a hung disk)
    /// stops systemd's watchdog pings.
    pub fn watch_progress(&self, heartbeat: Heartbeat, every: Duration) {
        heartbeat.beat();
        *self
            .shared
            .heartbeat
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(heartbeat);
        let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
        self.shared.beat_every_ms.store(ms, Ordering::Relaxed);
        self.shared.wake.notify_one();
    }

    /// Opens (or creates) the outbox at `path` and starts its writer thread. A corrupt file is
    /// refused ([`OutboxError::Corrupt`]), never replaced.
    pub fn open(path: &Path, config: &OutboxConfig) -> Result<(Outbox, OutboxWorker), OutboxError> {
        let (writer, initial) = store::Writer::open(path, config.durability)?;
        let reader = store::Reader::open(path)?;
        let counters = Counters::default();
        counters.queued.store(initial.queued, Ordering::Relaxed);
        counters
            .queued_bytes
            .store(initial.queued_bytes, Ordering::Relaxed);
        counters
            .oldest_received_ms
            .store(initial.oldest_received_ms, Ordering::Relaxed);
        counters.last_seq.store(initial.last_seq, Ordering::Relaxed);
        counters
            .quarantined
            .store(initial.quarantined, Ordering::Relaxed);
        counters
            .quarantined_bytes
            .store(initial.quarantined_bytes, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            feed: Mutex::new(Feed::new(initial.last_seq)),
            wake: Condvar::new(),
            counters,
            committed: watch::Sender::new(initial.last_seq),
            limits: Limits {
                max_bytes: config.max_bytes.0,
                max_message_size: usize::try_from(config.max_message_size.0).unwrap_or(usize::MAX),
                full_policy: config.full_policy,
            },
            max_age: config.max_age.get(),
            heartbeat: Mutex::new(None),
            beat_every_ms: AtomicU64::new(u64::MAX),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || writer::writer_loop(writer, &thread_shared))
            .map_err(OutboxError::Thread)?;
        Ok((
            Outbox {
                shared,
                reader: Arc::new(Mutex::new(reader)),
            },
            OutboxWorker { thread },
        ))
    }

    /// Enqueues a message. The [`Receipt`] resolves once it is durable (after the group
    /// commit that contains it).
    pub fn accept(&self, msg: Message) -> Result<Receipt, IngestError> {
        let weight = msg.weight();
        let mut pending = self.lock();
        if pending.closing {
            return Err(IngestError::Closed);
        }
        // The quarantine is in the same file and counts against outbox.max_bytes.
        let c = &self.shared.counters;
        let load = Load {
            stored_bytes: c.queued_bytes.load(Ordering::Relaxed)
                + c.quarantined_bytes.load(Ordering::Relaxed),
            pending_bytes: pending.bytes + pending.committing_bytes,
            pending_count: pending.appends.len(),
        };
        match policy::admit(&self.shared.limits, &load, msg.payload.len(), weight) {
            Admission::Accept => {}
            Admission::Busy { retry_after } => return Err(IngestError::Busy { retry_after }),
            Admission::TooLarge { max } => return Err(IngestError::TooLarge { max }),
        }
        let (tx, rx) = oneshot::channel();
        // The writer waits only while nothing is pending (checked under this lock), so only
        // the append that makes the queue non-empty has to wake it. A condvar notify is a
        // futex system call even with nobody waiting: not one per message.
        let wake = pending.appends.is_empty();
        pending.appends.push((msg, weight, tx));
        pending.bytes += weight;
        drop(pending);
        if wake {
            self.shared.wake.notify_one();
        }
        Ok(Receipt { rx })
    }

    /// Marks entries as delivered (PUBACK received): deleted in the next group commit.
    pub fn ack(&self, seqs: &[u64]) {
        if seqs.is_empty() {
            return;
        }
        let mut pending = self.lock();
        // Deleting delivered entries is not urgent: they ride along with the next commit of
        // new messages. Only acks arriving when nothing else is pending wake the writer (one
        // wake-up, not one per PUBACK).
        let wake = pending.acks.is_empty() && pending.appends.is_empty();
        pending.acks.extend_from_slice(seqs);
        drop(pending);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Up to `limit` entries with a sequence number above `after`, in order (blocking: call
    /// from a blocking thread).
    pub fn fetch_after(&self, after: u64, limit: usize) -> Result<Vec<Entry>, OutboxError> {
        let reader = self
            .reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        reader.fetch_after(after, limit)
    }

    /// The next entries after `after` (at most `limit`) from what the writer just made
    /// durable, without touching the database; `None` when the feed does not hold everything
    /// after `after` (a backlog: use [`Outbox::fetch_backlog`]). Entries taken are the
    /// caller's: the feed hands each out once.
    pub fn take_fed(&self, after: u64, limit: usize) -> Option<Fetched> {
        self.shared
            .feed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(after, limit)
    }

    /// Up to `limit` entries after `after` from the database (blocking: call from a blocking
    /// thread), and how far that covers what was committed when the read began.
    pub fn fetch_backlog(&self, after: u64, limit: usize) -> Result<Fetched, OutboxError> {
        // Everything committed up to here is visible to the read that follows.
        let committed = self.shared.counters.last_seq.load(Ordering::Acquire);
        let entries = self.fetch_after(after, limit)?;
        let through = match entries.last() {
            Some(e) if entries.len() >= limit => e.seq,
            Some(e) => e.seq.max(committed),
            None => after.max(committed),
        };
        Ok(Fetched { entries, through })
    }

    /// The highest committed sequence number; changes after every commit that added entries.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.shared.committed.subscribe()
    }

    pub fn stats(&self) -> OutboxStats {
        let c = &self.shared.counters;
        OutboxStats {
            queued: c.queued.load(Ordering::Relaxed),
            queued_bytes: c.queued_bytes.load(Ordering::Relaxed),
            oldest_received_ms: c.oldest_received_ms.load(Ordering::Relaxed),
            accepted_total: c.accepted_total.load(Ordering::Relaxed),
            acked_total: c.acked_total.load(Ordering::Relaxed),
            dropped_total: c.dropped_total.load(Ordering::Relaxed),
            expired_total: c.expired_total.load(Ordering::Relaxed),
            commits_total: c.commits_total.load(Ordering::Relaxed),
            last_seq: c.last_seq.load(Ordering::Relaxed),
            quarantined: c.quarantined.load(Ordering::Relaxed),
            quarantined_bytes: c.quarantined_bytes.load(Ordering::Relaxed),
            quarantined_total: c.quarantined_total.load(Ordering::Relaxed),
            requeued_total: c.requeued_total.load(Ordering::Relaxed),
            discarded_total: c.discarded_total.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting; the writer commits what is pending (acks included) and exits.
    pub fn close(&self) {
        self.lock().closing = true;
        self.shared.wake.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The outbox file inside the state directory.
pub fn default_path(state_dir: &Path) -> PathBuf {
    state_dir.join("outbox.db")
}

#[cfg(test)]
mod tests;
