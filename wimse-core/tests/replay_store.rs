//! Memory per live replay claim, measured with a counting allocator (the README and the
//! `InMemoryReplayStore` docs quote this bound). One test per binary: the allocator counts
//! every thread.

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use wimse_core::prelude::*;
use wimse_core::replay::{CallerQuota, ReplayClaim};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const NOW: u64 = 1_800_000_000;

#[test]
fn memory_per_live_claim_is_bounded_whatever_the_input() {
    let caller: WorkloadId = "spiffe://prod.example/flood".parse().unwrap();
    // Inputs of the largest accepted size: the store keeps a 24-byte slot per claim regardless.
    let long = "j".repeat(wimse_core::replay::MAX_PROOF_ID_LEN - 8);
    let claims: Vec<ReplayClaim> =
        (0..200_000u32).map(|i| ReplayClaim::wpt(&caller, &format!("{long}{i:08}"), NOW + 60, NOW - 270)).collect();

    // Shards fill unevenly: leave them some room.
    let store = InMemoryReplayStore::new(claims.len() * 5 / 4);
    let region = Region::new(GLOBAL);
    for claim in &claims {
        store.claim(claim, NOW).into_ready().unwrap().unwrap();
    }
    let stats = region.change();
    let held = stats.bytes_allocated + stats.bytes_reallocated.max(0) as usize - stats.bytes_deallocated;
    let per_claim = held as f64 / claims.len() as f64;
    println!("in-memory replay store: {per_claim:.1} bytes per live claim ({} claims)", claims.len());
    assert!(per_claim <= 64.0, "{per_claim:.1} bytes per claim");
    assert_eq!(store.len(), claims.len());

    // The per-caller quota counts by expiry second: its memory does not grow with the rate.
    let quota = CallerQuota::new(usize::MAX);
    let owner = quota.owner(&caller);
    let region = Region::new(GLOBAL);
    for i in 0..200_000u64 {
        quota.reserve(owner, NOW + 60 + i % 90, NOW).unwrap();
    }
    let stats = region.change();
    let held = stats.bytes_allocated - stats.bytes_deallocated;
    println!("caller quota: {held} bytes for one caller with {} live claims", quota.live(owner, NOW));
    assert!(held < 16 * 1024, "{held} bytes");

    // The default store, filled until it refuses (its shards fill unevenly), holds 52.4 MB: 32
    // shards of 65 536 slots of 24 bytes and a control byte each.
    let store = InMemoryReplayStore::default();
    let region = Region::new(GLOBAL);
    let mut stored = 0u64;
    while store
        .claim(&ReplayClaim::signature_nonce(&stored.to_string(), NOW + 60, NOW - 270), NOW)
        .into_ready()
        .unwrap()
        .is_ok()
    {
        stored += 1;
    }
    let stats = region.change();
    let held = stats.bytes_allocated + stats.bytes_reallocated.max(0) as usize - stats.bytes_deallocated;
    println!("default in-memory replay store, full: {:.1} MB for {stored} claims", held as f64 / 1e6);
    assert!(held as f64 <= 52.5e6, "{held} bytes");
}
