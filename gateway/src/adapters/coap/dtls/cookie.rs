//! Stateless HelloVerifyRequest cookies (RFC 6347 §4.2.1): an HMAC-SHA256 over the peer's
//! address and the ClientHello parameters the RFC requires a client to repeat, under one
//! server-wide random key that rotates (the previous key stays valid for one more period).
//! Checking a cookie needs no per-peer state, so spoofed ClientHellos cost one HMAC each.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;

use super::record::ClientHello;

/// How long one key signs cookies; a cookie stays valid for up to twice this.
pub(super) const ROTATION: Duration = Duration::from_secs(60);
/// Cookie length: the full HMAC-SHA256 tag.
pub(super) const COOKIE_LEN: usize = 32;

/// Why the cookie keys cannot be made.
#[derive(Debug, thiserror::Error)]
#[error("no randomness for the DTLS cookie key")]
pub struct NoRandomness;

pub(super) struct CookieKeys {
    current: hmac::Key,
    previous: Option<hmac::Key>,
    /// When `current` started signing; `None` until the first [`CookieKeys::rotate`].
    since: Option<Instant>,
}

fn new_key() -> Result<hmac::Key, NoRandomness> {
    hmac::Key::generate(hmac::HMAC_SHA256, &aws_lc_rs::rand::SystemRandom::new())
        .map_err(|_| NoRandomness)
}

impl CookieKeys {
    pub fn new() -> Result<Self, NoRandomness> {
        Ok(Self {
            current: new_key()?,
            previous: None,
            since: None,
        })
    }

    /// Starts a new key once the current one has signed for [`ROTATION`].
    pub fn rotate(&mut self, now: Instant) {
        match self.since {
            None => self.since = Some(now),
            Some(since) if now.saturating_duration_since(since) >= ROTATION => {
                if let Ok(next) = new_key() {
                    self.previous = Some(std::mem::replace(&mut self.current, next));
                    self.since = Some(now);
                }
            }
            Some(_) => {}
        }
    }

    pub fn cookie(&self, peer: SocketAddr, hello: &ClientHello<'_>) -> [u8; COOKIE_LEN] {
        let tag = hmac::sign(&self.current, &message(peer, hello));
        let mut out = [0u8; COOKIE_LEN];
        out.copy_from_slice(&tag.as_ref()[..COOKIE_LEN]);
        out
    }

    /// Whether `hello` carries a cookie this server gave `peer` for these parameters
    /// (constant-time comparison).
    pub fn verify(&self, peer: SocketAddr, hello: &ClientHello<'_>) -> bool {
        if hello.cookie.len() != COOKIE_LEN {
            return false;
        }
        let msg = message(peer, hello);
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .any(|key| hmac::verify(key, &msg, hello.cookie).is_ok())
    }
}

/// Address, port, and the ClientHello fields a client must repeat after a
/// HelloVerifyRequest, each length-prefixed so no two inputs encode alike.
fn message(peer: SocketAddr, hello: &ClientHello<'_>) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + hello.suites.len());
    match peer {
        SocketAddr::V4(a) => {
            m.push(4);
            m.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            m.push(6);
            m.extend_from_slice(&a.ip().octets());
        }
    }
    m.extend_from_slice(&peer.port().to_be_bytes());
    m.extend_from_slice(&hello.version);
    for field in [
        hello.random,
        hello.session_id,
        hello.suites,
        hello.compression,
    ] {
        m.extend_from_slice(&u16::try_from(field.len()).unwrap_or(u16::MAX).to_be_bytes());
        m.extend_from_slice(field);
    }
    m
}
