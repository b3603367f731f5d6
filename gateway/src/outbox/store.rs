//! SQLite side of the outbox: schema, the writer's group-commit transaction, the uplink's
//! reader. Owned by the writer thread (writes) and the reader mutex (reads).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};

use super::{Entry, Message, OutboxError, Quarantined};
use crate::config::Durability;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    domain_id TEXT NOT NULL,
    subtopic TEXT NOT NULL,
    content_format TEXT,
    payload BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER PRIMARY KEY,
    client_id TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    domain_id TEXT NOT NULL,
    subtopic TEXT NOT NULL,
    content_format TEXT,
    payload BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL,
    size INTEGER NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    quarantined_at_ms INTEGER NOT NULL
);
";

/// The layout version this binary writes (`PRAGMA user_version`). 0: the first layout, with an
/// index on `received_at_ms` (one more B-tree written per insert and per delete, only for
/// expiry). 1: no secondary index; expiry walks the oldest entries in sequence order. 2: the
/// `quarantine` table (messages the upstream refused, kept under their outbox sequence number
/// until an operator re-queues or drops them).
const LAYOUT_VERSION: i64 = 2;

/// From an older layout to [`LAYOUT_VERSION`], in the writer's first transaction (the
/// `quarantine` table itself comes from [`SCHEMA`]'s `CREATE TABLE IF NOT EXISTS`). Rows are
/// untouched: an older binary opening the file again just recreates its index and leaves the
/// quarantine alone (its messages stay there, invisible to it, until a newer binary runs).
const MIGRATE: &str = "DROP INDEX IF EXISTS outbox_received_at;";

pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
}

/// SQLITE_FULL: the state partition has no room (SQLite's unix VFS reports a write's ENOSPC
/// this way; `max_page_count` too). Not a broken store: it passes once space is freed.
pub fn is_disk_full(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::DiskFull))
}

fn open_error(path: &Path, source: rusqlite::Error) -> OutboxError {
    if is_corruption(&source) {
        OutboxError::Corrupt {
            path: path.to_owned(),
            reason: source.to_string(),
        }
    } else {
        OutboxError::Open {
            path: path.to_owned(),
            source,
        }
    }
}

/// Gauges after a commit.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreStats {
    pub queued: u64,
    pub queued_bytes: u64,
    pub oldest_received_ms: u64,
    pub last_seq: u64,
    pub quarantined: u64,
    pub quarantined_bytes: u64,
}

/// A message the upstream refused, moved out of the queue (see [`Writer::commit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToQuarantine {
    pub seq: u64,
    pub reason: String,
    pub attempts: u32,
}

/// One group commit's work.
#[derive(Debug)]
pub struct Batch<'a> {
    pub appends: Vec<(&'a Message, u64)>,
    pub acks: &'a [u64],
    pub expire_before: Option<i64>,
    /// `Some` under drop_oldest: delete the oldest entries until the appends fit.
    pub max_bytes: Option<u64>,
    /// Queued entries to move into the quarantine.
    pub quarantine: &'a [ToQuarantine],
    /// Quarantined entries to queue again (under a new sequence number, after the appends).
    pub requeue: &'a [u64],
    /// Quarantined entries an operator drops.
    pub discard: &'a [u64],
}

#[derive(Debug)]
pub struct Committed {
    pub seqs: Vec<u64>,
    pub acked: u64,
    pub expired: u64,
    pub dropped: u64,
    /// Entries moved into the quarantine (already acknowledged or expired ones are skipped).
    pub quarantined: u64,
    /// Per [`Batch::requeue`] item: the entry under its new sequence number, `None` when no
    /// such quarantined entry exists.
    pub requeued: Vec<Option<Entry>>,
    /// Per [`Batch::discard`] item: whether it existed (and is now deleted).
    pub discarded: Vec<bool>,
    pub stats: StoreStats,
}

#[derive(Debug)]
pub struct Writer {
    conn: Connection,
    stats: StoreStats,
}

/// Bytes the write-ahead log is truncated to after a checkpoint (`journal_size_limit`).
pub const WAL_SIZE_LIMIT: u64 = 1024 * 1024;

fn configure(conn: &Connection, path: &Path) -> Result<(), OutboxError> {
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| open_error(path, e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| open_error(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OutboxError::Open {
            path: path.to_owned(),
            source: rusqlite::Error::InvalidQuery,
        });
    }
    // The write-ahead log is checkpointed once it holds about 1 MiB (SQLite's default is
    // 1000 pages, ~4 MiB) and truncated back to 1 MiB after that instead of keeping its
    // largest size: on a small state partition that space is what lets the outbox grow again
    // once the upstream drains it.
    let page_size: u32 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(|e| open_error(path, e))?;
    conn.execute_batch(&format!(
        "PRAGMA journal_size_limit={WAL_SIZE_LIMIT}; PRAGMA wal_autocheckpoint={};",
        WAL_SIZE_LIMIT / u64::from(page_size.max(512))
    ))
    .map_err(|e| open_error(path, e))?;
    Ok(())
}

impl Writer {
    pub fn open(path: &Path, durability: Durability) -> Result<(Self, StoreStats), OutboxError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| open_error(path, e))?;
        // The file is created 0644 by SQLite; payloads are sensor data: owner only.
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        configure(&conn, path)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| open_error(path, e))?;
        if check != "ok" {
            return Err(OutboxError::Corrupt {
                path: path.to_owned(),
                reason: format!("integrity check: {check}"),
            });
        }
        let sync = match durability {
            Durability::Fsync => "FULL",
            Durability::Os => "NORMAL",
        };
        conn.execute_batch(&format!("PRAGMA synchronous={sync};"))
            .map_err(|e| open_error(path, e))?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| open_error(path, e))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| open_error(path, e))?;
        if version < LAYOUT_VERSION {
            conn.execute_batch(&format!(
                "BEGIN; {MIGRATE} PRAGMA user_version={LAYOUT_VERSION}; COMMIT;"
            ))
            .map_err(|e| open_error(path, e))?;
        }
        let mut writer = Self {
            conn,
            stats: StoreStats::default(),
        };
        writer.stats = writer.load_stats().map_err(|e| open_error(path, e))?;
        let stats = writer.stats;
        Ok((writer, stats))
    }

    fn load_stats(&self) -> rusqlite::Result<StoreStats> {
        let (queued, bytes): (i64, i64) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(size), 0) FROM outbox",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        // AUTOINCREMENT keeps the high-water mark even when the table is empty.
        let last: Option<i64> = self
            .conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let (quarantined, quarantined_bytes): (i64, i64) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(size), 0) FROM quarantine",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(StoreStats {
            queued: u64::try_from(queued).unwrap_or(0),
            queued_bytes: u64::try_from(bytes).unwrap_or(0),
            oldest_received_ms: self.oldest()?,
            last_seq: last.and_then(|l| u64::try_from(l).ok()).unwrap_or(0),
            quarantined: u64::try_from(quarantined).unwrap_or(0),
            quarantined_bytes: u64::try_from(quarantined_bytes).unwrap_or(0),
        })
    }

    fn oldest(&self) -> rusqlite::Result<u64> {
        let oldest: Option<i64> = self
            .conn
            .query_row(
                "SELECT received_at_ms FROM outbox ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(oldest.and_then(|o| u64::try_from(o).ok()).unwrap_or(0))
    }

    /// Caps the database at `pages` pages, so that tests meet a real SQLITE_FULL.
    #[cfg(test)]
    pub fn set_max_page_count(&self, pages: u32) -> rusqlite::Result<()> {
        self.conn
            .query_row(&format!("PRAGMA max_page_count={pages}"), [], |_| Ok(()))
    }

    /// Runs one group commit: acks, expiry, room for drop_oldest, appends; one transaction.
    pub fn commit(&mut self, batch: &Batch<'_>) -> rusqlite::Result<Committed> {
        let mut stats = self.stats;
        let tx = self.conn.transaction()?;
        let mut acked = 0;
        let mut expired = 0;
        let mut dropped = 0;
        {
            // PUBACKs come mostly in order: one range DELETE per run of consecutive sequence
            // numbers instead of one statement per message.
            let mut delete =
                tx.prepare_cached("DELETE FROM outbox WHERE seq BETWEEN ?1 AND ?2 RETURNING size")?;
            for (lo, hi) in runs(batch.acks) {
                let sizes = delete.query_map(
                    [
                        i64::try_from(lo).unwrap_or(i64::MAX),
                        i64::try_from(hi).unwrap_or(i64::MAX),
                    ],
                    |r| r.get::<_, i64>(0),
                )?;
                for size in sizes {
                    acked += 1;
                    stats.queued = stats.queued.saturating_sub(1);
                    stats.queued_bytes = stats
                        .queued_bytes
                        .saturating_sub(u64::try_from(size?).unwrap_or(0));
                }
            }
        }
        if let Some(cutoff) = batch.expire_before {
            // The oldest entries in sequence order, up to the first one still young enough:
            // no index on the receive time (one B-tree less per insert and delete). An entry
            // whose clock went backwards waits for those before it.
            let mut expire = tx.prepare_cached(
                "DELETE FROM outbox WHERE seq < coalesce((SELECT seq FROM outbox \
                 WHERE received_at_ms >= ?1 ORDER BY seq LIMIT 1), 9223372036854775807) \
                 RETURNING size",
            )?;
            let sizes = expire.query_map([cutoff], |r| r.get::<_, i64>(0))?;
            for size in sizes {
                expired += 1;
                stats.queued = stats.queued.saturating_sub(1);
                stats.queued_bytes = stats
                    .queued_bytes
                    .saturating_sub(u64::try_from(size?).unwrap_or(0));
            }
        }
        let mut quarantined = 0;
        if !batch.quarantine.is_empty() {
            let now = millis(SystemTime::now());
            let mut copy = tx.prepare_cached(
                "INSERT OR IGNORE INTO quarantine (seq, client_id, channel_id, domain_id, subtopic, \
                 content_format, payload, received_at_ms, size, reason, attempts, quarantined_at_ms) \
                 SELECT seq, client_id, channel_id, domain_id, subtopic, content_format, payload, \
                 received_at_ms, size, ?2, ?3, ?4 FROM outbox WHERE seq = ?1",
            )?;
            let mut remove =
                tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1 RETURNING size")?;
            for q in batch.quarantine {
                let seq = i64::try_from(q.seq).unwrap_or(i64::MAX);
                if copy.execute(params![seq, q.reason, q.attempts, now])? == 0 {
                    continue;
                }
                if let Some(size) = remove.query_row([seq], |r| r.get::<_, i64>(0)).optional()? {
                    let size = u64::try_from(size).unwrap_or(0);
                    quarantined += 1;
                    stats.queued = stats.queued.saturating_sub(1);
                    stats.queued_bytes = stats.queued_bytes.saturating_sub(size);
                    stats.quarantined += 1;
                    stats.quarantined_bytes += size;
                }
            }
        }
        let mut discarded = Vec::with_capacity(batch.discard.len());
        if !batch.discard.is_empty() {
            let mut delete =
                tx.prepare_cached("DELETE FROM quarantine WHERE seq = ?1 RETURNING size")?;
            for seq in batch.discard {
                let seq = i64::try_from(*seq).unwrap_or(i64::MAX);
                let size = delete.query_row([seq], |r| r.get::<_, i64>(0)).optional()?;
                if let Some(size) = size {
                    stats.quarantined = stats.quarantined.saturating_sub(1);
                    stats.quarantined_bytes = stats
                        .quarantined_bytes
                        .saturating_sub(u64::try_from(size).unwrap_or(0));
                }
                discarded.push(size.is_some());
            }
        }
        let incoming: u64 = batch.appends.iter().map(|(_, w)| w).sum();
        if let Some(max) = batch.max_bytes {
            // Only queued entries are dropped to make room; the quarantine is never touched
            // (it is bounded by admission under `reject`, see `Outbox::accept`).
            let mut need = super::policy::bytes_to_drop(max, stats.queued_bytes, incoming);
            if need > 0 {
                let mut oldest = tx.prepare_cached(
                    "DELETE FROM outbox WHERE seq = (SELECT min(seq) FROM outbox) RETURNING size",
                )?;
                while need > 0 {
                    let Some(size) = oldest.query_row([], |r| r.get::<_, i64>(0)).optional()?
                    else {
                        break;
                    };
                    let size = u64::try_from(size).unwrap_or(0);
                    dropped += 1;
                    stats.queued -= 1;
                    stats.queued_bytes = stats.queued_bytes.saturating_sub(size);
                    need = need.saturating_sub(size.max(1));
                }
            }
        }
        let mut seqs = Vec::with_capacity(batch.appends.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO outbox (client_id, channel_id, domain_id, subtopic, content_format, \
                 payload, received_at_ms, size) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for (m, weight) in &batch.appends {
                insert.execute(params![
                    m.client_id,
                    m.channel_id,
                    m.domain_id,
                    m.subtopic,
                    m.content_format,
                    &m.payload[..],
                    millis(m.received_at),
                    i64::try_from(*weight).unwrap_or(i64::MAX),
                ])?;
                let seq = u64::try_from(tx.last_insert_rowid()).unwrap_or(0);
                seqs.push(seq);
                stats.queued += 1;
                stats.queued_bytes += weight;
                stats.last_seq = seq;
            }
        }
        let mut requeued = Vec::with_capacity(batch.requeue.len());
        if !batch.requeue.is_empty() {
            let mut take = tx.prepare_cached(
                "DELETE FROM quarantine WHERE seq = ?1 RETURNING client_id, channel_id, domain_id, \
                 subtopic, content_format, payload, received_at_ms, size",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO outbox (client_id, channel_id, domain_id, subtopic, content_format, \
                 payload, received_at_ms, size) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for seq in batch.requeue {
                let seq = i64::try_from(*seq).unwrap_or(i64::MAX);
                let row = take
                    .query_row([seq], |r| {
                        Ok((
                            Message {
                                client_id: r.get(0)?,
                                channel_id: r.get(1)?,
                                domain_id: r.get(2)?,
                                subtopic: r.get(3)?,
                                content_format: r.get(4)?,
                                payload: bytes::Bytes::from(r.get::<_, Vec<u8>>(5)?),
                                received_at: from_millis(r.get(6)?),
                            },
                            r.get::<_, i64>(7)?,
                        ))
                    })
                    .optional()?;
                let Some((message, size)) = row else {
                    requeued.push(None);
                    continue;
                };
                insert.execute(params![
                    message.client_id,
                    message.channel_id,
                    message.domain_id,
                    message.subtopic,
                    message.content_format,
                    &message.payload[..],
                    millis(message.received_at),
                    size,
                ])?;
                let new = u64::try_from(tx.last_insert_rowid()).unwrap_or(0);
                let size = u64::try_from(size).unwrap_or(0);
                stats.quarantined = stats.quarantined.saturating_sub(1);
                stats.quarantined_bytes = stats.quarantined_bytes.saturating_sub(size);
                stats.queued += 1;
                stats.queued_bytes += size;
                stats.last_seq = new;
                requeued.push(Some(Entry { seq: new, message }));
            }
        }
        tx.commit()?;
        stats.oldest_received_ms = self.oldest()?;
        self.stats = stats;
        Ok(Committed {
            seqs,
            acked,
            expired,
            dropped,
            quarantined,
            requeued,
            discarded,
            stats,
        })
    }
}

/// Sorted, deduplicated `seqs` as inclusive runs of consecutive numbers.
fn runs(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for s in sorted {
        match out.last_mut() {
            Some((_, hi)) if *hi + 1 == s => *hi = s,
            _ => out.push((s, s)),
        }
    }
    out
}

/// The uplink's read connection (WAL: reads never block the writer).
#[derive(Debug)]
pub struct Reader {
    conn: Connection,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Self, OutboxError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| open_error(path, e))?;
        configure(&conn, path)?;
        Ok(Self { conn })
    }

    pub fn fetch_after(&self, after: u64, limit: usize) -> Result<Vec<Entry>, OutboxError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, client_id, channel_id, domain_id, subtopic, content_format, payload, \
             received_at_ms FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(page(after, limit), |r| {
            Ok(Entry {
                seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                message: message_at(r)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Up to `limit` quarantined entries with a sequence number above `after`, oldest first.
    pub fn quarantined(&self, after: u64, limit: usize) -> Result<Vec<Quarantined>, OutboxError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, client_id, channel_id, domain_id, subtopic, content_format, payload, \
             received_at_ms, reason, attempts, quarantined_at_ms FROM quarantine WHERE seq > ?1 \
             ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(page(after, limit), |r| {
            Ok(Quarantined {
                seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                message: message_at(r)?,
                reason: r.get(8)?,
                attempts: r.get(9)?,
                quarantined_at_ms: u64::try_from(r.get::<_, i64>(10)?).unwrap_or(0),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// `?1` (sequence numbers above this) and `?2` (at most this many) of a page query.
fn page(after: u64, limit: usize) -> [i64; 2] {
    [
        i64::try_from(after).unwrap_or(i64::MAX),
        i64::try_from(limit).unwrap_or(i64::MAX),
    ]
}

/// The message in columns 1..=7 of a row (client_id, channel_id, domain_id, subtopic,
/// content_format, payload, received_at_ms), as `outbox` and `quarantine` both store it.
fn message_at(r: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        client_id: r.get(1)?,
        channel_id: r.get(2)?,
        domain_id: r.get(3)?,
        subtopic: r.get(4)?,
        content_format: r.get(5)?,
        payload: bytes::Bytes::from(r.get::<_, Vec<u8>>(6)?),
        received_at: from_millis(r.get(7)?),
    })
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_become_runs_of_consecutive_numbers() {
        assert_eq!(runs(&[]), vec![]);
        assert_eq!(
            runs(&[5, 3, 4, 9, 7, 8, 8, 1]),
            vec![(1, 1), (3, 5), (7, 9)]
        );
    }
}
