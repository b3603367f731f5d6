//! Standalone-mode local auth store: clients (sensors), channels, connections, device
//! certificates and the audit trail, in `<state_dir>/auth.db` (SQLite, WAL).
//!
//! Every decision (`authenticate*`, `authorize`, `psk_for_identity`) is answered from an
//! immutable in-memory [`cache::Snapshot`], without I/O. A watcher thread polls
//! `PRAGMA data_version` and reloads the snapshot when another process (the CLI) changed the
//! store, so changes take effect within [`POLL_INTERVAL`]. Audit events go to a bounded queue
//! and are written in batches by their own thread; nothing here blocks an async worker except
//! the certificate calls, which are rare and short (call them from `spawn_blocking` in hot
//! paths). This module never logs a secret.

mod audit;
pub mod cache;
pub mod cli;
mod error;
pub mod secret;
pub mod store;
pub mod throttle;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tracing::{debug, info, warn};

use crate::config::AuthConfig;
pub use cache::Snapshot;
pub use error::{AuthError, Denied, Invalid, StoreError};
use store::{AuditEvent, Db};
pub use throttle::Throttled;

/// How often the watcher asks SQLite whether another connection changed the store.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The auth store's file name in the state directory.
pub const FILE_NAME: &str = "auth.db";

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientRef {
    pub id: String,
    pub identity: String,
}

/// A channel a client may use.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ChannelRef {
    pub id: String,
    pub name: String,
    pub domain_id: String,
    /// The channel's id on the upstream platform: what uplink topics carry.
    pub upstream_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Publish,
    Subscribe,
}

/// An issued device certificate (issue 5 records them; revocation marks them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateRecord {
    /// Lowercase hex, no colons.
    pub serial_hex: String,
    pub client_id: String,
    pub fingerprint_sha256_hex: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub revoked_at: Option<i64>,
}

/// The auth store handle: cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct AuthStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AuthStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

struct Inner {
    path: PathBuf,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Writes by this process (certificates); also serializes reload-after-write.
    writer: Mutex<Db>,
    /// Held while loading and installing a snapshot, so installs happen in load order.
    install: Mutex<()>,
    subscribed: watch::Sender<Arc<Vec<ChannelRef>>>,
    /// Every channel (local id → upstream identity for uplink topics).
    directory: watch::Sender<Arc<Vec<ChannelRef>>>,
    /// The generation of every installed snapshot: adapters re-check live subscriptions.
    changes: watch::Sender<i64>,
    revocations: broadcast::Sender<CertificateRecord>,
    throttle: Mutex<throttle::AuthThrottle>,
    audit: Option<audit::Audit>,
    /// Dropping it stops the watcher thread.
    _stop_watcher: std::sync::mpsc::Sender<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Untrusted text for logs and the audit table: bounded and escaped.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(64).flat_map(char::escape_debug).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl AuthStore {
    /// Opens/creates `path` (0600, parent 0700), applies migrations, refuses a newer schema or
    /// a corrupt/truncated file (naming it, never altering it), loads the cache and starts the
    /// change watcher and the audit writer.
    pub fn open(path: &Path, config: &AuthConfig) -> Result<AuthStore, StoreError> {
        let mut db = Db::open(path)?;
        let snapshot = Snapshot::build(db.load()?);
        let watcher_db = Db::attach(path)?;
        let audit = match config.audit_max_events {
            0 => None,
            keep => Some(audit::Audit::start(path, keep)?),
        };
        let (subscribed, _) = watch::channel(Arc::new(snapshot.subscribed.clone()));
        let (directory, _) = watch::channel(Arc::new(snapshot.directory()));
        let (changes, _) = watch::channel(snapshot.generation);
        let (revocations, _) = broadcast::channel(64);
        let (stop_tx, stop_rx) = std::sync::mpsc::channel();
        let max_tracked = config.throttle_max_tracked as usize;
        let inner = Arc::new(Inner {
            path: path.to_owned(),
            snapshot: RwLock::new(Arc::new(snapshot)),
            writer: Mutex::new(db),
            install: Mutex::new(()),
            subscribed,
            directory,
            changes,
            revocations,
            throttle: Mutex::new(throttle::AuthThrottle::new(
                config.failure_burst,
                config.failure_refill.get(),
                max_tracked,
            )),
            audit,
            _stop_watcher: stop_tx,
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("edgegw-authwatch".into())
            .spawn(move || watch_loop(&weak, watcher_db, &stop_rx))
            .map_err(|source| StoreError::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(AuthStore { inner })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The current snapshot (for counts and tests).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.current()
    }

    /// By identity and secret (serial `AUTH`, CoAP `username=&password=`).
    pub fn authenticate(&self, identity: &str, secret: &[u8]) -> Result<ClientRef, Denied> {
        self.authenticate_from(None, identity, secret)
    }

    /// As [`Self::authenticate`], charging failures to `remote` as well as the identity.
    pub fn authenticate_from(
        &self,
        remote: Option<IpAddr>,
        identity: &str,
        secret: &[u8],
    ) -> Result<ClientRef, Denied> {
        self.concluded_identity(
            remote,
            identity,
            self.snapshot().authenticate(identity, secret),
        )
    }

    /// What [`Self::authenticate_from`] does once it has decided: audit, log, charge the
    /// throttle (a failure) or trust the pair (a success). For a caller that decided against
    /// [`Self::snapshot`] itself (the intake, which looks at the result before the throttle
    /// lets it count), so the secret is compared once.
    pub fn concluded_identity(
        &self,
        remote: Option<IpAddr>,
        identity: &str,
        result: Result<ClientRef, Denied>,
    ) -> Result<ClientRef, Denied> {
        self.conclude("identity", remote, Some(identity), &result);
        result
    }

    /// By secret alone (SuperMQ `auth=<secret>`).
    pub fn authenticate_secret(&self, secret: &[u8]) -> Result<ClientRef, Denied> {
        self.authenticate_secret_from(None, secret)
    }

    pub fn authenticate_secret_from(
        &self,
        remote: Option<IpAddr>,
        secret: &[u8],
    ) -> Result<ClientRef, Denied> {
        self.concluded_secret(remote, self.snapshot().authenticate_secret(secret))
    }

    /// As [`Self::concluded_identity`], for an authentication by secret alone.
    pub fn concluded_secret(
        &self,
        remote: Option<IpAddr>,
        result: Result<ClientRef, Denied>,
    ) -> Result<ClientRef, Denied> {
        self.conclude("secret", remote, None, &result);
        result
    }

    /// By a verified client certificate: known enabled client (CN = identity), this very
    /// certificate (serial and SHA-256 fingerprint of the DER) recorded for it, not revoked,
    /// within validity.
    pub fn authenticate_certificate(
        &self,
        cn: &str,
        serial_hex: &str,
        fingerprint_sha256_hex: &str,
    ) -> Result<ClientRef, Denied> {
        self.authenticate_certificate_from(None, cn, serial_hex, fingerprint_sha256_hex)
    }

    pub fn authenticate_certificate_from(
        &self,
        remote: Option<IpAddr>,
        cn: &str,
        serial_hex: &str,
        fingerprint_sha256_hex: &str,
    ) -> Result<ClientRef, Denied> {
        let result = self.snapshot().authenticate_certificate(
            cn,
            serial_hex,
            Some(fingerprint_sha256_hex),
            store::now_unix(),
        );
        self.conclude("certificate", remote, Some(cn), &result);
        result
    }

    /// An enabled client's raw secret: the DTLS-PSK key for `identity`.
    pub fn psk_for_identity(&self, identity: &str) -> Option<Vec<u8>> {
        self.snapshot().psk_for_identity(identity)
    }

    /// May `client` do `op` on `channel` (id or local name)? Checks the client is still present
    /// and enabled, so a client disabled or removed is refused from its next message on.
    pub fn authorize(
        &self,
        client: &ClientRef,
        channel: &str,
        op: Op,
    ) -> Result<Arc<ChannelRef>, Denied> {
        self.snapshot().authorize(client, channel, op)
    }

    /// Channels with at least one subscribe connection (the uplink subscribes to their
    /// downlink topics); updated whenever the store changes.
    pub fn subscribed_channels(&self) -> watch::Receiver<Arc<Vec<ChannelRef>>> {
        self.inner.subscribed.subscribe()
    }

    /// Every channel with its upstream domain and id; updated whenever the store changes.
    pub fn channel_directory(&self) -> watch::Receiver<Arc<Vec<ChannelRef>>> {
        self.inner.directory.subscribe()
    }

    /// Fires on every change of the store (a new snapshot): live downlink subscriptions are
    /// re-checked against it, so a revoked grant stops deliveries at once.
    pub fn changes(&self) -> watch::Receiver<i64> {
        self.inner.changes.subscribe()
    }

    /// Ok unless `remote` or `identity` used up its failed-authentication budget (the
    /// identity's budget does not stop an address it authenticated from recently).
    pub fn throttle_check(
        &self,
        remote: Option<IpAddr>,
        identity: Option<&str>,
    ) -> Result<(), Throttled> {
        self.throttle_check_at(remote, identity, Instant::now())
    }

    /// Whether `identity` authenticated from `remote` recently (see `throttle`): such a pair
    /// is let through a throttled address when its credentials prove right.
    pub fn is_trusted_pair(&self, remote: IpAddr, identity: &str) -> bool {
        lock(&self.inner.throttle).is_trusted_pair(remote, identity, Instant::now())
    }

    /// The throttle decision for a DTLS-PSK handshake from `remote` naming `identity`, taken
    /// at its key exchange (the cookie exchange proved the address): a pair that authenticated
    /// from there recently passes while its own failed handshakes stay within the burst, so
    /// junk spoofed over plain CoAP from the sensor's address does not delay its handshake;
    /// anything else as [`Self::throttle_check`].
    pub fn psk_throttle_check(&self, remote: IpAddr, identity: &str) -> Result<(), Throttled> {
        lock(&self.inner.throttle).check_proven(remote, identity, Instant::now())
    }

    fn throttle_check_at(
        &self,
        remote: Option<IpAddr>,
        identity: Option<&str>,
        now: Instant,
    ) -> Result<(), Throttled> {
        lock(&self.inner.throttle).check(remote, identity, now)
    }

    /// A DTLS-PSK handshake that failed on its key (or named an unknown identity) from
    /// `remote`: audited and charged to the throttle like any other failed authentication.
    pub fn psk_failed_from(&self, remote: IpAddr, identity: &str) {
        // The key itself is not known here: an empty secret (never a client's) tells a known
        // identity (BadSecret, its bucket is charged) from an unknown one.
        let result = match self.snapshot().authenticate(identity, &[]) {
            Ok(_) => Err(Denied::BadSecret),
            Err(e) => Err(e),
        };
        self.conclude("psk", Some(remote), Some(identity), &result);
        if matches!(result, Err(Denied::BadSecret)) {
            // Past the cookie exchange: this failure is the pair's own (see `throttle`).
            lock(&self.inner.throttle).proven_pair_failure(remote, identity, Instant::now());
        }
    }

    /// A DTLS-PSK handshake whose key proved right, from `remote`: the client if it is
    /// still known and enabled (audited as a success, and the pair becomes trusted).
    pub fn psk_succeeded_from(&self, remote: IpAddr, identity: &str) -> Option<ClientRef> {
        let key = self.psk_for_identity(identity)?;
        let result = self.snapshot().authenticate(identity, &key);
        self.conclude("psk", Some(remote), Some(identity), &result);
        result.ok()
    }

    /// Audit, log and charge the throttle (failures), or trust the address (successes).
    /// Failures from sources that have not authenticated recently are audited in sums
    /// (see `audit`), so a flood of them cannot rotate the table.
    fn conclude(
        &self,
        method: &'static str,
        remote: Option<IpAddr>,
        identity: Option<&str>,
        result: &Result<ClientRef, Denied>,
    ) {
        let mut trusted_source = false;
        let outcome = match result {
            Ok(client) => {
                debug!(method, identity = %client.identity, remote = ?remote, "authenticated");
                if remote.is_some() {
                    lock(&self.inner.throttle).success(remote, &client.identity, Instant::now());
                }
                "ok"
            }
            Err(e) => {
                let shown_identity = identity.map(shown);
                info!(method, identity = ?shown_identity, remote = ?remote, reason = %e,
                    "authentication refused");
                if identity.is_some() || remote.is_some() {
                    let now = Instant::now();
                    let mut t = lock(&self.inner.throttle);
                    // An unknown identity gets no bucket of its own: made-up names would
                    // only fill the table (the address is still charged).
                    let known = identity.filter(|_| !matches!(e, Denied::UnknownIdentity));
                    t.failure(remote, known, now);
                    trusted_source = remote.is_some_and(|ip| t.is_trusted_source(ip, now));
                }
                e.outcome()
            }
        };
        match (&self.inner.audit, result) {
            (None, _) => {}
            // Aggregated per client × remote × method and interval (see `audit`).
            (Some(audit), Ok(c)) => audit.record_success(method, &c.id, &c.identity, remote),
            (Some(audit), Err(_)) => {
                let event = AuditEvent {
                    at_ms: now_ms(),
                    method,
                    identity: identity.map(shown),
                    client_id: None,
                    remote: remote.map(|ip| ip.to_string()),
                    outcome,
                    ..AuditEvent::default()
                };
                if trusted_source {
                    audit.record(event);
                } else {
                    audit.record_failure(event, remote);
                }
            }
        }
    }

    /// Records an issued device certificate.
    pub fn record_certificate(&self, rec: &CertificateRecord) -> Result<(), AuthError> {
        let mut db = lock(&self.inner.writer);
        db.record_certificate(rec)?;
        self.inner.reload(&mut db)?;
        Ok(())
    }

    /// Revokes a certificate by serial, or all of a client's (id or identity). Subscribers of
    /// [`Self::revocations`] hear of each.
    pub fn revoke_certificate(
        &self,
        client_or_serial: &str,
    ) -> Result<Vec<CertificateRecord>, AuthError> {
        let mut db = lock(&self.inner.writer);
        let revoked = db.revoke_certificate(client_or_serial)?;
        self.inner.reload(&mut db).map(drop)?;
        Ok(revoked)
    }

    pub fn list_certificates(&self) -> Result<Vec<CertificateRecord>, AuthError> {
        lock(&self.inner.writer).list_certificates()
    }

    /// Fired when the cache learns of a revocation, including one made by another process.
    pub fn revocations(&self) -> broadcast::Receiver<CertificateRecord> {
        self.inner.revocations.subscribe()
    }

    /// Development profile: the demo sensor `demo-sensor` on channel `demo` (publish and
    /// subscribe), created on first start. Returns its secret only when created now.
    pub fn ensure_demo(&self, domain_id: &str) -> Result<Option<String>, AuthError> {
        let mut db = lock(&self.inner.writer);
        let created = db.ensure_demo(DEMO_IDENTITY, DEMO_CHANNEL, domain_id)?;
        if created.is_some() {
            self.inner.reload(&mut db).map(drop)?;
        }
        Ok(created)
    }

    /// Reloads the snapshot now, after this process changed `auth.db` through another
    /// connection (the management API), instead of waiting for the watcher's next poll.
    pub fn reload_now(&self) -> Result<(), StoreError> {
        let mut db = lock(&self.inner.writer);
        self.inner.reload(&mut db).map(drop)
    }

    /// Queues an audit event (a management action) for the audit writer without waiting; when
    /// the queue is full it is counted as dropped. No-op when the audit table is disabled.
    pub fn record_audit(&self, event: AuditEvent) {
        if let Some(audit) = &self.inner.audit {
            audit.record(event);
        }
    }

    /// Audit events dropped because the queue was full.
    pub fn audit_dropped(&self) -> u64 {
        self.inner.audit.as_ref().map_or(0, audit::Audit::dropped)
    }
}

/// The development profile's demo sensor and channel.
pub const DEMO_IDENTITY: &str = "demo-sensor";
pub const DEMO_CHANNEL: &str = "demo";
/// The domain of the dev profile's demo channel when `gateway.domain_id` is unset, so the demo
/// channel has one upstream topic `m/<domain>/c/<id>/…` on every adapter.
pub const DEV_DOMAIN: &str = "00000000-0000-4000-8000-00000000d0e0";

impl Inner {
    /// Loads the tables through `db` and installs them as the new snapshot.
    fn current(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn reload(&self, db: &mut Db) -> Result<Arc<Snapshot>, StoreError> {
        let _guard = lock(&self.install);
        let current = Arc::new(Snapshot::build(db.load()?));
        let previous = std::mem::replace(
            &mut *self
                .snapshot
                .write()
                .unwrap_or_else(PoisonError::into_inner),
            Arc::clone(&current),
        );
        for rec in current.newly_revoked(&previous) {
            info!(serial = %rec.serial_hex, client_id = %rec.client_id, "certificate revoked");
            let _ = self.revocations.send(rec);
        }
        self.changes.send_replace(current.generation);
        self.subscribed.send_if_modified(|list| {
            if **list == current.subscribed {
                false
            } else {
                *list = Arc::new(current.subscribed.clone());
                true
            }
        });
        let directory = current.directory();
        self.directory.send_if_modified(|list| {
            if **list == directory {
                false
            } else {
                *list = Arc::new(directory);
                true
            }
        });
        Ok(current)
    }
}

fn watch_loop(inner: &Weak<Inner>, mut db: Db, stop: &std::sync::mpsc::Receiver<()>) {
    let mut version = None;
    let mut failing = false;
    loop {
        match stop.recv_timeout(POLL_INTERVAL) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        let result = (|| {
            let v = db.data_version()?;
            if Some(v) == version {
                return Ok(None);
            }
            version = Some(v);
            // Audit rows and this process's own writes (already installed) change
            // data_version but not what the cache holds.
            if db.generation()? == inner.current().generation {
                return Ok(None);
            }
            inner.reload(&mut db).map(Some)
        })();
        match result {
            Ok(reloaded) => {
                if failing {
                    info!(path = %inner.path.display(), "auth store readable again");
                    failing = false;
                }
                if let Some(s) = reloaded {
                    info!(
                        clients = s.clients(),
                        disabled = s.disabled_clients(),
                        channels = s.channels(),
                        connections = s.connections,
                        generation = s.generation,
                        "auth store reloaded"
                    );
                }
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "cannot check the auth store for changes; decisions use the last loaded state");
                    failing = true;
                }
                version = None;
            }
        }
    }
}

/// `<state_dir>/auth.db`.
/// With `uplink.platform = "supermq"` every channel needs a domain: SuperMQ topics are
/// `m/<domain>/c/<channel>` and an empty level is never published or subscribed.
pub fn check_upstream_domain(config: &crate::config::Config, domain: &str) -> Result<(), Invalid> {
    if config.uplink.platform == crate::config::Platform::Supermq && domain.trim().is_empty() {
        return Err(Invalid::DomainRequired);
    }
    Ok(())
}

pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}
