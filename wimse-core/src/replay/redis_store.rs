//! The shared replay store on Redis or Redis Cluster (feature `redis`).
//!
//! # Surviving a Redis that loses its data
//!
//! Claims are spread over 16 hash-tagged buckets; each keeps, in one Redis Cluster slot, its
//! claims, an **epoch marker** (`<id>:<start>`), a **sequence** counted up by every claim, the
//! **members** (the replicas using it, refreshed by a heartbeat every [`HEARTBEAT`]) and which
//! members **re-seeded** the current epoch. A Redis that lost its data entirely (a restart
//! without persistence, `FLUSHALL`, a failover to an empty replica) lost the marker; one that
//! lost only recent writes (a snapshot restored, the last second of an `appendfsync everysec`
//! log, a failover to a lagging replica) shows a sequence lower than one already seen. Either
//! way the first replica to notice starts a new epoch. A proof that could have been accepted
//! before that moment ([`ReplayClaim::earliest_claim`]) may be a replay that nobody remembers
//! any more, so it is refused (503) until one of two things happens:
//!
//! - **re-seeding** (seconds): every replica remembers the claims it accepted while they are
//!   live (recorded when Redis accepts each one; an acceptance answered after the replica saw
//!   a new epoch is refused instead, since that epoch's re-seeding may have missed it), and
//!   writes them into the new epoch as soon as it sees it; once every replica that could hold live claims has done so, the bucket knows every
//!   claim again and older proofs are claimed as usual. This needs each replica to know every
//!   other: a replica registers before it claims anything, and when others use the store it
//!   waits [`JOIN_WAIT`] after registering before its first claim, so every other replica's
//!   heartbeat has seen it; a replica relies on re-seeding only when its own last look at the
//!   members was less than [`JOIN_WAIT`] before it saw the new epoch; a replica whose own
//!   registration is older than [`FENCE`] (its heartbeats fail) stops claiming; and a member
//!   stays waited for until its claims have certainly expired. A replica that disappeared without
//!   re-seeding (crashed with Redis, partitioned) or one that remembered too few claims blocks
//!   this path: then
//! - **the window passes**: after the [proof window](RedisReplayStore::proof_window) (the longest
//!   a claim lives), proofs made after the new epoch began are claimed as usual.
//!
//! Claims live at most the proof window: a longer one is refused, so the window bounds every
//! wait above. Times are the verifiers' (claims carry their expiry as a time to live, so Redis's
//! own clock never decides it); an epoch starts at the later of its marker's time and the moment
//! a replica sees it, plus [`START_MARGIN`] for clock differences between replicas.
//!
//! What is not detected: for up to one heartbeat after a partial loss, a replica that had not
//! yet seen the lost sequence numbers accepts claims as usual (so a proof another replica
//! accepted in that last second may be accepted again, until a replica that saw the higher
//! sequence notices, within a heartbeat); and claims an eviction policy removes: configure
//! `maxmemory-policy noeviction`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo};
use tokio::time::Instant;

use self::batch::Batched;
use super::{Claim, ReplayClaim, ReplayStore, WhenUnavailable};
use crate::error::{Error, ErrorKind, Result};

mod batch;

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

/// A replica whose own registration in a bucket is older than this stops claiming in it: the
/// others may no longer see it, and would not wait for its re-seeding.
pub const FENCE: Duration = Duration::from_secs(5);

/// Added to an epoch's start for clock differences between replicas.
pub const START_MARGIN: u64 = 5;

/// The default proof window: the verifier's default longest WPT lifetime (300 s) plus twice its
/// default leeway (30 s): a WPT is accepted while `exp <= now + 330` and claimed until
/// `exp + 30`.
pub const DEFAULT_PROOF_WINDOW: Duration = Duration::from_secs(360);

/// How many accepted claims a replica remembers by default for re-seeding (24 MB).
pub const DEFAULT_MEMORY: usize = 1_000_000;

/// Claims re-seeded per script call.
const RESEED_BATCH: usize = 256;

/// One atomic step per claim. KEYS: the bucket's epoch marker, the claim, the sequence. ARGV[1]:
/// the epoch the replica knows ("" if none); ARGV[2]: a new epoch, created if the marker is
/// missing (a fresh or emptied store); ARGV[3]: the claim's time to live (ms).
const CLAIM_SCRIPT: &str = r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  redis.call('SET', KEYS[1], ARGV[2])
  epoch = ARGV[2]
end
if epoch ~= ARGV[1] then
  return {'EPOCH', epoch, 0}
end
local seq = redis.call('INCR', KEYS[3])
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then
  return {'OK', '', seq}
end
return {'REPLAY', '', seq}
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

/// Replaces the epoch marker `ARGV[1]` by `ARGV[2]` (a loss of recent writes was seen); returns
/// the marker now in place.
const NEW_EPOCH_SCRIPT: &str = r"
local epoch = redis.call('GET', KEYS[1])
if (not epoch) or epoch == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return ARGV[2]
end
return epoch
";

/// A replica's heartbeat on one bucket. KEYS: epoch marker, members, re-seeded, sequence.
/// ARGV[1]: this replica; ARGV[2]: entries older than this many seconds are removed. The entry
/// is stamped with Redis's own clock, so replicas' clocks never compare. Returns the epoch (empty
/// when the marker is missing: only a claim starts an epoch, at the verifiers' time), the
/// members, the re-seeded markers and the sequence.
const HEARTBEAT_SCRIPT: &str = r"
local epoch = redis.call('GET', KEYS[1]) or ''
local now = tonumber(redis.call('TIME')[1])
redis.call('HSET', KEYS[2], ARGV[1], now)
local members = redis.call('HGETALL', KEYS[2])
for i = 1, #members, 2 do
  if tonumber(members[i + 1]) < now - tonumber(ARGV[2]) then
    redis.call('HDEL', KEYS[2], members[i])
    redis.call('HDEL', KEYS[3], members[i])
  end
end
local seq = tonumber(redis.call('GET', KEYS[4]) or '0')
return {epoch, redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3]), seq}
";

/// Re-seeds a batch of this replica's claims into the current epoch. KEYS: epoch marker,
/// re-seeded, then the claims. ARGV[1]: the epoch; ARGV[2]: this replica; ARGV[3]: `1` on the
/// last batch (mark the replica re-seeded), `incomplete` on the last batch of a replica that
/// could not remember every claim, `0` otherwise; ARGV[4..]: the claims' times to live (ms).
const RESEED_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 'EPOCH'
end
for i = 3, #KEYS do
  redis.call('SET', KEYS[i], '1', 'NX', 'PX', ARGV[i + 1])
end
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
elseif ARGV[3] == 'incomplete' then
  redis.call('HSET', KEYS[2], ARGV[2], 'incomplete')
end
return 'OK'
";

/// A bucket's sequence as an answer reports it: counted up by that very claim, or only read.
#[derive(Debug, Clone, Copy)]
enum Sequence {
    Counted(u64),
    Read(u64),
}

/// A bucket's epoch as a replica knows it: the marker's value and from when proofs are surely
/// newer than it (on the verifiers' clock).
#[derive(Debug, Clone)]
struct Epoch {
    /// Shared, not copied: every claim sends the marker it knows.
    marker: Arc<str>,
    start: u64,
}

impl Epoch {
    /// Markers are `<id>:<start>`.
    fn parse(marker: String) -> Option<Self> {
        let start = marker.rsplit_once(':')?.1.parse().ok()?;
        Some(Self { marker: marker.into(), start })
    }
}

/// One bucket's keys, made once per store rather than formatted on every claim.
struct BucketKeys {
    epoch: String,
    seq: String,
    members: String,
    reseeded: String,
    /// A claim's key is this followed by its 128-bit digest in hex.
    claim_prefix: String,
}

impl BucketKeys {
    fn new(prefix: &str, bucket: usize) -> Self {
        Self {
            epoch: format!("{prefix}{{{bucket}}}:epoch"),
            seq: format!("{prefix}{{{bucket}}}:seq"),
            members: format!("{prefix}{{{bucket}}}:members"),
            reseeded: format!("{prefix}{{{bucket}}}:reseeded"),
            claim_prefix: format!("{prefix}{{{bucket}}}:"),
        }
    }

    /// The key of the claim whose digest is `key` (what `format!("{key:032x}")` would append).
    fn claim(&self, key: u128) -> Vec<u8> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = Vec::with_capacity(self.claim_prefix.len() + 32);
        out.extend_from_slice(self.claim_prefix.as_bytes());
        out.extend((0..32).rev().map(|nibble| HEX[((key >> (nibble * 4)) & 0xf) as usize]));
        out
    }
}

#[derive(Clone)]
enum Target {
    Single(redis::Client),
    /// The cluster, and how to reach one of its nodes (credentials, TLS) for the direct routes.
    Cluster(Box<ClusterClient>, Box<ConnectionInfo>),
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
    /// One Redis; claims are sent in batches.
    Single(Batched),
    /// The cluster client routes everything but claims; claims go straight to their bucket's
    /// node when its route is known (see [`DirectRoutes`]).
    Cluster(ClusterConnection, Option<Arc<DirectRoutes>>),
}

/// Each bucket's master node, connected directly. The cluster client sends every command
/// through a routing task of its own before the node's connection, one more task hop (and
/// wake-up) per claim. A bucket's keys share one hash tag, so one slot and one node; a claim
/// answered with a redirect (the slot moved, a failover) is sent again through the cluster
/// client, which follows the cluster's changes, and this thread's routes are rebuilt on its
/// next connection.
struct DirectRoutes {
    by_bucket: Vec<Batched>,
}

impl Connection {
    /// Where `bucket`'s claims are sent in batches: the Redis, or the bucket's node when its
    /// route is known; `None` when they take the cluster client's route.
    fn batched_route(&self, bucket: usize) -> Option<&Batched> {
        match self {
            Connection::Single(single) => Some(single),
            Connection::Cluster(_, Some(direct)) => direct.by_bucket.get(bucket),
            Connection::Cluster(_, None) => None,
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(c) => c.connection_mut().req_packed_command(cmd),
            Connection::Cluster(c, _) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(c) => c.connection_mut().req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c, _) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.connection().get_db(),
            Connection::Cluster(c, _) => c.get_db(),
        }
    }
}

/// What a replica knows of one bucket.
#[derive(Debug, Default)]
struct Bucket {
    epoch: Option<Epoch>,
    /// When the current epoch was learned: a heartbeat sent before it carries older news.
    learned: Option<Instant>,
    /// When this replica last read the members (its heartbeat's send time).
    last_look: Option<Instant>,
    /// When this replica's own registration was last refreshed (its heartbeat's send time).
    registered: Option<Instant>,
    /// The current epoch began while this replica knew every member (its last look was recent).
    eligible: bool,
    /// This replica re-seeded its claims into the current epoch.
    reseeded: bool,
    /// A re-seeding of the current epoch is running.
    reseeding: bool,
    /// Members that re-seeded the current epoch (as of the last heartbeat).
    peers_reseeded: HashSet<String>,
    /// Every replica seen in this bucket (the union over heartbeats, so a loss forgets none),
    /// with when it was last seen.
    members: HashMap<String, Instant>,
    /// Proofs older than the current epoch may be claimed: every member re-seeded it.
    recovered: bool,
    /// The highest sequence seen, and when its answer arrived: an answer sent after that with a
    /// lower one means the store lost recent writes (Redis runs commands in order).
    sequence: u64,
    sequence_seen: Option<Instant>,
    /// The claims this replica accepted, oldest first: (key, expiry).
    remembered: VecDeque<(u128, u64)>,
    /// Until when a claim this replica had to forget could still be live.
    forgot_until: u64,
}

impl Bucket {
    /// How long a member is waited for after it was last seen: until every claim it may have
    /// accepted (while fenced in by [`FENCE`]) has expired.
    fn relevance(window: Duration) -> Duration {
        window + FENCE + HEARTBEAT * 2
    }

    /// Re-derives `recovered` from what is known.
    fn recompute(&mut self, me: &str, window: Duration) {
        let horizon = Self::relevance(window);
        self.recovered = self.eligible
            && self.reseeded
            && self
                .members
                .iter()
                .filter(|(id, _)| id.as_str() != me)
                .all(|(id, seen)| seen.elapsed() >= horizon || self.peers_reseeded.contains(id));
    }
}

thread_local! {
    /// Each thread's connection to each live store (see [`Inner::connection`]).
    static THREAD_CONNECTIONS: std::cell::RefCell<Vec<(Weak<()>, Connection)>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct Inner {
    target: Target,
    settings: Settings,
    /// This replica's name in the buckets' members (random per store).
    replica: String,
    /// Distinguishes the fresh epoch markers this replica proposes.
    proposals: AtomicU64,
    /// Alive while the store is: the threads' cached connections to it are dropped after it.
    alive: Arc<()>,
    /// The connection attempt under way, if any (see [`Inner::connection`]).
    connecting: Mutex<Option<Attempt>>,
    buckets: [Mutex<Bucket>; BUCKETS],
    /// Claims remembered, over all buckets (bounded by `memory`).
    remembered: AtomicUsize,
    /// The latest time a verifier claimed at: claims' expiries are on the verifiers' clock.
    verifier_now: AtomicU64,
    /// Set once this replica registered: from when it may claim (then + [`JOIN_WAIT`] when
    /// other replicas use the store).
    joined: std::sync::OnceLock<Instant>,
    /// A registration task is running (one at a time; no claim's timeout cuts it short).
    joining: std::sync::atomic::AtomicBool,
    /// Wakes those waiting for the registration.
    registered: tokio::sync::Notify,
    /// The heartbeat task's last tick (ms since `epoch_of_ticks`), to restart a task that died
    /// with its runtime.
    last_tick: AtomicU64,
    ticks_from: Instant,
    /// Each bucket's keys.
    keys: Vec<BucketKeys>,
    script: redis::Script,
    ensure_epoch: redis::Script,
    new_epoch: redis::Script,
    heartbeat: redis::Script,
    reseed: redis::Script,
}

/// A [`ReplayStore`] on Redis or Redis Cluster, shared by every replica: a proof accepted by
/// one is refused by all. Asynchronous (tokio): a claim never blocks a runtime thread, and is
/// bounded as a whole by [`timeout`](Self::timeout) (default 250 ms); past it the store
/// fails closed (503) or, if so configured, open.
///
/// Each claim is one Lua script on one hash slot: `SET key NX PX <time to live>` on a fixed-size
/// key (`<prefix>{<bucket>}:<128-bit digest>`), guarded by the bucket's epoch marker. Claims
/// that are ready at the same moment are sent to their node together, written and answered
/// together (up to 64 at a time), each claim still its own script with its own answer. A store
/// that lost its data is recovered within seconds by the replicas re-seeding the claims they
/// accepted, and otherwise refuses the proofs that could predate the loss until they expire:
/// see [the module](self) for how, and what each replica must know for it. A brand-new store
/// looks like a lost one to a replica that never saw it before: the first minutes after a first
/// deployment refuse older proofs.
///
/// Each replica heartbeats every [`HEARTBEAT`] (one script per bucket), registers before its
/// first claim and, when other replicas use the store, waits [`JOIN_WAIT`] before claiming
/// (claims meanwhile are refused: call [`join`](Self::join) at start, before the service reports
/// ready), and remembers the claims it accepted while they are live (`memory` of them at most;
/// 24 bytes each).
///
/// Required Redis configuration: `maxmemory-policy noeviction` (any eviction policy removes live
/// claims, which no replica notices), and enough `maxmemory` for the peak rate × proof window ×
/// ~100 bytes; when Redis is full it refuses writes and the store fails closed. Recommended:
/// persistence (`appendonly yes`) so a restart keeps claims and markers; a restart that loses
/// the last second of writes, a restored snapshot or a failover to a lagging replica is seen by
/// the sequence and recovered like a total loss.
#[derive(Clone)]
pub struct RedisReplayStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisReplayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisReplayStore")
            .field("cluster", &matches!(self.inner.target, Target::Cluster(..)))
            .field("timeout", &self.inner.settings.timeout)
            .field("when_unavailable", &self.inner.settings.when_unavailable)
            .field("proof_window", &self.inner.settings.proof_window)
            .finish_non_exhaustive()
    }
}

fn config_error(e: impl fmt::Display) -> Error {
    Error::with_detail(ErrorKind::InvalidConfiguration, format!("redis: {e}"))
}

fn unavailable(detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::with_detail(ErrorKind::ReplayCacheUnavailable, detail)
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
        let first = nodes.first().ok_or_else(|| config_error("a Redis Cluster needs at least one node"))?;
        let node = first.as_str().into_connection_info().map_err(config_error)?;
        let client = ClusterClient::builder(nodes)
            .connection_timeout(Duration::from_millis(250))
            .response_timeout(Duration::from_millis(250))
            .retries(1)
            .build()
            .map_err(config_error)?;
        Ok(Self::with_target(Target::Cluster(Box::new(client), Box::new(node))))
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
    /// start, before the service reports ready. Until then claims are refused (503).
    pub async fn join(&self) -> Result<()> {
        let joined = Inner::start_joining(&self.inner).await?;
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

    /// The longest a claim lives: the verifiers' longest proof lifetime plus twice their leeway
    /// (default [`DEFAULT_PROOF_WINDOW`], 360 s, for the verifier's defaults). A proof that would
    /// be claimed for longer is refused (503): the window bounds how long a replica that vanished
    /// with Redis is waited for, so it must cover every claim.
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

/// A connection attempt that claims share: its outcome, once known, and the thread of the
/// claim that started it.
#[derive(Clone)]
struct Attempt {
    outcome: tokio::sync::watch::Receiver<Option<std::result::Result<Connection, String>>>,
    thread: std::thread::ThreadId,
}

/// Opens a connection to `target`. No response timeout of the client's own: every use is
/// bounded by the store's timeout around it (one timer per claim, not two).
async fn connect(target: &Target, timeout: Duration) -> redis::RedisResult<Connection> {
    Ok(match target {
        Target::Single(client) => Connection::Single(Batched::new(
            client.get_multiplexed_async_connection_with_config(&node_config(timeout)).await?,
            timeout,
        )),
        Target::Cluster(client, node) => {
            let mut router = client.get_async_connection().await?;
            // Half the connection's budget at most: slow nodes leave the claims to the cluster
            // client rather than failing the whole connection.
            let routes = tokio::time::timeout(timeout / 2, direct_routes(&mut router, node, timeout)).await;
            let routes = routes.unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))));
            let direct = match routes {
                Ok(direct) => Some(Arc::new(direct)),
                Err(error) => {
                    // Claims then take the cluster client's route: slower, as correct.
                    tracing::debug!(%error, "wimse: no direct routes to the cluster's nodes");
                    None
                }
            };
            Connection::Cluster(router, direct)
        }
    })
}

fn node_config(timeout: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new().set_connection_timeout(Some(timeout)).set_response_timeout(None)
}

/// Connects to the master of each bucket's slot, as the cluster announces them
/// (`CLUSTER SLOTS`), with `node`'s credentials and TLS settings.
async fn direct_routes(
    router: &mut ClusterConnection,
    node: &ConnectionInfo,
    timeout: Duration,
) -> redis::RedisResult<DirectRoutes> {
    let ranges: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(router).await?;
    let masters = slot_masters(&ranges)
        .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Parse, "unreadable CLUSTER SLOTS answer")))?;
    let mut connections: HashMap<(String, u16), Batched> = HashMap::new();
    let mut by_bucket = Vec::with_capacity(BUCKETS);
    for bucket in 0..BUCKETS {
        let slot = bucket_slot(bucket);
        let (host, port) = masters
            .iter()
            .find(|(start, end, _, _)| (*start..=*end).contains(&slot))
            .map(|(_, _, host, port)| (host.clone(), *port))
            .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Client, "a bucket's slot has no master")))?;
        let connection = match connections.entry((host, port)) {
            std::collections::hash_map::Entry::Occupied(known) => known.get().clone(),
            std::collections::hash_map::Entry::Vacant(new) => {
                let (host, port) = new.key().clone();
                let addr = match node.addr() {
                    ConnectionAddr::TcpTls { insecure, tls_params, .. } => {
                        ConnectionAddr::TcpTls { host, port, insecure: *insecure, tls_params: tls_params.clone() }
                    }
                    _ => ConnectionAddr::Tcp(host, port),
                };
                let client = redis::Client::open(node.clone().set_addr(addr))?;
                let connection = client.get_multiplexed_async_connection_with_config(&node_config(timeout)).await?;
                new.insert(Batched::new(connection, timeout)).clone()
            }
        };
        by_bucket.push(connection);
    }
    Ok(DirectRoutes { by_bucket })
}

/// `(first slot, last slot, master host, master port)` of each range of a `CLUSTER SLOTS`
/// answer; `None` when it cannot be read or names a master without a usable host.
fn slot_masters(ranges: &[redis::Value]) -> Option<Vec<(u16, u16, String, u16)>> {
    use redis::Value;
    let int = |value: &Value| match value {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    ranges
        .iter()
        .map(|range| {
            let Value::Array(fields) = range else { return None };
            let Value::Array(master) = fields.get(2)? else { return None };
            let host = match master.first()? {
                Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok()?,
                Value::SimpleString(text) => text.clone(),
                _ => return None,
            };
            // An empty or `?` host means "the address you reached me at": not known here.
            if host.is_empty() || host == "?" {
                return None;
            }
            Some((int(fields.first()?)?, int(fields.get(1)?)?, host, int(master.get(1)?)?))
        })
        .collect()
}

/// The cluster slot of `bucket`'s keys, whose hash tag is the bucket's number.
fn bucket_slot(bucket: usize) -> u16 {
    key_slot(bucket.to_string().as_bytes())
}

/// Redis Cluster's slot of a hash tag: CRC16 (XMODEM) modulo 16 384.
fn key_slot(tag: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in tag {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc % 16_384
}

impl Inner {
    fn new(target: Target, settings: Settings) -> Self {
        Self {
            keys: (0..BUCKETS).map(|bucket| BucketKeys::new(&settings.prefix, bucket)).collect(),
            target,
            settings,
            replica: crate::jose::random_id(),
            proposals: AtomicU64::new(0),
            alive: Arc::new(()),
            connecting: Mutex::new(None),
            buckets: Default::default(),
            remembered: AtomicUsize::new(0),
            verifier_now: AtomicU64::new(0),
            joined: std::sync::OnceLock::new(),
            joining: std::sync::atomic::AtomicBool::new(false),
            registered: tokio::sync::Notify::new(),
            last_tick: AtomicU64::new(0),
            ticks_from: Instant::now(),
            script: redis::Script::new(CLAIM_SCRIPT),
            ensure_epoch: redis::Script::new(ENSURE_EPOCH_SCRIPT),
            new_epoch: redis::Script::new(NEW_EPOCH_SCRIPT),
            heartbeat: redis::Script::new(HEARTBEAT_SCRIPT),
            reseed: redis::Script::new(RESEED_SCRIPT),
        }
    }

    /// A fresh epoch marker starting at `now` (verifier time).
    fn fresh_marker(&self, now: u64) -> String {
        let n = self.proposals.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}:{now}", self.replica)
    }

    /// This thread's connection to the store (made on first use). One per thread rather than
    /// one per store: a multiplexed connection's I/O is driven by a task of its own, and on the
    /// thread (and runtime) that made it; shared by every worker, each claim would wake that
    /// other thread twice (measured: about a tenth of an actix-web server's CPU spent switching
    /// to it). Per thread, the claim and its I/O run where the request does.
    async fn connection(&self) -> redis::RedisResult<Connection> {
        if let Some(connection) = self.thread_connection() {
            return Ok(connection);
        }
        // One connection attempt at a time per store: after a failure, or while Redis stalls,
        // every claim misses its thread's cache, and they must not each open a socket.
        let mut attempt = self.attempt();
        let outcome = match attempt.outcome.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone(),
            Err(_) => None,
        };
        match outcome {
            Some(Ok(connection)) => {
                // Kept only by the thread that started the attempt: a claim on another thread
                // uses it once, and its thread's next claim connects for itself.
                if std::thread::current().id() == attempt.thread {
                    self.keep_on_this_thread(connection.clone());
                }
                Ok(connection)
            }
            Some(Err(error)) => Err(redis::RedisError::from((redis::ErrorKind::Io, "connecting failed", error))),
            None => Err(redis::RedisError::from((redis::ErrorKind::Io, "the connection attempt was abandoned"))),
        }
    }

    /// The connection attempt under way, or a new one. The attempt runs in a task of its own,
    /// bounded by the store's timeout: a claim that gives up waiting does not end it, so claims
    /// whose deadlines pass one after another do not start one attempt each.
    fn attempt(&self) -> Attempt {
        let mut connecting = self.connecting.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(attempt) = connecting.as_ref()
            && attempt.outcome.borrow().is_none()
        {
            return attempt.clone();
        }
        let (sender, outcome) = tokio::sync::watch::channel(None);
        let attempt = Attempt { outcome, thread: std::thread::current().id() };
        *connecting = Some(attempt.clone());
        let (target, timeout) = (self.target.clone(), self.settings.timeout);
        tokio::spawn(async move {
            let connected = match tokio::time::timeout(timeout, connect(&target, timeout)).await {
                Ok(Ok(connection)) => Ok(connection),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err(format!("no connection within {timeout:?}")),
            };
            let _ = sender.send(Some(connected));
        });
        attempt
    }

    /// Caches `connection` as this thread's connection to the store; the connections of stores
    /// dropped since are let go here, off the claim's fast path.
    fn keep_on_this_thread(&self, connection: Connection) {
        THREAD_CONNECTIONS.with_borrow_mut(|cached| {
            cached.retain(|(store, _)| store.strong_count() > 0 && !self.is_this_store(store));
            cached.push((Arc::downgrade(&self.alive), connection));
        });
    }

    /// This thread's cached connection to this store, if any.
    fn thread_connection(&self) -> Option<Connection> {
        THREAD_CONNECTIONS.with_borrow(|cached| {
            cached.iter().find(|(store, _)| self.is_this_store(store)).map(|(_, connection)| connection.clone())
        })
    }

    fn is_this_store(&self, store: &Weak<()>) -> bool {
        std::ptr::eq(store.as_ptr(), Arc::as_ptr(&self.alive))
    }

    /// Drops this thread's connection after a failure: the next use connects afresh (a cluster
    /// connection does not always recover from every node restarting, and a connection whose
    /// runtime ended never answers again).
    fn forget_connection(&self) {
        THREAD_CONNECTIONS.with_borrow_mut(|cached| {
            cached.retain(|(store, _)| !self.is_this_store(store));
        });
    }

    fn bucket(&self, bucket: usize) -> Result<std::sync::MutexGuard<'_, Bucket>> {
        self.buckets[bucket].lock().map_err(|_| unavailable("replay store state poisoned"))
    }

    fn now(&self) -> u64 {
        self.verifier_now.load(Ordering::Relaxed)
    }

    /// Records the epoch a script answered with. A changed marker is a new epoch: this replica
    /// starts re-seeding it. `seen_at` is when the answer's request was sent: an answer sent
    /// before the current epoch was learned is older news and ignored.
    fn learn_epoch(self: &Arc<Self>, bucket: usize, epoch: Epoch, seen_at: Instant) {
        let Ok(mut state) = self.bucket(bucket) else { return };
        let changed = state.epoch.as_ref().is_some_and(|old| old.marker != epoch.marker);
        let first = state.epoch.is_none();
        if !(changed || first) || state.learned.is_some_and(|learned| learned > seen_at) {
            return;
        }
        let mut epoch = epoch;
        if changed {
            // The loss happened before now: every proof accepted until now may predate it,
            // whatever time the marker carries (an older marker may have been restored, or the
            // replica that made it may run slow).
            let now = self.now();
            epoch.start = epoch.start.min(now.saturating_add(START_MARGIN)).max(now) + START_MARGIN;
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
        state.sequence = 0;
        state.sequence_seen = None;
        state.learned = Some(Instant::now());
        let marker = epoch.marker.clone();
        state.epoch = Some(epoch);
        state.reseeding = true;
        drop(state);
        let inner = Arc::downgrade(self);
        tokio::spawn(reseed_bucket(inner, bucket, marker.to_string()));
    }

    /// Writes this replica's live claims of `bucket` into the epoch `marker`, then marks it
    /// re-seeded there. `Ok(None)`: the epoch changed meanwhile.
    async fn reseed_once(&self, bucket: usize, marker: &str) -> redis::RedisResult<Option<bool>> {
        let now = self.now();
        let (claims, complete) = match self.bucket(bucket) {
            Ok(state) if state.epoch.as_ref().is_some_and(|e| *e.marker == *marker) => {
                let claims: Vec<(u128, u64)> = state.remembered.iter().filter(|(_, exp)| *exp > now).copied().collect();
                (claims, state.forgot_until <= now)
            }
            _ => return Ok(None),
        };
        let mut connection = self.connection().await?;
        let batches: Vec<&[(u128, u64)]> =
            if claims.is_empty() { vec![&[]] } else { claims.chunks(RESEED_BATCH).collect() };
        let last = batches.len() - 1;
        for (i, batch) in batches.into_iter().enumerate() {
            let mut invocation = self.reseed.key(&self.keys[bucket].epoch);
            invocation.key(&self.keys[bucket].reseeded);
            for (key, _) in batch {
                invocation.key(self.keys[bucket].claim(*key));
            }
            invocation.arg(marker).arg(&self.replica).arg(match (i == last, complete) {
                (false, _) => "0",
                (true, true) => "1",
                (true, false) => "incomplete",
            });
            for (_, expires_at) in batch {
                invocation.arg(ttl_ms(*expires_at, now));
            }
            let answer: String = bounded(self.settings.timeout, invocation.invoke_async(&mut connection)).await?;
            if answer != "OK" {
                return Ok(None);
            }
        }
        tracing::info!(bucket, claims = claims.len(), complete, "wimse: re-seeded the replay store's new epoch");
        Ok(Some(complete))
    }

    /// One heartbeat on every bucket: refreshes this replica's membership, learns the members,
    /// the epoch, who re-seeded it and the sequence. A failing bucket does not stop the others.
    async fn heartbeat(self: &Arc<Self>) -> redis::RedisResult<()> {
        let mut connection = self.connection().await?;
        let prune_after = self.settings.proof_window.as_secs() + 60;
        let mut failure = None;
        for bucket in 0..BUCKETS {
            let sent = Instant::now();
            let mut invocation = self.heartbeat.key(&self.keys[bucket].epoch);
            invocation
                .key(&self.keys[bucket].members)
                .key(&self.keys[bucket].reseeded)
                .key(&self.keys[bucket].seq)
                .arg(&self.replica)
                .arg(prune_after);
            let answer = bounded(self.settings.timeout, invocation.invoke_async(&mut connection)).await;
            let (marker, members, reseeded, sequence): (String, Vec<String>, Vec<String>, u64) = match answer {
                Ok(reply) => reply,
                Err(error) => {
                    failure = Some(error);
                    continue;
                }
            };
            if let Some(epoch) = Epoch::parse(marker.clone()) {
                self.learn_epoch(bucket, epoch, sent);
            }
            let rolled_back = self.observe_sequence(bucket, &marker, Sequence::Read(sequence), sent);
            let Some((retry, marker)) = self.after_heartbeat(bucket, sent, &members, &reseeded) else { continue };
            if rolled_back {
                self.start_new_epoch(&mut connection, bucket).await?;
            } else if retry && let Some(marker) = marker {
                self.mark_reseeding(bucket);
                tokio::spawn(reseed_bucket(Arc::downgrade(self), bucket, marker));
            }
        }
        self.last_tick.store(self.ticks_from.elapsed().as_millis() as u64, Ordering::Relaxed);
        failure.map_or(Ok(()), Err)
    }

    /// Updates a bucket from a heartbeat's answer (sent at `sent`): this replica's registration,
    /// the members, who re-seeded, the recovery. Returns whether an incomplete re-seeding is due
    /// again, and the current marker.
    fn after_heartbeat(
        &self,
        bucket: usize,
        sent: Instant,
        members: &[String],
        reseeded: &[String],
    ) -> Option<(bool, Option<String>)> {
        let mut state = self.bucket(bucket).ok()?;
        state.registered = Some(sent);
        for pair in members.chunks_exact(2) {
            state.members.insert(pair[0].clone(), sent);
        }
        if state.learned.is_none_or(|learned| learned <= sent)
            && let Some(epoch) = &state.epoch
        {
            let marker = epoch.marker.clone();
            state.peers_reseeded =
                reseeded.chunks_exact(2).filter(|pair| *pair[1] == *marker).map(|pair| pair[0].clone()).collect();
        }
        // Forget replicas gone for longer than their claims can live.
        let horizon = Bucket::relevance(self.settings.proof_window);
        state.members.retain(|_, seen| seen.elapsed() < horizon);
        state.last_look = Some(sent);
        // An incomplete re-seeding is retried once what was forgotten has expired.
        let retry = !state.reseeded && !state.reseeding && state.epoch.is_some() && state.forgot_until <= self.now();
        state.recompute(&self.replica, self.settings.proof_window);
        Some((retry, state.epoch.as_ref().map(|e| e.marker.to_string())))
    }

    fn mark_reseeding(&self, bucket: usize) {
        if let Ok(mut state) = self.bucket(bucket) {
            state.reseeding = true;
        }
    }

    /// Records a bucket's sequence in epoch `marker` from an answer whose request was sent at
    /// `sent`; `true` when
    /// it went backwards (the store lost recent writes). An answer to a request sent before the
    /// highest sequence arrived may be lower without any loss.
    fn observe_sequence(&self, bucket: usize, marker: &str, sequence: Sequence, sent: Instant) -> bool {
        let Ok(mut state) = self.bucket(bucket) else { return false };
        // Sequences count within an epoch: an answer about another one says nothing here.
        if state.epoch.as_ref().is_none_or(|epoch| *epoch.marker != *marker) {
            return false;
        }
        // A count this answer itself made must be above every count seen before it; one read
        // without counting must not be below.
        let (sequence, ahead) = match sequence {
            Sequence::Counted(n) => (n, n > state.sequence),
            Sequence::Read(n) => (n, n >= state.sequence),
        };
        if ahead {
            state.sequence = sequence;
            state.sequence_seen = Some(Instant::now());
            return false;
        }
        if state.sequence_seen.is_some_and(|seen| sent > seen) {
            tracing::warn!(
                bucket,
                seen = state.sequence,
                now = sequence,
                "wimse: the Redis replay store lost recent writes"
            );
            state.sequence = sequence;
            state.sequence_seen = Some(Instant::now());
            return true;
        }
        false
    }

    /// Replaces the bucket's marker by a fresh one (after a loss of recent writes), and learns it.
    async fn start_new_epoch(self: &Arc<Self>, connection: &mut Connection, bucket: usize) -> redis::RedisResult<()> {
        let known = match self.bucket(bucket) {
            Ok(state) => state.epoch.as_ref().map_or_else(String::new, |e| e.marker.to_string()),
            Err(_) => return Ok(()),
        };
        let fresh = self.fresh_marker(self.now());
        let sent = Instant::now();
        let mut invocation = self.new_epoch.key(&self.keys[bucket].epoch);
        invocation.arg(known).arg(&fresh);
        let marker: String = bounded(self.settings.timeout, invocation.invoke_async(connection)).await?;
        if let Some(epoch) = Epoch::parse(marker) {
            self.learn_epoch(bucket, epoch, sent);
        }
        Ok(())
    }

    /// Registers this replica (one heartbeat, in a task of its own so that no claim's timeout
    /// cuts it short) and says from when it may claim. Resolves when the registration is done;
    /// a failed one is retried by the next caller.
    async fn start_joining(this: &Arc<Self>) -> Result<Instant> {
        loop {
            if let Some(joined) = this.joined.get() {
                return Ok(*joined);
            }
            let notified = this.registered.notified();
            if !this.joining.swap(true, Ordering::AcqRel) {
                let inner = this.clone();
                tokio::spawn(async move {
                    match inner.heartbeat().await {
                        Ok(()) => {
                            // Alone, nobody has to see this replica before it claims.
                            let others = inner.buckets.iter().any(|bucket| {
                                bucket.lock().is_ok_and(|state| state.members.keys().any(|id| id != &inner.replica))
                            });
                            let joined = if others { Instant::now() + JOIN_WAIT } else { Instant::now() };
                            let _ = inner.joined.set(joined);
                            tokio::spawn(heartbeats(Arc::downgrade(&inner)));
                        }
                        Err(error) => tracing::debug!(%error, "wimse: registering in the replay store failed"),
                    }
                    inner.joining.store(false, Ordering::Release);
                    inner.registered.notify_waiters();
                });
            }
            notified.await;
            if this.joined.get().is_none() && !this.joining.load(Ordering::Acquire) {
                return Err(unavailable("redis: registering in the replay store failed"));
            }
        }
    }

    /// The heartbeat task died with the runtime it was spawned on: start another here.
    fn watch_heartbeat(self: &Arc<Self>) {
        let last = self.last_tick.load(Ordering::Relaxed);
        let now = self.ticks_from.elapsed().as_millis() as u64;
        if now.saturating_sub(last) > (HEARTBEAT * 3).as_millis() as u64
            && self.last_tick.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!("wimse: the replay store's heartbeat stopped; restarting it");
            tokio::spawn(heartbeats(Arc::downgrade(self)));
        }
    }

    /// Remembers a claim Redis accepted under the epoch `marker`, for re-seeding. `false`: the
    /// epoch changed while the answer was on its way, so a re-seeding may already have missed
    /// this claim; it must be refused. Checked and recorded under the bucket's lock, which a new
    /// epoch is learned under too, so no re-seeding misses an accepted claim. Only accepted
    /// claims are remembered: one in flight when an epoch is learned was refused (its answer
    /// names the new epoch), and re-seeding it would make its own retry look like a replay.
    fn remember(&self, bucket: usize, claim: &ReplayClaim, now: u64, marker: &str) -> bool {
        let Ok(mut state) = self.bucket(bucket) else { return false };
        if state.epoch.as_ref().is_none_or(|epoch| *epoch.marker != *marker) {
            return false;
        }
        let mut dropped = 0;
        while state.remembered.front().is_some_and(|(_, exp)| *exp <= now) {
            state.remembered.pop_front();
            dropped += 1;
        }
        self.remembered.fetch_sub(dropped, Ordering::Relaxed);
        if self.remembered.load(Ordering::Relaxed) >= self.settings.memory {
            // Over the whole store's memory: forget this bucket's oldest (its expiry bounds
            // how long the bucket cannot be re-seeded completely).
            if let Some((_, forgotten)) = state.remembered.pop_front() {
                state.forgot_until = state.forgot_until.max(forgotten);
                self.remembered.fetch_sub(1, Ordering::Relaxed);
            } else {
                state.forgot_until = state.forgot_until.max(claim.expires_at());
                return true;
            }
        }
        state.remembered.push_back((claim.key(), claim.expires_at()));
        self.remembered.fetch_add(1, Ordering::Relaxed);
        true
    }

    async fn run(
        self: &Arc<Self>,
        connection: &mut Connection,
        bucket: usize,
        claim: &ReplayClaim,
        now: u64,
    ) -> redis::RedisResult<Result<()>> {
        let keys = &self.keys[bucket];
        let claim_key = keys.claim(claim.key());
        let ttl = ttl_ms(claim.expires_at(), now);
        // Twice at most: once to learn a changed epoch, once to claim under it.
        for _ in 0..2 {
            let known = match self.bucket(bucket) {
                Ok(state) => {
                    if state.registered.is_none_or(|at| at.elapsed() > FENCE) {
                        return Ok(Err(unavailable(
                            "redis: this replica's registration is stale (its heartbeats fail): not claiming",
                        )));
                    }
                    if let Some(epoch) = &state.epoch
                        && claim.earliest_claim() <= epoch.start
                        && !state.recovered
                    {
                        return Ok(Err(unavailable(format!(
                            "the replay store began a new epoch at {}; this proof may predate it (re-seeding {})",
                            epoch.start,
                            if state.eligible { "under way" } else { "impossible: waiting for the window to pass" }
                        ))));
                    }
                    state.epoch.clone()
                }
                Err(error) => return Ok(Err(error)),
            };
            let fresh = self.fresh_marker(now);
            let sent = Instant::now();
            // `EVALSHA` built directly, in one buffer: a `ScriptInvocation` copies each key and
            // argument into a buffer of its own first (0.7 to 2 µs of a claim's 5 to 10 µs,
            // measured with `load-bench claims`).
            let command = || {
                let mut command = redis::Cmd::with_capacity(9, 160 + claim_key.len() + fresh.len());
                command
                    .arg("EVALSHA")
                    .arg(self.script.get_hash())
                    .arg(3)
                    .arg(&keys.epoch)
                    .arg(&claim_key)
                    .arg(&keys.seq)
                    .arg(known.as_ref().map_or("", |e| &*e.marker))
                    .arg(&fresh)
                    .arg(ttl);
                command
            };
            let answer = match connection.batched_route(bucket) {
                Some(route) => match self.run_batched(route, command).await {
                    // A redirect (the slot moved, a failover) means the node did not run the
                    // script: the cluster client knows where to go, and this thread's routes
                    // are rebuilt on its next claim. An I/O error is not retried: the script
                    // may have run, and a second run would answer "replayed".
                    Err(error) if error.is_cluster_error() => {
                        tracing::debug!(bucket, %error, "wimse: the cluster moved a bucket; claiming through the cluster client");
                        self.forget_connection();
                        self.run_script(&command(), connection).await
                    }
                    answer => answer,
                },
                None => self.run_script(&command(), connection).await,
            };
            let (status, marker, sequence): (String, String, u64) = answer?;
            match status.as_str() {
                "OK" | "REPLAY" => {
                    let marker = known.as_ref().map_or("", |e| &*e.marker);
                    if self.observe_sequence(bucket, marker, Sequence::Counted(sequence), sent) {
                        // Recent writes were lost: this answer cannot be trusted.
                        self.start_new_epoch(connection, bucket).await?;
                        return Ok(Err(unavailable("the replay store lost recent writes; a new epoch began")));
                    }
                    if status == "OK" {
                        if !self.remember(bucket, claim, now, marker) {
                            return Ok(Err(unavailable(
                                "the replay store began a new epoch while this proof was being claimed",
                            )));
                        }
                        return Ok(Ok(()));
                    }
                    metrics::counter!("wimse_replay_cache_hits_total").increment(1);
                    return Ok(Err(ErrorKind::ReplayedProof.into()));
                }
                _ => match Epoch::parse(marker) {
                    Some(epoch) => {
                        let created_here = *epoch.marker == *fresh;
                        self.learn_epoch(bucket, epoch, sent);
                        if created_here {
                            // This store is new or lost its state: start every bucket's epoch
                            // now, so the recovery window is the same for all of them instead
                            // of opening again at each bucket's first use (once, by the claim
                            // that found the store empty).
                            self.ensure_epochs(connection, &fresh).await;
                        }
                    }
                    None => return Ok(Err(unavailable("unreadable epoch marker in the replay store"))),
                },
            }
        }
        Ok(Err(unavailable("the replay store's epoch keeps changing")))
    }

    /// Runs the claim script's `EVALSHA` `command`, loading the script first into a Redis that
    /// does not know it (new, restarted or flushed), as `ScriptInvocation` would.
    async fn run_script<C: ConnectionLike, T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
        connection: &mut C,
    ) -> redis::RedisResult<T> {
        match command.query_async(connection).await {
            Err(error) if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.script.prepare_invoke().load_async(connection).await?;
                command.query_async(connection).await
            }
            answer => answer,
        }
    }

    /// Runs the claim script's `EVALSHA` (made by `command`) in `route`'s next batch; a Redis
    /// that does not know the script gets it loaded and the command sent again, on its own.
    async fn run_batched<T: redis::FromRedisValue>(
        &self,
        route: &Batched,
        command: impl Fn() -> redis::Cmd,
    ) -> redis::RedisResult<T> {
        match route.send(command()).await.and_then(redis::Value::extract_error) {
            Err(error) if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.run_script(&command(), &mut route.connection().clone()).await
            }
            answer => Ok(redis::from_redis_value(answer?)?),
        }
    }

    async fn ensure_epochs(self: &Arc<Self>, connection: &mut Connection, fresh: &str) {
        for bucket in 0..BUCKETS {
            let sent = Instant::now();
            let marker: redis::RedisResult<String> =
                self.ensure_epoch.key(&self.keys[bucket].epoch).arg(fresh).invoke_async(connection).await;
            if let Ok(epoch) = marker
                && let Some(epoch) = Epoch::parse(epoch)
            {
                self.learn_epoch(bucket, epoch, sent);
            }
        }
    }

    async fn claim(self: Arc<Self>, claim: ReplayClaim, now: u64) -> Result<()> {
        self.verifier_now.fetch_max(now, Ordering::Relaxed);
        if claim.expires_at().saturating_sub(now) > self.settings.proof_window.as_secs() {
            return Err(unavailable(format!(
                "the proof would be claimed for {} s, longer than the replay store's proof window ({} s): raise RedisReplayStore::proof_window to the verifiers' longest proof lifetime plus twice their leeway",
                claim.expires_at().saturating_sub(now),
                self.settings.proof_window.as_secs()
            )));
        }
        let bucket = (claim.key() >> 120) as usize % BUCKETS;
        let deadline = Instant::now() + self.settings.timeout;
        let outcome = tokio::time::timeout_at(deadline, Inner::start_joining(&self)).await;
        let failure = match outcome {
            Ok(Ok(joined)) if Instant::now() < joined => {
                // Never open: a replica the others cannot see yet must not claim.
                return Err(unavailable(
                    "redis: this replica is joining the replay store (RedisReplayStore::join at start waits for it)",
                ));
            }
            Ok(Ok(_)) => {
                self.watch_heartbeat();
                let attempt = async {
                    let mut connection = self.connection().await?;
                    self.run(&mut connection, bucket, &claim, now).await
                };
                match tokio::time::timeout_at(deadline, attempt).await {
                    Ok(Ok(answer)) => return answer,
                    Ok(Err(error)) => format!("redis: {error}"),
                    Err(_) => format!("redis: no answer within {:?}", self.settings.timeout),
                }
            }
            // Redis could not be reached to register (FailOpen applies, as to any unreachable
            // Redis); the registration goes on in its own task.
            Ok(Err(error)) => error.detail().unwrap_or("redis: registering failed").to_owned(),
            Err(_) => format!("redis: registering took longer than {:?}", self.settings.timeout),
        };
        self.forget_connection();
        match self.settings.when_unavailable {
            WhenUnavailable::FailClosed => Err(unavailable(failure)),
            WhenUnavailable::FailOpen => {
                tracing::warn!(error = %failure, "wimse: replay store unavailable; accepting without a replay check");
                Ok(())
            }
        }
    }
}

/// `call`, failed as an I/O error when Redis does not answer within `timeout` (the connections
/// have no response timeout of their own: a claim's deadline covers the claim as a whole).
async fn bounded<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "no answer in time"))))
}

/// A claim's time to live in milliseconds, at least a second: Redis's own clock never decides
/// when a claim expires.
fn ttl_ms(expires_at: u64, now: u64) -> u64 {
    expires_at.saturating_sub(now).max(1).saturating_mul(1000)
}

/// Re-seeds `bucket` into the epoch `marker`, retried every heartbeat until it works, the epoch
/// changes, or the store is dropped.
async fn reseed_bucket(store: Weak<Inner>, bucket: usize, marker: String) {
    loop {
        let Some(inner) = store.upgrade() else { return };
        match inner.reseed_once(bucket, &marker).await {
            Ok(done) => {
                if let Ok(mut state) = inner.bucket(bucket)
                    && state.epoch.as_ref().is_some_and(|e| *e.marker == *marker)
                {
                    state.reseeding = false;
                    state.reseeded = done == Some(true);
                    state.recompute(&inner.replica, inner.settings.proof_window);
                }
                return;
            }
            Err(error) => tracing::debug!(bucket, %error, "wimse: re-seeding failed; retrying"),
        }
        drop(inner);
        tokio::time::sleep(HEARTBEAT).await;
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
            inner.forget_connection();
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

#[cfg(test)]
mod tests {
    use redis::Value;

    use super::*;

    #[test]
    fn slots_are_redis_clusters() {
        // The CRC16 check value, and slots Redis itself gives (`CLUSTER KEYSLOT {0}` …).
        assert_eq!(key_slot(b"123456789"), 0x31c3);
        assert_eq!(bucket_slot(0), 13_907);
        assert_eq!(bucket_slot(1), 9_842);
        assert_eq!(bucket_slot(15), 4_178);
    }

    #[test]
    fn claim_keys_are_the_prefix_bucket_and_digest_in_fixed_width_hex() {
        // Replicas of different releases share one store: a claim's key must not change.
        let keys = BucketKeys::new("wimse:replay:", 7);
        assert_eq!(keys.epoch, "wimse:replay:{7}:epoch");
        assert_eq!(keys.seq, "wimse:replay:{7}:seq");
        assert_eq!(keys.members, "wimse:replay:{7}:members");
        assert_eq!(keys.reseeded, "wimse:replay:{7}:reseeded");
        for digest in [0, 1, 0xabc, u128::MAX, 1 << 127, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210] {
            assert_eq!(keys.claim(digest), format!("wimse:replay:{{7}}:{digest:032x}").into_bytes());
        }
        assert_eq!(BucketKeys::new("", 15).claim(0x10), b"{15}:00000000000000000000000000000010");
    }

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn cluster_slots_are_read_and_unusable_hosts_refused() {
        let ranges = vec![
            Value::Array(vec![Value::Int(0), Value::Int(5460), node("127.0.0.1", 7000), node("127.0.0.1", 7003)]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node("10.0.0.2", 7001)]),
        ];
        assert_eq!(
            slot_masters(&ranges),
            Some(vec![(0, 5460, "127.0.0.1".to_owned(), 7000), (5461, 16383, "10.0.0.2".to_owned(), 7001)])
        );
        for host in ["", "?"] {
            let ranges = vec![Value::Array(vec![Value::Int(0), Value::Int(16383), node(host, 7000)])];
            assert_eq!(slot_masters(&ranges), None, "host {host:?}");
        }
        let malformed = [
            vec![Value::Int(3)],
            vec![Value::Array(vec![Value::Int(0), Value::Int(16383)])],
            vec![Value::Array(vec![Value::Int(-1), Value::Int(16383), node("h", 1)])],
            vec![Value::Array(vec![Value::Int(0), Value::Int(16383), node("h", 70_000)])],
        ];
        for ranges in malformed {
            assert_eq!(slot_masters(&ranges), None, "{ranges:?}");
        }
    }
}
