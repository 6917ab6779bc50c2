//! The scale harness: how the identity server's costs grow with the number of workloads and
//! verifiers it serves. The identity server runs in a child process (this binary, `serve`
//! mode, on loopback), so its CPU time and memory are its own; simulated workloads and
//! verifiers are tasks of this process, not processes.
//!
//! For each size N (default 100, 1 000 and 10 000; `--sizes`; `--only` picks scenarios):
//! - **issuance**: N workloads obtain WITs (`POST /v1/wit`, distinct keys and identifiers,
//!   in turn until at least 5 000 issuances), 64 at a time: issuances per second at saturation,
//!   the server's CPU per issuance, p99 latency, its memory afterwards;
//! - **issuance-pg**, **issuance-pg-2**: the same on PostgreSQL (sealed keys, one audit row per
//!   issuance) through one and two replicas of one database, when PostgreSQL is installed
//!   (CPU summed over the replicas, not counting PostgreSQL's own);
//! - **exchange**: N workloads' platform tokens (a CI system's or a cluster's JWTs) exchanged
//!   for WITs (RFC 8693 at `/v1/token`), at least 5 000, 64 at a time;
//! - **txn-token**: 64 edge workloads (WIT + WPT on each request) exchange the access tokens of
//!   N users for Txn-Tokens, at least 5 000;
//! - **replay-redis**, **replay-cluster**: N workloads' proofs (at least 20 000) claimed through
//!   `RedisReplayStore` in one Redis and in a Cluster of three, 64 at a time, when
//!   `redis-server` is installed: claims per second, the Redis servers' CPU per claim (summed
//!   over the nodes) and memory;
//! - **agent-streams**: a node agent (its own process) holding N Workload API streams, whose
//!   eight-second WIT it renews and pushes to every stream: its memory per stream, updates
//!   delivered per second, its CPU per update, and how long one renewal takes to reach the
//!   streams (99th percentile after the first);
//! - **outage**: N workloads (`IssuerCredentials` in this process) renewing one-minute WITs,
//!   spread over their renewal period, through an 8 s identity-server outage: WIT requests per
//!   second during it (the rate column) and the busiest second after it against the steady
//!   rate before (the peak column);
//! - **bundles**: N verifiers (`wimse_reqwest::BundleSource`) follow the SPIFFE bundle for 12 s
//!   with a 2 s refresh hint while keys rotate every 5 s: the server's CPU per verifier and
//!   second, whole fetches against 304s, and the busiest second against the mean (a herd shows
//!   as a high ratio).
//!
//! The memory per workload (outage), verifier (bundles) and stream (agent-streams) is the
//! harness's live heap (counted by its allocator), or the agent's resident memory, per unit.
//! Prints a Markdown table and the same rows as CSV (`--csv FILE` writes it). Bounded in time
//! (about two minutes per size on 2 cores) and loopback only.
//!
//! Run: `cargo run --release -p wimse-examples --bin scale -- --sizes 100,1000,10000`

mod agent;
mod server;
mod tokens;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use wimse_core::jose::{Algorithm, SigningKey};
use wimse_core::protocol::trust::{TrustHandle, TrustStore};

type Error = Box<dyn std::error::Error + Send + Sync>;

const DOMAIN: &str = "spiffe://prod.example";
const SECRET: &str = "a-scale-harness-dev-secret";
/// Counts the harness's live heap, for the memory each simulated workload, verifier or stream
/// holds.
#[global_allocator]
static HEAP: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// `bytes` shared by `count` units, KiB each.
fn kib_per(bytes: usize, count: usize) -> f64 {
    bytes as f64 / 1024.0 / count.max(1) as f64
}

/// The fewest issuances measured per size.
const MIN_OPERATIONS: usize = 5000;
/// The fewest replay claims measured per size.
const REPLAY_OPERATIONS: usize = 20000;

/// One measured row.
#[derive(Debug, Clone)]
struct Row {
    scenario: &'static str,
    size: usize,
    /// Operations per second at saturation (issuances), or requests per second (bundles).
    rate: f64,
    /// The server's CPU time per operation (per issuance; per verifier-second), microseconds.
    cpu_us: f64,
    /// p99 latency (issuance), milliseconds; the busiest second over the mean (bundles).
    p99_or_peak: f64,
    /// The server's resident memory at the end, MiB.
    rss_mib: f64,
    /// Bundles: the share of refreshes answered 304.
    not_modified: f64,
    /// Memory per workload, verifier or stream (the live heap of the harness's tasks, or the
    /// agent's resident memory, divided by N), KiB.
    per_unit_kib: f64,
}

impl Row {
    fn new(scenario: &'static str, size: usize) -> Self {
        Self {
            scenario,
            size,
            rate: 0.0,
            cpu_us: 0.0,
            p99_or_peak: 0.0,
            rss_mib: 0.0,
            not_modified: 0.0,
            per_unit_kib: 0.0,
        }
    }

    /// A row of `operations` run at saturation (see [`saturate`]): their rate, the servers'
    /// `cpu` per operation, the p99 of their latencies, and `rss_mib`.
    fn saturated(
        scenario: &'static str,
        size: usize,
        operations: usize,
        (latencies, elapsed): (Vec<Duration>, Duration),
        cpu: Duration,
        rss_mib: f64,
    ) -> Self {
        Self {
            rate: operations as f64 / elapsed.as_secs_f64(),
            cpu_us: cpu.as_secs_f64() * 1e6 / operations as f64,
            p99_or_peak: p99_ms(&latencies),
            rss_mib,
            ..Self::new(scenario, size)
        }
    }
}

/// Runs `operations` calls of `operation(n)` (n from 0), `workers` at a time: their latencies
/// (sorted) and the time all of them took.
async fn saturate<F, Fut>(operations: usize, workers: usize, operation: F) -> Result<(Vec<Duration>, Duration), Error>
where
    F: Fn(usize, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), Error>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..workers.max(1) {
        let (next, operation) = (next.clone(), operation.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= operations {
                    return Ok::<_, Error>(latencies);
                }
                let sent = Instant::now();
                operation(worker, n).await?;
                latencies.push(sent.elapsed());
            }
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    latencies.sort();
    Ok((latencies, started.elapsed()))
}

/// The 99th percentile of sorted `latencies`, milliseconds.
fn p99_ms(latencies: &[Duration]) -> f64 {
    latencies
        .get((latencies.len() * 99 / 100).min(latencies.len().saturating_sub(1)))
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

async fn issuance(size: usize) -> Result<Row, Error> {
    let server = server::ServerProcess::start(json!({"refresh_hint": 300, "rotation_period": 86400}))?;
    issue_through("issuance", size, &[server]).await
}

/// Issuance on PostgreSQL (sealed keys, an audit row per issuance) through `replicas` identity
/// servers on one database; `None` without PostgreSQL.
async fn issuance_on_postgres(size: usize, replicas: usize, postgres: &str) -> Result<Row, Error> {
    let kek = "Y2FwYWNpdHktaGFybmVzcy1rZXktZW5jcnlwdGlvbiE=";
    let settings = json!({"refresh_hint": 300, "rotation_period": 86400,
                          "postgres": {"url": postgres, "timeout_ms": 5000, "kek_env": "SCALE_KEK"}});
    let servers = (0..replicas)
        .map(|_| server::ServerProcess::start_with(settings.clone(), &[("SCALE_KEK", kek)]))
        .collect::<Result<Vec<_>, _>>()?;
    issue_through(if replicas == 1 { "issuance-pg" } else { "issuance-pg-2" }, size, &servers).await
}

/// N workloads obtain WITs in turn (at least [`MIN_OPERATIONS`]), 64 at a time, spread over
/// `servers`; their CPU time (summed) per issuance.
async fn issue_through(scenario: &'static str, size: usize, servers: &[server::ServerProcess]) -> Result<Row, Error> {
    let client = reqwest::Client::new();
    let keys: Vec<SigningKey> = (0..size).map(|_| SigningKey::generate(Algorithm::ES256)).collect::<Result<_, _>>()?;
    let keys = Arc::new(keys);
    let bases: Arc<Vec<String>> = Arc::new(servers.iter().map(|s| s.base.clone()).collect());
    // Enough operations to measure CPU time in 10 ms ticks: every workload at least once.
    let operations = size.max(MIN_OPERATIONS);
    let cpu = || servers.iter().map(server::ServerProcess::cpu_time).sum::<Duration>();
    let cpu_before = cpu();
    let measured = saturate(operations, 64.min(size), move |worker, n| {
        let (client, keys, bases) = (client.clone(), keys.clone(), bases.clone());
        async move {
            // Workload `i`, renewing again once every workload has had its turn.
            let i = n % keys.len();
            let body = json!({"sub": format!("{DOMAIN}/ns/w{i}"), "jwk": keys[i].public_jwk()});
            let base = &bases[worker % bases.len()];
            let response = client.post(format!("{base}/v1/wit")).bearer_auth(SECRET).json(&body).send().await?;
            if response.status() != 200 {
                return Err(format!("issuance answered {}", response.status()).into());
            }
            response.bytes().await?;
            Ok(())
        }
    })
    .await?;
    let rss = servers.iter().map(server::ServerProcess::rss_mib).sum::<f64>() / servers.len() as f64;
    Ok(Row::saturated(scenario, size, operations, measured, cpu().saturating_sub(cpu_before), rss))
}

/// N workloads' proofs claimed in Redis (`RedisReplayStore` on one node, or on a Cluster), 64 at
/// a time: claims per second and the Redis servers' CPU (summed over the nodes) per claim.
async fn replay_on_redis(
    scenario: &'static str,
    size: usize,
    pids: &[u32],
    store: Arc<wimse_core::replay::RedisReplayStore>,
) -> Result<Row, Error> {
    use wimse_core::replay::{ReplayClaim, ReplayStore as _};
    use wimse_core::time::Clock as _;
    let senders: Arc<Vec<wimse_core::id::WorkloadId>> =
        Arc::new((0..size).map(|i| format!("{DOMAIN}/ns/w{i}").parse()).collect::<Result<_, _>>()?);
    let operations = size.max(REPLAY_OPERATIONS);
    let cpu = || pids.iter().map(|pid| server::cpu_time_of(*pid)).sum::<Duration>();
    let cpu_before = cpu();
    let measured = saturate(operations, 64, move |_, n| {
        let (store, senders) = (store.clone(), senders.clone());
        async move {
            let now = wimse_core::time::SystemClock.now();
            // Proofs signed after the store started (a store refuses those that could
            // predate its epoch, which each bucket starts at its first claim).
            let claim = ReplayClaim::wpt(&senders[n % senders.len()], &format!("jti-{size}-{n}"), now + 300, now + 1);
            match store.claim(&claim, now).into_ready() {
                Ok(result) => result?,
                Err(pending) => pending.await?,
            }
            Ok(())
        }
    })
    .await?;
    let rss = pids.iter().map(|pid| server::rss_mib_of(*pid)).sum();
    Ok(Row::saturated(scenario, size, operations, measured, cpu().saturating_sub(cpu_before), rss))
}

/// N workloads renewing six-second WITs (`IssuerCredentials`, all in this process, so they
/// share its outage gate) through an 8 s outage of the identity server (`/v1/wit` answering
/// 503): WIT requests per second during it, and the busiest second after the recovery against
/// the steady rate before it.
async fn outage(size: usize) -> Result<Row, Error> {
    /// The WITs' lifetime: renewed every 30 to 40 s, so those that fall due during an 8 s
    /// outage are still valid at the recovery, as one-hour WITs would be after a longer one.
    const LIFETIME: u64 = 60;
    let server = server::ServerProcess::start(json!({"refresh_hint": 300, "rotation_period": 86400,
        "clients": [{"name": "fleet", "dev_secret": SECRET, "allowed_prefixes": [format!("{DOMAIN}/ns")], "max_lifetime": LIFETIME}]}))?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let heap_before = HEAP.allocated();
    let mut fleet = Vec::new();
    let starting = Instant::now();
    for i in 0..size {
        let credentials = wimse_reqwest::IssuerCredentials::builder(
            &server.base,
            format!("{DOMAIN}/ns/w{i}"),
            wimse_reqwest::Bootstrap::Token(SECRET.into()),
        )
        .client(client.clone())
        .retry_interval(Duration::from_secs(1))
        .key_check_interval(None)
        .connect()
        .await?;
        let renewal = credentials.spawn_renewal();
        fleet.push((credentials, renewal));
        // Workloads start over one renewal period, as a fleet's renewals are spread over
        // their WITs' lifetime (started together, they would renew in waves).
        tokio::time::sleep_until(
            (starting + Duration::from_secs(LIFETIME * 7 / 12).mul_f64((i + 1) as f64 / size as f64)).into(),
        )
        .await;
    }
    let per_workload = kib_per(HEAP.allocated().saturating_sub(heap_before), size);
    // Steady renewals first, then the outage, then the recovery.
    let steady_from = server.counts().await?.wit_per_second.len();
    tokio::time::sleep(Duration::from_secs(8)).await;
    server.set_down(true).await?;
    let down_from = server.counts().await?.wit_per_second.len();
    tokio::time::sleep(Duration::from_secs(8)).await;
    server.set_down(false).await?;
    let up_from = server.counts().await?.wit_per_second.len();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let per_second = server.counts().await?.wit_per_second;
    if std::env::var_os("SCALE_DEBUG").is_some() {
        eprintln!("outage {size}: steady from {steady_from}, down {down_from}, up {up_from}: {per_second:?}");
    }
    for (_, renewal) in fleet {
        renewal.abort();
    }
    let window =
        |from: usize, to: usize| -> Vec<u64> { per_second.get(from..to.min(per_second.len())).unwrap_or(&[]).to_vec() };
    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    let steady = mean(&window(steady_from, down_from.saturating_sub(1)));
    let during = mean(&window(down_from + 1, up_from.saturating_sub(1)));
    let after = window(up_from, up_from + 10);
    let peak = after.iter().copied().max().unwrap_or(0) as f64;
    Ok(Row {
        rate: during,
        p99_or_peak: if steady > 0.0 { peak / steady } else { 0.0 },
        rss_mib: server.rss_mib(),
        per_unit_kib: per_workload,
        ..Row::new("outage", size)
    })
}

async fn bundles(size: usize) -> Result<Row, Error> {
    const SECONDS: u64 = 12;
    let server = server::ServerProcess::start(json!({"refresh_hint": 2, "rotation_period": 5}))?;
    let domain: wimse_core::id::TrustDomain = DOMAIN.parse()?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let heap_before = HEAP.allocated();
    let mut tasks = Vec::new();
    for _ in 0..size {
        let source = wimse_reqwest::BundleSource::new(domain.clone(), format!("{}/v1/bundle/spiffe", server.base))
            .client(client.clone());
        let trust = TrustHandle::new(TrustStore::new());
        tasks.push(source.spawn(trust));
        // Verifiers start over the first second, as a fleet's would over minutes.
        if size >= 1000 {
            tokio::time::sleep(Duration::from_micros(1_000_000 / size as u64)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_verifier = kib_per(HEAP.allocated().saturating_sub(heap_before), size);
    let (cpu_before, counts_before) = (server.cpu_time(), server.counts().await?);
    tokio::time::sleep(Duration::from_secs(SECONDS)).await;
    let (cpu, counts) = (server.cpu_time().saturating_sub(cpu_before), server.counts().await?);
    for task in tasks {
        task.abort();
    }
    let whole = counts.whole - counts_before.whole;
    let not_modified = counts.not_modified - counts_before.not_modified;
    let per_second: Vec<u64> = counts.per_second.iter().rev().take(SECONDS as usize).copied().collect();
    let total = (whole + not_modified) as f64;
    let mean = total / SECONDS as f64;
    let peak = per_second.iter().copied().max().unwrap_or(0) as f64;
    Ok(Row {
        scenario: "bundles",
        size,
        per_unit_kib: per_verifier,
        rate: mean,
        cpu_us: cpu.as_secs_f64() * 1e6 / (size as f64 * SECONDS as f64),
        p99_or_peak: if mean > 0.0 { peak / mean } else { 0.0 },
        rss_mib: server.rss_mib(),
        not_modified: if total > 0.0 { not_modified as f64 / total } else { 0.0 },
    })
}

/// Every scenario, in the order they run for each size.
const SCENARIOS: [&str; 10] = [
    "issuance",
    "issuance-pg",
    "issuance-pg-2",
    "exchange",
    "txn-token",
    "replay-redis",
    "replay-cluster",
    "agent-streams",
    "outage",
    "bundles",
];

const USAGE: &str = "usage: scale [--sizes 100,1000,10000] [--only SCENARIO,...] [--csv FILE]";

/// The command line.
#[derive(Debug)]
struct Options {
    sizes: Vec<usize>,
    /// The scenarios to run (all by default).
    only: Vec<&'static str>,
    csv: Option<String>,
}

impl Options {
    fn runs(&self, scenario: &str) -> bool {
        self.only.contains(&scenario)
    }
}

fn parse_options(args: &[String]) -> Result<Options, Error> {
    let mut options = Options { sizes: vec![100, 1000, 10000], only: SCENARIOS.to_vec(), csv: None };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sizes" => {
                let list = args.next().ok_or("--sizes needs a list")?;
                options.sizes = list.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?;
                if options.sizes.iter().any(|s| *s == 0 || *s > 100_000) {
                    return Err("--sizes: each between 1 and 100000".into());
                }
            }
            "--only" => {
                let list = args.next().ok_or("--only needs a list")?;
                options.only =
                    list.split(',')
                        .map(|name| {
                            SCENARIOS.iter().copied().find(|s| *s == name.trim()).ok_or_else(|| {
                                format!("--only: no scenario {name:?} (there are {})", SCENARIOS.join(", "))
                            })
                        })
                        .collect::<Result<_, _>>()?;
            }
            "--csv" => options.csv = Some(args.next().ok_or("--csv needs a file")?.clone()),
            other => return Err(format!("unknown argument {other}; {USAGE}").into()),
        }
    }
    Ok(options)
}

async fn run(args: Vec<String>) -> Result<(), Error> {
    let options = parse_options(&args)?;
    // PostgreSQL when installed: one database for the issuance-on-PostgreSQL rows.
    let postgres = if options.runs("issuance-pg") || options.runs("issuance-pg-2") {
        wimse_testkit::servers::PostgresServer::start()
    } else {
        None
    };
    // And Redis, one node and a Cluster of three, for the replay rows.
    let redis = if options.runs("replay-redis") { wimse_testkit::servers::RedisServer::start() } else { None };
    let cluster = if options.runs("replay-cluster") { wimse_testkit::servers::RedisCluster::start() } else { None };
    // A new replay store refuses proofs that could predate it, for the clock leeway (30 s) after
    // its epoch starts: started now, so that the wait overlaps with the other rows.
    let single = match &redis {
        Some(redis) => Some((
            started_store(wimse_core::replay::RedisReplayStore::new(&redis.url())?).await?,
            vec![redis.pid().ok_or("redis-server is not running")?],
        )),
        None => None,
    };
    let clustered = match &cluster {
        Some(cluster) => Some((
            started_store(wimse_core::replay::RedisReplayStore::cluster(cluster.urls())?).await?,
            cluster.nodes().iter().filter_map(|node| node.pid()).collect::<Vec<u32>>(),
        )),
        None => None,
    };
    let replay_ready_at = Instant::now() + Duration::from_secs(32);
    let mut rows = Vec::new();
    for &size in &options.sizes {
        if options.runs("issuance") {
            eprintln!("scale: {size} workloads, issuance");
            rows.push(issuance(size).await?);
        }
        if let Some(postgres) = &postgres {
            for replicas in
                [1, 2].into_iter().filter(|r| options.runs(if *r == 1 { "issuance-pg" } else { "issuance-pg-2" }))
            {
                eprintln!("scale: {size} workloads, issuance on PostgreSQL, {replicas} replica(s)");
                rows.push(issuance_on_postgres(size, replicas, &postgres.url()).await?);
            }
        }
        if options.runs("exchange") {
            eprintln!("scale: {size} workloads' platform tokens exchanged");
            rows.push(tokens::exchange(size).await?);
        }
        if options.runs("txn-token") {
            eprintln!("scale: {size} users' access tokens exchanged for Txn-Tokens");
            rows.push(tokens::txn_tokens(size).await?);
        }
        for (scenario, replay) in [("replay-redis", &single), ("replay-cluster", &clustered)] {
            if let Some((store, pids)) = replay {
                tokio::time::sleep_until(replay_ready_at.into()).await;
                eprintln!("scale: {size} workloads' proofs claimed ({scenario})");
                rows.push(replay_on_redis(scenario, size, pids, store.clone()).await?);
            }
        }
        if options.runs("agent-streams") {
            eprintln!("scale: {size} Workload API streams on one agent");
            rows.push(agent::streams(size).await?);
        }
        if options.runs("outage") {
            eprintln!("scale: {size} workloads renewing through an outage");
            rows.push(outage(size).await?);
        }
        if options.runs("bundles") {
            eprintln!("scale: {size} verifiers, bundles");
            rows.push(bundles(size).await?);
        }
    }
    report(&rows, options.csv)
}

/// A replay store, joined and with its epoch started.
async fn started_store(
    store: wimse_core::replay::RedisReplayStore,
) -> Result<Arc<wimse_core::replay::RedisReplayStore>, Error> {
    use wimse_core::time::Clock as _;
    let store = store.timeout(Duration::from_secs(5));
    store.join().await?;
    let now = wimse_core::time::SystemClock.now();
    let first = wimse_core::replay::ReplayClaim::signature_nonce("scale-harness", now + 1, 0);
    let _ = wimse_core::replay::ReplayStore::claim(&store, &first, now).into_ready();
    Ok(Arc::new(store))
}

/// Prints the table, how each cost per operation grows, and the CSV (also to `csv_file`).
fn report(rows: &[Row], csv_file: Option<String>) -> Result<(), Error> {
    println!(
        "| scenario | N | rate (/s) | server CPU per op (µs) | p99 ms / peak÷mean | server RSS (MiB) | 304 share | KiB per unit |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut csv = String::from(
        "scenario,n,rate_per_s,server_cpu_us_per_op,p99_ms_or_peak_over_mean,server_rss_mib,not_modified_share,kib_per_unit\n",
    );
    for row in rows {
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.2} | {:.1} | {:.2} | {:.1} |",
            row.scenario,
            row.size,
            row.rate,
            row.cpu_us,
            row.p99_or_peak,
            row.rss_mib,
            row.not_modified,
            row.per_unit_kib
        );
        csv.push_str(&format!(
            "{},{},{:.1},{:.2},{:.3},{:.2},{:.3},{:.2}\n",
            row.scenario,
            row.size,
            row.rate,
            row.cpu_us,
            row.p99_or_peak,
            row.rss_mib,
            row.not_modified,
            row.per_unit_kib
        ));
    }
    // How each cost per operation, and each memory per unit, grows from the smallest to the
    // largest size.
    let mut scenarios: Vec<&str> = rows.iter().map(|r| r.scenario).collect();
    scenarios.dedup();
    scenarios.sort();
    scenarios.dedup();
    for scenario in scenarios {
        let of: Vec<&Row> = rows.iter().filter(|r| r.scenario == scenario).collect();
        if let (Some(first), Some(last)) = (of.first(), of.last()) {
            for (what, small, large) in [
                ("CPU per operation", first.cpu_us, last.cpu_us),
                ("memory per unit", first.per_unit_kib, last.per_unit_kib),
            ] {
                if small > 0.0 {
                    println!("{scenario}: {what} x{:.2} from N={} to N={}", large / small, first.size, last.size);
                }
            }
        }
    }
    print!("\n{csv}");
    if let Some(path) = csv_file {
        std::fs::write(&path, csv)?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("scale: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let config = args.get(1).cloned().unwrap_or_default();
    let outcome = match args.first().map(String::as_str) {
        Some("serve") => runtime.block_on(server::serve(config)),
        Some("serve-agent") => runtime.block_on(agent::serve(config)),
        _ => runtime.block_on(run(args)),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("scale: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn options_are_parsed_and_bounded() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let parse = |a: &[&str]| super::parse_options(&args(a));
        let defaults = parse(&[]).unwrap();
        assert_eq!(defaults.sizes, [100, 1000, 10000]);
        assert!(super::SCENARIOS.iter().all(|s| defaults.runs(s)), "every scenario by default");
        assert_eq!(parse(&["--sizes", "5,50"]).unwrap().sizes, [5, 50]);
        assert!(parse(&["--sizes", "0"]).is_err());
        assert!(parse(&["--sizes", "x"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        let only = parse(&["--only", "outage,txn-token"]).unwrap();
        assert!(only.runs("outage") && only.runs("txn-token") && !only.runs("issuance"));
        assert!(parse(&["--only", "outage,nonsense"]).unwrap_err().to_string().contains("nonsense"));
    }
}
