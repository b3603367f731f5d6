//! The in-memory snapshot every decision is made from: built from [`Tables`] in one go,
//! immutable, swapped whole when the database changes. Pure: no I/O, no clock (callers pass
//! `now`), so decisions cost a few hash lookups.

use std::collections::HashMap;
use std::sync::Arc;

use super::store::Tables;
use super::{CertificateRecord, ChannelRef, ClientRef, Denied, Op, secret};

/// Compared against when the identity is unknown, so an unknown identity costs what a wrong
/// secret does (same length as a generated secret).
const DUMMY_SECRET: &[u8] = b"edgegw-dummy-secret-for-constant-time-cmp!!";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grant {
    pub publish: bool,
    pub subscribe: bool,
}

/// A client secret held in the cache; its bytes are overwritten when the last copy goes (a
/// snapshot is replaced, a client removed or its secret rotated).
#[derive(Clone, PartialEq, Eq, Hash)]
struct SecretBytes(Box<[u8]>);

impl Drop for SecretBytes {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut *self.0);
    }
}

/// Never printed (a `Debug` of the snapshot must not show secrets).
impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

impl std::borrow::Borrow<[u8]> for SecretBytes {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

pub struct CachedClient {
    pub id: String,
    pub identity: String,
    secret: SecretBytes,
    pub enabled: bool,
    /// channel id → rights.
    pub grants: HashMap<String, Grant>,
}

impl std::fmt::Debug for CachedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedClient")
            .field("id", &self.id)
            .field("identity", &self.identity)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl CachedClient {
    fn to_ref(&self) -> ClientRef {
        ClientRef {
            id: self.id.clone(),
            identity: self.identity.clone(),
        }
    }
}

/// One consistent view of the store.
#[derive(Debug, Default)]
pub struct Snapshot {
    by_identity: HashMap<String, Arc<CachedClient>>,
    by_id: HashMap<String, Arc<CachedClient>>,
    by_secret: HashMap<SecretBytes, Arc<CachedClient>>,
    channels_by_id: HashMap<String, Arc<ChannelRef>>,
    channels_by_name: HashMap<String, Arc<ChannelRef>>,
    pub certificates: HashMap<String, CertificateRecord>,
    /// Channels with at least one subscribe connection, sorted by name.
    pub subscribed: Vec<ChannelRef>,
    pub connections: usize,
    /// The store's change generation this snapshot reflects.
    pub generation: i64,
}

impl Snapshot {
    pub fn build(t: Tables) -> Self {
        let mut grants: HashMap<String, HashMap<String, Grant>> = HashMap::new();
        let mut subscribed_ids = std::collections::HashSet::new();
        let connections = t.connections.len();
        for c in t.connections {
            if c.subscribe {
                subscribed_ids.insert(c.channel_id.clone());
            }
            grants.entry(c.client_id).or_default().insert(
                c.channel_id,
                Grant {
                    publish: c.publish,
                    subscribe: c.subscribe,
                },
            );
        }
        // Sized once: 10,000 clients would otherwise rehash each map a dozen times (READY).
        let n = t.clients.len();
        let mut s = Snapshot {
            by_identity: HashMap::with_capacity(n),
            by_id: HashMap::with_capacity(n),
            by_secret: HashMap::with_capacity(n),
            channels_by_id: HashMap::with_capacity(t.channels.len()),
            channels_by_name: HashMap::with_capacity(t.channels.len()),
            connections,
            generation: t.generation,
            ..Snapshot::default()
        };
        for c in t.clients {
            let client = Arc::new(CachedClient {
                grants: grants.remove(&c.id).unwrap_or_default(),
                id: c.id,
                identity: c.identity,
                secret: SecretBytes(c.secret.into_bytes().into_boxed_slice()),
                enabled: c.enabled,
            });
            s.by_identity
                .insert(client.identity.clone(), Arc::clone(&client));
            s.by_secret
                .insert(client.secret.clone(), Arc::clone(&client));
            s.by_id.insert(client.id.clone(), client);
        }
        for ch in t.channels {
            let ch = Arc::new(ChannelRef {
                id: ch.id,
                name: ch.name,
                domain_id: ch.domain_id,
                upstream_id: ch.upstream_id,
            });
            if subscribed_ids.contains(&ch.id) {
                s.subscribed.push((*ch).clone());
            }
            s.channels_by_name.insert(ch.name.clone(), Arc::clone(&ch));
            s.channels_by_id.insert(ch.id.clone(), ch);
        }
        s.subscribed.sort_by(|a, b| a.name.cmp(&b.name));
        s.certificates = t
            .certificates
            .into_iter()
            .map(|c| (c.serial_hex.clone(), c))
            .collect();
        s
    }

    pub fn clients(&self) -> usize {
        self.by_id.len()
    }

    pub fn disabled_clients(&self) -> usize {
        self.by_id.values().filter(|c| !c.enabled).count()
    }

    pub fn channels(&self) -> usize {
        self.channels_by_id.len()
    }

    /// Every channel, by id (the uplink maps local channel ids to upstream topics with it).
    pub fn directory(&self) -> Vec<ChannelRef> {
        let mut all: Vec<ChannelRef> = self
            .channels_by_id
            .values()
            .map(|c| (**c).clone())
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// By identity and secret. Wrong secret and unknown identity take the same path: one
    /// constant-time comparison.
    pub fn authenticate(&self, identity: &str, secret: &[u8]) -> Result<ClientRef, Denied> {
        match self.by_identity.get(identity) {
            Some(c) => {
                if !secret::ct_eq(&c.secret.0, secret) {
                    Err(Denied::BadSecret)
                } else if !c.enabled {
                    Err(Denied::ClientDisabled)
                } else {
                    Ok(c.to_ref())
                }
            }
            None => {
                let _ = secret::ct_eq(DUMMY_SECRET, secret);
                Err(Denied::UnknownIdentity)
            }
        }
    }

    /// The identity of the client whose id or identity is `user` (SuperMQ ≥ 0.20 and HTTP
    /// Basic name the client by id; edgegw's own forms by identity). An identity wins over an
    /// id that happens to spell it.
    pub fn resolve_identity<'a>(&'a self, user: &'a str) -> Option<&'a str> {
        if self.by_identity.contains_key(user) {
            return Some(user);
        }
        self.by_id.get(user).map(|c| c.identity.as_str())
    }

    /// By secret alone (SuperMQ `auth=<secret>`): secrets are unique in the store.
    pub fn authenticate_secret(&self, secret: &[u8]) -> Result<ClientRef, Denied> {
        match self.by_secret.get(secret) {
            Some(c) if secret::ct_eq(&c.secret.0, secret) => {
                if c.enabled {
                    Ok(c.to_ref())
                } else {
                    Err(Denied::ClientDisabled)
                }
            }
            _ => {
                let _ = secret::ct_eq(DUMMY_SECRET, secret);
                Err(Denied::BadSecret)
            }
        }
    }

    /// By a certificate the DTLS handshake already verified against the device CA: the CN must
    /// be an enabled client, the serial recorded for that client, the certificate the very one
    /// recorded (SHA-256 fingerprint, when given: a certificate with a recorded serial from
    /// another CA in the bundle is not the same certificate), not revoked, and `now` (unix
    /// seconds) within its validity.
    pub fn authenticate_certificate(
        &self,
        cn: &str,
        serial_hex: &str,
        fingerprint_sha256_hex: Option<&str>,
        now: i64,
    ) -> Result<ClientRef, Denied> {
        let client = self.by_identity.get(cn).ok_or(Denied::CertUnknown)?;
        let cert = match self.certificates.get(serial_hex) {
            Some(c) => c,
            None => super::store::normalize_serial(serial_hex)
                .ok()
                .and_then(|s| self.certificates.get(&s))
                .ok_or(Denied::CertUnknown)?,
        };
        if cert.client_id != client.id {
            return Err(Denied::CertUnknown);
        }
        if let Some(fingerprint) = fingerprint_sha256_hex
            && !fingerprint.eq_ignore_ascii_case(&cert.fingerprint_sha256_hex)
        {
            return Err(Denied::CertUnknown);
        }
        if cert.revoked_at.is_some() {
            return Err(Denied::CertRevoked {
                serial: cert.serial_hex.clone(),
            });
        }
        if now < cert.not_before || now > cert.not_after {
            return Err(Denied::CertExpired);
        }
        if !client.enabled {
            return Err(Denied::ClientDisabled);
        }
        Ok(client.to_ref())
    }

    /// An enabled client's secret, the DTLS-PSK key for its identity.
    pub fn psk_for_identity(&self, identity: &str) -> Option<Vec<u8>> {
        self.by_identity
            .get(identity)
            .filter(|c| c.enabled)
            .map(|c| c.secret.0.to_vec())
    }

    /// Ids of the enabled clients allowed to subscribe to `channel_id` (downlink recipients).
    pub fn subscribers(&self, channel_id: &str) -> Vec<String> {
        self.by_id
            .values()
            .filter(|c| c.enabled && c.grants.get(channel_id).is_some_and(|g| g.subscribe))
            .map(|c| c.id.clone())
            .collect()
    }

    /// May `client` (still present and enabled) do `op` on `channel` (id or local name)?
    pub fn authorize(
        &self,
        client: &ClientRef,
        channel: &str,
        op: Op,
    ) -> Result<ChannelRef, Denied> {
        let c = self.by_id.get(&client.id).ok_or(Denied::UnknownIdentity)?;
        if !c.enabled {
            return Err(Denied::ClientDisabled);
        }
        let ch = self
            .channels_by_id
            .get(channel)
            .or_else(|| self.channels_by_name.get(channel))
            .ok_or(Denied::UnknownChannel)?;
        let grant = c.grants.get(&ch.id).copied().unwrap_or_default();
        let allowed = match op {
            Op::Publish => grant.publish,
            Op::Subscribe => grant.subscribe,
        };
        if allowed {
            Ok((**ch).clone())
        } else {
            Err(Denied::NotConnected)
        }
    }

    /// Certificates revoked in `self` that were not revoked (or not known) in `before`.
    pub fn newly_revoked(&self, before: &Snapshot) -> Vec<CertificateRecord> {
        let mut out: Vec<CertificateRecord> = self
            .certificates
            .values()
            .filter(|c| {
                c.revoked_at.is_some()
                    && before
                        .certificates
                        .get(&c.serial_hex)
                        .is_none_or(|b| b.revoked_at.is_none())
            })
            .cloned()
            .collect();
        out.sort_by(|a, b| a.serial_hex.cmp(&b.serial_hex));
        out
    }
}
