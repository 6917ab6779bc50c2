//! The verified-WIT cache: one signature check per WIT, never a stale or wrong answer.

use std::sync::Arc;

use crate::common::*;
use wimse_core::prelude::*;

fn setup() -> (Fixture, Verifier, Arc<FixedClock>) {
    let f = Fixture::new();
    let clock = Arc::new(FixedClock::new(NOW));
    let verifier = Verifier::new(f.trust.clone(), f.config()).unwrap().clock(clock.clone());
    (f, verifier, clock)
}

fn call(f: &Fixture, verifier: &Verifier, wit: &str, now: u64) -> Result<VerifiedCaller, Error> {
    let wpt = WptBuilder::new(&f.workload_key, wit, &format!("{ORIGIN}{PATH}")).sign(now).unwrap();
    verifier.verify_sync(&RequestView::new(PATH, &f.headers(wit, &wpt)))
}

#[test]
fn a_steady_caller_is_verified_once() {
    let (f, verifier, _) = setup();
    for _ in 0..5 {
        call(&f, &verifier, &f.wit, NOW).unwrap();
    }
    assert_eq!(verifier.cached_wits(), 1);
}

#[test]
fn cached_wits_still_expire() {
    let (f, verifier, clock) = setup();
    call(&f, &verifier, &f.wit, NOW).unwrap();
    let expiry = NOW - 60 + 3600;
    clock.set(expiry + 31);
    assert_eq!(call(&f, &verifier, &f.wit, expiry + 31).unwrap_err().kind(), &ErrorKind::ExpiredWit);
}

#[test]
fn anchor_changes_invalidate_the_cache() {
    let (f, verifier, _) = setup();
    call(&f, &verifier, &f.wit, NOW).unwrap();
    // The issuer key is rotated out: the cached verification no longer counts.
    let other = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("k2");
    verifier.trust().set(f.id.trust_domain(), TrustAnchors::new().key(other.public_key().clone()));
    assert_eq!(call(&f, &verifier, &f.wit, NOW).unwrap_err().kind(), &ErrorKind::UnknownKey);
    verifier.trust().remove(&f.id.trust_domain());
    assert_eq!(call(&f, &verifier, &f.wit, NOW).unwrap_err().kind(), &ErrorKind::UntrustedTrustDomain);
}

#[test]
fn invalid_tokens_never_enter_and_the_cache_is_bounded() {
    let f = Fixture::new();
    let mut config = f.config();
    config.wit_cache_capacity = 2;
    let verifier = Verifier::new(f.trust.clone(), config).unwrap().clock(FixedClock::new(NOW));
    for i in 0..50 {
        let mut forged = f.wit.clone();
        forged.push_str(&"A".repeat(i % 3 + 1));
        assert!(call(&f, &verifier, &forged, NOW).is_err());
    }
    assert_eq!(verifier.cached_wits(), 0);
    for _ in 0..4 {
        let wit = WitIssuer::new(f.issuer_key.clone()).issue(&f.id, f.workload_key.public_jwk(), NOW).unwrap();
        call(&f, &verifier, &wit, NOW).unwrap();
    }
    assert_eq!(verifier.cached_wits(), 2, "full: later WITs are verified but not cached");
    let mut disabled = f.config();
    disabled.wit_cache_capacity = 0;
    let verifier = Verifier::new(f.trust.clone(), disabled).unwrap().clock(FixedClock::new(NOW));
    call(&f, &verifier, &f.wit, NOW).unwrap();
    assert_eq!(verifier.cached_wits(), 0);
}

#[test]
fn stale_anchors_refuse_cached_wits_like_uncached_ones() {
    let (f, verifier, clock) = setup();
    let domain = f.id.trust_domain();
    let anchors = || TrustAnchors::new().key(f.issuer_key.public_key().clone());
    // A fetched bundle usable until NOW + 100 (its `max_stale`).
    verifier.trust().set(domain.clone(), anchors().with_valid_until(NOW + 100));
    call(&f, &verifier, &f.wit, NOW).unwrap();
    assert_eq!(verifier.cached_wits(), 1);
    clock.set(NOW + 100);
    // The cached WIT and a WIT never seen before get the same answer: 503.
    let cached = call(&f, &verifier, &f.wit, NOW + 100).unwrap_err();
    let fresh = WitIssuer::new(f.issuer_key.clone()).issue(&f.id, f.workload_key.public_jwk(), NOW + 50).unwrap();
    let uncached = call(&f, &verifier, &fresh, NOW + 100).unwrap_err();
    assert_eq!(cached.kind(), &ErrorKind::TrustAnchorsUnavailable);
    assert_eq!(uncached.kind(), cached.kind());
    assert_eq!(wimse_core::server::framing::Rejection::from_error(&cached).status(), 503);
    // A refreshed bundle brings both back.
    verifier.trust().set(domain, anchors().with_valid_until(NOW + 1000));
    call(&f, &verifier, &f.wit, NOW + 100).unwrap();
}
