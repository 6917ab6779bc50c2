//! The renewal task's key check against an identity server whose JWKS lies: it lacks the key
//! the server keeps signing WITs with (a stale cache in front of it, a lagging replica). A
//! forced renewal that brings back a WIT signed by that same key shows the JWKS is what is
//! wrong; the task then checks less and less often instead of renewing at every check.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::{get, post};
use serde_json::{Value, json};
use wimse_core::prelude::*;
use wimse_core::protocol::wit::WitIssuer;
use wimse_reqwest::{Bootstrap, IssuerCredentials};

#[derive(Clone)]
struct FakeIssuer {
    issuer: Arc<WitIssuer>,
    issued: Arc<AtomicUsize>,
}

async fn issue_wit(State(fake): State<FakeIssuer>, Json(body): Json<Value>) -> Json<Value> {
    fake.issued.fetch_add(1, Ordering::SeqCst);
    let sub: WorkloadId = body["sub"].as_str().unwrap().parse().unwrap();
    let jwk: Jwk = serde_json::from_value(body["jwk"].clone()).unwrap();
    let now = SystemClock.now();
    Json(json!({"wit": fake.issuer.issue(&sub, &jwk, now).unwrap(), "issued_at": now}))
}

/// A JWKS without the key the WITs are signed with.
async fn lying_jwks() -> Json<Value> {
    Json(json!({"keys": []}))
}

#[tokio::test]
async fn a_jwks_lacking_the_signing_key_slows_the_checks_down() {
    let logs = wimse_testkit::logs::Logs::global();
    let key = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("the-only-key");
    let fake = FakeIssuer { issuer: Arc::new(WitIssuer::new(key).lifetime(3600)), issued: Arc::default() };
    let issued = fake.issued.clone();
    let app = axum::Router::new()
        .route("/v1/wit", post(issue_wit))
        .route("/v1/bundle/jwks", get(lying_jwks))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let credentials = IssuerCredentials::builder(&base, "spiffe://prod.example/orders", Bootstrap::Token("t".into()))
        .key_check_interval(Some(Duration::from_millis(100)))
        .connect()
        .await
        .unwrap();
    let _renewal = credentials.spawn_renewal();
    // Checked every 50-100 ms without the back-off, that is 30 to 60 forced renewals in 3 s;
    // doubling from there, at most 6 checks fit (50+100+200+400+800+1600 ms at the earliest).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let renewals = issued.load(Ordering::SeqCst) - 1;
    assert!(renewals >= 1, "the missing key forced a renewal");
    assert!(renewals <= 7, "{renewals} forced renewals in 3 s: the lying JWKS is not backed off");
    assert!(!logs.lines_with(&["WARN", "signs with a key its JWKS does not list"]).is_empty(), "{}", logs.text());
}
