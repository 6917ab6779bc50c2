//! The middleware's per-request options, checked by the core verifier on the captured request.

use reqwest_middleware::ClientBuilder;
use wimse_core::prelude::*;
use wimse_reqwest::{AudienceOverride, ContextTokens, WimseSignMiddleware, audience_for_url};
use wimse_testkit::{ALLOWED, Capture, Deployment};

fn client(middleware: WimseSignMiddleware, capture: &Capture) -> reqwest_middleware::ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new()).with(middleware).with(capture.clone()).build()
}

fn verify(verifier: &Verifier, capture: &Capture) -> Result<VerifiedCaller, Error> {
    let sent = capture.take().unwrap();
    verifier.verify_sync(&RequestView::new(sent.url.path(), &sent.headers))
}

#[tokio::test]
async fn audience_defaults_to_the_url_and_can_be_overridden() {
    let deployment = Deployment::new();
    let capture = Capture::default();
    let client = client(WimseSignMiddleware::new(deployment.signer(ALLOWED)), &capture);
    let verifier = deployment.verifier("https://api.example:8443");

    client.get("https://api.example:8443/v1/items?x=1#f").send().await.unwrap();
    assert_eq!(verify(&verifier, &capture).unwrap().id().as_str(), ALLOWED);

    let by_name = Verifier::new(deployment.trust(), VerifierConfig::new().with_audience("urn:svc:items")).unwrap();
    client
        .get("https://10.0.0.7/v1/items")
        .with_extension(AudienceOverride("urn:svc:items".into()))
        .send()
        .await
        .unwrap();
    verify(&by_name, &capture).unwrap();

    let aliased = self::client(
        WimseSignMiddleware::new(deployment.signer(ALLOWED))
            .audience_alias(|url| (url.host_str() == Some("10.0.0.7")).then(|| "urn:svc:items".into())),
        &capture,
    );
    aliased.get("https://10.0.0.7/v1/items").send().await.unwrap();
    verify(&by_name, &capture).unwrap();
    assert_eq!(audience_for_url(&"https://a.example/p?q#f".parse().unwrap()), "https://a.example/p");
}

#[tokio::test]
async fn per_request_context_tokens_are_added_and_bound() {
    let deployment = Deployment::new();
    let capture = Capture::default();
    let client = client(WimseSignMiddleware::new(deployment.signer(ALLOWED)), &capture);
    let verifier = Verifier::new(
        deployment.trust(),
        VerifierConfig::new().with_origin("https://api.example").with_context_token("x-tenant-token"),
    )
    .unwrap();
    client
        .post("https://api.example/v1")
        .header("txn-token", "txn-1")
        .with_extension(ContextTokens(vec![("X-Tenant-Token".into(), "tenant-42".into())]))
        .send()
        .await
        .unwrap();
    let caller = verify(&verifier, &capture).unwrap();
    assert_eq!(caller.txn_token(), Some("txn-1"));
    assert_eq!(caller.context_tokens()["x-tenant-token"], "tenant-42");
}

#[tokio::test]
async fn signing_failures_stop_the_request() {
    let deployment = Deployment::new();
    let capture = Capture::default();
    let client = client(WimseSignMiddleware::new(deployment.signer(ALLOWED)), &capture);
    let err = client.get("https://api.example/").bearer_auth("t").send().await.unwrap_err();
    assert!(matches!(err, reqwest_middleware::Error::Middleware(_)));
    assert!(capture.take().is_none(), "nothing was sent");
}

#[test]
fn expected_identity_hook() {
    let deployment = Deployment::new();
    let middleware = WimseSignMiddleware::new(deployment.signer(ALLOWED)).expected_identity(|url| {
        (url.host_str() == Some("billing.internal")).then(|| "spiffe://prod.example/billing".parse().unwrap())
    });
    let billing = middleware.expected_identity_for(&"https://billing.internal/x".parse().unwrap());
    assert_eq!(billing.unwrap().as_str(), "spiffe://prod.example/billing");
    assert!(middleware.expected_identity_for(&"https://other.internal/x".parse().unwrap()).is_none());
}

/// Answers every request with a response carrying a WIMSE-tagged signature (unchecked content):
/// a server that signs responses nobody asked it to sign.
#[derive(Debug, Clone)]
struct SigningServer;

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for SigningServer {
    async fn handle(
        &self,
        _: reqwest::Request,
        _: &mut http::Extensions,
        _: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let response = http::Response::builder()
            .header("signature-input", r#"wimse=("@status");created=1;expires=2;nonce="n";tag="wimse-workload-to-workload";wimse-req-nonce="x""#)
            .header("signature", "wimse=:AAAA:")
            .body("unsolicited")
            .unwrap();
        Ok(reqwest::Response::from(response))
    }
}

/// A server MAY sign a response it was not asked to sign: without trust anchors for responses
/// the client leaves it alone; with them, it checks it (and this one is forged).
#[tokio::test]
async fn unsolicited_signed_responses_are_checked_only_with_anchors() {
    let deployment = Deployment::new();
    let plain = ClientBuilder::new(reqwest::Client::new())
        .with(WimseSignMiddleware::new(deployment.signer(ALLOWED)).http_signatures())
        .with(SigningServer)
        .build();
    let response = plain.get("https://api.example/v1").send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "unsolicited");
    let checking = ClientBuilder::new(reqwest::Client::new())
        .with(
            WimseSignMiddleware::new(deployment.signer(ALLOWED)).http_signatures().signed_responses(deployment.trust()),
        )
        .with(SigningServer)
        .build();
    assert!(checking.get("https://api.example/v1").send().await.is_err(), "a forged signed response is refused");
}

/// An outage of the credential source logs once when signing starts failing (not once per
/// request), and once when it works again.
#[tokio::test]
async fn signing_failures_are_logged_once_per_outage() {
    let logs = wimse_testkit::logs::Logs::global();
    let deployment = Deployment::new();
    // Credentials that expired an hour ago: every request fails to sign.
    let expired = StaticCredentials::new(deployment.credentials(ALLOWED, false, 7200));
    let capture = Capture::default();
    let client = client(WimseSignMiddleware::new(Signer::new(expired)), &capture);
    for _ in 0..50 {
        assert!(client.get("https://api.example/").send().await.is_err());
    }
    // Other tests of this binary log signing failures of their own (another reason): count
    // this outage's lines only.
    let warnings = logs.lines_with(&["WARN", "requests cannot be signed", "credentials_unavailable", "has expired"]);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}
