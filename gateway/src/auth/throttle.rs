//! Token-bucket throttling of failed authentications, keyed by remote address or identity.
//! Sans-IO: the caller passes `now`, so tests run in virtual time. Memory is bounded: at most
//! `max_tracked` keys; fully refilled buckets are forgotten first.

use std::collections::HashMap;
use std::hash::Hash;
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

    fn evict(&mut self, now: Instant) {
        let burst = self.burst;
        let refill = self.refill.as_secs_f64();
        self.map.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() / refill < burst
        });
        if self.map.len() >= self.max_tracked {
            // Still full of active attackers: forget the one idle longest.
            if let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, b)| b.at)
                .map(|(k, _)| k.clone())
            {
                self.map.remove(&oldest);
            }
        }
    }

    pub fn tracked(&self) -> usize {
        self.map.len()
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
