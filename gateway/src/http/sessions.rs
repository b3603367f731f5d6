//! Login sessions of the management API (issue 20.10): one per `/users/tokens/issue`, shared
//! by the access and refresh tokens issued in it and its refreshes (the token "family").
//!
//! - A session ends [`max_age`] after the login, however often it is refreshed; no token of it
//!   outlives that.
//! - A refresh token is single-use: each refresh names the next one. Presenting a refresh
//!   token again (a copy replayed, or the rightful holder after a thief) ends the session,
//!   so every token of that family, access tokens included, is refused from then on.
//! - The sessions remember a salted hash of the administrator's credentials (email and
//!   standalone token): a daemon started with other credentials ends every session, so the
//!   tokens issued under the old token are refused.
//!
//! Kept in `<state_dir>/http-sessions.json` (0600, written atomically) so logins survive a
//! restart; at most [`MAX_SESSIONS`], the oldest forgotten first. Time is passed in (`now`,
//! unix seconds), so the rules are tested without a clock. Never holds a token, only ids.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the sessions in the state directory.
pub const FILE: &str = "http-sessions.json";
/// Sessions kept at most (a login beyond that forgets the oldest).
pub const MAX_SESSIONS: usize = 256;
/// A session's longest life unless `http.refresh_token_ttl` is longer.
pub const MAX_AGE_SECS: u64 = 7 * 86_400;

/// The longest life of a session for a refresh token lifetime.
pub fn max_age(refresh_ttl: std::time::Duration) -> u64 {
    MAX_AGE_SECS.max(refresh_ttl.as_secs())
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("login sessions {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Unix seconds of the login.
    pub started: u64,
    /// Unix seconds after which nothing of the session is accepted.
    pub ends: u64,
    /// The id of the one refresh token that may still be used.
    pub refresh: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    salt: String,
    credential: String,
    sessions: BTreeMap<String, Session>,
}

/// What a refresh found.
#[derive(Debug, PartialEq, Eq)]
pub enum Refresh {
    /// The session goes on; its next refresh token has this id.
    Renewed { next: String, ends: u64 },
    /// No such session (ended, replaced by a change of credentials, never existed).
    Unknown,
    /// The refresh token was used before: the session is ended.
    Reused,
}

#[derive(Debug)]
pub struct Sessions {
    stored: Stored,
    path: Option<PathBuf>,
}

pub fn random_id() -> Result<String, SessionError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| SessionError::Random(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn fingerprint(salt: &str, credential: &[u8]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"edgegw-session-credential\0");
    ctx.update(salt.as_bytes());
    ctx.update(b"\0");
    ctx.update(credential);
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Sessions {
    /// In memory only (tests, and [`super::tokens::Tokens::new`]); nothing is written, so a
    /// fixed salt does.
    pub fn in_memory(credential: &[u8]) -> Self {
        let salt = "memory".to_owned();
        Self {
            stored: Stored {
                credential: fingerprint(&salt, credential),
                salt,
                sessions: BTreeMap::new(),
            },
            path: None,
        }
    }

    /// Loads `<state_dir>/http-sessions.json` (a missing or unreadable-as-JSON file: no
    /// sessions). Credentials other than the ones the sessions were made under end them all.
    pub fn open(state_dir: &Path, credential: &[u8]) -> Result<Self, SessionError> {
        let path = state_dir.join(FILE);
        let stored = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Stored>(&bytes).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(SessionError::File { path, source }),
        };
        let mut stored = match stored {
            Some(s) if !s.salt.is_empty() => s,
            _ => Stored {
                salt: random_id()?,
                ..Stored::default()
            },
        };
        let now = fingerprint(&stored.salt, credential);
        if stored.credential != now {
            stored.sessions.clear();
            stored.credential = now;
        }
        let sessions = Self {
            stored,
            path: Some(path),
        };
        sessions.save()?;
        Ok(sessions)
    }

    fn save(&self) -> Result<(), SessionError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(&self.stored).map_err(|e| SessionError::File {
            path: path.clone(),
            source: e.into(),
        })?;
        certs::files::write_atomic(path, &bytes, 0o600).map_err(|source| SessionError::File {
            path: path.clone(),
            source,
        })
    }

    /// A new session from `now` for `max_age` seconds: (session id, first refresh id, end).
    pub fn start(&mut self, now: u64, max_age: u64) -> Result<(String, String, u64), SessionError> {
        let sessions = &mut self.stored.sessions;
        sessions.retain(|_, s| s.ends > now);
        while sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.started)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => sessions.remove(&id),
                None => break,
            };
        }
        let (sid, refresh) = (random_id()?, random_id()?);
        let ends = now.saturating_add(max_age);
        self.stored.sessions.insert(
            sid.clone(),
            Session {
                started: now,
                ends,
                refresh: refresh.clone(),
            },
        );
        self.save()?;
        Ok((sid, refresh, ends))
    }

    /// The session `sid` if it is live at `now`.
    pub fn live(&self, sid: &str, now: u64) -> Option<&Session> {
        self.stored.sessions.get(sid).filter(|s| s.ends > now)
    }

    /// Uses refresh token `refresh` of session `sid`.
    pub fn refresh(&mut self, sid: &str, refresh: &str, now: u64) -> Result<Refresh, SessionError> {
        let Some(session) = self.stored.sessions.get_mut(sid) else {
            return Ok(Refresh::Unknown);
        };
        if session.ends <= now {
            self.stored.sessions.remove(sid);
            self.save()?;
            return Ok(Refresh::Unknown);
        }
        if !crate::auth::secret::ct_eq(session.refresh.as_bytes(), refresh.as_bytes()) {
            self.stored.sessions.remove(sid);
            self.save()?;
            return Ok(Refresh::Reused);
        }
        let next = random_id()?;
        session.refresh.clone_from(&next);
        let ends = session.ends;
        self.save()?;
        Ok(Refresh::Renewed { next, ends })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_id_works_once_and_its_reuse_ends_the_session() {
        let mut s = Sessions::in_memory(b"cred");
        let (sid, first, _) = s.start(1_000, 100).unwrap();
        let Refresh::Renewed { next, ends } = s.refresh(&sid, &first, 1_010).unwrap() else {
            panic!("not renewed");
        };
        assert_eq!(ends, 1_100);
        assert_eq!(s.refresh(&sid, &first, 1_020).unwrap(), Refresh::Reused);
        assert!(s.live(&sid, 1_020).is_none(), "the family is ended");
        assert_eq!(s.refresh(&sid, &next, 1_020).unwrap(), Refresh::Unknown);
    }

    #[test]
    fn a_session_ends_at_its_age_cap_however_often_refreshed() {
        let mut s = Sessions::in_memory(b"cred");
        let (sid, mut id, _) = s.start(0, 100).unwrap();
        for now in (10..100).step_by(10) {
            match s.refresh(&sid, &id, now).unwrap() {
                Refresh::Renewed { next, ends } => {
                    assert_eq!(ends, 100);
                    id = next;
                }
                other => panic!("{now}: {other:?}"),
            }
        }
        assert!(s.live(&sid, 99).is_some());
        assert!(s.live(&sid, 100).is_none());
        assert_eq!(s.refresh(&sid, &id, 100).unwrap(), Refresh::Unknown);
    }

    #[test]
    fn sessions_persist_0600_and_other_credentials_end_them() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (sid, _, _) = Sessions::open(dir.path(), b"a@b.c\0token-1")
            .unwrap()
            .start(1_000, 100)
            .unwrap();
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(!text.contains("token-1"), "{text}");
        let same = Sessions::open(dir.path(), b"a@b.c\0token-1").unwrap();
        assert!(
            same.live(&sid, 1_001).is_some(),
            "a restart keeps the session"
        );
        let changed = Sessions::open(dir.path(), b"a@b.c\0token-2").unwrap();
        assert!(changed.live(&sid, 1_001).is_none(), "a new token ends it");
    }

    #[test]
    fn the_number_of_sessions_is_bounded() {
        let mut s = Sessions::in_memory(b"c");
        let (first, _, _) = s.start(0, 1_000_000).unwrap();
        for i in 1..=MAX_SESSIONS as u64 {
            s.start(i, 1_000_000).unwrap();
        }
        assert_eq!(s.stored.sessions.len(), MAX_SESSIONS);
        assert!(s.live(&first, 10).is_none(), "the oldest went first");
    }
}
