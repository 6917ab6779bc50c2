//! The shared replay store on Redis or Redis Cluster (feature `redis`).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

use super::{Claim, ReplayClaim, ReplayStore, WhenUnavailable};
use crate::error::{Error, ErrorKind, Result};

/// Claims are spread over this many hash-tagged buckets. Each bucket keeps its claims and its
/// epoch marker in one Redis Cluster slot, so one script can check both atomically, and a node
/// that loses its data is detected per bucket.
const BUCKETS: usize = 16;

/// One atomic step per claim. KEYS[1]: the bucket's epoch marker; KEYS[2]: the claim.
/// ARGV[1]: the epoch the replica knows ("" if none); ARGV[2]: a new epoch, created if the
/// marker is missing (a fresh or emptied store); ARGV[3]: the claim's expiry (EXAT).
const CLAIM_SCRIPT: &str = r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  redis.call('SET', KEYS[1], ARGV[2])
  epoch = ARGV[2]
end
if epoch ~= ARGV[1] then
  return {'EPOCH', epoch}
end
if redis.call('SET', KEYS[2], '1', 'NX', 'EXAT', ARGV[3]) then
  return {'OK', ''}
end
return {'REPLAY', ''}
";

/// Reads a bucket's epoch marker, creating it (ARGV[1]) when missing.
const ENSURE_EPOCH_SCRIPT: &str = r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  redis.call('SET', KEYS[1], ARGV[1])
  epoch = ARGV[1]
end
return epoch
";

/// A bucket's epoch as a replica knows it: the marker's value and when that epoch began.
#[derive(Debug, Clone)]
struct Epoch {
    marker: String,
    start: u64,
}

impl Epoch {
    /// Markers are `<random id>:<start>`.
    fn parse(marker: String) -> Option<Self> {
        let start = marker.rsplit_once(':')?.1.parse().ok()?;
        Some(Self { marker, start })
    }
}

#[derive(Clone)]
enum Target {
    Single(redis::Client),
    Cluster(Box<ClusterClient>),
}

#[derive(Clone)]
struct Settings {
    timeout: Duration,
    when_unavailable: WhenUnavailable,
    prefix: String,
}

#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

struct Inner {
    target: Target,
    settings: Settings,
    connection: tokio::sync::Mutex<Option<Connection>>,
    epochs: [Mutex<Option<Epoch>>; BUCKETS],
    script: redis::Script,
    ensure_epoch: redis::Script,
}

/// A [`ReplayStore`] on Redis or Redis Cluster, shared by every replica: a proof accepted by
/// one is refused by all. Asynchronous (tokio): a claim never blocks a runtime thread, and is
/// bounded as a whole by [`timeout`](Self::timeout) (default 250 ms); past it the store
/// fails closed (503) or, if so configured, open.
///
/// Each claim is one Lua script on one hash slot: `SET key NX EXAT <expiry>` on a fixed-size
/// key (`<prefix>{<bucket>}:<128-bit digest>`), guarded by the bucket's **epoch marker**. A
/// store that lost its data (a restart without persistence, `FLUSHALL`, a failover to an empty
/// replica) has lost its markers too; the first replica to notice starts a new epoch, and until
/// one proof lifetime has passed every replica refuses the proofs that could have been accepted
/// before that moment ([`ReplayClaim::earliest_claim`]), with 503. A brand-new store looks the
/// same, so the first minutes after a first deployment refuse older proofs too.
///
/// Recommended Redis configuration: persistence (`appendonly yes`, or at least RDB snapshots)
/// so a restart keeps claims and markers; `maxmemory-policy noeviction` (or a `volatile-*`
/// policy: claims expire by themselves, markers have no TTL and are never evicted) so Redis
/// never forgets a live claim to make room; enough `maxmemory` for the peak rate × proof
/// lifetime × ~100 bytes. When Redis is full it refuses writes and the store fails closed.
#[derive(Clone)]
pub struct RedisReplayStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisReplayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisReplayStore")
            .field("cluster", &matches!(self.inner.target, Target::Cluster(_)))
            .field("timeout", &self.inner.settings.timeout)
            .field("when_unavailable", &self.inner.settings.when_unavailable)
            .finish_non_exhaustive()
    }
}

fn config_error(e: impl fmt::Display) -> Error {
    Error::with_detail(ErrorKind::InvalidConfiguration, format!("redis: {e}"))
}

impl RedisReplayStore {
    /// A store on the Redis server at `url` (`redis://host:port/db`). Fails closed, 250 ms
    /// timeout, keys prefixed `wimse:replay:`. Connects on first use (and reconnects after a
    /// failure), so a verifier can start while Redis is down.
    pub fn new(url: &str) -> Result<Self> {
        Ok(Self::with_target(Target::Single(redis::Client::open(url).map_err(config_error)?)))
    }

    /// A store on a Redis Cluster reached through any of `nodes` (`redis://host:port`).
    pub fn cluster<S: AsRef<str>>(nodes: impl IntoIterator<Item = S>) -> Result<Self> {
        let nodes: Vec<String> = nodes.into_iter().map(|n| n.as_ref().to_owned()).collect();
        let client = ClusterClient::builder(nodes)
            .connection_timeout(Duration::from_millis(250))
            .response_timeout(Duration::from_millis(250))
            .retries(1)
            .build()
            .map_err(config_error)?;
        Ok(Self::with_target(Target::Cluster(Box::new(client))))
    }

    fn with_target(target: Target) -> Self {
        let settings = Settings {
            timeout: Duration::from_millis(250),
            when_unavailable: WhenUnavailable::FailClosed,
            prefix: "wimse:replay:".into(),
        };
        Self { inner: Arc::new(Inner::new(target, settings)) }
    }

    fn configure(self, f: impl FnOnce(&mut Settings)) -> Self {
        let (target, mut settings) = match Arc::try_unwrap(self.inner) {
            Ok(inner) => (inner.target, inner.settings),
            Err(shared) => (shared.target.clone(), shared.settings.clone()),
        };
        f(&mut settings);
        Self { inner: Arc::new(Inner::new(target, settings)) }
    }

    /// What to do when Redis cannot be reached in time.
    pub fn when_unavailable(self, policy: WhenUnavailable) -> Self {
        self.configure(|s| s.when_unavailable = policy)
    }

    /// The bound on one whole claim: connecting, the script, and the answer.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.configure(|s| s.timeout = timeout)
    }

    /// The key prefix (to share one Redis between deployments). Defaults to `wimse:replay:`.
    pub fn prefix(self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        self.configure(|s| s.prefix = prefix)
    }
}

impl Inner {
    fn new(target: Target, settings: Settings) -> Self {
        Self {
            target,
            settings,
            connection: tokio::sync::Mutex::new(None),
            epochs: Default::default(),
            script: redis::Script::new(CLAIM_SCRIPT),
            ensure_epoch: redis::Script::new(ENSURE_EPOCH_SCRIPT),
        }
    }

    async fn connection(&self) -> redis::RedisResult<Connection> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let connection = match &self.target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.settings.timeout))
                    .set_response_timeout(Some(self.settings.timeout))
                    .set_number_of_retries(1);
                Connection::Single(client.get_connection_manager_with_config(config).await?)
            }
            Target::Cluster(client) => Connection::Cluster(client.get_async_connection().await?),
        };
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn forget_connection(&self) {
        // The cluster connection does not always recover from every node restarting; a new one is cheap.
        if matches!(self.target, Target::Cluster(_)) {
            *self.connection.lock().await = None;
        }
    }

    fn known_epoch(&self, bucket: usize) -> Option<Epoch> {
        self.epochs[bucket].lock().ok().and_then(|e| e.clone())
    }

    fn learn_epoch(&self, bucket: usize, epoch: Epoch) {
        let Ok(mut known) = self.epochs[bucket].lock() else { return };
        if known.as_ref().is_some_and(|old| old.marker != epoch.marker) {
            tracing::warn!(
                bucket,
                epoch_start = epoch.start,
                "wimse: the Redis replay store lost its state; refusing proofs from before the new epoch"
            );
            metrics::counter!("wimse_replay_store_epoch_changes_total").increment(1);
        }
        *known = Some(epoch);
    }

    async fn run<C: ConnectionLike>(
        &self,
        connection: &mut C,
        bucket: usize,
        claim: &ReplayClaim,
        now: u64,
    ) -> redis::RedisResult<Result<()>> {
        let epoch_key = format!("{}{{{bucket}}}:epoch", self.settings.prefix);
        let claim_key = format!("{}{{{bucket}}}:{:032x}", self.settings.prefix, claim.key());
        let expires_at = claim.expires_at().max(now.saturating_add(1));
        // Twice at most: once to learn a changed epoch, once to claim under it.
        for _ in 0..2 {
            let known = self.known_epoch(bucket);
            if let Some(epoch) = &known
                && claim.earliest_claim() <= epoch.start
            {
                return Ok(Err(Error::with_detail(
                    ErrorKind::ReplayCacheUnavailable,
                    format!("the replay store began a new epoch at {}; this proof may predate it", epoch.start),
                )));
            }
            let fresh = format!("{}:{now}", crate::wit::random_id());
            let (status, marker): (String, String) = self
                .script
                .key(&epoch_key)
                .key(&claim_key)
                .arg(known.as_ref().map_or("", |e| e.marker.as_str()))
                .arg(&fresh)
                .arg(expires_at)
                .invoke_async(connection)
                .await?;
            match status.as_str() {
                "OK" => return Ok(Ok(())),
                "REPLAY" => {
                    metrics::counter!("wimse_replay_cache_hits_total").increment(1);
                    return Ok(Err(ErrorKind::ReplayedProof.into()));
                }
                _ => match Epoch::parse(marker) {
                    Some(epoch) => {
                        let created_here = epoch.marker == fresh;
                        self.learn_epoch(bucket, epoch);
                        if created_here {
                            // This store is new or lost its state: start every bucket's epoch
                            // now, so the recovery window is the same for all of them instead
                            // of opening again at each bucket's first use.
                            self.ensure_epochs(connection, &fresh).await?;
                        }
                    }
                    None => {
                        return Ok(Err(Error::with_detail(
                            ErrorKind::ReplayCacheUnavailable,
                            "unreadable epoch marker in the replay store",
                        )));
                    }
                },
            }
        }
        Ok(Err(Error::with_detail(ErrorKind::ReplayCacheUnavailable, "the replay store's epoch keeps changing")))
    }

    async fn ensure_epochs<C: ConnectionLike>(&self, connection: &mut C, fresh: &str) -> redis::RedisResult<()> {
        for bucket in 0..BUCKETS {
            let key = format!("{}{{{bucket}}}:epoch", self.settings.prefix);
            let marker: String = self.ensure_epoch.key(key).arg(fresh).invoke_async(connection).await?;
            if let Some(epoch) = Epoch::parse(marker) {
                self.learn_epoch(bucket, epoch);
            }
        }
        Ok(())
    }

    async fn claim(&self, claim: ReplayClaim, now: u64) -> Result<()> {
        let bucket = (claim.key() >> 120) as usize % BUCKETS;
        let attempt = async {
            match self.connection().await? {
                Connection::Single(mut c) => self.run(&mut c, bucket, &claim, now).await,
                Connection::Cluster(mut c) => self.run(&mut c, bucket, &claim, now).await,
            }
        };
        let failure = match tokio::time::timeout(self.settings.timeout, attempt).await {
            Ok(Ok(answer)) => return answer,
            Ok(Err(error)) => format!("redis: {error}"),
            Err(_) => format!("redis: no answer within {:?}", self.settings.timeout),
        };
        self.forget_connection().await;
        match self.settings.when_unavailable {
            WhenUnavailable::FailClosed => Err(Error::with_detail(ErrorKind::ReplayCacheUnavailable, failure)),
            WhenUnavailable::FailOpen => {
                tracing::warn!(error = %failure, "wimse: replay store unavailable; accepting without a replay check");
                Ok(())
            }
        }
    }
}

impl ReplayStore for RedisReplayStore {
    fn claim(&self, claim: &ReplayClaim, now: u64) -> Claim {
        let inner = self.inner.clone();
        let claim = *claim;
        Claim::pending(async move { inner.claim(claim, now).await })
    }
}
