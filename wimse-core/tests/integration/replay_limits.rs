//! Replay-protection inputs of any size: oversized proof ids are refused before anything is
//! stored, and what is stored per proof is fixed-size whatever the input.

use std::sync::Arc;

use crate::common::*;
use http::{HeaderMap, HeaderValue};
use wimse_core::prelude::*;
use wimse_core::protocol::httpsig::MAX_SIGNATURE_FIELDS_LEN;

fn verifier_with_store(f: &Fixture) -> (Verifier, Arc<InMemoryReplayStore>) {
    let store = Arc::new(InMemoryReplayStore::new(1000));
    (f.verifier().replay_store(store.clone()), store)
}

fn wpt_with_jti(f: &Fixture, jti: &str) -> String {
    let claims = format!(
        r#"{{"aud":"{ORIGIN}{PATH}","exp":{},"jti":"{jti}","wth":"{}"}}"#,
        NOW + 60,
        wimse_core::protocol::wit::token_hash(&f.wit)
    );
    raw_token(r#"{"alg":"ES256","typ":"wpt+jwt"}"#, &claims, &f.workload_key)
}

#[test]
fn oversized_jtis_are_refused_and_never_stored() {
    let f = Fixture::new();
    let (verifier, store) = verifier_with_store(&f);
    let mut config = f.config();
    config.max_token_len = 4 << 20;
    let roomy = f.verifier_with(config).replay_store(store.clone());
    // 1 MiB: refused by the token size bound (default) or, with a roomy bound, by the jti bound.
    let huge = wpt_with_jti(&f, &"j".repeat(1 << 20));
    let err = verifier.verify_sync(&RequestView::new(PATH, &f.headers(&f.wit, &huge))).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::OversizedToken);
    let err = roomy.verify_sync(&RequestView::new(PATH, &f.headers(&f.wit, &huge))).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::MissingClaim("jti"));
    // Just over the bound.
    let long = wpt_with_jti(&f, &"j".repeat(wimse_core::replay::MAX_PROOF_ID_LEN + 1));
    let err = verifier.verify_sync(&RequestView::new(PATH, &f.headers(&f.wit, &long))).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::MissingClaim("jti"));
    assert!(store.is_empty());
    // At the bound it is accepted, and stored as one fixed-size entry.
    let max = wpt_with_jti(&f, &"j".repeat(wimse_core::replay::MAX_PROOF_ID_LEN));
    verifier.verify_sync(&RequestView::new(PATH, &f.headers(&f.wit, &max))).unwrap();
    assert_eq!(store.len(), 1);
}

/// Replaces the nonce of a signed request (the signature no longer matches, which does not
/// matter: the size checks come first, and nothing is stored for an invalid request).
fn with_nonce(headers: &HeaderMap, nonce: &str) -> HeaderMap {
    let mut headers = headers.clone();
    let input = headers["signature-input"].to_str().unwrap();
    let start = input.find("nonce=\"").unwrap() + 7;
    let end = start + input[start..].find('"').unwrap();
    let replaced = format!("{}{nonce}{}", &input[..start], &input[end..]);
    headers.insert("signature-input", HeaderValue::from_str(&replaced).unwrap());
    headers
}

#[test]
fn oversized_nonces_are_refused_and_never_stored() {
    let f = Fixture::new();
    let (verifier, store) = verifier_with_store(&f);
    let headers = f.signed_request("GET", None, false);
    let view = |h: &HeaderMap| verifier.verify_sync(&RequestView::new(PATH, h).authority("payments.example"));
    // Megabyte parameters are refused before the fields are even parsed.
    for size in [MAX_SIGNATURE_FIELDS_LEN, 1 << 20] {
        let err = view(&with_nonce(&headers, &"n".repeat(size))).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::OversizedToken, "{err}");
    }
    let err = view(&with_nonce(&headers, &"n".repeat(wimse_core::replay::MAX_PROOF_ID_LEN + 1))).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::SignatureMalformed, "{err}");
    assert_eq!(wimse_core::server::framing::Rejection::from_error(&err).status(), 400);
    assert!(store.is_empty());
    // The genuine request is accepted once: one fixed-size entry.
    view(&headers).unwrap();
    assert_eq!(view(&headers).unwrap_err().kind(), &ErrorKind::ReplayedProof);
    assert_eq!(store.len(), 1);
}

/// http-signature-07+: a nonce is refused a second time whoever sends it, even in a request
/// another workload signed correctly.
#[test]
fn a_nonce_is_claimed_once_whoever_sends_it() {
    use base64::Engine as _;
    let f = Fixture::new();
    let verifier = f.verifier();
    let view = |h| RequestView::new(PATH, h).authority("payments.example");
    let first = f.signed_request("GET", None, false);
    verifier.verify_sync(&view(&first)).unwrap();
    let input = first["signature-input"].to_str().unwrap().to_owned();

    // Another workload of the trust domain signs a request carrying the same nonce.
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let other: WorkloadId = "spiffe://prod.example/ns/billing".parse().unwrap();
    let wit = WitIssuer::new(f.issuer_key.clone()).issue(&other, key.public_jwk(), NOW - 60).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("workload-identity-token", HeaderValue::from_str(&wit).unwrap());
    let parsed = wimse_core::protocol::httpsig::parse_signatures(&[&input], &["wimse=:AAAA:"]).unwrap().remove(0);
    let parts = wimse_core::protocol::httpsig::RequestParts {
        method: "GET",
        scheme: "https",
        authority: "payments.example",
        path: PATH,
        query: None,
        headers: &headers,
    };
    let base = wimse_core::protocol::httpsig::signature_base::<HeaderMap, HeaderMap>(
        &parsed.components,
        &parsed.signature_params,
        Some(&parts),
        None,
    )
    .unwrap();
    let signature = key.sign(Default::default(), base.as_bytes()).unwrap();
    headers.insert("signature-input", HeaderValue::from_str(&input).unwrap());
    let value = format!("wimse=:{}:", base64::engine::general_purpose::STANDARD.encode(signature));
    headers.insert("signature", HeaderValue::from_str(&value).unwrap());
    let err = verifier.verify_sync(&view(&headers)).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::ReplayedProof, "{err}");
    // The same request on a fresh verifier is valid: only the nonce was already used.
    assert_eq!(f.verifier().verify_sync(&view(&headers)).unwrap().id(), &other);
}
