//! Test fixtures shared by the adapter crates: a small deployment (identity server, trust
//! anchors, workloads) and the case table every server adapter must pass, run over real HTTP.

pub mod logs;
pub mod servers;

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Extensions, HeaderMap, Method};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use wimse_core::client::sign::AudienceOverride;
use wimse_core::prelude::*;
use wimse_reqwest::{ProofMode, WimseSignMiddleware};

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The trust domain of the deployment.
pub const TRUST_DOMAIN: &str = "spiffe://prod.example";
/// The caller the case table's policy allows.
pub const ALLOWED: &str = "spiffe://prod.example/front";
/// A valid workload the policy does not allow.
pub const DENIED: &str = "spiffe://prod.example/intruder";

/// An identity server for `spiffe://prod.example`, and a rogue one for `spiffe://evil.example`.
#[derive(Debug)]
pub struct Deployment {
    issuer: WitIssuer,
    rogue: WitIssuer,
    tts: wimse_core::protocol::txn::TxnTokenIssuer,
    rogue_tts: wimse_core::protocol::txn::TxnTokenIssuer,
}

impl Default for Deployment {
    fn default() -> Self {
        Self::new()
    }
}

impl Deployment {
    /// Fresh keys for both issuers.
    pub fn new() -> Self {
        let key = |kid: &str| SigningKey::generate(Algorithm::ES256).expect("key generation").with_kid(kid);
        let (issuer, rogue) = (key("prod-1"), key("prod-1"));
        let domain: TrustDomain = TRUST_DOMAIN.parse().expect("trust domain");
        // The identity server is the Transaction Token Service: the same key signs Txn-Tokens.
        let tts = wimse_core::protocol::txn::TxnTokenIssuer::new(issuer.clone(), &domain);
        let rogue_tts = wimse_core::protocol::txn::TxnTokenIssuer::new(rogue.clone(), &domain);
        Self { issuer: WitIssuer::new(issuer), rogue: WitIssuer::new(rogue), tts, rogue_tts }
    }

    /// The trusted issuer's public key, to write out as a trust anchor.
    pub fn issuer_public_jwk(&self) -> &Jwk {
        self.issuer.public_key().jwk()
    }

    /// Trust anchors: only `spiffe://prod.example` is trusted.
    pub fn trust(&self) -> TrustStore {
        TrustStore::new().with(
            TRUST_DOMAIN.parse().expect("trust domain"),
            TrustAnchors::new().key(self.issuer.public_key().clone()),
        )
    }

    /// A verifier for a service reached at `origin`.
    pub fn verifier(&self, origin: &str) -> Verifier {
        Verifier::new(self.trust(), VerifierConfig::new().origin(origin)).expect("verifier config")
    }

    /// A verifier for `origin` whose refusals name the failed check, signed requests' too
    /// (development only: [`VerifierConfig::reveal_reasons`]).
    pub fn revealing_verifier(&self, origin: &str) -> Verifier {
        Verifier::new(self.trust(), VerifierConfig::new().origin(origin).reveal_reasons()).expect("verifier config")
    }

    /// The policy of the case table: only [`ALLOWED`].
    pub fn policy(&self) -> Policy {
        Policy::named("testkit").allow(Rule::exact(ALLOWED).expect("id"))
    }

    /// Credentials for `id` from the trusted issuer (or the rogue one), issued `age` seconds ago.
    pub fn credentials(&self, id: &str, rogue: bool, age: u64) -> Credentials {
        let key = SigningKey::generate(Algorithm::ES256).expect("key generation");
        let issuer = if rogue { &self.rogue } else { &self.issuer };
        let wit = issuer.issue(&id.parse().expect("id"), key.public_jwk(), now() - age).expect("issue");
        Credentials::new(wit, key).expect("credentials")
    }

    /// A signer for `id`.
    pub fn signer(&self, id: &str) -> Signer {
        Signer::new(StaticCredentials::new(self.credentials(id, false, 0)))
    }

    /// A Txn-Token from the trust domain's TTS (or, `rogue`, from a key nobody trusts with the
    /// same `kid`) for `sub` with purpose `scope`, requested by [`ALLOWED`].
    pub fn txn_token(&self, sub: &str, scope: &str, rogue: bool) -> String {
        let tts = if rogue { &self.rogue_tts } else { &self.tts };
        tts.issue(&wimse_core::protocol::txn::NewTxnToken::new(sub, scope).requested_by(ALLOWED), now()).expect("issue")
    }

    /// A Txn-Token from this deployment's TTS for `sub` and `scope`, with `actors` acting for
    /// the subject (the current actor first).
    pub fn delegated_txn_token(&self, sub: &str, scope: &str, actors: &[&str]) -> String {
        let mut token = wimse_core::protocol::txn::NewTxnToken::new(sub, scope).requested_by(ALLOWED);
        token.actors = actors.iter().map(|a| a.parse().expect("actor")).collect();
        self.tts.issue(&token, now()).expect("issue")
    }

    /// A verifier for `origin` that validates Txn-Tokens (required or not).
    pub fn txn_verifier(&self, origin: &str, required: bool) -> Verifier {
        let mut txn = wimse_core::protocol::txn::TxnTokenValidation::new(TRUST_DOMAIN.parse().expect("trust domain"));
        if required {
            txn = txn.required();
        }
        Verifier::new(self.trust(), VerifierConfig::new().origin(origin).txn_tokens(txn)).expect("verifier config")
    }

    /// A reqwest client signing as `id`.
    pub fn client(&self, id: &str) -> ClientWithMiddleware {
        client_with(self.signer(id))
    }
}

/// A reqwest client with the WIMSE middleware for `signer`.
pub fn client_with(signer: Signer) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new()).with(WimseSignMiddleware::new(signer)).build()
}

/// A request as the wire would carry it, recorded by [`Capture`].
#[derive(Debug, Clone)]
pub struct Captured {
    /// Method.
    pub method: Method,
    /// Full URL.
    pub url: reqwest::Url,
    /// Header fields.
    pub headers: HeaderMap,
}

/// A last reqwest middleware that records the request instead of sending it, and answers an
/// empty 200.
#[derive(Debug, Clone, Default)]
pub struct Capture(Arc<Mutex<Option<Captured>>>);

impl Capture {
    /// The last recorded request, taken out.
    pub fn take(&self) -> Option<Captured> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

#[async_trait::async_trait]
impl Middleware for Capture {
    async fn handle(
        &self,
        req: reqwest::Request,
        _: &mut Extensions,
        _: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let captured =
            Captured { method: req.method().clone(), url: req.url().clone(), headers: req.headers().clone() };
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(captured);
        }
        Ok(reqwest::Response::from(http::Response::new("")))
    }
}

/// What a case expects back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// Status code.
    pub status: u16,
    /// Whether `WWW-Authenticate: WPT` must be present.
    pub challenge: bool,
    /// Problem reason code, for rejections.
    pub reason: Option<&'static str>,
}

const fn rejected(status: u16, challenge: bool, reason: &'static str) -> Expect {
    Expect { status, challenge, reason: Some(reason) }
}

async fn check(name: &str, response: reqwest::Response, expect: Expect) {
    let status = response.status().as_u16();
    let challenge = response.headers().get("www-authenticate").map(|v| v.as_bytes().to_vec());
    let body = response.text().await.expect("body");
    assert_eq!(status, expect.status, "{name}: {body}");
    assert_eq!(challenge.as_deref() == Some(b"WPT".as_slice()), expect.challenge, "{name}: challenge {challenge:?}");
    match expect.reason {
        Some(reason) => assert!(body.contains(&format!("\"reason\":\"{reason}\"")), "{name}: {body}"),
        None => assert_eq!(body, ALLOWED, "{name}: the handler sees the verified caller"),
    }
}

/// Runs the case table against a server at `base` (e.g. `http://127.0.0.1:4000`) that serves
/// `GET /whoami` behind the adapter under test, configured with [`Deployment::verifier`] for
/// `base` and [`Deployment::policy`], answering the caller's id as plain text.
pub async fn run_cases(deployment: &Deployment, base: &str) {
    let url = format!("{base}/whoami");
    let plain = reqwest::Client::new();

    let ok = Expect { status: 200, challenge: false, reason: None };
    check("signed request", deployment.client(ALLOWED).get(&url).send().await.expect("send"), ok).await;

    check("no credentials", plain.get(&url).send().await.expect("send"), rejected(401, true, "missing_wit")).await;

    let creds = deployment.credentials(ALLOWED, false, 0);
    let wit_only = plain.get(&url).header("workload-identity-token", creds.wit()).send().await.expect("send");
    check("WIT without proof", wit_only, rejected(401, true, "missing_wpt")).await;

    let past = Signer::new(StaticCredentials::new(deployment.credentials(ALLOWED, false, 1200)))
        .clock(FixedClock::new(now() - 600));
    check("expired WPT", client_with(past).get(&url).send().await.expect("send"), rejected(401, true, "expired_wpt"))
        .await;

    let wrong_aud = deployment
        .client(ALLOWED)
        .get(&url)
        .with_extension(AudienceOverride("https://elsewhere.example/whoami".into()))
        .send()
        .await
        .expect("send");
    check("wrong audience", wrong_aud, rejected(401, true, "audience_mismatch")).await;

    let mut headers = HeaderMap::new();
    deployment.signer(ALLOWED).sign_headers(&mut headers, &url).expect("sign");
    check("first use of a proof", plain.get(&url).headers(headers.clone()).send().await.expect("send"), ok).await;
    let replay = plain.get(&url).headers(headers).send().await.expect("send");
    check("replayed WPT", replay, rejected(401, true, "replayed_proof")).await;

    let rogue = Signer::new(StaticCredentials::new(deployment.credentials("spiffe://evil.example/front", true, 0)));
    let untrusted = client_with(rogue).get(&url).send().await.expect("send");
    check("untrusted trust domain", untrusted, rejected(401, true, "untrusted_trust_domain")).await;

    let denied = deployment.client(DENIED).get(&url).send().await.expect("send");
    check("policy-denied caller", denied, rejected(403, false, "policy_denied")).await;
}

/// The workload that signs responses in [`run_signature_cases`].
pub const SERVER: &str = "spiffe://prod.example/server";
/// The body limit the servers of [`run_signature_cases`] are configured with.
pub const SIGNATURE_BODY_LIMIT: usize = 64;
/// The body budget (bytes of signed bodies buffered at once) the servers of
/// [`run_signature_cases`] are configured with.
pub const SIGNATURE_BODY_BUDGET: usize = 96;
/// The body deadline the servers of [`run_signature_cases`] are configured with.
pub const SIGNATURE_BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// A client signing as `id` with HTTP message signatures, verifying signed responses as
/// coming from [`SERVER`].
pub fn signature_client(deployment: &Deployment, id: &str, server: &str) -> ClientWithMiddleware {
    let expected: WorkloadId = server.parse().expect("id");
    ClientBuilder::new(reqwest::Client::new())
        .with(
            WimseSignMiddleware::new(deployment.signer(id))
                .http_signatures()
                .signed_responses(deployment.trust())
                .expected_identity(move |_| Some(expected.clone())),
        )
        .build()
}

/// Signs a POST of `body` to `url` as [`ALLOWED`] in `mode` without sending it, returning its
/// header fields.
pub async fn signed_headers(deployment: &Deployment, url: &str, body: &str, mode: ProofMode) -> HeaderMap {
    let capture = Capture::default();
    // With trust anchors: a request asking for a signed response is refused before it is sent
    // by a client that could not check the answer.
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(WimseSignMiddleware::new(deployment.signer(ALLOWED)).signed_responses(deployment.trust()))
        .with(capture.clone())
        .build();
    // The captured exchange has no signed answer: it ends in an error, ignored here.
    let _ = client.post(url).body(body.to_owned()).with_extension(mode).send().await;
    capture.take().expect("captured").headers
}

async fn status_and_body(response: reqwest::Response) -> (u16, String) {
    (response.status().as_u16(), response.text().await.expect("body"))
}

/// Sends `headers` for `POST path` announcing a body of `announced` bytes, never sends the body,
/// and returns the status of the answer (the server must answer without the body, or when its
/// body deadline passes).
async fn status_without_body(base: &str, path: &str, headers: &HeaderMap, announced: usize) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let authority = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(authority).await.expect("connect");
    let mut head = format!("POST {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-length: {announced}\r\n");
    for (name, value) in headers {
        if name != "content-length" && name != "host" {
            head.push_str(&format!("{name}: {}\r\n", value.to_str().expect("ascii")));
        }
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 12];
    // Bounded only so a regression fails instead of hanging: the servers' deadline is 1 s.
    tokio::time::timeout(std::time::Duration::from_secs(30), stream.read_exact(&mut answer))
        .await
        .expect("an answer without the body")
        .expect("read");
    String::from_utf8_lossy(&answer[9..12]).parse().expect("status")
}

/// Runs the HTTP-signature cases against two servers serving `POST /pay` behind the adapter
/// under test, configured with [`Deployment::verifier`] for their base URL, a body limit of
/// [`SIGNATURE_BODY_LIMIT`], a body budget of [`SIGNATURE_BODY_BUDGET`] and a body deadline of
/// [`SIGNATURE_BODY_DEADLINE`], answering `"{caller id} {proof method} {body}"`. `signing` signs
/// responses as [`SERVER`]; `plain` does not sign responses.
pub async fn run_signature_cases(deployment: &Deployment, signing: &str, plain_server: &str) {
    let plain = reqwest::Client::new();
    let url = format!("{signing}/pay?order=7");

    // A signed request and its signed response, verified by the client.
    let response =
        signature_client(deployment, ALLOWED, SERVER).post(&url).body("amount=1").send().await.expect("send");
    assert!(response.headers().contains_key("signature-input"), "the response is signed");
    // The middleware rebuilds the response after checking it: its URL survives.
    assert_eq!(response.url().as_str(), url, "the verified response keeps its URL");
    assert_eq!(status_and_body(response).await, (200, format!("{ALLOWED} http-signature amount=1")));
    // The client refuses a valid signed response from another workload than the one expected.
    let err = signature_client(deployment, ALLOWED, "spiffe://prod.example/other")
        .post(&url)
        .body("x")
        .send()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expected workload"), "{err}");
    // Both modes are accepted by default; the mode is chosen per request too.
    let wpt = deployment.client(ALLOWED).post(&url).body("b").send().await.expect("send");
    assert_eq!(status_and_body(wpt).await, (200, format!("{ALLOWED} wpt b")));
    let mode = ProofMode::HttpSignature { sign_response: false };
    let per_request = deployment.client(ALLOWED).post(&url).body("c").with_extension(mode).send().await.expect("send");
    assert_eq!(status_and_body(per_request).await, (200, format!("{ALLOWED} http-signature c")));

    // Tampering with anything covered: 400 with the generic problem type.
    let headers = signed_headers(deployment, &url, "amount=1", mode).await;
    let invalid = |(status, body): (u16, String), what: &str| {
        assert_eq!(status, 400, "{what}: {body}");
        assert!(body.contains("wimse-signature-invalid"), "{what}: {body}");
        assert!(!body.contains("reason"), "{what}: the body does not say which check failed: {body}");
    };
    let send = |method: reqwest::Method, url: String, headers: HeaderMap, body: &'static str| {
        let request = plain.request(method, url).headers(headers).body(body);
        async move { status_and_body(request.send().await.expect("send")).await }
    };
    invalid(send(reqwest::Method::POST, format!("{signing}/pay?order=8"), headers.clone(), "amount=1").await, "query");
    invalid(
        send(reqwest::Method::POST, format!("{signing}/refund?order=7"), headers.clone(), "amount=1").await,
        "path",
    );
    invalid(send(reqwest::Method::PUT, url.clone(), headers.clone(), "amount=1").await, "method");
    invalid(send(reqwest::Method::POST, url.clone(), headers.clone(), "amount=9").await, "body");
    let mut other_wit = headers.clone();
    let second = signed_headers(deployment, &url, "amount=1", mode).await;
    other_wit.insert("workload-identity-token", second["workload-identity-token"].clone());
    invalid(send(reqwest::Method::POST, url.clone(), other_wit, "amount=1").await, "WIT");
    // The untampered request passes once; then its nonce is a replay.
    let first = send(reqwest::Method::POST, url.clone(), headers.clone(), "amount=1").await;
    assert_eq!(first, (200, format!("{ALLOWED} http-signature amount=1")));
    invalid(send(reqwest::Method::POST, url.clone(), headers, "amount=1").await, "replay");

    // Nothing is read of a body before its header fields passed every check: a signed request
    // whose WIT is from an untrusted issuer, or that was signed for another service, is answered
    // at once (400) though its announced body never comes; an allowed caller's body that never
    // comes is waited for until the deadline (408).
    let rogue = deployment.credentials(ALLOWED, true, 0);
    let mut untrusted = signed_headers(deployment, &url, "amount=1", mode).await;
    untrusted.insert("workload-identity-token", rogue.wit().parse().expect("header"));
    assert_eq!(status_without_body(signing, "/pay?order=7", &untrusted, 50).await, 400, "untrusted WIT");
    let elsewhere = signed_headers(deployment, &format!("{plain_server}/pay?order=7"), "amount=1", mode).await;
    assert_eq!(status_without_body(signing, "/pay?order=7", &elsewhere, 50).await, 400, "another audience");
    let allowed = signed_headers(deployment, &url, "amount=1", mode).await;
    assert_eq!(status_without_body(signing, "/pay?order=7", &allowed, 8).await, 408, "allowed, body never sent");
    // A signed response asked of a server that signs none: 501 before the body, too.
    let plain_url = format!("{plain_server}/pay");
    let ask = signed_headers(deployment, &plain_url, "x", ProofMode::HttpSignature { sign_response: true }).await;
    assert_eq!(status_without_body(plain_server, "/pay", &ask, 1).await, 501, "no response signing");

    // Bodies being read share the server's budget: while one caller's body is half sent, a
    // body that would exceed the budget is refused (503, Retry-After), and the budget comes
    // back when the half-sent request ends.
    budget_cases(deployment, signing, &url).await;

    // A body over the limit: 413.
    let big = "x".repeat(SIGNATURE_BODY_LIMIT + 1);
    let headers = signed_headers(deployment, &url, &big, mode).await;
    let (status, _) = status_and_body(plain.post(&url).headers(headers).body(big).send().await.expect("send")).await;
    assert_eq!(status, 413);

    // Asking a server that does not sign responses for a signed response: 501, never an
    // unsigned success; the signing client refuses the exchange.
    let plain_url = format!("{plain_server}/pay");
    let headers = signed_headers(deployment, &plain_url, "x", ProofMode::HttpSignature { sign_response: true }).await;
    let (status, body) =
        status_and_body(plain.post(&plain_url).headers(headers).body("x").send().await.expect("send")).await;
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("wimse-signed-response-unsupported"), "{body}");
    let refused = signature_client(deployment, ALLOWED, SERVER).post(&plain_url).body("x").send().await;
    let refused = match refused.expect_err("an unsigned answer to a request for a signed one is refused") {
        reqwest_middleware::Error::Middleware(error) => error,
        other => panic!("{other:?}"),
    };
    let kind = refused.downcast_ref::<Error>().map(|e| e.kind().clone());
    assert_eq!(kind, Some(ErrorKind::NoWimseSignature), "{refused:?}");
}

async fn budget_cases(deployment: &Deployment, base: &str, url: &str) {
    use tokio::io::AsyncWriteExt as _;
    let mode = ProofMode::HttpSignature { sign_response: false };
    let held = "h".repeat(SIGNATURE_BODY_LIMIT - 4);
    let headers = signed_headers(deployment, url, &held, mode).await;
    let authority = base.trim_start_matches("http://");
    let mut half_sent = tokio::net::TcpStream::connect(authority).await.expect("connect");
    let mut head = format!("POST /pay?order=7 HTTP/1.1\r\nhost: {authority}\r\ncontent-length: {}\r\n", held.len());
    for (name, value) in &headers {
        if name != "content-length" && name != "host" {
            head.push_str(&format!("{name}: {}\r\n", value.to_str().expect("ascii")));
        }
    }
    head.push_str("\r\n");
    half_sent.write_all(head.as_bytes()).await.expect("write");
    half_sent.write_all(&held.as_bytes()[..SIGNATURE_BODY_BUDGET - SIGNATURE_BODY_LIMIT + 8]).await.expect("write");
    // The server holds the half-sent bytes once it has read them; until then a second body
    // still fits. Polled, not timed: each attempt is a new signed request.
    let second = "s".repeat(SIGNATURE_BODY_LIMIT);
    let mut refused = None;
    for _ in 0..200 {
        let headers = signed_headers(deployment, url, &second, mode).await;
        let response = reqwest::Client::new().post(url).headers(headers).body(second.clone()).send().await.unwrap();
        if response.status() == 503 {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), 200, "a body that fits the budget passes");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let refused = refused.expect("a body over the budget is refused while another is half sent");
    assert_eq!(refused.headers()["retry-after"], "1");
    // The half-sent request ends (its connection closes, or its deadline passes): its bytes
    // come back.
    drop(half_sent);
    for attempt in 0.. {
        let headers = signed_headers(deployment, url, &second, mode).await;
        let response = reqwest::Client::new().post(url).headers(headers).body(second.clone()).send().await.unwrap();
        if response.status() == 200 {
            break;
        }
        assert!(attempt < 200, "the budget is given back when a half-sent request ends");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Refusals through the adapter under test with reasons kept from the caller (the default) and
/// revealed for development ([`VerifierConfig::reveal_reasons`]): `quiet` and `revealing` serve
/// `POST /pay` like the `plain` server of [`run_signature_cases`], with
/// [`Deployment::verifier`] and [`Deployment::revealing_verifier`] for their base URLs.
pub async fn run_reveal_reasons_cases(deployment: &Deployment, quiet: &str, revealing: &str) {
    let plain = reqwest::Client::new();
    let signature = ProofMode::HttpSignature { sign_response: false };
    let refused = |url: String, headers: HeaderMap, body: &'static str| {
        let request = plain.post(url).headers(headers).body(body);
        async move {
            let (status, text) = status_and_body(request.send().await.expect("send")).await;
            let json: serde_json::Value = serde_json::from_str(&text).expect("a problem document");
            (status, json)
        }
    };
    // A request signed for the other server: an audience mismatch either way.
    let (status, problem) = refused(
        format!("{quiet}/pay"),
        signed_headers(deployment, &format!("{revealing}/pay"), "x", signature).await,
        "x",
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    assert!(problem["type"].as_str().is_some_and(|t| t.ends_with("wimse-signature-invalid")), "{problem}");
    assert!(problem.get("reason").is_none() && problem.get("detail").is_none(), "said nothing: {problem}");
    let (status, problem) = refused(
        format!("{revealing}/pay"),
        signed_headers(deployment, &format!("{quiet}/pay"), "x", signature).await,
        "x",
    )
    .await;
    assert_eq!(status, 400, "still the signature profile's answer: {problem}");
    assert!(problem["type"].as_str().is_some_and(|t| t.ends_with("wimse-signature-invalid")), "{problem}");
    assert_eq!(problem["reason"], "audience_mismatch", "{problem}");
    let detail = problem["detail"].as_str().expect("a detail");
    assert!(detail.contains(&format!("received wimse-aud \"{quiet}/pay\"")), "{detail}");
    assert!(detail.contains(&format!("{revealing}/pay")), "what this service accepts: {detail}");
    // A check made on the body, after the header fields passed.
    let headers = signed_headers(deployment, &format!("{revealing}/pay"), "amount=1", signature).await;
    let (status, problem) = refused(format!("{revealing}/pay"), headers, "amount=9").await;
    assert_eq!((status, &problem["reason"]), (400, &serde_json::json!("content_digest_mismatch")), "{problem}");
    // A WPT names its reason either way; only the revealing server adds the detail.
    let wpt = ProofMode::Wpt;
    let (status, problem) =
        refused(format!("{quiet}/pay"), signed_headers(deployment, &format!("{revealing}/pay"), "x", wpt).await, "x")
            .await;
    assert_eq!((status, &problem["reason"]), (401, &serde_json::json!("audience_mismatch")), "{problem}");
    assert!(problem.get("detail").is_none(), "{problem}");
    let (status, problem) =
        refused(format!("{revealing}/pay"), signed_headers(deployment, &format!("{quiet}/pay"), "x", wpt).await, "x")
            .await;
    assert_eq!((status, &problem["reason"]), (401, &serde_json::json!("audience_mismatch")), "{problem}");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("received aud \"")), "{problem}");
}
