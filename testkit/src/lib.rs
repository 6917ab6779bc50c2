//! Test fixtures shared by the adapter crates: a small deployment (identity server, trust
//! anchors, workloads) and the case table every server adapter must pass, run over real HTTP.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Extensions, HeaderMap, Method};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use wimse_core::prelude::*;
use wimse_core::sign::AudienceOverride;
use wimse_reqwest::WimseMiddleware;

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
        Self { issuer: WitIssuer::new(key("prod-1")), rogue: WitIssuer::new(key("prod-1")) }
    }

    /// The trusted issuer's public key, to write out as a trust anchor.
    pub fn issuer_public_jwk(&self) -> &Jwk {
        self.issuer.public_key().jwk()
    }

    /// Trust anchors: only `spiffe://prod.example` is trusted.
    pub fn trust(&self) -> TrustStore {
        TrustStore::new().with(
            TRUST_DOMAIN.parse().expect("trust domain"),
            TrustAnchors::new().with_key(self.issuer.public_key().clone()),
        )
    }

    /// A verifier for a service reached at `origin`.
    pub fn verifier(&self, origin: &str) -> Verifier {
        Verifier::new(self.trust(), VerifierConfig::new().with_origin(origin)).expect("verifier config")
    }

    /// The policy of the case table: only [`ALLOWED`].
    pub fn policy(&self) -> Policy {
        Policy::named("testkit").allow(Rule::exact(ALLOWED.parse().expect("id")))
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

    /// A reqwest client signing as `id`.
    pub fn client(&self, id: &str) -> ClientWithMiddleware {
        client_with(self.signer(id))
    }
}

/// A reqwest client with the WIMSE middleware for `signer`.
pub fn client_with(signer: Signer) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new()).with(WimseMiddleware::new(signer)).build()
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
        .with_clock(FixedClock::new(now() - 600));
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
