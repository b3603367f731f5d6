//! `auth.db`: the SQLite file behind the auth store. Owns opening (refusing a corrupt,
//! truncated or too-new file without writing to it), the embedded migrations, and every
//! read/write statement. Synchronous: the CLI uses it directly; the daemon's [`super::AuthStore`]
//! uses it from its own threads, never from async workers.

use std::fs::{File, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension as _, params};
use serde::Serialize;

use super::{AuthError, CertificateRecord, Invalid, StoreError, secret};

mod audit;
mod certificates;
mod channels;
mod clients;
mod connections;
mod schema;
mod validate;

pub use audit::AuditEvent;
pub use channels::{Channel, NewChannel};
pub use clients::{AuthClient, Client, NewClient};
pub use connections::Grant;
pub use schema::SCHEMA_VERSION;
#[cfg(test)]
pub use schema::migrations_for_tests;
pub use validate::{
    MAX_TAG_LEN, MAX_TAGS, normalize_serial, parse_metadata, validate_channel_id,
    validate_channel_name, validate_client_id, validate_identity, validate_tags,
};

use certificates::{CERT_SELECT, cert_row};
use channels::{CHANNEL_SELECT, channel_row};
use clients::{AUTH_CLIENT_SELECT, auth_client_row};
use connections::connection_row;
use schema::{check_file, create};
use validate::{validate_domain, validate_text};

/// How long a statement waits for another process's write lock (the CLI while the daemon runs).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything the cache is built from, read in one transaction.
#[derive(Debug, Default)]
pub struct Tables {
    pub clients: Vec<AuthClient>,
    pub channels: Vec<Channel>,
    pub connections: Vec<Grant>,
    pub certificates: Vec<CertificateRecord>,
    /// The change generation these rows are from.
    pub generation: i64,
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Unix seconds now.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `2026-12-02T00:47:45Z`: how the management API and the CLI's `--json` show a time stored as
/// unix seconds (SuperMQ's JSON times are RFC 3339 strings: Go's `time.Time`). Out of range →
/// the integer as text, never a panic.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// [`rfc3339`] for unix milliseconds (`2026-12-02T00:47:45.123Z`).
pub fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// `serialize_with` for a unix-seconds field shown as [`rfc3339`].
pub fn serialize_rfc3339<S: serde::Serializer>(unix: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*unix))
}

/// An open `auth.db`.
#[derive(Debug)]
pub struct Db {
    conn: Connection,
    path: PathBuf,
}

impl Db {
    /// Opens `path`, creating it (0600, parent 0700) if missing. An existing file is checked
    /// before anything is written: not SQLite, truncated, failing `quick_check`, foreign, or a
    /// newer schema → refused with an error naming the file, the file untouched.
    pub fn open(path: &Path) -> Result<Db, StoreError> {
        let io = |source: std::io::Error| StoreError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        certs::files::ensure_private_dir(dir).map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        match std::fs::metadata(path) {
            Ok(_) => check_file(path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path, dir)?,
            Err(e) => return Err(io(e)),
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sqlite_at(path, e))?;
        let mut db = Db {
            conn,
            path: path.to_owned(),
        };
        db.conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| db.err(e))?;
        db.verify()?;
        db.conn
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; \
                 PRAGMA journal_size_limit = 1048576; PRAGMA wal_autocheckpoint = 256; \
                 PRAGMA cache_size = -512;",
            )
            .map_err(|e| db.err(e))?;
        db.migrate()?;
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        sqlite_at(&self.path, e)
    }

    /// [`Db::err`] for the management operations, which answer [`AuthError`].
    fn fail(&self, e: rusqlite::Error) -> AuthError {
        self.err(e).into()
    }

    /// Every row `sql` selects, mapped by `row` (the management listings).
    fn rows<T>(
        &self,
        sql: &str,
        row: fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, AuthError> {
        let mut st = self.conn.prepare(sql).map_err(|e| self.fail(e))?;
        st.query_map([], row)
            .map_err(|e| self.fail(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.fail(e))
    }

    /// The one row of `select` (a `SELECT … FROM table`) whose `id` or `name_column` is `key`,
    /// an id winning over a name; [`AuthError::NotFound`] naming `what` otherwise.
    fn by_id_or_name<T>(
        &self,
        select: &str,
        name_column: &str,
        key: &str,
        what: &'static str,
        row: fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, AuthError> {
        let sql =
            format!("{select} WHERE id = ?1 OR {name_column} = ?1 ORDER BY id = ?1 DESC LIMIT 1");
        self.conn
            .query_row(&sql, [key], row)
            .optional()
            .map_err(|e| self.fail(e))?
            .ok_or_else(|| AuthError::NotFound {
                what,
                value: key.to_owned(),
            })
    }

    /// Another connection to a store [`Db::open`] already checked and migrated (the daemon's
    /// watcher and audit threads).
    pub fn attach(path: &Path) -> Result<Db, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sqlite_at(path, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| sqlite_at(path, e))?;
        conn.execute_batch("PRAGMA foreign_keys = ON;")
            .map_err(|e| sqlite_at(path, e))?;
        Ok(Db {
            conn,
            path: path.to_owned(),
        })
    }

    /// Bumped by triggers on every change to clients, channels, connections or certificates.
    pub fn generation(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT value FROM generation WHERE id = 1", [], |r| {
                r.get(0)
            })
            .map_err(|e| self.err(e))
    }

    /// `PRAGMA data_version`: changes when another connection committed.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Every table the cache needs, consistently (one read transaction).
    pub fn load(&mut self) -> Result<Tables, StoreError> {
        let path = self.path.clone();
        let e = |e| sqlite_at(&path, e);
        let tx = self.conn.transaction().map_err(e)?;
        let mut t = Tables::default();
        {
            t.generation = tx
                .query_row("SELECT value FROM generation WHERE id = 1", [], |r| {
                    r.get(0)
                })
                .map_err(e)?;
            let mut st = tx.prepare(AUTH_CLIENT_SELECT).map_err(e)?;
            t.clients = st
                .query_map([], auth_client_row)
                .map_err(e)?
                .collect::<Result<_, _>>()
                .map_err(e)?;
            let mut st = tx.prepare(CHANNEL_SELECT).map_err(e)?;
            t.channels = st
                .query_map([], channel_row)
                .map_err(e)?
                .collect::<Result<_, _>>()
                .map_err(e)?;
            let mut st = tx
                .prepare("SELECT client_id, channel_id, publish, subscribe FROM connections")
                .map_err(e)?;
            t.connections = st
                .query_map([], connection_row)
                .map_err(e)?
                .collect::<Result<_, _>>()
                .map_err(e)?;
            let mut st = tx.prepare(CERT_SELECT).map_err(e)?;
            t.certificates = st
                .query_map([], cert_row)
                .map_err(e)?
                .collect::<Result<_, _>>()
                .map_err(e)?;
        }
        tx.commit().map_err(e)?;
        Ok(t)
    }

    /// The development profile's demo sensor: created with channel `demo` (publish and
    /// subscribe) when the client `identity` does not exist yet. Returns the secret only when
    /// it was created now.
    pub fn ensure_demo(
        &mut self,
        identity: &str,
        channel: &str,
        domain_id: &str,
    ) -> Result<Option<String>, AuthError> {
        // One transaction: a failure half-way leaves no demo client without its channel.
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| self.fail(e))?;
        let result = self.create_demo(identity, channel, domain_id);
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        self.conn.execute_batch(end).map_err(|e| self.fail(e))?;
        result
    }

    fn create_demo(
        &mut self,
        identity: &str,
        channel: &str,
        domain_id: &str,
    ) -> Result<Option<String>, AuthError> {
        match self.client(identity) {
            Ok(_) => return Ok(None),
            Err(AuthError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let client = self.add_client(
            identity,
            Some("demo sensor (development profile)"),
            None,
            None,
        )?;
        match self.channel(channel) {
            Ok(_) => {}
            Err(AuthError::NotFound { .. }) => {
                self.add_channel(channel, domain_id, None)?;
            }
            Err(e) => return Err(e),
        }
        self.connect(&client.id, channel, true, true)?;
        Ok(Some(client.secret))
    }
}

fn json_column(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<serde_json::Value> {
    let text: String = r.get(i)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Tags as stored: a JSON array of strings.
fn tags_text(tags: &[String]) -> String {
    serde_json::to_string(tags).unwrap_or_else(|_| "[]".to_owned())
}

fn tags_column(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Vec<String>> {
    let text: String = r.get(i)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn is_unique(e: &rusqlite::Error, column: &str) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, Some(msg))
        if f.code == ErrorCode::ConstraintViolation && msg.contains(column))
}

/// A SQLite error at `path`: corruption and "not a database" become [`StoreError::Corrupt`].
pub fn sqlite_at(path: &Path, e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && matches!(f.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    {
        return StoreError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        };
    }
    StoreError::Sqlite {
        path: path.to_owned(),
        source: e,
    }
}
