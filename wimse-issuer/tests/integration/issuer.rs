//! A real identity server on loopback: bootstrap authentication, issuance policy, bundles,
//! key rotation and restarts.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::net::TcpListener;
use wimse_core::jose::{Backend, jws};
use wimse_core::prelude::*;
use wimse_core::protocol::wit::{WitValidation, validate_wit};
use wimse_issuer::{IdentityServer, IssuerConfig};

const NOW: u64 = 1_800_000_000;
const PLATFORM_ISS: &str = "https://kubernetes.default.svc";

struct Platform {
    key: SigningKey,
}

impl Platform {
    fn new() -> Self {
        Self { key: SigningKey::generate(Algorithm::ES256).unwrap().with_kid("k8s-1") }
    }

    /// A service-account token as a Kubernetes cluster would project it.
    fn token(&self, iss: &str, sub: &str, exp: u64) -> String {
        let claims = json!({"iss": iss, "sub": sub, "aud": ["wimse-issuer"], "exp": exp, "iat": NOW - 10});
        jws::sign("JWT", Some("k8s-1"), &claims, &self.key, Backend::default()).unwrap()
    }
}

fn config(platform: &Platform, store: &std::path::Path) -> Value {
    json!({
        "trust_domain": "spiffe://prod.example",
        "issuer": "https://issuer.prod.example",
        "key_store": store,
        "rotation_period": 3600,
        "platforms": [{"name": "cluster", "issuer": PLATFORM_ISS, "audience": "wimse-issuer",
                       "jwks": {"keys": [platform.key.public_jwk()]}}],
        "clients": [
            {"name": "payments-sa", "platform": "cluster", "subject": "system:serviceaccount:prod:payments",
             "allowed": ["spiffe://prod.example/ns/prod/sa/payments"], "max_lifetime": 1800},
            {"name": "batch", "platform": "cluster", "subject": "system:serviceaccount:prod:batch",
             "allowed_prefixes": ["spiffe://prod.example/ns/batch"], "max_lifetime": 600}
        ]
    })
}

fn store_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wimse-issuer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("keys.json")
}

async fn serve(server: Arc<IdentityServer>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = wimse_issuer::router(server).into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

async fn request_wit(base: &str, bootstrap: &str, sub: &str, key: &SigningKey) -> (u16, Value) {
    let body = json!({"sub": sub, "jwk": key.public_jwk(), "lifetime": 3600});
    let response =
        reqwest::Client::new().post(format!("{base}/v1/wit")).bearer_auth(bootstrap).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn anchors(base: &str) -> TrustStore {
    let bundle = reqwest::get(format!("{base}/v1/bundle/spiffe")).await.unwrap().text().await.unwrap();
    TrustStore::new()
        .with("spiffe://prod.example".parse().unwrap(), TrustAnchors::from_spiffe_bundle_json(&bundle).unwrap())
}

fn validate(wit: &str, trust: &TrustStore, now: u64) -> Result<WorkloadId, Error> {
    validate_wit(wit, trust, &WitValidation::default(), now).map(|w| w.subject().clone())
}

#[tokio::test]
async fn issuance_policy_bootstrap_and_bundles() {
    let platform = Platform::new();
    let clock = Arc::new(FixedClock::new(NOW));
    let config: IssuerConfig = serde_json::from_value(config(&platform, &store_path("policy"))).unwrap();
    let server = Arc::new(IdentityServer::open(config, clock.clone()).await.unwrap());
    let base = serve(server.clone()).await;
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let payments = "spiffe://prod.example/ns/prod/sa/payments";
    let sa = "system:serviceaccount:prod:payments";
    // A refusal over HTTP: its status and reason; and the check that failed, which the problem
    // body does not say, from the same request made to the server directly.
    let refused = |bootstrap: String, sub: &'static str| {
        let (base, server, key) = (&base, &server, &key);
        async move {
            let (status, body) = request_wit(base, &bootstrap, sub, key).await;
            let error = server.issue_wit(&bootstrap, sub, key.public_jwk(), Some(3600)).await.unwrap_err();
            (
                status,
                body["reason"].as_str().unwrap_or_default().to_owned(),
                error.detail().unwrap_or_default().to_owned(),
            )
        }
    };
    let says = |status: u16, reason: &str, detail: &str| (status, reason.to_owned(), detail.to_owned());

    let (status, body) = request_wit(&base, &platform.token(PLATFORM_ISS, sa, NOW + 600), payments, &key).await;
    assert_eq!(status, 200, "{body}");
    let wit = body["wit"].as_str().unwrap();
    assert_eq!(body["expires_at"], NOW + 1800, "capped at the client's max_lifetime");
    // A lifetime of 0 would be dead on arrival: refused, saying what to send.
    let zero = json!({"sub": payments, "jwk": key.public_jwk(), "lifetime": 0});
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/wit"))
        .bearer_auth(platform.token(PLATFORM_ISS, sa, NOW + 600))
        .json(&zero)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let dead: Value = response.json().await.unwrap();
    assert_eq!(dead["reason"], "invalid_lifetime", "{dead}");
    assert!(dead["detail"].as_str().is_some_and(|d| d.contains("at least 1 second")), "{dead}");
    assert_eq!(validate(wit, &anchors(&base).await, NOW).unwrap().as_str(), payments);

    // Limited authority: another identifier, or a sibling of a prefix grant.
    let (status, body) = request_wit(
        &base,
        &platform.token(PLATFORM_ISS, sa, NOW + 600),
        "spiffe://prod.example/ns/prod/sa/admin",
        &key,
    )
    .await;
    assert_eq!((status, body["reason"].as_str()), (403, Some("issuance_denied")));
    let batch = platform.token(PLATFORM_ISS, "system:serviceaccount:prod:batch", NOW + 600);
    assert_eq!(request_wit(&base, &batch, "spiffe://prod.example/ns/batch/nightly", &key).await.0, 200);
    let denied = "batch may not obtain";
    let (status, reason, detail) = refused(batch.clone(), "spiffe://prod.example/ns/batchx/nightly").await;
    assert_eq!((status, reason.as_str()), (403, "issuance_denied"));
    assert!(detail.starts_with(denied), "{detail}");
    let (status, reason, detail) = refused(batch.clone(), "spiffe://other.example/ns/batch/x").await;
    assert_eq!((status, reason.as_str()), (403, "issuance_denied"));
    assert!(detail.starts_with(denied), "{detail}");

    // Platform tokens that expire a century from now are refused like forged ones.
    let century = platform.token(PLATFORM_ISS, sa, NOW + 100 * 365 * 86_400);
    let invalid = "bootstrap_token_invalid";
    assert_eq!(refused(century, payments).await, says(401, invalid, "expires too far ahead"));

    // Bootstrap credentials: expired, unknown issuer, unknown subject, forged, none.
    let expired = platform.token(PLATFORM_ISS, sa, NOW - 1);
    assert_eq!(refused(expired, payments).await, says(401, invalid, "expired"));
    let stranger = platform.token("https://other-cluster", sa, NOW + 600);
    assert_eq!(refused(stranger, payments).await, says(401, invalid, "issuer not on the allowlist"));
    let unknown_sa = platform.token(PLATFORM_ISS, "system:serviceaccount:prod:nobody", NOW + 600);
    let no_client = "no client for this platform token (subject or claim conditions)";
    assert_eq!(refused(unknown_sa, payments).await, says(403, "issuance_denied", no_client));
    let forged = Platform::new().token(PLATFORM_ISS, sa, NOW + 600);
    assert_eq!(refused(forged, payments).await, says(401, invalid, "bad signature"));
    let none = reqwest::Client::new()
        .post(format!("{base}/v1/wit"))
        .json(&json!({"sub": payments, "jwk": key.public_jwk()}))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.json::<Value>().await.unwrap()["reason"], invalid);
    // A private key in the request is refused.
    let private = json!({"sub": payments, "jwk": key.to_private_jwk()});
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/wit"))
        .bearer_auth(platform.token(PLATFORM_ISS, sa, NOW + 600))
        .json(&private)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["reason"], "invalid_key");

    // Both bundle formats publish the same keys.
    let jwks: Value = reqwest::get(format!("{base}/v1/bundle/jwks")).await.unwrap().json().await.unwrap();
    let spiffe: Value = reqwest::get(format!("{base}/v1/bundle/spiffe")).await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"], spiffe["keys"]);
    assert_eq!(spiffe["keys"][0]["use"], "wit-svid");
    assert!(spiffe["keys"][0].get("d").is_none(), "no private material is published");
    assert_eq!(spiffe["spiffe_refresh_hint"], 300);
}

#[tokio::test]
async fn rotation_with_overlap_and_restart() {
    let platform = Platform::new();
    let store = store_path("rotation");
    let clock = Arc::new(FixedClock::new(NOW));
    let config: IssuerConfig = serde_json::from_value(config(&platform, &store)).unwrap();
    let server = Arc::new(IdentityServer::open(config.clone(), clock.clone()).await.unwrap());
    let base = serve(server.clone()).await;
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let payments = "spiffe://prod.example/ns/prod/sa/payments";
    let sa = "system:serviceaccount:prod:payments";

    let sequence = |v: &Value| v["spiffe_sequence"].as_u64().unwrap();
    let before: Value = reqwest::get(format!("{base}/v1/bundle/spiffe")).await.unwrap().json().await.unwrap();
    assert_eq!(before["keys"].as_array().unwrap().len(), 1);
    // Issued late in the first key's period, so it outlives the rotation. By then the next key
    // is already published (two refresh hints ahead), but does not sign yet.
    clock.set(NOW + 3000);
    server.maintain().await.unwrap();
    let first = request_wit(&base, &platform.token(PLATFORM_ISS, sa, NOW + 7200), payments, &key).await.1["wit"]
        .as_str()
        .unwrap()
        .to_owned();
    let published: Value = reqwest::get(format!("{base}/v1/bundle/spiffe")).await.unwrap().json().await.unwrap();
    assert_eq!(published["keys"].as_array().unwrap().len(), 2);

    // Past the rotation period: a new key signs, the old one stays published for its WITs.
    clock.set(NOW + 3601);
    server.maintain().await.unwrap();
    let second = request_wit(&base, &platform.token(PLATFORM_ISS, sa, NOW + 7200), payments, &key).await.1["wit"]
        .as_str()
        .unwrap()
        .to_owned();
    let after: Value = reqwest::get(format!("{base}/v1/bundle/spiffe")).await.unwrap().json().await.unwrap();
    assert!(sequence(&after) > sequence(&before), "{before} {after}");
    assert_eq!(after["keys"].as_array().unwrap().len(), 2);
    let trust = anchors(&base).await;
    validate(&first, &trust, NOW + 3601).unwrap();
    validate(&second, &trust, NOW + 3601).unwrap();
    let kid = |wit: &str| jws::parse(wit, 8192).unwrap().header_str("kid").unwrap().unwrap().to_owned();
    assert_ne!(kid(&first), kid(&second));

    // A restarted server (same key store) still publishes the keys of what it issued.
    let restarted = Arc::new(IdentityServer::open(config, clock.clone()).await.unwrap());
    validate(
        &second,
        &restarted.anchors().map(|a| TrustStore::new().with("spiffe://prod.example".parse().unwrap(), a)).unwrap(),
        NOW + 3601,
    )
    .unwrap();

    // Once nothing the old key signed can be valid, it is dropped from the bundle.
    clock.set(NOW + 3601 + 3600 + 1800 + 1);
    server.maintain().await.unwrap();
    let later: Value = reqwest::get(format!("{base}/v1/bundle/spiffe")).await.unwrap().json().await.unwrap();
    assert!(later["keys"].as_array().unwrap().iter().all(|k| k["kid"] != kid(&first).as_str()));
}

/// The key store holds private keys: written owner-only through an exclusive temporary file,
/// and refused at start when others may read it.
#[cfg(unix)]
#[tokio::test]
async fn the_key_store_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let platform = Platform::new();
    let path = store_path("modes");
    let load = || {
        let config: IssuerConfig = serde_json::from_value(config(&platform, &path)).unwrap();
        IdentityServer::open(config, FixedClock::new(NOW))
    };
    load().await.unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary file is left behind");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = load().await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration);
    assert!(err.detail().unwrap().contains("chmod 600"), "{err:?}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    load().await.unwrap();
}

#[tokio::test]
async fn bad_configuration_names_the_field() {
    let platform = Platform::new();
    let store = store_path("config");
    let base = config(&platform, &store);
    let check = async |patch: &dyn Fn(&mut Value), field: &str| {
        let mut value = base.clone();
        patch(&mut value);
        let config: IssuerConfig = serde_json::from_value(value).unwrap();
        // The configuration says what is wrong by itself, before any storage is opened...
        let invalid = config.validate().unwrap_err();
        assert_eq!(invalid.kind(), &ErrorKind::InvalidConfiguration);
        assert!(invalid.detail().unwrap().starts_with(field), "{invalid:?}");
        // ...and a server refuses to start with that same reason.
        let err = IdentityServer::open(config, FixedClock::new(NOW)).await.unwrap_err();
        assert_eq!(err.detail(), invalid.detail());
    };
    // The valid one passes, and checking it creates no key store.
    let valid: IssuerConfig = serde_json::from_value(base.clone()).unwrap();
    valid.validate().unwrap();
    assert!(!store.exists(), "validate() opens no storage");
    check(&|v| v["trust_domain"] = "prod.example".into(), "trust_domain").await;
    check(&|v| v["algorithm"] = "HS256".into(), "algorithm").await;
    check(&|v| v["clients"][0]["allowed"][0] = "spiffe://other.example/x".into(), "clients[0].allowed[0]").await;
    check(&|v| v["clients"][0]["platform"] = "nowhere".into(), "clients[0].platform").await;
    check(
        &|v| v["clients"][1]["allowed_prefixes"][0] = "spiffe://prod.example".into(),
        "clients[1].allowed_prefixes[0]",
    )
    .await;
    check(&|v| v["clients"][0]["max_lifetime"] = 0.into(), "clients[0].max_lifetime").await;
    check(&|v| v["clients"][1]["max_wic_lifetime"] = 90_000.into(), "clients[1].max_wic_lifetime").await;
    check(&|v| v["clients"][0]["allowed_dns_names"] = json!(["*.*.example"]), "clients[0].allowed_dns_names[0]").await;
    check(&|v| v["platforms"][0]["max_token_lifetime"] = 0.into(), "platforms[0].max_token_lifetime").await;
    check(&|v| v["refresh_hint"] = 0.into(), "refresh_hint").await;
    // A platform's keys: inline or from a file, exactly one, the file readable and a JWKS.
    check(
        &|v| v["platforms"][0]["jwks_file"] = "cluster-jwks.json".into(),
        "platforms[0]: set jwks or jwks_file, not both",
    )
    .await;
    check(&|v| drop(v["platforms"][0].as_object_mut().unwrap().remove("jwks")), "platforms[0]: set jwks or jwks_file")
        .await;
    let missing = store.with_file_name("no-such-jwks.json");
    check(
        &|v| {
            v["platforms"][0].as_object_mut().unwrap().remove("jwks");
            v["platforms"][0]["jwks_file"] = missing.display().to_string().into();
        },
        "platforms[0].jwks_file",
    )
    .await;
    let not_a_jwks = store.with_file_name("not-a-jwks.json");
    std::fs::write(&not_a_jwks, "{\"keys\": 1}").unwrap();
    check(
        &|v| {
            v["platforms"][0].as_object_mut().unwrap().remove("jwks");
            v["platforms"][0]["jwks_file"] = not_a_jwks.display().to_string().into();
        },
        "platforms[0].jwks_file",
    )
    .await;
    check(&|v| v["refresh_hint"] = 1800.into(), "rotation_period").await;
    check(
        &|v| {
            v["exchange"] = json!([{"name": "s", "kind": "jwt-svid", "issuer": "https://spire.x", "audience": "a",
                "jwks": v["platforms"][0]["jwks"].clone(), "subject_template": "spiffe://prod.example/p/{path}", "max_lifetime": 60}])
        },
        "exchange[0].subject_trust_domain",
    ).await;
    check(&|v| v["clients"][0]["dev_secret"] = "0123456789abcdef".into(), "clients[0]").await;
    check(&|v| v["platforms"][0]["jwks"] = json!({"keys": []}), "platforms[0].jwks").await;
    check(
        &|v| v["clients"][0] = json!({"name": "dev", "dev_secret": "0123456789abcdef", "allowed": ["spiffe://prod.example/x"], "max_lifetime": 60}),
        "clients[0].dev_secret",
    ).await;
    // Unknown fields are refused by the parser.
    let mut value = base.clone();
    value["rotation"] = 5.into();
    assert!(serde_json::from_value::<IssuerConfig>(value).is_err());
}

/// Verifiers fetch the bundle, follow rotations with no failed request, serve stale keys while
/// the issuer is down, then answer 503.
#[tokio::test]
async fn verifiers_follow_the_bundle() {
    use wimse_reqwest::BundleSource;
    let platform = Platform::new();
    let clock = Arc::new(FixedClock::new(NOW));
    let config: IssuerConfig = serde_json::from_value(config(&platform, &store_path("bundle"))).unwrap();
    let server = Arc::new(IdentityServer::open(config, clock.clone()).await.unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = wimse_issuer::router(server.clone());
    let serving = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let verifier = Verifier::new(TrustStore::new(), VerifierConfig::new().origin("https://api.example").leeway(0))
        .unwrap()
        .clock(clock.clone());
    let domain: TrustDomain = "spiffe://prod.example".parse().unwrap();
    let source =
        BundleSource::new(domain.clone(), format!("{base}/v1/bundle/spiffe")).clock(clock.clone()).max_stale(900);
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let payments = "spiffe://prod.example/ns/prod/sa/payments";
    let sa = "system:serviceaccount:prod:payments";
    let call = |wit: &str| {
        let wpt = WptBuilder::new(&key, wit, "https://api.example/x").sign(clock.now()).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("workload-identity-token", wit.parse().unwrap());
        headers.insert("authorization", format!("WPT {wpt}").parse().unwrap());
        verifier.verify_sync(&RequestView::new("/x", &headers)).map(|c| c.id().clone())
    };
    let issue = |now: u64| {
        let token = platform.token(PLATFORM_ISS, sa, now + 600);
        let base = base.clone();
        let key = key.clone();
        async move { request_wit(&base, &token, payments, &key).await.1["wit"].as_str().unwrap().to_owned() }
    };

    // Known domain, keys not fetched yet: 503, not 401.
    verifier.trust().set(domain.clone(), TrustAnchors::new().with_valid_until(0));
    let wit = issue(NOW).await;
    assert_eq!(call(&wit).unwrap_err().kind(), &ErrorKind::TrustAnchorsUnavailable);
    assert!(verifier.trust().take_refresh_request(&domain), "the verifier asked for a refresh");

    // Refreshing on the hint while the issuer rotates twice: every call succeeds.
    source.refresh(verifier.trust()).await.unwrap();
    for step in 0..26u64 {
        clock.set(NOW + step * 300);
        server.maintain().await.unwrap();
        source.refresh(verifier.trust()).await.unwrap();
        let wit = issue(clock.now()).await;
        assert_eq!(call(&wit).unwrap().as_str(), payments, "step {step}");
    }

    // The issuer goes down: the last keys serve until they are stale, then 503.
    serving.abort();
    let _ = serving.await;
    let wit = issue_direct(&server, &platform, &key, clock.now()).await;
    assert_eq!(source.refresh(verifier.trust()).await.unwrap_err().kind(), &ErrorKind::TrustAnchorsUnavailable);
    call(&wit).unwrap();
    clock.advance(901);
    let late = issue_direct(&server, &platform, &key, clock.now()).await;
    assert_eq!(call(&late).unwrap_err().kind(), &ErrorKind::TrustAnchorsUnavailable);
    assert_eq!(wimse_core::server::framing::Rejection::from_error(&call(&late).unwrap_err()).status(), 503);
}

async fn issue_direct(server: &IdentityServer, platform: &Platform, key: &SigningKey, now: u64) -> String {
    let token = platform.token(PLATFORM_ISS, "system:serviceaccount:prod:payments", now + 600);
    server.issue_wit(&token, "spiffe://prod.example/ns/prod/sa/payments", key.public_jwk(), None).await.unwrap().wit
}

/// A bundle whose sequence goes backwards is refused and the anchors stay as they were.
#[tokio::test]
async fn bundle_sequence_never_goes_backwards() {
    use axum::routing::get;
    use wimse_reqwest::BundleSource;
    let issuer_key = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("a");
    let mut jwk = serde_json::to_value(issuer_key.public_jwk()).unwrap();
    jwk["use"] = "wit-svid".into();
    let bundle =
        Arc::new(std::sync::Mutex::new(json!({"keys": [jwk], "spiffe_sequence": 5, "spiffe_refresh_hint": 60})));
    let served = bundle.clone();
    let app = axum::Router::new().route("/b", get(move || async move { axum::Json(served.lock().unwrap().clone()) }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/b", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let trust = wimse_core::protocol::trust::TrustHandle::default();
    let domain: TrustDomain = "spiffe://prod.example".parse().unwrap();
    let source = BundleSource::new(domain.clone(), url).clock(FixedClock::new(NOW));
    assert_eq!(source.refresh(&trust).await.unwrap(), 60);
    bundle.lock().unwrap()["spiffe_sequence"] = 3.into();
    bundle.lock().unwrap()["keys"] = json!([]);
    let err = source.refresh(&trust).await.unwrap_err();
    assert!(err.detail().unwrap().contains("backwards"), "{err:?}");
    assert_eq!(trust.read(|s| s.get(&domain).unwrap().keys().len()), 1, "the anchors were kept");
    // A later sequence that drops a key replaces the anchors.
    let other = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("b");
    let mut jwk = serde_json::to_value(other.public_jwk()).unwrap();
    jwk["use"] = "wit-svid".into();
    *bundle.lock().unwrap() = json!({"keys": [jwk], "spiffe_sequence": 6});
    source.refresh(&trust).await.unwrap();
    assert_eq!(trust.read(|s| s.get(&domain).unwrap().keys()[0].kid().map(str::to_owned)), Some("b".to_owned()));
}

/// The background refresher fetches on its own and answers a verifier's refresh request.
#[tokio::test]
async fn background_refresh() {
    use wimse_reqwest::BundleSource;
    let platform = Platform::new();
    let clock = Arc::new(FixedClock::new(NOW));
    let config: IssuerConfig = serde_json::from_value(config(&platform, &store_path("spawn"))).unwrap();
    let base = serve(Arc::new(IdentityServer::open(config, clock.clone()).await.unwrap())).await;
    let trust = wimse_core::protocol::trust::TrustHandle::default();
    let domain: TrustDomain = "spiffe://prod.example".parse().unwrap();
    let task =
        BundleSource::new(domain.clone(), format!("{base}/v1/bundle/spiffe")).clock(clock.clone()).spawn(trust.clone());
    // Wait (bounded) for the first fetch to land.
    let usable = || trust.read(|s| s.get(&domain).is_some_and(|a| a.usable_at(NOW)));
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !usable() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the bundle was fetched");
    task.abort();
}

/// RFC 8693 token exchange for each input profile, and its refusals.
#[tokio::test]
async fn token_exchange_profiles() {
    let platform = Platform::new();
    let authorization_server = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("as-1");
    let partner_spire = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("spire-1");
    let mut config = config(&platform, &store_path("exchange"));
    // Many refused exchanges from one address on purpose: they count as failed authentications.
    config["rate_limits"] = json!({"failed_authentications": {"burst": 1000, "per_minute": 1000}});
    config["exchange"] = json!([
        {"name": "oauth", "kind": "access-token", "issuer": "https://as.partner.example", "audience": "wimse-issuer",
         "jwks": {"keys": [authorization_server.public_jwk()]}, "subject_template": "spiffe://prod.example/partners/oauth/{sub}", "max_lifetime": 300},
        {"name": "ci", "kind": "jwt", "issuer": "https://ci.example", "audience": "wimse-issuer",
         "jwks": {"keys": [platform.key.public_jwk()]}, "subject_template": "spiffe://prod.example/ci/{sub}", "max_lifetime": 120},
        {"name": "partner-spiffe", "kind": "jwt-svid", "issuer": "https://spire.partner.example", "audience": "wimse-issuer",
         "jwks": {"keys": [partner_spire.public_jwk()]}, "subject_template": "spiffe://prod.example/partners/{trust_domain}/{path}", "max_lifetime": 600,
         "subject_trust_domain": "spiffe://partner.example"}
    ]);
    let config: IssuerConfig = serde_json::from_value(config).unwrap();
    let server = Arc::new(IdentityServer::open(config, FixedClock::new(NOW)).await.unwrap());
    let base = serve(server).await;
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let at = |typ: &str, sub: &str, exp: u64, aud: &str| {
        let header = format!(r#"{{"alg":"ES256","typ":"{typ}","kid":"as-1"}}"#);
        let claims = json!({"iss": "https://as.partner.example", "sub": sub, "aud": aud, "exp": exp, "client_id": "c1", "iat": NOW});
        raw_jwt(&header, &claims, &authorization_server)
    };
    let svid = |sub: &str| {
        let claims =
            json!({"iss": "https://spire.partner.example", "sub": sub, "aud": ["wimse-issuer"], "exp": NOW + 300});
        jws::sign("JWT", Some("spire-1"), &claims, &partner_spire, Backend::default()).unwrap()
    };
    let exchange = |token: String, token_type: &str| {
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange".to_owned()),
            ("subject_token", token),
            ("subject_token_type", token_type.to_owned()),
            ("wimse_jwk", key.public_jwk().to_json()),
        ];
        let url = format!("{base}/v1/token");
        async move {
            let response = reqwest::Client::new().post(url).form(&form).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    const AT: &str = "urn:ietf:params:oauth:token-type:access_token";
    const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
    let domain = TrustStore::new().with(
        "spiffe://prod.example".parse().unwrap(),
        TrustAnchors::from_spiffe_bundle_json(
            &reqwest::get(format!("{base}/v1/bundle/spiffe")).await.unwrap().text().await.unwrap(),
        )
        .unwrap(),
    );

    // An RFC 9068 access token.
    let (status, body) = exchange(at("at+jwt", "svc-42", NOW + 600, "wimse-issuer"), AT).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "N_A");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(
        validate(body["access_token"].as_str().unwrap(), &domain, NOW).unwrap().as_str(),
        "spiffe://prod.example/partners/oauth/svc-42"
    );
    // A JWT-SVID from a partner trust domain: crossing into this one.
    let (status, body) = exchange(svid("spiffe://partner.example/ns/web"), JWT).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        validate(body["access_token"].as_str().unwrap(), &domain, NOW).unwrap().as_str(),
        "spiffe://prod.example/partners/partner.example/ns/web"
    );

    // A CI system's OIDC token (generic JWT profile).
    let ci = platform.token("https://ci.example", "deploy-job", NOW + 60);
    let (status, body) = exchange(ci, JWT).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        validate(body["access_token"].as_str().unwrap(), &domain, NOW).unwrap().as_str(),
        "spiffe://prod.example/ci/deploy-job"
    );

    // Refusals.
    let refused = |(status, body): (u16, Value), error: &str, what: &str| {
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"], error, "{what}: {body}");
    };
    refused(
        exchange(at("JWT", "svc-42", NOW + 600, "wimse-issuer"), AT).await,
        "invalid_grant",
        "access token without at+jwt",
    );
    refused(exchange(at("at+jwt", "svc-42", NOW - 1, "wimse-issuer"), AT).await, "invalid_grant", "expired");
    refused(exchange(at("at+jwt", "svc-42", NOW + 600, "someone-else"), AT).await, "invalid_grant", "audience");
    refused(exchange(at("at+jwt", "../admin", NOW + 600, "wimse-issuer"), AT).await, "invalid_grant", "unsafe subject");
    refused(
        exchange(at("at+jwt", "svc-42", NOW + 600, "wimse-issuer"), JWT).await,
        "invalid_grant",
        "wrong token type for the issuer",
    );
    refused(
        exchange(at("at+jwt", "svc-42", NOW + 600, "wimse-issuer"), "urn:ietf:params:oauth:token-type:saml2").await,
        "unsupported_token_type",
        "saml",
    );
    refused(exchange(svid("wimse://partner.example/ns/web"), JWT).await, "invalid_grant", "not a SPIFFE ID");
    // The partner's SPIRE speaks for partner.example only: not for this trust domain's admin.
    refused(exchange(svid("spiffe://prod.example/admin"), JWT).await, "invalid_grant", "another trust domain's SVID");
    refused(exchange(svid("spiffe://third.example/x"), JWT).await, "invalid_grant", "a third trust domain's SVID");
    // Tokens that expire a century from now, or that declare critical extensions, are refused.
    refused(
        exchange(at("at+jwt", "svc-42", NOW + 100 * 365 * 86_400, "wimse-issuer"), AT).await,
        "invalid_grant",
        "century",
    );
    let crit = raw_jwt(
        r#"{"alg":"ES256","typ":"at+jwt","kid":"as-1","crit":["x-ext"],"x-ext":1}"#,
        &json!({"iss": "https://as.partner.example", "sub": "svc-42", "aud": "wimse-issuer", "exp": NOW + 600}),
        &authorization_server,
    );
    refused(exchange(crit, AT).await, "invalid_grant", "crit");
    refused(
        exchange(platform.token(PLATFORM_ISS, "x", NOW + 60), JWT).await,
        "invalid_grant",
        "no profile for the platform issuer",
    );
    let forged = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("spire-1");
    let claims = json!({"iss": "https://spire.partner.example", "sub": "spiffe://partner.example/x", "aud": "wimse-issuer", "exp": NOW + 60});
    refused(
        exchange(jws::sign("JWT", Some("spire-1"), &claims, &forged, Backend::default()).unwrap(), JWT).await,
        "invalid_grant",
        "forged",
    );
}

fn raw_jwt(header: &str, claims: &Value, key: &SigningKey) -> String {
    use wimse_core::jose::b64url_encode;
    let input = format!("{}.{}", b64url_encode(header), b64url_encode(claims.to_string()));
    let signature = key.sign(Backend::default(), input.as_bytes()).unwrap();
    format!("{input}.{}", b64url_encode(signature))
}

/// Workloads obtain their WITs from the identity server (bootstrap token read from a file, as a
/// projected service-account token would be) and renew them with a new key each time.
#[tokio::test]
async fn credentials_from_the_identity_server() {
    use wimse_reqwest::{Bootstrap, IssuerCredentials};
    let platform = Platform::new();
    let clock = Arc::new(FixedClock::new(NOW));
    let store = store_path("credentials");
    let config: IssuerConfig = serde_json::from_value(config(&platform, &store)).unwrap();
    let server = Arc::new(IdentityServer::open(config, clock.clone()).await.unwrap());
    let base = serve(server.clone()).await;
    let token_file = store.with_file_name("token");
    std::fs::write(&token_file, platform.token(PLATFORM_ISS, "system:serviceaccount:prod:payments", NOW + 3600))
        .unwrap();
    let payments = "spiffe://prod.example/ns/prod/sa/payments";

    let source = IssuerCredentials::connect_with(
        &base,
        payments,
        Bootstrap::TokenFile(token_file.clone()),
        reqwest::Client::new(),
        clock.clone(),
    )
    .await
    .unwrap();
    let first = source.credentials(NOW).unwrap();
    assert_eq!(first.subject().as_str(), payments);
    assert_eq!(first.expires_at(), NOW + 1800);

    // The signer and a verifier agree.
    let verifier = Verifier::new(server_trust(&server), VerifierConfig::new().origin("https://api.example"))
        .unwrap()
        .clock(clock.clone());
    let signer = Signer::new(source.clone()).clock(clock.clone());
    let mut headers = http::HeaderMap::new();
    signer.sign_headers(&mut headers, "https://api.example/x").unwrap();
    assert_eq!(verifier.verify_sync(&RequestView::new("/x", &headers)).unwrap().id().as_str(), payments);

    // Renewal: a new WIT with a new key; the kubelet rotated the token file meanwhile.
    clock.set(NOW + 1300);
    std::fs::write(&token_file, platform.token(PLATFORM_ISS, "system:serviceaccount:prod:payments", NOW + 7200))
        .unwrap();
    source.renew().await.unwrap();
    let second = source.credentials(NOW + 1300).unwrap();
    assert_ne!(second.wit(), first.wit());
    assert_ne!(second.key().public_key().thumbprint(), first.key().public_key().thumbprint());
    // A refused renewal (token for another account) keeps the current WIT until it expires.
    std::fs::write(&token_file, platform.token(PLATFORM_ISS, "system:serviceaccount:prod:batch", NOW + 7200)).unwrap();
    let refused = source.renew().await.unwrap_err();
    assert_eq!(refused.kind(), &ErrorKind::CredentialsUnavailable);
    assert!(refused.detail().unwrap().ends_with("403 Forbidden (issuance_denied)"), "{refused:?}");
    assert_eq!(source.credentials(NOW + 1400).unwrap().wit(), second.wit());
    assert_eq!(source.credentials(NOW + 1300 + 1800).unwrap_err().kind(), &ErrorKind::CredentialsUnavailable);
}

fn server_trust(server: &IdentityServer) -> TrustStore {
    TrustStore::new().with(server.trust_domain().clone(), server.anchors().unwrap())
}

/// WICs from the identity server: the workload keeps its key and sends only its public key;
/// the chain verifies against the published X.509 bundle; the per-client authority applies.
#[tokio::test]
async fn wic_issuance() {
    use base64::Engine as _;
    use rustls::server::danger::ClientCertVerifier;
    use wimse_core::protocol::wic::{WicAnchors, WicClientVerifier, certificates_from_pem, workload_id_of};
    let platform = Platform::new();
    // WICs may live longer than the client's WITs (1800 s).
    let mut value = config(&platform, &store_path("wic"));
    value["clients"][0]["max_wic_lifetime"] = 7200.into();
    let config: IssuerConfig = serde_json::from_value(value).unwrap();
    let base = serve(Arc::new(IdentityServer::open(config, SystemClock).await.unwrap())).await;
    let now = wimse_testkit::now();
    let token = platform.token(PLATFORM_ISS, "system:serviceaccount:prod:payments", now + 600);
    let key = rcgen::KeyPair::generate().unwrap();
    let spki = base64::engine::general_purpose::STANDARD.encode(rcgen::PublicKeyData::subject_public_key_info(&key));
    let request = |sub: &str| {
        let body = json!({"sub": sub, "spki": spki, "usage": "client"});
        reqwest::Client::new().post(format!("{base}/v1/wic")).bearer_auth(&token).json(&body).send()
    };
    let response = request("spiffe://prod.example/ns/prod/sa/payments").await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let lifetime = body["expires_at"].as_u64().unwrap() - now;
    assert!((7190..=7210).contains(&lifetime), "the WIC lives max_wic_lifetime, not max_lifetime: {lifetime}");
    let chain = certificates_from_pem(body["chain_pem"].as_str().unwrap()).unwrap();
    assert_eq!(workload_id_of(&chain[0]).unwrap().as_str(), "spiffe://prod.example/ns/prod/sa/payments");

    let ca_pem = reqwest::get(format!("{base}/v1/bundle/x509")).await.unwrap().text().await.unwrap();
    let anchors = WicAnchors::new();
    anchors.set("spiffe://prod.example".parse().unwrap(), certificates_from_pem(&ca_pem).unwrap()).unwrap();
    WicClientVerifier::new(anchors)
        .verify_client_cert(&chain[0], &chain[1..], rustls::pki_types::UnixTime::now())
        .unwrap();

    let response = request("spiffe://prod.example/ns/prod/sa/admin").await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(response.json::<Value>().await.unwrap()["reason"], "issuance_denied");
}

/// A client obtains server names in its WIC only from its configured allowlist: none by
/// default, exact names and `*.suffix` patterns otherwise; IP addresses likewise.
#[tokio::test]
async fn wic_server_names_come_from_the_allowlist() {
    use base64::Engine as _;
    use wimse_core::protocol::wic::certificates_from_pem;
    let platform = Platform::new();
    let mut value = config(&platform, &store_path("wic-sans"));
    let strict: IssuerConfig = serde_json::from_value(value.clone()).unwrap();
    value["clients"][0]["allowed_dns_names"] = json!(["payments.prod.example", "*.payments.svc.prod.example"]);
    value["clients"][0]["allowed_ip_addresses"] = json!(["10.0.0.7"]);
    let granted: IssuerConfig = serde_json::from_value(value).unwrap();
    let now = wimse_testkit::now();
    let token = platform.token(PLATFORM_ISS, "system:serviceaccount:prod:payments", now + 600);
    let key = rcgen::KeyPair::generate().unwrap();
    let spki = base64::engine::general_purpose::STANDARD.encode(rcgen::PublicKeyData::subject_public_key_info(&key));
    let sub = "spiffe://prod.example/ns/prod/sa/payments";
    for (config, allowed) in [(strict, false), (granted, true)] {
        let base = serve(Arc::new(IdentityServer::open(config, SystemClock).await.unwrap())).await;
        let request = |dns: Value, ip: Value| {
            let body = json!({"sub": sub, "spki": spki, "usage": "server", "dns": dns, "ip": ip});
            reqwest::Client::new().post(format!("{base}/v1/wic")).bearer_auth(&token).json(&body).send()
        };
        // The red-team requests: another service's name, a wildcard over the trust domain, loopback.
        for (dns, ip) in [
            (json!(["billing.prod.example"]), json!([])),
            (json!(["*.prod.example"]), json!([])),
            (json!([]), json!(["127.0.0.1"])),
        ] {
            let response = request(dns.clone(), ip.clone()).await.unwrap();
            assert_eq!(response.status(), 403, "{dns} {ip}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["reason"], "issuance_denied");
        }
        let response = request(json!(["payments.prod.example", "a.payments.svc.prod.example"]), json!(["10.0.0.7"]))
            .await
            .unwrap();
        assert_eq!(response.status() == 200, allowed, "granted names");
        if allowed {
            let body: Value = response.json().await.unwrap();
            let chain = certificates_from_pem(body["chain_pem"].as_str().unwrap()).unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
            let sans = format!("{:?}", cert.subject_alternative_name().unwrap().unwrap().value.general_names);
            assert!(
                sans.contains("DNSName(\"a.payments.svc.prod.example\")") && sans.contains("IPAddress([10, 0, 0, 7])"),
                "{sans}"
            );
        }
        // Without server names, a client gets its identity WIC as before.
        assert_eq!(request(json!([]), json!([])).await.unwrap().status(), 200);
    }
}

/// A bundle endpoint that answers with an endless body is cut off, not buffered.
#[tokio::test]
async fn oversized_bundles_are_refused() {
    use axum::routing::get;
    use wimse_reqwest::BundleSource;
    let app = axum::Router::new().route("/b", get(|| async { "x".repeat(2 << 20) }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/b", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let trust = wimse_core::protocol::trust::TrustHandle::default();
    let err = BundleSource::new("spiffe://prod.example".parse().unwrap(), url).refresh(&trust).await.unwrap_err();
    assert!(err.detail().unwrap().contains("larger than"), "{err:?}");
}

/// A signing key stays published as long as any WIT it signed can live, including WITs issued
/// by token exchange with a longer lifetime than any client's.
#[tokio::test]
async fn keys_outlive_the_longest_exchanged_wit() {
    let platform = Platform::new();
    let clock = Arc::new(FixedClock::new(NOW));
    let mut value = config(&platform, &store_path("retire"));
    value["exchange"] = json!([{"name": "ci", "kind": "jwt", "issuer": "https://ci.example", "audience": "wimse-issuer",
        "jwks": {"keys": [platform.key.public_jwk()]}, "subject_template": "spiffe://prod.example/ci/{sub}", "max_lifetime": 3600}]);
    let config: IssuerConfig = serde_json::from_value(value).unwrap();
    let server = IdentityServer::open(config, clock.clone()).await.unwrap();
    let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    // Exchanged late in the first key's period: it lives an hour, past the next rotation.
    clock.set(NOW + 3500);
    let ci = platform.token("https://ci.example", "deploy", NOW + 3600);
    let issued = server.exchange(&ci, "urn:ietf:params:oauth:token-type:jwt", key.public_jwk()).await.unwrap();
    assert_eq!(issued.expires_at, NOW + 3500 + 3600);
    let anchors_at = async |t: u64| {
        clock.set(t);
        server.maintain().await.unwrap();
        TrustStore::new().with("spiffe://prod.example".parse().unwrap(), server.anchors().unwrap())
    };
    // Just before the exchanged WIT expires (long past the clients' longest WIT, 1800 s, after
    // the next key took over), the old key is still there.
    let t = issued.expires_at - 60;
    validate(&issued.wit, &anchors_at(t).await, t).unwrap();
    // Once no WIT it signed can be valid, it goes.
    let t = NOW + 4 * 3600;
    let trust = anchors_at(t).await;
    let kid = jws::parse(&issued.wit, 8192).unwrap().header_str("kid").unwrap().unwrap().to_owned();
    assert!(
        trust
            .get(&"spiffe://prod.example".parse().unwrap())
            .unwrap()
            .keys()
            .iter()
            .all(|k| k.kid() != Some(kid.as_str()))
    );
}

/// Rate limits: a client over its issuance budget gets 429 with Retry-After while another client
/// goes on; a source address that keeps failing authentication is refused outright, valid
/// credentials or not, until its budget refills.
#[tokio::test]
async fn issuance_and_failed_authentications_are_rate_limited() {
    let platform = Platform::new();
    let mut value = config(&platform, &store_path("rate"));
    value["rate_limits"] = json!({
        "per_client": {"burst": 3, "per_minute": 1},
        "per_source": {"burst": 100, "per_minute": 600},
        "failed_authentications": {"burst": 5, "per_minute": 1}
    });
    let clock = Arc::new(FixedClock::new(NOW));
    let config: IssuerConfig = serde_json::from_value(value).unwrap();
    let base = serve(Arc::new(IdentityServer::open(config, clock.clone()).await.unwrap())).await;
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let payments = platform.token(PLATFORM_ISS, "system:serviceaccount:prod:payments", NOW + 600);
    let batch = platform.token(PLATFORM_ISS, "system:serviceaccount:prod:batch", NOW + 600);
    let payments_id = "spiffe://prod.example/ns/prod/sa/payments";
    for _ in 0..3 {
        assert_eq!(request_wit(&base, &payments, payments_id, &key).await.0, 200);
    }
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/wit"))
        .bearer_auth(&payments)
        .json(&json!({"sub": payments_id, "jwk": key.public_jwk()}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "rate_limited");
    // Another client is not affected.
    assert_eq!(request_wit(&base, &batch, "spiffe://prod.example/ns/batch/nightly", &key).await.0, 200);
    // A minute later the budget has one more request.
    clock.set(NOW + 60);
    assert_eq!(request_wit(&base, &payments, payments_id, &key).await.0, 200);

    // Wrong credentials from this address: five are answered 401, then the address is refused.
    for _ in 0..5 {
        let (status, body) = request_wit(&base, "wrong-secret-0123456789", payments_id, &key).await;
        assert_eq!((status, body["reason"].as_str()), (401, Some("bootstrap_token_invalid")));
    }
    assert_eq!(request_wit(&base, "wrong-secret-0123456789", payments_id, &key).await.0, 429);
    let (status, body) = request_wit(&base, &batch, "spiffe://prod.example/ns/batch/nightly", &key).await;
    assert_eq!((status, body["reason"].as_str()), (429, Some("rate_limited")), "even with valid credentials");
    // Bundles stay reachable: verifiers must always be able to refresh.
    assert_eq!(reqwest::get(format!("{base}/v1/bundle/spiffe")).await.unwrap().status(), 200);
    clock.set(NOW + 60 + 120);
    assert_eq!(request_wit(&base, &batch, "spiffe://prod.example/ns/batch/nightly", &key).await.0, 200);
}

/// Serving the API starts rotation on a timer: a due rotation happens with no request at all.
#[tokio::test]
async fn serving_rotates_on_a_timer() {
    let platform = Platform::new();
    let clock = Arc::new(FixedClock::new(NOW));
    let mut value = config(&platform, &store_path("timer"));
    value["refresh_hint"] = 2.into();
    let config: IssuerConfig = serde_json::from_value(value).unwrap();
    let server = Arc::new(IdentityServer::open(config, clock.clone()).await.unwrap());
    assert_eq!(server.maintenance_interval(), std::time::Duration::from_secs(1));
    let _base = serve(server.clone()).await;
    assert!(!server.start_maintenance(), "started once, by the router");
    let (_, before) = server.key_state();
    clock.set(NOW + 3600);
    let mut rotated = false;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if server.key_state().1 > before {
            rotated = true;
            break;
        }
    }
    assert!(rotated, "no rotation without traffic");
    assert_eq!(server.jwks()["keys"].as_array().unwrap().len(), 2);
}

/// A key store deleted under a running server is written back from the keys in memory: same
/// epoch, same keys, a higher sequence (so verifiers that saw the old one accept it).
#[tokio::test]
async fn a_deleted_key_store_is_written_back() {
    let platform = Platform::new();
    let path = store_path("deleted");
    let config: IssuerConfig = serde_json::from_value(config(&platform, &path)).unwrap();
    let server = IdentityServer::open(config, FixedClock::new(NOW)).await.unwrap();
    let before = server.key_state();
    let bundle = server.spiffe_bundle();
    std::fs::remove_file(&path).unwrap();
    server.maintain().await.unwrap();
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(stored["epoch"], before.0.as_str());
    assert_eq!(server.key_state(), (before.0.clone(), before.1 + 1));
    assert_eq!(server.spiffe_bundle()["keys"], bundle["keys"]);
    assert_eq!(bundle[wimse_issuer::STORE_EPOCH_MEMBER], before.0.as_str());
}

/// Exchanges: a token that does not verify spends nothing of the profile's budget but counts as
/// a failed authentication of its source; over a limit the answer is 429 with `Retry-After`.
#[tokio::test]
async fn exchange_limits_count_only_verified_tokens() {
    let platform = Platform::new();
    let forger = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("k8s-1");
    let limited = |failures: u32| {
        let mut value = config(&platform, &store_path(&format!("exchange-limits-{failures}")));
        value["rate_limits"] = json!({"per_client": {"burst": 1, "per_minute": 1},
                                      "failed_authentications": {"burst": failures, "per_minute": 1}});
        value["exchange"] = json!([{"name": "ci", "kind": "jwt", "issuer": "https://ci.example", "audience": "wimse-issuer",
            "jwks": {"keys": [platform.key.public_jwk()]}, "subject_template": "spiffe://prod.example/ci/{sub}", "max_lifetime": 120}]);
        serde_json::from_value::<IssuerConfig>(value).unwrap()
    };
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let exchange = |base: String, signer: &SigningKey| {
        let claims = json!({"iss": "https://ci.example", "sub": "deploy", "aud": "wimse-issuer", "exp": NOW + 60});
        let token = jws::sign("JWT", Some("k8s-1"), &claims, signer, Backend::default()).unwrap();
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange".to_owned()),
            ("subject_token", token),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt".to_owned()),
            ("wimse_jwk", key.public_jwk().to_json()),
        ];
        async move {
            let response = reqwest::Client::new().post(format!("{base}/v1/token")).form(&form).send().await.unwrap();
            let retry_after = response.headers().get("retry-after").is_some();
            (response.status().as_u16(), retry_after, response.json::<Value>().await.unwrap())
        }
    };

    let base = serve(Arc::new(IdentityServer::open(limited(100), FixedClock::new(NOW)).await.unwrap())).await;
    for _ in 0..5 {
        let (status, _, body) = exchange(base.clone(), &forger).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
    }
    let (status, _, body) = exchange(base.clone(), &platform.key).await;
    assert_eq!(status, 200, "forged tokens spent nothing of the profile's budget: {body}");
    let (status, retry_after, body) = exchange(base.clone(), &platform.key).await;
    assert_eq!((status, retry_after, body["error"].as_str()), (429, true, Some("slow_down")));

    let base = serve(Arc::new(IdentityServer::open(limited(2), FixedClock::new(NOW)).await.unwrap())).await;
    for _ in 0..2 {
        let (status, _, body) = exchange(base.clone(), &forger).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")));
        assert_eq!(body["error_description"], "the token exchange was refused: bad signature");
    }
    let (status, retry_after, _) = exchange(base, &platform.key).await;
    assert_eq!((status, retry_after), (429, true), "the source spent its failed-authentication budget");
}

/// Replacing the key store on purpose (after a compromise): a new epoch, every key and the WIC
/// authority new, WITs signed before no longer verify against the bundle.
#[tokio::test]
async fn replacing_the_key_store_drops_every_key() {
    let platform = Platform::new();
    let config: IssuerConfig = serde_json::from_value(config(&platform, &store_path("replace"))).unwrap();
    let server = IdentityServer::open(config.clone(), FixedClock::new(NOW)).await.unwrap();
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let old_wit = issue_direct(&server, &platform, &key, NOW).await;
    let old_ca = server.wic_bundle_pem().unwrap();
    let (old_epoch, new_epoch) = server.replace_key_store().await.unwrap();
    assert_ne!(old_epoch, new_epoch);
    assert_eq!(server.key_state().0, new_epoch);
    assert_ne!(server.wic_bundle_pem().unwrap(), old_ca);
    let trust = TrustStore::new().with("spiffe://prod.example".parse().unwrap(), server.anchors().unwrap());
    assert_eq!(validate(&old_wit, &trust, NOW).unwrap_err().kind(), &ErrorKind::UnknownKey, "the old keys are gone");
    validate(&issue_direct(&server, &platform, &key, NOW).await, &trust, NOW).unwrap();
    // A restarted replica reads the new store.
    let restarted = IdentityServer::open(config, FixedClock::new(NOW)).await.unwrap();
    assert_eq!(restarted.key_state(), server.key_state());
}

/// SPIFFE WIT-SVID profile §3.7: a WIT-SVID's `iss` SHOULD NOT be compatible with OpenID Connect
/// Discovery (an https URL without query or fragment). An identity server of a `spiffe://`
/// trust domain configured with one warns once at start, naming it; other forms, and other
/// trust domains (whose WITs are no WIT-SVIDs, and creds §5.1.3 allows an https `iss`), do not.
#[tokio::test]
async fn an_oidc_discovery_shaped_issuer_is_warned_about_at_start() {
    let logs = wimse_testkit::logs::Logs::global();
    let platform = Platform::new();
    let warnings = |iss: &str| {
        let field = format!("issuer={iss}");
        let lines = logs.lines_with(&["WARN", "OpenID Connect Discovery"]);
        lines.iter().filter(|line| line.split(' ').any(|word| word == field)).count()
    };
    let open = async |name: &str, trust_domain: &str, iss: &str| {
        let mut value = config(&platform, &store_path(name));
        value["trust_domain"] = trust_domain.into();
        value["issuer"] = iss.into();
        let prefix = format!("{trust_domain}/ns");
        value["clients"] = json!([{"name": "c", "platform": "cluster", "subject": "s", "allowed_prefixes": [prefix], "max_lifetime": 60}]);
        IdentityServer::open(serde_json::from_value(value).unwrap(), FixedClock::new(NOW)).await.unwrap()
    };
    let shaped = "https://oidc-shaped.prod.example/wit";
    open("oidc-1", "spiffe://prod.example", shaped).await;
    assert_eq!(warnings(shaped), 1, "{}", logs.text());
    for (name, trust_domain, iss) in [
        ("oidc-2", "spiffe://prod.example", "spiffe://prod.example"),
        ("oidc-3", "spiffe://prod.example", "https://oidc-shaped.prod.example/wit?profile=wit-svid"),
        ("oidc-4", "wimse://prod.example", "https://oidc-shaped.prod.example/wimse"),
    ] {
        open(name, trust_domain, iss).await;
        assert_eq!(warnings(iss), 0, "{iss} for {trust_domain}");
    }
}

/// A prepared key holds timer rotation: once it has waited longer than a rotation period,
/// each maintenance says so (a forgotten `keys activate`), and the active key keeps signing.
#[tokio::test]
async fn a_forgotten_prepared_key_is_warned_about() {
    let logs = wimse_testkit::logs::Logs::global();
    let platform = Platform::new();
    let clock = Arc::new(FixedClock::new(NOW));
    let config: IssuerConfig = serde_json::from_value(config(&platform, &store_path("forgotten"))).unwrap();
    let server = IdentityServer::open(config, clock.clone()).await.unwrap();
    let prepared = server.prepare_key().await.unwrap();
    let warned = || logs.lines_with(&["WARN", "prepared signing key has waited", &prepared]).len();
    clock.advance(3600);
    server.maintain().await.unwrap();
    assert_eq!(warned(), 0, "not yet longer than the rotation period (3600 s)");
    clock.advance(1);
    server.maintain().await.unwrap();
    assert_eq!(warned(), 1, "{}", logs.text());
    let statuses = server.key_statuses().await.unwrap();
    assert_eq!(statuses.len(), 2, "no timer rotation past the waiting key");
}

/// A workload a risk signal disabled (RISC `account-disabled`, through a `SetReceiver`) is
/// issued nothing until it is enabled again; a workload whose credentials were revoked gets
/// new ones; other workloads are unaffected.
#[tokio::test]
async fn a_disabled_workload_is_issued_nothing() {
    use wimse_core::server::signals::Revocations;
    let platform = Platform::new();
    let config: IssuerConfig = serde_json::from_value(config(&platform, &store_path("disabled"))).unwrap();
    let revocations = Revocations::new();
    let server =
        Arc::new(IdentityServer::open(config, FixedClock::new(NOW)).await.unwrap().revocations(revocations.clone()));
    let base = serve(server.clone()).await;
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let (payments, batch) = ("spiffe://prod.example/ns/prod/sa/payments", "spiffe://prod.example/ns/batch/nightly");
    let payments_token = platform.token(PLATFORM_ISS, "system:serviceaccount:prod:payments", NOW + 600);
    let batch_token = platform.token(PLATFORM_ISS, "system:serviceaccount:prod:batch", NOW + 600);

    revocations.disable(payments, NOW).unwrap();
    let (status, body) = request_wit(&base, &payments_token, payments, &key).await;
    assert_eq!((status, body["reason"].as_str()), (403, Some("issuance_denied")), "{body}");
    let refused = server.issue_wit(&payments_token, payments, key.public_jwk(), Some(600)).await.unwrap_err();
    assert!(refused.detail().unwrap().contains("disabled by a risk signal"), "{refused:?}");
    assert_eq!(request_wit(&base, &batch_token, batch, &key).await.0, 200, "others are unaffected");

    // Revoked credentials are replaced by new ones; enabled again, it is issued to.
    revocations.revoke_before(batch, NOW, NOW).unwrap();
    assert_eq!(request_wit(&base, &batch_token, batch, &key).await.0, 200);
    revocations.enable(payments, NOW).unwrap();
    assert_eq!(request_wit(&base, &payments_token, payments, &key).await.0, 200);
}

/// A server on `config` (with the extra members `extra`), served on loopback, and the payments
/// workload's request: its identifier, its platform token and a key.
async fn payments_on(
    platform: &Platform,
    store: &std::path::Path,
    extra: Value,
) -> (String, &'static str, String, SigningKey) {
    let mut config = config(platform, store);
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let config: IssuerConfig = serde_json::from_value(config).unwrap();
    let server = Arc::new(IdentityServer::open(config, FixedClock::new(NOW)).await.unwrap());
    let base = serve(server).await;
    let token = platform.token(PLATFORM_ISS, "system:serviceaccount:prod:payments", NOW + 600);
    (base, "spiffe://prod.example/ns/prod/sa/payments", token, SigningKey::generate(Algorithm::ES256).unwrap())
}

/// With `audit` in its configuration, the identity server records every issuance and every
/// refusal of its issuing endpoints in a tamper-evident log: what was issued to whom, which
/// check refused, and nothing of the tokens themselves.
#[tokio::test]
async fn issuances_and_refusals_are_recorded_in_the_audit_log() {
    use wimse_core::server::audit_log::check;
    let platform = Platform::new();
    let store = store_path("audited");
    let dir = store.parent().unwrap().to_owned();
    let audit_key = SigningKey::generate(Algorithm::ES256).unwrap();
    std::fs::write(dir.join("audit.jwk"), serde_json::to_string(&audit_key.to_private_jwk()).unwrap()).unwrap();
    let audit = json!({"audit": {"file": dir.join("issuer.audit.jsonl"), "service": "spiffe://prod.example/issuer",
                                 "key": dir.join("audit.jwk"), "checkpoint_every": 2}});
    let (base, payments, token, key) = payments_on(&platform, &store, audit).await;

    assert_eq!(request_wit(&base, &token, payments, &key).await.0, 200);
    // Another identity than the client's, and a forged platform token.
    assert_eq!(request_wit(&base, &token, "spiffe://prod.example/ns/prod/sa/admin", &key).await.0, 403);
    let forged = Platform::new().token(PLATFORM_ISS, "system:serviceaccount:prod:payments", NOW + 600);
    assert_eq!(request_wit(&base, &forged, payments, &key).await.0, 401);

    let path = dir.join("issuer.audit.jsonl");
    let wait = std::time::Instant::now();
    let records = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let records: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if records.iter().filter(|r| r["kind"] == "decision").count() == 3 {
            break records;
        }
        assert!(wait.elapsed() < std::time::Duration::from_secs(10), "{records:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let decisions: Vec<&Value> = records.iter().filter(|r| r["kind"] == "decision").collect();
    /// A record's action, decision, resource, caller and reason.
    fn summary(r: &Value) -> [Option<&str>; 5] {
        ["action", "decision", "resource", "caller", "reason"].map(|member| r[member].as_str())
    }
    assert_eq!(summary(decisions[0]), [Some("issue:wit"), Some("allow"), Some(payments), Some("payments-sa"), None]);
    let admin = "spiffe://prod.example/ns/prod/sa/admin";
    assert_eq!(summary(decisions[1]), [Some("issue:wit"), Some("deny"), Some(admin), None, Some("issuance_denied")]);
    assert_eq!(summary(decisions[2])[1], Some("deny"));
    assert!(summary(decisions[2])[4].is_some());
    // No token, bootstrap credential or key is written into the log.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&token) && !text.contains(&forged) && !text.contains("\"jwk\""));
    let report = check(
        vec![("issuer".to_owned(), std::io::BufReader::new(text.as_bytes()))],
        std::slice::from_ref(audit_key.public_key()),
        None,
    );
    assert!(report.is_intact() && report.checkpoints >= 1, "{report:?}");
}

/// With `signals` in its configuration, the identity server refuses what the transmitter
/// disabled: a receiver built from the same settings (a push route, `wimse issuer serve`'s
/// poller) shares its revocations.
#[tokio::test]
async fn signals_in_the_configuration_disable_issuance() {
    use wimse_core::jose::{Backend, jws};
    use wimse_core::server::signals::ACCOUNT_DISABLED;
    let platform = Platform::new();
    let store = store_path("signals");
    let dir = store.parent().unwrap().to_owned();
    let transmitter = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("ssf-1");
    std::fs::write(dir.join("ssf.jwks.json"), json!({"keys": [transmitter.public_jwk()]}).to_string()).unwrap();
    let signals = json!({"issuer": "https://ssf.example", "audience": "https://issuer.prod.example",
                         "jwks_file": dir.join("ssf.jwks.json"), "state_file": dir.join("revocations.json")});
    let receiver =
        serde_json::from_value::<wimse_core::config::SignalSettings>(signals.clone()).unwrap().receiver().unwrap();
    let (base, payments, token, key) = payments_on(&platform, &store, json!({"signals": signals})).await;
    assert_eq!(request_wit(&base, &token, payments, &key).await.0, 200);

    let set = json!({"iss": "https://ssf.example", "aud": "https://issuer.prod.example", "iat": NOW, "jti": "set-1",
                     "events": {ACCOUNT_DISABLED: {"subject": {"format": "uri", "uri": payments}}}});
    receiver
        .receive(&jws::sign("secevent+jwt", Some("ssf-1"), &set, &transmitter, Backend::default()).unwrap(), NOW)
        .unwrap();
    let (status, body) = request_wit(&base, &token, payments, &key).await;
    assert_eq!((status, body["reason"].as_str()), (403, Some("issuance_denied")), "{body}");
}

/// A workload a signal revoked renews with its bootstrap credential, never with its client WIC
/// (which may be the revoked credential: its issuance time is not known at renewal).
#[tokio::test]
async fn a_revoked_workload_does_not_renew_with_its_wic() {
    use wimse_core::server::signals::Revocations;
    use wimse_issuer::ClientAuthentication;
    let platform = Platform::new();
    let mut config = config(&platform, &store_path("wic-renewal-revoked"));
    config["clients"][0]["wic_renewal"] = json!(true);
    let config: IssuerConfig = serde_json::from_value(config).unwrap();
    let revocations = Revocations::new();
    let server = IdentityServer::open(config, FixedClock::new(NOW)).await.unwrap().revocations(revocations.clone());
    let payments: WorkloadId = "spiffe://prod.example/ns/prod/sa/payments".parse().unwrap();
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let renew =
        || server.issue_wit(ClientAuthentication::Wic(&payments), payments.as_str(), key.public_jwk(), Some(600));
    renew().await.expect("renewed with its WIC");
    revocations.revoke_before(payments.as_str(), NOW, NOW).unwrap();
    assert_eq!(renew().await.unwrap_err().kind(), &ErrorKind::BootstrapTokenInvalid);
    let token = platform.token(PLATFORM_ISS, "system:serviceaccount:prod:payments", NOW + 600);
    server
        .issue_wit(&token, payments.as_str(), key.public_jwk(), Some(600))
        .await
        .expect("with its bootstrap credential");
}
