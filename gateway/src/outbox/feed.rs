//! The in-memory feed from the outbox writer to the uplink: what a commit just made durable,
//! bounded, so the steady state never reads back what it wrote.

use std::collections::VecDeque;

use super::{Entry, Fetched};

/// Most entries, and most bytes ([`Message::weight`]), the feed holds for the uplink. Past
/// either, the feed is emptied and the uplink reads the database until it caught up: memory
/// stays bounded whatever the upstream does.
pub(super) const FEED_MAX_ENTRIES: usize = 8192;
pub(super) const FEED_MAX_BYTES: u64 = 2 << 20;

/// Entries just made durable, in sequence order, for the uplink. Every committed entry with a
/// sequence number from `from` to `last` is either here or was taken by the uplink already
/// (in order); `from == u64::MAX` when nothing is (after an overflow, until the next commit).
#[derive(Debug)]
pub(super) struct Feed {
    entries: VecDeque<Entry>,
    bytes: u64,
    from: u64,
    last: u64,
}

impl Feed {
    pub(super) fn new(last_seq: u64) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            from: last_seq.saturating_add(1),
            last: last_seq,
        }
    }

    /// Appends one commit's entries (consecutive sequence numbers, after `last`).
    pub(super) fn push(&mut self, entries: Vec<Entry>) {
        let (Some(first), Some(end)) = (entries.first(), entries.last()) else {
            return;
        };
        let (first, end) = (first.seq, end.seq);
        let bytes: u64 = entries.iter().map(|e| e.message.weight()).sum();
        let contiguous = self.from != u64::MAX && first == self.last.saturating_add(1);
        if !contiguous
            || self.entries.len() + entries.len() > FEED_MAX_ENTRIES
            || self.bytes + bytes > FEED_MAX_BYTES
        {
            // Start a new run; what was here is in the database (the uplink reads it there).
            self.entries.clear();
            self.bytes = 0;
            self.from = first;
            if entries.len() > FEED_MAX_ENTRIES || bytes > FEED_MAX_BYTES {
                self.from = u64::MAX;
                self.last = end;
                return;
            }
        }
        self.entries.extend(entries);
        self.bytes += bytes;
        self.last = end;
    }

    /// Up to `limit` entries after `after`, if the feed holds everything committed after it.
    pub(super) fn take(&mut self, after: u64, limit: usize) -> Option<Fetched> {
        while let Some(front) = self.entries.front() {
            if front.seq > after {
                break;
            }
            self.bytes = self.bytes.saturating_sub(front.message.weight());
            self.entries.pop_front();
        }
        if self.from == u64::MAX || self.from > after.saturating_add(1) {
            return None;
        }
        let n = limit.min(self.entries.len());
        let entries: Vec<Entry> = self.entries.drain(..n).collect();
        let taken: u64 = entries.iter().map(|e| e.message.weight()).sum();
        self.bytes = self.bytes.saturating_sub(taken);
        let through = match entries.last() {
            Some(e) if entries.len() == limit => e.seq,
            _ => self.last.max(after),
        };
        Some(Fetched { entries, through })
    }
}
