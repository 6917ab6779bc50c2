//! The shared replay store on Redis or Redis Cluster (feature `redis`).
//!
//! # Surviving a Redis that loses its data
//!
//! Claims are spread over 16 hash-tagged buckets; each keeps, in one Redis Cluster
//! slot, its claims, an **epoch marker** (`<random>:<start>`), the **members** (the replicas
//! using it, refreshed by a heartbeat every [`HEARTBEAT`]) and which members **re-seeded** the
//! current epoch. A Redis that lost its data (a restart without persistence, `FLUSHALL`, a
//! failover to an empty replica) lost all of it; the first replica to notice starts a new epoch.
//! A proof that could have been accepted before that moment ([`ReplayClaim::earliest_claim`])
//! may be a replay that nobody remembers any more, so it is refused (503) until one of two
//! things happens:
//!
//! - **re-seeding** (seconds): every replica remembers the claims it accepted while they are
//!   live, and writes them into the new epoch as soon as it sees it; once every replica that
//!   could hold live claims has done so, the bucket knows every claim again and older proofs are
//!   claimed as usual. This needs each replica to know every other: a replica registers before
//!   it claims anything (it waits [`JOIN_WAIT`] after registering, so every other replica's
//!   heartbeat has seen it), and a replica relies on this only when its own last look at the
//!   members was less than [`JOIN_WAIT`] before it saw the new epoch (otherwise a replica that
//!   joined meanwhile could be missing). A replica that disappeared without re-seeding (crashed
//!   with Redis, partitioned), one that remembered too many claims to re-seed them all, or one
//!   that accepted proofs living longer than the configured
//!   [proof window](RedisReplayStore::proof_window) blocks this path: then
//! - **the window passes** (at most the proof lifetime): proofs made after the new epoch began
//!   are claimed as usual, as before.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio::time::Instant;

use super::{Claim, ReplayClaim, ReplayStore, WhenUnavailable};
use crate::error::{Error, ErrorKind, Result};

/// Claims are spread over this many hash-tagged buckets. Each bucket keeps its claims and its
/// epoch marker in one Redis Cluster slot, so one script can check both atomically, and a node
/// that loses its data is detected per bucket.
const BUCKETS: usize = 16;

/// How often each replica refreshes its membership and reads the others'.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long a new replica waits after registering before its first claim when other replicas
/// use the store, so that every one of them has seen it; and how recent a replica's last look
/// at the members must be, when it sees a new epoch, to rely on re-seeding (so Redis outages up
/// to about this long are recovered by re-seeding).
pub const JOIN_WAIT: Duration = Duration::from_secs(10);

/// Claims re-seeded per script call.
const RESEED_BATCH: usize = 256;

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

/// A replica's heartbeat on one bucket. KEYS: epoch marker, members, re-seeded. ARGV[1]: this
/// replica; ARGV[2]: its entry (`<wall clock> <flags>`); ARGV[3]: entries older than this (wall
/// clock) are removed. Returns the epoch (empty when the marker is missing: only a claim starts
/// an epoch, at the verifiers' time), the members and the re-seeded markers.
const HEARTBEAT_SCRIPT: &str = r"
local epoch = redis.call('GET', KEYS[1]) or ''
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local members = redis.call('HGETALL', KEYS[2])
for i = 1, #members, 2 do
  local seen = tonumber(string.match(members[i + 1], '^%d+'))
  if seen and seen < tonumber(ARGV[3]) then
    redis.call('HDEL', KEYS[2], members[i])
    redis.call('HDEL', KEYS[3], members[i])
  end
end
return {epoch, redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3])}
";

/// Re-seeds a batch of this replica's claims into the current epoch. KEYS: epoch marker,
/// re-seeded, then the claims. ARGV[1]: the epoch; ARGV[2]: this replica; ARGV[3]: `1` on the
/// last batch (mark the replica re-seeded), `incomplete` on the last batch of a replica that
/// could not remember every claim, `0` otherwise; ARGV[4..]: the claims' expiries.
const RESEED_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 'EPOCH'
end
for i = 3, #KEYS do
  redis.call('SET', KEYS[i], '1', 'NX', 'EXAT', ARGV[i + 1])
end
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
elseif ARGV[3] == 'incomplete' then
  redis.call('HSET', KEYS[2], ARGV[2], 'incomplete')
end
return 'OK'
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
    proof_window: Duration,
    memory: usize,
}

#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Another replica as this one knows it.
#[derive(Debug, Clone, Copy)]
struct Member {
    /// When this replica last saw it in the bucket's members.
    seen: Instant,
    /// It accepted proofs living longer than the proof window: its claims cannot be bounded.
    unbounded: bool,
}

/// What a replica knows of one bucket.
#[derive(Debug, Default)]
struct Bucket {
    epoch: Option<Epoch>,
    /// This replica's last heartbeat on the bucket: when it last knew every member.
    last_look: Option<Instant>,
    /// The current epoch began while this replica knew every member (its last look was recent).
    eligible: bool,
    /// This replica re-seeded its claims into the current epoch.
    reseeded: bool,
    /// Members that re-seeded the current epoch (as of the last heartbeat).
    peers_reseeded: HashSet<String>,
    /// Every replica seen in this bucket (the union over heartbeats, so a loss forgets none).
    members: HashMap<String, Member>,
    /// Proofs older than the current epoch may be claimed: every member re-seeded it.
    recovered: bool,
    /// The claims this replica accepted, oldest first: (key, expiry).
    remembered: VecDeque<(u128, u64)>,
    /// Until when a claim this replica had to forget could still be live.
    forgot_until: u64,
}

impl Bucket {
    /// Re-derives `recovered` from what is known.
    fn recompute(&mut self, me: &str, window: Duration) {
        let relevant = |member: &Member| member.seen.elapsed() < window + HEARTBEAT * 2;
        self.recovered = self.eligible
            && self.reseeded
            && self
                .members
                .iter()
                .filter(|(id, _)| id.as_str() != me)
                .all(|(id, member)| !relevant(member) || (!member.unbounded && self.peers_reseeded.contains(id)));
    }
}

struct Inner {
    target: Target,
    settings: Settings,
    /// This replica's name in the buckets' members (random per store).
    replica: String,
    connection: tokio::sync::Mutex<Option<Connection>>,
    buckets: [Mutex<Bucket>; BUCKETS],
    /// Until when this replica holds claims living longer than the proof window.
    unbounded_until: std::sync::atomic::AtomicU64,
    /// The latest time a verifier claimed at: claims' expiries are on the verifiers' clock.
    verifier_now: std::sync::atomic::AtomicU64,
    /// Set once this replica registered; its first claims wait until then + [`JOIN_WAIT`].
    joined: tokio::sync::OnceCell<Instant>,
    script: redis::Script,
    ensure_epoch: redis::Script,
    heartbeat: redis::Script,
    reseed: redis::Script,
}

/// A [`ReplayStore`] on Redis or Redis Cluster, shared by every replica: a proof accepted by
/// one is refused by all. Asynchronous (tokio): a claim never blocks a runtime thread, and is
/// bounded as a whole by [`timeout`](Self::timeout) (default 250 ms); past it the store
/// fails closed (503) or, if so configured, open.
///
/// Each claim is one Lua script on one hash slot: `SET key NX EXAT <expiry>` on a fixed-size
/// key (`<prefix>{<bucket>}:<128-bit digest>`), guarded by the bucket's epoch marker. A store
/// that lost its data is recovered within seconds by the replicas re-seeding the claims they
/// accepted, and otherwise refuses the proofs that could predate the loss until they expire:
/// see [the module](self) for how, and what each replica must know for it. A brand-new store
/// looks like a lost one to a replica that never saw it before: the first minutes after a first
/// deployment refuse older proofs.
///
/// Each replica heartbeats every [`HEARTBEAT`] (one script per bucket), waits [`JOIN_WAIT`]
/// after registering before its first claim (once, at start), and remembers the claims it
/// accepted while they are live (`memory` of them at most; about 40 bytes each).
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
            .field("proof_window", &self.inner.settings.proof_window)
            .finish_non_exhaustive()
    }
}

fn config_error(e: impl fmt::Display) -> Error {
    Error::with_detail(ErrorKind::InvalidConfiguration, format!("redis: {e}"))
}

fn wall_clock() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The default proof window: the verifier's default longest WPT lifetime (300 s) plus its
/// default leeway (30 s).
pub const DEFAULT_PROOF_WINDOW: Duration = Duration::from_secs(330);

/// How many accepted claims a replica remembers by default for re-seeding (about 40 MB).
pub const DEFAULT_MEMORY: usize = 1_000_000;

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
            proof_window: DEFAULT_PROOF_WINDOW,
            memory: DEFAULT_MEMORY,
        };
        Self { inner: Arc::new(Inner::new(target, settings)) }
    }

    /// Registers this replica now and waits until it may claim (see [`JOIN_WAIT`]): call it at
    /// start, before the service reports ready, so the first requests do not wait. Claims
    /// register on their own otherwise.
    pub async fn join(&self) -> Result<()> {
        let joined = self.inner.join().await?;
        tokio::time::sleep_until(joined).await;
        Ok(())
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

    /// The longest a claim lives (a verifier's longest proof lifetime plus its leeway; default
    /// [`DEFAULT_PROOF_WINDOW`]). A replica that accepts longer-lived proofs still claims them,
    /// but no replica re-seeds the store after a loss while they live (the window then passes
    /// instead).
    pub fn proof_window(self, window: Duration) -> Self {
        self.configure(|s| s.proof_window = window)
    }

    /// How many accepted claims this replica remembers for re-seeding (default
    /// [`DEFAULT_MEMORY`]). A replica that had to forget a live claim re-seeds nothing useful
    /// until it expires.
    pub fn memory(self, claims: usize) -> Self {
        self.configure(|s| s.memory = claims)
    }
}

impl Inner {
    fn new(target: Target, settings: Settings) -> Self {
        Self {
            target,
            settings,
            replica: crate::wit::random_id(),
            connection: tokio::sync::Mutex::new(None),
            buckets: Default::default(),
            unbounded_until: std::sync::atomic::AtomicU64::new(0),
            verifier_now: std::sync::atomic::AtomicU64::new(0),
            joined: tokio::sync::OnceCell::new(),
            script: redis::Script::new(CLAIM_SCRIPT),
            ensure_epoch: redis::Script::new(ENSURE_EPOCH_SCRIPT),
            heartbeat: redis::Script::new(HEARTBEAT_SCRIPT),
            reseed: redis::Script::new(RESEED_SCRIPT),
        }
    }

    fn key(&self, bucket: usize, name: &str) -> String {
        format!("{}{{{bucket}}}:{name}", self.settings.prefix)
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

    fn bucket(&self, bucket: usize) -> Result<std::sync::MutexGuard<'_, Bucket>> {
        self.buckets[bucket]
            .lock()
            .map_err(|_| Error::with_detail(ErrorKind::ReplayCacheUnavailable, "replay store state poisoned"))
    }

    /// Records the epoch a script answered with. A changed marker is a new epoch: this replica
    /// starts re-seeding it.
    fn learn_epoch(self: &Arc<Self>, bucket: usize, epoch: Epoch) {
        let Ok(mut state) = self.bucket(bucket) else { return };
        let changed = state.epoch.as_ref().is_some_and(|old| old.marker != epoch.marker);
        let first = state.epoch.is_none();
        if !changed && !first {
            return;
        }
        if changed {
            // Every member is known only if this replica looked at them shortly before.
            state.eligible = state.last_look.is_some_and(|look| look.elapsed() < JOIN_WAIT);
            tracing::warn!(
                bucket,
                epoch_start = epoch.start,
                reseeding = state.eligible,
                "wimse: the Redis replay store lost its state; refusing proofs from before the new epoch until the replicas re-seed it"
            );
            metrics::counter!("wimse_replay_store_epoch_changes_total").increment(1);
        }
        state.reseeded = false;
        state.recovered = false;
        state.peers_reseeded.clear();
        let marker = epoch.marker.clone();
        state.epoch = Some(epoch);
        drop(state);
        let inner = self.clone();
        tokio::spawn(async move { inner.reseed_bucket(bucket, marker).await });
    }

    /// Writes this replica's live claims of `bucket` into the epoch `marker`, then marks it
    /// re-seeded there. Retried every heartbeat until it works or the epoch changes again.
    async fn reseed_bucket(self: Arc<Self>, bucket: usize, marker: String) {
        loop {
            let now = self.verifier_now.load(std::sync::atomic::Ordering::Relaxed);
            let (claims, complete) = match self.bucket(bucket) {
                Ok(state) if state.epoch.as_ref().is_some_and(|e| e.marker == marker) => {
                    let claims: Vec<(u128, u64)> =
                        state.remembered.iter().filter(|(_, exp)| *exp > now).copied().collect();
                    (claims, state.forgot_until <= now)
                }
                _ => return,
            };
            match self.reseed_once(bucket, &marker, &claims, complete).await {
                Ok(true) => {
                    if let Ok(mut state) = self.bucket(bucket)
                        && state.epoch.as_ref().is_some_and(|e| e.marker == marker)
                    {
                        state.reseeded = complete;
                        state.recompute(&self.replica, self.settings.proof_window);
                        tracing::info!(
                            bucket,
                            claims = claims.len(),
                            complete,
                            "wimse: re-seeded the replay store's new epoch"
                        );
                    }
                    return;
                }
                // The epoch changed again: that change re-seeds.
                Ok(false) => return,
                Err(error) => {
                    tracing::debug!(bucket, %error, "wimse: re-seeding failed; retrying");
                    tokio::time::sleep(HEARTBEAT).await;
                }
            }
        }
    }

    async fn reseed_once(
        &self,
        bucket: usize,
        marker: &str,
        claims: &[(u128, u64)],
        complete: bool,
    ) -> redis::RedisResult<bool> {
        let mut connection = self.connection().await?;
        let batches: Vec<&[(u128, u64)]> =
            if claims.is_empty() { vec![&[]] } else { claims.chunks(RESEED_BATCH).collect() };
        let last = batches.len() - 1;
        for (i, batch) in batches.into_iter().enumerate() {
            let mut invocation = self.reseed.key(self.key(bucket, "epoch"));
            invocation.key(self.key(bucket, "reseeded"));
            for (key, _) in batch {
                invocation.key(self.key(bucket, &format!("{key:032x}")));
            }
            invocation.arg(marker).arg(&self.replica).arg(match (i == last, complete) {
                (false, _) => "0",
                (true, true) => "1",
                (true, false) => "incomplete",
            });
            for (_, expires_at) in batch {
                invocation.arg(*expires_at);
            }
            let answer: String = match &mut connection {
                Connection::Single(c) => invocation.invoke_async(c).await?,
                Connection::Cluster(c) => invocation.invoke_async(c).await?,
            };
            if answer != "OK" {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One heartbeat on every bucket: refreshes this replica's membership, learns the members,
    /// the epoch and who re-seeded it.
    async fn heartbeat(self: &Arc<Self>) -> redis::RedisResult<()> {
        let mut connection = self.connection().await?;
        let now = wall_clock();
        let window = self.settings.proof_window.as_secs();
        let verifier_now = self.verifier_now.load(std::sync::atomic::Ordering::Relaxed);
        let unbounded = self.unbounded_until.load(std::sync::atomic::Ordering::Relaxed) > verifier_now;
        let flags = if unbounded { "unbounded" } else { "" };
        let entry = format!("{now} {flags}");
        let prune_before = now.saturating_sub(window + 60);
        for bucket in 0..BUCKETS {
            let mut invocation = self.heartbeat.key(self.key(bucket, "epoch"));
            invocation
                .key(self.key(bucket, "members"))
                .key(self.key(bucket, "reseeded"))
                .arg(&self.replica)
                .arg(&entry)
                .arg(prune_before);
            let reply: (String, Vec<String>, Vec<String>) = match &mut connection {
                Connection::Single(c) => tokio::time::timeout(self.settings.timeout, invocation.invoke_async(c)).await,
                Connection::Cluster(c) => tokio::time::timeout(self.settings.timeout, invocation.invoke_async(c)).await,
            }
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "heartbeat timed out")))??;
            let (marker, members, reseeded) = reply;
            if let Some(epoch) = Epoch::parse(marker.clone()) {
                self.learn_epoch(bucket, epoch);
            }
            let Ok(mut state) = self.bucket(bucket) else { continue };
            let seen = Instant::now();
            for pair in members.chunks_exact(2) {
                let unbounded = pair[1].split_whitespace().nth(1) == Some("unbounded");
                state.members.insert(pair[0].clone(), Member { seen, unbounded });
            }
            state.peers_reseeded =
                reseeded.chunks_exact(2).filter(|pair| pair[1] == marker).map(|pair| pair[0].clone()).collect();
            // Forget replicas gone for longer than their claims can live.
            let horizon = self.settings.proof_window + HEARTBEAT * 2;
            state.members.retain(|_, member| member.seen.elapsed() < horizon);
            state.last_look = Some(seen);
            state.recompute(&self.replica, self.settings.proof_window);
        }
        Ok(())
    }

    /// Registers this replica (one heartbeat), starts its heartbeat task, and says from when it
    /// may claim.
    async fn join(self: &Arc<Self>) -> Result<Instant> {
        let joined =
            self.joined
                .get_or_try_init(|| async {
                    self.heartbeat().await.map_err(|e| {
                        Error::with_detail(ErrorKind::ReplayCacheUnavailable, format!("redis: registering: {e}"))
                    })?;
                    let weak = Arc::downgrade(self);
                    tokio::spawn(heartbeats(weak));
                    // Alone, nobody has to see this replica before it claims.
                    let others = self.buckets.iter().any(|bucket| {
                        bucket.lock().is_ok_and(|state| state.members.keys().any(|id| id != &self.replica))
                    });
                    Ok::<_, Error>(if others { Instant::now() + JOIN_WAIT } else { Instant::now() })
                })
                .await?;
        Ok(*joined)
    }

    /// Remembers a claim this replica accepted, for re-seeding.
    fn remember(&self, bucket: usize, claim: &ReplayClaim, now: u64) {
        self.verifier_now.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
        let window = self.settings.proof_window.as_secs();
        if claim.expires_at().saturating_sub(now) > window {
            self.unbounded_until.fetch_max(claim.expires_at(), std::sync::atomic::Ordering::Relaxed);
        }
        let Ok(mut state) = self.bucket(bucket) else { return };
        let per_bucket = self.settings.memory.div_ceil(BUCKETS).max(1);
        while state.remembered.front().is_some_and(|(_, exp)| *exp <= now) {
            state.remembered.pop_front();
        }
        if state.remembered.len() >= per_bucket
            && let Some((_, forgotten)) = state.remembered.pop_front()
        {
            state.forgot_until = state.forgot_until.max(forgotten);
        }
        state.remembered.push_back((claim.key(), claim.expires_at()));
    }

    async fn run<C: ConnectionLike>(
        self: &Arc<Self>,
        connection: &mut C,
        bucket: usize,
        claim: &ReplayClaim,
        now: u64,
    ) -> redis::RedisResult<Result<()>> {
        let epoch_key = self.key(bucket, "epoch");
        let claim_key = self.key(bucket, &format!("{:032x}", claim.key()));
        let expires_at = claim.expires_at().max(now.saturating_add(1));
        // Twice at most: once to learn a changed epoch, once to claim under it.
        for _ in 0..2 {
            let known = match self.bucket(bucket) {
                Ok(state) => {
                    if let Some(epoch) = &state.epoch
                        && claim.earliest_claim() <= epoch.start
                        && !state.recovered
                    {
                        return Ok(Err(Error::with_detail(
                            ErrorKind::ReplayCacheUnavailable,
                            format!(
                                "the replay store began a new epoch at {}; this proof may predate it (re-seeding {})",
                                epoch.start,
                                if state.eligible { "under way" } else { "impossible: waiting for the window to pass" }
                            ),
                        )));
                    }
                    state.epoch.clone()
                }
                Err(error) => return Ok(Err(error)),
            };
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
                "OK" => {
                    self.remember(bucket, claim, now);
                    return Ok(Ok(()));
                }
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

    async fn ensure_epochs<C: ConnectionLike>(
        self: &Arc<Self>,
        connection: &mut C,
        fresh: &str,
    ) -> redis::RedisResult<()> {
        for bucket in 0..BUCKETS {
            let marker: String =
                self.ensure_epoch.key(self.key(bucket, "epoch")).arg(fresh).invoke_async(connection).await?;
            if let Some(epoch) = Epoch::parse(marker) {
                self.learn_epoch(bucket, epoch);
            }
        }
        Ok(())
    }

    async fn claim(self: Arc<Self>, claim: ReplayClaim, now: u64) -> Result<()> {
        let bucket = (claim.key() >> 120) as usize % BUCKETS;
        let attempt = async {
            match self.connection().await? {
                Connection::Single(mut c) => self.run(&mut c, bucket, &claim, now).await,
                Connection::Cluster(mut c) => self.run(&mut c, bucket, &claim, now).await,
            }
        };
        let joined = tokio::time::timeout(self.settings.timeout, self.join()).await;
        let failure = match joined {
            Ok(Ok(joined)) => {
                // A new replica claims only once every other one has seen it (see the module).
                if Instant::now() < joined {
                    tokio::time::sleep_until(joined).await;
                }
                match tokio::time::timeout(self.settings.timeout, attempt).await {
                    Ok(Ok(answer)) => return answer,
                    Ok(Err(error)) => format!("redis: {error}"),
                    Err(_) => format!("redis: no answer within {:?}", self.settings.timeout),
                }
            }
            Ok(Err(error)) => error.detail().unwrap_or("redis: registering failed").to_owned(),
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

/// The heartbeat task of a store, ended when the store is dropped.
async fn heartbeats(store: Weak<Inner>) {
    let mut ticks = tokio::time::interval(HEARTBEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(inner) = store.upgrade() else { return };
        if let Err(error) = inner.heartbeat().await {
            tracing::debug!(%error, "wimse: replay store heartbeat failed");
            inner.forget_connection().await;
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
