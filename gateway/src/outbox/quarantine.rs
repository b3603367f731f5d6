//! The quarantine's side of the outbox handle: messages the upstream refused, moved out of
//! the queue by the uplink, listed, queued again or dropped by an operator. The SQL is in
//! `store.rs`; the moves ride in the writer's group commits like acknowledgements.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::{Message, Outbox, OutboxError, Pending, store};

pub(super) type QuarantineReply = oneshot::Sender<Result<u64, QuarantineError>>;

/// An entry the upstream refused, kept in the quarantine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Its sequence number while it was queued (the quarantine's id for it).
    pub seq: u64,
    pub message: Message,
    /// Why the uplink gave up on it (the broker's reason code, or the closed connection).
    pub reason: String,
    /// How many times it was refused before it was moved.
    pub attempts: u32,
    pub quarantined_at_ms: u64,
}

/// Why a quarantine operation did nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuarantineError {
    #[error("no quarantined message {0}")]
    NotFound(u64),
    #[error("outbox closed (shutting down)")]
    Closed,
    #[error("outbox storage failed: {0}")]
    Storage(String),
}

impl Outbox {
    /// Moves a queued entry into the quarantine in the next group commit (nothing happens if
    /// it was acknowledged or expired meanwhile). The uplink no longer sends it.
    pub fn quarantine(&self, seq: u64, reason: String, attempts: u32) {
        let mut pending = self.lock();
        pending.quarantine.push(store::ToQuarantine {
            seq,
            reason,
            attempts,
        });
        drop(pending);
        self.shared.wake.notify_one();
    }

    /// Queues a quarantined entry again, at the end of the queue; resolves with its new
    /// sequence number once that is durable.
    pub fn requeue(&self, seq: u64) -> QuarantineReceipt {
        self.quarantine_op(seq, |p| &mut p.requeue)
    }

    /// Deletes a quarantined entry (an operator's decision; counted in `discarded_total`).
    pub fn discard(&self, seq: u64) -> QuarantineReceipt {
        self.quarantine_op(seq, |p| &mut p.discard)
    }

    fn quarantine_op(
        &self,
        seq: u64,
        queue: impl FnOnce(&mut Pending) -> &mut Vec<(u64, QuarantineReply)>,
    ) -> QuarantineReceipt {
        let (tx, rx) = oneshot::channel();
        let mut pending = self.lock();
        if pending.closing {
            let _ = tx.send(Err(QuarantineError::Closed));
        } else {
            queue(&mut pending).push((seq, tx));
        }
        drop(pending);
        self.shared.wake.notify_one();
        QuarantineReceipt { rx }
    }

    /// Up to `limit` quarantined entries after `after`, oldest first (blocking: call from a
    /// blocking thread).
    pub fn quarantined(&self, after: u64, limit: usize) -> Result<Vec<Quarantined>, OutboxError> {
        let reader = self
            .reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        reader.quarantined(after, limit)
    }
}

/// Resolves once a quarantine operation is durable: the new sequence number of a re-queued
/// entry, the id of a dropped one.
#[derive(Debug)]
pub struct QuarantineReceipt {
    rx: oneshot::Receiver<Result<u64, QuarantineError>>,
}

impl Future for QuarantineReceipt {
    type Output = Result<u64, QuarantineError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(QuarantineError::Closed)))
    }
}

/// The JSON of a quarantined entry (control socket, API, `edgegw quarantine list --json`).
/// The payload is shown as text (invalid UTF-8 replaced), at most [`PAYLOAD_SHOWN`] bytes of it.
impl serde::Serialize for Quarantined {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let m = &self.message;
        let shown = &m.payload[..m.payload.len().min(PAYLOAD_SHOWN)];
        let received_ms = m
            .received_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut st = s.serialize_struct("Quarantined", 12)?;
        st.serialize_field("id", &self.seq)?;
        st.serialize_field("channel_id", &m.channel_id)?;
        st.serialize_field("domain_id", &m.domain_id)?;
        st.serialize_field("client_id", &m.client_id)?;
        st.serialize_field("subtopic", &m.subtopic)?;
        st.serialize_field("content_format", &m.content_format)?;
        st.serialize_field("payload", &String::from_utf8_lossy(shown))?;
        st.serialize_field("payload_size", &m.payload.len())?;
        st.serialize_field("received_at_ms", &received_ms)?;
        st.serialize_field("quarantined_at_ms", &self.quarantined_at_ms)?;
        st.serialize_field("reason", &self.reason)?;
        st.serialize_field("attempts", &self.attempts)?;
        st.end()
    }
}

/// Payload bytes shown in a listing.
pub const PAYLOAD_SHOWN: usize = 256;

/// At most this many entries in one listing.
pub const LIST_MAX: usize = 1000;
