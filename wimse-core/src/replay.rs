//! Replay protection: every proof is claimed once while it could still be accepted.
//!
//! The inbound pipeline ([`crate::server::verify`]) claims a proof last: after its credentials
//! verified and after the policy allowed the caller, so a refused caller costs nothing shared.
//! A claim is a fixed-size [`ReplayClaim`] (a digest of the sender and the proof id, or of the
//! HTTP-signature nonce alone), so no input makes an entry larger.
//!
//! Two bounds keep one caller from exhausting the store for the others:
//! - a [`ReplayStore`] holds a bounded number of live claims ([`InMemoryReplayStore`] refuses
//!   more with 503 rather than forgetting live ones);
//! - a [`CallerQuota`] lets no single workload identity hold more than its share of live claims
//!   (429 with `Retry-After` for that caller only).
//!
//! Stores answer with a [`Claim`], a future that is ready at once for the in-memory store (no
//! allocation, no runtime needed) and asynchronous for a shared store such as
//! [`RedisReplayStore`] (feature `redis`), which never blocks a runtime thread.
//!
// Without the feature the type is not here: link to its documentation on docs.rs instead.
#![cfg_attr(feature = "redis", doc = "[`RedisReplayStore`]: RedisReplayStore")]
#![cfg_attr(
    not(feature = "redis"),
    doc = "[`RedisReplayStore`]: https://docs.rs/wimse-core/latest/wimse_core/replay/struct.RedisReplayStore.html"
)]

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};
use crate::id::WorkloadId;

/// Longest proof identifier accepted (a WPT `jti` or an HTTP-signature `nonce`), in bytes.
/// Longer ones are refused before anything is stored.
pub const MAX_PROOF_ID_LEN: usize = 256;

/// One proof to remember: a 128-bit digest naming it, and how long it must be remembered.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ReplayClaim {
    key: u128,
    expires_at: u64,
    earliest_claim: u64,
}

impl fmt::Debug for ReplayClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayClaim")
            .field("key", &format_args!("{:032x}", self.key))
            .field("expires_at", &self.expires_at)
            .field("earliest_claim", &self.earliest_claim)
            .finish()
    }
}

fn digest(parts: &[&[u8]]) -> u128 {
    let mut hash = Sha256::new();
    for part in parts {
        // Length-prefixed, so no two part lists hash the same bytes.
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    let out = hash.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&out[..16]);
    u128::from_be_bytes(first)
}

impl ReplayClaim {
    /// A WPT: its `jti` is unique per sender (wpt-02), so the claim names both.
    /// `expires_at` is the last moment the proof is accepted (`exp` + leeway) and
    /// `earliest_claim` the first moment any verifier could have accepted it.
    pub fn wpt(sender: &WorkloadId, jti: &str, expires_at: u64, earliest_claim: u64) -> Self {
        Self { key: digest(&[b"wpt", sender.as_str().as_bytes(), jti.as_bytes()]), expires_at, earliest_claim }
    }

    /// An HTTP-signature nonce: refused a second time whoever sends it (http-signature-07+).
    pub fn signature_nonce(nonce: &str, expires_at: u64, earliest_claim: u64) -> Self {
        Self { key: digest(&[b"httpsig-nonce", nonce.as_bytes()]), expires_at, earliest_claim }
    }

    /// Any other single-use token: `id` (a `jti`) unique within `namespace` (e.g. an
    /// assertion's issuer), remembered until `expires_at`. `earliest_claim` must come from the
    /// token itself (its `iat` or `exp` less its longest lifetime, less the leeway), never from
    /// the time of the claim: a shared store that lost its state refuses proofs whose
    /// `earliest_claim` is before its new epoch, and one claimed "now" would always pass, even
    /// if it was accepted before the loss.
    pub fn token(namespace: &str, id: &str, expires_at: u64, earliest_claim: u64) -> Self {
        Self { key: digest(&[b"token", namespace.as_bytes(), id.as_bytes()]), expires_at, earliest_claim }
    }

    /// The 128-bit digest naming the proof.
    pub fn key(&self) -> u128 {
        self.key
    }

    /// Until when (seconds since the epoch) the proof must be remembered.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// The earliest moment a verifier could have accepted the proof. A store that lost its
    /// state at time `t` refuses proofs with `earliest_claim <= t`: they may have been
    /// accepted before the loss.
    pub fn earliest_claim(&self) -> u64 {
        self.earliest_claim
    }
}

/// Remembers claimed proofs until they expire. Shared by every request of a verifier (and, for
/// a shared store, by every replica).
///
/// Implementations must be atomic: of two concurrent claims with the same key, exactly one
/// succeeds. A store that cannot answer fails closed.
pub trait ReplayStore: Send + Sync + fmt::Debug {
    /// Claims `claim` at `now` (seconds since the epoch). The [`Claim`] resolves to `Ok(())` the
    /// first time, [`ErrorKind::ReplayedProof`] while the claim is remembered, and
    /// [`ErrorKind::ReplayCacheFull`] / [`ErrorKind::ReplayCacheUnavailable`] when the store
    /// cannot remember it.
    fn claim(&self, claim: &ReplayClaim, now: u64) -> Claim;
}

impl<S: ReplayStore + ?Sized> ReplayStore for std::sync::Arc<S> {
    fn claim(&self, claim: &ReplayClaim, now: u64) -> Claim {
        (**self).claim(claim, now)
    }
}

type BoxedClaim = Pin<Box<dyn Future<Output = Result<()>> + Send + 'static>>;

/// The answer of a [`ReplayStore`]: ready at once (in-memory stores, no allocation) or a
/// future (shared stores). Poll it or `.await` it; [`Claim::into_ready`] takes a ready answer
/// without a runtime.
#[must_use = "a claim does nothing until its answer is taken"]
pub struct Claim(ClaimState);

enum ClaimState {
    Ready(Option<Result<()>>),
    Pending(BoxedClaim),
}

impl Claim {
    /// An answer known now.
    pub fn ready(result: Result<()>) -> Self {
        Self(ClaimState::Ready(Some(result)))
    }

    /// An answer still to come.
    pub fn pending(future: impl Future<Output = Result<()>> + Send + 'static) -> Self {
        Self(ClaimState::Pending(Box::pin(future)))
    }

    /// The answer if it is known now, otherwise the claim itself back.
    pub fn into_ready(self) -> std::result::Result<Result<()>, Self> {
        match self.0 {
            ClaimState::Ready(Some(result)) => Ok(result),
            state => Err(Self(state)),
        }
    }
}

impl fmt::Debug for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            ClaimState::Ready(_) => "Claim::Ready",
            ClaimState::Pending(_) => "Claim::Pending",
        })
    }
}

impl Future for Claim {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match &mut self.0 {
            ClaimState::Ready(result) => Poll::Ready(
                result
                    .take()
                    .unwrap_or_else(|| Err(Error::with_detail(ErrorKind::ReplayCacheUnavailable, "polled twice"))),
            ),
            ClaimState::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

/// A claim's 128-bit key as two words: aligned to 8 bytes, so a table slot (key and expiry) is
/// 24 bytes, where a `u128` key would make it 32.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct SlotKey(u64, u64);

impl SlotKey {
    fn of(key: u128) -> Self {
        Self(key as u64, (key >> 64) as u64)
    }
}

/// Claim keys are SHA-256 digests of what the caller sent, but a caller can still grind a few
/// bits of them (about 32 tries per nonce to pick one of 32 shards), so shards and table slots
/// are chosen with keys secret to this process: nobody aims at one shard to fill it, or at one
/// bucket to slow a table down.
type ClaimMap = HashMap<SlotKey, u64, RandomState>;

/// Number of independently locked shards: many cores verify at once without meeting on one lock.
const SHARDS: usize = 32;

/// Expired entries are swept at least this often (seconds), and at once when a shard is full.
const SWEEP_INTERVAL: u64 = 5;

struct Shard {
    entries: ClaimMap,
    next_sweep: u64,
    last_sweep: u64,
}

impl Shard {
    fn sweep(&mut self, now: u64) {
        self.entries.retain(|_, expires_at| *expires_at > now);
        self.last_sweep = now;
        self.next_sweep = now.saturating_add(SWEEP_INTERVAL);
    }
}

/// A bounded, sharded in-memory [`ReplayStore`] for one process. Every claim is answered at
/// once, without allocation beyond the table itself.
///
/// Each live claim costs one table slot of 24 bytes of key and expiry plus the hash table's
/// control byte and spare capacity. Full, the default store (1 000 000 claims) holds 52.4 MB
/// (`cargo test -p wimse-core --test replay_store -- --nocapture` prints it). When a shard is
/// full of live claims, new proofs are refused ([`ErrorKind::ReplayCacheFull`], 503) rather than
/// forgetting live ones, which would open a replay window. Replicas do not share it: use a
/// shared store when requests are load-balanced.
pub struct InMemoryReplayStore {
    capacity: usize,
    per_shard: usize,
    shard_hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
}

/// Default capacity of [`InMemoryReplayStore`]: one million live claims (52.4 MB when full).
pub const DEFAULT_REPLAY_CAPACITY: usize = 1_000_000;

impl InMemoryReplayStore {
    /// A store holding at most about `capacity` live claims (split evenly over its shards).
    pub fn new(capacity: usize) -> Self {
        // Small stores get fewer shards, so the capacity stays close to what was asked.
        let count = capacity.clamp(1, SHARDS);
        let per_shard = capacity.div_ceil(count).max(1);
        let shards = (0..count)
            .map(|_| Mutex::new(Shard { entries: ClaimMap::default(), next_sweep: 0, last_sweep: 0 }))
            .collect();
        Self { capacity, per_shard, shard_hasher: RandomState::new(), shards }
    }

    /// The configured capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of entries held (expired ones linger until the next sweep of their shard).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|s| s.entries.len()).unwrap_or(0)).sum()
    }

    /// Whether the store holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard_index(&self, key: u128) -> usize {
        (self.shard_hasher.hash_one(key) % self.shards.len() as u64) as usize
    }

    fn claim_now(&self, claim: &ReplayClaim, now: u64) -> Result<()> {
        let shard = &self.shards[self.shard_index(claim.key)];
        // A poisoned lock means another thread panicked mid-update: fail closed.
        let mut shard =
            shard.lock().map_err(|_| Error::with_detail(ErrorKind::ReplayCacheUnavailable, "replay store poisoned"))?;
        if now >= shard.next_sweep {
            shard.sweep(now);
        }
        let key = SlotKey::of(claim.key);
        if let Some(&until) = shard.entries.get(&key) {
            if until > now {
                metrics::counter!("wimse_replay_cache_hits_total").increment(1);
                return Err(ErrorKind::ReplayedProof.into());
            }
        } else if shard.entries.len() >= self.per_shard {
            // Full: sweep once per second at most, then refuse if still full.
            if shard.last_sweep < now {
                shard.sweep(now);
            }
            if shard.entries.len() >= self.per_shard {
                return Err(Error::with_detail(ErrorKind::ReplayCacheFull, "in-memory replay store full"));
            }
        }
        shard.entries.insert(key, claim.expires_at);
        Ok(())
    }
}

impl Default for InMemoryReplayStore {
    fn default() -> Self {
        Self::new(DEFAULT_REPLAY_CAPACITY)
    }
}

impl fmt::Debug for InMemoryReplayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryReplayStore").field("capacity", &self.capacity).field("len", &self.len()).finish()
    }
}

impl ReplayStore for InMemoryReplayStore {
    fn claim(&self, claim: &ReplayClaim, now: u64) -> Claim {
        Claim::ready(self.claim_now(claim, now))
    }
}

/// Default per-caller share of live claims: 100 000 (a tenth of the default in-memory
/// capacity), enough for about 1 100 requests per second from one workload with 60-second
/// proofs and the default 30-second leeway.
pub const DEFAULT_CALLER_QUOTA: usize = 100_000;

/// Live claims of one caller, counted per expiry second.
#[derive(Default)]
struct CallerClaims {
    live: usize,
    by_expiry: BTreeMap<u64, u32>,
}

impl CallerClaims {
    fn expire(&mut self, now: u64) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if *entry.key() > now {
                break;
            }
            self.live -= *entry.get() as usize;
            entry.remove();
        }
    }
}

/// Quota owners are already keyed hashes (see [`QuotaOwner`]): the table uses them as they are.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` owners are hashed here; fold anything else in rather than ignore it.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type CallerShard = Mutex<HashMap<u64, CallerClaims, BuildHasherDefault<PreHashed>>>;

/// How many live claims each workload identity holds, so none can hold more than `limit`.
///
/// Kept in memory by each verifier (also in front of a shared store, where the bound is
/// per replica: with `n` replicas one caller holds at most `n × limit` shared entries). Counts
/// are kept per expiry second, so memory is bounded by the callers with live claims times the
/// longest proof lifetime, never by the request rate.
pub struct CallerQuota {
    limit: usize,
    next_sweep: AtomicU64,
    hasher: RandomState,
    shards: Box<[CallerShard]>,
}

impl fmt::Debug for CallerQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallerQuota").field("limit", &self.limit).finish_non_exhaustive()
    }
}

/// A caller, as the quota knows it: a keyed hash of its identifier (not guessable, so no two
/// identities can be made to share a count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaOwner(u64);

impl CallerQuota {
    /// At most `limit` live claims per caller.
    pub fn new(limit: usize) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::default())).collect();
        Self { limit, next_sweep: AtomicU64::new(0), hasher: RandomState::new(), shards }
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The quota owner for `id`.
    pub fn owner(&self, id: &WorkloadId) -> QuotaOwner {
        QuotaOwner(self.hasher.hash_one(id.as_str()))
    }

    fn shard(&self, owner: QuotaOwner) -> &CallerShard {
        &self.shards[(owner.0 >> 32) as usize % SHARDS]
    }

    /// Counts one more live claim for `owner` until `expires_at`, or refuses it with
    /// [`ErrorKind::ReplayQuotaExceeded`] and the seconds until the caller's oldest claim ends.
    pub fn reserve(&self, owner: QuotaOwner, expires_at: u64, now: u64) -> Result<()> {
        // Callers that went quiet are forgotten once a minute (one thread does it).
        let due = self.next_sweep.load(Ordering::Relaxed);
        if now >= due
            && self
                .next_sweep
                .compare_exchange(due, now.saturating_add(60), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.sweep(now);
        }
        let mut shard = self
            .shard(owner)
            .lock()
            .map_err(|_| Error::with_detail(ErrorKind::ReplayCacheUnavailable, "caller quota poisoned"))?;
        let claims = shard.entry(owner.0).or_default();
        claims.expire(now);
        if claims.live >= self.limit {
            let retry = claims.by_expiry.keys().next().map_or(1, |first| first.saturating_sub(now).max(1));
            return Err(Error::with_detail(ErrorKind::ReplayQuotaExceeded, format!("{} live proofs", self.limit))
                .with_retry_after(retry));
        }
        claims.live += 1;
        *claims.by_expiry.entry(expires_at).or_default() += 1;
        Ok(())
    }

    /// Gives back a reservation whose claim did not enter the store (replayed, or the store
    /// failed).
    pub fn release(&self, owner: QuotaOwner, expires_at: u64) {
        let Ok(mut shard) = self.shard(owner).lock() else { return };
        let Some(claims) = shard.get_mut(&owner.0) else { return };
        if let Some(count) = claims.by_expiry.get_mut(&expires_at) {
            *count -= 1;
            claims.live -= 1;
            if *count == 0 {
                claims.by_expiry.remove(&expires_at);
            }
        }
        if claims.live == 0 {
            shard.remove(&owner.0);
        }
    }

    /// Live claims counted for `owner` at `now`.
    pub fn live(&self, owner: QuotaOwner, now: u64) -> usize {
        let Ok(mut shard) = self.shard(owner).lock() else { return 0 };
        let Some(claims) = shard.get_mut(&owner.0) else { return 0 };
        claims.expire(now);
        claims.live
    }

    /// Drops the counts of callers whose claims have all expired ([`reserve`](Self::reserve)
    /// does this once a minute).
    pub fn sweep(&self, now: u64) {
        for shard in self.shards.iter() {
            if let Ok(mut shard) = shard.lock() {
                shard.retain(|_, claims| {
                    claims.expire(now);
                    claims.live > 0
                });
            }
        }
    }

    /// Callers with live claims counted.
    pub fn callers(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|s| s.len()).unwrap_or(0)).sum()
    }
}

impl Default for CallerQuota {
    fn default() -> Self {
        Self::new(DEFAULT_CALLER_QUOTA)
    }
}

/// What a shared replay store does when it cannot be reached. A store that answers that it is
/// recovering from lost state always refuses (that is an answer, not an outage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenUnavailable {
    /// Refuse the proof ([`ErrorKind::ReplayCacheUnavailable`], 503). The default.
    #[default]
    FailClosed,
    /// Accept the proof without a replay check (logged). Only where availability matters more
    /// than replay protection.
    FailOpen,
}

#[cfg(feature = "redis")]
pub mod redis_store;
#[cfg(feature = "redis")]
pub use redis_store::RedisReplayStore;

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> WorkloadId {
        s.parse().unwrap()
    }

    fn claim(store: &InMemoryReplayStore, c: &ReplayClaim, now: u64) -> Result<()> {
        store.claim(c, now).into_ready().unwrap()
    }

    #[test]
    fn second_claim_is_a_replay_until_expiry() {
        let store = InMemoryReplayStore::new(64);
        let a = id("spiffe://a/b");
        claim(&store, &ReplayClaim::wpt(&a, "j1", 100, 0), 50).unwrap();
        let again = claim(&store, &ReplayClaim::wpt(&a, "j1", 100, 0), 60).unwrap_err();
        assert_eq!(again.kind(), &ErrorKind::ReplayedProof);
        // Same jti from another sender is a different proof.
        claim(&store, &ReplayClaim::wpt(&id("spiffe://a/c"), "j1", 100, 0), 60).unwrap();
        // After expiry the entry is gone (the proof itself would be refused as expired anyway).
        claim(&store, &ReplayClaim::wpt(&a, "j1", 200, 0), 100).unwrap();
    }

    #[test]
    fn nonces_are_claimed_whoever_sends_them() {
        let store = InMemoryReplayStore::new(64);
        claim(&store, &ReplayClaim::signature_nonce("n", 100, 0), 10).unwrap();
        let err = claim(&store, &ReplayClaim::signature_nonce("n", 100, 0), 10).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::ReplayedProof);
        // A WPT jti equal to a nonce is another proof.
        claim(&store, &ReplayClaim::wpt(&id("spiffe://a/b"), "n", 100, 0), 10).unwrap();
    }

    #[test]
    fn sender_and_id_cannot_collide() {
        let (ab, a) = (id("spiffe://a/b"), id("spiffe://a/bc"));
        assert_ne!(ReplayClaim::wpt(&ab, "c", 1, 0).key(), ReplayClaim::wpt(&a, "", 1, 0).key());
    }

    #[test]
    fn full_store_fails_closed_then_recovers_after_expiry() {
        let store = InMemoryReplayStore::new(SHARDS); // one entry per shard
        let mut claims = (0u32..).map(|i| ReplayClaim::signature_nonce(&i.to_string(), 100, 0));
        // Fill one shard, then a claim for the same shard is refused.
        let first = claims.next().unwrap();
        claim(&store, &first, 10).unwrap();
        let shard_of = |c: &ReplayClaim| store.shard_index(c.key);
        let same = claims.find(|c| shard_of(c) == shard_of(&first)).unwrap();
        assert_eq!(claim(&store, &same, 10).unwrap_err().kind(), &ErrorKind::ReplayCacheFull);
        // The live entry is still remembered; after it expires the shard takes new claims.
        assert_eq!(claim(&store, &first, 10).unwrap_err().kind(), &ErrorKind::ReplayedProof);
        claim(&store, &same, 101).unwrap();
    }

    #[test]
    fn keys_ground_for_one_shard_spread_over_all_of_them() {
        // A caller who can grind its nonces picks the bits it likes; here, keys that an unkeyed
        // choice by the low word would all put in shard 0. Three shards' worth of them fit.
        let store = InMemoryReplayStore::new(SHARDS * 1_000);
        let ground = (0u32..)
            .map(|i| ReplayClaim::signature_nonce(&i.to_string(), 100, 0))
            .filter(|c| (c.key as u64).is_multiple_of(SHARDS as u64));
        for c in ground.take(3_000) {
            claim(&store, &c, 10).unwrap();
        }
        assert_eq!(store.len(), 3_000);
    }

    #[test]
    fn quota_refuses_one_caller_not_the_others() {
        let quota = CallerQuota::new(2);
        let (a, b) = (quota.owner(&id("spiffe://d/a")), quota.owner(&id("spiffe://d/b")));
        quota.reserve(a, 40, 0).unwrap();
        quota.reserve(a, 50, 0).unwrap();
        let err = quota.reserve(a, 60, 10).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::ReplayQuotaExceeded);
        assert_eq!(err.retry_after(), Some(30), "until the oldest claim ends");
        quota.reserve(b, 60, 10).unwrap();
        // A released reservation and an expired claim both free a place.
        quota.release(a, 50);
        quota.reserve(a, 70, 10).unwrap();
        assert_eq!(quota.live(a, 45), 1);
        quota.reserve(a, 80, 45).unwrap();
        quota.sweep(100);
        assert_eq!(quota.callers(), 0);
    }
}
