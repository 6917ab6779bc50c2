//! `load-bench claims`: what a Redis claim costs its verifier: client CPU per claim through `RedisReplayStore`, on
//! one `redis-server` and on a three-node Redis Cluster (both started on loopback), with no
//! HTTP and no signature around it, so the figure is the claim's alone.
//!
//! For each store and each runtime shape (tokio's multi-threaded scheduler with two workers, as
//! an axum server runs; two single-threaded runtimes, as actix-web's workers), 16 tasks claim
//! fresh proofs one after another until `--claims` (60 000) are made; the program prints claims
//! per second and this process's CPU time (user + system, from `/proc/self/stat`, so Linux
//! only) per claim. Redis's own CPU is not counted. Each row runs `--rounds` (3) times.
//! `--store redis|redis-cluster` and `--runtime multi-thread|per-thread` run only those rows
//! (to profile one of them).
//!
//! Run: `cargo run --release -p wimse-examples --bin load-bench -- claims` (needs
//! `redis-server`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wimse_core::replay::{RedisReplayStore, ReplayClaim, ReplayStore};
use wimse_testkit::now;
use wimse_testkit::servers::{RedisCluster, RedisServer};

use crate::Error;
use crate::driver::{clock_ticks_per_second, cpu_time_of};

/// Claims in flight at once (one per task), as the load benchmark's 16 connections.
const TASKS: usize = 16;

/// How the claiming tasks are scheduled.
#[derive(Clone, Copy)]
enum Runtime {
    /// tokio's multi-threaded scheduler, two workers (axum).
    MultiThread,
    /// Two single-threaded runtimes, eight tasks each (actix-web's workers).
    PerThread,
}

impl Runtime {
    /// The name `--runtime` takes.
    fn flag(self) -> &'static str {
        match self {
            Runtime::MultiThread => "multi-thread",
            Runtime::PerThread => "per-thread",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Runtime::MultiThread => "multi-thread (axum)",
            Runtime::PerThread => "per-thread (actix-web)",
        }
    }
}

/// The time proofs are claimed at: a new store refuses proofs that could predate its first
/// epoch, so the rows claim at a fixed time after the one that started it.
#[derive(Clone, Copy)]
struct ClaimTime(u64);

/// Runs the rows; `args` are what follows `claims` on the command line.
pub(crate) fn main(mut args: impl Iterator<Item = String>) -> Result<(), Error> {
    let mut claims = 60_000;
    let mut rounds = 3;
    let (mut only_store, mut only_runtime) = (None, None);
    while let Some(arg) = args.next() {
        let value = |name: &str, args: &mut dyn Iterator<Item = String>| -> Result<usize, Error> {
            Ok(args.next().ok_or(format!("{name} needs a value"))?.parse()?)
        };
        match arg.as_str() {
            "--claims" => claims = value("--claims", &mut args)?,
            "--rounds" => rounds = value("--rounds", &mut args)?,
            "--store" => only_store = Some(args.next().ok_or("--store needs redis or redis-cluster")?),
            "--runtime" => only_runtime = Some(args.next().ok_or("--runtime needs multi-thread or per-thread")?),
            _ => {
                return Err("usage: load-bench claims [--claims N] [--rounds N] [--store redis|redis-cluster] [--runtime multi-thread|per-thread]".into());
            }
        }
    }
    if claims == 0 || rounds == 0 {
        return Err("--claims and --rounds must be at least 1".into());
    }
    if only_store.as_deref().is_some_and(|s| s != "redis" && s != "redis-cluster") {
        return Err("--store takes redis or redis-cluster".into());
    }
    if only_runtime.as_deref().is_some_and(|r| r != "multi-thread" && r != "per-thread") {
        return Err("--runtime takes multi-thread or per-thread".into());
    }
    // Only the servers of the rows kept: another store's heartbeats would be counted too.
    let wanted = |name: &str| only_store.as_deref().is_none_or(|only| only == name);
    let single = wanted("redis").then(RedisServer::start);
    let cluster = wanted("redis-cluster").then(RedisCluster::start);
    if matches!(single, Some(None)) || matches!(cluster, Some(None)) {
        println!("skipped: redis-server not found");
        return Ok(());
    }
    let mut candidates = Vec::new();
    if let Some(Some(single)) = &single {
        candidates.push(("redis", RedisReplayStore::new(&single.url())?));
    }
    if let Some(Some(cluster)) = &cluster {
        candidates.push(("redis-cluster", RedisReplayStore::cluster(cluster.urls())?));
    }
    // The stores' own tasks (heartbeats) live on this runtime, outside the measured ones.
    let background = tokio::runtime::Runtime::new()?;
    let start = now() + 100;
    let stores = background.block_on(async {
        let mut stores = Vec::new();
        for (name, store) in candidates {
            let store = store.timeout(Duration::from_secs(5));
            store.join().await?;
            // Starts the store's epochs; proofs made after them are claimed as usual.
            let _ = store.claim(&ReplayClaim::signature_nonce("start", start + 60, start), start).await;
            stores.push((name, Arc::new(store)));
        }
        Ok::<_, Error>(stores)
    })?;
    let at = ClaimTime(start + 10);
    let mut rows: Vec<(&str, Runtime, Vec<f64>, Vec<f64>)> = Vec::new();
    for round in 0..rounds {
        for (name, store) in &stores {
            for runtime in [Runtime::MultiThread, Runtime::PerThread] {
                if only_runtime.as_deref().is_some_and(|only| only != runtime.flag()) {
                    continue;
                }
                let tag = format!("{name}-{round}-{}", runtime.name());
                let (rate, cpu) = measure(store, runtime, claims, &tag, at)?;
                let cpu = cpu.as_secs_f64() * 1e6;
                match rows.iter_mut().find(|row| row.0 == *name && row.1.name() == runtime.name()) {
                    Some(row) => {
                        row.2.push(rate);
                        row.3.push(cpu);
                    }
                    None => rows.push((name, runtime, vec![rate], vec![cpu])),
                }
            }
        }
    }
    println!("{claims} claims per row, {TASKS} in flight; median of {rounds} rounds (range)");
    println!("| store | runtime | claims/s | client CPU per claim |");
    println!("|---|---|---|---|");
    for (name, runtime, mut rates, mut cpus) in rows {
        let (rate, cpu) = (median(&mut rates), median(&mut cpus));
        println!(
            "| {name} | {} | {rate:.0} | {cpu:.1} µs ({:.1}–{:.1}) |",
            runtime.name(),
            cpus[0],
            cpus[cpus.len() - 1]
        );
    }
    Ok(())
}

/// Claims `total` fresh proofs from `TASKS` tasks scheduled as `runtime`; returns claims per
/// second and this process's CPU time per claim.
fn measure(
    store: &Arc<RedisReplayStore>,
    runtime: Runtime,
    total: usize,
    tag: &str,
    at: ClaimTime,
) -> Result<(f64, Duration), Error> {
    let counter = Arc::new(AtomicUsize::new(0));
    let (cpu_before, started) = (process_cpu()?, Instant::now());
    match runtime {
        Runtime::MultiThread => {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            runtime.block_on(claim_from_tasks(store, &counter, total, tag, TASKS, at))?;
        }
        Runtime::PerThread => {
            let threads: Vec<_> = (0..2)
                .map(|thread| {
                    let (store, counter, tag) = (store.clone(), counter.clone(), format!("{tag}-{thread}"));
                    std::thread::spawn(move || -> Result<(), Error> {
                        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                        runtime.block_on(claim_from_tasks(&store, &counter, total, &tag, TASKS / 2, at))
                    })
                })
                .collect();
            for thread in threads {
                thread.join().map_err(|_| "a claiming thread panicked")??;
            }
        }
    }
    let elapsed = started.elapsed();
    let cpu = process_cpu()?.saturating_sub(cpu_before);
    Ok((total as f64 / elapsed.as_secs_f64(), cpu / total as u32))
}

/// Spawns `tasks` tasks that claim fresh proofs until `counter` reaches `total`.
async fn claim_from_tasks(
    store: &Arc<RedisReplayStore>,
    counter: &Arc<AtomicUsize>,
    total: usize,
    tag: &str,
    tasks: usize,
    at: ClaimTime,
) -> Result<(), Error> {
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let (store, counter, tag) = (store.clone(), counter.clone(), format!("{tag}-{task}"));
            tokio::spawn(async move {
                loop {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return Ok::<(), Error>(());
                    }
                    let claim = ReplayClaim::signature_nonce(&format!("{tag}-{n}"), at.0 + 60, at.0);
                    store.claim(&claim, at.0).await.map_err(|error| format!("claim refused: {error}"))?;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await??;
    }
    Ok(())
}

/// The median of `values` (sorted in place).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// This process's CPU time (user + system, all threads) so far.
fn process_cpu() -> Result<Duration, Error> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    Ok(cpu_time_of(&stat, clock_ticks_per_second()).ok_or("unreadable /proc/self/stat")?)
}
