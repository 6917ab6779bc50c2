//! Replay protection: a proof identifier (`jti`) is accepted once per sender while it is valid.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::sync::Mutex;

use crate::error::{Error, ErrorKind, Result};

/// Remembers proof identifiers until they expire.
///
/// Implementations must be atomic: of two concurrent calls with the same `(scope, id)`, exactly
/// one may succeed. A cache that cannot answer must fail closed.
pub trait ReplayCache: Send + Sync + fmt::Debug {
    /// Records `id` within `scope` (the sender) until `expires_at` (seconds since the epoch).
    ///
    /// Returns `Ok(())` the first time, [`ErrorKind::ReplayedProof`] when the pair is still
    /// remembered, and [`ErrorKind::ReplayCacheFull`] when it cannot remember more.
    fn check_and_insert(&self, scope: &str, id: &str, expires_at: u64, now: u64) -> Result<()>;
}

/// A bounded in-memory [`ReplayCache`] for one process.
///
/// Entries are dropped once expired. When `capacity` live entries are held, new proofs are
/// refused ([`ErrorKind::ReplayCacheFull`]) instead of forgetting live entries, which would open
/// a replay window. Replicas do not share it: use a shared cache when requests are load-balanced.
pub struct InMemoryReplayCache {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    expiry_by_key: HashMap<String, u64>,
    by_expiry: BinaryHeap<Reverse<(u64, String)>>,
}

impl State {
    fn purge_expired(&mut self, now: u64) {
        while let Some(Reverse((expires_at, _))) = self.by_expiry.peek() {
            if *expires_at > now {
                break;
            }
            if let Some(Reverse((expires_at, key))) = self.by_expiry.pop()
                && self.expiry_by_key.get(&key) == Some(&expires_at)
            {
                self.expiry_by_key.remove(&key);
            }
        }
    }
}

/// Default capacity: about 100k live proofs (a few tens of MB at most).
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;

impl InMemoryReplayCache {
    /// A cache holding at most `capacity` live entries.
    pub fn new(capacity: usize) -> Self {
        Self { capacity, state: Mutex::new(State::default()) }
    }

    /// Number of live entries (expired ones may linger until the next insert).
    pub fn len(&self) -> usize {
        self.state.lock().map(|s| s.expiry_by_key.len()).unwrap_or(0)
    }

    /// Whether the cache holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for InMemoryReplayCache {
    fn default() -> Self {
        Self::new(DEFAULT_REPLAY_CAPACITY)
    }
}

impl fmt::Debug for InMemoryReplayCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryReplayCache").field("capacity", &self.capacity).field("len", &self.len()).finish()
    }
}

impl ReplayCache for InMemoryReplayCache {
    fn check_and_insert(&self, scope: &str, id: &str, expires_at: u64, now: u64) -> Result<()> {
        // Length-prefixing the scope makes the key unambiguous whatever bytes `id` holds.
        let key = format!("{}:{scope}{id}", scope.len());
        // A poisoned lock means another thread panicked mid-update: fail closed.
        let mut state =
            self.state.lock().map_err(|_| Error::with_detail(ErrorKind::ReplayCacheFull, "replay cache poisoned"))?;
        state.purge_expired(now);
        if state.expiry_by_key.get(&key).is_some_and(|&until| until > now) {
            metrics::counter!("wimse_replay_cache_hits_total").increment(1);
            return Err(ErrorKind::ReplayedProof.into());
        }
        if state.expiry_by_key.len() >= self.capacity {
            return Err(Error::with_detail(ErrorKind::ReplayCacheFull, format!("{} live entries", self.capacity)));
        }
        state.expiry_by_key.insert(key.clone(), expires_at);
        state.by_expiry.push(Reverse((expires_at, key)));
        Ok(())
    }
}

/// What a shared replay cache does when its store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenUnavailable {
    /// Refuse the proof ([`ErrorKind::ReplayCacheUnavailable`], 503). The default.
    #[default]
    FailClosed,
    /// Accept the proof without a replay check (logged). Only where availability matters more
    /// than replay protection.
    FailOpen,
}

/// A [`ReplayCache`] on Redis (feature `redis`), shared by every replica: a proof accepted by
/// one is refused by all. Each check is one `SET key 1 NX EXAT <expiry>`; connections are pooled,
/// and connecting, reading and writing are bounded by a timeout.
///
/// The call is synchronous: on an async server it holds a worker thread for one loopback or
/// LAN round trip (bounded by the timeout).
#[cfg(feature = "redis")]
pub struct RedisReplayCache {
    client: redis::Client,
    pool: Mutex<Vec<redis::Connection>>,
    max_idle: usize,
    timeout: std::time::Duration,
    when_unavailable: WhenUnavailable,
    prefix: String,
}

#[cfg(feature = "redis")]
impl fmt::Debug for RedisReplayCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisReplayCache").field("when_unavailable", &self.when_unavailable).finish_non_exhaustive()
    }
}

#[cfg(feature = "redis")]
impl RedisReplayCache {
    /// A cache on the Redis server at `url` (`redis://host:port/db`). Fails closed, 250 ms
    /// timeouts, keys prefixed `wimse:replay:`.
    pub fn new(url: &str) -> Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::with_detail(ErrorKind::InvalidConfiguration, format!("redis url: {e}")))?;
        Ok(Self {
            client,
            pool: Mutex::new(Vec::new()),
            max_idle: 16,
            timeout: std::time::Duration::from_millis(250),
            when_unavailable: WhenUnavailable::FailClosed,
            prefix: "wimse:replay:".into(),
        })
    }

    /// What to do when Redis cannot be reached.
    pub fn when_unavailable(mut self, policy: WhenUnavailable) -> Self {
        self.when_unavailable = policy;
        self
    }

    /// The bound on connecting, reading and writing.
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let connection = self.client.get_connection_with_timeout(self.timeout)?;
        connection.set_read_timeout(Some(self.timeout))?;
        connection.set_write_timeout(Some(self.timeout))?;
        Ok(connection)
    }

    fn set_nx(connection: &mut redis::Connection, key: &str, expires_at: u64) -> redis::RedisResult<bool> {
        let reply: Option<String> =
            redis::cmd("SET").arg(key).arg(1).arg("NX").arg("EXAT").arg(expires_at).query(connection)?;
        Ok(reply.is_some())
    }

    fn give_back(&self, connection: redis::Connection) {
        if let Ok(mut pool) = self.pool.lock()
            && pool.len() < self.max_idle
        {
            pool.push(connection);
        }
    }

    /// `SET key 1 NX EXAT expires_at`: true when the key was new. A pooled connection that
    /// fails (the server restarted) is dropped and the command retried once on a new one.
    fn set_if_absent(&self, key: &str, expires_at: u64) -> redis::RedisResult<bool> {
        let pooled = self.pool.lock().ok().and_then(|mut pool| pool.pop());
        if let Some(mut connection) = pooled
            && let Ok(new) = Self::set_nx(&mut connection, key, expires_at)
        {
            self.give_back(connection);
            return Ok(new);
        }
        let mut connection = self.connect()?;
        let new = Self::set_nx(&mut connection, key, expires_at)?;
        self.give_back(connection);
        Ok(new)
    }
}

#[cfg(feature = "redis")]
impl ReplayCache for RedisReplayCache {
    fn check_and_insert(&self, scope: &str, id: &str, expires_at: u64, now: u64) -> Result<()> {
        use sha2::{Digest, Sha256};
        // A fixed-size key whatever the scope and id: hash of the unambiguous pair.
        let digest =
            Sha256::new().chain_update(scope.len().to_be_bytes()).chain_update(scope).chain_update(id).finalize();
        let key = format!("{}{}", self.prefix, crate::jose::b64url_encode(digest));
        match self.set_if_absent(&key, expires_at.max(now.saturating_add(1))) {
            Ok(true) => Ok(()),
            Ok(false) => {
                metrics::counter!("wimse_replay_cache_hits_total").increment(1);
                Err(ErrorKind::ReplayedProof.into())
            }
            Err(error) => match self.when_unavailable {
                WhenUnavailable::FailClosed => {
                    Err(Error::with_detail(ErrorKind::ReplayCacheUnavailable, format!("redis: {error}")))
                }
                WhenUnavailable::FailOpen => {
                    tracing::warn!(error = %error, "wimse: replay cache unavailable; accepting without a replay check");
                    Ok(())
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_use_is_a_replay_until_expiry() {
        let cache = InMemoryReplayCache::new(10);
        cache.check_and_insert("spiffe://a/b", "j1", 100, 50).unwrap();
        assert_eq!(
            cache.check_and_insert("spiffe://a/b", "j1", 100, 60).unwrap_err().kind(),
            &ErrorKind::ReplayedProof
        );
        // Same jti from another sender is a different proof.
        cache.check_and_insert("spiffe://a/c", "j1", 100, 60).unwrap();
        // After expiry the entry is gone (the proof itself would be refused as expired anyway).
        cache.check_and_insert("spiffe://a/b", "j1", 200, 100).unwrap();
    }

    #[test]
    fn scope_and_id_cannot_collide() {
        let cache = InMemoryReplayCache::new(10);
        cache.check_and_insert("ab", "c", 100, 0).unwrap();
        cache.check_and_insert("a", "bc", 100, 0).unwrap();
    }

    #[test]
    fn full_cache_fails_closed_then_recovers_after_expiry() {
        let cache = InMemoryReplayCache::new(2);
        cache.check_and_insert("s", "1", 100, 0).unwrap();
        cache.check_and_insert("s", "2", 150, 0).unwrap();
        assert_eq!(cache.check_and_insert("s", "3", 100, 10).unwrap_err().kind(), &ErrorKind::ReplayCacheFull);
        // The live entries are still remembered.
        assert_eq!(cache.check_and_insert("s", "1", 100, 10).unwrap_err().kind(), &ErrorKind::ReplayedProof);
        cache.check_and_insert("s", "3", 200, 100).unwrap();
        assert_eq!(cache.len(), 2);
    }
}
