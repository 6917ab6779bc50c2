//! The file format every suite shares, and the facts every suite shares (time, identities,
//! tokens).

use serde::Serialize;
use serde_json::{Value, json};
use wimse_core::ErrorKind;
use wimse_core::protocol::wit::token_hash;

use crate::jwt::{fixed_id, header, jwt};
use crate::keys::{Key, KeyEntry};

/// The format of the files; bumped when a field changes meaning.
pub(crate) const FORMAT: &str = "wimse-rs-vectors/1";
/// Who writes the files.
pub(crate) const GENERATED_BY: &str =
    "vectors/gen in github.com/wimse-rs/wimse (`cargo run -p wimse-vectors`); do not edit by hand";
/// The frozen time every suite is verified at (2027-01-15T08:00:00Z).
pub(crate) const NOW: u64 = 1_800_000_000;
/// The trust domain of every workload.
pub(crate) const TRUST_DOMAIN: &str = "spiffe://vectors.example";
/// The calling workload (ES256 key).
pub(crate) const CLIENT: &str = "spiffe://vectors.example/client";
/// Another calling workload (EdDSA key).
pub(crate) const BATCH: &str = "spiffe://vectors.example/batch";
/// The workload that signs responses.
pub(crate) const LEDGER: &str = "spiffe://vectors.example/ledger";
/// Clock leeway of every verifier, seconds.
pub(crate) const LEEWAY: u64 = 30;
/// Longest WIT lifetime accepted, seconds.
pub(crate) const MAX_WIT_LIFETIME: u64 = 86_400;
/// What a case expects when it must pass.
pub(crate) const VALID: &str = "valid";

/// One suite file.
#[derive(Debug, Serialize)]
pub(crate) struct Suite<V> {
    pub(crate) format: &'static str,
    pub(crate) suite: &'static str,
    pub(crate) title: &'static str,
    pub(crate) drafts: Vec<&'static str>,
    pub(crate) generated_by: &'static str,
    pub(crate) procedure: Vec<&'static str>,
    pub(crate) keys: Vec<KeyEntry>,
    pub(crate) verifier: V,
    pub(crate) cases: Vec<Case>,
}

impl<V: Serialize> Suite<V> {
    /// The file's text: pretty JSON with a final newline.
    pub(crate) fn render(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("the suite serializes");
        text.push('\n');
        text
    }
}

/// One case: what to verify and what must come out.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Case {
    pub(crate) id: &'static str,
    pub(crate) description: &'static str,
    /// `valid`, or the reason code of the check that must fail.
    pub(crate) expect: &'static str,
    /// How many times the message is delivered to the same verifier (default 1); `expect` is
    /// for the last delivery, every earlier one must be valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) deliveries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) request: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) request_nonce: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) response: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) header: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) claims: Option<Value>,
    /// The signature base the signer signed (for a valid case, exactly what a verifier must
    /// rebuild).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) signature_base: Option<String>,
}

/// The reason code a case expects.
pub(crate) fn reason(kind: ErrorKind) -> &'static str {
    kind.reason()
}

/// The claims of a WIT for `sub` bound to `cnf`, issued 10 minutes ago for an hour.
pub(crate) fn wit_claims(sub: &str, cnf: &Key, label: &str) -> Value {
    json!({
        "sub": sub,
        "iat": NOW - 600,
        "exp": NOW + 3000,
        "jti": fixed_id(label),
        "cnf": {"jwk": cnf.public()},
    })
}

/// A WIT signed by `issuer` (its `kid` in the header), typed `typ`.
pub(crate) fn wit_typed(issuer: &Key, typ: Option<&str>, claims: &Value) -> String {
    jwt(&header(issuer.alg(), typ, issuer.signing.kid()), claims, issuer)
}

/// A WIT signed by `issuer`, typed `wit+jwt`.
pub(crate) fn wit(issuer: &Key, claims: &Value) -> String {
    wit_typed(issuer, Some("wit+jwt"), claims)
}

/// The claims of a Txn-Token of the trust domain, issued a minute ago for five minutes.
pub(crate) fn txn_claims(label: &str) -> Value {
    json!({
        "aud": TRUST_DOMAIN,
        "iat": NOW - 60,
        "exp": NOW + 240,
        "txn": fixed_id(label),
        "sub": "user-1842",
        "scope": "orders.read",
        "req_wl": "spiffe://vectors.example/front",
        "rctx": {"req_ip": "192.0.2.7"},
        "tctx": {"order": 7},
    })
}

/// A Txn-Token signed by `tts`, typed `typ`.
pub(crate) fn txn_token(tts: &Key, typ: Option<&str>, claims: &Value) -> String {
    jwt(&header(tts.alg(), typ, tts.signing.kid()), claims, tts)
}

/// `wth`, `tth`, `oth` values: base64url(SHA-256(value)).
pub(crate) fn hash(value: &str) -> String {
    token_hash(value)
}
