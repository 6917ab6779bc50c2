//! Replay protection under abuse and faults, on a real axum server: a stalled Redis does not
//! freeze the runtime, one flooding caller cannot lock the others out, and a caller the policy
//! refuses costs no replay slot.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use wimse_axum::{Caller, WimseLayer};
use wimse_core::prelude::*;
use wimse_core::replay::RedisReplayStore;
use wimse_testkit::servers::RedisServer;
use wimse_testkit::{ALLOWED, DENIED, Deployment};

async fn whoami(Caller(caller): Caller) -> String {
    caller.id().to_string()
}

async fn serve(app: impl FnOnce(String) -> Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = app(base.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

fn everyone_in(deployment: &Deployment) -> Policy {
    let _ = deployment;
    Policy::named("prod").allow(Rule::trust_domain("spiffe://prod.example".parse().unwrap()))
}

/// The server runs on this test's single-threaded runtime; the client runs on a thread of its
/// own. If a stalled Redis blocked the runtime thread, `/health` could not be answered.
#[tokio::test(flavor = "current_thread")]
async fn a_stalled_redis_does_not_block_the_runtime() {
    let Some(redis) = RedisServer::start() else { return };
    let deployment = Arc::new(Deployment::new());
    let store = RedisReplayStore::new(&redis.url()).unwrap().timeout(Duration::from_secs(30));
    let arrived = Arc::new(AtomicBool::new(false));
    let seen = arrived.clone();
    let base = serve(|base| {
        let verifier = deployment.verifier(&base).replay_store(store);
        let protected = Router::new().route("/whoami", get(whoami)).layer(WimseLayer::new(verifier));
        Router::new().merge(protected).route("/health", get(|| async { "ok" })).layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                if req.uri().path() == "/whoami" {
                    seen.store(true, Ordering::SeqCst);
                }
                next.run(req)
            },
        ))
    })
    .await;

    redis.pause();
    let (client_base, client_deployment) = (base.clone(), deployment.clone());
    let client = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let whoami = client_deployment.client(ALLOWED).get(format!("{client_base}/whoami")).send();
            let pending = tokio::spawn(async move { whoami.await.map(|r| r.status().as_u16()) });
            // Generous bounds turn a frozen server into a failure instead of a hung test.
            let plain = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
            while !arrived.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let health = plain.get(format!("{client_base}/health")).send().await.map(|r| r.status().as_u16());
            (health, pending.is_finished())
        })
    });
    // Serve both requests on this thread while the client waits.
    let (health, claim_finished) = loop {
        if client.is_finished() {
            break client.join().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(health.expect("/health answered while the replay claim waits on a frozen Redis"), 200);
    assert!(!claim_finished, "the WIMSE request was still waiting for Redis when /health answered");
    redis.resume();
}

#[tokio::test]
async fn one_flooding_caller_gets_429_while_others_keep_working() {
    let deployment = Deployment::new();
    let quota = 20;
    let base = serve(|base| {
        let config = VerifierConfig::new().origin(&base).caller_quota(quota);
        let verifier = Verifier::new(deployment.trust(), config).unwrap();
        Router::new().route("/whoami", get(whoami)).layer(WimseLayer::new(verifier).policy(everyone_in(&deployment)))
    })
    .await;
    let url = format!("{base}/whoami");
    let flooder = deployment.client(ALLOWED);
    let other = deployment.client("spiffe://prod.example/other");
    for _ in 0..quota {
        assert_eq!(flooder.get(&url).send().await.unwrap().status(), 200);
    }
    let refused = flooder.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=90).contains(&retry), "Retry-After {retry}: when the oldest proof ends");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["reason"], "replay_quota_exceeded");
    // Everyone else is unaffected (no 503, no 429).
    for _ in 0..quota {
        let response = other.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "spiffe://prod.example/other");
    }
}

#[tokio::test]
async fn a_caller_the_policy_refuses_leaves_the_replay_store_empty() {
    let deployment = Deployment::new();
    let store = Arc::new(InMemoryReplayStore::new(10));
    let verifier_store = store.clone();
    let base = serve(|base| {
        let verifier = deployment.verifier(&base).replay_store(verifier_store);
        Router::new().route("/whoami", get(whoami)).layer(WimseLayer::new(verifier).policy(deployment.policy()))
    })
    .await;
    let url = format!("{base}/whoami");
    // Far more valid proofs than the store holds: all refused by the policy, none stored.
    let denied = deployment.client(DENIED);
    for _ in 0..50 {
        assert_eq!(denied.get(&url).send().await.unwrap().status(), 403);
    }
    assert!(store.is_empty(), "a refused caller took {} replay slots", store.len());
    let allowed = deployment.client(ALLOWED).get(&url).send().await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(store.len(), 1);
}
