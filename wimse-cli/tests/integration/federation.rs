//! `wimse token assert`: an access token from an RFC 7523 authorization server, ours (a WIT
//! bound to a DPoP key) and Authlib's (skipped without it unless `WIMSE_REQUIRE_OAUTH_AS=1`).

use std::process::Command;
use std::sync::Arc;

use serde_json::{Value, json};
use wimse_core::jose::{Algorithm, Backend, SigningKey, jws};
use wimse_core::time::{Clock as _, SystemClock};
use wimse_issuer::{IdentityServer, IssuerConfig};
use wimse_testkit::servers::{AuthlibServer, TempDir};

const K8S: &str = "https://kubernetes.default.svc";
const PAYMENTS: &str = "spiffe://prod.example/ns/prod/sa/payments";

fn projected_token(cluster: &SigningKey, aud: &str) -> String {
    let now = SystemClock.now();
    let claims = json!({
        "iss": K8S, "sub": "system:serviceaccount:prod:payments", "aud": aud, "exp": now + 600, "iat": now,
        "jti": format!("cli-{now}-{aud}"), "kubernetes.io": {"namespace": "prod", "serviceaccount": {"name": "payments"}}
    });
    jws::sign("JWT", Some("k8s-1"), &claims, cluster, Backend::default()).unwrap()
}

fn assert_cmd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wimse")).args(["token", "assert"]).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn token_assert_at_our_identity_server_and_at_authlib() {
    let cluster = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("k8s-1");
    let dir = TempDir::new("wimse-cli-assert");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/v1/token", listener.local_addr().unwrap());
    let config: IssuerConfig = serde_json::from_value(json!({
        "trust_domain": "spiffe://prod.example",
        "key_store": dir.path().join("keys.json"),
        "token_endpoint": endpoint,
        "platforms": [{"name": "cluster", "issuer": K8S, "audience": "wimse-issuer", "jwks": {"keys": [cluster.public_jwk()]}}],
        "clients": [{"name": "payments", "platform": "cluster", "claims": {"/kubernetes.io/namespace": "prod"},
                     "allowed": [PAYMENTS], "max_lifetime": 600}]
    }))
    .unwrap();
    let server = Arc::new(IdentityServer::open(config, SystemClock).await.unwrap());
    let app = wimse_issuer::router(server).into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let assertion = dir.write_file("token", &projected_token(&cluster, &endpoint));
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let key_file = dir.write_file("dpop.jwk", &serde_json::to_string(&key.to_private_jwk()).unwrap());

    let (a, s, k) = (assertion.display().to_string(), endpoint.clone(), key_file.display().to_string());
    let (ok, stdout, stderr) =
        tokio::task::spawn_blocking(move || assert_cmd(&["--token-url", &s, "--assertion", &a, "--dpop-key", &k]))
            .await
            .unwrap();
    assert!(ok, "{stderr}");
    let answer: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["token_type"], "DPoP");
    let wit = jws::parse(answer["access_token"].as_str().unwrap(), 8192).unwrap();
    assert_eq!(wit.claims["sub"], PAYMENTS);
    // Without a DPoP key our server refuses, and says why (never the token).
    let (a, s) = (assertion.display().to_string(), endpoint.clone());
    let (ok, _, stderr) =
        tokio::task::spawn_blocking(move || assert_cmd(&["--token-url", &s, "--assertion", &a])).await.unwrap();
    assert!(!ok && stderr.contains("invalid_dpop_proof"), "{stderr}");
    assert!(!stderr.contains("eyJ"));

    // The same command at a third-party server (Authlib).
    let Some(authlib) = AuthlibServer::start(K8S, &json!({"keys": [cluster.public_jwk()]})) else { return };
    let endpoint = authlib.token_endpoint();
    let assertion = dir.write_file("authlib-token", &projected_token(&cluster, &endpoint));
    let a = assertion.display().to_string();
    let answer = tokio::task::spawn_blocking(move || {
        for _ in 0..50 {
            let (ok, stdout, stderr) =
                assert_cmd(&["--token-url", &endpoint, "--assertion", &a, "--scope", "invoices"]);
            if ok {
                return stdout;
            }
            assert!(stderr.contains("error sending request"), "{stderr}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("Authlib never answered");
    })
    .await
    .unwrap();
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert!(answer["token_type"].as_str().unwrap().eq_ignore_ascii_case("bearer"), "{answer}");
}
