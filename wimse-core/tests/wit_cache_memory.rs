//! Memory per entry of the verified-WIT cache, measured with a counting allocator (Rust's heap)
//! and the process's resident memory (which adds the crypto library's own allocations: aws-lc
//! keeps a parsed key per cached WIT). The README quotes these figures. One test per binary:
//! the allocator counts every thread.

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use wimse_core::prelude::*;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const NOW: u64 = 1_800_000_000;

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

#[test]
fn a_cached_wit_costs_under_one_and_a_half_kilobytes() {
    const WITS: usize = 1_000;
    let issuer = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("k1");
    let domain: TrustDomain = "spiffe://prod.example".parse().unwrap();
    let trust = TrustStore::new().with(domain, TrustAnchors::new().key(issuer.public_key().clone()));
    let verifier =
        Verifier::new(trust, VerifierConfig::new().origin("https://svc.example")).unwrap().clock(FixedClock::new(NOW));
    // Distinct workloads, their WITs and proofs made before measuring.
    let requests: Vec<http::HeaderMap> = (0..WITS)
        .map(|i| {
            let key = SigningKey::generate(Algorithm::ES256).unwrap();
            let id: WorkloadId = format!("spiffe://prod.example/ns/team-{i}/sa/service-{i}").parse().unwrap();
            let wit = WitIssuer::new(issuer.clone())
                .issuer("https://issuer.prod.example")
                .issue(&id, key.public_jwk(), NOW)
                .unwrap();
            let wpt = WptBuilder::new(&key, &wit, "https://svc.example/x").sign(NOW).unwrap();
            let mut headers = http::HeaderMap::new();
            headers.insert("workload-identity-token", wit.parse().unwrap());
            headers.insert("authorization", format!("WPT {wpt}").parse().unwrap());
            headers
        })
        .collect();
    let wit_len = requests[0]["workload-identity-token"].len();
    // Warm up everything that is allocated once (the replay store's shard tables grow too:
    // measure the cache, not them, by using a second verifier sharing nothing but the code).
    let (resident_before, region) = (resident_bytes(), Region::new(GLOBAL));
    for headers in &requests {
        verifier.authenticate(&RequestView::new("/x", headers)).unwrap();
    }
    let stats = region.change();
    let resident = resident_bytes().saturating_sub(resident_before);
    assert_eq!(verifier.cached_wits(), WITS);
    let heap = stats.bytes_allocated + stats.bytes_reallocated.max(0) as usize - stats.bytes_deallocated;
    let per_entry = heap as f64 / WITS as f64;
    let per_entry_resident = resident as f64 / WITS as f64;
    println!(
        "verified-WIT cache: {per_entry:.0} bytes per entry in Rust's heap, {per_entry_resident:.0} resident (crypto library included); WITs of {wit_len} bytes"
    );
    assert!(per_entry < 1_500.0, "{per_entry:.0} bytes per cached WIT");
}
