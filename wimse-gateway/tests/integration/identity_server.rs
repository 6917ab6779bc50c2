//! The gateway against a real identity server on loopback: its own WIT obtained (and renewed)
//! from it with a bootstrap token file, its trust anchors followed from its published bundle.

use std::sync::Arc;

use serde_json::json;
use wimse_core::time::SystemClock;
use wimse_gateway::{Gateway, GatewayConfig};

use crate::common::{Echo, echo_app};

const GATEWAY_ID: &str = "spiffe://prod.example/gateway";
const SECRET: &str = "a-dev-secret-for-the-gateway";

#[tokio::test]
async fn credentials_and_trust_come_from_the_identity_server() {
    let dir = std::env::temp_dir().join(format!("wimse-gateway-issuer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let issuer: wimse_issuer::IssuerConfig = serde_json::from_value(json!({
        "trust_domain": "spiffe://prod.example",
        "issuer": "https://issuer.prod.example",
        "key_store": dir.join("keys.json"),
        "dev_mode": true,
        "clients": [{"name": "gateway", "dev_secret": SECRET, "allowed": [GATEWAY_ID], "max_lifetime": 3600}],
    }))
    .expect("issuer config");
    let server = Arc::new(wimse_issuer::IdentityServer::open(issuer, SystemClock).await.expect("issuer"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, wimse_issuer::router(server)).await });
    std::fs::write(dir.join("token"), SECRET).expect("token file");

    let app = echo_app().await;
    let port = wimse_testkit::servers::free_port();
    let file = dir.join("gateway.toml");
    let head = format!(
        r#"
[verifier]
trust = [{{ trust_domain = "spiffe://prod.example", bundle_url = "{base}/v1/bundle/spiffe" }}]
[identity_server]
url = "{base}"
workload = "{GATEWAY_ID}"
token_file = "token"
"#
    );
    let tail = crate::common::egress_to_own_proxy(port, &format!("http://{app}"), GATEWAY_ID);
    std::fs::write(&file, format!("{head}{tail}")).expect("config");
    // Relative paths are relative to the file.
    let gateway = Gateway::start(GatewayConfig::load(&file).expect("config")).await.expect("gateway");
    let serving = gateway.clone();
    tokio::spawn(async move { serving.serve(std::future::pending()).await });
    let application = crate::common::through_egress(&gateway);
    let response = application.get(format!("http://127.0.0.1:{port}/stock")).send().await.expect("answer");
    assert_eq!(response.status(), 200);
    let seen: Echo = serde_json::from_slice(&response.bytes().await.expect("body")).expect("echo");
    assert_eq!(seen.header("x-wimse-caller"), Some(GATEWAY_ID));
    let _ = std::fs::remove_dir_all(&dir);
}
