//! Federation against implementations nobody here wrote (Authlib and joserfc, from PyPI):
//! our client gets an access token from Authlib's RFC 7523 server with a platform token, and our
//! identity server issues a WIT to an RFC 7523 + DPoP request built by joserfc. Skipped loudly
//! without them unless `WIMSE_REQUIRE_OAUTH_AS=1`.

use std::sync::Arc;

use serde_json::{Value, json};
use wimse_core::jose::{Algorithm, Backend, SigningKey, jws};
use wimse_core::prelude::*;
use wimse_issuer::{IdentityServer, IssuerConfig};
use wimse_reqwest::{AssertionGrant, OAuthTokenMiddleware, PlatformToken};
use wimse_testkit::servers::{AuthlibServer, TempDir, authlib_fixture, oauth_python};

const K8S: &str = "https://kubernetes.default.svc";

fn now() -> u64 {
    SystemClock.now()
}

fn projected_token(cluster: &SigningKey, aud: &str) -> String {
    let claims = json!({
        "iss": K8S, "sub": "system:serviceaccount:prod:payments", "aud": aud,
        "exp": now() + 600, "iat": now(), "jti": format!("{}", now()),
        "kubernetes.io": {"namespace": "prod", "serviceaccount": {"name": "payments"}}
    });
    jws::sign("JWT", cluster.kid(), &claims, cluster, Backend::default()).unwrap()
}

#[tokio::test]
async fn our_client_gets_a_token_from_authlib() {
    let cluster = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("k8s-1");
    let Some(authlib) = AuthlibServer::start(K8S, &json!({"keys": [cluster.public_jwk()]})) else { return };
    let endpoint = authlib.token_endpoint();
    let dir = TempDir::new("wimse-authlib-client");
    let file = dir.write_file("token", &projected_token(&cluster, &endpoint));
    let grant = AssertionGrant::new(endpoint.clone(), PlatformToken::File(file.clone())).scope("invoices");
    // Authlib's development server may take a moment to accept requests.
    let mut token = None;
    for _ in 0..50 {
        match grant.request().await {
            Ok(t) => {
                token = Some(t);
                break;
            }
            Err(e) if e.detail().is_some_and(|d| d.contains("error sending request")) => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    let token = token.expect("Authlib answered");
    assert!(token.token_type.eq_ignore_ascii_case("bearer"), "{token:?}");
    assert!(token.expires_at > now());
    assert_eq!(token.scope.as_deref(), Some("invoices"));

    // Authlib refuses what it should: a token for another audience, in its own words.
    std::fs::write(&file, projected_token(&cluster, "https://elsewhere.example/token")).unwrap();
    let err = AssertionGrant::new(endpoint.clone(), PlatformToken::File(file.clone())).request().await.unwrap_err();
    assert!(err.detail().unwrap().contains("invalid_grant"), "{err:?}");

    // The middleware puts Authlib's bearer token on requests.
    std::fs::write(&file, projected_token(&cluster, &endpoint)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}/invoices", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/invoices",
        axum::routing::get(|headers: http::HeaderMap| async move {
            headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(
            OAuthTokenMiddleware::new(AssertionGrant::new(endpoint, PlatformToken::File(file)).scope("invoices"))
                .for_origin(api.trim_end_matches("/invoices")),
        )
        .build();
    let seen = client.get(&api).send().await.unwrap().text().await.unwrap();
    assert!(seen.starts_with("Bearer ") && seen.len() > 20, "{seen}");
}

#[tokio::test]
async fn a_joserfc_client_gets_a_wit_from_our_identity_server() {
    let Some(python) = oauth_python() else { return };
    let cluster = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("k8s-1");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let endpoint = format!("{base}/v1/token");
    let dir = TempDir::new("wimse-joserfc-client");
    let config: IssuerConfig = serde_json::from_value(json!({
        "trust_domain": "spiffe://prod.example",
        "key_store": dir.path().join("keys.json"),
        "token_endpoint": endpoint,
        "platforms": [{"name": "cluster", "issuer": K8S, "audience": "wimse-issuer", "jwks": {"keys": [cluster.public_jwk()]}}],
        "clients": [{"name": "payments", "platform": "cluster",
                     "claims": {"/kubernetes.io/namespace": "prod", "/kubernetes.io/serviceaccount/name": "payments"},
                     "allowed": ["spiffe://prod.example/ns/prod/sa/payments"], "max_lifetime": 600}]
    }))
    .unwrap();
    let server = Arc::new(IdentityServer::open(config, SystemClock).await.unwrap());
    let app = wimse_issuer::router(server.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let key_file = dir.write_file("cluster.jwk", &serde_json::to_string(&cluster.to_private_jwk()).unwrap());

    let run = move |scope: &str| {
        let out = std::process::Command::new(&python)
            .arg(authlib_fixture())
            .args(["client", &endpoint])
            .arg(&key_file)
            .arg(scope)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let answer = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run("spiffe://prod.example/ns/prod/sa/payments")
    })
    .await
    .unwrap();
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["body"]["token_type"], "DPoP");
    let trust = TrustStore::new().with("spiffe://prod.example".parse().unwrap(), server.anchors().unwrap());
    let wit = wimse_core::protocol::wit::validate_wit(
        answer["body"]["access_token"].as_str().unwrap(),
        &trust,
        &wimse_core::protocol::wit::WitValidation::default(),
        now(),
    )
    .unwrap();
    assert_eq!(wit.subject().as_str(), "spiffe://prod.example/ns/prod/sa/payments");
    // Bound to the key joserfc generated for its DPoP proof (RFC 7638 thumbprints agree).
    assert_eq!(wit.cnf_key().thumbprint(), answer["dpop_jkt"].as_str().unwrap());

    let refused = tokio::task::spawn_blocking(move || run("spiffe://prod.example/admin")).await.unwrap();
    assert_eq!((refused["status"].as_u64(), refused["body"]["error"].as_str()), (Some(400), Some("invalid_scope")));
}
