//! A `Content-Digest` can never go unchecked: a verifier that was not given the body of a
//! message with content refuses it.

use crate::common::*;
use http::{HeaderMap, HeaderValue};
use wimse_core::prelude::*;

fn signed_post(f: &Fixture, body: &[u8]) -> HeaderMap {
    f.signed_request("POST", Some(body), false)
}

#[test]
fn a_body_that_was_not_handed_over_fails_closed() {
    let f = Fixture::new();
    let verifier = f.verifier();
    let view = |h| RequestView::new(PATH, h).method("POST").authority("payments.example");
    let headers = signed_post(&f, b"amount=1");
    // Forgetting `.body(..)`: refused, not accepted with the digest unchecked.
    let err = verifier.verify_sync(&view(&headers)).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::BodyNotSupplied);
    assert_eq!(wimse_core::server::framing::Rejection::from_error(&err).status(), 500);
    // A body announced only by Content-Length (no digest) is refused the same way...
    let mut no_digest = signed_post(&f, b"");
    no_digest.insert("content-length", HeaderValue::from_static("8"));
    assert_eq!(verifier.verify_sync(&view(&no_digest)).unwrap_err().kind(), &ErrorKind::BodyNotSupplied);
    // ...and with the body handed over, a body without a digest is refused by the profile.
    let err = verifier.verify_sync(&view(&no_digest).body(b"amount=1")).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::MissingCoveredComponent);
    // The body handed over: checked, and accepted when it matches.
    let err = verifier.verify_sync(&view(&headers).body(b"amount=9")).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::ContentDigestMismatch);
    verifier.verify_sync(&view(&headers).body(b"amount=1")).unwrap();
    // A POST whose header fields announce no content may still have some (HTTP/2 DATA frames
    // need no Content-Length): without its body it is refused; given as empty, accepted.
    let empty = signed_post(&f, b"");
    let err = verifier.verify_sync(&view(&empty)).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::BodyNotSupplied);
    verifier.verify_sync(&view(&empty).body(b"")).unwrap();
    for method in ["PUT", "PATCH", "report"] {
        let headers = f.signed_request(method, Some(b""), false);
        let request = RequestView::new(PATH, &headers).method(method).authority("payments.example");
        let err = verifier.verify_sync(&request).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::BodyNotSupplied, "{method}");
    }
    // Methods without content need no body (unless their fields announce one).
    for method in ["GET", "HEAD", "DELETE", "OPTIONS", "get"] {
        let headers = f.signed_request(method, None, false);
        verifier.verify_sync(&RequestView::new(PATH, &headers).method(method).authority("payments.example")).unwrap();
    }
}
