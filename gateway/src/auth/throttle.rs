//! Token-bucket throttling of failed authentications, keyed by remote address or identity.
//! Sans-IO: the caller passes `now`, so tests run in virtual time. Memory is bounded: at most
//! `max_tracked` keys; fully refilled buckets are forgotten first, then the least throttled
//! (most tokens left), so a flood of failures from spoofed distinct addresses cannot flush a
//! throttled attacker's bucket.
//!
//! [`AuthThrottle`] is the sensor adapters' throttle over two [`Buckets`] (per remote address,
//! per known identity) and the (address, identity) pairs that authenticated recently: the
//! identity bucket does not stop such a pair, so wrong secrets for a sensor's identity sent
//! from other addresses do not lock out the sensor itself. For a source whose address is
//! proven (a DTLS handshake past its cookie exchange), [`AuthThrottle::check_proven`] lets a
//! trusted pair through a throttled address or identity as long as that pair's own failed
//! handshakes stay within the burst (their own bucket), so junk spoofed from a sensor's address
//! cannot delay its handshake, and a guesser sharing the sensor's address (same NAT) is slowed
//! like any other once it failed `burst` times.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A throttled caller: try again after `retry_after` (CoAP 4.29 Max-Age, `ERR busy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many failed authentications; retry after {retry_after:?}")]
pub struct Throttled {
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens (failures still allowed), as of `at`.
    tokens: f64,
    at: Instant,
}

/// Buckets of `burst` tokens, one token back every `refill`.
#[derive(Debug)]
pub struct Buckets<K> {
    burst: f64,
    refill: Duration,
    max_tracked: usize,
    map: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    pub fn new(burst: u32, refill: Duration, max_tracked: usize) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            refill: refill.max(Duration::from_millis(1)),
            max_tracked: max_tracked.max(1),
            map: HashMap::new(),
        }
    }

    fn tokens(&self, b: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        (b.tokens + elapsed / self.refill.as_secs_f64()).min(self.burst)
    }

    /// Ok while `key` has a failure left; otherwise how long until it has one.
    pub fn check<Q>(&self, key: &Q, now: Instant) -> Result<(), Throttled>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(b) = self.map.get(key) else {
            return Ok(());
        };
        let tokens = self.tokens(b, now);
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(Throttled {
                retry_after: self.refill.mul_f64(1.0 - tokens),
            })
        }
    }

    /// Takes one token for a failure (never below zero).
    pub fn charge(&mut self, key: K, now: Instant) {
        if !self.map.contains_key(&key) && self.map.len() >= self.max_tracked {
            self.evict(now);
        }
        let full = Bucket {
            tokens: self.burst,
            at: now,
        };
        let current = self.map.get(&key).copied().unwrap_or(full);
        let tokens = (self.tokens(&current, now) - 1.0).max(0.0);
        self.map.insert(key, Bucket { tokens, at: now });
    }

    /// Makes room: forgets fully refilled buckets; if that frees nothing, forgets the eighth
    /// of the keys with the most tokens left (the least throttled; among equals the longest
    /// idle), so the worst offenders stay and eviction costs O(1) amortised per charge.
    fn evict(&mut self, now: Instant) {
        let burst = self.burst;
        let refill = self.refill.as_secs_f64();
        self.map.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() / refill < burst
        });
        if self.map.len() < self.max_tracked {
            return;
        }
        let mut ranked: Vec<(f64, Instant, K)> = self
            .map
            .iter()
            .map(|(k, b)| (self.tokens(b, now), b.at, k.clone()))
            .collect();
        let drop = (self.max_tracked / 8).max(1).min(ranked.len());
        // Most tokens first; among equal tokens the oldest first.
        let order =
            |a: &(f64, Instant, K), b: &(f64, Instant, K)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if drop < ranked.len() {
            ranked.select_nth_unstable_by(drop - 1, order);
        }
        for (_, _, key) in ranked.into_iter().take(drop) {
            self.map.remove(&key);
        }
    }

    pub fn tracked(&self) -> usize {
        self.map.len()
    }
}

/// How long a successful authentication keeps its (address, identity) pair trusted.
pub const TRUSTED_FOR: Duration = Duration::from_secs(24 * 3600);
/// Identities remembered as trusted per address (sensors behind one NAT); the oldest goes.
const TRUSTED_PER_ADDRESS: usize = 16;

/// The failed-authentication throttle of the sensor adapters. See the module docs.
#[derive(Debug)]
pub struct AuthThrottle {
    by_remote: Buckets<IpAddr>,
    by_identity: Buckets<String>,
    /// address → identities that authenticated from it, with when they last did.
    trusted: HashMap<IpAddr, Vec<(String, Instant)>>,
    /// Failures of (address, identity) pairs whose address was proven (DTLS-PSK handshakes).
    by_proven_pair: Buckets<(IpAddr, String)>,
    max_tracked: usize,
}

impl AuthThrottle {
    pub fn new(burst: u32, refill: Duration, max_tracked: usize) -> Self {
        Self {
            by_remote: Buckets::new(burst, refill, max_tracked),
            by_identity: Buckets::new(burst, refill, max_tracked),
            trusted: HashMap::new(),
            by_proven_pair: Buckets::new(burst, refill, max_tracked),
            max_tracked: max_tracked.max(1),
        }
    }

    /// Whether `identity` authenticated from `remote` within [`TRUSTED_FOR`].
    pub fn is_trusted_pair(&self, remote: IpAddr, identity: &str, now: Instant) -> bool {
        self.trusted.get(&remote).is_some_and(|ids| {
            ids.iter()
                .any(|(id, at)| id == identity && now.saturating_duration_since(*at) < TRUSTED_FOR)
        })
    }

    /// Whether anyone authenticated from `remote` within [`TRUSTED_FOR`].
    pub fn is_trusted_source(&self, remote: IpAddr, now: Instant) -> bool {
        self.trusted.get(&remote).is_some_and(|ids| {
            ids.iter()
                .any(|(_, at)| now.saturating_duration_since(*at) < TRUSTED_FOR)
        })
    }

    /// Ok unless `remote` used up its budget, or `identity` did and this pair is not trusted.
    pub fn check(
        &self,
        remote: Option<IpAddr>,
        identity: Option<&str>,
        now: Instant,
    ) -> Result<(), Throttled> {
        let a = remote.map_or(Ok(()), |ip| self.by_remote.check(&ip, now));
        let b = match identity {
            None => Ok(()),
            Some(id) => match self.by_identity.check(id, now) {
                Err(_) if remote.is_some_and(|ip| self.is_trusted_pair(ip, id, now)) => Ok(()),
                other => other,
            },
        };
        match (a, b) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(x), Ok(())) | (Ok(()), Err(x)) => Err(x),
            (Err(x), Err(y)) => Err(if y.retry_after > x.retry_after { y } else { x }),
        }
    }

    /// As [`Self::check`], for a source whose address is proven (a DTLS handshake past its
    /// cookie exchange; plain CoAP proves nothing). A trusted pair is decided by its own
    /// proven failures alone ([`Self::proven_pair_failure`]): it passes while they stay within
    /// the burst, whatever others charged to the address or the identity; once the pair used
    /// up its own budget it is refused like anyone else until a token comes back.
    pub fn check_proven(
        &self,
        remote: IpAddr,
        identity: &str,
        now: Instant,
    ) -> Result<(), Throttled> {
        if self.is_trusted_pair(remote, identity, now) {
            return self
                .by_proven_pair
                .check(&(remote, identity.to_owned()), now);
        }
        self.check(Some(remote), Some(identity), now)
    }

    /// A failure of `identity` (an existing client) from the proven address `remote`: charged
    /// to the pair's own bucket (beside [`Self::failure`] for the address and identity).
    pub fn proven_pair_failure(&mut self, remote: IpAddr, identity: &str, now: Instant) {
        if identity.len() <= 128 {
            self.by_proven_pair
                .charge((remote, identity.to_owned()), now);
        }
    }

    /// A failed authentication from `remote`. `known_identity` is charged only when it names
    /// an existing client: made-up identities would only fill the table.
    pub fn failure(&mut self, remote: Option<IpAddr>, known_identity: Option<&str>, now: Instant) {
        if let Some(ip) = remote {
            self.by_remote.charge(ip, now);
        }
        if let Some(id) = known_identity.filter(|id| id.len() <= 128) {
            self.by_identity.charge(id.to_owned(), now);
        }
    }

    /// A successful authentication of `identity` from `remote`: the pair becomes trusted.
    pub fn success(&mut self, remote: Option<IpAddr>, identity: &str, now: Instant) {
        let Some(ip) = remote else { return };
        if let Some(ids) = self.trusted.get_mut(&ip) {
            if let Some(entry) = ids.iter_mut().find(|(id, _)| id == identity) {
                entry.1 = now;
                return;
            }
            if ids.len() >= TRUSTED_PER_ADDRESS
                && let Some(oldest) = ids
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, e)| e.1)
                    .map(|(i, _)| i)
            {
                ids.swap_remove(oldest);
            }
            ids.push((identity.to_owned(), now));
            return;
        }
        if self.trusted.len() >= self.max_tracked {
            self.trusted.retain(|_, ids| {
                ids.retain(|(_, at)| now.saturating_duration_since(*at) < TRUSTED_FOR);
                !ids.is_empty()
            });
            if self.trusted.len() >= self.max_tracked {
                // Forget the address whose latest success is the oldest.
                let oldest = self
                    .trusted
                    .iter()
                    .min_by_key(|(_, ids)| ids.iter().map(|e| e.1).max())
                    .map(|(ip, _)| *ip);
                if let Some(ip) = oldest {
                    self.trusted.remove(&ip);
                }
            }
        }
        self.trusted.insert(ip, vec![(identity.to_owned(), now)]);
    }

    /// Keys tracked: (addresses, identities, trusted addresses); proven pairs are bounded
    /// like the others (`max_tracked`).
    pub fn tracked(&self) -> (usize, usize, usize) {
        (
            self.by_remote.tracked(),
            self.by_identity.tracked(),
            self.trusted.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn burst_then_refused_then_refilled() {
        let t0 = Instant::now();
        let mut b = Buckets::new(3, Duration::from_secs(10), 100);
        for _ in 0..3 {
            b.check("k", t0).unwrap();
            b.charge("k".to_owned(), t0);
        }
        let err = b.check("k", t0).unwrap_err();
        assert_eq!(err.retry_after, Duration::from_secs(10));
        let err = b.check("k", t0 + Duration::from_secs(4)).unwrap_err();
        assert!(
            err.retry_after > Duration::from_secs(5) && err.retry_after <= Duration::from_secs(6),
            "{err:?}"
        );
        b.check("k", t0 + Duration::from_secs(10)).unwrap();
        b.check("other", t0).unwrap();
    }

    #[test]
    fn memory_is_bounded_and_refilled_keys_go_first() {
        let t0 = Instant::now();
        let mut b = Buckets::new(1, Duration::from_secs(1), 16);
        for i in 0..100 {
            b.charge(i, t0 + Duration::from_millis(i));
        }
        assert_eq!(b.tracked(), 16);
        // The most recent failure is still remembered.
        assert!(b.check(&99, t0 + Duration::from_millis(99)).is_err());
    }

    /// Issue 20.5: 25,000 failures from spoofed distinct addresses must not evict the bucket
    /// of an attacker that used up its budget (it would be free to guess again).
    #[test]
    fn a_flood_of_distinct_keys_does_not_evict_a_throttled_one() {
        let t0 = Instant::now();
        let mut b = Buckets::new(10, Duration::from_secs(6), 1000);
        for _ in 0..10 {
            b.charge("attacker".to_owned(), t0);
        }
        assert!(b.check("attacker", t0).is_err());
        for i in 0..25_000u32 {
            let at = t0 + Duration::from_micros(u64::from(i));
            b.charge(format!("spoofed-{i}"), at);
            assert!(b.tracked() <= 1000);
        }
        let end = t0 + Duration::from_millis(30);
        assert!(
            b.check("attacker", end).is_err(),
            "the throttled attacker's bucket was evicted by the flood"
        );
    }

    #[test]
    fn a_trusted_pair_passes_the_identity_bucket_but_not_the_address_bucket() {
        let t0 = Instant::now();
        let sensor: IpAddr = "192.0.2.10".parse().unwrap();
        let attacker: IpAddr = "192.0.2.66".parse().unwrap();
        let mut t = AuthThrottle::new(3, Duration::from_secs(60), 100);
        t.success(Some(sensor), "s1", t0);
        // Wrong secrets for s1 from other addresses empty the identity bucket.
        for i in 0..12u8 {
            t.failure(Some(IpAddr::from([198, 51, 100, i])), Some("s1"), t0);
        }
        assert!(t.check(Some(attacker), Some("s1"), t0).is_err());
        assert!(t.check(None, Some("s1"), t0).is_err());
        // The sensor that authenticated from its address before is not locked out.
        t.check(Some(sensor), Some("s1"), t0).unwrap();
        assert!(t.is_trusted_source(sensor, t0));
        assert!(!t.is_trusted_source(attacker, t0));
        // Its own address bucket still counts its own failures.
        for _ in 0..3 {
            t.failure(Some(sensor), Some("s1"), t0);
        }
        assert!(t.check(Some(sensor), Some("s1"), t0).is_err());
        // Trust expires.
        let later = t0 + TRUSTED_FOR;
        assert!(!t.is_trusted_pair(sensor, "s1", later));
    }

    /// Issue 20.5 for DTLS-PSK: junk from a sensor's address (and guesses for its identity
    /// from elsewhere) do not stop the sensor's proven handshakes; a guesser sharing its
    /// address (same NAT) gets `burst` failed handshakes, then is refused like anyone else.
    #[test]
    fn a_trusted_proven_pair_passes_until_its_own_failures_use_up_the_burst() {
        let t0 = Instant::now();
        let nat: IpAddr = "192.0.2.10".parse().unwrap();
        let mut t = AuthThrottle::new(3, Duration::from_secs(60), 100);
        t.success(Some(nat), "s1", t0);
        // Spoofed junk from the sensor's address and guesses for its identity from elsewhere.
        for _ in 0..10 {
            t.failure(Some(nat), None, t0);
            t.failure(Some(IpAddr::from([198, 51, 100, 1])), Some("s1"), t0);
        }
        assert!(t.check(Some(nat), Some("s1"), t0).is_err(), "plain check");
        t.check_proven(nat, "s1", t0).unwrap();
        // Another client never authenticated from there: throttled by the address.
        assert!(t.check_proven(nat, "s2", t0).is_err());
        // A guesser at the sensor's address: its failed handshakes are the pair's own.
        for n in 0..3 {
            t.check_proven(nat, "s1", t0)
                .unwrap_or_else(|e| panic!("refused after {n} failures: {e:?}"));
            t.failure(Some(nat), Some("s1"), t0);
            t.proven_pair_failure(nat, "s1", t0);
        }
        let refused = t.check_proven(nat, "s1", t0).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(60));
        // A token comes back per refill.
        t.check_proven(nat, "s1", t0 + Duration::from_secs(60))
            .unwrap();
        // Without trust, the pair bucket gives no pass.
        let other: IpAddr = "192.0.2.11".parse().unwrap();
        for _ in 0..3 {
            t.failure(Some(other), Some("s1"), t0);
        }
        assert!(t.check_proven(other, "s1", t0).is_err());
    }

    #[test]
    fn trusted_pairs_are_bounded() {
        let t0 = Instant::now();
        let mut t = AuthThrottle::new(3, Duration::from_secs(60), 16);
        for i in 0..100u8 {
            t.success(
                Some(IpAddr::from([10, 0, 0, i])),
                "s",
                t0 + Duration::from_millis(u64::from(i)),
            );
            for n in 0..20 {
                t.success(Some(IpAddr::from([10, 0, 1, 1])), &format!("id{n}"), t0);
            }
        }
        let (_, _, trusted) = t.tracked();
        assert!(trusted <= 16, "{trusted}");
        let ids = t
            .trusted
            .get(&IpAddr::from([10, 0, 1, 1]))
            .map_or(0, Vec::len);
        assert!(ids <= TRUSTED_PER_ADDRESS, "{ids}");
        // The latest success is remembered.
        assert!(t.is_trusted_pair(IpAddr::from([10, 0, 0, 99]), "s", t0));
    }

    proptest! {
        /// Over any schedule, the failures accepted never exceed burst + elapsed / refill.
        #[test]
        fn never_more_failures_than_the_bucket_allows(
            burst in 1u32..20,
            refill_ms in 1u64..5000,
            gaps in proptest::collection::vec(0u64..3000, 1..200),
        ) {
            let t0 = Instant::now();
            let mut b = Buckets::new(burst, Duration::from_millis(refill_ms), 100);
            let mut now = t0;
            let mut accepted = 0u64;
            for gap in gaps {
                now += Duration::from_millis(gap);
                if b.check("k", now).is_ok() {
                    accepted += 1;
                    b.charge("k", now);
                }
            }
            let elapsed = now.duration_since(t0).as_millis() as u64;
            prop_assert!(accepted <= u64::from(burst) + elapsed / refill_ms + 1,
                "accepted {} burst {} elapsed {} refill {}", accepted, burst, elapsed, refill_ms);
        }
    }
}
