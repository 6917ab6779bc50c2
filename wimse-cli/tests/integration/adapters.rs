//! Requests signed by the tower client layer and by the reqwest middleware are accepted by
//! `wimse verify`: the adapters and the CLI agree on the wire format.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{HeaderMap, Method, Request, Response};
use reqwest_middleware::ClientBuilder;
use serde_json::Value;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use wimse_testkit::{ALLOWED, Capture, Deployment};
use wimse_tower::WimseSignLayer;

/// Writes a raw HTTP/1.1 request and runs `wimse verify` on it.
fn cli_verify(deployment: &Deployment, method: &Method, url: &str, headers: &HeaderMap) -> Value {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let unique = NEXT.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("wimse-cli-adapters-{}-{unique}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let uri: http::Uri = url.parse().unwrap();
    let mut raw =
        format!("{method} {} HTTP/1.1\r\nHost: {}\r\n", uri.path_and_query().unwrap(), uri.authority().unwrap());
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    raw.push_str("\r\n");
    std::fs::write(dir.join("request.http"), raw).unwrap();
    std::fs::write(dir.join("issuer.jwk"), deployment.issuer_public_jwk().to_json()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wimse"))
        .args(["verify", "--request"])
        .arg(dir.join("request.http"))
        .arg("--trust-anchor")
        .arg(format!("spiffe://prod.example={}", dir.join("issuer.jwk").display()))
        .args(["--origin", &format!("{}://{}", uri.scheme_str().unwrap(), uri.authority().unwrap())])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
async fn tower_client_layer_output_verifies_with_the_cli() {
    let deployment = Deployment::new();
    let captured = Arc::new(Mutex::new(None));
    let sink = captured.clone();
    let client = ServiceBuilder::new().layer(WimseSignLayer::new(deployment.signer(ALLOWED))).service(service_fn(
        move |req: Request<()>| {
            *sink.lock().unwrap() = Some(req.headers().clone());
            async { Ok::<_, Infallible>(Response::new(())) }
        },
    ));
    let url = "https://orders.example/v1/orders?page=2";
    client.oneshot(Request::get(url).header("txn-token", "txn-7").body(()).unwrap()).await.unwrap();
    let headers = captured.lock().unwrap().take().unwrap();
    let out = cli_verify(&deployment, &Method::GET, url, &headers);
    assert_eq!(out["verified"], true, "{out}");
    assert_eq!(out["caller"]["id"], ALLOWED);
    assert_eq!(out["caller"]["txn_token_bound"], true);
}

#[tokio::test]
async fn reqwest_middleware_output_verifies_with_the_cli() {
    let deployment = Deployment::new();
    let capture = Capture::default();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(wimse_reqwest::WimseSignMiddleware::new(deployment.signer(ALLOWED)))
        .with(capture.clone())
        .build();
    client.post("http://billing.example:8080/charge?x=1").header("txn-token", "txn-8").send().await.unwrap();
    let sent = capture.take().unwrap();
    let out = cli_verify(&deployment, &sent.method, sent.url.as_str(), &sent.headers);
    assert_eq!(out["verified"], true, "{out}");
    assert_eq!(out["caller"]["txn_token_bound"], true);
}
