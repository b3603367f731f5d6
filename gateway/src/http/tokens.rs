//! JWT access and refresh tokens of the management API (HS256, aws-lc-rs via jsonwebtoken).
//!
//! The signing keys live in `<state_dir>/http-jwt.key` (0600, written atomically): 32 random
//! bytes for the current key, optionally followed by 32 bytes of the previous one. The file is
//! generated on first start. Every token carries a `kid` (a hash of its key, never the key);
//! verification accepts the current and the previous key, so [`Tokens::rotate`] makes a new
//! current key without invalidating tokens issued before (they stay valid until they expire),
//! unless it is asked to drop the previous key at once (compromise: every older token → 401).
//! [`Tokens::reload`] re-reads the file (SIGHUP), so an operator can replace it. Tokens without
//! a `kid` (issued before kids existed) are checked against the current key. Access and refresh
//! tokens carry a `typ` claim and are not interchangeable. Every token also names its login
//! session (`sid`, see [`super::sessions`]): a token whose session ended (age cap, a reused
//! refresh token, a change of the administrator's credentials) is refused, and a refresh token
//! (`jti`) is good for one refresh. Never logs a token or a key.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::sessions::{Refresh, SessionError, Sessions};

/// File name of the signing key in the state directory.
pub const KEY_FILE: &str = "http-jwt.key";
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("JWT signing key {}: {source}", path.display())]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("JWT signing key {} has {len} bytes, expected {KEY_LEN} (current key) or {} (current and previous); delete it to make a new one", path.display(), 2 * KEY_LEN)]
    KeyLength { path: PathBuf, len: usize },
    #[error("the operating system's random number generator failed: {0}")]
    Random(#[source] getrandom::Error),
    #[error("token is invalid or expired")]
    Invalid,
    #[error("token is a {found} token, a {expected} token is required")]
    WrongKind {
        found: &'static str,
        expected: &'static str,
    },
    #[error("cannot sign token: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
    #[error(transparent)]
    Sessions(#[from] SessionError),
    #[error("refresh token was used before; its session is ended")]
    Reused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Access,
    Refresh,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Access => "access",
            Kind::Refresh => "refresh",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    typ: Kind,
    iat: u64,
    exp: u64,
    iss: String,
    /// The login session (absent in tokens issued before sessions existed: refused).
    #[serde(default)]
    sid: String,
    /// A refresh token's own id (single use).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    jti: String,
}

const ISSUER: &str = "edgegw";

/// One signing key with its id.
struct SigningKey {
    kid: String,
    secret: Vec<u8>,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl SigningKey {
    fn new(secret: &[u8]) -> Self {
        Self {
            kid: key_id(secret),
            secret: secret.to_vec(),
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }
}

impl Drop for SigningKey {
    fn drop(&mut self) {
        // Best effort: the key bytes do not outlive their use in this copy.
        self.secret.iter_mut().for_each(|b| *b = 0);
    }
}

/// The id of a key: the first 8 bytes of SHA-256 over a domain tag and the key, in hex. Public
/// (it is in every token header and in logs); it reveals nothing usable about the key.
fn key_id(secret: &[u8]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"edgegw-jwt-kid\0");
    ctx.update(secret);
    ctx.finish().as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The keys tokens are checked against.
struct KeySet {
    current: SigningKey,
    previous: Option<SigningKey>,
}

impl KeySet {
    fn ids(&self) -> KeyIds {
        KeyIds {
            kid: self.current.kid.clone(),
            previous_kid: self.previous.as_ref().map(|k| k.kid.clone()),
        }
    }
}

/// The ids of the keys in use (what rotation and reload report; never the keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyIds {
    pub kid: String,
    pub previous_kid: Option<String>,
}

/// The key file's contents: the current key and, optionally, the previous one.
pub struct KeyFile {
    pub current: Vec<u8>,
    pub previous: Option<Vec<u8>>,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFile")
            .field("kid", &key_id(&self.current))
            .field("previous_kid", &self.previous.as_deref().map(key_id))
            .finish()
    }
}

impl KeyFile {
    fn encode(&self) -> Vec<u8> {
        let mut out = self.current.clone();
        if let Some(p) = &self.previous {
            out.extend_from_slice(p);
        }
        out
    }
}

/// Issues and verifies tokens.
pub struct Tokens {
    keys: RwLock<Arc<KeySet>>,
    /// Where rotations are written (None: in memory only, for tests).
    path: Option<PathBuf>,
    /// Serializes rotations and reloads (read-modify-write of the file).
    rotating: Mutex<()>,
    access_ttl: std::time::Duration,
    refresh_ttl: std::time::Duration,
    sessions: Mutex<Sessions>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("keys", &self.key_ids())
            .finish_non_exhaustive()
    }
}

/// A freshly issued token pair (SuperMQ's shape).
#[derive(Debug, Serialize)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub access_type: &'static str,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_key() -> Result<Vec<u8>, TokenError> {
    let mut key = vec![0u8; KEY_LEN];
    getrandom::fill(&mut key).map_err(TokenError::Random)?;
    Ok(key)
}

fn write_key_file(path: &Path, file: &KeyFile) -> Result<(), TokenError> {
    certs::files::write_atomic(path, &file.encode(), 0o600).map_err(|source| TokenError::KeyFile {
        path: path.to_owned(),
        source,
    })
}

/// Reads the key file, or creates it (a new current key, 0600, atomically) when it is missing.
pub fn load_or_create_keys(state_dir: &Path) -> Result<KeyFile, TokenError> {
    let path = state_dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) if bytes.len() == KEY_LEN => Ok(KeyFile {
            current: bytes,
            previous: None,
        }),
        Ok(bytes) if bytes.len() == 2 * KEY_LEN => Ok(KeyFile {
            current: bytes[..KEY_LEN].to_vec(),
            previous: Some(bytes[KEY_LEN..].to_vec()),
        }),
        Ok(bytes) => Err(TokenError::KeyLength {
            path,
            len: bytes.len(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let file = KeyFile {
                current: random_key()?,
                previous: None,
            };
            write_key_file(&path, &file)?;
            Ok(file)
        }
        Err(source) => Err(TokenError::KeyFile { path, source }),
    }
}

/// The current signing key only (see [`load_or_create_keys`]).
pub fn load_or_create_key(state_dir: &Path) -> Result<Vec<u8>, TokenError> {
    load_or_create_keys(state_dir).map(|f| f.current)
}

impl Tokens {
    /// Tokens signed with `key`, kept in memory only (rotation and sessions do not persist).
    pub fn new(
        key: &[u8],
        access_ttl: std::time::Duration,
        refresh_ttl: std::time::Duration,
    ) -> Self {
        Self::with_keys(
            &KeyFile {
                current: key.to_vec(),
                previous: None,
            },
            None,
            Sessions::in_memory(b""),
            access_ttl,
            refresh_ttl,
        )
    }

    /// Loads (or creates) `<state_dir>/http-jwt.key`; rotations are written back to it. The
    /// login sessions are `<state_dir>/http-sessions.json`; `credential` (the administrator's
    /// email and standalone token) differing from the one they were made under ends them.
    pub fn open(
        state_dir: &Path,
        access_ttl: std::time::Duration,
        refresh_ttl: std::time::Duration,
        credential: &[u8],
    ) -> Result<Self, TokenError> {
        let file = load_or_create_keys(state_dir)?;
        Ok(Self::with_keys(
            &file,
            Some(state_dir.join(KEY_FILE)),
            Sessions::open(state_dir, credential)?,
            access_ttl,
            refresh_ttl,
        ))
    }

    fn with_keys(
        file: &KeyFile,
        path: Option<PathBuf>,
        sessions: Sessions,
        access_ttl: std::time::Duration,
        refresh_ttl: std::time::Duration,
    ) -> Self {
        Self {
            keys: RwLock::new(Arc::new(Self::key_set(file))),
            path,
            rotating: Mutex::new(()),
            access_ttl,
            refresh_ttl,
            sessions: Mutex::new(sessions),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn key_set(file: &KeyFile) -> KeySet {
        KeySet {
            current: SigningKey::new(&file.current),
            previous: file.previous.as_deref().map(SigningKey::new),
        }
    }

    fn keys(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn install(&self, set: KeySet) -> KeyIds {
        let ids = set.ids();
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
        ids
    }

    /// The ids of the keys in use.
    pub fn key_ids(&self) -> KeyIds {
        self.keys().ids()
    }

    /// Makes a new current key. The old current key becomes the previous one (tokens it
    /// signed stay valid until they expire), or, with `revoke_previous`, is dropped at once
    /// (every token issued before → invalid). The file is written before the new keys are
    /// used, so a failed write changes nothing.
    pub fn rotate(&self, revoke_previous: bool) -> Result<KeyIds, TokenError> {
        let _guard = self.rotating.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.keys();
        let file = KeyFile {
            current: random_key()?,
            previous: (!revoke_previous).then(|| old.current.secret.clone()),
        };
        if let Some(path) = &self.path {
            write_key_file(path, &file)?;
        }
        Ok(self.install(Self::key_set(&file)))
    }

    /// Re-reads the key file (an operator may have replaced it; a missing file gets a new
    /// key). On error the keys in use stay.
    pub fn reload(&self) -> Result<KeyIds, TokenError> {
        let _guard = self.rotating.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(path) = &self.path else {
            return Ok(self.key_ids());
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let file = load_or_create_keys(dir)?;
        Ok(self.install(Self::key_set(&file)))
    }

    fn sign(
        keys: &KeySet,
        subject: &str,
        typ: Kind,
        ttl: std::time::Duration,
        now: u64,
        session: (&str, u64),
        jti: &str,
    ) -> Result<String, TokenError> {
        let (sid, ends) = session;
        let claims = Claims {
            sub: subject.to_owned(),
            typ,
            iat: now,
            exp: now.saturating_add(ttl.as_secs().max(1)).min(ends),
            iss: ISSUER.to_owned(),
            sid: sid.to_owned(),
            jti: jti.to_owned(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(keys.current.kid.clone());
        jsonwebtoken::encode(&header, &claims, &keys.current.encoding).map_err(TokenError::Sign)
    }

    fn pair(
        &self,
        subject: &str,
        now: u64,
        session: (&str, u64),
        refresh_id: &str,
    ) -> Result<TokenPair, TokenError> {
        let keys = self.keys();
        Ok(TokenPair {
            access_token: Self::sign(
                &keys,
                subject,
                Kind::Access,
                self.access_ttl,
                now,
                session,
                "",
            )?,
            refresh_token: Self::sign(
                &keys,
                subject,
                Kind::Refresh,
                self.refresh_ttl,
                now,
                session,
                refresh_id,
            )?,
            access_type: "Bearer",
        })
    }

    /// A new login session and its first access + refresh pair for `subject` (the
    /// administrator's email), signed with the current key. Writes the sessions file: call it
    /// on a blocking thread.
    pub fn issue(&self, subject: &str) -> Result<TokenPair, TokenError> {
        self.issue_at(subject, now_secs())
    }

    fn issue_at(&self, subject: &str, now: u64) -> Result<TokenPair, TokenError> {
        let max_age = super::sessions::max_age(self.refresh_ttl);
        let (sid, refresh_id, ends) = self.sessions().start(now, max_age)?;
        self.pair(subject, now, (&sid, ends), &refresh_id)
    }

    /// Uses a refresh token: the next pair of its session, or an error — a refresh token used
    /// before ends its session ([`TokenError::Reused`]), and no token outlives the session's age
    /// cap. Returns the subject with the pair. Writes the sessions file: call it on a blocking
    /// thread.
    pub fn refresh(&self, token: &str) -> Result<(String, TokenPair), TokenError> {
        self.refresh_at(token, now_secs())
    }

    fn refresh_at(&self, token: &str, now: u64) -> Result<(String, TokenPair), TokenError> {
        let claims = self.decode(token, Kind::Refresh, now)?;
        let renewed = self.sessions().refresh(&claims.sid, &claims.jti, now)?;
        match renewed {
            Refresh::Renewed { next, ends } => {
                let pair = self.pair(&claims.sub, now, (&claims.sid, ends), &next)?;
                Ok((claims.sub, pair))
            }
            Refresh::Unknown => Err(TokenError::Invalid),
            Refresh::Reused => Err(TokenError::Reused),
        }
    }

    /// Verifies key id, signature, issuer, expiry (no leeway), kind and that its session is
    /// live; returns the subject.
    pub fn verify(&self, token: &str, expected: Kind) -> Result<String, TokenError> {
        self.verify_at(token, expected, now_secs())
    }

    fn verify_at(&self, token: &str, expected: Kind, now: u64) -> Result<String, TokenError> {
        let claims = self.decode(token, expected, now)?;
        if self.sessions().live(&claims.sid, now).is_none() {
            return Err(TokenError::Invalid);
        }
        Ok(claims.sub)
    }

    fn decode(&self, token: &str, expected: Kind, now: u64) -> Result<Claims, TokenError> {
        let keys = self.keys();
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        let key = match header.kid.as_deref() {
            None => &keys.current,
            Some(kid) if kid == keys.current.kid => &keys.current,
            Some(kid) => keys
                .previous
                .as_ref()
                .filter(|p| p.kid == kid)
                .ok_or(TokenError::Invalid)?,
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        // Expiry is checked below against `now` (the same rule: no leeway).
        validation.validate_exp = false;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)
            .map_err(|_| TokenError::Invalid)?;
        if data.claims.exp <= now {
            return Err(TokenError::Invalid);
        }
        if data.claims.typ != expected {
            return Err(TokenError::WrongKind {
                found: data.claims.typ.name(),
                expected: expected.name(),
            });
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests;
