use std::time::{Duration, SystemTime};

use super::*;
use crate::config::value::{ByteSize, Duration as CfgDuration};
use crate::config::{Durability, FullPolicy};

fn config(max_bytes: u64, policy: FullPolicy) -> OutboxConfig {
    OutboxConfig {
        durability: Durability::Fsync,
        max_bytes: ByteSize(max_bytes),
        max_age: CfgDuration::from_secs(3600),
        full_policy: policy,
        max_message_size: ByteSize(1000),
    }
}

fn msg(channel: &str, payload: &str) -> Message {
    Message {
        client_id: "k".into(),
        channel_id: channel.into(),
        domain_id: "d".into(),
        subtopic: "t".into(),
        content_format: Some("text/plain".into()),
        payload: Bytes::from(payload.to_owned()),
        received_at: SystemTime::now(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn payloads(outbox: &Outbox) -> Vec<String> {
    outbox
        .fetch_after(0, 10_000)
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.message.payload.to_vec()).unwrap())
        .collect()
}

#[test]
fn accepted_messages_survive_a_restart_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let cfg = config(1 << 20, FullPolicy::Reject);
    let seqs: Vec<u64> = {
        let (outbox, worker) = Outbox::open(&path, &cfg).unwrap();
        let receipts: Vec<_> = (0..50)
            .map(|i| outbox.accept(msg("c", &format!("m{i}"))).unwrap())
            .collect();
        let seqs = rt().block_on(async {
            let mut out = Vec::new();
            for r in receipts {
                out.push(r.await.unwrap());
            }
            out
        });
        // No close(): the worker thread is simply abandoned, as in a crash after the receipts.
        drop(worker);
        seqs
    };
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let (outbox, worker) = Outbox::open(&path, &cfg).unwrap();
    let expected: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads(&outbox), expected);
    let stats = outbox.stats();
    assert_eq!(stats.queued, 50);
    assert_eq!(stats.last_seq, *seqs.last().unwrap());
    outbox.close();
    worker.join();
}

#[test]
fn acked_entries_are_deleted_and_sequence_numbers_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let cfg = config(1 << 20, FullPolicy::Reject);
    let (outbox, worker) = Outbox::open(&path, &cfg).unwrap();
    let first = rt()
        .block_on(outbox.accept(msg("c", "a")).unwrap())
        .unwrap();
    outbox.ack(&[first]);
    outbox.close();
    worker.join();
    let (outbox, worker) = Outbox::open(&path, &cfg).unwrap();
    assert!(payloads(&outbox).is_empty());
    assert_eq!(outbox.stats().queued, 0);
    let second = rt()
        .block_on(outbox.accept(msg("c", "b")).unwrap())
        .unwrap();
    assert!(second > first, "{second} after {first}");
    outbox.close();
    worker.join();
}

#[test]
fn reject_policy_answers_busy_when_full_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1000, FullPolicy::Reject);
    let (outbox, worker) = Outbox::open(&dir.path().join("o.db"), &cfg).unwrap();
    let big = "x".repeat(300);
    let mut busy = None;
    let rt = rt();
    for i in 0..10 {
        match outbox.accept(msg("c", &format!("{i}{big}"))) {
            Ok(r) => {
                rt.block_on(r).unwrap();
            }
            Err(e) => {
                busy = Some((i, e));
                break;
            }
        }
    }
    let (i, err) = busy.expect("the outbox never said busy");
    assert!(matches!(err, IngestError::Busy { .. }), "{err}");
    assert_eq!(i, 3, "3 messages of ~310 bytes fit in 1000");
    assert_eq!(payloads(&outbox).len(), 3);
    assert_eq!(outbox.stats().dropped_total, 0);
    assert!(matches!(
        outbox.accept(msg("c", &"y".repeat(1001))),
        Err(IngestError::TooLarge { max: 1000 })
    ));
    outbox.close();
    worker.join();
}

#[test]
fn drop_oldest_policy_makes_room_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1000, FullPolicy::DropOldest);
    let (outbox, worker) = Outbox::open(&dir.path().join("o.db"), &cfg).unwrap();
    let big = "x".repeat(300);
    let rt = rt();
    for i in 0..5 {
        rt.block_on(outbox.accept(msg("c", &format!("{i}{big}"))).unwrap())
            .unwrap();
    }
    let left: Vec<String> = payloads(&outbox)
        .into_iter()
        .map(|p| p[..1].to_owned())
        .collect();
    assert_eq!(left, vec!["2", "3", "4"]);
    assert_eq!(outbox.stats().dropped_total, 2);
    assert!(outbox.stats().queued_bytes <= 1000);
    outbox.close();
    worker.join();
}

#[test]
fn messages_older_than_max_age_expire_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(1 << 20, FullPolicy::Reject);
    cfg.max_age = CfgDuration::from_secs(60);
    let (outbox, worker) = Outbox::open(&dir.path().join("o.db"), &cfg).unwrap();
    let mut old = msg("c", "old");
    old.received_at = SystemTime::now() - Duration::from_secs(120);
    let rt = rt();
    rt.block_on(outbox.accept(old).unwrap()).unwrap();
    rt.block_on(outbox.accept(msg("c", "new")).unwrap())
        .unwrap();
    // Expiry runs at most once a second; wait for the commit that does it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while outbox.stats().expired_total == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing expired");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(payloads(&outbox), vec!["new"]);
    assert_eq!(outbox.stats().queued, 1);
    outbox.close();
    worker.join();
}

#[test]
fn concurrent_accepts_are_group_committed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(64 << 20, FullPolicy::Reject);
    let (outbox, worker) = Outbox::open(&dir.path().join("o.db"), &cfg).unwrap();
    let receipts: Vec<_> = (0..2000)
        .map(|i| outbox.accept(msg("c", &i.to_string())).unwrap())
        .collect();
    rt().block_on(async {
        for r in receipts {
            r.await.unwrap();
        }
    });
    let stats = outbox.stats();
    assert_eq!(stats.accepted_total, 2000);
    assert!(
        stats.commits_total < 200,
        "2000 messages took {} commits: no grouping",
        stats.commits_total
    );
    outbox.close();
    worker.join();
}

#[test]
fn a_corrupt_outbox_is_refused_and_left_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let garbage = b"this is not an SQLite database, it is garbage ".repeat(100);
    std::fs::write(&path, &garbage).unwrap();
    let err = Outbox::open(&path, &config(1 << 20, FullPolicy::Reject)).unwrap_err();
    assert!(matches!(err, OutboxError::Corrupt { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("move it aside") && text.contains("outbox.db"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        garbage,
        "the file was changed"
    );
}

#[test]
fn accept_after_close_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, worker) = Outbox::open(
        &dir.path().join("o.db"),
        &config(1 << 20, FullPolicy::Reject),
    )
    .unwrap();
    outbox.close();
    worker.join();
    assert_eq!(
        outbox.accept(msg("c", "x")).unwrap_err(),
        IngestError::Closed
    );
}

#[test]
fn an_idle_writer_keeps_its_heartbeat_fresh_and_an_unbeaten_loop_is_stalled() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, worker) = Outbox::open(
        &dir.path().join("outbox.db"),
        &config(1 << 20, FullPolicy::Reject),
    )
    .unwrap();
    // Check period 200 ms: a loop is stalled when it has not beaten for 200 ms.
    let watchdog = crate::runtime::watchdog::Watchdog::new(Duration::from_millis(200));
    outbox.watch_progress(watchdog.register("outbox writer"), watchdog.beat_interval());
    let control = watchdog.register("never beats");
    // Time passes with nothing to commit: the writer must still beat on its own.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(watchdog.stalled(), vec!["never beats"]);
    drop(control);
    outbox.close();
    worker.join();
}

#[test]
fn the_write_ahead_log_shrinks_back_after_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let mut cfg = config(64 << 20, FullPolicy::Reject);
    cfg.durability = Durability::Os;
    let (outbox, worker) = Outbox::open(&path, &cfg).unwrap();
    let payload = "x".repeat(900);
    let rt = rt();
    // ~7 MB through the log: beyond SQLite's automatic checkpoint (1000 pages), so the log
    // has grown well past the limit at least once.
    for _ in 0..80 {
        let pending: Vec<_> = (0..100)
            .map(|_| outbox.accept(msg("c", &payload)).unwrap())
            .collect();
        let seqs: Vec<u64> = pending
            .into_iter()
            .map(|p| rt.block_on(p).unwrap())
            .collect();
        outbox.ack(&seqs);
    }
    outbox.close();
    worker.join();
    let wal = dir.path().join("outbox.db-wal");
    let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
    // One group commit may be appended before the checkpoint that follows it.
    assert!(
        size <= store::WAL_SIZE_LIMIT + 256 * 1024,
        "{} is {size} bytes, limit {}",
        wal.display(),
        store::WAL_SIZE_LIMIT
    );
}

fn sqlite_error(code: std::os::raw::c_int) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
}

#[test]
fn a_full_disk_is_refused_as_busy_with_a_retry_time_other_failures_as_storage() {
    assert_eq!(
        commit_refusal(&Arc::new(sqlite_error(rusqlite::ffi::SQLITE_FULL))),
        IngestError::Busy {
            retry_after: DISK_FULL_RETRY_AFTER
        }
    );
    for code in [
        rusqlite::ffi::SQLITE_IOERR,
        rusqlite::ffi::SQLITE_CORRUPT,
        rusqlite::ffi::SQLITE_READONLY,
        rusqlite::ffi::SQLITE_CANTOPEN,
    ] {
        assert!(
            matches!(
                commit_refusal(&Arc::new(sqlite_error(code))),
                IngestError::Storage(_)
            ),
            "code {code}"
        );
    }
    assert!(matches!(
        commit_refusal(&Arc::new(rusqlite::Error::InvalidQuery)),
        IngestError::Storage(_)
    ));
}

#[test]
fn a_real_sqlite_full_from_the_writer_is_classified_as_disk_full() {
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, _) =
        store::Writer::open(&dir.path().join("outbox.db"), Durability::Os).unwrap();
    // A few pages beyond the schema: one commit of 64 KiB payloads cannot fit.
    writer.set_max_page_count(8).unwrap();
    let big = Message {
        payload: Bytes::from(vec![7u8; 64 << 10]),
        ..msg("c", "")
    };
    let batch = store::Batch {
        appends: vec![(&big, 64 << 10), (&big, 64 << 10)],
        acks: &[],
        expire_before: None,
        max_bytes: None,
        quarantine: &[],
        requeue: &[],
        discard: &[],
    };
    let err = writer.commit(&batch).expect_err("the page cap must refuse");
    assert!(store::is_disk_full(&err), "{err:?}");
    assert!(matches!(
        commit_refusal(&Arc::new(err)),
        IngestError::Busy { .. }
    ));
}

fn accept_all(outbox: &Outbox, channel: &str, n: usize) -> Vec<u64> {
    let receipts: Vec<_> = (0..n)
        .map(|i| outbox.accept(msg(channel, &format!("m{i}"))).unwrap())
        .collect();
    rt().block_on(async {
        let mut out = Vec::new();
        for r in receipts {
            out.push(r.await.unwrap());
        }
        out
    })
}

fn seqs(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

#[test]
fn what_a_commit_made_durable_is_fed_from_memory_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, worker) = Outbox::open(
        &dir.path().join("o.db"),
        &config(1 << 20, FullPolicy::Reject),
    )
    .unwrap();
    let accepted = accept_all(&outbox, "c", 10);
    let first = outbox.take_fed(0, 4).expect("fed from memory");
    assert_eq!(seqs(&first.entries), accepted[..4]);
    assert_eq!(first.through, accepted[3]);
    let rest = outbox
        .take_fed(first.through, 100)
        .expect("fed from memory");
    assert_eq!(seqs(&rest.entries), accepted[4..]);
    assert_eq!(rest.through, accepted[9]);
    assert_eq!(
        String::from_utf8(rest.entries[5].message.payload.to_vec()).unwrap(),
        "m9"
    );
    // Handed out once; what was fed is still in the database until acknowledged.
    let again = outbox.take_fed(rest.through, 100).unwrap();
    assert!(again.entries.is_empty());
    assert_eq!(payloads(&outbox).len(), 10);
    outbox.close();
    worker.join();
}

#[test]
fn a_backlog_is_read_from_the_database_until_the_feed_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let cfg = config(1 << 20, FullPolicy::Reject);
    let old = {
        let (outbox, worker) = Outbox::open(&path, &cfg).unwrap();
        let s = accept_all(&outbox, "c", 5);
        outbox.ack(&s[..2]);
        outbox.close();
        worker.join();
        s
    };
    // After a restart: the queued entries are only in the database.
    let (outbox, worker) = Outbox::open(&path, &cfg).unwrap();
    let new = accept_all(&outbox, "c", 3);
    assert!(
        outbox.take_fed(0, 100).is_none(),
        "a backlog is not in memory"
    );
    let backlog = outbox.fetch_backlog(0, 2).unwrap();
    assert_eq!(seqs(&backlog.entries), old[2..4]);
    assert_eq!(backlog.through, old[3]);
    let backlog = outbox.fetch_backlog(backlog.through, 2).unwrap();
    assert_eq!(seqs(&backlog.entries), vec![old[4], new[0]]);
    let fed = outbox.take_fed(backlog.through, 100).unwrap();
    assert_eq!(seqs(&fed.entries), new[1..]);
    // Nothing queued at all after a restart: the cursor catches up with one empty read.
    outbox.ack(&old[2..]);
    outbox.ack(&new);
    outbox.close();
    worker.join();
    let (outbox, worker) = Outbox::open(&path, &cfg).unwrap();
    let empty = outbox.fetch_backlog(0, 100).unwrap();
    assert!(empty.entries.is_empty());
    assert_eq!(empty.through, new[2]);
    let next = accept_all(&outbox, "c", 1);
    assert_eq!(
        seqs(&outbox.take_fed(empty.through, 10).unwrap().entries),
        next
    );
    outbox.close();
    worker.join();
}

#[test]
fn an_overflowing_feed_falls_back_to_the_database_without_losing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, worker) = Outbox::open(
        &dir.path().join("o.db"),
        &config(64 << 20, FullPolicy::Reject),
    )
    .unwrap();
    // More than the feed holds, and nobody taking: the feed restarts with later commits.
    let mut accepted = Vec::new();
    while accepted.len() <= FEED_MAX_ENTRIES + 100 {
        accepted.extend(accept_all(&outbox, "c", 500));
    }
    let (mut cursor, mut got) = (0, Vec::new());
    let mut from_db = 0;
    while cursor < *accepted.last().unwrap() {
        let f = match outbox.take_fed(cursor, 128) {
            Some(f) => f,
            None => {
                from_db += 1;
                outbox.fetch_backlog(cursor, 128).unwrap()
            }
        };
        got.extend(seqs(&f.entries));
        assert!(f.through >= cursor);
        cursor = f.through;
    }
    assert!(from_db > 0, "the start was read from the database");
    assert_eq!(got, accepted, "every entry once, in order");
    outbox.close();
    worker.join();
}

#[test]
fn acknowledged_runs_and_single_acks_are_deleted_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, worker) = Outbox::open(
        &dir.path().join("o.db"),
        &config(1 << 20, FullPolicy::Reject),
    )
    .unwrap();
    let s = accept_all(&outbox, "c", 10);
    // Out of order, with a hole (s[5] not acknowledged) and a duplicate.
    outbox.ack(&[s[3], s[0], s[1], s[2], s[4], s[7], s[6], s[9], s[9]]);
    let _ = accept_all(&outbox, "d", 1); // a commit that carries the acks
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while outbox.stats().acked_total < 8 {
        assert!(std::time::Instant::now() < deadline, "acks not applied");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(outbox.stats().acked_total, 8);
    assert_eq!(payloads(&outbox), vec!["m5", "m8", "m0"]);
    assert_eq!(outbox.stats().queued, 3);
    outbox.close();
    worker.join();
}

#[test]
fn an_outbox_of_the_first_layout_is_migrated_and_keeps_its_queue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    {
        // The first layout, exactly as its binary created it, with two queued messages.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE outbox (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 client_id TEXT NOT NULL, channel_id TEXT NOT NULL, domain_id TEXT NOT NULL,
                 subtopic TEXT NOT NULL, content_format TEXT, payload BLOB NOT NULL,
                 received_at_ms INTEGER NOT NULL, size INTEGER NOT NULL);
             CREATE INDEX outbox_received_at ON outbox(received_at_ms);
             INSERT INTO outbox (client_id, channel_id, domain_id, subtopic, content_format,
                                 payload, received_at_ms, size)
                 VALUES ('k', 'c', 'd', 't', NULL, X'6f6e65', 1, 7), ('k', 'c', 'd', 't', NULL, X'74776f', 2, 7);",
        )
        .unwrap();
    }
    let (outbox, worker) = Outbox::open(&path, &config(1 << 20, FullPolicy::Reject)).unwrap();
    assert_eq!(payloads(&outbox), vec!["one", "two"]);
    assert_eq!(outbox.stats().queued, 2);
    assert_eq!(outbox.stats().last_seq, 2);
    let next = accept_all(&outbox, "c", 1);
    assert_eq!(next, vec![3]);
    outbox.close();
    worker.join();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let indexes: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'outbox_received_at'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexes, 0, "the secondary index is gone");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    // Straight to the current layout (2: with the quarantine table).
    assert_eq!(version, 2);
}

/// Waits until every quarantine move queued before it is committed: a drop of an id that
/// does not exist rides in the same or a later commit.
fn barrier(outbox: &Outbox, rt: &tokio::runtime::Runtime) {
    assert_eq!(
        rt.block_on(outbox.discard(u64::MAX)),
        Err(QuarantineError::NotFound(u64::MAX))
    );
}

#[test]
fn a_quarantined_entry_leaves_the_queue_is_kept_across_a_restart_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let cfg = config(1 << 20, FullPolicy::Reject);
    let rt = rt();
    let (outbox, worker) = Outbox::open(&path, &cfg).unwrap();
    let seqs = accept_all(&outbox, "c", 3);
    outbox.quarantine(seqs[1], "NotAuthorized".into(), 3);
    // Already delivered: nothing to move, nothing counted.
    outbox.ack(&[seqs[2]]);
    barrier(&outbox, &rt);
    outbox.quarantine(seqs[2], "late".into(), 1);
    barrier(&outbox, &rt);
    let stats = outbox.stats();
    assert_eq!(
        (stats.queued, stats.quarantined, stats.quarantined_total),
        (1, 1, 1)
    );
    assert!(stats.quarantined_bytes > 0);
    assert_eq!(
        super::tests::seqs(&outbox.fetch_after(0, 10).unwrap()),
        vec![seqs[0]]
    );
    outbox.close();
    worker.join();

    let (outbox, worker) = Outbox::open(&path, &cfg).unwrap();
    let listed = outbox.quarantined(0, 10).unwrap();
    assert_eq!(listed.len(), 1);
    let q = &listed[0];
    assert_eq!(
        (q.seq, q.reason.as_str(), q.attempts),
        (seqs[1], "NotAuthorized", 3)
    );
    assert_eq!(
        q.message,
        msg("c", "m1").with_received_at(q.message.received_at)
    );
    assert_eq!(outbox.stats().quarantined, 1, "loaded from the database");
    assert_eq!(outbox.stats().queued, 1);
    outbox.close();
    worker.join();
}

#[test]
fn a_requeued_entry_goes_to_the_end_of_the_queue_and_is_fed_a_dropped_one_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1 << 20, FullPolicy::Reject);
    let rt = rt();
    let (outbox, worker) = Outbox::open(&dir.path().join("o.db"), &cfg).unwrap();
    let seqs = accept_all(&outbox, "c", 3);
    let fed = outbox.take_fed(0, 100).expect("fed");
    assert_eq!(super::tests::seqs(&fed.entries), seqs);
    outbox.quarantine(seqs[0], "r".into(), 2);
    outbox.quarantine(seqs[1], "r".into(), 2);
    barrier(&outbox, &rt);
    let new = rt.block_on(outbox.requeue(seqs[0])).unwrap();
    assert!(new > seqs[2], "{new} after {seqs:?}");
    // Handed to the uplink from memory like a new message.
    let fed = outbox.take_fed(fed.through, 100).expect("fed");
    assert_eq!(super::tests::seqs(&fed.entries), vec![new]);
    assert_eq!(fed.entries[0].message.payload, Bytes::from("m0"));
    assert_eq!(
        rt.block_on(outbox.requeue(seqs[0])),
        Err(QuarantineError::NotFound(seqs[0])),
        "no longer quarantined"
    );
    assert_eq!(rt.block_on(outbox.discard(seqs[1])), Ok(seqs[1]));
    let stats = outbox.stats();
    assert_eq!(
        (
            stats.queued,
            stats.quarantined,
            stats.requeued_total,
            stats.discarded_total
        ),
        (2, 0, 1, 1)
    );
    assert_eq!(stats.quarantined_bytes, 0);
    assert_eq!(stats.last_seq, new);
    assert!(outbox.quarantined(0, 10).unwrap().is_empty());
    outbox.close();
    worker.join();
}

#[test]
fn the_quarantine_counts_against_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(1000, FullPolicy::Reject);
    let rt = rt();
    let (outbox, worker) = Outbox::open(&dir.path().join("o.db"), &cfg).unwrap();
    let big = "x".repeat(300);
    let mut seqs = Vec::new();
    for i in 0..3 {
        seqs.push(
            rt.block_on(outbox.accept(msg("c", &format!("{i}{big}"))).unwrap())
                .unwrap(),
        );
    }
    for s in &seqs {
        outbox.quarantine(*s, "r".into(), 1);
    }
    barrier(&outbox, &rt);
    assert_eq!(outbox.stats().queued, 0);
    assert!(matches!(
        outbox.accept(msg("c", &big)),
        Err(IngestError::Busy { .. })
    ));
    rt.block_on(outbox.discard(seqs[0])).unwrap();
    rt.block_on(outbox.accept(msg("c", &big)).unwrap()).unwrap();
    outbox.close();
    worker.join();
}

#[test]
fn an_outbox_of_the_previous_layout_gains_the_quarantine_and_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, client_id TEXT NOT NULL,
               channel_id TEXT NOT NULL, domain_id TEXT NOT NULL, subtopic TEXT NOT NULL,
               content_format TEXT, payload BLOB NOT NULL, received_at_ms INTEGER NOT NULL,
               size INTEGER NOT NULL);
             INSERT INTO outbox (client_id, channel_id, domain_id, subtopic, payload,
               received_at_ms, size) VALUES ('k', 'c', 'd', 't', X'6F6C64', 1, 3);
             PRAGMA user_version=1;",
        )
        .unwrap();
    }
    let cfg = config(1 << 20, FullPolicy::Reject);
    let rt = rt();
    let (outbox, worker) = Outbox::open(&path, &cfg).unwrap();
    assert_eq!(payloads(&outbox), vec!["old".to_owned()]);
    outbox.quarantine(1, "r".into(), 1);
    barrier(&outbox, &rt);
    assert_eq!(outbox.quarantined(0, 10).unwrap().len(), 1);
    outbox.close();
    worker.join();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
}

impl Message {
    fn with_received_at(mut self, t: SystemTime) -> Self {
        self.received_at = t;
        self
    }
}
