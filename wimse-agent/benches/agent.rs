//! The node agent's hot path: credentials served per second over the Unix socket (a stream
//! opened, attested, matched, answered and parsed by the client), and the memory each connected
//! workload costs.
//!
//! `cargo bench -p wimse-agent`. The memory figure is printed before the timings: RSS growth of
//! this process per connected workload holding an open WIT-SVID stream, client and agent sides
//! together (both run here), so an upper bound for the agent alone.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use wimse_workload_api::WorkloadApiClient;

#[path = "../tests/common/mod.rs"]
mod common;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn workload_api(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    // Channels spawn their connection tasks on the runtime they are made in.
    let _context = runtime.enter();
    let (_issuer, agent) = runtime.block_on(async {
        let issuer = common::Issuer::start(3600).await;
        let limits = json!({"limits": {"max_connections_per_uid": 4096, "max_streams_per_uid": 4096}});
        let agent = common::start_agent(&issuer, json!([common::entry_for_me("/ns/bench", "")]), limits).await;
        (issuer, agent)
    });

    // Memory per connected workload: N clients, each on its own connection with a stream open.
    const WORKLOADS: usize = 500;
    let before = rss_kib();
    let streams = runtime.block_on(async {
        let mut streams = Vec::with_capacity(WORKLOADS);
        for _ in 0..WORKLOADS {
            let client = WorkloadApiClient::new(agent.endpoint.clone());
            let mut stream = client.stream_wit_svids(None).await.unwrap();
            stream.message().await.unwrap().unwrap();
            streams.push((client, stream));
        }
        streams
    });
    let after = rss_kib();
    println!(
        "memory per connected workload (client + agent, {WORKLOADS} connections with an open WIT-SVID stream): {:.1} KiB",
        after.saturating_sub(before) as f64 / WORKLOADS as f64
    );
    drop(streams);

    let client = WorkloadApiClient::new(agent.endpoint.clone());
    let mut group = c.benchmark_group("workload_api");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("fetch_wit_svid", |b| {
        b.to_async(&runtime).iter(|| async { client.fetch_wit_svids(None, Duration::from_secs(5)).await.unwrap() })
    });
    group.bench_function("fetch_x509_svid", |b| {
        b.to_async(&runtime).iter(|| async { client.fetch_x509_svids(Duration::from_secs(5)).await.unwrap() })
    });
    group.finish();
}

criterion_group!(benches, workload_api);
criterion_main!(benches);
