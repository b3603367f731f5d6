//! Personal access tokens (`pat_…`): created by the administrator, stored hashed (SHA-256) in
//! `<state_dir>/pats.json` (0600, written atomically), limited by scopes
//! `{entity_type, operation, entity_id | "*"}`. A PAT is shown once, at creation or reset.
//! Secrets have 256 bits of entropy, so a plain SHA-256 is a sufficient hash; comparisons are
//! constant-time. Never logs a secret.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::auth::secret::ct_eq;

pub const FILE_NAME: &str = "pats.json";
pub const PREFIX: &str = "pat_";
/// At most this many PATs and scopes per PAT (the file stays small).
pub const MAX_PATS: usize = 256;
pub const MAX_SCOPES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum PatError {
    #[error("PAT store {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("PAT store {} is corrupt: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode the PAT store {}: {source}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no PAT `{id}`")]
    NotFound { id: String },
    #[error(transparent)]
    Invalid(#[from] InvalidPat),
    #[error("PAT is unknown, revoked or expired")]
    Unauthenticated,
    #[error("the operating system's random number generator failed: {0}")]
    Random(#[source] getrandom::Error),
}

/// A PAT request the store does not take; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPat {
    #[error("name must be 1..128 characters")]
    Name,
    #[error("description: at most 1024 characters")]
    Description,
    #[error("name must be 1..128 characters, description at most 1024")]
    NameOrDescription,
    #[error("at most {MAX_PATS} PATs")]
    TooManyPats,
    #[error("at most {MAX_SCOPES} scopes per PAT")]
    TooManyScopes,
    #[error("entity_type must be one of {ENTITY_TYPES:?}")]
    EntityType,
    #[error("operation must be one of {OPERATIONS:?}")]
    Operation,
    #[error("entity_id must be 1..128 characters or \"*\"")]
    EntityId,
}

/// One permission: `operation` on `entity_type` for `entity_id` (`*`: any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    pub entity_type: String,
    pub operation: String,
    pub entity_id: String,
}

pub const ENTITY_TYPES: &[&str] = &["clients", "channels", "connections", "certs", "audit", "*"];
pub const OPERATIONS: &[&str] = &["create", "read", "update", "delete", "*"];

impl Scope {
    pub fn validate(&self) -> Result<(), PatError> {
        if !ENTITY_TYPES.contains(&self.entity_type.as_str()) {
            return Err(InvalidPat::EntityType.into());
        }
        if !OPERATIONS.contains(&self.operation.as_str()) {
            return Err(InvalidPat::Operation.into());
        }
        if self.entity_id.is_empty() || self.entity_id.len() > 128 {
            return Err(InvalidPat::EntityId.into());
        }
        Ok(())
    }

    /// A stable id for this scope (SuperMQ's scopes have one: `PATCH …/scope/remove` takes
    /// `scopes_id`): the first 16 hex digits of SHA-256 over its three fields.
    pub fn id(&self) -> String {
        let text = format!(
            "{}\0{}\0{}",
            self.entity_type, self.operation, self.entity_id
        );
        sha256_hex(text.as_bytes())[..16].to_owned()
    }

    /// Does this scope allow `operation` on `entity_type` `entity_id` (None: a collection)?
    pub fn allows(&self, entity_type: &str, operation: &str, entity_id: Option<&str>) -> bool {
        (self.entity_type == "*" || self.entity_type == entity_type)
            && (self.operation == "*" || self.operation == operation)
            && (self.entity_id == "*" || Some(self.entity_id.as_str()) == entity_id)
    }
}

/// A stored PAT (without its secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pat {
    pub id: String,
    pub name: String,
    pub description: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    secret_sha256: String,
    pub issued_at: i64,
    pub expires_at: i64,
    pub revoked: bool,
    pub scopes: Vec<Scope>,
}

impl Pat {
    /// The public view (no hash).
    pub fn public(&self) -> Pat {
        Pat {
            secret_sha256: String::new(),
            ..self.clone()
        }
    }

    pub fn allows(&self, entity_type: &str, operation: &str, entity_id: Option<&str>) -> bool {
        self.scopes
            .iter()
            .any(|s| s.allows(entity_type, operation, entity_id))
    }
}

fn sha256_hex(data: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(bytes: usize) -> Result<String, PatError> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(PatError::Random)?;
    Ok(b.iter().map(|b| format!("{b:02x}")).collect())
}

/// The PAT store: in memory, persisted on every change.
#[derive(Debug)]
pub struct PatStore {
    path: PathBuf,
    pats: Mutex<Vec<Pat>>,
}

impl PatStore {
    pub fn open(state_dir: &Path) -> Result<Self, PatError> {
        let path = state_dir.join(FILE_NAME);
        let pats = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| PatError::Corrupt {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(PatError::Io { path, source }),
        };
        Ok(Self {
            path,
            pats: Mutex::new(pats),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pat>> {
        self.pats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn save(&self, pats: &[Pat]) -> Result<(), PatError> {
        let bytes = serde_json::to_vec_pretty(pats).map_err(|source| PatError::Encode {
            path: self.path.clone(),
            source,
        })?;
        certs::files::write_atomic(&self.path, &bytes, 0o600).map_err(|source| PatError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Applies `f` to the list and persists it; on a failed write the change is undone.
    fn modify<T>(
        &self,
        f: impl FnOnce(&mut Vec<Pat>) -> Result<T, PatError>,
    ) -> Result<T, PatError> {
        let mut pats = self.lock();
        let mut copy = pats.clone();
        let out = f(&mut copy)?;
        self.save(&copy)?;
        *pats = copy;
        Ok(out)
    }

    fn new_secret(id: &str) -> Result<String, PatError> {
        Ok(format!("{PREFIX}{id}_{}", random_hex(32)?))
    }

    /// Creates a PAT valid for `duration` from `now`; returns it and its secret (shown once).
    pub fn create(
        &self,
        name: &str,
        description: &str,
        duration: std::time::Duration,
        now: i64,
    ) -> Result<(Pat, String), PatError> {
        if name.is_empty() || name.len() > 128 || description.len() > 1024 {
            return Err(InvalidPat::NameOrDescription.into());
        }
        let id = random_hex(16)?;
        let secret = Self::new_secret(&id)?;
        let pat = Pat {
            id,
            name: name.to_owned(),
            description: description.to_owned(),
            secret_sha256: sha256_hex(secret.as_bytes()),
            issued_at: now,
            expires_at: now.saturating_add(i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)),
            revoked: false,
            scopes: Vec::new(),
        };
        self.modify(|pats| {
            if pats.len() >= MAX_PATS {
                return Err(InvalidPat::TooManyPats.into());
            }
            pats.push(pat.clone());
            Ok(())
        })?;
        Ok((pat.public(), secret))
    }

    pub fn list(&self) -> Vec<Pat> {
        self.lock().iter().map(Pat::public).collect()
    }

    pub fn get(&self, id: &str) -> Result<Pat, PatError> {
        self.lock()
            .iter()
            .find(|p| p.id == id)
            .map(Pat::public)
            .ok_or_else(|| PatError::NotFound { id: id.to_owned() })
    }

    fn update(
        &self,
        id: &str,
        f: impl FnOnce(&mut Pat) -> Result<(), PatError>,
    ) -> Result<Pat, PatError> {
        self.modify(|pats| {
            let pat = pats
                .iter_mut()
                .find(|p| p.id == id)
                .ok_or_else(|| PatError::NotFound { id: id.to_owned() })?;
            f(pat)?;
            Ok(pat.public())
        })
    }

    pub fn revoke(&self, id: &str) -> Result<Pat, PatError> {
        self.update(id, |p| {
            p.revoked = true;
            Ok(())
        })
    }

    /// A new secret (the old one stops working), valid for `duration` from `now`; un-revokes.
    pub fn reset(
        &self,
        id: &str,
        duration: std::time::Duration,
        now: i64,
    ) -> Result<(Pat, String), PatError> {
        let secret = Self::new_secret(id)?;
        let hash = sha256_hex(secret.as_bytes());
        let pat = self.update(id, |p| {
            p.secret_sha256 = hash;
            p.revoked = false;
            p.expires_at =
                now.saturating_add(i64::try_from(duration.as_secs()).unwrap_or(i64::MAX));
            Ok(())
        })?;
        Ok((pat, secret))
    }

    pub fn delete(&self, id: &str) -> Result<(), PatError> {
        self.modify(|pats| {
            let before = pats.len();
            pats.retain(|p| p.id != id);
            if pats.len() == before {
                return Err(PatError::NotFound { id: id.to_owned() });
            }
            Ok(())
        })
    }

    pub fn add_scopes(&self, id: &str, scopes: &[Scope]) -> Result<Pat, PatError> {
        for s in scopes {
            s.validate()?;
        }
        self.update(id, |p| {
            for s in scopes {
                if !p.scopes.contains(s) {
                    p.scopes.push(s.clone());
                }
            }
            if p.scopes.len() > MAX_SCOPES {
                return Err(InvalidPat::TooManyScopes.into());
            }
            Ok(())
        })
    }

    pub fn remove_scopes(&self, id: &str, scopes: &[Scope]) -> Result<Pat, PatError> {
        self.update(id, |p| {
            p.scopes.retain(|s| !scopes.contains(s));
            Ok(())
        })
    }

    /// Removes every PAT (SuperMQ's `DELETE /pats`, `RemoveAllPAT`); returns how many.
    pub fn delete_all(&self) -> Result<usize, PatError> {
        self.modify(|pats| {
            let n = pats.len();
            pats.clear();
            Ok(n)
        })
    }

    pub fn rename(&self, id: &str, name: &str) -> Result<Pat, PatError> {
        if name.is_empty() || name.len() > 128 {
            return Err(InvalidPat::Name.into());
        }
        self.update(id, |p| {
            name.clone_into(&mut p.name);
            Ok(())
        })
    }

    pub fn describe(&self, id: &str, description: &str) -> Result<Pat, PatError> {
        if description.len() > 1024 {
            return Err(InvalidPat::Description.into());
        }
        self.update(id, |p| {
            description.clone_into(&mut p.description);
            Ok(())
        })
    }

    /// Removes the scopes whose [`Scope::id`] is in `ids`.
    pub fn remove_scope_ids(&self, id: &str, ids: &[String]) -> Result<Pat, PatError> {
        self.update(id, |p| {
            p.scopes.retain(|s| !ids.contains(&s.id()));
            Ok(())
        })
    }

    pub fn clear_scopes(&self, id: &str) -> Result<Pat, PatError> {
        self.update(id, |p| {
            p.scopes.clear();
            Ok(())
        })
    }

    /// The PAT for a presented secret, if it is known, not revoked and not expired at `now`.
    pub fn authenticate(&self, secret: &str, now: i64) -> Result<Pat, PatError> {
        let id = secret
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id)
            .ok_or(PatError::Unauthenticated)?;
        let hash = sha256_hex(secret.as_bytes());
        let pats = self.lock();
        let pat = pats
            .iter()
            .find(|p| p.id == id)
            .ok_or(PatError::Unauthenticated)?;
        if !ct_eq(pat.secret_sha256.as_bytes(), hash.as_bytes())
            || pat.revoked
            || pat.expires_at <= now
        {
            return Err(PatError::Unauthenticated);
        }
        Ok(pat.public())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn scope(t: &str, op: &str, id: &str) -> Scope {
        Scope {
            entity_type: t.into(),
            operation: op.into(),
            entity_id: id.into(),
        }
    }

    #[test]
    fn lifecycle_create_scope_revoke_reset() {
        let dir = tempfile::tempdir().unwrap();
        let store = PatStore::open(dir.path()).unwrap();
        let (pat, secret) = store
            .create("ci", "", Duration::from_secs(60), 1000)
            .unwrap();
        assert!(secret.starts_with("pat_"));
        let got = store.authenticate(&secret, 1001).unwrap();
        assert!(!got.allows("clients", "read", None));
        store
            .add_scopes(&pat.id, &[scope("clients", "read", "*")])
            .unwrap();
        let got = store.authenticate(&secret, 1001).unwrap();
        assert!(got.allows("clients", "read", Some("x")));
        assert!(!got.allows("clients", "delete", Some("x")));
        assert!(!got.allows("channels", "read", None));
        // expired
        assert!(store.authenticate(&secret, 1060).is_err());
        // reopened from disk: same answers, hash not the secret on disk
        let again = PatStore::open(dir.path()).unwrap();
        assert!(again.authenticate(&secret, 1001).is_ok());
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(!text.contains(&secret));
        store.revoke(&pat.id).unwrap();
        assert!(store.authenticate(&secret, 1001).is_err());
        let (_, new_secret) = store.reset(&pat.id, Duration::from_secs(60), 1001).unwrap();
        assert!(store.authenticate(&secret, 1002).is_err());
        assert!(store.authenticate(&new_secret, 1002).is_ok());
        store
            .remove_scopes(&pat.id, &[scope("clients", "read", "*")])
            .unwrap();
        assert!(
            !store
                .authenticate(&new_secret, 1002)
                .unwrap()
                .allows("clients", "read", None)
        );
    }

    #[test]
    fn bad_scopes_and_forged_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = PatStore::open(dir.path()).unwrap();
        let (pat, secret) = store.create("x", "", Duration::from_secs(60), 0).unwrap();
        assert!(
            store
                .add_scopes(&pat.id, &[scope("users", "read", "*")])
                .is_err()
        );
        let forged = format!("{}0", &secret[..secret.len() - 1]);
        let forged = if forged == secret {
            format!("{}1", &secret[..secret.len() - 1])
        } else {
            forged
        };
        assert!(store.authenticate(&forged, 1).is_err());
        assert!(store.authenticate("pat_", 1).is_err());
    }
}
