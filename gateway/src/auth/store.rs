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

use super::{AuthError, CertificateRecord, secret};

/// Marks the file as an edgegw auth store (`PRAGMA application_id`, "EGAU").
const APPLICATION_ID: i32 = 0x4547_4155;
/// How long a statement waits for another process's write lock (the CLI while the daemon runs).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Embedded migrations; `PRAGMA user_version` is the number applied. Append only.
const MIGRATIONS: &[&str] = &[
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

/// A client row. The secret is never serialized: only `client add` / `rotate-secret` show it,
/// explicitly.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Client {
    pub id: String,
    pub identity: String,
    pub name: String,
    #[serde(skip)]
    pub secret: String,
    #[serde(rename = "status", serialize_with = "status")]
    pub enabled: bool,
    pub metadata: serde_json::Value,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("identity", &self.identity)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

fn status<S: serde::Serializer>(enabled: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if *enabled { "enabled" } else { "disabled" })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Channel {
    pub id: String,
    pub name: String,
    pub domain_id: String,
    /// The channel's id on the upstream platform (uplink topics use it); the local id unless
    /// the channel was created with another one.
    pub upstream_id: String,
    pub metadata: serde_json::Value,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What [`Db::add_channel_as`] creates.
#[derive(Debug, Clone, Copy, Default)]
pub struct NewChannel<'a> {
    pub name: &'a str,
    pub domain_id: &'a str,
    pub metadata: Option<&'a str>,
    /// Caller-chosen local id (default: a new UUID).
    pub id: Option<&'a str>,
    /// The channel's id upstream (default: the local id).
    pub upstream_id: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub client_id: String,
    pub channel_id: String,
    pub publish: bool,
    pub subscribe: bool,
}

/// Everything the cache is built from, read in one transaction.
#[derive(Debug, Default)]
pub struct Tables {
    pub clients: Vec<Client>,
    pub channels: Vec<Channel>,
    pub connections: Vec<Grant>,
    pub certificates: Vec<CertificateRecord>,
    /// The change generation these rows are from.
    pub generation: i64,
}

/// One audit row: an authentication decision (written by the audit thread) or a management
/// action (`method` `api` or `cli`, with actor, action, entity and reason).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditEvent {
    pub at_ms: i64,
    pub method: &'static str,
    pub identity: Option<String>,
    pub client_id: Option<String>,
    pub remote: Option<String>,
    pub outcome: &'static str,
    /// Management actions: `admin`, `pat:<id>`, `cli` or `anonymous`.
    pub actor: Option<String>,
    /// Management actions: e.g. `client.create`, `key.rotate`.
    pub action: Option<String>,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    /// Why a management action was refused or failed: `unauthenticated`, `forbidden`,
    /// `invalid`, `not_found`, `conflict`, `throttled`, `error`, `timeout`.
    pub reason: Option<String>,
    /// How many decisions this row stands for (aggregated successful authentications; 0 is
    /// written as 1).
    pub count: u64,
}

impl AuditEvent {
    /// A management action by `actor` through `method` (`api` or `cli`).
    pub fn management(
        method: &'static str,
        actor: &str,
        action: &str,
        entity_type: &str,
        entity_id: Option<String>,
    ) -> Self {
        Self {
            at_ms: now_ms(),
            method,
            outcome: "ok",
            actor: Some(actor.to_owned()),
            action: Some(action.to_owned()),
            entity_type: Some(entity_type.to_owned()),
            entity_id,
            ..Self::default()
        }
    }
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
    pub fn open(path: &Path) -> Result<Db, AuthError> {
        let io = |source: std::io::Error| AuthError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        certs::files::ensure_private_dir(dir).map_err(|source| AuthError::Io {
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

    fn err(&self, e: rusqlite::Error) -> AuthError {
        sqlite_at(&self.path, e)
    }

    /// Read-only checks before the first write.
    fn verify(&self) -> Result<(), AuthError> {
        let corrupt = |reason: String| AuthError::Corrupt {
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
            return Err(AuthError::SchemaTooNew {
                path: self.path.clone(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(())
    }

    fn migrate(&mut self) -> Result<(), AuthError> {
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
            return Err(AuthError::SchemaTooNew {
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

    /// Another connection to a store [`Db::open`] already checked and migrated (the daemon's
    /// watcher and audit threads).
    pub fn attach(path: &Path) -> Result<Db, AuthError> {
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
    pub fn generation(&self) -> Result<i64, AuthError> {
        self.conn
            .query_row("SELECT value FROM generation WHERE id = 1", [], |r| {
                r.get(0)
            })
            .map_err(|e| self.err(e))
    }

    /// `PRAGMA data_version`: changes when another connection committed.
    pub fn data_version(&self) -> Result<i64, AuthError> {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Every table the cache needs, consistently (one read transaction).
    pub fn load(&mut self) -> Result<Tables, AuthError> {
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
            let mut st = tx.prepare(CLIENT_SELECT).map_err(e)?;
            t.clients = st
                .query_map([], client_row)
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

    // ---- clients ----

    /// Adds a client; the secret is generated when `secret` is `None`. Returns the row with
    /// its secret.
    pub fn add_client(
        &mut self,
        identity: &str,
        name: Option<&str>,
        secret: Option<&str>,
        metadata: Option<&str>,
    ) -> Result<Client, AuthError> {
        validate_identity(identity)?;
        let name = name.unwrap_or(identity);
        validate_text("name", name, 256)?;
        let secret = match secret {
            Some(s) => {
                secret::validate(s)?;
                s.to_owned()
            }
            None => secret::generate()?,
        };
        let metadata = parse_metadata(metadata)?;
        let now = now_unix();
        let id = secret::new_uuid()?;
        let result = self.conn.execute(
            "INSERT INTO clients (id, identity, name, secret, enabled, metadata, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?6)",
            params![id, identity, name, secret, metadata.to_string(), now],
        );
        match result {
            Ok(_) => {}
            Err(e) if is_unique(&e, "clients.identity") => {
                return Err(AuthError::Duplicate {
                    what: "client",
                    value: identity.to_owned(),
                });
            }
            Err(e) if is_unique(&e, "clients.secret") => {
                return Err(AuthError::Invalid(
                    "another client already uses this secret".into(),
                ));
            }
            Err(e) => return Err(self.err(e)),
        }
        self.client(identity)
    }

    pub fn list_clients(&self) -> Result<Vec<Client>, AuthError> {
        let mut st = self
            .conn
            .prepare(&format!("{CLIENT_SELECT} ORDER BY identity"))
            .map_err(|e| self.err(e))?;
        st.query_map([], client_row)
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// A client by id or identity (an id wins).
    pub fn client(&self, key: &str) -> Result<Client, AuthError> {
        self.conn
            .query_row(
                &format!(
                    "{CLIENT_SELECT} WHERE id = ?1 OR identity = ?1 ORDER BY id = ?1 DESC LIMIT 1"
                ),
                [key],
                client_row,
            )
            .optional()
            .map_err(|e| self.err(e))?
            .ok_or_else(|| AuthError::NotFound {
                what: "client",
                value: key.to_owned(),
            })
    }

    pub fn set_client_enabled(&mut self, key: &str, enabled: bool) -> Result<Client, AuthError> {
        let client = self.client(key)?;
        self.conn
            .execute(
                "UPDATE clients SET enabled = ?2, updated_at = ?3 WHERE id = ?1",
                params![client.id, enabled, now_unix()],
            )
            .map_err(|e| self.err(e))?;
        self.client(&client.id)
    }

    pub fn remove_client(&mut self, key: &str) -> Result<Client, AuthError> {
        let client = self.client(key)?;
        self.conn
            .execute("DELETE FROM clients WHERE id = ?1", [&client.id])
            .map_err(|e| self.err(e))?;
        Ok(client)
    }

    /// Changes a client's name and/or metadata (management API `PATCH /clients/{id}`).
    pub fn update_client(
        &mut self,
        key: &str,
        name: Option<&str>,
        metadata: Option<&str>,
    ) -> Result<Client, AuthError> {
        let client = self.client(key)?;
        let name = name.unwrap_or(&client.name);
        validate_text("name", name, 256)?;
        let metadata = match metadata {
            Some(m) => parse_metadata(Some(m))?,
            None => client.metadata.clone(),
        };
        self.conn
            .execute(
                "UPDATE clients SET name = ?2, metadata = ?3, updated_at = ?4 WHERE id = ?1",
                params![client.id, name, metadata.to_string(), now_unix()],
            )
            .map_err(|e| self.err(e))?;
        self.client(&client.id)
    }

    /// Replaces a client's secret (generated when `secret` is `None`); returns the row with the
    /// new secret.
    pub fn rotate_secret(&mut self, key: &str, secret: Option<&str>) -> Result<Client, AuthError> {
        let client = self.client(key)?;
        let secret = match secret {
            Some(s) => {
                secret::validate(s)?;
                s.to_owned()
            }
            None => secret::generate()?,
        };
        let result = self.conn.execute(
            "UPDATE clients SET secret = ?2, updated_at = ?3 WHERE id = ?1",
            params![client.id, secret, now_unix()],
        );
        match result {
            Ok(_) => self.client(&client.id),
            Err(e) if is_unique(&e, "clients.secret") => Err(AuthError::Invalid(
                "another client already uses this secret".into(),
            )),
            Err(e) => Err(self.err(e)),
        }
    }

    // ---- channels ----

    pub fn add_channel(
        &mut self,
        name: &str,
        domain_id: &str,
        metadata: Option<&str>,
    ) -> Result<Channel, AuthError> {
        self.add_channel_as(&NewChannel {
            name,
            domain_id,
            metadata,
            id: None,
            upstream_id: None,
        })
    }

    /// Creates a channel with a caller-chosen id and/or upstream channel id (a mirror of a
    /// SuperMQ channel); without them the id is a new UUID and the upstream id is the id.
    pub fn add_channel_as(&mut self, new: &NewChannel<'_>) -> Result<Channel, AuthError> {
        validate_channel_name(new.name)?;
        validate_domain(new.domain_id)?;
        let metadata = parse_metadata(new.metadata)?;
        let now = now_unix();
        let id = match new.id {
            Some(id) => {
                validate_channel_id("id", id)?;
                id.to_owned()
            }
            None => secret::new_uuid()?,
        };
        let upstream_id = match new.upstream_id {
            Some(up) => {
                validate_channel_id("upstream id", up)?;
                up.to_owned()
            }
            None => id.clone(),
        };
        let result = self.conn.execute(
            "INSERT INTO channels (id, domain_id, name, metadata, created_at, updated_at, upstream_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)",
            params![id, new.domain_id, new.name, metadata.to_string(), now, upstream_id],
        );
        match result {
            Ok(_) => self.channel(&id),
            Err(e) if is_unique(&e, "channels.name") => Err(AuthError::Duplicate {
                what: "channel",
                value: new.name.to_owned(),
            }),
            Err(e) if is_unique(&e, "channels.id") => Err(AuthError::Duplicate {
                what: "channel",
                value: id,
            }),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Sets a channel's name, domain and upstream id (bootstrap keeps mirrored channels in
    /// step with the platform). Unchanged values do not bump the change generation.
    pub fn update_channel_upstream(
        &mut self,
        key: &str,
        name: &str,
        domain_id: &str,
        upstream_id: &str,
    ) -> Result<Channel, AuthError> {
        validate_channel_name(name)?;
        validate_domain(domain_id)?;
        validate_channel_id("upstream id", upstream_id)?;
        let channel = self.channel(key)?;
        if channel.name == name
            && channel.domain_id == domain_id
            && channel.upstream_id == upstream_id
        {
            return Ok(channel);
        }
        let result = self.conn.execute(
            "UPDATE channels SET name = ?2, domain_id = ?3, upstream_id = ?4, updated_at = ?5
             WHERE id = ?1",
            params![channel.id, name, domain_id, upstream_id, now_unix()],
        );
        match result {
            Ok(_) => self.channel(&channel.id),
            Err(e) if is_unique(&e, "channels.name") => Err(AuthError::Duplicate {
                what: "channel",
                value: name.to_owned(),
            }),
            Err(e) => Err(self.err(e)),
        }
    }

    pub fn list_channels(&self) -> Result<Vec<Channel>, AuthError> {
        let mut st = self
            .conn
            .prepare(&format!("{CHANNEL_SELECT} ORDER BY name"))
            .map_err(|e| self.err(e))?;
        st.query_map([], channel_row)
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// A channel by id or name (an id wins).
    pub fn channel(&self, key: &str) -> Result<Channel, AuthError> {
        self.conn
            .query_row(
                &format!(
                    "{CHANNEL_SELECT} WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1"
                ),
                [key],
                channel_row,
            )
            .optional()
            .map_err(|e| self.err(e))?
            .ok_or_else(|| AuthError::NotFound {
                what: "channel",
                value: key.to_owned(),
            })
    }

    pub fn remove_channel(&mut self, key: &str) -> Result<Channel, AuthError> {
        let channel = self.channel(key)?;
        self.conn
            .execute("DELETE FROM channels WHERE id = ?1", [&channel.id])
            .map_err(|e| self.err(e))?;
        Ok(channel)
    }

    // ---- connections ----

    /// Grants `publish` and/or `subscribe` (added to what the client already has).
    pub fn connect(
        &mut self,
        client: &str,
        channel: &str,
        publish: bool,
        subscribe: bool,
    ) -> Result<Grant, AuthError> {
        if !publish && !subscribe {
            return Err(AuthError::Invalid(
                "connect needs publish and/or subscribe".into(),
            ));
        }
        let client = self.client(client)?;
        let channel = self.channel(channel)?;
        self.conn
            .execute(
                "INSERT INTO connections (client_id, channel_id, publish, subscribe, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (client_id, channel_id) DO UPDATE SET
                   publish = max(publish, excluded.publish),
                   subscribe = max(subscribe, excluded.subscribe)",
                params![client.id, channel.id, publish, subscribe, now_unix()],
            )
            .map_err(|e| self.err(e))?;
        self.connection(&client.id, &channel.id)?
            .ok_or_else(|| AuthError::NotFound {
                what: "connection",
                value: format!("{} → {}", client.identity, channel.name),
            })
    }

    /// Revokes `publish` and/or `subscribe`; the connection disappears when neither is left.
    /// Returns what remains.
    pub fn disconnect(
        &mut self,
        client: &str,
        channel: &str,
        publish: bool,
        subscribe: bool,
    ) -> Result<Option<Grant>, AuthError> {
        let client = self.client(client)?;
        let channel = self.channel(channel)?;
        let Some(existing) = self.connection(&client.id, &channel.id)? else {
            return Err(AuthError::NotFound {
                what: "connection",
                value: format!("{} → {}", client.identity, channel.name),
            });
        };
        let left_pub = existing.publish && !publish;
        let left_sub = existing.subscribe && !subscribe;
        if left_pub || left_sub {
            self.conn
                .execute(
                    "UPDATE connections SET publish = ?3, subscribe = ?4
                     WHERE client_id = ?1 AND channel_id = ?2",
                    params![client.id, channel.id, left_pub, left_sub],
                )
                .map_err(|e| self.err(e))?;
        } else {
            self.conn
                .execute(
                    "DELETE FROM connections WHERE client_id = ?1 AND channel_id = ?2",
                    params![client.id, channel.id],
                )
                .map_err(|e| self.err(e))?;
        }
        self.connection(&client.id, &channel.id)
    }

    fn connection(&self, client_id: &str, channel_id: &str) -> Result<Option<Grant>, AuthError> {
        self.conn
            .query_row(
                "SELECT client_id, channel_id, publish, subscribe FROM connections
                 WHERE client_id = ?1 AND channel_id = ?2",
                [client_id, channel_id],
                connection_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The connections of one client (`client show`), with channel names.
    pub fn connections_of(&self, client_id: &str) -> Result<Vec<(Channel, Grant)>, AuthError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT ch.id, ch.name, ch.domain_id, ch.metadata, ch.created_at, ch.updated_at,
                        ch.upstream_id, c.client_id, c.channel_id, c.publish, c.subscribe
                 FROM connections c JOIN channels ch ON ch.id = c.channel_id
                 WHERE c.client_id = ?1 ORDER BY ch.name",
            )
            .map_err(|e| self.err(e))?;
        st.query_map([client_id], |r| {
            Ok((
                channel_row(r)?,
                Grant {
                    client_id: r.get(7)?,
                    channel_id: r.get(8)?,
                    publish: r.get(9)?,
                    subscribe: r.get(10)?,
                },
            ))
        })
        .map_err(|e| self.err(e))?
        .collect::<Result<_, _>>()
        .map_err(|e| self.err(e))
    }

    // ---- certificates ----

    pub fn record_certificate(&mut self, rec: &CertificateRecord) -> Result<(), AuthError> {
        let serial = normalize_serial(&rec.serial_hex)?;
        let result = self.conn.execute(
            "INSERT INTO certificates
               (serial_hex, client_id, fingerprint_sha256_hex, not_before, not_after, revoked_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                serial,
                rec.client_id,
                rec.fingerprint_sha256_hex.to_ascii_lowercase(),
                rec.not_before,
                rec.not_after,
                rec.revoked_at
            ],
        );
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique(&e, "certificates.serial_hex") => Err(AuthError::Duplicate {
                what: "certificate serial",
                value: serial,
            }),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Revokes the certificate with this serial, or every unrevoked certificate of this client
    /// (id or identity). Returns the records revoked now.
    pub fn revoke_certificate(
        &mut self,
        target: &str,
    ) -> Result<Vec<CertificateRecord>, AuthError> {
        let now = now_unix();
        let serial = normalize_serial(target).ok();
        let by_serial = match &serial {
            Some(s) => self
                .conn
                .query_row(
                    &format!("{CERT_SELECT} WHERE serial_hex = ?1"),
                    [s],
                    cert_row,
                )
                .optional()
                .map_err(|e| self.err(e))?,
            None => None,
        };
        let targets: Vec<CertificateRecord> = match by_serial {
            Some(rec) => vec![rec],
            None => {
                let client = self.client(target).map_err(|_| AuthError::NotFound {
                    what: "certificate or client",
                    value: target.to_owned(),
                })?;
                let mut st = self
                    .conn
                    .prepare(&format!("{CERT_SELECT} WHERE client_id = ?1"))
                    .map_err(|e| self.err(e))?;
                st.query_map([&client.id], cert_row)
                    .map_err(|e| self.err(e))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| self.err(e))?
            }
        };
        let mut revoked = Vec::new();
        for mut rec in targets.into_iter().filter(|r| r.revoked_at.is_none()) {
            self.conn
                .execute(
                    "UPDATE certificates SET revoked_at = ?2 WHERE serial_hex = ?1",
                    params![rec.serial_hex, now],
                )
                .map_err(|e| self.err(e))?;
            rec.revoked_at = Some(now);
            revoked.push(rec);
        }
        Ok(revoked)
    }

    pub fn list_certificates(&self) -> Result<Vec<CertificateRecord>, AuthError> {
        let mut st = self
            .conn
            .prepare(&format!("{CERT_SELECT} ORDER BY not_before, serial_hex"))
            .map_err(|e| self.err(e))?;
        st.query_map([], cert_row)
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    // ---- audit ----

    /// Appends a batch in one transaction, then rotates out all but the newest `keep` events.
    pub fn append_audit(&mut self, events: &[AuditEvent], keep: u64) -> Result<(), AuthError> {
        let path = self.path.clone();
        let e = |e| sqlite_at(&path, e);
        let tx = self.conn.transaction().map_err(e)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO audit_events (at_ms, method, identity, client_id, remote, outcome,
                                               actor, action, entity_type, entity_id, reason,
                                               count)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )
                .map_err(e)?;
            for ev in events {
                st.execute(params![
                    ev.at_ms,
                    ev.method,
                    ev.identity,
                    ev.client_id,
                    ev.remote,
                    ev.outcome,
                    ev.actor,
                    ev.action,
                    ev.entity_type,
                    ev.entity_id,
                    ev.reason,
                    i64::try_from(ev.count.max(1)).unwrap_or(i64::MAX)
                ])
                .map_err(e)?;
            }
            tx.execute(
                "DELETE FROM audit_events WHERE id <= (SELECT max(id) FROM audit_events) - ?1",
                [i64::try_from(keep).unwrap_or(i64::MAX)],
            )
            .map_err(e)?;
        }
        tx.commit().map_err(e)
    }

    /// The newest `limit` audit events, newest first.
    pub fn recent_audit(&self, limit: u32) -> Result<Vec<AuditEvent>, AuthError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT at_ms, method, identity, client_id, remote, outcome,
                        actor, action, entity_type, entity_id, reason, count FROM audit_events
                 ORDER BY id DESC LIMIT ?1",
            )
            .map_err(|e| self.err(e))?;
        st.query_map([limit], |r| {
            Ok(AuditEvent {
                at_ms: r.get(0)?,
                method: intern(&r.get::<_, String>(1)?),
                identity: r.get(2)?,
                client_id: r.get(3)?,
                remote: r.get(4)?,
                outcome: intern(&r.get::<_, String>(5)?),
                actor: r.get(6)?,
                action: r.get(7)?,
                entity_type: r.get(8)?,
                entity_id: r.get(9)?,
                reason: r.get(10)?,
                count: u64::try_from(r.get::<_, i64>(11)?).unwrap_or(1),
            })
        })
        .map_err(|e| self.err(e))?
        .collect::<Result<_, _>>()
        .map_err(|e| self.err(e))
    }

    pub fn audit_count(&self) -> Result<i64, AuthError> {
        self.conn
            .query_row("SELECT count(*) FROM audit_events", [], |r| r.get(0))
            .map_err(|e| self.err(e))
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
            .map_err(|e| self.err(e))?;
        let result = self.create_demo(identity, channel, domain_id);
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        self.conn.execute_batch(end).map_err(|e| self.err(e))?;
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

/// Maps the audit strings read back to the static names the writer uses.
fn intern(s: &str) -> &'static str {
    const NAMES: &[&str] = &[
        "secret",
        "identity",
        "certificate",
        "ok",
        "unknown_identity",
        "bad_secret",
        "client_disabled",
        "cert_unknown",
        "cert_revoked",
        "cert_expired",
        "throttled",
        "api",
        "cli",
        "refused",
        "failed",
    ];
    NAMES.iter().find(|n| **n == s).copied().unwrap_or("other")
}

const CLIENT_SELECT: &str =
    "SELECT id, identity, name, secret, enabled, metadata, created_at, updated_at FROM clients";
const CHANNEL_SELECT: &str =
    "SELECT id, name, domain_id, metadata, created_at, updated_at, upstream_id FROM channels";
const CERT_SELECT: &str = "SELECT serial_hex, client_id, fingerprint_sha256_hex, not_before, \
                           not_after, revoked_at FROM certificates";

fn json_column(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<serde_json::Value> {
    let text: String = r.get(i)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn client_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Client> {
    Ok(Client {
        id: r.get(0)?,
        identity: r.get(1)?,
        name: r.get(2)?,
        secret: r.get(3)?,
        enabled: r.get(4)?,
        metadata: json_column(r, 5)?,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

fn channel_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Channel> {
    let id: String = r.get(0)?;
    let upstream_id: String = r.get(6)?;
    Ok(Channel {
        upstream_id: if upstream_id.is_empty() {
            id.clone()
        } else {
            upstream_id
        },
        id,
        name: r.get(1)?,
        domain_id: r.get(2)?,
        metadata: json_column(r, 3)?,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
    })
}

fn connection_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Grant> {
    Ok(Grant {
        client_id: r.get(0)?,
        channel_id: r.get(1)?,
        publish: r.get(2)?,
        subscribe: r.get(3)?,
    })
}

fn cert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CertificateRecord> {
    Ok(CertificateRecord {
        serial_hex: r.get(0)?,
        client_id: r.get(1)?,
        fingerprint_sha256_hex: r.get(2)?,
        not_before: r.get(3)?,
        not_after: r.get(4)?,
        revoked_at: r.get(5)?,
    })
}

fn is_unique(e: &rusqlite::Error, column: &str) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, Some(msg))
        if f.code == ErrorCode::ConstraintViolation && msg.contains(column))
}

/// A SQLite error at `path`: corruption and "not a database" become [`AuthError::Corrupt`].
pub fn sqlite_at(path: &Path, e: rusqlite::Error) -> AuthError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && matches!(f.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    {
        return AuthError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        };
    }
    AuthError::Sqlite {
        path: path.to_owned(),
        source: e,
    }
}

/// Checks an existing file's header and length without opening it with SQLite.
fn check_file(path: &Path) -> Result<(), AuthError> {
    let corrupt = |reason: String| AuthError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let io = |source| AuthError::Io {
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
fn create(path: &Path, dir: &Path) -> Result<(), AuthError> {
    let io = |source| AuthError::Io {
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

/// Serial numbers: hex, lowercase, no colons, no leading zero bytes beyond one.
pub fn normalize_serial(s: &str) -> Result<String, AuthError> {
    let hex: String = s
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.is_empty() || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AuthError::Invalid(format!(
            "`{s}` is not a hexadecimal serial number"
        )));
    }
    Ok(hex)
}

fn validate_text(what: &str, value: &str, max: usize) -> Result<(), AuthError> {
    if value.len() > max {
        return Err(AuthError::Invalid(format!(
            "the {what} is too long (at most {max} bytes)"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(AuthError::Invalid(format!(
            "the {what} must not contain control characters"
        )));
    }
    Ok(())
}

/// Identities travel as DTLS-PSK identity, certificate CN and in serial `AUTH` lines.
pub fn validate_identity(identity: &str) -> Result<(), AuthError> {
    if identity.is_empty() || identity.len() > 128 {
        return Err(AuthError::Invalid(
            "the identity must be 1 to 128 bytes".into(),
        ));
    }
    if identity
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(AuthError::Invalid(format!(
            "the identity `{}` must not contain spaces or control characters",
            identity.escape_debug()
        )));
    }
    Ok(())
}

/// Channel names appear in CoAP paths, serial `PUB` lines and MQTT topics.
pub fn validate_channel_name(name: &str) -> Result<(), AuthError> {
    if name.is_empty() || name.len() > 128 {
        return Err(AuthError::Invalid(
            "the channel name must be 1 to 128 bytes".into(),
        ));
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '+' | '#' | '?'))
    {
        return Err(AuthError::Invalid(format!(
            "the channel name `{}` must not contain spaces, '/', '+', '#' or '?'",
            name.escape_debug()
        )));
    }
    Ok(())
}

/// A channel id chosen by the caller (or an upstream channel id): it becomes an MQTT topic
/// level, so 1 to 64 bytes of letters, digits, `-` and `_` (a UUID fits).
pub fn validate_channel_id(what: &str, id: &str) -> Result<(), AuthError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(AuthError::Invalid(format!(
            "the channel {what} `{}` must be 1 to 64 bytes of letters, digits, '-' or '_' (a SuperMQ channel id is a UUID)",
            id.escape_debug()
        )));
    }
    Ok(())
}

fn validate_domain(domain: &str) -> Result<(), AuthError> {
    if domain.len() > 128
        || domain
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '+' | '#'))
    {
        return Err(AuthError::Invalid(format!(
            "the domain id `{}` must be at most 128 bytes without spaces, '/', '+' or '#'",
            domain.escape_debug()
        )));
    }
    Ok(())
}

/// Metadata: a JSON object of at most 64 KiB (`{}` when absent).
pub fn parse_metadata(text: Option<&str>) -> Result<serde_json::Value, AuthError> {
    let Some(text) = text else {
        return Ok(serde_json::Value::Object(serde_json::Map::new()));
    };
    if text.len() > 64 * 1024 {
        return Err(AuthError::Invalid(
            "the metadata is larger than 64 KiB".into(),
        ));
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        Ok(_) => Err(AuthError::Invalid(
            "the metadata must be a JSON object".into(),
        )),
        Err(e) => Err(AuthError::Invalid(format!(
            "the metadata is not valid JSON: {e}"
        ))),
    }
}
