//! WIT and WPT validation on every compiled crypto backend.
//!
//! `cargo bench -p wimse-core` benches both backends (the dev-dependency enables `rust-crypto`
//! beside the default `aws-lc-rs`).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use wimse_core::prelude::*;
use wimse_core::protocol::wit::{WitValidation, validate_wit};
use wimse_core::protocol::wpt::{ProofContext, WptValidation, validate_wpt};

const NOW: u64 = 1_800_000_000;
const AUD: &str = "https://payments.example/charge";

/// A clock the bench moves forward, so replay-cache entries expire as they would in service.
#[derive(Debug, Clone)]
struct SharedClock(Arc<FixedClock>);

impl Clock for SharedClock {
    fn now(&self) -> u64 {
        self.0.now()
    }
}

struct Setup {
    wit: String,
    wpt: String,
    trust: TrustStore,
    workload_key: SigningKey,
}

fn setup(issuer_alg: Algorithm, workload_alg: Algorithm) -> Setup {
    let issuer_key = SigningKey::generate(issuer_alg).unwrap().with_kid("k1");
    let workload_key = SigningKey::generate(workload_alg).unwrap();
    let id: WorkloadId = "spiffe://prod.example/orders".parse().unwrap();
    let wit = WitIssuer::new(issuer_key.clone()).lifetime(86_000).issue(&id, workload_key.public_jwk(), NOW).unwrap();
    let wpt = WptBuilder::new(&workload_key, &wit, AUD).sign(NOW).unwrap();
    let trust = TrustStore::new().with(id.trust_domain(), TrustAnchors::new().key(issuer_key.public_key().clone()));
    Setup { wit, wpt, trust, workload_key }
}

fn benches(c: &mut Criterion) {
    for alg in [Algorithm::ES256, Algorithm::EdDSA] {
        let s = setup(alg, alg);
        for backend in Backend::available() {
            let id = format!("{}/{alg}", backend.name());
            let mut wit_cfg = WitValidation::default();
            wit_cfg.backend = backend;
            c.bench_with_input(BenchmarkId::new("wit_validate", &id), &s, |b, s| {
                b.iter(|| validate_wit(black_box(&s.wit), &s.trust, &wit_cfg, NOW).unwrap())
            });

            // The floor: one bare signature verification over a WPT-sized signing input, a
            // different message and signature each time (like the WPTs of real requests; one
            // fixed signature verifies measurably faster).
            let signed: Vec<(String, Vec<u8>)> = (0..256)
                .map(|_| {
                    let wpt = WptBuilder::new(&s.workload_key, &s.wit, AUD).sign(NOW).unwrap();
                    let message = wpt.rsplit_once('.').unwrap().0.to_owned();
                    let signature = s.workload_key.sign(backend, message.as_bytes()).unwrap();
                    (message, signature)
                })
                .collect();
            let public = s.workload_key.public_key();
            c.bench_with_input(BenchmarkId::new("bare_signature_verify", &id), &s, |b, _| {
                let mut next = signed.iter().cycle();
                b.iter(|| {
                    let (message, signature) = next.next().unwrap();
                    assert!(public.verify(backend, alg, black_box(message.as_bytes()), signature))
                })
            });
            // The client's floor: one bare signature over a WPT-sized input.
            let message = signed[0].0.as_bytes();
            c.bench_with_input(BenchmarkId::new("bare_sign", &id), &s, |b, s| {
                b.iter(|| s.workload_key.sign(backend, black_box(message)).unwrap())
            });

            // The client side: a fresh WPT per request, with the WIT's hash kept as a `Signer`
            // keeps it.
            let wit_hash = wimse_core::protocol::wit::token_hash(&s.wit);
            c.bench_with_input(BenchmarkId::new("wpt_sign", &id), &s, |b, s| {
                b.iter(|| {
                    WptBuilder::new(&s.workload_key, black_box(&s.wit), AUD)
                        .wit_hash(&wit_hash)
                        .backend(backend)
                        .sign(NOW)
                        .unwrap()
                })
            });

            let verified = validate_wit(&s.wit, &s.trust, &wit_cfg, NOW).unwrap();
            let mut wpt_cfg = WptValidation::default();
            wpt_cfg.backend = backend;
            let context = ProofContext::default();
            c.bench_with_input(BenchmarkId::new("wpt_validate", &id), &s, |b, s| {
                b.iter(|| validate_wpt(black_box(&s.wpt), &verified, &context, |a| a == AUD, &wpt_cfg, NOW).unwrap())
            });

            // The same floor measured as the whole request is below: each timed verification
            // follows the untimed signing of a fresh WPT, which leaves caches as cold as they
            // are for the whole request.
            c.bench_with_input(BenchmarkId::new("bare_signature_verify_after_signing", &id), &s, |b, s| {
                b.iter_batched(
                    || {
                        let wpt = WptBuilder::new(&s.workload_key, &s.wit, AUD).sign(NOW).unwrap();
                        let (message, signature) = wpt.rsplit_once('.').unwrap();
                        (message.to_owned(), wimse_core::jose::b64url_decode(signature).unwrap())
                    },
                    |(message, signature)| assert!(public.verify(backend, alg, message.as_bytes(), &signature)),
                    criterion::BatchSize::SmallInput,
                )
            });

            // The whole request path: framing, WIT (from the verified-WIT cache after the first
            // request), WPT, in-memory replay cache. Proofs are made
            // in the untimed setup so each timed call sees a fresh `jti`; the clock advances one
            // second per 100 requests, so about 9000 proofs are live in the cache at any time.
            let clock = SharedClock(Arc::new(FixedClock::new(NOW)));
            let verifier = Verifier::new(
                s.trust.clone(),
                VerifierConfig::new().origin("https://payments.example").backend(backend),
            )
            .unwrap()
            .clock(clock.clone());
            verify_requests(c, BenchmarkId::new("verify_request", &id), &s, &verifier, &clock);
        }
    }
}

/// The whole request path: framing, WIT (from the verified-WIT cache after the first request),
/// WPT, in-memory replay cache. Proofs are made in the untimed setup so each timed call sees a
/// fresh `jti`; the clock advances one second per 100 requests, so about 9000 proofs are live in
/// the cache at any time.
fn verify_requests(c: &mut Criterion, id: BenchmarkId, s: &Setup, verifier: &Verifier, clock: &SharedClock) {
    let mut made = 0u64;
    c.bench_with_input(id, s, |b, s| {
        b.iter_batched(
            || {
                made += 1;
                if made.is_multiple_of(100) {
                    clock.0.advance(1);
                }
                let wpt = WptBuilder::new(&s.workload_key, &s.wit, AUD).sign(clock.now()).unwrap();
                let mut headers = HeaderMap::new();
                headers.insert("workload-identity-token", HeaderValue::from_str(&s.wit).unwrap());
                headers.insert("authorization", HeaderValue::from_str(&format!("WPT {wpt}")).unwrap());
                headers
            },
            |headers| verifier.verify_sync(&RequestView::new("/charge", &headers)).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
}

/// The cost of an audit log: a request verified with and without one (the record handed to the
/// writer's queue), and a record's whole cost including the writer's work (hashing, writing,
/// a checkpoint every 1 000): `iters` records written and the log closed, per record.
fn audit(c: &mut Criterion) {
    use wimse_core::server::audit_log::{AuditEvent, AuditLog, AuditOptions};
    let s = setup(Algorithm::ES256, Algorithm::ES256);
    let dir = std::env::temp_dir().join(format!("wimse-bench-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let log = AuditLog::open(
        dir.join("verify.jsonl"),
        "spiffe://prod.example/payments",
        key.clone(),
        AuditOptions::default(),
    )
    .unwrap();
    let clock = SharedClock(Arc::new(FixedClock::new(NOW)));
    let verifier = Verifier::new(s.trust.clone(), VerifierConfig::new().origin("https://payments.example"))
        .unwrap()
        .clock(clock.clone())
        .audit_log(log.clone());
    verify_requests(c, BenchmarkId::new("verify_request_audited", "aws-lc-rs/ES256"), &s, &verifier, &clock);
    println!("audit records dropped (writer behind): {}", log.dropped());

    let event = AuditEvent {
        request_id: Some("Wb6vJ1rX4m0aQ2lKc9s8Tg".into()),
        txn: Some("K6Ml7L1Lm8ousHE2KqHY6A".into()),
        caller: Some("spiffe://prod.example/front".into()),
        proof: Some("wpt".into()),
        subject: Some("alice".into()),
        actors: vec!["spiffe://prod.example/agents/planner".into()],
        action: Some("POST".into()),
        resource: Some("/charge".into()),
        decision: "allow".into(),
        ..Default::default()
    };
    let mut round = 0;
    c.bench_function("audit_record_written", |b| {
        b.iter_custom(|iters| {
            round += 1;
            let path = dir.join(format!("written-{round}.jsonl"));
            let options = AuditOptions { queue: 1 << 20, ..Default::default() };
            let log = AuditLog::open(&path, "spiffe://prod.example/payments", key.clone(), options).unwrap();
            let start = std::time::Instant::now();
            for _ in 0..iters {
                log.record(black_box(event.clone())).unwrap();
            }
            log.close().unwrap();
            let elapsed = start.elapsed();
            let _ = std::fs::remove_file(&path);
            elapsed
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Signing and verifying an HTTP message signature over a request, then over its response,
/// each with a 1 KiB body (the Content-Digest is computed and checked inside).
fn signatures(c: &mut Criterion) {
    use wimse_core::protocol::httpsig::{
        self, OutgoingRequest, OutgoingResponse, RequestParts, ResponseParts, SignOptions, SignatureValidation,
    };
    let body = vec![b'x'; 1024];
    for alg in [Algorithm::ES256, Algorithm::EdDSA] {
        let s = setup(alg, alg);
        let wit = validate_wit(&s.wit, &s.trust, &WitValidation::default(), NOW).unwrap();
        for backend in Backend::available() {
            let id = format!("{}/{alg}", backend.name());
            let mut options = SignOptions::default();
            options.backend = backend;
            let sign = |headers: &mut HeaderMap, sign_response: bool| {
                headers.insert("content-type", HeaderValue::from_static("application/octet-stream"));
                let request = OutgoingRequest {
                    method: "POST",
                    scheme: "https",
                    authority: "payments.example",
                    path: "/charge",
                    query: Some("id=7"),
                    body: Some(&body),
                    aud: AUD,
                    sign_response,
                };
                httpsig::sign_request(headers, &request, &s.wit, &s.workload_key, &options, NOW).unwrap()
            };
            c.bench_function(&format!("httpsig_sign_request_1k/{id}"), |b| {
                b.iter(|| {
                    let mut headers = HeaderMap::new();
                    sign(&mut headers, false)
                })
            });
            let mut headers = HeaderMap::new();
            sign(&mut headers, false);
            let mut cfg = SignatureValidation::default();
            cfg.backend = backend;
            let parts = RequestParts {
                method: "POST",
                scheme: "https",
                authority: "payments.example",
                path: "/charge",
                query: Some("id=7"),
                headers: &headers,
            };
            c.bench_function(&format!("httpsig_verify_request_1k/{id}"), |b| {
                b.iter(|| {
                    httpsig::verify_request(black_box(&parts), Some(&body), &wit, |a| a == AUD, &cfg, NOW).unwrap()
                })
            });

            // A signed response (1 KiB body) to a request that asked for one.
            let mut request_headers = HeaderMap::new();
            let sent = sign(&mut request_headers, true);
            let request = RequestParts { headers: &request_headers, ..parts };
            let sign_response = |headers: &mut HeaderMap| {
                headers.insert("content-type", HeaderValue::from_static("application/octet-stream"));
                let response = OutgoingResponse { status: 200, body: Some(&body), request_nonce: &sent.nonce };
                httpsig::sign_response(headers, &response, &request, &s.wit, &s.workload_key, &options, NOW).unwrap()
            };
            c.bench_function(&format!("httpsig_sign_response_1k/{id}"), |b| {
                b.iter(|| {
                    let mut headers = HeaderMap::new();
                    sign_response(&mut headers);
                    headers
                })
            });
            let mut response_headers = HeaderMap::new();
            sign_response(&mut response_headers);
            let response = ResponseParts { status: 200, headers: &response_headers };
            c.bench_function(&format!("httpsig_verify_response_1k/{id}"), |b| {
                b.iter(|| {
                    httpsig::verify_response(black_box(&request), &response, Some(&body), &wit, &sent.nonce, &cfg, NOW)
                        .unwrap()
                })
            });
        }
    }
}

/// What a Txn-Token adds per request: its validation alone (one signature check), and the whole
/// request path with a Txn-Token bound by `tth`, once for a steady transaction (its token
/// verified once, then from the cache) and once with a new transaction per request.
fn txn_tokens(c: &mut Criterion) {
    use wimse_core::protocol::txn::{NewTxnToken, TxnTokenIssuer, TxnTokenValidation, validate};
    let alg = Algorithm::ES256;
    let domain: TrustDomain = "spiffe://prod.example".parse().unwrap();
    let issuer_key = SigningKey::generate(alg).unwrap().with_kid("k1");
    let workload_key = SigningKey::generate(alg).unwrap();
    let id: WorkloadId = "spiffe://prod.example/orders".parse().unwrap();
    let wit = WitIssuer::new(issuer_key.clone()).lifetime(86_000).issue(&id, workload_key.public_jwk(), NOW).unwrap();
    let trust = TrustStore::new().with(domain.clone(), TrustAnchors::new().key(issuer_key.public_key().clone()));
    let tts = TxnTokenIssuer::new(issuer_key, &domain).lifetime(600);
    let new_txn = |n: u64, at: u64| {
        let mut tctx = serde_json::Map::new();
        tctx.insert("order".into(), serde_json::Value::from(n));
        tts.issue(
            &NewTxnToken::new("user-1842", "orders.purchase").requested_by("spiffe://prod.example/front").context(tctx),
            at,
        )
        .unwrap()
    };
    for backend in Backend::available() {
        let bench_id = format!("{}/{alg}", backend.name());
        let mut cfg = TxnTokenValidation::new(domain.clone());
        cfg.backend = backend;
        let token = new_txn(0, NOW);
        c.bench_function(&format!("txn_token_validate/{bench_id}"), |b| {
            b.iter(|| validate(black_box(&token), &trust, &cfg, NOW).unwrap())
        });
        for (name, steady) in [("verify_request_with_txn_steady", true), ("verify_request_with_txn_new", false)] {
            let clock = SharedClock(Arc::new(FixedClock::new(NOW)));
            let verifier = Verifier::new(
                trust.clone(),
                VerifierConfig::new()
                    .origin("https://payments.example")
                    .backend(backend)
                    .txn_tokens(TxnTokenValidation::new(domain.clone()).required()),
            )
            .unwrap()
            .clock(clock.clone());
            let mut made = 0u64;
            // The clock moves on (so claims expire and the replay store stays small); the steady
            // caller's token is renewed halfway through its 600-second life, as a client would.
            let mut steady_token = (token.clone(), NOW);
            c.bench_function(&format!("{name}/{bench_id}"), |b| {
                b.iter_batched(
                    || {
                        made += 1;
                        if made.is_multiple_of(100) {
                            clock.0.advance(1);
                        }
                        let now = clock.now();
                        if now >= steady_token.1 + 300 {
                            steady_token = (new_txn(0, now), now);
                        }
                        let txn = if steady { steady_token.0.clone() } else { new_txn(made, now) };
                        let wpt = WptBuilder::new(&workload_key, &wit, AUD).txn_token(&txn).sign(clock.now()).unwrap();
                        let mut headers = HeaderMap::new();
                        headers.insert("workload-identity-token", HeaderValue::from_str(&wit).unwrap());
                        headers.insert("authorization", HeaderValue::from_str(&format!("WPT {wpt}")).unwrap());
                        headers.insert("txn-token", HeaderValue::from_str(&txn).unwrap());
                        headers
                    },
                    |headers| verifier.verify_sync(&RequestView::new("/charge", &headers)).unwrap(),
                    criterion::BatchSize::SmallInput,
                )
            });
        }
    }
}

criterion_group!(validate, benches, signatures, txn_tokens, audit);
criterion_main!(validate);
