//! The audit trail: decisions hand events to a bounded queue (never blocking; when it is full
//! the event is counted as dropped), and one thread owned by this module writes them to
//! `auth.db` in batches, rotating out the oldest beyond the configured count.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use tracing::warn;

use super::AuthError;
use super::store::{AuditEvent, Db};

/// Events waiting to be written; beyond this they are dropped (and counted), never queued.
const QUEUE: usize = 4096;
/// Most events written in one transaction.
const BATCH: usize = 512;

#[derive(Debug)]
pub struct Audit {
    tx: Option<SyncSender<AuditEvent>>,
    thread: Option<JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
}

impl Audit {
    /// Starts the writer on its own connection to `path` (already opened and migrated).
    pub fn start(path: &Path, keep: u64) -> Result<Audit, AuthError> {
        let db = Db::attach(path)?;
        let (tx, rx) = sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&dropped);
        let thread = std::thread::Builder::new()
            .name("edgegw-audit".into())
            .spawn(move || write_loop(db, &rx, keep, &counter))
            .map_err(|source| AuthError::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(Audit {
            tx: Some(tx),
            thread: Some(thread),
            dropped,
        })
    }

    /// Queues an event without waiting.
    pub fn record(&self, event: AuditEvent) {
        if let Some(tx) = &self.tx {
            match tx.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
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

fn write_loop(mut db: Db, rx: &Receiver<AuditEvent>, keep: u64, dropped: &AtomicU64) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut reported = 0;
    let mut last_warning: Option<std::time::Instant> = None;
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        if let Err(e) = db.append_audit(&batch, keep) {
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
    }
}
