//! RFC 7523 federation at the identity server's token endpoint: a platform token (here shaped
//! like a Kubernetes projected service-account token) as the jwt-bearer grant or as a client
//! assertion, the WIT bound to the request's DPoP key (RFC 9449), claim conditions in the
//! issuance policy, and every refusal the practices draft asks for.

use std::sync::Arc;

use serde_json::{Value, json};
use wimse_core::jose::{Algorithm, Backend, SigningKey, jws};
use wimse_core::prelude::*;
use wimse_core::protocol::dpop;
use wimse_core::protocol::wit::{WitValidation, validate_wit};
use wimse_issuer::{IdentityServer, IssuerConfig};

const K8S: &str = "https://kubernetes.default.svc";
const PAYMENTS: &str = "spiffe://prod.example/ns/prod/sa/payments";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

fn now() -> u64 {
    SystemClock.now()
}

struct Federation {
    base: String,
    endpoint: String,
    cluster: SigningKey,
    http: reqwest::Client,
    server: Arc<IdentityServer>,
}

impl Federation {
    async fn start(name: &str) -> Self {
        Self::start_with(name, true).await
    }

    async fn start_with(name: &str, single_use: bool) -> Self {
        let cluster = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("k8s-1");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let endpoint = format!("{base}/v1/token");
        let dir = std::env::temp_dir().join(format!("wimse-federation-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config: IssuerConfig = serde_json::from_value(json!({
            "trust_domain": "spiffe://prod.example",
            "key_store": dir.join("keys.json"),
            "token_endpoint": endpoint,
            "platforms": [{"name": "cluster", "issuer": K8S, "audience": "wimse-issuer",
                           "jwks": {"keys": [cluster.public_jwk()]}, "max_token_lifetime": 3600,
                           "token_types": ["authorization-grant+jwt", "JWT", "none"], "single_use": single_use}],
            "clients": [{"name": "payments", "platform": "cluster",
                         "claims": {"/kubernetes.io/namespace": "prod", "/kubernetes.io/serviceaccount/name": ["payments", "payments-canary"]},
                         "allowed": [PAYMENTS], "max_lifetime": 600}],
            "rate_limits": {"failed_authentications": {"burst": 1000, "per_minute": 1000}}
        }))
        .unwrap();
        let server = Arc::new(IdentityServer::open(config, SystemClock).await.unwrap());
        let app = wimse_issuer::router(server.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, endpoint, cluster, http: reqwest::Client::new(), server }
    }

    /// A projected service-account token for `namespace`/`name`, audience `aud`.
    fn platform_token(
        &self,
        typ: Option<&str>,
        aud: &str,
        namespace: &str,
        name: &str,
        exp: u64,
        key: &SigningKey,
    ) -> String {
        use rand_core::RngCore as _;
        let mut jti = [0u8; 8];
        rand_core::OsRng.fill_bytes(&mut jti);
        let claims = json!({
            "iss": K8S, "sub": format!("system:serviceaccount:{namespace}:{name}"), "aud": [aud],
            "exp": exp, "iat": now(), "nbf": now(), "jti": format!("{jti:?}"),
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": "u-1"}}
        });
        let mut header = serde_json::Map::new();
        header.insert("kid".into(), "k8s-1".into());
        if let Some(typ) = typ {
            header.insert("typ".into(), typ.into());
        }
        jws::sign_with_header(header, &claims, key, Backend::default()).unwrap()
    }

    fn good_token(&self) -> String {
        self.platform_token(Some("JWT"), &self.endpoint, "prod", "payments", now() + 600, &self.cluster)
    }

    async fn grant(&self, form: &[(&str, &str)], dpop: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(&self.endpoint).form(form);
        if let Some(proof) = dpop {
            request = request.header("dpop", proof);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn trust(&self) -> TrustStore {
        let bundle = reqwest::get(format!("{}/v1/bundle/spiffe", self.base)).await.unwrap().text().await.unwrap();
        TrustStore::new()
            .with("spiffe://prod.example".parse().unwrap(), TrustAnchors::from_spiffe_bundle_json(&bundle).unwrap())
    }
}

#[tokio::test]
async fn a_platform_token_and_a_dpop_proof_get_a_wit_bound_to_the_proof_key() {
    let f = Federation::start("ok").await;
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let proof = dpop::proof(&key, "POST", &f.endpoint, now()).unwrap();
    let token = f.good_token();
    let (status, body) = f.grant(&[("grant_type", JWT_BEARER), ("assertion", &token)], Some(&proof)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    assert_eq!(body["expires_in"], 600);
    let wit = validate_wit(body["access_token"].as_str().unwrap(), &f.trust().await, &WitValidation::default(), now())
        .unwrap();
    assert_eq!(wit.subject().as_str(), PAYMENTS);
    assert_eq!(wit.cnf_key().thumbprint(), key.public_key().thumbprint(), "bound to the DPoP key");

    // RFC 7523 §2.2: the same platform token as JWT client authentication.
    let token = f.good_token();
    let proof = dpop::proof(&key, "POST", &f.endpoint, now()).unwrap();
    let form = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", token.as_str()),
        ("scope", PAYMENTS),
    ];
    let (status, body) = f.grant(&form, Some(&proof)).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn what_the_practices_draft_asks_to_refuse_is_refused() {
    let f = Federation::start("refusals").await;
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let rogue = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("k8s-1");
    let t = now();
    // Each refusal names its check in `error_description` (after the kind's description).
    const REFUSED: &str = "the token exchange was refused: ";
    const NO_CLIENT: &str =
        "the client may not obtain this identifier: no client for this platform token (subject or claim conditions)";
    let refused = |check: &str| format!("{REFUSED}{check}");
    let cases: Vec<(&str, String, String)> = vec![
        (
            "unknown issuer's key",
            f.platform_token(Some("JWT"), &f.endpoint, "prod", "payments", t + 600, &rogue),
            refused("bad signature"),
        ),
        (
            "wrong audience",
            f.platform_token(Some("JWT"), "https://other.example/token", "prod", "payments", t + 600, &f.cluster),
            refused("wrong audience"),
        ),
        (
            "the bootstrap audience",
            f.platform_token(Some("JWT"), "wimse-issuer", "prod", "payments", t + 600, &f.cluster),
            refused("wrong audience"),
        ),
        (
            "expired",
            f.platform_token(Some("JWT"), &f.endpoint, "prod", "payments", t - 60, &f.cluster),
            refused("expired"),
        ),
        (
            "over-long",
            f.platform_token(Some("JWT"), &f.endpoint, "prod", "payments", t + 7200, &f.cluster),
            refused("expires too far ahead"),
        ),
        (
            "typ not accepted",
            f.platform_token(Some("at+jwt"), &f.endpoint, "prod", "payments", t + 600, &f.cluster),
            refused("typ 'at+jwt' not accepted for platform `cluster`"),
        ),
        // The claim conditions: each token differs from a good one in that one claim only.
        (
            "claim condition: namespace",
            f.platform_token(Some("JWT"), &f.endpoint, "dev", "payments", t + 600, &f.cluster),
            NO_CLIENT.to_owned(),
        ),
        (
            "claim condition: account",
            f.platform_token(Some("JWT"), &f.endpoint, "prod", "billing", t + 600, &f.cluster),
            NO_CLIENT.to_owned(),
        ),
    ];
    for (what, token, description) in cases {
        let proof = dpop::proof(&key, "POST", &f.endpoint, now()).unwrap();
        let (status, body) = f.grant(&[("grant_type", JWT_BEARER), ("assertion", &token)], Some(&proof)).await;
        assert_eq!(
            (status, body["error"].as_str(), body["error_description"].as_str()),
            (400, Some("invalid_grant"), Some(description.as_str())),
            "{what}: {body}"
        );
    }
    // The same good token is accepted (nothing else in the cases above was wrong).
    let proof = dpop::proof(&key, "POST", &f.endpoint, now()).unwrap();
    let good = f.platform_token(Some("JWT"), &f.endpoint, "prod", "payments", t + 600, &f.cluster);
    assert_eq!(f.grant(&[("grant_type", JWT_BEARER), ("assertion", &good)], Some(&proof)).await.0, 200);
    // An issuer that is not on the allowlist at all.
    let mut other = f.good_token();
    other = {
        let parsed = jws::parse(&other, 16 * 1024).unwrap();
        let mut claims = parsed.claims.clone();
        claims.insert("iss".into(), "https://evil.example".into());
        jws::sign("JWT", Some("k8s-1"), &claims, &f.cluster, Backend::default()).unwrap()
    };
    let proof = dpop::proof(&key, "POST", &f.endpoint, now()).unwrap();
    let body = f.grant(&[("grant_type", JWT_BEARER), ("assertion", &other)], Some(&proof)).await.1;
    assert_eq!(
        (body["error"].as_str(), body["error_description"].as_str()),
        (Some("invalid_grant"), Some(refused("issuer not on the allowlist").as_str()))
    );

    // DPoP: missing, for another URI, signed by one key with another's jwk, replayed.
    let token = f.good_token();
    let form = [("grant_type", JWT_BEARER), ("assertion", token.as_str())];
    assert_eq!(f.grant(&form, None).await.1["error"], "invalid_dpop_proof");
    let elsewhere = dpop::proof(&key, "POST", "https://other.example/token", now()).unwrap();
    assert_eq!(f.grant(&form, Some(&elsewhere)).await.1["error"], "invalid_dpop_proof");
    let mut header = serde_json::Map::new();
    header.insert("typ".into(), "dpop+jwt".into());
    header.insert(
        "jwk".into(),
        serde_json::to_value(SigningKey::generate(Algorithm::ES256).unwrap().public_jwk()).unwrap(),
    );
    let claims = json!({"jti": "j-1", "htm": "POST", "htu": f.endpoint, "iat": now()});
    let swapped = jws::sign_with_header(header, &claims, &key, Backend::default()).unwrap();
    assert_eq!(f.grant(&form, Some(&swapped)).await.1["error"], "invalid_dpop_proof");
    // A good request, then the same assertion again with a fresh proof, then the same proof.
    let proof = dpop::proof(&key, "POST", &f.endpoint, now()).unwrap();
    assert_eq!(f.grant(&form, Some(&proof)).await.0, 200);
    let fresh = dpop::proof(&key, "POST", &f.endpoint, now()).unwrap();
    let (status, body) = f.grant(&form, Some(&fresh)).await;
    assert_eq!(
        (status, body["error"].as_str(), body["error_description"].as_str()),
        (400, Some("invalid_grant"), Some(refused("assertion jti already used").as_str())),
        "replayed assertion jti: {body}"
    );
    let another = f.good_token();
    let (status, body) = f.grant(&[("grant_type", JWT_BEARER), ("assertion", &another)], Some(&proof)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_dpop_proof")), "replayed proof: {body}");
    // An identifier the client may not have, and an unknown grant.
    let token = f.good_token();
    let proof = dpop::proof(&key, "POST", &f.endpoint, now()).unwrap();
    let form = [("grant_type", JWT_BEARER), ("assertion", token.as_str()), ("scope", "spiffe://prod.example/admin")];
    assert_eq!(f.grant(&form, Some(&proof)).await.1["error"], "invalid_scope");
    assert_eq!(f.grant(&[("grant_type", "password")], None).await.1["error"], "unsupported_grant_type");
    // A refused scope did not spend the assertion: the same token with the right scope works.
    let proof = dpop::proof(&key, "POST", &f.endpoint, now()).unwrap();
    let form = [("grant_type", JWT_BEARER), ("assertion", token.as_str())];
    assert_eq!(f.grant(&form, Some(&proof)).await.0, 200);
    // A malformed request is an RFC 6749 error too (a repeated parameter).
    let response = f
        .http
        .post(&f.endpoint)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type={JWT_BEARER}&grant_type=password"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["error"], "invalid_request");
}

/// Red team, issue 23 item 11: a fresh assertion sent with a replayed DPoP proof was refused
/// and spent, so the client's retry with a fresh proof was refused as a replayed assertion. The
/// proof is claimed first: a refused proof leaves the assertion usable. A replayed assertion
/// with a fresh proof is still refused, as a replayed assertion.
#[tokio::test]
async fn a_replayed_proof_does_not_spend_the_assertion() {
    let f = Federation::start("replayed-proof").await;
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let grant = async |token: &str, proof: &str| {
        f.grant(&[("grant_type", JWT_BEARER), ("assertion", token)], Some(proof)).await
    };
    // A proof is used once, with another assertion.
    let used = dpop::proof(&key, "POST", &f.endpoint, now()).unwrap();
    assert_eq!(grant(&f.good_token(), &used).await.0, 200);

    // A fresh assertion with the replayed proof: refused for the proof.
    let token = f.good_token();
    let (status, body) = grant(&token, &used).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_dpop_proof")), "{body}");
    // The client retries the same assertion with a fresh proof: it was not spent.
    let fresh = dpop::proof(&key, "POST", &f.endpoint, now()).unwrap();
    let (status, body) = grant(&token, &fresh).await;
    assert_eq!(status, 200, "the assertion survived the refused proof: {body}");
    let wit = validate_wit(body["access_token"].as_str().unwrap(), &f.trust().await, &WitValidation::default(), now())
        .unwrap();
    assert_eq!(wit.cnf_key().thumbprint(), key.public_key().thumbprint());

    // The neighbour: now spent, the assertion is refused with a fresh proof, as a replay.
    let another = dpop::proof(&key, "POST", &f.endpoint, now()).unwrap();
    let (status, body) = grant(&token, &another).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    let again = dpop::proof(&key, "POST", &f.endpoint, now()).unwrap();
    let err = f.server.jwt_bearer_grant(&token, Some(&again), None).await.unwrap_err();
    assert_eq!((err.kind(), err.detail()), (&ErrorKind::ExchangeRefused, Some("assertion jti already used")));
    // A replayed assertion with a replayed proof: the proof is what is refused first.
    let err = f.server.jwt_bearer_grant(&token, Some(&used), None).await.unwrap_err();
    assert_eq!((err.kind(), err.detail()), (&ErrorKind::InvalidDpopProof, Some("DPoP proof jti already used")));
}

/// The bearer bootstrap goes through the same validation and claim conditions.
#[tokio::test]
async fn the_bearer_bootstrap_uses_the_same_claim_conditions() {
    let f = Federation::start("bearer").await;
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let request = |token: String| {
        f.http
            .post(format!("{}/v1/wit", f.base))
            .bearer_auth(token)
            .json(&json!({"sub": PAYMENTS, "jwk": key.public_jwk()}))
            .send()
    };
    let ok = f.platform_token(Some("JWT"), "wimse-issuer", "prod", "payments-canary", now() + 600, &f.cluster);
    assert_eq!(request(ok).await.unwrap().status(), 200);
    let other_namespace = f.platform_token(Some("JWT"), "wimse-issuer", "dev", "payments", now() + 600, &f.cluster);
    let response = request(other_namespace).await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(response.json::<Value>().await.unwrap()["reason"], "issuance_denied");
    let two_audiences = {
        let parsed = jws::parse(&f.good_token(), 16 * 1024).unwrap().claims.clone();
        let mut claims = parsed;
        claims.insert("aud".into(), json!(["wimse-issuer", "https://kubernetes.default.svc"]));
        jws::sign("JWT", Some("k8s-1"), &claims, &f.cluster, Backend::default()).unwrap()
    };
    let response = request(two_audiences).await.unwrap();
    assert_eq!(response.status(), 401, "one audience per token");
    assert_eq!(response.json::<Value>().await.unwrap()["reason"], "bootstrap_token_invalid");
}

/// A workload renews its WIT through the RFC 7523 grant from a projected token file, as a
/// Kubernetes pod would: the file is re-read for every renewal (a rotated token is used at
/// once), each WIT is bound to a fresh key, and requests signed with it verify.
#[tokio::test]
async fn issuer_credentials_federate_from_a_token_file() {
    use wimse_reqwest::{Bootstrap, IssuerCredentials, PlatformToken};
    // Projected service-account tokens are presented again until the kubelet rotates them.
    let f = Federation::start_with("credentials", false).await;
    let dir = std::env::temp_dir().join(format!("wimse-federation-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, f.good_token()).unwrap();
    let credentials =
        IssuerCredentials::connect(f.base.clone(), PAYMENTS, Bootstrap::Assertion(PlatformToken::File(file.clone())))
            .await
            .unwrap();
    let first = credentials.credentials(now()).unwrap();
    assert_eq!(first.subject().as_str(), PAYMENTS);
    validate_wit(first.wit(), &f.trust().await, &WitValidation::default(), now()).unwrap();
    // The same (reusable) token renews again, with a new key.
    credentials.renew().await.unwrap();
    let second = credentials.credentials(now()).unwrap();
    assert_ne!(first.key().public_key().thumbprint(), second.key().public_key().thumbprint());
    // The kubelet rotates the file; an invalid token in it is refused with the server's reason.
    std::fs::write(&file, f.platform_token(Some("JWT"), &f.endpoint, "dev", "payments", now() + 600, &f.cluster))
        .unwrap();
    let err = credentials.renew().await.unwrap_err();
    assert!(err.detail().unwrap().contains("invalid_grant"), "{err:?}");
    assert!(!err.detail().unwrap().contains("eyJ"), "no token in errors");
    std::fs::write(&file, f.good_token()).unwrap();
    credentials.renew().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// The client-side grant against this server: an access token (here a DPoP-bound WIT) from a
/// platform token, cached, and put on requests with a DPoP proof by the middleware.
#[tokio::test]
async fn the_generic_assertion_grant_and_middleware() {
    use wimse_reqwest::{AssertionGrant, OAuthTokenMiddleware, PlatformToken};
    let f = Federation::start_with("generic", false).await;
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let grant = AssertionGrant::new(f.endpoint.clone(), PlatformToken::Static(f.good_token()))
        .scope(PAYMENTS)
        .dpop(key.clone());
    let token = grant.token().await.unwrap();
    assert_eq!(token.token_type, "DPoP");
    assert!(Arc::ptr_eq(&token, &grant.token().await.unwrap()), "cached until shortly before expiry");
    assert!(!format!("{token:?}").contains(&token.token[..20]), "Debug shows no token");
    let wit = validate_wit(&token.token, &f.trust().await, &WitValidation::default(), now()).unwrap();
    assert_eq!(wit.cnf_key().thumbprint(), key.public_key().thumbprint());

    // The middleware: `Authorization: DPoP <token>` and a proof bound to it (`ath`).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}/invoices", listener.local_addr().unwrap());
    let seen: Arc<std::sync::Mutex<Option<http::HeaderMap>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/invoices",
        axum::routing::get(move |headers: http::HeaderMap| {
            *record.lock().unwrap() = Some(headers);
            async { "ok" }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(OAuthTokenMiddleware::new(grant).for_origin(api.trim_end_matches("/invoices")))
        .build();
    assert_eq!(client.get(format!("{api}?page=2")).send().await.unwrap().status(), 200);
    let headers = seen.lock().unwrap().take().unwrap();
    assert_eq!(headers["authorization"].to_str().unwrap(), format!("DPoP {}", token.token));
    let proof = headers["dpop"].to_str().unwrap();
    let verified = dpop::verify(proof, "GET", &api, &dpop::DpopValidation::default(), now()).unwrap();
    assert_eq!(verified.jwk.thumbprint().unwrap(), key.public_jwk().thumbprint().unwrap());
    let claims = jws::parse(proof, 8192).unwrap().claims;
    use sha2::Digest as _;
    let ath = wimse_core::jose::b64url_encode(sha2::Sha256::digest(token.token.as_bytes()));
    assert_eq!(claims["ath"], ath.as_str());

    // A server that refuses: the error names its answer, never the assertion.
    let bad = AssertionGrant::new(f.endpoint.clone(), PlatformToken::Static("not.a.jwt".into())).dpop(key);
    let err = bad.token().await.unwrap_err();
    assert!(err.detail().unwrap().contains("400 Bad Request: invalid_grant"), "{err:?}");
}

/// Configurations that would weaken the grant are refused at start, naming the field.
#[tokio::test]
async fn risky_grant_configurations_are_refused() {
    let cluster = SigningKey::generate(Algorithm::ES256).unwrap();
    let dir = std::env::temp_dir().join(format!("wimse-federation-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let open = |patch: &dyn Fn(&mut Value)| {
        let mut value = json!({
            "trust_domain": "spiffe://prod.example",
            "key_store": dir.join("keys.json"),
            "token_endpoint": "https://issuer.prod.example/v1/token",
            "platforms": [{"name": "cluster", "issuer": K8S, "audience": "wimse-issuer", "jwks": {"keys": [cluster.public_jwk()]}}],
            "clients": [{"name": "payments", "platform": "cluster", "subject": "s", "allowed": [PAYMENTS], "max_lifetime": 600}]
        });
        patch(&mut value);
        let config: IssuerConfig = serde_json::from_value(value).unwrap();
        async move { IdentityServer::open(config, SystemClock).await }
    };
    open(&|_| {}).await.unwrap();
    for (patch, field) in [
        (
            Box::new(|v: &mut Value| v["platforms"][0]["audience"] = "https://issuer.prod.example/v1/token".into())
                as Box<dyn Fn(&mut Value)>,
            "token_endpoint",
        ),
        (
            Box::new(|v: &mut Value| v["token_endpoint"] = "http://issuer.prod.example/v1/token".into()),
            "token_endpoint",
        ),
        (
            Box::new(|v: &mut Value| {
                let again = v["platforms"][0].clone();
                v["platforms"].as_array_mut().unwrap().push(again);
            }),
            "platforms[1]",
        ),
    ] {
        let err = open(&*patch).await.unwrap_err();
        assert!(err.detail().unwrap().starts_with(field), "{err:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
