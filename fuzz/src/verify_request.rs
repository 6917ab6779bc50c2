//! The whole inbound request path (WIT, then WPT or HTTP message signature, then the replay
//! claim) with attacker-chosen header values and body.
//!
//! Input: fields separated by NUL bytes: `Workload-Identity-Token`, `Authorization`,
//! `Signature-Input`, `Signature`, `Content-Digest`, then the body (the rest, NULs included);
//! an empty field is left out. The request is `POST https://api.example/x?y`.
//!
//! The verifier trusts the issuer key below, which signed the seeds' WITs, and its clock is the
//! seeds' time: the seeds are accepted as they are, so mutations of them reach every check
//! after the WIT's (the WPT's, the signature's, `Content-Digest`, the replay claim). Each input
//! gets a fresh verifier (no cache or replay state carried over), so the same input always
//! takes the same path.

use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue};
use wimse_core::prelude::*;
use wimse_core::protocol::httpsig::OutgoingRequest;

/// The seeds' time: their WITs were issued a minute before, their proofs at this second.
pub const NOW: u64 = 1_800_000_000;
/// The service's origin; requests go to `POST {ORIGIN}/x?y`.
pub const ORIGIN: &str = "https://api.example";
/// The proofs' audience (the origin and path, no query).
pub const AUDIENCE: &str = "https://api.example/x";
/// The caller of the seeds.
pub const WORKLOAD: &str = "spiffe://prod.example/front";
/// The trust domain the verifier trusts.
pub const TRUST_DOMAIN: &str = "spiffe://prod.example";
/// The body of the signed seeds.
pub const BODY: &[u8] = br#"{"amount":100}"#;

const AUTHORITY: &str = "api.example";
const PATH: &str = "/x?y";
const HEADERS: [&str; 5] =
    ["workload-identity-token", "authorization", "signature-input", "signature", "content-digest"];

// Test keys, public on purpose: the identity server's (it signed the seeds' WITs) and the
// workload's (it signed their proofs; only the seed generator needs it).
const ISSUER_KEY: &str = r#"{"kty":"EC","crv":"P-256","alg":"ES256","x":"Rdz2-y00A4fS_xRsJVoggD5eREXxLHqJMmAVMuSmWp8","y":"pZ1AGpAv_xhyPcdWQEa59-vHZzfwJDlGUkNM05lyH40","d":"00euMGTtKwo7aR5GL5VDlC_EdzyZDWwHu3kP8NPZkK8"}"#;
const WORKLOAD_KEY: &str = r#"{"kty":"EC","crv":"P-256","alg":"ES256","x":"przo-C1Pe7sH_tL9cqVgMhmPRbC3j-Uc5Ga7Qqu3gYY","y":"k8Rfbxp9dXOURoGA7hP5ONu0H5vObv-3NjXZwyQOcjw","d":"U4z2VWXF7c6Pv6Nj4rxg8XO8dLCG_jYM141F4qZCBqw"}"#;

fn key(jwk: &str) -> SigningKey {
    SigningKey::from_jwk(&Jwk::from_json(jwk).unwrap()).unwrap()
}

fn issuer_key() -> SigningKey {
    key(ISSUER_KEY).with_kid("issuer-1")
}

fn trust() -> &'static TrustStore {
    static TRUST: OnceLock<TrustStore> = OnceLock::new();
    TRUST.get_or_init(|| {
        TrustStore::new()
            .with(TRUST_DOMAIN.parse().unwrap(), TrustAnchors::new().key(issuer_key().public_key().clone()))
    })
}

/// A fresh verifier of the service at [`ORIGIN`], at [`NOW`].
pub fn verifier() -> Verifier {
    Verifier::new(trust().clone(), VerifierConfig::new().origin(ORIGIN)).unwrap().clock(FixedClock::new(NOW))
}

/// The verifier's answer to one input.
pub fn check(data: &[u8]) -> Result<VerifiedCaller, Error> {
    let mut fields = data.splitn(HEADERS.len() + 1, |b| *b == 0);
    let mut headers = HeaderMap::new();
    for name in HEADERS {
        let value = fields.next().filter(|v| !v.is_empty()).and_then(|v| HeaderValue::from_bytes(v).ok());
        if let Some(value) = value {
            headers.insert(name, value);
        }
    }
    let body = fields.next().unwrap_or_default();
    let view = RequestView::new(PATH, &headers).method("POST").authority(AUTHORITY).body(body);
    verifier().verify_sync(&view)
}

/// One input: never a panic; an accepted caller is of the one trusted domain; a refusal has
/// an answer.
pub fn run(data: &[u8]) {
    match check(data) {
        Ok(caller) => assert!(caller.id().is_in(&TRUST_DOMAIN.parse().unwrap())),
        Err(error) => {
            let _ = Rejection::from_error(&error).body();
        }
    }
}

/// Joins header values and a body into an input of this target.
pub fn input(headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
    let mut input = Vec::new();
    for name in HEADERS {
        input.extend_from_slice(headers.get(name).map(HeaderValue::as_bytes).unwrap_or_default());
        input.push(0);
    }
    input.extend_from_slice(body);
    input
}

/// Fresh seeds, each accepted by [`check`]: `wpt` (WIT + WPT), `httpsig` (a signed request
/// with a body) and `httpsig-no-body`. Written to `seeds/verify_request/` by
/// `cargo test -p wimse-core --test fuzz_seeds -- --ignored write_verify_request_seeds`.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let workload = key(WORKLOAD_KEY);
    let wit = WitIssuer::new(issuer_key()).issue(&WORKLOAD.parse().unwrap(), workload.public_jwk(), NOW - 60).unwrap();
    let credentials = Credentials::new(wit, workload).unwrap();
    let signer = Signer::new(StaticCredentials::new(credentials)).clock(FixedClock::new(NOW));
    let mut wpt = HeaderMap::new();
    signer.sign_headers(&mut wpt, AUDIENCE).unwrap();
    let signed = |body: Option<&[u8]>| {
        let mut headers = HeaderMap::new();
        let request = OutgoingRequest {
            method: "POST",
            scheme: "https",
            authority: AUTHORITY,
            path: "/x",
            query: Some("y"),
            body,
            aud: AUDIENCE,
            sign_response: false,
        };
        signer.sign_request_signature(&mut headers, &request).unwrap();
        input(&headers, body.unwrap_or_default())
    };
    vec![("wpt", input(&wpt, b"")), ("httpsig", signed(Some(BODY))), ("httpsig-no-body", signed(None))]
}
