//! The shared replay store against a real `redis-server` and a real three-node Redis Cluster on
//! loopback, started by the tests (skipped loudly without `redis-server`, unless
//! `WIMSE_REQUIRE_REDIS=1`).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use wimse_core::prelude::*;
use wimse_core::replay::{RedisReplayStore, WhenUnavailable};
use wimse_testkit::servers::{RedisCluster, RedisServer};
use wimse_testkit::{ALLOWED, Deployment, now};

const ORIGIN: &str = "https://payments.example";
const PATH: &str = "/charge";

/// A caller, its proofs at chosen times, and replicas sharing one clock.
struct Scenario {
    deployment: Deployment,
    credentials: Credentials,
    clock: Arc<FixedClock>,
}

impl Scenario {
    fn new() -> Self {
        let deployment = Deployment::new();
        let credentials = deployment.credentials(ALLOWED, false, 0);
        Self { deployment, credentials, clock: Arc::new(FixedClock::new(now())) }
    }

    fn replica(&self, store: RedisReplayStore) -> Verifier {
        let config = VerifierConfig::new().origin(ORIGIN);
        Verifier::new(self.deployment.trust(), config).expect("verifier").clock(self.clock.clone()).replay_store(store)
    }

    /// A request with a fresh WPT made at the shared clock's time.
    fn request(&self) -> HeaderMap {
        let now = self.clock.now();
        let wpt = WptBuilder::new(self.credentials.key(), self.credentials.wit(), &format!("{ORIGIN}{PATH}"))
            .sign(now)
            .expect("wpt");
        let mut headers = HeaderMap::new();
        headers.insert("workload-identity-token", HeaderValue::from_str(self.credentials.wit()).expect("wit"));
        headers.insert("authorization", HeaderValue::from_str(&format!("WPT {wpt}")).expect("wpt"));
        headers
    }

    /// Past the recovery window of a new epoch: the default WPT lifetime bound plus leeway.
    fn pass_recovery_window(&self) {
        self.clock.advance(331);
    }
}

/// Two stores (replicas) registered and past their join wait.
async fn joined_pair(store: impl Fn() -> RedisReplayStore) -> (RedisReplayStore, RedisReplayStore) {
    let (a, b) = (store(), store());
    let joined = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if a.join().await.is_ok() && b.join().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    joined.await.expect("the replicas join the store");
    (a, b)
}

async fn verify(verifier: &Verifier, headers: &HeaderMap) -> Result<VerifiedCaller, Error> {
    verifier.verify(&RequestView::new(PATH, headers)).await
}

fn is_new_epoch(result: &Result<VerifiedCaller, Error>) -> bool {
    result.as_ref().is_err_and(|e| {
        e.kind() == &ErrorKind::ReplayCacheUnavailable && e.detail().is_some_and(|d| d.contains("epoch"))
    })
}

fn kind(result: Result<VerifiedCaller, Error>) -> ErrorKind {
    result.expect_err("refused").into_kind()
}

/// Retries (bounded) while the store is unreachable: a cluster that was just re-formed takes a
/// moment to answer every slot.
async fn verify_when_reachable(verifier: &Verifier, headers: &HeaderMap) -> Result<VerifiedCaller, Error> {
    for _ in 0..50 {
        let result = verify(verifier, headers).await;
        let unreachable = result.as_ref().is_err_and(|e| {
            e.kind() == &ErrorKind::ReplayCacheUnavailable && e.detail().is_some_and(|d| d.starts_with("redis"))
        });
        if !unreachable {
            return result;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    verify(verifier, headers).await
}

/// Two replicas on one store: the first claim starts an epoch (older proofs are refused), then
/// each proof is accepted exactly once across both; after the store loses everything, a proof
/// accepted before the loss is still refused, and fresh proofs work again once the window passes.
async fn exactly_once_across_a_loss(s: &Scenario, a: &Verifier, b: &Verifier, lose_everything: impl FnOnce()) {
    // A brand-new store cannot tell it is new: proofs that could predate it are refused.
    assert!(is_new_epoch(&verify_when_reachable(a, &s.request()).await));
    s.pass_recovery_window();

    let proof = s.request();
    verify(a, &proof).await.expect("accepted by replica A");
    assert_eq!(kind(verify(b, &proof).await), ErrorKind::ReplayedProof, "replayed to replica B");
    assert_eq!(kind(verify(a, &proof).await), ErrorKind::ReplayedProof, "replayed to replica A");
    let second = s.request();
    verify(b, &second).await.expect("a fresh proof on replica B");

    lose_everything();
    // The proofs accepted before the loss are not accepted again, on either replica: refused
    // as possibly predating the new epoch, or, once the replicas re-seeded it, as replays.
    let refused = |result: Result<VerifiedCaller, Error>, what: &str| {
        assert!(is_new_epoch(&result) || kind(result) == ErrorKind::ReplayedProof, "{what}");
    };
    refused(verify_when_reachable(b, &proof).await, "replay after the store lost its state");
    refused(verify_when_reachable(a, &proof).await, "the same on the other replica");
    refused(verify(a, &second).await, "the other replica's proof");
    // Re-seeded within seconds: replays are then named as such.
    let mut named = false;
    for _ in 0..50 {
        if kind(verify(a, &proof).await) == ErrorKind::ReplayedProof
            && kind(verify(b, &second).await) == ErrorKind::ReplayedProof
        {
            named = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(named, "the replicas re-seeded the new epoch with the claims they accepted");
    // Every bucket's new epoch is learned by a heartbeat within a second or two; only then is the
    // shared clock moved on (an epoch learned later would start at the moved clock).
    tokio::time::sleep(Duration::from_secs(3)).await;

    s.pass_recovery_window();
    let fresh = s.request();
    verify(b, &fresh).await.expect("a proof made after the loss");
    assert_eq!(kind(verify(a, &fresh).await), ErrorKind::ReplayedProof);
}

#[tokio::test]
async fn replicas_on_one_redis_accept_each_proof_once_even_across_a_restart() {
    let Some(mut redis) = RedisServer::start() else { return };
    let s = Scenario::new();
    let (a, b) = joined_pair(|| RedisReplayStore::new(&redis.url()).expect("store")).await;
    let (a, b) = (s.replica(a), s.replica(b));
    let url = redis.url();
    exactly_once_across_a_loss(&s, &a, &b, || redis.restart()).await;
    assert!(redis.key_count() >= 2, "claims and epoch markers live in Redis");
    drop(url);
}

/// The first claim to reach a Redis that lost everything learns the new epoch from its own
/// answer and is tried again under it. This replica's re-seeding of that epoch runs meanwhile,
/// and must not write the proof in flight (it was never accepted): a fresh proof is accepted or
/// refused as unavailable, never called a replay of itself.
#[tokio::test]
async fn a_proof_in_flight_when_redis_loses_everything_is_never_called_its_own_replay() {
    let Some(mut redis) = RedisServer::start() else { return };
    let s = Scenario::new();
    let store = RedisReplayStore::new(&redis.url()).expect("store");
    tokio::time::timeout(Duration::from_secs(60), async {
        while store.join().await.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the replica joins");
    let replica = s.replica(store);
    let _ = verify_when_reachable(&replica, &s.request()).await;
    s.pass_recovery_window();
    verify_when_reachable(&replica, &s.request()).await.expect("steady state");
    for loss in 0..5 {
        redis.restart();
        let mut accepted = false;
        for _ in 0..100 {
            match verify_when_reachable(&replica, &s.request()).await {
                Ok(_) => {
                    accepted = true;
                    break;
                }
                Err(error) => assert_eq!(error.kind(), &ErrorKind::ReplayCacheUnavailable, "loss {loss}: {error}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(accepted, "loss {loss}: fresh proofs are accepted again once re-seeded");
    }
}

#[tokio::test]
async fn a_stalled_or_stopped_redis_fails_closed_or_open_as_configured() {
    let Some(mut redis) = RedisServer::start() else { return };
    let s = Scenario::new();
    let store = RedisReplayStore::new(&redis.url()).expect("store").timeout(Duration::from_millis(300));
    let closed = s.replica(store);
    let open =
        s.replica(RedisReplayStore::new(&redis.url()).expect("store").when_unavailable(WhenUnavailable::FailOpen));
    assert!(is_new_epoch(&verify(&closed, &s.request()).await));
    s.pass_recovery_window();
    verify(&closed, &s.request()).await.expect("accepted");

    // Frozen: the claim times out (no thread is blocked; this test runs on one).
    redis.pause();
    let stalled = verify(&closed, &s.request()).await;
    assert_eq!(kind(stalled), ErrorKind::ReplayCacheUnavailable);
    redis.resume();
    verify(&closed, &s.request()).await.expect("recovers once Redis answers again");

    // Gone: fail closed (503), or open when so configured.
    redis.kill();
    let err = verify(&closed, &s.request()).await.expect_err("fails closed");
    assert_eq!(err.kind(), &ErrorKind::ReplayCacheUnavailable);
    assert_eq!(wimse_core::server::framing::Rejection::from_error(&err).status(), 503);
    verify(&open, &s.request()).await.expect("fails open");
}

#[tokio::test]
async fn replicas_on_a_redis_cluster_accept_each_proof_once_even_across_a_restart() {
    let Some(mut cluster) = RedisCluster::start() else { return };
    let s = Scenario::new();
    let store = || RedisReplayStore::cluster(cluster.urls()).expect("store").timeout(Duration::from_secs(2));
    let (a, b) = joined_pair(store).await;
    let (a, b) = (s.replica(a), s.replica(b));
    // Claims spread over the cluster's nodes (hash-tagged buckets).
    for _ in 0..3 {
        let _ = verify_when_reachable(&a, &s.request()).await;
    }
    exactly_once_across_a_loss(&s, &a, &b, || cluster.restart_all_empty()).await;
    for _ in 0..40 {
        verify(&a, &s.request()).await.expect("fresh proofs");
    }
    let holding = cluster.nodes().iter().filter(|n| n.key_count() > 0).count();
    assert!(holding >= 2, "claims land on several nodes, not one ({holding})");
}

/// A clock that follows the system clock shifted by a chosen number of seconds: proofs are made
/// and checked in real time, and a test can step past a brand-new store's recovery window.
#[derive(Debug, Default)]
struct ShiftedClock(std::sync::atomic::AtomicU64);

impl wimse_core::time::Clock for ShiftedClock {
    fn now(&self) -> u64 {
        now() + self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// With the project's defaults (60-second WPTs, a 300-second maximum lifetime and 30 seconds of
/// leeway), steady traffic on two replicas across a Redis restart that loses everything: the
/// refusals last seconds (the replicas re-seed the new epoch with the claims they accepted),
/// not the ~270 seconds until every older proof expired, and no proof is ever accepted twice,
/// however often it is replayed to either replica.
#[tokio::test]
async fn a_redis_that_loses_everything_refuses_for_seconds_and_never_twice() {
    let Some(mut redis) = RedisServer::start() else { return };
    let deployment = Deployment::new();
    let credentials = deployment.credentials(ALLOWED, false, 0);
    let clock = Arc::new(ShiftedClock::default());
    let replica = |store: RedisReplayStore| {
        let config = VerifierConfig::new().origin(ORIGIN);
        Verifier::new(deployment.trust(), config).expect("verifier").clock(clock.clone()).replay_store(store)
    };
    let (a, b) = joined_pair(|| RedisReplayStore::new(&redis.url()).expect("store")).await;
    let replicas = [replica(a), replica(b)];
    let request = || {
        let wpt = WptBuilder::new(credentials.key(), credentials.wit(), &format!("{ORIGIN}{PATH}"))
            .sign(clock.now())
            .expect("wpt");
        let mut headers = HeaderMap::new();
        headers.insert("workload-identity-token", HeaderValue::from_str(credentials.wit()).expect("wit"));
        headers.insert("authorization", HeaderValue::from_str(&format!("WPT {wpt}")).expect("wpt"));
        headers
    };
    // A brand-new store refuses proofs that could predate it: step past that once.
    let _ = verify_when_reachable(&replicas[0], &request()).await;
    clock.0.store(331, std::sync::atomic::Ordering::Relaxed);
    verify_when_reachable(&replicas[1], &request()).await.expect("steady state");

    let mut accepted: Vec<HeaderMap> = Vec::new();
    let mut twice = 0;
    let mut refused_since: Option<std::time::Instant> = None;
    let mut longest_refusal = Duration::ZERO;
    let mut restarted_at = None;
    let started = std::time::Instant::now();
    let mut round = 0usize;
    while started.elapsed() < Duration::from_secs(12) {
        round += 1;
        if restarted_at.is_none() && started.elapsed() > Duration::from_secs(3) {
            redis.restart();
            restarted_at = Some(std::time::Instant::now());
        }
        let target = &replicas[round % 2];
        let proof = request();
        match verify(target, &proof).await {
            Ok(_) => {
                if let Some(since) = refused_since.take() {
                    longest_refusal = longest_refusal.max(since.elapsed());
                }
                accepted.push(proof);
            }
            Err(error) => {
                assert_eq!(error.kind(), &ErrorKind::ReplayCacheUnavailable, "{error}");
                refused_since.get_or_insert_with(std::time::Instant::now);
            }
        }
        // Every few rounds, replay an accepted proof to the other replica.
        if round.is_multiple_of(3) && !accepted.is_empty() {
            let old = &accepted[round % accepted.len()];
            if verify(&replicas[(round + 1) % 2], old).await.is_ok() {
                twice += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(restarted_at.is_some());
    assert!(refused_since.is_none(), "the replicas accept fresh proofs again after the loss");
    assert_eq!(twice, 0, "a proof was accepted twice");
    eprintln!(
        "Redis lost everything: fresh proofs refused for {longest_refusal:?} at most; {} accepted",
        accepted.len()
    );
    assert!(longest_refusal < Duration::from_secs(5), "refused for {longest_refusal:?}");
    // Every proof accepted before the loss is still refused by both replicas.
    for proof in &accepted {
        for replica in &replicas {
            assert!(verify(replica, proof).await.is_err());
        }
    }
}

/// A replica that accepted a proof and is gone when Redis loses everything (it crashed with it)
/// can re-seed nothing: the others must not claim older proofs on its behalf. Its proof stays
/// refused (503, re-seeding impossible) on both survivors, as does every proof that could
/// predate the new epoch, until the window passes.
#[tokio::test]
async fn a_replica_gone_with_redis_blocks_reseeding() {
    let Some(mut redis) = RedisServer::start() else { return };
    let s = Scenario::new();
    let store = || RedisReplayStore::new(&redis.url()).expect("store");
    let (a, b) = joined_pair(store).await;
    let (a, b) = (s.replica(a), s.replica(b));
    let gone_store = store();
    gone_store.join().await.expect("registered");
    let gone = s.replica(gone_store.clone());
    assert!(is_new_epoch(&verify_when_reachable(&a, &s.request()).await));
    s.pass_recovery_window();
    verify(&b, &s.request()).await.expect("steady state");
    let proof = s.request();
    verify(&gone, &proof).await.expect("accepted by the replica about to go");
    drop((gone, gone_store));

    redis.restart();
    for _ in 0..20 {
        for replica in [&a, &b] {
            let result = verify_when_reachable(replica, &proof).await;
            assert!(is_new_epoch(&result), "{result:?}");
            let detail = result.unwrap_err().detail().unwrap_or_default().to_owned();
            assert!(detail.contains("epoch"), "{detail}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Past the window, fresh proofs work; the gone replica's proof has expired meanwhile.
    s.pass_recovery_window();
    verify(&a, &s.request()).await.expect("a proof made after the loss");
}

/// A Redis that comes back with an older state (a snapshot restored, the last second of an
/// `appendfsync everysec` log lost, a failover to a lagging replica) keeps its epoch markers but
/// not its recent claims: its sequences go back, the replicas see it and start a new epoch, so a
/// proof accepted after the snapshot is not accepted again.
#[tokio::test]
async fn a_redis_restored_from_an_older_snapshot_is_noticed() {
    let Some(redis) = RedisServer::start() else { return };
    let s = Scenario::new();
    let (a, b) = joined_pair(|| RedisReplayStore::new(&redis.url()).expect("store")).await;
    let (a, b) = (s.replica(a), s.replica(b));
    assert!(is_new_epoch(&verify_when_reachable(&a, &s.request()).await));
    s.pass_recovery_window();
    for _ in 0..20 {
        verify(&a, &s.request()).await.expect("steady state");
    }
    // The snapshot: every epoch marker and sequence as they are now.
    let client = redis::Client::open(redis.url()).expect("url");
    let mut connection = client.get_multiplexed_async_connection().await.expect("connection");
    let keys: Vec<String> = redis::cmd("KEYS").arg("*:epoch").query_async(&mut connection).await.unwrap();
    let seqs: Vec<String> = redis::cmd("KEYS").arg("*:seq").query_async(&mut connection).await.unwrap();
    let mut snapshot = Vec::new();
    for key in keys.iter().chain(&seqs) {
        let value: String = redis::cmd("GET").arg(key).query_async(&mut connection).await.unwrap();
        snapshot.push((key.clone(), value));
    }
    // Proofs accepted after it, on both replicas.
    let mut after = Vec::new();
    for i in 0..20 {
        let proof = s.request();
        verify(if i % 2 == 0 { &a } else { &b }, &proof).await.expect("accepted");
        after.push(proof);
    }
    // Both replicas' heartbeats read the sequences once more (a replica that never saw the
    // higher sequence of a bucket cannot tell, until one that did sees the loss: within a
    // heartbeat; see the module docs).
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The store comes back as the snapshot had it: same markers, lower sequences, none of the
    // later claims.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut connection).await.unwrap();
    for (key, value) in &snapshot {
        let _: () = redis::cmd("SET").arg(key).arg(value).query_async(&mut connection).await.unwrap();
    }
    // Every later proof is refused by both replicas, whichever sees the loss first.
    for proof in &after {
        for replica in [&a, &b] {
            let result = verify(replica, proof).await;
            assert!(is_new_epoch(&result) || kind(result) == ErrorKind::ReplayedProof, "a replay after the restore");
        }
    }
}

/// A Redis that stalls under a flood of claims (frozen behind a counting proxy): the claims are
/// refused in time (503), and after the first ones fail, the rest do not each open a connection
/// of their own: one connection attempt at a time per store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_gets_one_connection_attempt_at_a_time_not_one_per_claim() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use wimse_core::replay::{ReplayClaim, ReplayStore};
    let Some(redis) = RedisServer::start() else { return };
    let upstream = format!("127.0.0.1:{}", redis.port());
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", proxy.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = proxy.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    let store = RedisReplayStore::new(&url).unwrap().timeout(Duration::from_millis(300));
    store.join().await.expect("joined through the proxy");
    let at = now();
    let claim = |i: usize| {
        let store = store.clone();
        tokio::spawn(async move {
            // Made after the store's new epoch began, so only Redis decides.
            store
                .claim(
                    &ReplayClaim::signature_nonce(&format!("flood-{}-{at}-{i}", std::process::id()), at + 60, at + 1),
                    at,
                )
                .await
        })
    };
    let _ = claim(0).await.unwrap();
    let before = accepted.load(Ordering::SeqCst);
    redis.pause();
    for wave in 0..2 {
        // Spread over the timeout, so the claims' deadlines pass one after another: each
        // waiting claim that gave up must not leave the next one to start an attempt of its own.
        let mut claims = Vec::new();
        for i in 0..100 {
            claims.push(claim(1 + wave * 100 + i));
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        for claim in claims {
            assert_eq!(claim.await.unwrap().unwrap_err().kind(), &ErrorKind::ReplayCacheUnavailable);
        }
    }
    redis.resume();
    let opened = accepted.load(Ordering::SeqCst) - before;
    // An attempt lasts the store's timeout whichever claims wait for it, so about one attempt
    // (two sockets with its retry) per 300 ms, plus the heartbeat's; one per claim would be 200.
    eprintln!("{opened} connections opened for 200 claims against a stalled Redis");
    assert!(opened <= 30, "{opened} connections opened for 200 claims against a stalled Redis");
}

/// Claims go straight to their bucket's node. When the cluster moves a bucket's slot (with its
/// keys) to another node, the old node answers with a redirect: the claim follows it through
/// the cluster client, a proof claimed before the move is still refused after it, and fresh
/// proofs in that bucket are claimed once each on the new node.
#[tokio::test]
async fn a_bucket_moved_to_another_node_still_accepts_each_proof_once() {
    use wimse_core::replay::{ReplayClaim, ReplayStore};
    let Some(cluster) = RedisCluster::start() else { return };
    let store = RedisReplayStore::cluster(cluster.urls()).expect("store").timeout(Duration::from_secs(2));
    store.join().await.expect("joined");
    let claim = |claim: ReplayClaim, now: u64| store.claim(&claim, now);
    // The store's first claim starts its epochs; proofs made afterwards are claimed as usual.
    let start = now() + 100;
    let _ = claim(ReplayClaim::signature_nonce("first", start + 60, start), start).await;
    let t = start + 10;
    // Proofs of bucket 0 (the top bits of their key), whose slot (13 907) the third node serves.
    let mut bucket_0 = (0..)
        .map(|i| ReplayClaim::signature_nonce(&format!("nonce-{i}"), t + 60, t))
        .filter(|c| (c.key() >> 120) % 16 == 0);
    let (before, after) = (bucket_0.next().expect("claim"), bucket_0.next().expect("claim"));
    claim(before, t).await.expect("claimed before the move");

    let (from, to) = (&cluster.nodes()[2], &cluster.nodes()[0]);
    move_slot(from, to, &cluster, 13_907);

    let replayed = claim(before, t).await.expect_err("a replay after the move");
    assert_eq!(*replayed.kind(), ErrorKind::ReplayedProof, "{replayed}");
    claim(after, t).await.expect("a fresh proof after the move");
    let replayed = claim(after, t).await.expect_err("its replay");
    assert_eq!(*replayed.kind(), ErrorKind::ReplayedProof, "{replayed}");
    assert!(to.key_count() > 0 && from.command(&["CLUSTER", "COUNTKEYSINSLOT", "13907"]) == "int(0)");
}

/// Moves `slot` and its keys from one node to another, as `redis-cli --cluster reshard` does.
fn move_slot(from: &RedisServer, to: &RedisServer, cluster: &RedisCluster, slot: u16) {
    let id = |node: &RedisServer| node_text(node, &["CLUSTER", "MYID"]);
    let (from_id, to_id, slot) = (id(from), id(to), slot.to_string());
    to.command(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
    from.command(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
    let keys = redis_keys(from, &slot);
    assert!(!keys.is_empty(), "the bucket's keys are on the node it moves from");
    let port = to.port().to_string();
    let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
    migrate.extend(keys.iter().map(String::as_str));
    from.command(&migrate);
    for node in cluster.nodes() {
        node.command(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
    }
}

fn node_text(node: &RedisServer, args: &[&str]) -> String {
    let client = redis::Client::open(node.url()).expect("url");
    let mut connection = client.get_connection_with_timeout(Duration::from_secs(5)).expect("connection");
    let mut cmd = redis::cmd(args[0]);
    cmd.arg(&args[1..]);
    cmd.query(&mut connection).expect("command")
}

fn redis_keys(node: &RedisServer, slot: &str) -> Vec<String> {
    let client = redis::Client::open(node.url()).expect("url");
    let mut connection = client.get_connection_with_timeout(Duration::from_secs(5)).expect("connection");
    redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(1000).query(&mut connection).expect("keys")
}

/// Two stores, on one Redis and on a cluster, joined, with a first claim made (it starts their
/// epochs): proofs made at the time returned are claimed as usual.
async fn joined_stores(redis: &RedisServer, cluster: &RedisCluster) -> (Vec<RedisReplayStore>, u64) {
    use wimse_core::replay::{ReplayClaim, ReplayStore};
    let single = RedisReplayStore::new(&redis.url()).expect("store").timeout(Duration::from_secs(2));
    let clustered = RedisReplayStore::cluster(cluster.urls()).expect("store").timeout(Duration::from_secs(2));
    let start = now() + 100;
    for store in [&single, &clustered] {
        store.join().await.expect("joined");
        let _ = store.claim(&ReplayClaim::signature_nonce("first", start + 60, start), start).await;
    }
    (vec![single, clustered], start + 10)
}

/// Claims each spawned at once (so ready together: they share batches), answered in order.
async fn claim_all(
    store: &RedisReplayStore,
    claims: impl IntoIterator<Item = wimse_core::replay::ReplayClaim>,
    now: u64,
) -> Vec<Result<(), ErrorKind>> {
    use wimse_core::replay::ReplayStore;
    let tasks: Vec<_> = claims
        .into_iter()
        .map(|claim| {
            let store = store.clone();
            tokio::spawn(async move { store.claim(&claim, now).await.map_err(|e| e.into_kind()) })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("claim task"));
    }
    answers
}

fn nonce(wave: &str, i: usize, t: u64) -> wimse_core::replay::ReplayClaim {
    wimse_core::replay::ReplayClaim::signature_nonce(&format!("{wave}-{i}"), t + 60, t)
}

/// Claims that are ready together are sent to Redis as one batch, on one Redis and on the
/// cluster's nodes: each still gets its own answer (a proof and its copy claimed in the same
/// batch: one accepted, one replayed), and a script Redis forgot is loaded again for every
/// claim of a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_sent_together_are_each_answered_as_if_alone() {
    let Some(redis) = RedisServer::start() else { return };
    let Some(cluster) = RedisCluster::start() else { return };
    let (stores, t) = joined_stores(&redis, &cluster).await;
    let forget_scripts: [&dyn Fn(); 2] = [&|| drop(redis.command(&["SCRIPT", "FLUSH"])), &|| {
        cluster.nodes().iter().for_each(|node| drop(node.command(&["SCRIPT", "FLUSH"])))
    }];
    for (store, forget_scripts) in stores.iter().zip(forget_scripts) {
        // 48 proofs, each claimed twice at once: one of each pair accepted, one replayed.
        let answers = claim_all(store, (0..48).flat_map(|i| [nonce("twice", i, t), nonce("twice", i, t)]), t).await;
        for (i, pair) in answers.chunks(2).enumerate() {
            let accepted = pair.iter().filter(|a| a.is_ok()).count();
            let replayed = pair.iter().filter(|a| **a == Err(ErrorKind::ReplayedProof)).count();
            assert_eq!((accepted, replayed), (1, 1), "proof {i}: {pair:?}");
        }

        // Redis forgot the claim script (a restart with persistence, `SCRIPT FLUSH`): every
        // claim of the next batch gets it loaded again and is answered.
        forget_scripts();
        let answers = claim_all(store, (0..48).map(|i| nonce("reloaded", i, t)), t).await;
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    }
}

/// A claim whose request went away (its future dropped) after it joined a batch does not take
/// the batch with it, even the claim that leads the batch: dropped while it waits for the
/// others to join, the batch is still sent (the dropped claims reached Redis all the same:
/// their proofs are spent); dropped while the batch is on its way, the claims that stayed get
/// their answers. On one thread, so the dropped claims find the thread's connection made and
/// join a batch on their first poll.
#[tokio::test]
async fn a_claim_dropped_after_joining_a_batch_leaves_the_others_answered() {
    use std::future::Future;
    use wimse_core::replay::ReplayStore;
    let Some(redis) = RedisServer::start() else { return };
    let Some(cluster) = RedisCluster::start() else { return };
    let (stores, t) = joined_stores(&redis, &cluster).await;
    for store in &stores {
        // Every bucket's epoch known first: a claim in a bucket whose epoch this replica has
        // not learned yet takes a second round trip, which a dropped claim never makes.
        let warm = claim_all(store, (0..128).map(|i| nonce("warm", i, t)), t).await;
        assert!(warm.iter().all(Result::is_ok), "{warm:?}");
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        for i in 0..24 {
            let mut dropped = std::pin::pin!(store.claim(&nonce("dropped", i, t), t));
            assert!(dropped.as_mut().poll(&mut context).is_pending(), "a claim waits for Redis");
        }
        let kept = claim_all(store, (0..24).map(|i| nonce("kept", i, t)), t).await;
        assert!(kept.iter().all(Result::is_ok), "{kept:?}");
        let again = claim_all(store, (0..24).map(|i| nonce("dropped", i, t)), t).await;
        assert!(again.iter().all(|a| *a == Err(ErrorKind::ReplayedProof)), "{again:?}");

        // The leader polled until its batch is on its way (a first poll yields to the tasks
        // ready now, which join the batch; the second sends it), then dropped.
        let mut leader = Box::pin(store.claim(&nonce("leader", 0, t), t));
        assert!(leader.as_mut().poll(&mut context).is_pending(), "the leader waits for the others");
        let followers: Vec<_> = (0..23)
            .map(|i| {
                let (store, claim) = (store.clone(), nonce("follower", i, t));
                tokio::spawn(async move { store.claim(&claim, t).await.map_err(|e| e.into_kind()) })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(leader.as_mut().poll(&mut context).is_pending(), "the batch is on its way");
        drop(leader);
        for follower in followers {
            assert_eq!(follower.await.expect("claim task"), Ok(()), "a follower of a dropped leader is answered");
        }
    }
}
