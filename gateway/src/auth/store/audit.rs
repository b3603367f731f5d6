//! The `audit` table.

use super::*;

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
    /// A management action (API or CLI), kept apart from authentication decisions.
    pub fn is_management(&self) -> bool {
        matches!(self.method, "api" | "cli")
    }

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

impl Db {
    /// Appends a batch in one transaction, then rotates: authentication decisions older than
    /// the newest `keep` rows go, and management actions (`api`, `cli`) beyond the newest
    /// `keep` of them: a flood of sensor failures cannot rotate management events out.
    pub fn append_audit(&mut self, events: &[AuditEvent], keep: u64) -> Result<(), StoreError> {
        self.append_audit_from(events, keep, &mut 0)
    }

    /// [`Db::append_audit`] for the one writer that appends repeatedly: `rotated` is the id up
    /// to which decisions were already rotated out, so each batch only looks at new ids.
    pub fn append_audit_from(
        &mut self,
        events: &[AuditEvent],
        keep: u64,
        rotated: &mut i64,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let e = |e| sqlite_at(&path, e);
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let tx = self.conn.transaction().map_err(e)?;
        let threshold;
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
            let max: i64 = tx
                .query_row("SELECT coalesce(max(id), 0) FROM audit_events", [], |r| {
                    r.get(0)
                })
                .map_err(e)?;
            threshold = max.saturating_sub(keep);
            if threshold > *rotated {
                tx.execute(
                    "DELETE FROM audit_events WHERE id > ?1 AND id <= ?2
                       AND method NOT IN ('api', 'cli')",
                    [*rotated, threshold],
                )
                .map_err(e)?;
            }
            if events.iter().any(AuditEvent::is_management) {
                tx.execute(
                    "DELETE FROM audit_events WHERE method IN ('api', 'cli') AND id <=
                       (SELECT id FROM audit_events WHERE method IN ('api', 'cli')
                        ORDER BY id DESC LIMIT 1 OFFSET ?1)",
                    [keep],
                )
                .map_err(e)?;
            }
        }
        tx.commit().map_err(e)?;
        *rotated = (*rotated).max(threshold);
        Ok(())
    }

    /// The newest `limit` audit events, newest first.
    pub fn recent_audit(&self, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
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

    pub fn audit_count(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT count(*) FROM audit_events", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }
}

/// Maps the audit strings read back to the static names the writer uses.
pub(super) fn intern(s: &str) -> &'static str {
    const NAMES: &[&str] = &[
        "secret",
        "identity",
        "certificate",
        "psk",
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
