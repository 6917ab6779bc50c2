//! Only a signature tagged `wimse-workload-to-workload` is a WIMSE signature: a proxy's own
//! RFC 9421 signature neither switches a WPT request to signature mode nor, when malformed,
//! breaks the WIMSE one.

use crate::common::*;
use http::{HeaderMap, HeaderValue};
use wimse_core::prelude::*;
use wimse_core::protocol::httpsig::has_signature;

fn add_foreign(headers: &mut HeaderMap, input: &str, signature: &str) {
    headers.append("signature-input", HeaderValue::from_str(input).unwrap());
    headers.append("signature", HeaderValue::from_str(signature).unwrap());
}

#[test]
fn a_wpt_request_may_carry_a_proxys_signature() {
    let f = Fixture::new();
    let mut headers = f.headers(&f.wit, &f.wpt());
    add_foreign(&mut headers, r#"proxy=("@method" "@path");created=1;tag="edge-proxy""#, "proxy=:AAAA:");
    assert!(!has_signature(&headers));
    let caller = f.verify(&headers).unwrap();
    assert_eq!(caller.method().name(), "wpt");
    // Untagged and unparsable foreign fields do not select signature mode either.
    let mut untagged = f.headers(&f.wit, &f.wpt());
    add_foreign(&mut untagged, r#"sig1=("@method");created=1"#, "sig1=:AAAA:");
    f.verify(&untagged).unwrap();
    let mut garbage = f.headers(&f.wit, &f.wpt());
    add_foreign(&mut garbage, "(((", "???");
    f.verify(&garbage).unwrap();
}

#[test]
fn a_malformed_foreign_signature_does_not_fail_the_wimse_one() {
    let f = Fixture::new();
    let mut headers = f.signed_request("GET", None, false);
    // A foreign member that covers a component twice and has no Signature value.
    headers.append("signature-input", HeaderValue::from_static(r#"proxy=("@path" "@path");tag="edge-proxy""#));
    assert!(has_signature(&headers));
    let verifier = f.verifier();
    let caller = verifier.verify_sync(&RequestView::new(PATH, &headers).authority("payments.example")).unwrap();
    assert_eq!(caller.method().name(), "http-signature");
}

#[test]
fn two_wimse_signatures_are_ambiguous_and_a_lone_other_tag_is_named() {
    let f = Fixture::new();
    let view = |h: &HeaderMap| f.verifier().verify_sync(&RequestView::new(PATH, h)).unwrap_err().into_kind();
    let tag = r#"tag="wimse-workload-to-workload""#;
    let mut two = f.headers(&f.wit, &f.wpt());
    two.remove("authorization");
    add_foreign(&mut two, &format!(r#"a=("@method");{tag}, b=("@method");{tag}"#), "a=:AAAA:, b=:AAAA:");
    assert_eq!(view(&two), ErrorKind::AmbiguousWimseSignature);
    // Called directly on a message whose only signature has another tag, the verifier says so.
    let mut other = HeaderMap::new();
    add_foreign(&mut other, r#"a=("@method");tag="other""#, "a=:AAAA:");
    let wit = wimse_core::protocol::wit::validate_wit(&f.wit, &f.trust, &Default::default(), NOW).unwrap();
    let parts = wimse_core::protocol::httpsig::RequestParts {
        method: "GET",
        scheme: "https",
        authority: "payments.example",
        path: PATH,
        query: None,
        headers: &other,
    };
    let err = wimse_core::protocol::httpsig::verify_request(&parts, None, &wit, |_| true, &Default::default(), NOW)
        .unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::SignatureWrongTag);
}

/// A request with neither a WPT nor a WIMSE-tagged signature, but a signature of some kind, is
/// told what is wrong with that signature (not `missing_wpt`), answered 401 with the reason, and
/// the foreign signature is never interpreted (its components are nonsense here).
#[test]
fn a_request_without_a_wimse_proof_hears_what_its_signature_lacks() {
    let f = Fixture::new();
    let verifier = f.verifier();
    let refuse = |input: &str, signature: &str| {
        let mut headers = f.headers(&f.wit, &f.wpt());
        headers.remove("authorization");
        add_foreign(&mut headers, input, signature);
        verifier.verify_sync(&RequestView::new(PATH, &headers)).unwrap_err()
    };
    // The only signature has no tag: `missing_parameter`, naming `tag`.
    let err = refuse(r#"sig1=("@nonsense" "@nonsense");created=1"#, "sig1=:AAAA:");
    assert_eq!(err.kind(), &ErrorKind::MissingSignatureParameter);
    assert!(err.detail().unwrap().starts_with("tag: the only signature has none"), "{err}");
    let rejection = wimse_core::server::framing::Rejection::from_error(&err);
    assert_eq!(rejection.status(), 401);
    assert_eq!(rejection.problem().reason, Some("missing_parameter"));
    // The only signature has another tag: `wrong_tag`, naming it.
    let err = refuse(r#"sig1=("@method");tag="wimse-service-to-service""#, "sig1=:AAAA:");
    assert_eq!(err.kind(), &ErrorKind::SignatureWrongTag);
    assert!(err.detail().unwrap().contains(r#""wimse-service-to-service""#), "{err}");
    // Several, none tagged: `no_wimse_signature`, naming the tags seen.
    let err = refuse(r#"a=("@method");tag="edge-proxy", b=("@method")"#, "a=:AAAA:, b=:AAAA:");
    assert_eq!(err.kind(), &ErrorKind::NoWimseSignature);
    assert!(err.detail().unwrap().ends_with(r#"tags seen: "edge-proxy", (no tag)"#), "{err}");
    // A tag that tries to smuggle control characters or a megabyte into logs is cut short.
    let long = format!(r#"a=("@method");tag="{}", b=("@method");tag="x""#, "z".repeat(10_000));
    let err = refuse(&long, "a=:AAAA:, b=:AAAA:");
    assert!(err.detail().unwrap().len() < 200, "{}", err.detail().unwrap().len());
    // A Signature-Input that does not even parse is named as such.
    let err = refuse("(((", "???");
    assert_eq!(err.kind(), &ErrorKind::NoWimseSignature);
    // Neighbours: no signature at all is still `missing_wpt`; two WIMSE-tagged signatures are
    // still ambiguous (a signed request: 400 without the reason in the body).
    let mut plain = f.headers(&f.wit, &f.wpt());
    plain.remove("authorization");
    assert_eq!(verifier.verify_sync(&RequestView::new(PATH, &plain)).unwrap_err().kind(), &ErrorKind::MissingWpt);
    let tag = r#"tag="wimse-workload-to-workload""#;
    let err = refuse(&format!(r#"a=("@method");{tag}, b=("@method");{tag}"#), "a=:AAAA:, b=:AAAA:");
    assert_eq!(err.kind(), &ErrorKind::AmbiguousWimseSignature);
    assert_eq!(wimse_core::server::framing::Rejection::from_error(&err).status(), 400);
}
