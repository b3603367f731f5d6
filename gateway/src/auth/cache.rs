//! The in-memory snapshot every decision is made from: built from [`Tables`] in one go,
//! immutable, swapped whole when the database changes. Pure: no I/O, no clock (callers pass
//! `now`), so decisions cost a few hash lookups.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
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

/// A client secret held in the cache (one copy per snapshot); its bytes are overwritten when
/// it goes (a snapshot is replaced, a client removed or its secret rotated).
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

/// One client as the snapshot holds it: a few hundred bytes each with 10,000 provisioned
/// (strings boxed to their length, no `Arc` or map of its own; docs/benchmarks.md).
struct CachedClient {
    id: Box<str>,
    identity: Box<str>,
    secret: SecretBytes,
    enabled: bool,
    /// (channel id, rights), sorted by channel id.
    grants: Box<[(Box<str>, Grant)]>,
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
            id: self.id.to_string(),
            identity: self.identity.to_string(),
        }
    }

    fn grant(&self, channel_id: &str) -> Option<Grant> {
        self.grants
            .binary_search_by(|(ch, _)| (**ch).cmp(channel_id))
            .ok()
            .map(|i| self.grants[i].1)
    }
}

/// The map of a key already hashed with the index's own random keys: no second hash.
#[derive(Debug, Default, Clone, Copy)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct BuildPrehashed;

impl BuildHasher for BuildPrehashed {
    type Hasher = Prehashed;
    fn build_hasher(&self) -> Prehashed {
        Prehashed(0)
    }
}

/// Which client a key (identity, id or secret) belongs to: the key's 64-bit keyed hash
/// (SipHash, random keys per snapshot) → the client's position, the key itself compared in
/// the client, so no key is stored twice. Two keys with the same hash (about one chance in
/// 10^12 with 10,000 clients) go to `collided`, searched when the first does not match.
#[derive(Debug, Default)]
struct Index {
    keys: RandomState,
    first: HashMap<u64, u32, BuildPrehashed>,
    collided: Vec<u32>,
}

impl Index {
    fn with_capacity(n: usize) -> Self {
        Self {
            keys: RandomState::new(),
            first: HashMap::with_capacity_and_hasher(n, BuildPrehashed),
            collided: Vec::new(),
        }
    }

    fn insert(&mut self, key: &[u8], at: u32) {
        let h = self.keys.hash_one(key);
        if let Some(prev) = self.first.insert(h, at) {
            // Keep the first, the later one searched on a miss.
            self.first.insert(h, prev);
            self.collided.push(at);
        }
    }

    /// The position of the client whose `key_of` is `key` (compared in constant time: one
    /// of the keys is the secret).
    fn get(
        &self,
        clients: &[CachedClient],
        key: &[u8],
        key_of: fn(&CachedClient) -> &[u8],
    ) -> Option<usize> {
        let at = |i: u32| {
            usize::try_from(i)
                .ok()
                .filter(|&i| secret::ct_eq(key_of(&clients[i]), key))
        };
        let first = self
            .first
            .get(&self.keys.hash_one(key))
            .copied()
            .and_then(at);
        first.or_else(|| self.collided.iter().copied().find_map(at))
    }
}

fn identity_of(c: &CachedClient) -> &[u8] {
    c.identity.as_bytes()
}

fn id_of(c: &CachedClient) -> &[u8] {
    c.id.as_bytes()
}

fn secret_of(c: &CachedClient) -> &[u8] {
    &c.secret.0
}

/// One consistent view of the store.
#[derive(Debug, Default)]
pub struct Snapshot {
    clients: Vec<CachedClient>,
    by_identity: Index,
    by_id: Index,
    by_secret: Index,
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
        let mut grants: HashMap<String, Vec<(Box<str>, Grant)>> = HashMap::new();
        let mut subscribed_ids = std::collections::HashSet::new();
        let connections = t.connections.len();
        for c in t.connections {
            if c.subscribe {
                subscribed_ids.insert(c.channel_id.clone());
            }
            grants.entry(c.client_id).or_default().push((
                c.channel_id.into_boxed_str(),
                Grant {
                    publish: c.publish,
                    subscribe: c.subscribe,
                },
            ));
        }
        // Sized once: 10,000 clients would otherwise rehash each map a dozen times (READY).
        let n = t.clients.len();
        let mut s = Snapshot {
            clients: Vec::with_capacity(n),
            by_identity: Index::with_capacity(n),
            by_id: Index::with_capacity(n),
            by_secret: Index::with_capacity(n),
            channels_by_id: HashMap::with_capacity(t.channels.len()),
            channels_by_name: HashMap::with_capacity(t.channels.len()),
            connections,
            generation: t.generation,
            ..Snapshot::default()
        };
        for c in t.clients {
            let Ok(at) = u32::try_from(s.clients.len()) else {
                break; // 4 billion clients: SQLite would not have loaded them either.
            };
            let mut client_grants = grants.remove(&c.id).unwrap_or_default();
            client_grants.sort_by(|a, b| a.0.cmp(&b.0));
            let client = CachedClient {
                grants: client_grants.into_boxed_slice(),
                id: c.id.into_boxed_str(),
                identity: c.identity.into_boxed_str(),
                secret: SecretBytes(c.secret.into_bytes().into_boxed_slice()),
                enabled: c.enabled,
            };
            s.by_identity.insert(identity_of(&client), at);
            s.by_secret.insert(secret_of(&client), at);
            s.by_id.insert(id_of(&client), at);
            s.clients.push(client);
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
        self.clients.len()
    }

    pub fn disabled_clients(&self) -> usize {
        self.clients.iter().filter(|c| !c.enabled).count()
    }

    fn by_identity(&self, identity: &str) -> Option<&CachedClient> {
        let i = self
            .by_identity
            .get(&self.clients, identity.as_bytes(), identity_of)?;
        Some(&self.clients[i])
    }

    fn by_id(&self, id: &str) -> Option<&CachedClient> {
        let i = self.by_id.get(&self.clients, id.as_bytes(), id_of)?;
        Some(&self.clients[i])
    }

    fn by_secret(&self, secret: &[u8]) -> Option<&CachedClient> {
        let i = self.by_secret.get(&self.clients, secret, secret_of)?;
        Some(&self.clients[i])
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
        match self.by_identity(identity) {
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
        if self.by_identity(user).is_some() {
            return Some(user);
        }
        self.by_id(user).map(|c| &*c.identity)
    }

    /// By secret alone (SuperMQ `auth=<secret>`): secrets are unique in the store.
    pub fn authenticate_secret(&self, secret: &[u8]) -> Result<ClientRef, Denied> {
        // The index compared the secret in constant time.
        match self.by_secret(secret) {
            Some(c) => {
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
        let client = self.by_identity(cn).ok_or(Denied::CertUnknown)?;
        let cert = match self.certificates.get(serial_hex) {
            Some(c) => c,
            None => super::store::normalize_serial(serial_hex)
                .ok()
                .and_then(|s| self.certificates.get(&s))
                .ok_or(Denied::CertUnknown)?,
        };
        if cert.client_id != *client.id {
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
        self.by_identity(identity)
            .filter(|c| c.enabled)
            .map(|c| c.secret.0.to_vec())
    }

    /// Ids of the enabled clients allowed to subscribe to `channel_id` (downlink recipients).
    pub fn subscribers(&self, channel_id: &str) -> Vec<String> {
        self.clients
            .iter()
            .filter(|c| c.enabled && c.grant(channel_id).is_some_and(|g| g.subscribe))
            .map(|c| c.id.to_string())
            .collect()
    }

    /// May `client` (still present and enabled) do `op` on `channel` (id or local name)?
    pub fn authorize(
        &self,
        client: &ClientRef,
        channel: &str,
        op: Op,
    ) -> Result<Arc<ChannelRef>, Denied> {
        let c = self.by_id(&client.id).ok_or(Denied::UnknownIdentity)?;
        if !c.enabled {
            return Err(Denied::ClientDisabled);
        }
        let ch = self
            .channels_by_id
            .get(channel)
            .or_else(|| self.channels_by_name.get(channel))
            .ok_or(Denied::UnknownChannel)?;
        let grant = c.grant(&ch.id).unwrap_or_default();
        let allowed = match op {
            Op::Publish => grant.publish,
            Op::Subscribe => grant.subscribe,
        };
        if allowed {
            // Shared with the snapshot: no copy of the channel's four strings per message.
            Ok(Arc::clone(ch))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn client(identity: &str) -> CachedClient {
        CachedClient {
            id: format!("id-{identity}").into(),
            identity: identity.into(),
            secret: SecretBytes(format!("secret-{identity}").into_bytes().into()),
            enabled: true,
            grants: Box::default(),
        }
    }

    /// A key whose hash is taken by another client's key is found among the collided ones;
    /// a key that is nobody's is not found, though its hash slot is occupied.
    #[test]
    fn the_index_compares_keys_and_searches_collisions() {
        let clients = vec![client("a"), client("b"), client("c")];
        let mut index = Index::with_capacity(3);
        index.insert(identity_of(&clients[0]), 0);
        index.insert(identity_of(&clients[2]), 2);
        // As if "b" hashed like "a": its slot already holds "a".
        let h = index.keys.hash_one(b"b");
        index.first.insert(h, 0);
        index.collided.push(1);
        assert_eq!(index.get(&clients, b"a", identity_of), Some(0));
        assert_eq!(index.get(&clients, b"b", identity_of), Some(1));
        assert_eq!(index.get(&clients, b"c", identity_of), Some(2));
        assert_eq!(index.get(&clients, b"d", identity_of), None);
        // Same bytes, other field: not a match.
        assert_eq!(index.get(&clients, b"id-a", identity_of), None);
        // A second client with the same key goes to `collided`; the first keeps the slot.
        index.insert(identity_of(&clients[0]), 1);
        assert_eq!(index.collided, vec![1, 1]);
        assert_eq!(index.get(&clients, b"a", identity_of), Some(0));
    }
}
