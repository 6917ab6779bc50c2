//! Shared helpers for the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

use http::{HeaderMap, HeaderName, HeaderValue};
use wimse_core::jose::{Backend, b64url_encode};
use wimse_core::prelude::*;

pub const NOW: u64 = 1_800_000_000;
pub const ORIGIN: &str = "https://payments.example";
pub const PATH: &str = "/charge";

pub fn testdata(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Header fields of a raw HTTP/1.1 request file (LF or CRLF line ends).
pub fn request_headers(raw: &str) -> (String, HeaderMap) {
    let mut lines = raw.lines();
    let request_line = lines.next().expect("request line");
    let target = request_line.split(' ').nth(1).expect("target").to_owned();
    let mut headers = HeaderMap::new();
    for line in lines.take_while(|l| !l.trim().is_empty()) {
        let (name, value) = line.split_once(':').expect("header line");
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            HeaderValue::from_str(value.trim()).unwrap(),
        );
    }
    (target, headers)
}

/// An issuer, a workload and a verifier configured for them, with a frozen clock.
pub struct Fixture {
    pub issuer_key: SigningKey,
    pub workload_key: SigningKey,
    pub id: WorkloadId,
    pub wit: String,
    pub trust: TrustStore,
}

impl Fixture {
    pub fn new() -> Self {
        Self::with_algs(Algorithm::ES256, Algorithm::ES256)
    }

    pub fn with_algs(issuer: Algorithm, workload: Algorithm) -> Self {
        let issuer_key = SigningKey::generate(issuer).unwrap().with_kid("k1");
        let workload_key = SigningKey::generate(workload).unwrap();
        let id: WorkloadId = "spiffe://prod.example/ns/orders".parse().unwrap();
        let wit = WitIssuer::new(issuer_key.clone())
            .issuer("https://issuer.prod.example")
            .issue(&id, workload_key.public_jwk(), NOW - 60)
            .unwrap();
        let trust = TrustStore::new().with(id.trust_domain(), TrustAnchors::new().key(issuer_key.public_key().clone()));
        Self { issuer_key, workload_key, id, wit, trust }
    }

    pub fn config(&self) -> VerifierConfig {
        VerifierConfig::new().origin(ORIGIN)
    }

    pub fn verifier(&self) -> Verifier {
        self.verifier_with(self.config())
    }

    pub fn verifier_with(&self, config: VerifierConfig) -> Verifier {
        Verifier::new(self.trust.clone(), config).unwrap().clock(FixedClock::new(NOW))
    }

    pub fn wpt(&self) -> String {
        WptBuilder::new(&self.workload_key, &self.wit, &format!("{ORIGIN}{PATH}")).sign(NOW).unwrap()
    }

    pub fn headers(&self, wit: &str, wpt: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("workload-identity-token", HeaderValue::from_str(wit).unwrap());
        h.insert("authorization", HeaderValue::from_str(&format!("WPT {wpt}")).unwrap());
        h
    }

    pub fn verify(&self, headers: &HeaderMap) -> Result<VerifiedCaller, Error> {
        self.verifier().verify_sync(&RequestView::new(PATH, headers))
    }

    /// The headers of a request to `ORIGIN` + `PATH` signed with an HTTP message signature.
    pub fn signed_request(&self, method: &str, body: Option<&[u8]>, sign_response: bool) -> HeaderMap {
        self.sign_headers(HeaderMap::new(), method, body, sign_response)
    }

    /// `headers` (the fields to cover beside the credentials) signed as
    /// [`signed_request`](Self::signed_request) does.
    pub fn sign_headers(
        &self,
        mut headers: HeaderMap,
        method: &str,
        body: Option<&[u8]>,
        sign_response: bool,
    ) -> HeaderMap {
        let request = wimse_core::protocol::httpsig::OutgoingRequest {
            method,
            scheme: "https",
            authority: "payments.example",
            path: PATH,
            query: None,
            body,
            aud: &format!("{ORIGIN}{PATH}"),
            sign_response,
        };
        let options = wimse_core::protocol::httpsig::SignOptions::default();
        wimse_core::protocol::httpsig::sign_request(
            &mut headers,
            &request,
            &self.wit,
            &self.workload_key,
            &options,
            NOW,
        )
        .unwrap();
        headers
    }

    /// Verifies a request carrying `wit` with a fresh, valid WPT for it.
    pub fn verify_wit(&self, wit: &str) -> Result<VerifiedCaller, Error> {
        let wpt = WptBuilder::new(&self.workload_key, wit, &format!("{ORIGIN}{PATH}")).sign(NOW).unwrap();
        self.verify(&self.headers(wit, &wpt))
    }
}

/// Signs arbitrary header and claims JSON text with `key`: lets tests build tokens that the
/// library's own builders would never produce.
pub fn raw_token(header: &str, claims: &str, key: &SigningKey) -> String {
    let input = format!("{}.{}", b64url_encode(header), b64url_encode(claims));
    let sig = key.sign(Backend::default(), input.as_bytes()).unwrap();
    format!("{input}.{}", b64url_encode(sig))
}

/// Claims JSON of a WIT for the fixture workload, with `extra` members appended verbatim.
pub fn wit_claims(f: &Fixture, exp: u64, extra: &str) -> String {
    format!(r#"{{"sub":"{}","exp":{exp},"cnf":{{"jwk":{}}}{extra}}}"#, f.id, f.workload_key.public_jwk().to_json())
}

pub fn wpt_claims(wit: &str, exp: u64, extra: &str) -> String {
    format!(
        r#"{{"aud":"{ORIGIN}{PATH}","exp":{exp},"jti":"{}","wth":"{}"{extra}}}"#,
        b64url_encode(exp.to_be_bytes()),
        wimse_core::protocol::wit::token_hash(wit)
    )
}
