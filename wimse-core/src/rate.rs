//! Token-bucket rate limits keyed by a caller (a client name, a source address), bounded in
//! memory: what the identity server applies to issuance and to failed authentications.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Mutex;

/// How many requests a key may make: `burst` at once, then `per_minute` a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Requests allowed at once.
    pub burst: u32,
    /// Requests allowed per minute once the burst is spent.
    pub per_minute: u32,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Thousandths of a request.
    milli_tokens: u64,
    updated: u64,
}

/// Most keys tracked at once; past it, idle (full) buckets are forgotten, and if none is idle
/// new keys are not limited (so a flood of distinct keys cannot lock out newcomers).
const MAX_KEYS: usize = 65_536;

/// Token buckets per key. Time is in seconds (the caller's clock).
pub struct RateLimiter<K> {
    rate: Rate,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K> fmt::Debug for RateLimiter<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter").field("rate", &self.rate).finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    /// A limiter allowing `rate` per key.
    pub fn new(rate: Rate) -> Self {
        Self { rate, buckets: Mutex::new(HashMap::new()) }
    }

    fn capacity(&self) -> u64 {
        u64::from(self.rate.burst.max(1)) * 1000
    }

    fn refill(&self, bucket: &mut Bucket, now: u64) {
        let elapsed = now.saturating_sub(bucket.updated);
        // per_minute / 60 requests a second, in thousandths.
        let added = elapsed.saturating_mul(u64::from(self.rate.per_minute)).saturating_mul(1000) / 60;
        bucket.milli_tokens = bucket.milli_tokens.saturating_add(added).min(self.capacity());
        bucket.updated = now.max(bucket.updated);
    }

    /// Takes `cost` requests' worth from `key`'s bucket, or returns the seconds until it could.
    pub fn take(&self, key: &K, cost: u32, now: u64) -> Result<(), u64> {
        // A panic elsewhere must neither lift the limits nor lock everyone out: keep the counts.
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !buckets.contains_key(key) && buckets.len() >= MAX_KEYS {
            let capacity = self.capacity();
            buckets.retain(|_, bucket| {
                self.refill(bucket, now);
                bucket.milli_tokens < capacity
            });
            if buckets.len() >= MAX_KEYS {
                tracing::warn!("wimse: rate limiter full of active keys; a new key is not limited");
                return Ok(());
            }
        }
        let capacity = self.capacity();
        let bucket = buckets.entry(key.clone()).or_insert(Bucket { milli_tokens: capacity, updated: now });
        self.refill(bucket, now);
        let cost = u64::from(cost) * 1000;
        if bucket.milli_tokens >= cost {
            bucket.milli_tokens -= cost;
            return Ok(());
        }
        Err(self.wait_for(cost - bucket.milli_tokens))
    }

    /// Seconds until `missing` thousandths of a request have refilled.
    fn wait_for(&self, missing: u64) -> u64 {
        match u64::from(self.rate.per_minute).saturating_mul(1000) {
            0 => 60,
            per_minute => missing.saturating_mul(60).div_ceil(per_minute).max(1),
        }
    }

    /// Whether `key` could take `cost` now, without taking it.
    pub fn would_allow(&self, key: &K, cost: u32, now: u64) -> Result<(), u64> {
        let buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(mut bucket) = buckets.get(key).copied() else { return Ok(()) };
        self.refill(&mut bucket, now);
        let cost = u64::from(cost) * 1000;
        if bucket.milli_tokens >= cost {
            return Ok(());
        }
        Err(self.wait_for(cost - bucket.milli_tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_per_key() {
        let limiter = RateLimiter::new(Rate { burst: 3, per_minute: 60 });
        for _ in 0..3 {
            limiter.take(&"a", 1, 100).unwrap();
        }
        assert_eq!(limiter.take(&"a", 1, 100), Err(1));
        limiter.take(&"b", 1, 100).unwrap();
        // One a second comes back.
        limiter.take(&"a", 1, 101).unwrap();
        assert_eq!(limiter.take(&"a", 1, 101), Err(1));
        assert_eq!(limiter.would_allow(&"a", 1, 101), Err(1));
        let slow = RateLimiter::new(Rate { burst: 1, per_minute: 1 });
        slow.take(&"a", 1, 0).unwrap();
        assert_eq!(slow.take(&"a", 1, 0), Err(60), "one a minute");
        assert_eq!(limiter.would_allow(&"a", 1, 105), Ok(()));
        // Refills never exceed the burst.
        limiter.take(&"a", 3, 1000).unwrap();
        assert!(limiter.take(&"a", 1, 1000).is_err());
    }
}
