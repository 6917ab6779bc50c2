//! The scale harness: how the identity server's costs grow with the number of workloads and
//! verifiers it serves. The identity server runs in a child process (this binary, `serve`
//! mode, on loopback), so its CPU time and memory are its own; simulated workloads and
//! verifiers are tasks of this process, not processes.
//!
//! For each size N (default 100, 1 000 and 10 000; `--sizes`):
//! - **issuance**: N workloads obtain WITs (`POST /v1/wit`, distinct keys and identifiers,
//!   in turn until at least 5 000 issuances), 64 at a time: issuances per second at saturation, the server's CPU per
//!   issuance, p99 latency, its memory afterwards;
//! - **issuance-pg**, **issuance-pg-2**: the same on PostgreSQL (sealed keys, one audit row per
//!   issuance) through one and two replicas of one database, when PostgreSQL is installed
//!   (CPU summed over the replicas, not counting PostgreSQL's own);
//! - **replay-redis**: N workloads' proofs (at least 20 000) claimed in one Redis through
//!   `RedisReplayStore`, 64 at a time, when `redis-server` is installed: claims per second, the
//!   Redis server's CPU per claim and memory;
//! - **outage**: N workloads (`IssuerCredentials` in this process) renewing six-second WITs
//!   through an 8 s identity-server outage: WIT requests per second during it (the rate
//!   column) and the busiest second after it against the steady rate before (the peak column);
//! - **bundles**: N verifiers (`wimse_reqwest::BundleSource`) follow the SPIFFE bundle for 12 s
//!   with a 2 s refresh hint while keys rotate every 5 s: the server's CPU per verifier and
//!   second, whole fetches against 304s, and the busiest second against the mean (a herd shows
//!   as a high ratio).
//!
//! Prints a Markdown table and the same rows as CSV (`--csv FILE` writes it). Bounded in time
//! (about a minute per size on 2 cores) and loopback only.
//!
//! Run: `cargo run --release -p wimse-examples --bin scale -- --sizes 100,1000,10000`

mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use wimse_core::jose::{Algorithm, SigningKey};
use wimse_core::protocol::trust::{TrustHandle, TrustStore};

type Error = Box<dyn std::error::Error + Send + Sync>;

const DOMAIN: &str = "spiffe://prod.example";
const SECRET: &str = "a-scale-harness-dev-secret";
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
    let next = Arc::new(AtomicUsize::new(0));
    let keys = Arc::new(keys);
    // Enough operations to measure CPU time in 10 ms ticks: every workload at least once.
    let operations = size.max(MIN_OPERATIONS);
    let cpu = || servers.iter().map(server::ServerProcess::cpu_time).sum::<Duration>();
    let cpu_before = cpu();
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..64.min(size) {
        let base = servers[worker % servers.len()].base.clone();
        let (client, next, keys) = (client.clone(), next.clone(), keys.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= operations {
                    return Ok::<_, Error>(latencies);
                }
                // Workload `i`, renewing again once every workload has had its turn.
                let i = n % keys.len();
                let body = json!({"sub": format!("{DOMAIN}/ns/w{i}"), "jwk": keys[i].public_jwk()});
                let sent = Instant::now();
                let response = client.post(format!("{base}/v1/wit")).bearer_auth(SECRET).json(&body).send().await?;
                if response.status() != 200 {
                    return Err(format!("issuance answered {}", response.status()).into());
                }
                response.bytes().await?;
                latencies.push(sent.elapsed());
            }
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let elapsed = started.elapsed();
    let cpu = cpu().saturating_sub(cpu_before);
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    Ok(Row {
        scenario,
        size,
        rate: operations as f64 / elapsed.as_secs_f64(),
        cpu_us: cpu.as_secs_f64() * 1e6 / operations as f64,
        p99_or_peak: p99.as_secs_f64() * 1e3,
        rss_mib: servers.iter().map(server::ServerProcess::rss_mib).sum::<f64>() / servers.len() as f64,
        not_modified: 0.0,
    })
}

/// N workloads' proofs claimed in one Redis (`RedisReplayStore`), 64 at a time: claims per
/// second and the Redis server's CPU per claim; `Ok(None)` without `redis-server`.
async fn replay_on_redis(
    size: usize,
    redis: &wimse_testkit::servers::RedisServer,
    store: Arc<wimse_core::replay::RedisReplayStore>,
) -> Result<Row, Error> {
    use wimse_core::replay::{ReplayClaim, ReplayStore as _};
    use wimse_core::time::Clock as _;
    let senders: Arc<Vec<wimse_core::id::WorkloadId>> =
        Arc::new((0..size).map(|i| format!("{DOMAIN}/ns/w{i}").parse()).collect::<Result<_, _>>()?);
    let operations = size.max(REPLAY_OPERATIONS);
    let pid = redis.pid().ok_or("redis-server is not running")?;
    let cpu_before = server::cpu_time_of(pid);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..64 {
        let (store, senders, next) = (store.clone(), senders.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= operations {
                    return Ok::<_, Error>(latencies);
                }
                let now = wimse_core::time::SystemClock.now();
                // Proofs signed after the store started (a store refuses those that could
                // predate its epoch, which each bucket starts at its first claim).
                let claim =
                    ReplayClaim::wpt(&senders[n % senders.len()], &format!("jti-{size}-{n}"), now + 300, now + 1);
                let sent = Instant::now();
                match store.claim(&claim, now).into_ready() {
                    Ok(result) => result?,
                    Err(pending) => pending.await?,
                }
                latencies.push(sent.elapsed());
            }
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let elapsed = started.elapsed();
    let cpu = server::cpu_time_of(pid).saturating_sub(cpu_before);
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    Ok(Row {
        scenario: "replay-redis",
        size,
        rate: operations as f64 / elapsed.as_secs_f64(),
        cpu_us: cpu.as_secs_f64() * 1e6 / operations as f64,
        p99_or_peak: p99.as_secs_f64() * 1e3,
        rss_mib: server::rss_mib_of(pid),
        not_modified: 0.0,
    })
}

/// N workloads renewing six-second WITs (`IssuerCredentials`, all in this process, so they
/// share its outage gate) through an 8 s outage of the identity server (`/v1/wit` answering
/// 503): WIT requests per second during it, and the busiest second after the recovery against
/// the steady rate before it.
async fn outage(size: usize) -> Result<Row, Error> {
    let server = server::ServerProcess::start(json!({"refresh_hint": 300, "rotation_period": 86400,
        "clients": [{"name": "fleet", "dev_secret": SECRET, "allowed_prefixes": [format!("{DOMAIN}/ns")], "max_lifetime": 6}]}))?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let mut fleet = Vec::new();
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
    }
    // Steady renewals first (every WIT renewed once), then the outage, then the recovery.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let steady_from = server.counts().await?.wit_per_second.len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    server.set_down(true).await?;
    let down_from = server.counts().await?.wit_per_second.len();
    tokio::time::sleep(Duration::from_secs(8)).await;
    server.set_down(false).await?;
    let up_from = server.counts().await?.wit_per_second.len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let per_second = server.counts().await?.wit_per_second;
    for (_, renewal) in fleet {
        renewal.abort();
    }
    let window =
        |from: usize, to: usize| -> Vec<u64> { per_second.get(from..to.min(per_second.len())).unwrap_or(&[]).to_vec() };
    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    let steady = mean(&window(steady_from, down_from.saturating_sub(1)));
    let during = mean(&window(down_from + 1, up_from.saturating_sub(1)));
    let after = window(up_from, up_from + 5);
    let peak = after.iter().copied().max().unwrap_or(0) as f64;
    Ok(Row {
        scenario: "outage",
        size,
        rate: during,
        cpu_us: 0.0,
        p99_or_peak: if steady > 0.0 { peak / steady } else { 0.0 },
        rss_mib: server.rss_mib(),
        not_modified: 0.0,
    })
}

async fn bundles(size: usize) -> Result<Row, Error> {
    const SECONDS: u64 = 12;
    let server = server::ServerProcess::start(json!({"refresh_hint": 2, "rotation_period": 5}))?;
    let domain: wimse_core::id::TrustDomain = DOMAIN.parse()?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
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
        rate: mean,
        cpu_us: cpu.as_secs_f64() * 1e6 / (size as f64 * SECONDS as f64),
        p99_or_peak: if mean > 0.0 { peak / mean } else { 0.0 },
        rss_mib: server.rss_mib(),
        not_modified: if total > 0.0 { not_modified as f64 / total } else { 0.0 },
    })
}

fn parse_sizes(args: &[String]) -> Result<(Vec<usize>, Option<String>), Error> {
    let mut sizes = vec![100, 1000, 10000];
    let mut csv = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sizes" => {
                let list = args.next().ok_or("--sizes needs a list")?;
                sizes = list.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?;
                if sizes.iter().any(|s| *s == 0 || *s > 100_000) {
                    return Err("--sizes: each between 1 and 100000".into());
                }
            }
            "--csv" => csv = Some(args.next().ok_or("--csv needs a file")?.clone()),
            other => {
                return Err(
                    format!("unknown argument {other}; usage: scale [--sizes 100,1000,10000] [--csv FILE]").into()
                );
            }
        }
    }
    Ok((sizes, csv))
}

async fn run(args: Vec<String>) -> Result<(), Error> {
    let (sizes, csv_file) = parse_sizes(&args)?;
    // PostgreSQL when installed: one database for the issuance-on-PostgreSQL rows.
    let postgres = wimse_testkit::servers::PostgresServer::start();
    // And Redis for the replay rows.
    let redis = wimse_testkit::servers::RedisServer::start();
    // A new replay store refuses proofs that could predate it, for the clock leeway (30 s) after
    // its epoch starts: started now, so that the wait overlaps with the other rows.
    let replay = match &redis {
        Some(redis) => {
            use wimse_core::time::Clock as _;
            let store = wimse_core::replay::RedisReplayStore::new(&redis.url())?.timeout(Duration::from_secs(5));
            store.join().await?;
            let now = wimse_core::time::SystemClock.now();
            let first = wimse_core::replay::ReplayClaim::signature_nonce("scale-harness", now + 1, 0);
            let _ = wimse_core::replay::ReplayStore::claim(&store, &first, now).into_ready();
            Some((Arc::new(store), Instant::now() + Duration::from_secs(32)))
        }
        None => None,
    };
    let mut rows = Vec::new();
    for &size in &sizes {
        eprintln!("scale: {size} workloads, issuance");
        rows.push(issuance(size).await?);
        if let Some(postgres) = &postgres {
            for replicas in [1, 2] {
                eprintln!("scale: {size} workloads, issuance on PostgreSQL, {replicas} replica(s)");
                rows.push(issuance_on_postgres(size, replicas, &postgres.url()).await?);
            }
        }
        if let (Some(redis), Some((store, ready_at))) = (&redis, &replay) {
            tokio::time::sleep_until((*ready_at).into()).await;
            eprintln!("scale: {size} workloads' proofs claimed in Redis");
            rows.push(replay_on_redis(size, redis, store.clone()).await?);
        }
        eprintln!("scale: {size} workloads renewing through an outage");
        rows.push(outage(size).await?);
        eprintln!("scale: {size} verifiers, bundles");
        rows.push(bundles(size).await?);
    }
    println!(
        "| scenario | N | rate (/s) | server CPU per op (µs) | p99 ms / peak÷mean | server RSS (MiB) | 304 share |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut csv = String::from(
        "scenario,n,rate_per_s,server_cpu_us_per_op,p99_ms_or_peak_over_mean,server_rss_mib,not_modified_share\n",
    );
    for row in &rows {
        println!(
            "| {} | {} | {:.0} | {:.1} | {:.2} | {:.1} | {:.2} |",
            row.scenario, row.size, row.rate, row.cpu_us, row.p99_or_peak, row.rss_mib, row.not_modified
        );
        csv.push_str(&format!(
            "{},{},{:.1},{:.2},{:.3},{:.2},{:.3}\n",
            row.scenario, row.size, row.rate, row.cpu_us, row.p99_or_peak, row.rss_mib, row.not_modified
        ));
    }
    // How each cost per operation grows from the smallest to the largest size.
    for scenario in ["issuance", "issuance-pg", "issuance-pg-2", "replay-redis", "bundles"] {
        let of: Vec<&Row> = rows.iter().filter(|r| r.scenario == scenario).collect();
        if let (Some(first), Some(last)) = (of.first(), of.last())
            && first.cpu_us > 0.0
        {
            println!(
                "{scenario}: CPU per operation x{:.2} from N={} to N={}",
                last.cpu_us / first.cpu_us,
                first.size,
                last.size
            );
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
    let outcome = if args.first().map(String::as_str) == Some("serve") {
        runtime.block_on(server::serve(args.get(1).cloned().unwrap_or_default()))
    } else {
        runtime.block_on(run(args))
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
    fn sizes_are_parsed_and_bounded() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(super::parse_sizes(&args(&[])).unwrap().0, [100, 1000, 10000]);
        assert_eq!(super::parse_sizes(&args(&["--sizes", "5,50"])).unwrap().0, [5, 50]);
        assert!(super::parse_sizes(&args(&["--sizes", "0"])).is_err());
        assert!(super::parse_sizes(&args(&["--sizes", "x"])).is_err());
        assert!(super::parse_sizes(&args(&["--bogus"])).is_err());
    }
}
