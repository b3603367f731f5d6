//! DTLS-PSK: the one resolver every PSK handshake shares, and the slot that records which
//! identity (and which key, as a keyed hash) the handshake being fed used.
//!
//! Guessing is throttled like every other failed authentication: the resolver asks the
//! credentials port whether the peer's address or the identity used up its budget (then it
//! hands dimpl no key, so the handshake fails at the client's Finished, one round trip, with
//! a fatal alert), and a handshake that failed after its identity was looked up is reported
//! to the port ([`Sessions::psk_failed`]), which audits it and charges the throttle. The
//! peer's address is proven by then (the identity comes after the cookie exchange), so a
//! spoofer cannot charge another address, and the port may give a pair that authenticated
//! from that address recently its pass through a throttled address (issue 20.5: junk spoofed
//! over plain CoAP from a sensor's address must not delay its next handshake).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use dimpl::{Config as DimplConfig, PskResolver};
use tracing::warn;

use super::{Conn, DtlsCredentials, DtlsSettings, Sessions, base_config};

/// The identity the PSK resolver saw, recorded inside `handle_packet` (dimpl never reports it).
#[derive(Debug, Default)]
pub(super) struct PskSlot {
    pub(super) identity: Mutex<Option<String>>,
    /// Keyed hash of the key the handshake used (never the key itself): a rotated secret
    /// ends the session at the next sweep.
    pub(super) key_hash: Mutex<Option<u64>>,
    /// The peer's address, for the throttle and the audit trail.
    pub(super) peer: Option<IpAddr>,
    /// The throttle refused this handshake: its failure is not charged again.
    pub(super) throttled: AtomicBool,
}

impl PskSlot {
    pub(super) fn new(peer: IpAddr) -> Self {
        Self {
            peer: Some(peer),
            ..Self::default()
        }
    }
}

impl Sessions {
    /// A PSK handshake ended without a session after its identity was looked up: audited and
    /// charged by the credentials port (unless the throttle itself refused it).
    pub(super) fn psk_failed(&self, conn: &Conn) {
        let Some(slot) = conn.psk.as_ref() else {
            return;
        };
        if slot.throttled.load(Ordering::Relaxed) {
            return;
        }
        let identity = slot.identity.lock().ok().and_then(|g| g.clone());
        if let (Some(ip), Some(identity)) = (slot.peer, identity) {
            self.backend.psk_failed(ip, &identity);
        }
    }
}

/// A per-process keyed hash (SipHash with random keys) for comparing keys without keeping them.
pub(super) fn key_hash(key: &[u8]) -> u64 {
    use std::hash::BuildHasher as _;
    use std::sync::OnceLock;
    static STATE: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    STATE
        .get_or_init(std::collections::hash_map::RandomState::new)
        .hash_one(key)
}

/// The slot of the PSK session whose datagram is being handled. One PSK config (and one
/// resolver) serves every session: building a dimpl `Config` runs the provider's known-answer
/// tests (milliseconds of CPU), too much to pay per handshake. The table handles one datagram
/// at a time and points this at that session's slot around the dimpl call.
pub(super) type CurrentSlot = Arc<Mutex<Option<Arc<PskSlot>>>>;

struct SlotResolver {
    current: CurrentSlot,
    backend: Arc<dyn DtlsCredentials>,
    /// Key used for unknown identities, so they fail exactly like a wrong key.
    dummy: Vec<u8>,
}

impl PskResolver for SlotResolver {
    fn resolve(&self, identity: &[u8]) -> Option<Vec<u8>> {
        let slot = self.current.lock().ok().and_then(|g| g.clone());
        let Some(slot) = slot else {
            // Not inside a PSK session's call: nothing to attribute the identity to.
            return Some(self.dummy.clone());
        };
        let text = String::from_utf8_lossy(identity).into_owned();
        let throttled = slot
            .peer
            .is_some_and(|ip| self.backend.psk_throttled(ip, &text));
        if let Ok(mut id) = slot.identity.lock() {
            *id = Some(text);
        }
        if throttled {
            // No key: dimpl fails the handshake at the Finished, as for a wrong key.
            slot.throttled.store(true, Ordering::Relaxed);
            if let Ok(mut hash) = slot.key_hash.lock() {
                *hash = None;
            }
            return None;
        }
        let key = self
            .backend
            .psk(identity)
            .unwrap_or_else(|| self.dummy.clone());
        if let Ok(mut hash) = slot.key_hash.lock() {
            *hash = Some(key_hash(&key));
        }
        Some(key)
    }
}

// The resolver only reads the backend and writes a Mutex slot; a panic leaves nothing torn.
impl std::panic::UnwindSafe for SlotResolver {}
impl std::panic::RefUnwindSafe for SlotResolver {}

pub(super) fn set_current(current: &CurrentSlot, slot: Option<Arc<PskSlot>>) {
    if let Ok(mut g) = current.lock() {
        *g = slot;
    }
}

pub(super) fn psk_config(
    settings: &DtlsSettings,
    current: CurrentSlot,
    backend: Arc<dyn DtlsCredentials>,
) -> Result<DimplConfig, dimpl::Error> {
    let resolver = SlotResolver {
        current,
        backend,
        dummy: dummy_key(),
    };
    base_config(settings)
        .with_psk_server(None, Arc::new(resolver))
        .build()
}

/// A per-process random key for unknown identities (never matches a client's secret).
fn dummy_key() -> Vec<u8> {
    use std::sync::OnceLock;
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut k = vec![0u8; 32];
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        if provider.secure_random.fill(&mut k).is_err() {
            // No randomness: a fixed key still cannot be guessed from the wire, but log it.
            warn!("no randomness for the DTLS dummy PSK");
        }
        k
    })
    .clone()
}
