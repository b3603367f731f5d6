//! DTLS-PSK: the one resolver every PSK handshake shares, and the slot that records which
//! identity (and which key, as a keyed hash) the handshake being fed used.

use std::sync::{Arc, Mutex};

use dimpl::{Config as DimplConfig, PskResolver};
use tracing::warn;

use super::{DtlsCredentials, DtlsSettings, base_config};

/// The identity the PSK resolver saw, recorded inside `handle_packet` (dimpl never reports it).
#[derive(Debug, Default)]
pub(super) struct PskSlot {
    pub(super) identity: Mutex<Option<String>>,
    /// Keyed hash of the key the handshake used (never the key itself): a rotated secret
    /// ends the session at the next sweep.
    pub(super) key_hash: Mutex<Option<u64>>,
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
        if let Ok(mut id) = slot.identity.lock() {
            *id = Some(text);
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
