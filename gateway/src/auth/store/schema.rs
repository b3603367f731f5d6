//! `auth.db` schema: the embedded migrations, the read-only checks of an existing file, and
//! creating a fresh one atomically.

use super::*;

/// Marks the file as an edgegw auth store (`PRAGMA application_id`, "EGAU").
pub(super) const APPLICATION_ID: i32 = 0x4547_4155;

pub(super) const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Embedded migrations; `PRAGMA user_version` is the number applied. Append only.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE clients (
    id          TEXT PRIMARY KEY NOT NULL,
    identity    TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL DEFAULT '',
    secret      TEXT NOT NULL UNIQUE,
    enabled     INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    metadata    TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE channels (
    id          TEXT PRIMARY KEY NOT NULL,
    domain_id   TEXT NOT NULL DEFAULT '',
    name        TEXT NOT NULL UNIQUE,
    metadata    TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE connections (
    client_id   TEXT NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    channel_id  TEXT NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    publish     INTEGER NOT NULL CHECK (publish IN (0, 1)),
    subscribe   INTEGER NOT NULL CHECK (subscribe IN (0, 1)),
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (client_id, channel_id),
    CHECK (publish = 1 OR subscribe = 1)
) WITHOUT ROWID;
CREATE INDEX connections_channel ON connections(channel_id);
-- No foreign key to clients: the record of an issued or revoked certificate outlives its client.
CREATE TABLE certificates (
    serial_hex              TEXT PRIMARY KEY NOT NULL,
    client_id               TEXT NOT NULL,
    fingerprint_sha256_hex  TEXT NOT NULL,
    not_before              INTEGER NOT NULL,
    not_after               INTEGER NOT NULL,
    revoked_at              INTEGER
);
CREATE INDEX certificates_client ON certificates(client_id);
CREATE TABLE audit_events (
    id          INTEGER PRIMARY KEY,
    at_ms       INTEGER NOT NULL,
    method      TEXT NOT NULL,
    identity    TEXT,
    client_id   TEXT,
    remote      TEXT,
    outcome     TEXT NOT NULL
);
CREATE TABLE generation (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
INSERT INTO generation (id, value) VALUES (1, 0);
-- Every change the cache depends on bumps the generation (audit rows do not), so the daemon
-- reloads only when it matters.
CREATE TRIGGER clients_insert AFTER INSERT ON clients BEGIN UPDATE generation SET value = value + 1; END;
CREATE TRIGGER clients_update AFTER UPDATE ON clients BEGIN UPDATE generation SET value = value + 1; END;
CREATE TRIGGER clients_delete AFTER DELETE ON clients BEGIN UPDATE generation SET value = value + 1; END;
CREATE TRIGGER channels_insert AFTER INSERT ON channels BEGIN UPDATE generation SET value = value + 1; END;
CREATE TRIGGER channels_update AFTER UPDATE ON channels BEGIN UPDATE generation SET value = value + 1; END;
CREATE TRIGGER channels_delete AFTER DELETE ON channels BEGIN UPDATE generation SET value = value + 1; END;
CREATE TRIGGER connections_insert AFTER INSERT ON connections BEGIN UPDATE generation SET value = value + 1; END;
CREATE TRIGGER connections_update AFTER UPDATE ON connections BEGIN UPDATE generation SET value = value + 1; END;
CREATE TRIGGER connections_delete AFTER DELETE ON connections BEGIN UPDATE generation SET value = value + 1; END;
CREATE TRIGGER certificates_insert AFTER INSERT ON certificates BEGIN UPDATE generation SET value = value + 1; END;
CREATE TRIGGER certificates_update AFTER UPDATE ON certificates BEGIN UPDATE generation SET value = value + 1; END;
CREATE TRIGGER certificates_delete AFTER DELETE ON certificates BEGIN UPDATE generation SET value = value + 1; END;
"#,
    r#"
-- Management actions (API and CLI) share the audit table with authentication decisions: who
-- (`admin`, `pat:<id>`, `cli`, `anonymous`; never a secret), what, on which entity, and why
-- it was refused or failed. NULL for authentication decisions.
ALTER TABLE audit_events ADD COLUMN actor TEXT;
ALTER TABLE audit_events ADD COLUMN action TEXT;
ALTER TABLE audit_events ADD COLUMN entity_type TEXT;
ALTER TABLE audit_events ADD COLUMN entity_id TEXT;
ALTER TABLE audit_events ADD COLUMN reason TEXT;
"#,
    r#"
-- How many decisions a row stands for: successful authentications are summed per client x
-- remote x method and interval (the first at once with count 1, the rest in one row at the
-- end of the interval); failures and management actions are one row each (count 1).
ALTER TABLE audit_events ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
"#,
    r#"
-- The channel's identity on the upstream platform (SuperMQ's channel id), used in uplink
-- topics. Empty: the same as the local id (channels created before this column).
ALTER TABLE channels ADD COLUMN upstream_id TEXT NOT NULL DEFAULT '';
"#,
];

/// The migrations, for tests that build a store of an older schema.
#[cfg(test)]
pub fn migrations_for_tests() -> &'static [&'static str] {
    MIGRATIONS
}

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

impl Db {
    /// Read-only checks before the first write.
    pub(super) fn verify(&self) -> Result<(), StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        let check: String = self
            .conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if check != "ok" {
            return Err(corrupt(format!("integrity check failed: {check}")));
        }
        let app: i32 = self
            .conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if app != APPLICATION_ID && (app != 0 || version != 0) {
            return Err(corrupt(format!(
                "not an edgegw auth store (application_id {app:#x})"
            )));
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                path: self.path.clone(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(())
    }

    pub(super) fn migrate(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        // Up to date (the usual case): no write lock, so read-only CLI commands stay readers.
        let current: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| sqlite_at(&path, e))?;
        if current == SCHEMA_VERSION {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| sqlite_at(&path, e))?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| sqlite_at(&path, e))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                path,
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            tx.execute_batch(sql).map_err(|e| sqlite_at(&path, e))?;
            tx.execute_batch(&format!(
                "PRAGMA user_version = {}; PRAGMA application_id = {APPLICATION_ID};",
                i + 1
            ))
            .map_err(|e| sqlite_at(&path, e))?;
        }
        tx.commit().map_err(|e| sqlite_at(&path, e))
    }
}

/// Checks an existing file's header and length without opening it with SQLite.
pub(super) fn check_file(path: &Path) -> Result<(), StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Err(corrupt("the file is empty (truncated)".into()));
    }
    let mut header = [0u8; 100];
    if len < header.len() as u64 {
        return Err(corrupt(format!(
            "the file is truncated ({len} bytes, shorter than a SQLite header)"
        )));
    }
    file.read_exact(&mut header).map_err(io)?;
    if &header[..16] != SQLITE_MAGIC {
        return Err(corrupt("not a SQLite database (bad header)".into()));
    }
    let page_size = match u32::from(u16::from_be_bytes([header[16], header[17]])) {
        1 => 65_536,
        n => n,
    };
    if !(512..=65_536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(corrupt(format!("bad page size {page_size} in the header")));
    }
    let be32 = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let pages = u64::from(be32(28));
    let counts_valid = be32(24) == be32(92) && pages > 0;
    // A non-empty WAL may legitimately hold pages a checkpoint has not copied yet.
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal_empty = std::fs::metadata(PathBuf::from(wal)).map_or(true, |m| m.len() == 0);
    if wal_empty
        && (len % u64::from(page_size) != 0 || (counts_valid && len < pages * u64::from(page_size)))
    {
        return Err(corrupt(format!(
            "the file is truncated ({len} bytes; the header says {pages} pages of {page_size})"
        )));
    }
    Ok(())
}

/// Creates a fresh store atomically: build it under a temporary name, then link it into place
/// (never replacing a file another process created meanwhile).
pub(super) fn create(path: &Path, dir: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_default());
    tmp_name.push(format!(".new{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io)?;
        {
            let conn = Connection::open(&tmp).map_err(|e| sqlite_at(&tmp, e))?;
            conn.execute_batch("PRAGMA journal_mode = WAL;")
                .map_err(|e| sqlite_at(&tmp, e))?;
            let mut db = Db {
                conn,
                path: tmp.clone(),
            };
            db.migrate()?;
        }
        File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        File::open(dir).and_then(|f| f.sync_all()).map_err(io)
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}
