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
        let thread = std::thread::Builder::new()
            .name("edgegw-audit".into())
            .spawn(move || write_loop(db, &rx, keep))
            .map_err(|source| AuthError::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(Audit {
            tx: Some(tx),
            thread: Some(thread),
            dropped: Arc::new(AtomicU64::new(0)),
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

fn write_loop(mut db: Db, rx: &Receiver<AuditEvent>, keep: u64) {
    let mut batch = Vec::with_capacity(BATCH);
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
    }
}
