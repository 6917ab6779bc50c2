//! The verified-token caches: a steady caller's WIT, and a transaction's Txn-Token, are
//! verified once, not on every request.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// The time bounds a cached token is rechecked against on every hit.
pub(crate) trait TimeBound {
    fn expires_at(&self) -> u64;
    fn not_before(&self) -> Option<u64>;
}

impl TimeBound for crate::protocol::wit::VerifiedWit {
    fn expires_at(&self) -> u64 {
        self.claims().exp
    }
    fn not_before(&self) -> Option<u64> {
        self.claims().nbf
    }
}

impl TimeBound for crate::protocol::txn::VerifiedTxnToken {
    fn expires_at(&self) -> u64 {
        self.expires_at()
    }
    fn not_before(&self) -> Option<u64> {
        Some(self.issued_at())
    }
}

/// The verified-WIT cache.
pub(crate) type WitCache = TokenCache<crate::protocol::wit::VerifiedWit>;

struct Entry<T> {
    wit: Arc<T>,
    generation: u64,
    usable_until: Option<u64>,
}

/// A token's SHA-256: the cache's key, 32 bytes where the token is a few hundred to 8 KiB.
type TokenDigest = [u8; 32];

/// The digest's own bits are a good hash: only verified tokens enter, and nobody aims SHA-256
/// outputs at one bucket.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // The array's own bytes (its length prefix goes through `write_usize`, ignored).
        if let Some(word) = bytes.get(..8) {
            self.0 = u64::from_le_bytes(word.try_into().unwrap_or_default());
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Verified tokens (WITs, Txn-Tokens) by the SHA-256 of the token, valid while the anchors they
/// were checked against are unchanged and not stale (`valid_until` of the trust domain's anchors,
/// so `max_stale` refuses a cached WIT exactly like an uncached one). Time-dependent checks are
/// repeated on every hit; only the signature, the parsing and the key checks are saved. Bounded:
/// when full of unexpired entries, new WITs are simply not cached (verification is unaffected).
/// Only WITs that verified enter, so invalid tokens cannot grow it.
pub(crate) struct TokenCache<T> {
    capacity: usize,
    // Keyed by the token's digest: a hit costs one SHA-256 of the token (about what hashing and
    // comparing the token itself cost) and keeps no copy of it. A read lock, so hits do not queue.
    entries: std::sync::RwLock<HashMap<TokenDigest, Entry<T>, BuildHasherDefault<DigestHasher>>>,
    /// When the last sweep of a full cache ran (seconds).
    swept_at: AtomicU64,
}

impl<T: TimeBound> TokenCache<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { capacity, entries: std::sync::RwLock::new(HashMap::default()), swept_at: AtomicU64::new(0) }
    }

    pub(crate) fn get(&self, token: &str, generation: u64, now: u64, leeway: u64) -> Option<Arc<T>> {
        if self.capacity == 0 {
            return None;
        }
        let key = digest(token);
        let entries = self.entries.read().ok()?;
        let Entry { wit, generation: cached_generation, usable_until } = entries.get(&key)?;
        let still_valid = *cached_generation == generation
            && usable_until.is_none_or(|until| now < until)
            && now < wit.expires_at().saturating_add(leeway)
            && wit.not_before().is_none_or(|nbf| nbf <= now.saturating_add(leeway));
        still_valid.then(|| wit.clone())
    }

    pub(crate) fn insert(&self, token: &str, wit: Arc<T>, generation: u64, usable_until: Option<u64>, now: u64) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut entries) = self.entries.write() else { return };
        // Full: sweep out what expired, at most once a second. A cache full of live entries is
        // then not rescanned on every insert (a flood of distinct valid tokens would make each
        // request pay a scan of the whole cache); new tokens are simply not cached until then.
        if entries.len() >= self.capacity && self.swept_at.swap(now, Ordering::Relaxed) < now {
            entries.retain(|_, e| e.generation == generation && now < e.wit.expires_at());
        }
        if entries.len() < self.capacity {
            entries.insert(digest(token), Entry { wit, generation, usable_until });
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.read().map(|e| e.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Token(u64);

    impl TimeBound for Token {
        fn expires_at(&self) -> u64 {
            self.0
        }
        fn not_before(&self) -> Option<u64> {
            None
        }
    }

    #[test]
    fn a_full_cache_is_swept_at_most_once_a_second() {
        let cache = TokenCache::new(2);
        cache.insert("a", Arc::new(Token(105)), 1, None, 100);
        cache.insert("b", Arc::new(Token(200)), 1, None, 100);
        cache.insert("c", Arc::new(Token(200)), 1, None, 100);
        assert_eq!(cache.len(), 2, "full of live entries: not cached");
        assert!(cache.get("c", 1, 100, 0).is_none());
        // `a` expires at 105; the sweep at 100 already ran, so nothing is rescanned in that second.
        cache.insert("c", Arc::new(Token(200)), 1, None, 100);
        assert_eq!(cache.len(), 2);
        cache.insert("c", Arc::new(Token(200)), 1, None, 106);
        assert!(cache.get("c", 1, 106, 0).is_some(), "swept the expired entry, then cached");
        assert!(cache.get("a", 1, 106, 0).is_none());
        // Entries of an older generation of anchors are never hits.
        assert!(cache.get("b", 2, 106, 0).is_none());
    }
}
