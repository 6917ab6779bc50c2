//! HTTP-signature mode end to end: reqwest signs, axum (behind `WimseLayer`) verifies and signs
//! its response, the client verifies that.

use axum::Router;
use axum::routing::post;
use reqwest_middleware::ClientBuilder;
use tokio::net::TcpListener;
use wimse_axum::{Caller, WimseLayer};
use wimse_core::verify::ProofMethod;
use wimse_reqwest::{ProofMode, WimseMiddleware};
use wimse_testkit::{ALLOWED, Capture, Deployment};

async fn echo(Caller(caller): Caller, body: String) -> String {
    let mode = caller.method().name();
    if let ProofMethod::HttpSignature { sign_response, .. } = caller.method() {
        assert!(*sign_response || !body.contains("want-signed"));
    }
    format!("{} {mode} {body}", caller.id())
}

async fn serve(deployment: &Deployment, sign_responses: bool, body_limit: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut layer = WimseLayer::new(deployment.verifier(&base)).body_limit(body_limit);
    if sign_responses {
        layer = layer.sign_responses(deployment.signer("spiffe://prod.example/server"));
    }
    let app = Router::new().route("/pay", post(echo)).layer(layer);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test]
async fn signed_requests_and_signed_responses() {
    let deployment = Deployment::new();
    let base = serve(&deployment, true, 1024).await;
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(
            WimseMiddleware::new(deployment.signer(ALLOWED))
                .http_signatures()
                .signed_responses(deployment.trust())
                .expected_identity(|_| Some("spiffe://prod.example/server".parse().unwrap())),
        )
        .build();
    let response = client.post(format!("{base}/pay?order=7")).body("amount=1").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("signature-input"), "the response is signed");
    assert_eq!(response.text().await.unwrap(), format!("{ALLOWED} http-signature amount=1"));

    // The same client expecting another server identity refuses the (valid) signed response.
    let wrong_peer = ClientBuilder::new(reqwest::Client::new())
        .with(
            WimseMiddleware::new(deployment.signer(ALLOWED))
                .http_signatures()
                .signed_responses(deployment.trust())
                .expected_identity(|_| Some("spiffe://prod.example/someone-else".parse().unwrap())),
        )
        .build();
    let err = wrong_peer.post(format!("{base}/pay")).body("x").send().await.unwrap_err();
    assert!(err.to_string().contains("expected workload"), "{err}");

    // WPT requests still work on the same server (both modes accepted by default).
    let wpt = deployment.client(ALLOWED).post(format!("{base}/pay")).body("b").send().await.unwrap();
    assert_eq!(wpt.text().await.unwrap(), format!("{ALLOWED} wpt b"));
    // Per-request choice of mode.
    let per_request = deployment
        .client(ALLOWED)
        .post(format!("{base}/pay"))
        .body("c")
        .with_extension(ProofMode::HttpSignature { sign_response: false })
        .send()
        .await
        .unwrap();
    assert_eq!(per_request.text().await.unwrap(), format!("{ALLOWED} http-signature c"));
}

/// Signs a request without sending it, returning its headers.
async fn signed_headers(deployment: &Deployment, url: &str, body: &str) -> http::HeaderMap {
    let capture = Capture::default();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(WimseMiddleware::new(deployment.signer(ALLOWED)).http_signatures())
        .with(capture.clone())
        .build();
    client.post(url).body(body.to_owned()).send().await.unwrap();
    capture.take().unwrap().headers
}

async fn status_and_body(response: reqwest::Response) -> (u16, String) {
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn tampering_replay_limits_and_unsupported_signed_responses() {
    let deployment = Deployment::new();
    let base = serve(&deployment, false, 64).await;
    let plain = reqwest::Client::new();
    let url = format!("{base}/pay?order=7");
    let headers = signed_headers(&deployment, &url, "amount=1").await;

    let invalid = |(status, body): (u16, String)| {
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("wimse-signature-invalid"), "{body}");
        assert!(!body.contains("reason"), "the body does not say which check failed: {body}");
    };
    invalid(
        status_and_body(
            plain.post(format!("{base}/pay?order=8")).headers(headers.clone()).body("amount=1").send().await.unwrap(),
        )
        .await,
    );
    invalid(
        status_and_body(
            plain
                .post(format!("{base}/refund?order=7"))
                .headers(headers.clone())
                .body("amount=1")
                .send()
                .await
                .unwrap(),
        )
        .await,
    );
    invalid(status_and_body(plain.put(&url).headers(headers.clone()).body("amount=1").send().await.unwrap()).await);
    invalid(status_and_body(plain.post(&url).headers(headers.clone()).body("amount=9").send().await.unwrap()).await);
    let mut other_wit = headers.clone();
    let second = signed_headers(&deployment, &url, "amount=1").await;
    other_wit.insert("workload-identity-token", second["workload-identity-token"].clone());
    invalid(status_and_body(plain.post(&url).headers(other_wit).body("amount=1").send().await.unwrap()).await);

    // The untampered request passes once, then its nonce is a replay.
    let first = status_and_body(plain.post(&url).headers(headers.clone()).body("amount=1").send().await.unwrap()).await;
    assert_eq!(first, (200, format!("{ALLOWED} http-signature amount=1")));
    invalid(status_and_body(plain.post(&url).headers(headers).body("amount=1").send().await.unwrap()).await);

    // A body over the limit.
    let big = "x".repeat(65);
    let headers = signed_headers(&deployment, &url, &big).await;
    let (status, _) = status_and_body(plain.post(&url).headers(headers).body(big).send().await.unwrap()).await;
    assert_eq!(status, 413);

    // Asking for a signed response from a server that does not sign: 501, never an unsigned 200.
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(WimseMiddleware::new(deployment.signer(ALLOWED)).http_signatures().signed_responses(deployment.trust()))
        .build();
    let err = client.post(&url).body("want-signed").send().await.unwrap_err();
    assert!(err.to_string().contains("not signed") || err.to_string().contains("WIMSE signature"), "{err}");
    let headers = {
        let capture = Capture::default();
        let c = ClientBuilder::new(reqwest::Client::new())
            .with(WimseMiddleware::new(deployment.signer(ALLOWED)))
            .with(capture.clone())
            .build();
        // This client cannot check signed responses, so the captured exchange ends in an error.
        let refused = c
            .post(&url)
            .body("want-signed")
            .with_extension(ProofMode::HttpSignature { sign_response: true })
            .send()
            .await;
        assert!(refused.is_err());
        capture.take().unwrap().headers
    };
    let (status, body) =
        status_and_body(plain.post(&url).headers(headers).body("want-signed").send().await.unwrap()).await;
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("wimse-signed-response-unsupported"), "{body}");
}
