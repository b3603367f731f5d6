//! The outbox writer thread: waits for work, runs one group commit (appends, acks, expiry,
//! quarantine moves) and then tells everyone what it made durable: counters, the uplink's
//! feed, the receipts.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::{
    DISK_FULL_RETRY_AFTER, Entry, IngestError, QuarantineError, Shared, commit_refusal, store,
};

/// How often expired entries are looked for when nothing else happens.
const EXPIRY_EVERY: Duration = Duration::from_secs(1);

pub(super) fn writer_loop(mut writer: store::Writer, shared: &Shared) {
    let mut last_expiry = std::time::Instant::now();
    // A full disk is logged once per episode (at its start and end), not per refused batch.
    let mut disk_full = false;
    loop {
        let (appends, acks, quarantine, requeue, discard, closing) = {
            let mut pending = shared
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            while pending.appends.is_empty()
                && pending.acks.is_empty()
                && pending.quarantine.is_empty()
                && pending.requeue.is_empty()
                && pending.discard.is_empty()
                && !pending.closing
                && last_expiry.elapsed() < EXPIRY_EVERY
            {
                let beat_every =
                    Duration::from_millis(shared.beat_every_ms.load(Ordering::Relaxed));
                pending = shared
                    .wake
                    .wait_timeout(pending, EXPIRY_EVERY.min(beat_every))
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
                shared.beat();
            }
            pending.committing_bytes = pending.bytes;
            pending.bytes = 0;
            (
                std::mem::take(&mut pending.appends),
                std::mem::take(&mut pending.acks),
                std::mem::take(&mut pending.quarantine),
                std::mem::take(&mut pending.requeue),
                std::mem::take(&mut pending.discard),
                pending.closing,
            )
        };
        let expire_before = if last_expiry.elapsed() >= EXPIRY_EVERY {
            last_expiry = std::time::Instant::now();
            SystemTime::now()
                .checked_sub(shared.max_age)
                .map(store::millis)
        } else {
            None
        };
        let batch = store::Batch {
            appends: appends.iter().map(|(m, w, _)| (m, *w)).collect(),
            acks: &acks,
            expire_before,
            max_bytes: match shared.limits.full_policy {
                crate::config::FullPolicy::DropOldest => Some(shared.limits.max_bytes),
                crate::config::FullPolicy::Reject => None,
            },
            quarantine: &quarantine,
            requeue: &requeue.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            discard: &discard.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        };
        let c = &shared.counters;
        if batch.appends.is_empty()
            && acks.is_empty()
            && expire_before.is_none()
            && quarantine.is_empty()
            && requeue.is_empty()
            && discard.is_empty()
        {
            if closing {
                break;
            }
            continue;
        }
        let result = writer.commit(&batch);
        shared.beat();
        match result {
            Ok(done) => {
                if disk_full && !done.seqs.is_empty() {
                    disk_full = false;
                    tracing::info!("outbox: the state disk has room again, accepting messages");
                }
                c.commits_total.fetch_add(1, Ordering::Relaxed);
                c.queued.store(done.stats.queued, Ordering::Relaxed);
                c.queued_bytes
                    .store(done.stats.queued_bytes, Ordering::Relaxed);
                c.quarantined
                    .store(done.stats.quarantined, Ordering::Relaxed);
                c.quarantined_bytes
                    .store(done.stats.quarantined_bytes, Ordering::Relaxed);
                c.quarantined_total
                    .fetch_add(done.quarantined, Ordering::Relaxed);
                // The batch is now in the stored counter: stop counting it as in progress
                // before anyone learns it is durable.
                shared
                    .pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .committing_bytes = 0;
                c.oldest_received_ms
                    .store(done.stats.oldest_received_ms, Ordering::Relaxed);
                c.acked_total.fetch_add(done.acked, Ordering::Relaxed);
                c.expired_total.fetch_add(done.expired, Ordering::Relaxed);
                c.dropped_total.fetch_add(done.dropped, Ordering::Relaxed);
                c.accepted_total
                    .fetch_add(done.seqs.len() as u64, Ordering::Relaxed);
                if done.expired > 0 {
                    tracing::warn!(
                        count = done.expired,
                        "removed queued messages older than outbox.max_age"
                    );
                }
                if done.dropped > 0 {
                    tracing::warn!(
                        count = done.dropped,
                        "outbox full: dropped the oldest queued messages (outbox.full_policy = drop_oldest)"
                    );
                }
                if done.quarantined > 0 {
                    tracing::warn!(
                        count = done.quarantined,
                        "outbox: messages the upstream refused moved to the quarantine (edgegw quarantine list)"
                    );
                }
                let mut fed = Vec::with_capacity(appends.len() + requeue.len());
                let mut replies = Vec::with_capacity(appends.len());
                for ((message, _, reply), seq) in appends.into_iter().zip(done.seqs) {
                    replies.push((reply, seq));
                    fed.push(Entry { seq, message });
                }
                // Re-queued entries were inserted after the appends: the feed stays in order.
                let mut q_replies = Vec::with_capacity(requeue.len() + discard.len());
                for ((old, reply), entry) in requeue.into_iter().zip(done.requeued) {
                    match entry {
                        Some(entry) => {
                            c.requeued_total.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(
                                id = old,
                                seq = entry.seq,
                                "quarantine: message queued again"
                            );
                            q_replies.push((reply, Ok(entry.seq)));
                            fed.push(entry);
                        }
                        None => q_replies.push((reply, Err(QuarantineError::NotFound(old)))),
                    }
                }
                for ((seq, reply), existed) in discard.into_iter().zip(done.discarded) {
                    if existed {
                        c.discarded_total.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(id = seq, "quarantine: message dropped by the operator");
                        q_replies.push((reply, Ok(seq)));
                    } else {
                        q_replies.push((reply, Err(QuarantineError::NotFound(seq))));
                    }
                }
                let last = fed.last().map(|e| e.seq);
                // Fed and published before any receipt resolves: whoever learns that a
                // message is durable finds it in the feed and in `last_seq`.
                if let Some(last) = last {
                    shared
                        .feed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(fed);
                    c.last_seq.store(last, Ordering::Release);
                    shared.committed.send_replace(last);
                }
                for (reply, seq) in replies {
                    let _ = reply.send(Ok(seq));
                }
                for (reply, result) in q_replies {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                if !store::is_disk_full(&e) {
                    tracing::error!(
                        "outbox commit failed: {e}; the messages of this commit were refused"
                    );
                } else if !disk_full {
                    disk_full = true;
                    tracing::warn!(
                        "outbox: the state disk is full ({e}); new messages are refused as busy \
                         (retry after {}s) until space is freed",
                        DISK_FULL_RETRY_AFTER.as_secs()
                    );
                }
                let e = Arc::new(e);
                let refusal = commit_refusal(&e);
                for (_, _, reply) in appends {
                    let _ = reply.send(Err(refusal.clone()));
                }
                let failed = match refusal {
                    IngestError::Storage(e) => QuarantineError::Storage(e),
                    _ => QuarantineError::DiskFull,
                };
                for (_, reply) in requeue.into_iter().chain(discard) {
                    let _ = reply.send(Err(failed.clone()));
                }
                // Acknowledgements are retried with the next commit.
                let mut pending = shared
                    .pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                pending.acks.extend(acks);
                pending.quarantine.extend(quarantine);
                pending.committing_bytes = 0;
                drop(pending);
                if closing {
                    break;
                }
                // Do not spin on a persistent failure (disk full).
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if closing {
            let pending = shared
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if pending.appends.is_empty()
                && pending.acks.is_empty()
                && pending.quarantine.is_empty()
                && pending.requeue.is_empty()
                && pending.discard.is_empty()
            {
                break;
            }
        }
    }
    tracing::debug!("outbox writer stopped");
}
