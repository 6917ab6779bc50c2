//! Load benchmark: an axum and an actix-web server on loopback, each in seven configurations
//! (no authentication; WPT with the in-memory replay store, with it answering from a task of its
//! own (`hand-off`), with Redis and with a three-node Redis Cluster; HTTP message signatures;
//! mutual TLS), driven from this process while the
//! server runs in a child process. The Redis rows need `redis-server` (the driver starts it and
//! the cluster on loopback); without it they are skipped with a message.
//!
//! For every configuration the driver starts a fresh server process, checks that it really
//! authenticates (an anonymous request is refused, an authenticated one names the caller and
//! the proof mode), sends a warm-up, then a bounded number of requests over a fixed number of
//! keep-alive connections, and prints requests per second, p50/p99 latency and the server
//! process's CPU time per request (user + system, from `/proc`, so Linux only). Proofs are
//! created before the timed phase, so the driver spends its time on HTTP only. It also
//! measures one bare signature verification of the client's algorithm with the same backend in
//! this process: the floor a verifying server cannot go below.
//!
//! The gateway rows (`--only gateway`) put the wimse gateway in front of the same application:
//! behind nginx's `auth_request`, as a reverse proxy, and its forward-auth endpoint asked
//! directly (see `gateway.rs`); they need nginx.
//!
//! Run: `cargo run --release -p wimse-examples --bin load-bench`
//! (`-- --help` lists the options: request count, connections, algorithm, backend, filter).

mod claims;
mod driver;
mod gateway;
mod pin;
mod redis;
mod server;
mod setup;

use std::process::ExitCode;
use std::time::Duration;

use wimse_core::prelude::*;

use crate::driver::Row;
use crate::pin::Pinning;
use crate::setup::Deployment;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The server framework under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framework {
    Axum,
    Actix,
}

impl Framework {
    const ALL: [Framework; 2] = [Framework::Axum, Framework::Actix];

    fn name(self) -> &'static str {
        match self {
            Framework::Axum => "axum",
            Framework::Actix => "actix-web",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// How callers prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    Wpt,
    HttpSignature,
    Mtls,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::None, Mode::Wpt, Mode::HttpSignature, Mode::Mtls];

    fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Wpt => "wpt",
            Mode::HttpSignature => "http-signature",
            Mode::Mtls => "mtls",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    fn scheme(self) -> &'static str {
        if self == Mode::Mtls { "https" } else { "http" }
    }
}

/// Where an authenticated server claims proofs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Memory,
    /// The in-memory store answering from a task of its own: the request waits for it as for
    /// Redis (the request's task suspended, another task run, the request's task woken), without
    /// a socket. What an asynchronous store costs before its own work.
    MemoryHandOff,
    Redis,
    RedisCluster,
}

impl Store {
    fn name(self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::MemoryHandOff => "hand-off",
            Store::Redis => "redis",
            Store::RedisCluster => "redis-cluster",
        }
    }

    fn is_redis(self) -> bool {
        matches!(self, Store::Redis | Store::RedisCluster)
    }
}

/// One configuration: a framework, a proof mode, and (for WPT and HTTP signatures) a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Config {
    framework: Framework,
    mode: Mode,
    store: Store,
}

impl Config {
    fn all() -> Vec<Config> {
        let mut all = Vec::new();
        for framework in Framework::ALL {
            for mode in Mode::ALL {
                all.push(Config { framework, mode, store: Store::Memory });
            }
            for store in [Store::MemoryHandOff, Store::Redis, Store::RedisCluster] {
                all.push(Config { framework, mode: Mode::Wpt, store });
            }
        }
        all
    }

    /// Whether proofs are claimed in a replay store (mTLS and no-auth requests carry none).
    fn claims(self) -> bool {
        matches!(self.mode, Mode::Wpt | Mode::HttpSignature)
    }

    /// `axum wpt redis`, `axum mtls`: what `--only` matches.
    fn name(self) -> String {
        if self.claims() {
            format!("{} {} {}", self.framework.name(), self.mode.name(), self.store.name())
        } else {
            format!("{} {}", self.framework.name(), self.mode.name())
        }
    }
}

/// Command-line options of the driver.
#[derive(Debug, Clone)]
struct Options {
    requests: usize,
    warmup: usize,
    concurrency: usize,
    algorithm: Algorithm,
    backend: Backend,
    only: Vec<String>,
    /// `--pin`: the server on CPUs of its own.
    pinning: Option<Pinning>,
    /// `--workers`: each server's worker threads (default: one per CPU it may use).
    workers: Option<usize>,
}

const USAGE: &str = "usage: load-bench [--requests N] [--warmup N] [--concurrency N] [--alg ES256|ES384|EdDSA]
                  [--backend aws-lc-rs|rust-crypto] [--only SUBSTRING] [--pin] [--workers N]
defaults: 20000 requests and 1000 warm-up requests per configuration, 16 connections, ES256,
the default backend; --only keeps the configurations whose name (e.g. `axum wpt memory`,
`actix-web wpt redis-cluster`, `axum mtls`, `gateway` for the gateway rows) contains SUBSTRING
(repeat it to keep several); --pin runs each server on half the CPUs and the driver, Redis and
nginx on the other half (with taskset), so the server's CPU time is not also what sharing cores
with them costs it (the gateway rows' application and gateway share the servers' half);
--workers sets the axum and actix-web servers' worker threads (default: one per CPU they may
use, so one per CPU of their half with --pin)
       load-bench claims [--claims N] [--rounds N] [--store redis|redis-cluster]
                         [--runtime multi-thread|per-thread]
the client CPU of a Redis claim alone (no HTTP, no signature): 60000 claims per row, 3 rounds,
every store and runtime unless --store or --runtime keeps one";

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, Error> {
        let mut options = Options {
            requests: 20_000,
            warmup: 1_000,
            concurrency: 16,
            algorithm: Algorithm::ES256,
            backend: Backend::default(),
            only: Vec::new(),
            pinning: None,
            workers: None,
        };
        let mut pin = false;
        while let Some(flag) = args.next() {
            if flag == "--pin" {
                pin = true;
                continue;
            }
            let value = args.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
            let count = |v: &str| -> Result<usize, Error> {
                v.parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{flag}: not a positive number").into())
            };
            match flag.as_str() {
                "--requests" => options.requests = count(&value)?,
                "--warmup" => options.warmup = count(&value)?,
                "--concurrency" => options.concurrency = count(&value)?,
                "--alg" => {
                    options.algorithm = value.parse().map_err(|_| format!("--alg: unknown algorithm {value}"))?
                }
                "--backend" => options.backend = backend(&value)?,
                "--only" => options.only.push(value),
                "--workers" => options.workers = Some(count(&value)?),
                _ => return Err(format!("unknown option {flag}\n{USAGE}").into()),
            }
        }
        if !matches!(options.algorithm, Algorithm::ES256 | Algorithm::ES384 | Algorithm::EdDSA) {
            return Err("--alg: workload keys are ES256, ES384 or EdDSA".into());
        }
        // Once, after every option was read: a repeated --pin must not halve the halves.
        if pin {
            options.pinning = Some(Pinning::split()?);
        }
        Ok(options)
    }
}

fn backend(name: &str) -> Result<Backend, Error> {
    Backend::available()
        .into_iter()
        .find(|b| b.name() == name)
        .ok_or_else(|| format!("backend {name} is not compiled in (features aws-lc-rs, rust-crypto)").into())
}

fn micros(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn ratio(cpu: Option<Duration>, floor: Duration) -> String {
    cpu.map_or_else(|| "n/a".to_owned(), |cpu| format!("{:.2}x", cpu.as_secs_f64() / floor.as_secs_f64()))
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cpus} CPUs, {model}")
}

/// Prints the results as a Markdown table, with each row's CPU per request against the bare
/// verification and against the same framework without authentication.
fn print_table(rows: &[Row], floor: Duration, options: &Options) {
    let alg = options.algorithm.as_str();
    println!(
        "\n| server | proof | replay store | requests/s | p50 | p99 | server CPU per request | ÷ one bare {alg} verification | over no auth | server context switches per request |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let baseline = rows.iter().find(|r| r.config.framework == row.config.framework && r.config.mode == Mode::None);
        let over = match (row.cpu_per_request, baseline.and_then(|b| b.cpu_per_request)) {
            (Some(cpu), Some(base)) if row.config.mode != Mode::None => micros(cpu.saturating_sub(base)),
            _ => "-".to_owned(),
        };
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            row.config.framework.name(),
            row.config.mode.name(),
            if row.config.claims() { row.config.store.name() } else { "-" },
            row.requests_per_second,
            millis(row.p50),
            millis(row.p99),
            row.cpu_per_request.map_or_else(|| "n/a".to_owned(), micros),
            ratio(row.cpu_per_request, floor),
            over,
            row.switches_per_request.map_or_else(|| "n/a".to_owned(), |s| format!("{s:.2}")),
        );
    }
    for row in rows.iter().filter(|r| r.config.mode == Mode::Wpt) {
        let framework = row.config.framework;
        let serving = rows.iter().find(|r| r.config.framework == framework && r.config.mode == Mode::None);
        // What a verifying server cannot go below: serving a request plus one verification.
        let least = serving.and_then(|r| r.cpu_per_request).map(|serving| serving + floor);
        println!(
            "\n{} WPT server ({} store): CPU per request {} = {} one bare {alg} verification ({}); {} (serving without authentication + one bare verification)",
            framework.name(),
            row.config.store.name(),
            row.cpu_per_request.map_or_else(|| "n/a".to_owned(), micros),
            ratio(row.cpu_per_request, floor),
            micros(floor),
            least.map_or_else(|| "n/a".to_owned(), |least| ratio(row.cpu_per_request, least)),
        );
    }
}

fn drive(options: &Options) -> Result<(), Error> {
    println!(
        "load-bench: {} requests (+{} warm-up) per configuration over {} connections, {} with {}; {}",
        options.requests,
        options.warmup,
        options.concurrency,
        options.algorithm.as_str(),
        options.backend.name(),
        machine(),
    );
    if let Some(pinning) = &options.pinning {
        println!("pinned: {}", pinning.describe());
    }
    let deployment = Deployment::new(options)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut selected: Vec<Config> = Config::all()
        .into_iter()
        .filter(|c| options.only.is_empty() || options.only.iter().any(|only| c.name().contains(only.as_str())))
        .collect();
    let gateway_rows = options.only.is_empty() || options.only.iter().any(|only| "gateway".contains(only.as_str()));
    if selected.is_empty() && !gateway_rows {
        return Err("--only matched no configuration".into());
    }
    let redis = if selected.iter().any(|c| c.store.is_redis()) {
        let redis = runtime.block_on(redis::Redis::start())?;
        if redis.is_none() {
            println!("skipped: the Redis rows (redis-server not found)");
            selected.retain(|c| !c.store.is_redis());
        }
        redis
    } else {
        None
    };
    let mut rows = Vec::new();
    let mut floor_rounds = Vec::new();
    for config in selected {
        let name = config.name();
        let mut setup = deployment.server.clone();
        if let Some(replay) = redis.as_ref().and_then(|redis| runtime.block_on(redis.replay_setup(config.store))) {
            setup.replay = replay;
        }
        if config.store == Store::MemoryHandOff {
            setup.replay = setup.replay.handed_off();
        }
        floor_rounds.extend(deployment.bare_verification_rounds()?);
        let row =
            runtime.block_on(driver::run(config, &setup, &deployment, options)).map_err(|e| format!("{name}: {e}"))?;
        println!(
            "{name}: {:.0} requests/s, CPU per request {}",
            row.requests_per_second,
            row.cpu_per_request.map_or_else(|| "n/a".to_owned(), micros)
        );
        rows.push(row);
    }
    let gateway = if gateway_rows {
        floor_rounds.extend(deployment.bare_verification_rounds()?);
        runtime.block_on(gateway::run(&deployment.server, &deployment, options)).map_err(|e| format!("gateway: {e}"))?
    } else {
        None
    };
    if rows.is_empty() && gateway.is_none() {
        return Err("--only matched no configuration".into());
    }
    floor_rounds.sort();
    let floor = floor_rounds[floor_rounds.len() / 2];
    println!(
        "one bare {} signature verification ({}): {} (median of {} rounds taken before each configuration)",
        options.algorithm.as_str(),
        options.backend.name(),
        micros(floor),
        floor_rounds.len()
    );
    if !rows.is_empty() {
        print_table(&rows, floor, options);
    }
    if let Some(gateway) = gateway {
        let axum = rows
            .iter()
            .find(|r| r.config == Config { framework: Framework::Axum, mode: Mode::Wpt, store: Store::Memory })
            .and_then(|r| r.cpu_per_request);
        gateway::print_table(&gateway, floor, axum);
    }
    Ok(())
}

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let mut args = std::env::args().skip(1).peekable();
    let result = if args.peek().map(String::as_str) == Some("serve") {
        args.next();
        server::main(args)
    } else if args.peek().map(String::as_str) == Some("serve-gateway") {
        args.next();
        gateway::serve(args)
    } else if args.peek().map(String::as_str) == Some("claims") {
        args.next();
        claims::main(args)
    } else {
        Options::parse(args).and_then(|options| drive(&options))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
