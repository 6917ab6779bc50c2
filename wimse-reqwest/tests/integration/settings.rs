//! A verifier built from settings alone follows an identity server's bundle URL: fetched at
//! start, then kept current as the keys rotate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use wimse_core::config::Settings;
use wimse_core::prelude::*;
use wimse_core::protocol::wit::WitIssuer;
use wimse_core::protocol::wpt::WptBuilder;

const ORIGIN: &str = "https://orders.example";

fn now() -> u64 {
    SystemClock.now()
}

/// A SPIFFE bundle of `issuer`'s key at `sequence`.
fn bundle(issuer: &SigningKey, sequence: u64) -> String {
    let mut jwk = serde_json::to_value(issuer.public_jwk()).unwrap();
    jwk["use"] = json!("wit-svid");
    json!({"keys": [jwk], "spiffe_sequence": sequence, "spiffe_refresh_hint": 300}).to_string()
}

/// Serves `GET /bundle` from `current`; returns the URL.
async fn serve_bundle(current: Arc<Mutex<String>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/bundle", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/bundle",
        axum::routing::get(move || {
            let current = current.clone();
            async move { current.lock().unwrap().clone() }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// A request from `spiffe://prod.example/front` with a WIT from `issuer`, through `verifier`.
fn call(verifier: &Verifier, issuer: &SigningKey) -> Result<WorkloadId, Error> {
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let id: WorkloadId = "spiffe://prod.example/front".parse().unwrap();
    let wit = WitIssuer::new(issuer.clone()).issue(&id, key.public_jwk(), now()).unwrap();
    let wpt = WptBuilder::new(&key, &wit, &format!("{ORIGIN}/orders")).sign(now()).unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("workload-identity-token", wit.parse().unwrap());
    headers.insert("authorization", format!("WPT {wpt}").parse().unwrap());
    verifier.verify_sync(&RequestView::new("/orders", &headers)).map(|caller| caller.id().clone())
}

fn settings(trust: Value) -> Settings {
    Settings::from_json(&json!({"verifier": {"origins": [ORIGIN], "trust": [trust]}}).to_string()).unwrap()
}

#[tokio::test]
async fn a_settings_only_service_follows_key_rotation() {
    let first = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("issuer-1");
    let current = Arc::new(Mutex::new(bundle(&first, 1)));
    let url = serve_bundle(current.clone()).await;
    let settings = settings(json!({"trust_domain": "spiffe://prod.example", "bundle_url": url,
                                   "min_refresh_interval": 1, "max_stale": 600, "fetch_timeout_ms": 2000}));
    // wimse-core alone cannot follow it, and says who can.
    let refused = settings.verifier().unwrap_err();
    assert!(refused.detail().unwrap().contains("wimse_reqwest::verifier_from_settings"), "{refused:?}");

    let verifier = wimse_reqwest::verifier_from_settings(&settings.verifier).await.unwrap();
    assert_eq!(call(&verifier, &first).unwrap().as_str(), "spiffe://prod.example/front");

    // The identity server rotates: the new key's first WIT is refused as unknown, which asks
    // for an early refresh; the background refresh then brings the new key in.
    let second = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("issuer-2");
    *current.lock().unwrap() = bundle(&second, 2);
    assert_eq!(call(&verifier, &second).unwrap_err().kind(), &ErrorKind::UnknownKey);
    // Bounded only so a regression fails instead of hanging.
    tokio::time::timeout(Duration::from_secs(30), async {
        while call(&verifier, &second).is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the rotated key is followed");
    assert_eq!(call(&verifier, &first).unwrap_err().kind(), &ErrorKind::UnknownKey, "the old key is gone");
}

#[tokio::test]
async fn bundle_urls_are_checked_at_start() {
    // Plaintext only to loopback: keys fetched over the network in the clear could be anyone's.
    let plaintext = settings(json!({"trust_domain": "spiffe://prod.example", "bundle_url": "http://issuer.example/b"}));
    let err = wimse_reqwest::verifier_from_settings(&plaintext.verifier).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration);
    assert!(err.detail().unwrap().starts_with("verifier.trust[0].bundle_url"), "{err:?}");
    // Nothing answers: the service does not start, and the error names the entry.
    let port = wimse_testkit::servers::free_port();
    let down =
        settings(json!({"trust_domain": "spiffe://prod.example", "bundle_url": format!("http://127.0.0.1:{port}/b")}));
    let err = wimse_reqwest::verifier_from_settings(&down.verifier).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::TrustAnchorsUnavailable);
    assert!(err.detail().unwrap().starts_with("verifier.trust[0].bundle_url http://127.0.0.1"), "{err:?}");
    // File entries are read as wimse-core reads them.
    let mixed = settings(json!({"trust_domain": "spiffe://prod.example", "file": "/nonexistent/anchor.json"}));
    let err = wimse_reqwest::verifier_from_settings(&mixed.verifier).await.unwrap_err();
    assert!(err.detail().unwrap().contains("verifier.trust[0].file"), "{err:?}");
}
