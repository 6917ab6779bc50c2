//! Allocations per verified request on the hot path (a steady caller whose WIT is cached),
//! counted with a counting allocator. One test per binary: the allocator counts every thread.

mod common;

use std::alloc::System;

use common::*;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use wimse_core::prelude::*;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn a_wpt_request_allocates_little() {
    let f = Fixture::new();
    // A store in service already holds claims: its shards' tables exist and have room.
    let store = std::sync::Arc::new(InMemoryReplayStore::new(100_000));
    let other: WorkloadId = "spiffe://prod.example/warm-up".parse().unwrap();
    for i in 0..20_000 {
        let claim = wimse_core::replay::ReplayClaim::wpt(&other, &i.to_string(), NOW + 600, NOW);
        let _ = store.claim(&claim, NOW).into_ready();
    }
    let verifier = f.verifier().replay_store(store);
    let requests: Vec<_> = (0..20).map(|_| f.headers(&f.wit, &f.wpt())).collect();
    // Warm up: the WIT cache, the replay store's first table, lazily parsed keys.
    verifier.verify_sync(&RequestView::new(PATH, &requests[0])).unwrap();
    let mut counts = Vec::new();
    for headers in &requests[1..] {
        let region = Region::new(GLOBAL);
        let caller = verifier.verify_sync(&RequestView::new(PATH, headers)).unwrap();
        drop(caller);
        counts.push(region.change().allocations);
    }
    counts.sort_unstable();
    let median = counts[counts.len() / 2];
    println!("allocations per WPT request (median of {}): {median}; all: {counts:?}", counts.len());
    // The proof's `jti` (kept in the caller) is the one allocation left; the bound is 8,
    // this holds the line where it is now.
    assert!(median <= 2, "{median} allocations per request");
}
