//! Bundles that caches, CDNs and conditional requests can serve: the identity server's bundle
//! endpoints send `ETag` and `Cache-Control` and answer `If-None-Match` with 304; a thousand
//! verifiers (`wimse_reqwest::BundleSource`, as tasks) following one bundle through an
//! on-demand rotation fetch it whole once per change, and are answered 304 otherwise.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use wimse_core::protocol::trust::{TrustHandle, TrustStore};
use wimse_core::time::SystemClock;
use wimse_issuer::{IdentityServer, IssuerConfig};
use wimse_reqwest::BundleSource;

const VERIFIERS: usize = 1000;

fn config(name: &str) -> IssuerConfig {
    let dir = std::env::temp_dir().join(format!("wimse-issuer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    serde_json::from_value(json!({
        "trust_domain": "spiffe://prod.example",
        "key_store": dir.join("keys.json"),
        "refresh_hint": 2,
        "dev_mode": true,
        "clients": [{"name": "demo", "dev_secret": "a-bundle-caching-secret", "allowed": ["spiffe://prod.example/demo"], "max_lifetime": 60}]
    }))
    .unwrap()
}

/// Per verifier (the `v` query parameter): its whole-bundle fetches (200) and its 304s.
type Counts = Arc<Mutex<HashMap<String, (u32, u32)>>>;

async fn serve(server: Arc<IdentityServer>, counts: Counts) -> String {
    let counting = move |request: axum::extract::Request, next: axum::middleware::Next| {
        let counts = counts.clone();
        async move {
            let verifier = request.uri().query().unwrap_or_default().to_owned();
            let response = next.run(request).await;
            let mut counts = counts.lock().unwrap();
            let entry = counts.entry(verifier).or_default();
            match response.status().as_u16() {
                200 => entry.0 += 1,
                304 => entry.1 += 1,
                other => panic!("unexpected {other}"),
            }
            response
        }
    };
    let app = wimse_issuer::router(server).layer(axum::middleware::from_fn(counting));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await.unwrap()
    });
    base
}

#[tokio::test]
async fn bundles_carry_an_etag_and_answer_304_while_unchanged() {
    let server = Arc::new(IdentityServer::open(config("etag"), SystemClock).await.unwrap());
    let base = serve(server.clone(), Counts::default()).await;
    let http = reqwest::Client::new();
    for path in ["/v1/bundle/spiffe", "/v1/bundle/jwks", "/v1/bundle/x509"] {
        let first = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(first.status(), 200);
        let etag = first.headers()["etag"].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() > 10, "{etag}");
        assert_eq!(first.headers()["cache-control"], "public, max-age=1", "half the refresh hint");
        let again = http.get(format!("{base}{path}")).header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(again.headers()["etag"], etag.as_str());
        assert!(again.bytes().await.unwrap().is_empty());
        // A list, a weak form and `*` match; another tag does not.
        for matching in [format!("\"x\", {etag}"), format!("W/{etag}"), "*".to_owned()] {
            let answer = http.get(format!("{base}{path}")).header("if-none-match", matching).send().await.unwrap();
            assert_eq!(answer.status(), 304, "{path}");
        }
        let other = http.get(format!("{base}{path}")).header("if-none-match", "\"other\"").send().await.unwrap();
        assert_eq!(other.status(), 200);
    }
    // A change of the published keys changes the tag.
    let before = http.get(format!("{base}/v1/bundle/spiffe")).send().await.unwrap().headers()["etag"].clone();
    server.prepare_key().await.unwrap();
    let after =
        http.get(format!("{base}/v1/bundle/spiffe")).header("if-none-match", before.clone()).send().await.unwrap();
    assert_eq!(after.status(), 200);
    assert_ne!(after.headers()["etag"], before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_verifiers_fetch_the_bundle_once_per_change_and_304_otherwise() {
    let server = Arc::new(IdentityServer::open(config("herd"), SystemClock).await.unwrap());
    let counts = Counts::default();
    let base = serve(server.clone(), counts.clone()).await;
    let domain: wimse_core::id::TrustDomain = "spiffe://prod.example".parse().unwrap();
    let client = reqwest::Client::new();
    let mut verifiers = Vec::new();
    for i in 0..VERIFIERS {
        let trust = TrustHandle::new(TrustStore::new());
        let source = BundleSource::new(domain.clone(), format!("{base}/v1/bundle/spiffe?v{i}")).client(client.clone());
        verifiers.push((trust.clone(), source.spawn(trust)));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    // An on-demand rotation: the prepared key published, then activated two hints later
    // (two changes of the bundle).
    let prepared = server.prepare_key().await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.activate_key(false).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;

    let counts = counts.lock().unwrap().clone();
    assert_eq!(counts.len(), VERIFIERS, "every verifier fetched");
    let (full, not_modified): (u32, u32) = counts.values().fold((0, 0), |(f, n), (a, b)| (f + a, n + b));
    // One whole fetch at start and one per change, at most; everything else a 304.
    let most = counts.values().map(|(f, _)| *f).max().unwrap();
    assert!(most <= 3, "a verifier fetched the whole bundle {most} times for 2 changes");
    assert!(not_modified as usize > VERIFIERS * 3, "{full} whole fetches, {not_modified} 304s");
    println!("{VERIFIERS} verifiers over 14 s, 2 bundle changes: {full} whole fetches, {not_modified} 304s");
    // And every verifier holds the rotated key.
    for (trust, _) in &verifiers {
        assert!(trust.read(|store| {
            store.get(&domain).is_some_and(|anchors| anchors.keys().iter().any(|k| k.kid() == Some(prepared.as_str())))
        }));
    }
    for (_, task) in verifiers {
        task.abort();
    }
}

/// A workload's periodic check that its signing key is still published is conditional: after
/// the first JWKS, the identity server answers 304s; a rotation's new JWKS is read whole once.
#[tokio::test]
async fn key_checks_of_workloads_are_conditional() {
    let server = Arc::new(IdentityServer::open(config("key-checks"), SystemClock).await.unwrap());
    let answers: Arc<Mutex<Vec<(String, u16)>>> = Arc::default();
    let seen = answers.clone();
    let app = wimse_issuer::router(server.clone()).layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let seen = seen.clone();
            async move {
                let path = request.uri().path().to_owned();
                let response = next.run(request).await;
                seen.lock().unwrap().push((path, response.status().as_u16()));
                response
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await.unwrap()
    });
    let bootstrap = wimse_reqwest::Bootstrap::Token("a-bundle-caching-secret".into());
    let credentials = wimse_reqwest::IssuerCredentials::builder(&base, "spiffe://prod.example/demo", bootstrap)
        .key_check_interval(Some(Duration::from_millis(200)))
        .connect()
        .await
        .unwrap();
    let _renewal = credentials.spawn_renewal();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.prepare_key().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let checks: Vec<u16> =
        answers.lock().unwrap().iter().filter(|(p, _)| p == "/v1/bundle/jwks").map(|(_, s)| *s).collect();
    let whole = checks.iter().filter(|s| **s == 200).count();
    assert_eq!(whole, 2, "the first JWKS and the rotated one: {checks:?}");
    assert!(checks.iter().filter(|s| **s == 304).count() >= 4, "{checks:?}");
}
