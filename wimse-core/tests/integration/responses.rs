//! Clients check signed responses, and remember their nonces (http-signature-08: a response
//! nonce seen twice is a replay).

use crate::common::*;
use wimse_core::client::response::ResponseVerifier;
use wimse_core::prelude::*;
use wimse_core::protocol::httpsig::{OutgoingResponse, RequestParts, ResponseParts, SignOptions};

#[test]
fn a_replayed_response_is_refused() {
    let f = Fixture::new();
    let server_key = SigningKey::generate(Algorithm::ES256).unwrap();
    let server_id: WorkloadId = "spiffe://prod.example/ns/payments".parse().unwrap();
    let server_wit = WitIssuer::new(f.issuer_key.clone()).issue(&server_id, server_key.public_jwk(), NOW).unwrap();

    let req_headers = f.signed_request("GET", None, true);
    let input = req_headers["signature-input"].to_str().unwrap();
    let request_nonce = input.split("nonce=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let req = RequestParts {
        method: "GET",
        scheme: "https",
        authority: "payments.example",
        path: PATH,
        query: None,
        headers: &req_headers,
    };
    let mut res_headers = http::HeaderMap::new();
    let response = OutgoingResponse { status: 200, body: Some(b"ok"), request_nonce: &request_nonce };
    wimse_core::protocol::httpsig::sign_response(
        &mut res_headers,
        &response,
        &req,
        &server_wit,
        &server_key,
        &SignOptions::default(),
        NOW,
    )
    .unwrap();
    let res = ResponseParts { status: 200, headers: &res_headers };

    let verifier = ResponseVerifier::new(f.trust.clone()).clock(FixedClock::new(NOW));
    assert_eq!(verifier.verify(&req, &res, b"ok", &request_nonce, Some(&server_id)).unwrap(), server_id);
    let again = verifier.verify(&req, &res, b"ok", &request_nonce, Some(&server_id)).unwrap_err();
    assert_eq!(again.kind(), &ErrorKind::ReplayedProof);
    // Clones share what they remember.
    let clone = verifier.clone();
    assert_eq!(clone.verify(&req, &res, b"ok", &request_nonce, None).unwrap_err().kind(), &ErrorKind::ReplayedProof);
}
