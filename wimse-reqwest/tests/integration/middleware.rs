//! The middleware's per-request options, checked by the core verifier on the captured request.

use reqwest_middleware::ClientBuilder;
use wimse_core::prelude::*;
use wimse_core::protocol::httpsig::RequestParts;
use wimse_reqwest::{AudienceOverride, ContextTokens, WimseSignMiddleware, audience_for_url};
use wimse_testkit::{ALLOWED, Capture, Deployment, SERVER};

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

    let by_name = Verifier::new(deployment.trust(), VerifierConfig::new().audience("urn:svc:items")).unwrap();
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
        VerifierConfig::new().origin("https://api.example").context_token("x-tenant-token"),
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

/// What the signing server breaks in its response: one thing at a time, so each refusal can
/// only come from the check that looks at that thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forgery {
    /// A correctly signed response.
    Nothing,
    /// One byte of the signature changed.
    Signature,
    /// The body changed after signing (its `Content-Digest` no longer matches).
    Body,
    /// Signed as the answer to another request (`wimse-req-nonce`).
    RequestNonce,
    /// The responder's WIT left out.
    Wit,
    /// The responder's WIT from an issuer nobody trusts (same `kid`, another key).
    Issuer,
    /// Signed ten minutes ago: the signature has expired.
    Age,
}

/// Answers every request with a response signed by [`SERVER`] although nobody asked it to
/// sign (no `wimse-sign-response`), broken as `forgery` says.
#[derive(Debug, Clone)]
struct SigningServer {
    signer: Signer,
    forgery: Forgery,
}

impl SigningServer {
    fn new(deployment: &Deployment, forgery: Forgery) -> Self {
        let credentials = deployment.credentials(SERVER, forgery == Forgery::Issuer, 0);
        let mut signer = Signer::new(StaticCredentials::new(credentials));
        if forgery == Forgery::Age {
            signer = signer.clock(FixedClock::new(wimse_testkit::now() - 600));
        }
        Self { signer, forgery }
    }
}

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for SigningServer {
    async fn handle(
        &self,
        request: reqwest::Request,
        _: &mut http::Extensions,
        _: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let input = request.headers()["signature-input"].to_str().unwrap();
        let nonce = input.split("nonce=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
        let nonce = if self.forgery == Forgery::RequestNonce { "another-request".to_owned() } else { nonce };
        let url = request.url();
        let parts = RequestParts {
            method: request.method().as_str(),
            scheme: url.scheme(),
            authority: url.host_str().unwrap(),
            path: url.path(),
            query: url.query(),
            headers: request.headers(),
        };
        let mut headers = http::HeaderMap::new();
        self.signer.sign_response_headers(&mut headers, 200, &parts, Some(b"unsolicited"), &nonce).unwrap();
        let mut body = "unsolicited";
        match self.forgery {
            Forgery::Signature => {
                // `wimse=:<base64>:`: its first base64 character becomes another one.
                let signature = headers["signature"].to_str().unwrap().to_owned();
                let (label, value) = signature.split_once(':').unwrap();
                let first = if value.starts_with('A') { 'B' } else { 'A' };
                headers.insert("signature", format!("{label}:{first}{}", &value[1..]).parse().unwrap());
            }
            Forgery::Body => body = "unsolicitEd",
            Forgery::Wit => {
                headers.remove("workload-identity-token");
            }
            Forgery::Nothing | Forgery::RequestNonce | Forgery::Issuer | Forgery::Age => {}
        }
        let mut response = http::Response::builder().body(body).unwrap();
        *response.headers_mut() = headers;
        Ok(reqwest::Response::from(response))
    }
}

/// A server MAY sign a response it was not asked to sign: without trust anchors for responses
/// the client leaves it alone; with them, it checks it, and each forgery is refused by the
/// check it breaks.
#[tokio::test]
async fn unsolicited_signed_responses_are_checked_only_with_anchors() {
    let deployment = Deployment::new();
    let client = |forgery: Forgery, anchors: bool| {
        let mut middleware = WimseSignMiddleware::new(deployment.signer(ALLOWED)).http_signatures();
        if anchors {
            middleware = middleware.signed_responses(deployment.trust());
        }
        let server = SigningServer::new(&deployment, forgery);
        ClientBuilder::new(reqwest::Client::new()).with(middleware).with(server).build()
    };
    // Without anchors even a forged one is left alone (nobody asked for it).
    let response = client(Forgery::Signature, false).get("https://api.example/v1").send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "unsolicited");
    // With anchors the intact one is accepted...
    let response = client(Forgery::Nothing, true).get("https://api.example/v1").send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "unsolicited");
    // ...and each forgery is refused with its own kind.
    for (forgery, kind) in [
        (Forgery::Signature, ErrorKind::InvalidHttpSignature),
        (Forgery::Body, ErrorKind::ContentDigestMismatch),
        (Forgery::RequestNonce, ErrorKind::RequestNonceMismatch),
        (Forgery::Wit, ErrorKind::MissingWit),
        (Forgery::Issuer, ErrorKind::InvalidWitSignature),
        (Forgery::Age, ErrorKind::SignatureExpired),
    ] {
        let error = client(forgery, true).get("https://api.example/v1").send().await.unwrap_err();
        let reqwest_middleware::Error::Middleware(error) = &error else { panic!("{forgery:?}: {error:?}") };
        let error = error.downcast_ref::<Error>().unwrap_or_else(|| panic!("{forgery:?}: {error:?}"));
        assert_eq!(error.kind(), &kind, "{forgery:?}: {error:?}");
    }
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
