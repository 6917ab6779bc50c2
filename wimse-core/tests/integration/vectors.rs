//! Test vectors: kanywst/wimsey conformance v6 (wpt-02) and the drafts' own examples.

use std::collections::BTreeMap;

use crate::common::{request_headers, testdata};
use http::{HeaderMap, HeaderValue};
use serde_json::Value;
use wimse_core::prelude::*;
use wimse_core::protocol::wit::{WitValidation, token_hash, validate_wit};
use wimse_core::protocol::wpt::{ProofContext, WptValidation, validate_wpt};

/// The reason codes of the conformance suite, mapped to our error kinds.
fn expected_kind(reason: &str) -> ErrorKind {
    match reason {
        "expired" => ErrorKind::ExpiredWpt,
        "audience_mismatch" => ErrorKind::AudienceMismatch,
        "wit_binding_mismatch" => ErrorKind::WitBindingMismatch,
        "wrong_type" => ErrorKind::WptWrongType,
        "invalid_signature" => ErrorKind::InvalidWptSignature,
        "txn_token_binding_mismatch" => ErrorKind::TxnTokenBindingMismatch,
        "other_token_binding_mismatch" => ErrorKind::OtherTokenBindingMismatch,
        other => panic!("unmapped reason {other}"),
    }
}

struct Case {
    now: u64,
    audience: String,
    wit: String,
    proof: String,
    txn_token: Option<String>,
    other_tokens: BTreeMap<String, String>,
}

fn str_field(v: &Value, name: &str) -> Option<String> {
    v.get(name).and_then(Value::as_str).map(str::to_owned)
}

fn other_tokens(v: &Value) -> Option<BTreeMap<String, String>> {
    v.get("other_tokens")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect())
}

/// Runs one case through the full request path: headers in, Verifier, frozen clock, leeway 0.
fn run(suite: &Value, case: &Case) -> Result<VerifiedCaller, Error> {
    let mut issuer = suite["issuer_verifying_key"].clone();
    // The WITs carry `kid: issuer-key-1`; the deployment names its anchor key accordingly.
    issuer["kid"] = "issuer-key-1".into();
    let anchor = PublicKey::from_jwk(&Jwk::from_json(&issuer.to_string()).unwrap()).unwrap();
    let trust = TrustStore::new().with("spiffe://example.org".parse().unwrap(), TrustAnchors::new().key(anchor));
    let mut config = VerifierConfig::new().audience(&case.audience).leeway(0);
    for name in suite["other_tokens"].as_object().unwrap().keys() {
        config = config.context_token(name);
    }
    let verifier = Verifier::new(trust, config).unwrap().clock(FixedClock::new(case.now));
    let mut headers = HeaderMap::new();
    headers.insert("workload-identity-token", HeaderValue::from_str(&case.wit).unwrap());
    headers.insert("authorization", HeaderValue::from_str(&format!("WPT {}", case.proof)).unwrap());
    if let Some(txn) = &case.txn_token {
        headers.insert("txn-token", HeaderValue::from_str(txn).unwrap());
    }
    for (name, value) in &case.other_tokens {
        headers.insert(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
    }
    verifier.verify_sync(&RequestView::new("/path", &headers))
}

fn check_suite(file: &str) {
    let suite: Value = serde_json::from_str(&testdata(file)).unwrap();
    assert_eq!(suite["spec"], "draft-ietf-wimse-wpt-02");
    let base = Case {
        now: suite["verify_now"].as_u64().unwrap(),
        audience: str_field(&suite, "audience").unwrap(),
        wit: str_field(&suite, "wit").unwrap(),
        proof: str_field(&suite, "proof").unwrap(),
        txn_token: str_field(&suite, "txn_token"),
        other_tokens: other_tokens(&suite).unwrap(),
    };
    let caller = run(&suite, &base).unwrap_or_else(|e| panic!("{file}: positive case rejected: {e}"));
    assert_eq!(caller.id().as_str(), "spiffe://example.org/workload/api");
    assert_eq!(caller.txn_token(), base.txn_token.as_deref());
    assert_eq!(caller.context_tokens(), &base.other_tokens);

    let negatives = suite["negative"].as_array().unwrap();
    assert!(negatives.len() >= 9, "{file}: expected the full negative set");
    for neg in negatives {
        let id = neg["id"].as_str().unwrap();
        let case = Case {
            now: neg.get("verify_now").and_then(Value::as_u64).unwrap_or(base.now),
            audience: str_field(neg, "audience").unwrap_or_else(|| base.audience.clone()),
            wit: str_field(neg, "wit").unwrap_or_else(|| base.wit.clone()),
            proof: str_field(neg, "proof").unwrap_or_else(|| base.proof.clone()),
            txn_token: if neg.get("no_txn_token").is_some() {
                None
            } else {
                str_field(neg, "txn_token").or_else(|| base.txn_token.clone())
            },
            other_tokens: other_tokens(neg).unwrap_or_else(|| base.other_tokens.clone()),
        };
        let err = run(&suite, &case).expect_err(&format!("{file}/{id}: accepted"));
        assert_eq!(err.kind(), &expected_kind(neg["expect"].as_str().unwrap()), "{file}/{id}: {err}");
    }
}

#[test]
fn kanywst_v6_wpt_es256() {
    check_suite("kanywst-wimsey/proof-es256.json");
}

#[test]
fn kanywst_v6_wpt_eddsa() {
    check_suite("kanywst-wimsey/proof-eddsa.json");
}

/// The hand-framed wpt-02 requests: verified from the raw request, audience from a configured origin.
#[test]
fn kanywst_flat_wpt02_requests() {
    for alg in ["es256", "eddsa"] {
        let (target, headers) = request_headers(&testdata(&format!("kanywst-wimsey/wpt02-{alg}.request.http")));
        let mut issuer: Value =
            serde_json::from_str(&testdata(&format!("kanywst-wimsey/wpt02-{alg}.issuer-public.jwk.json"))).unwrap();
        issuer["kid"] = "issuer-key-1".into();
        let anchor = PublicKey::from_jwk(&Jwk::from_json(&issuer.to_string()).unwrap()).unwrap();
        let trust = TrustStore::new().with("spiffe://example.org".parse().unwrap(), TrustAnchors::new().key(anchor));
        let config = VerifierConfig::new().origin("https://workload.example.com").context_token("ctx-token");
        let verifier = Verifier::new(trust, config).unwrap().clock(FixedClock::new(1_700_000_000));
        let caller = verifier.verify_sync(&RequestView::new(&target, &headers)).unwrap();
        assert_eq!(caller.id().as_str(), "spiffe://example.org/workload/api");
        // The flat WIT and WPT files are the tokens in the request.
        assert_eq!(headers["workload-identity-token"], testdata(&format!("kanywst-wimsey/wpt02-{alg}.wit.jwt")).trim());
        // The PoP private key reproduces the WIT's cnf.jwk.
        let pop = SigningKey::from_jwk(
            &Jwk::from_json(&testdata(&format!("kanywst-wimsey/wpt02-{alg}.pop-private.jwk.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(pop.public_key().thumbprint(), caller.key_thumbprint());
    }
}

fn latest_trust() -> TrustStore {
    let issuer =
        PublicKey::from_jwk(&Jwk::from_json(&testdata("drafts/wimse-latest-issuer-pubkey.jwk.json")).unwrap()).unwrap();
    TrustStore::new().with("wimse://example.com".parse().unwrap(), TrustAnchors::new().key(issuer))
}

fn draft_validation() -> WitValidation {
    let mut v = WitValidation::default();
    v.leeway = 0;
    v
}

#[test]
fn draft_latest_wit_validates_and_hashes() {
    let wit = testdata("drafts/wimse-latest-wit.jwt");
    let verified = validate_wit(wit.trim(), &latest_trust(), &draft_validation(), 1_745_510_000).unwrap();
    assert_eq!(verified.subject().as_str(), "wimse://example.com/specific-workload");
    assert_eq!(verified.kid(), Some("June 5"));
    assert_eq!(verified.cnf_algorithm(), Algorithm::EdDSA);
    assert_eq!(verified.claims().jti.as_deref(), Some("x-_1CTL2cca3CSE4cwb_l"));
    assert_eq!(verified.hash(), "AaYUfC34D1di2FxQLpiIJJ7Sg8VZ6o8OCdwSf9IToLg");
    // Outside its validity window it is refused.
    let late = validate_wit(wit.trim(), &latest_trust(), &draft_validation(), 1_745_512_510).unwrap_err();
    assert_eq!(late.kind(), &ErrorKind::ExpiredWit);
    // The header file carries the same token.
    assert_eq!(
        testdata("drafts/wimse-latest-wit-header.txt").trim(),
        format!("Workload-Identity-Token: {}", wit.trim())
    );
}

#[test]
fn draft_latest_keys_match_the_tokens() {
    let workload =
        SigningKey::from_jwk(&Jwk::from_json(&testdata("drafts/wimse-latest-workload-key.jwk.json")).unwrap()).unwrap();
    let issuer_private =
        SigningKey::from_jwk(&Jwk::from_json(&testdata("drafts/wimse-latest-issuer-privkey.jwk.json")).unwrap())
            .unwrap();
    let issuer_public = Jwk::from_json(&testdata("drafts/wimse-latest-issuer-pubkey.jwk.json")).unwrap();
    assert_eq!(issuer_private.public_jwk().x, issuer_public.x);
    assert_eq!(issuer_private.public_jwk().y, issuer_public.y);
    let wit = testdata("drafts/wimse-latest-wit.jwt");
    let verified = validate_wit(wit.trim(), &latest_trust(), &draft_validation(), 1_745_510_000).unwrap();
    assert_eq!(workload.public_jwk().x, verified.cnf_key().jwk().x);
    // Computed thumbprints from the vector notes.
    assert_eq!(workload.public_key().thumbprint(), "sWptYalQwqq7mvswEtvcpHYbrI-lqgVH7SdfkHinUzI");
    assert_eq!(issuer_private.public_key().thumbprint(), "-PTiuiMwpW_0dv_Y5tpXxsmMU-XmSZwUNdKRS79oyYk");
    // The issuer's private key issues WITs the published public key verifies.
    let issuer = WitIssuer::new(issuer_private.with_kid("June 5"));
    let fresh = issuer.issue(verified.subject(), workload.public_jwk(), 1_745_510_000).unwrap();
    validate_wit(&fresh, &latest_trust(), &draft_validation(), 1_745_510_000).unwrap();
}

#[test]
fn draft_latest_wpt_validates_as_a_token() {
    let wit = testdata("drafts/wimse-latest-wit.jwt");
    let verified = validate_wit(wit.trim(), &latest_trust(), &draft_validation(), 1_745_510_000).unwrap();
    let wpt = testdata("drafts/wimse-latest-wpt.jwt");
    let aud_ok = |aud: &str| aud == "https://workload.example.com/path";
    let mut cfg = WptValidation::default();
    cfg.leeway = 0;
    // The example carries `ath` (removed in wpt-02): an unknown claim now, and ignored.
    let proof = validate_wpt(wpt.trim(), &verified, &ProofContext::default(), aud_ok, &cfg, 1_745_510_000).unwrap();
    assert_eq!(proof.jti, "__bwc4ESC3acc2LTC1-_x");
    assert_eq!(
        token_hash(testdata("drafts/wimse-latest-access-token.txt").trim()),
        "CL4wjfpRmNf-bdYIbYLnV9d5rMARGwKYE10wUwzC0jI"
    );
    assert_eq!(
        token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
        "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    );
}

/// The draft example request uses the pre-wpt-02 transport (`Workload-Proof-Token` plus a bearer
/// token): a wpt-02 recipient refuses it.
#[test]
fn draft_latest_request_framing_is_the_old_transport() {
    let (target, headers) = request_headers(&testdata("drafts/wimse-latest-wpt-request.http"));
    let verifier = Verifier::new(latest_trust(), VerifierConfig::new().origin("https://workload.example.com"))
        .unwrap()
        .clock(FixedClock::new(1_745_510_000));
    let err = verifier.verify_sync(&RequestView::new(&target, &headers)).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::MissingWpt);
}

#[test]
fn unmerged_oth_example_binds_its_context_token() {
    let (_, headers) = request_headers(&testdata("drafts/wimse-unmerged-pr-oth-request.http"));
    let wit = headers["workload-identity-token"].to_str().unwrap();
    let verified = validate_wit(wit, &latest_trust(), &draft_validation(), 1_745_510_000).unwrap();
    let wpt = testdata("drafts/wimse-unmerged-pr-oth-wpt.jwt");
    assert_eq!(headers["workload-proof-token"], wpt.trim());
    let mut cfg = WptValidation::default();
    cfg.context_tokens = vec!["x-custom-token".into()];
    cfg.max_lifetime = u64::MAX / 4; // the example's lifetime is not what this test is about
    let mut context = ProofContext::default();
    context.other_tokens.insert("x-custom-token".into(), headers["x-custom-token"].to_str().unwrap());
    let aud_ok = |aud: &str| aud == "https://workload.example.com/path";
    validate_wpt(wpt.trim(), &verified, &context, aud_ok, &cfg, 1_745_509_000).unwrap();
    assert_eq!(token_hash("some-example-other-token"), "x-Uy6Ch_xn3AbUVKDjPMQQugtcn2erLWrkvVWAmKl1k");
    // Another value of the same field breaks the binding.
    context.other_tokens.insert("x-custom-token".into(), "some-other-value");
    let err = validate_wpt(wpt.trim(), &verified, &context, aud_ok, &cfg, 1_745_509_000).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::OtherTokenBindingMismatch);
}

#[test]
fn legacy_draft_tokens_fail_the_typ_checks() {
    let s2s05_issuer =
        PublicKey::from_jwk(&Jwk::from_json(&testdata("drafts/wimse-s2s05-issuer-pubkey.jwk.json")).unwrap()).unwrap();
    let trust = TrustStore::new().with("wimse://example.com".parse().unwrap(), TrustAnchors::new().key(s2s05_issuer));
    for file in ["drafts/wimse-s2s05-wit.jwt", "drafts/wimse-s2s02-wit.jwt"] {
        let err = validate_wit(testdata(file).trim(), &trust, &draft_validation(), 1_700_000_000).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::WitWrongType, "{file}");
    }
    let wit = testdata("drafts/wimse-latest-wit.jwt");
    let verified = validate_wit(wit.trim(), &latest_trust(), &draft_validation(), 1_745_510_000).unwrap();
    for file in ["drafts/wimse-s2s05-wpt.jwt", "drafts/wimse-s2s02-wpt.jwt"] {
        let err = validate_wpt(
            testdata(file).trim(),
            &verified,
            &ProofContext::default(),
            |_| true,
            &WptValidation::default(),
            1_745_510_000,
        )
        .unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::WptWrongType, "{file}");
    }
}
