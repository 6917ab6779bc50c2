//! One authorization decision over a 50-policy set: the rule lists of `Policy`, and the same
//! decision by Cedar policies (feature `cedar`), repeated (from the decision cache) and new. The caller carries a
//! Txn-Token with a delegation chain, so the Cedar context is complete.
//!
//! `cargo bench -p wimse-core --bench policy`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use wimse_core::prelude::*;
use wimse_core::protocol::txn::{NewTxnToken, TxnTokenIssuer, TxnTokenValidation};
use wimse_core::server::cedar::CedarPolicies;
use wimse_core::server::policy::{Policy, Rule};

const NOW: u64 = 1_800_000_000;
const AUD: &str = "https://payments.example/charge";
/// Policies in each set.
const POLICIES: usize = 50;

/// A verified caller `spiffe://prod.example/ns/w49` (matched by the last rule, the worst case
/// for the rule list), acting in a transaction for a user through an agent.
fn caller() -> VerifiedCaller {
    let issuer_key = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("k1");
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let domain: TrustDomain = "spiffe://prod.example".parse().unwrap();
    let id: WorkloadId = format!("spiffe://prod.example/ns/w{}", POLICIES - 1).parse().unwrap();
    let wit = WitIssuer::new(issuer_key.clone()).lifetime(86_000).issue(&id, key.public_jwk(), NOW).unwrap();
    let txn = NewTxnToken::new("user-1842", "orders.read")
        .requested_by("spiffe://prod.example/front")
        .acted_by("spiffe://prod.example/agents/planner".parse().unwrap());
    let txn = TxnTokenIssuer::new(issuer_key.clone(), &domain).issue(&txn, NOW).unwrap();
    let wpt = WptBuilder::new(&key, &wit, AUD).txn_token(&txn).sign(NOW).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("workload-identity-token", HeaderValue::from_str(&wit).unwrap());
    headers.insert("authorization", HeaderValue::from_str(&format!("WPT {wpt}")).unwrap());
    headers.insert("txn-token", HeaderValue::from_str(&txn).unwrap());
    let trust = TrustStore::new().with(domain.clone(), TrustAnchors::new().key(issuer_key.public_key().clone()));
    let config = VerifierConfig::new().origin("https://payments.example").txn_tokens(TxnTokenValidation::new(domain));
    let verifier = Verifier::new(trust, config).unwrap().clock(FixedClock::new(NOW));
    verifier.verify_sync(&RequestView::new("/charge", &headers)).unwrap()
}

fn decisions(c: &mut Criterion) {
    let caller = caller();
    let mut rules = Policy::named("rules").require(Rule::txn_scope("orders.read"));
    let mut text = String::new();
    for i in 0..POLICIES {
        let id = format!("spiffe://prod.example/ns/w{i}");
        rules = rules.allow(Rule::exact(&id).unwrap());
        text.push_str(&format!(
            "@id(\"w{i}\")\npermit(principal == Workload::\"{id}\", action == Action::\"GET\", resource) \
             when {{ context.txn_scope.contains(\"orders.read\") && context.actor_count <= 2 }};\n"
        ));
    }
    let cedar = Policy::cedar(CedarPolicies::new("cedar", "orders", &text, None).unwrap());
    assert!(rules.check_request(&caller, "GET", "/charge").is_ok());
    assert!(cedar.check_request(&caller, "GET", "/charge").is_ok());
    let mut group = c.benchmark_group("policy decision, 50 policies");
    group.bench_function("rule list", |b| {
        b.iter(|| black_box(rules.check_request(black_box(&caller), "GET", "/charge")))
    });
    // The same request again: answered from the set's decision cache.
    group.bench_function("cedar", |b| b.iter(|| black_box(cedar.check_request(black_box(&caller), "GET", "/charge"))));
    // A request never decided before (a new path each time): Cedar evaluates it.
    let mut n = 0u64;
    group.bench_function("cedar, first decision", |b| {
        b.iter(|| {
            n += 1;
            black_box(cedar.check_request(black_box(&caller), "GET", &format!("/charge/{n}")))
        })
    });
    group.finish();
}

criterion_group!(policy, decisions);
criterion_main!(policy);
