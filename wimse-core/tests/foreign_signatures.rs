//! Only a signature tagged `wimse-workload-to-workload` is a WIMSE signature: a proxy's own
//! RFC 9421 signature neither switches a WPT request to signature mode nor, when malformed,
//! breaks the WIMSE one.

mod common;

use common::*;
use http::{HeaderMap, HeaderValue};
use wimse_core::httpsig::has_signature;
use wimse_core::prelude::*;

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
    let wit = wimse_core::wit::validate_wit(&f.wit, &f.trust, &Default::default(), NOW).unwrap();
    let parts = wimse_core::httpsig::RequestParts {
        method: "GET",
        scheme: "https",
        authority: "payments.example",
        path: PATH,
        query: None,
        headers: &other,
    };
    let err = wimse_core::httpsig::verify_request(&parts, None, &wit, |_| true, &Default::default(), NOW).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::SignatureWrongTag);
}
