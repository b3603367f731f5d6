//! JWT access and refresh tokens of the management API (HS256, aws-lc-rs via jsonwebtoken).
//!
//! The signing key is 32 random bytes in `<state_dir>/http-jwt.key` (0600), generated on first
//! start. Rotating it (delete the file, restart) invalidates every issued token. Access and
//! refresh tokens carry a `typ` claim and are not interchangeable. Never logs a token.

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

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
    #[error("JWT signing key {} has {len} bytes, expected {KEY_LEN}; delete it to make a new one", path.display())]
    KeyLength { path: PathBuf, len: usize },
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    #[error("token is invalid or expired")]
    Invalid,
    #[error("token is a {found} token, a {expected} token is required")]
    WrongKind {
        found: &'static str,
        expected: &'static str,
    },
    #[error("cannot sign token: {0}")]
    Sign(String),
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
}

const ISSUER: &str = "edgegw";

/// Issues and verifies tokens.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    access_ttl: std::time::Duration,
    refresh_ttl: std::time::Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
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

/// Reads the signing key, or creates it (0600, atomically) on first start.
pub fn load_or_create_key(state_dir: &Path) -> Result<Vec<u8>, TokenError> {
    let path = state_dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(key) if key.len() == KEY_LEN => Ok(key),
        Ok(key) => Err(TokenError::KeyLength {
            path,
            len: key.len(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = vec![0u8; KEY_LEN];
            getrandom::fill(&mut key).map_err(|e| TokenError::Random(e.to_string()))?;
            certs::files::write_atomic(&path, &key, 0o600)
                .map_err(|source| TokenError::KeyFile { path, source })?;
            Ok(key)
        }
        Err(source) => Err(TokenError::KeyFile { path, source }),
    }
}

impl Tokens {
    pub fn new(
        key: &[u8],
        access_ttl: std::time::Duration,
        refresh_ttl: std::time::Duration,
    ) -> Self {
        Self {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            access_ttl,
            refresh_ttl,
        }
    }

    fn sign(
        &self,
        subject: &str,
        typ: Kind,
        ttl: std::time::Duration,
    ) -> Result<String, TokenError> {
        let iat = now_secs();
        let claims = Claims {
            sub: subject.to_owned(),
            typ,
            iat,
            exp: iat.saturating_add(ttl.as_secs().max(1)),
            iss: ISSUER.to_owned(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| TokenError::Sign(e.to_string()))
    }

    /// A new access + refresh pair for `subject` (the administrator's email).
    pub fn issue(&self, subject: &str) -> Result<TokenPair, TokenError> {
        Ok(TokenPair {
            access_token: self.sign(subject, Kind::Access, self.access_ttl)?,
            refresh_token: self.sign(subject, Kind::Refresh, self.refresh_ttl)?,
            access_type: "Bearer",
        })
    }

    /// Verifies signature, issuer, expiry (no leeway) and kind; returns the subject.
    pub fn verify(&self, token: &str, expected: Kind) -> Result<String, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|_| TokenError::Invalid)?;
        if data.claims.typ != expected {
            return Err(TokenError::WrongKind {
                found: data.claims.typ.name(),
                expected: expected.name(),
            });
        }
        Ok(data.claims.sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tokens(access: u64) -> Tokens {
        Tokens::new(
            &[7u8; 32],
            Duration::from_secs(access),
            Duration::from_secs(86_400),
        )
    }

    #[test]
    fn access_and_refresh_are_not_interchangeable() {
        let t = tokens(3600);
        let pair = t.issue("admin@example.com").unwrap();
        assert_eq!(
            t.verify(&pair.access_token, Kind::Access).unwrap(),
            "admin@example.com"
        );
        assert_eq!(
            t.verify(&pair.refresh_token, Kind::Refresh).unwrap(),
            "admin@example.com"
        );
        assert!(matches!(
            t.verify(&pair.refresh_token, Kind::Access),
            Err(TokenError::WrongKind { .. })
        ));
        assert!(matches!(
            t.verify(&pair.access_token, Kind::Refresh),
            Err(TokenError::WrongKind { .. })
        ));
    }

    #[test]
    fn other_key_and_garbage_are_refused() {
        let pair = tokens(3600).issue("a@b.c").unwrap();
        let other = Tokens::new(&[8u8; 32], Duration::from_secs(1), Duration::from_secs(1));
        assert!(matches!(
            other.verify(&pair.access_token, Kind::Access),
            Err(TokenError::Invalid)
        ));
        assert!(matches!(
            other.verify("x.y.z", Kind::Access),
            Err(TokenError::Invalid)
        ));
    }

    #[test]
    fn key_is_created_0600_and_reused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_key(dir.path()).unwrap();
        let b = load_or_create_key(dir.path()).unwrap();
        assert_eq!(a, b);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
