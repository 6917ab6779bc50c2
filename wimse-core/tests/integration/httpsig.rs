//! HTTP Message Signatures: RFC 9421 examples and the kanywst/wimsey http-signature suite.

use crate::common::{request_headers, testdata};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use wimse_core::prelude::*;
use wimse_core::protocol::httpsig::{
    self, OutgoingRequest, OutgoingResponse, ParsedSignature, RequestParts, ResponseParts, SignatureValidation,
    parse_signatures, signature_base,
};
use wimse_core::protocol::wit::{VerifiedWit, WitValidation, validate_wit};

fn key(file: &str) -> PublicKey {
    SigningKey::from_jwk(&Jwk::from_json(&testdata(file)).unwrap()).unwrap().public_key().clone()
}

/// The signatures of a `*-headers.txt` file or a raw message.
fn signatures(headers: &HeaderMap) -> Vec<ParsedSignature> {
    let values = |name: &str| headers.get_all(name).iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>();
    parse_signatures(&values("signature-input"), &values("signature")).unwrap()
}

fn header_file(file: &str) -> HeaderMap {
    request_headers(&format!("GET / HTTP/1.1\n{}\n", testdata(file))).1
}

fn request_parts<'a>(target: &'a str, method: &'a str, headers: &'a HeaderMap) -> RequestParts<'a, HeaderMap> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let authority = headers["host"].to_str().unwrap();
    RequestParts { method, scheme: "https", authority, path, query, headers }
}

#[test]
fn rfc9421_b2_6_ed25519_request() {
    let raw = testdata("rfc9421/rfc9421-test-request.http");
    let (target, headers) = request_headers(&raw);
    let sig = signatures(&header_file("rfc9421/rfc9421-b2-6-headers.txt")).remove(0);
    let req = request_parts(&target, "POST", &headers);
    let base = signature_base::<_, HeaderMap>(&sig.components, &sig.signature_params, Some(&req), None).unwrap();
    assert_eq!(base, testdata("rfc9421/rfc9421-b2-6-sigbase.txt"));
    let key = key("rfc9421/rfc9421-test-key-ed25519.jwk.json");
    for backend in Backend::available() {
        assert!(key.verify(backend, Algorithm::EdDSA, base.as_bytes(), &sig.value));
    }
}

#[test]
fn rfc9421_b2_4_ecdsa_response_and_the_digest_erratum() {
    let raw = testdata("rfc9421/rfc9421-test-response.http");
    let (_, mut headers) = request_headers(&raw.replacen("HTTP/1.1 200 OK", "GET / HTTP/1.1", 1));
    let body = raw.split("\n\n").nth(1).unwrap().trim_end_matches('\n');
    // The response as printed carries a Content-Digest that is not its body's digest (RFC 9421
    // erratum): a digest check refuses it.
    let printed = headers["content-digest"].to_str().unwrap().to_owned();
    assert!(httpsig::verify_content_digest(&[&printed], body.as_bytes()).is_err());
    // The signature base (and signature) use the correct digest; patch it in to rebuild the base.
    let base_file = testdata("rfc9421/rfc9421-b2-4-sigbase.txt");
    let correct = base_file.lines().find_map(|l| l.strip_prefix("\"content-digest\": ")).unwrap();
    httpsig::verify_content_digest(&[correct], body.as_bytes()).unwrap();
    headers.insert("content-digest", HeaderValue::from_str(correct).unwrap());
    let sig = signatures(&header_file("rfc9421/rfc9421-b2-4-headers.txt")).remove(0);
    let res = ResponseParts { status: 200, headers: &headers };
    let base = signature_base::<HeaderMap, _>(&sig.components, &sig.signature_params, None, Some(&res)).unwrap();
    assert_eq!(base, base_file);
    let key = key("rfc9421/rfc9421-test-key-ecc-p256.jwk.json");
    for backend in Backend::available() {
        assert!(key.verify(backend, Algorithm::ES256, base.as_bytes(), &sig.value));
    }
}

#[test]
fn rfc9421_b4_transformations() {
    let key = key("rfc9421/rfc9421-test-key-ed25519.jwk.json");
    let check = |file: &str| {
        let raw = testdata(&format!("rfc9421/{file}"));
        let method = raw.split(' ').next().unwrap().to_owned();
        let (target, headers) = request_headers(&raw);
        let sig = signatures(&headers).remove(0);
        let req = request_parts(&target, &method, &headers);
        let base = signature_base::<_, HeaderMap>(&sig.components, &sig.signature_params, Some(&req), None).unwrap();
        (base.clone(), key.verify(Backend::default(), Algorithm::EdDSA, base.as_bytes(), &sig.value))
    };
    let (base, ok) = check("rfc9421-b4-original-request.http");
    assert_eq!(base, testdata("rfc9421/rfc9421-b4-sigbase.txt"));
    assert!(ok);
    for valid in [
        "rfc9421-b4-1-valid-added-query-and-header.http",
        "rfc9421-b4-2-valid-removed-date-collapsed-accept.http",
        "rfc9421-b4-3-valid-reordered-fields.http",
    ] {
        assert!(check(valid).1, "{valid}");
    }
    for invalid in
        ["rfc9421-b4-4-INVALID-changed-method-authority.http", "rfc9421-b4-5-INVALID-swapped-accept-order.http"]
    {
        assert!(!check(invalid).1, "{invalid}");
    }
}

#[test]
fn structured_field_errors() {
    let kind = |inputs: &[&str], sigs: &[&str]| parse_signatures(inputs, sigs).unwrap_err().into_kind();
    assert_eq!(
        kind(&["a=(\"@method\");created=1, a=(\"@path\")"], &["a=:AAAA:"]),
        ErrorKind::SignatureMalformed,
        "duplicate label"
    );
    assert_eq!(kind(&["a=(\"@method\")"], &["b=:AAAA:"]), ErrorKind::SignatureMalformed, "label mismatch");
    assert_eq!(kind(&["a=(\"@method\" \"@method\")"], &["a=:AAAA:"]), ErrorKind::SignatureMalformed, "component twice");
    assert_eq!(kind(&["a=(@method)"], &["a=:AAAA:"]), ErrorKind::SignatureMalformed, "not a string");
    assert_eq!(kind(&["a=\"x\""], &["a=:AAAA:"]), ErrorKind::SignatureMalformed, "not an inner list");
    assert_eq!(kind(&["a=(\"@method\")"], &["a=\"AAAA\""]), ErrorKind::SignatureMalformed, "not bytes");
    assert_eq!(kind(&["a=(\"@method\""], &["a=:AAAA:"]), ErrorKind::SignatureMalformed, "unterminated");
    // Field lines are combined before parsing.
    let parsed = parse_signatures(&["a=(\"@method\")", "b=()"], &["a=:AAAA:, b=:AAAA:"]).unwrap();
    assert_eq!(parsed.len(), 2);
}

// ---- kanywst/wimsey conformance suite, http-signature ----

struct Suite(Value);

impl Suite {
    fn load() -> Self {
        Self(serde_json::from_str(&testdata("kanywst-wimsey/httpsig-sign-es256.json")).unwrap())
    }

    fn validate_wit(&self, wit: &str, now: u64) -> VerifiedWit {
        let mut issuer = self.0["issuer_verifying_key"].clone();
        issuer["kid"] = "issuer-key-1".into();
        let anchor = PublicKey::from_jwk(&Jwk::from_json(&issuer.to_string()).unwrap()).unwrap();
        let trust = TrustStore::new().with("spiffe://example.org".parse().unwrap(), TrustAnchors::new().key(anchor));
        let mut cfg = WitValidation::default();
        cfg.leeway = 0;
        validate_wit(wit, &trust, &cfg, now).unwrap()
    }
}

fn headers_of(message: &Value, sig_input: &str, signature: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for pair in message["headers"].as_array().unwrap() {
        let name = HeaderName::from_bytes(pair[0].as_str().unwrap().to_ascii_lowercase().as_bytes()).unwrap();
        headers.append(name, HeaderValue::from_str(pair[1].as_str().unwrap()).unwrap());
    }
    headers.insert("signature-input", HeaderValue::from_str(sig_input).unwrap());
    headers.insert("signature", HeaderValue::from_str(signature).unwrap());
    headers
}

fn parts<'a>(request: &'a Value, headers: &'a HeaderMap) -> RequestParts<'a, HeaderMap> {
    RequestParts {
        method: request["method"].as_str().unwrap(),
        scheme: "https",
        authority: request["authority"].as_str().unwrap(),
        path: request["path"].as_str().unwrap(),
        query: request["query"].as_str(),
        headers,
    }
}

fn str_or<'a>(case: &'a Value, base: &'a Value, name: &str) -> &'a str {
    case.get(name).and_then(Value::as_str).or_else(|| base[name].as_str()).unwrap()
}

fn verify_request_case(suite: &Suite, case: &Value) -> Result<httpsig::VerifiedSignature, Error> {
    let s = &suite.0;
    let now = case.get("verify_now").and_then(Value::as_u64).unwrap_or(s["verify_now"].as_u64().unwrap());
    let request = case.get("request").unwrap_or(&s["request"]);
    let headers = headers_of(request, str_or(case, s, "signature_input"), str_or(case, s, "signature"));
    let wit = suite.validate_wit(headers["workload-identity-token"].to_str().unwrap(), now);
    let audience =
        case.get("accept_audience").and_then(Value::as_str).unwrap_or(s["params"]["wimse_aud"].as_str().unwrap());
    let mut cfg = SignatureValidation::default();
    cfg.leeway = 0;
    if let Some(max_age) = case.get("max_age").and_then(Value::as_u64) {
        cfg.max_age = max_age;
    }
    if let Some(required) = case.get("required_components").and_then(Value::as_array) {
        cfg.required_components = required.iter().map(|c| c.as_str().unwrap().trim_matches('"').to_owned()).collect();
    }
    let body = str_or(case, s, "body");
    httpsig::verify_request(&parts(request, &headers), Some(body.as_bytes()), &wit, |aud| aud == audience, &cfg, now)
}

#[test]
fn kanywst_httpsig_requests() {
    let suite = Suite::load();
    assert_eq!(suite.0["spec"], "draft-ietf-wimse-http-signature-07");
    let ok = verify_request_case(&suite, &Value::Null).unwrap();
    assert_eq!(ok.nonce, "abcd1111");
    assert!(ok.sign_response);
    for case in suite.0["accepted"].as_array().unwrap() {
        verify_request_case(&suite, case).unwrap_or_else(|e| panic!("{}: {e}", case["id"]));
    }
    let negatives = suite.0["negative"].as_array().unwrap();
    assert_eq!(negatives.len(), 17);
    for case in negatives {
        let err = verify_request_case(&suite, case).expect_err(case["id"].as_str().unwrap());
        assert_eq!(err.reason(), case["expect"].as_str().unwrap(), "{}: {err}", case["id"]);
    }
}

#[test]
fn kanywst_httpsig_nonce_replay() {
    let suite = Suite::load();
    let s = &suite.0;
    let now = s["verify_now"].as_u64().unwrap();
    let headers = headers_of(&s["request"], s["signature_input"].as_str().unwrap(), s["signature"].as_str().unwrap());
    let wit = suite.validate_wit(headers["workload-identity-token"].to_str().unwrap(), now);
    let body = s["body"].as_str().unwrap().as_bytes();
    let verify = || {
        httpsig::verify_request(
            &parts(&s["request"], &headers),
            Some(body),
            &wit,
            |_| true,
            &SignatureValidation::default(),
            now,
        )
    };
    // The signature verifies each time; the nonce is claimed once, whoever sends it.
    let store = wimse_core::replay::InMemoryReplayStore::default();
    let claim = |sig: httpsig::VerifiedSignature| {
        let claim = wimse_core::replay::ReplayClaim::signature_nonce(&sig.nonce, sig.expires + 30, sig.created);
        store.claim(&claim, now).into_ready().expect("in-memory stores answer at once")
    };
    claim(verify().unwrap()).unwrap();
    assert_eq!(claim(verify().unwrap()).unwrap_err().kind(), &ErrorKind::ReplayedProof);
}

fn verify_response_case(suite: &Suite, case: &Value) -> Result<httpsig::VerifiedSignature, Error> {
    let s = &suite.0;
    let r = &s["response"];
    let now = s["verify_now"].as_u64().unwrap();
    let request = case.get("request").unwrap_or(&s["request"]);
    let req_headers = headers_of(request, s["signature_input"].as_str().unwrap(), s["signature"].as_str().unwrap());
    let res_headers = headers_of(r, str_or(case, r, "signature_input"), str_or(case, r, "signature"));
    let server_wit = suite.validate_wit(str_or(case, r, "wit"), now);
    let res = ResponseParts { status: r["status"].as_u64().unwrap() as u16, headers: &res_headers };
    let mut cfg = SignatureValidation::default();
    cfg.leeway = 0;
    let nonce = str_or(case, r, "expected_req_nonce");
    httpsig::verify_response(
        &parts(request, &req_headers),
        &res,
        Some(r["body"].as_str().unwrap().as_bytes()),
        &server_wit,
        nonce,
        &cfg,
        now,
    )
}

#[test]
fn kanywst_httpsig_responses() {
    let suite = Suite::load();
    verify_response_case(&suite, &Value::Null).unwrap();
    let negatives = suite.0["response"]["negative"].as_array().unwrap();
    assert_eq!(negatives.len(), 12);
    for case in negatives {
        let err = verify_response_case(&suite, case).expect_err(case["id"].as_str().unwrap());
        assert_eq!(err.reason(), case["expect"].as_str().unwrap(), "{}: {err}", case["id"]);
    }
}

#[test]
fn our_signatures_round_trip_requests_and_responses() {
    let issuer = SigningKey::generate(Algorithm::ES256).unwrap();
    let trust = TrustStore::new()
        .with("spiffe://prod.example".parse().unwrap(), TrustAnchors::new().key(issuer.public_key().clone()));
    let now = 1_800_000_000;
    let enroll = |name: &str, alg| {
        let key = SigningKey::generate(alg).unwrap();
        let wit = WitIssuer::new(issuer.clone())
            .issue(&format!("spiffe://prod.example/{name}").parse().unwrap(), key.public_jwk(), now)
            .unwrap();
        (key, wit)
    };
    for alg in [Algorithm::ES256, Algorithm::EdDSA, Algorithm::ES384] {
        let (client_key, client_wit) = enroll("client", alg);
        let (server_key, server_wit) = enroll("server", alg);
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("txn-token", HeaderValue::from_static("txn-1"));
        let body = br#"{"amount":1}"#;
        let aud = "https://api.example/pay";
        let request = OutgoingRequest {
            method: "POST",
            scheme: "https",
            authority: "api.example",
            path: "/pay",
            query: Some("x=1"),
            body: Some(body),
            aud,
            sign_response: true,
        };
        let sent = httpsig::sign_request(
            &mut headers,
            &request,
            &client_wit,
            &client_key,
            &httpsig::SignOptions::default(),
            now,
        )
        .unwrap();
        let req = RequestParts {
            method: "POST",
            scheme: "https",
            authority: "api.example",
            path: "/pay",
            query: Some("x=1"),
            headers: &headers,
        };
        let client = validate_wit(&client_wit, &trust, &WitValidation::default(), now).unwrap();
        let got =
            httpsig::verify_request(&req, Some(body), &client, |a| a == aud, &SignatureValidation::default(), now)
                .unwrap();
        assert!(got.sign_response);
        assert_eq!(got.nonce, sent.nonce);
        let input = headers["signature-input"].to_str().unwrap();
        for component in [
            "\"@method\"",
            "\"@path\"",
            "\"@query\"",
            "\"content-type\"",
            "\"content-digest\"",
            "\"txn-token\"",
            "\"workload-identity-token\"",
            "tag=\"wimse-workload-to-workload\"",
            "wimse-sign-response",
        ] {
            assert!(input.contains(component), "{component} in {input}");
        }
        // Tampering with what is covered breaks it.
        let tampered = RequestParts { path: "/refund", ..req };
        let err =
            httpsig::verify_request(&tampered, Some(body), &client, |_| true, &SignatureValidation::default(), now)
                .unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidHttpSignature);
        let err = httpsig::verify_request(
            &req,
            Some(b"{\"amount\":9}"),
            &client,
            |_| true,
            &SignatureValidation::default(),
            now,
        )
        .unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::ContentDigestMismatch);

        let mut res_headers = HeaderMap::new();
        res_headers.insert("content-type", HeaderValue::from_static("text/plain"));
        let response = OutgoingResponse { status: 201, body: Some(b"ok"), request_nonce: &got.nonce };
        httpsig::sign_response(
            &mut res_headers,
            &response,
            &req,
            &server_wit,
            &server_key,
            &httpsig::SignOptions::default(),
            now,
        )
        .unwrap();
        let server = validate_wit(
            res_headers["workload-identity-token"].to_str().unwrap(),
            &trust,
            &WitValidation::default(),
            now,
        )
        .unwrap();
        let res = ResponseParts { status: 201, headers: &res_headers };
        httpsig::verify_response(&req, &res, Some(b"ok"), &server, &sent.nonce, &SignatureValidation::default(), now)
            .unwrap();
        let wrong_status = ResponseParts { status: 200, headers: &res_headers };
        let err = httpsig::verify_response(
            &req,
            &wrong_status,
            Some(b"ok"),
            &server,
            &sent.nonce,
            &SignatureValidation::default(),
            now,
        )
        .unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidHttpSignature);
    }
}

#[test]
fn connect_requests_cover_the_authority() {
    let now = 1_800_000_000;
    let (key, wit, verified) = workload(now);
    let mut headers = HeaderMap::new();
    let request = OutgoingRequest {
        method: "CONNECT",
        scheme: "https",
        authority: "db.internal:5432",
        path: "",
        query: None,
        body: None,
        aud: "db.internal:5432",
        sign_response: false,
    };
    httpsig::sign_request(&mut headers, &request, &wit, &key, &httpsig::SignOptions::default(), now).unwrap();
    assert!(headers["signature-input"].to_str().unwrap().starts_with("wimse=(\"@method\" \"@authority\""));
    let req = RequestParts {
        method: "CONNECT",
        scheme: "https",
        authority: "db.internal:5432",
        path: "",
        query: None,
        headers: &headers,
    };
    httpsig::verify_request(&req, None, &verified, |_| true, &SignatureValidation::default(), now).unwrap();
    let elsewhere = RequestParts { authority: "evil.internal:5432", ..req };
    let err = httpsig::verify_request(&elsewhere, None, &verified, |_| true, &SignatureValidation::default(), now)
        .unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::InvalidHttpSignature);
}

/// A CONNECT target is in authority-form (RFC 9110 §9.3.6), which keeps its port: an independent
/// implementation signs `CONNECT ledger.example:443` over `"@authority": ledger.example:443`.
/// Its signature base is written here as that implementation builds it, signed with the
/// workload's key, and must verify here; ours must produce the same base, in both directions
/// and for the signed response (`"@authority";req`).
#[test]
fn connect_keeps_the_default_port_of_its_authority_form_target() {
    use base64::Engine as _;
    let now = 1_800_000_000;
    let (key, wit, verified) = workload(now);
    let mut headers = HeaderMap::new();
    headers.insert("workload-identity-token", HeaderValue::from_str(&wit).unwrap());
    let params = format!(
        "(\"@method\" \"@authority\" \"workload-identity-token\");created={now};expires={};nonce=\"aW50ZXJvcC1ub25jZQ\";tag=\"wimse-workload-to-workload\";wimse-aud=\"ledger.example:443\"",
        now + 60
    );
    let theirs = format!(
        "\"@method\": CONNECT\n\"@authority\": ledger.example:443\n\"workload-identity-token\": {wit}\n\"@signature-params\": {params}"
    );
    let signature = key.sign(Backend::default(), theirs.as_bytes()).unwrap();
    headers.insert("signature-input", HeaderValue::from_str(&format!("sig1={params}")).unwrap());
    let value = format!("sig1=:{}:", base64::engine::general_purpose::STANDARD.encode(signature));
    headers.insert("signature", HeaderValue::from_str(&value).unwrap());
    let req = |authority| RequestParts {
        method: "CONNECT",
        scheme: "https",
        authority,
        path: "",
        query: None,
        headers: &headers,
    };
    let cfg = SignatureValidation::default();
    httpsig::verify_request(&req("ledger.example:443"), None, &verified, |_| true, &cfg, now)
        .expect("the independent implementation's CONNECT signature verifies");
    let parsed = signatures(&headers).remove(0);
    let ours = signature_base::<HeaderMap, HeaderMap>(
        &parsed.components,
        &parsed.signature_params,
        Some(&req("LEDGER.example:443")),
        None,
    )
    .unwrap();
    assert_eq!(ours, theirs, "the same base, host lower-cased, port kept");
    // Another port, or the port dropped, is another target.
    for other in ["ledger.example:8443", "ledger.example"] {
        let err = httpsig::verify_request(&req(other), None, &verified, |_| true, &cfg, now).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidHttpSignature, "{other}");
    }

    // Our signature of the same CONNECT covers the port too.
    let mut signed = HeaderMap::new();
    let request = OutgoingRequest {
        method: "CONNECT",
        scheme: "https",
        authority: "ledger.example:443",
        path: "",
        query: None,
        body: None,
        aud: "ledger.example:443",
        sign_response: true,
    };
    let sent = httpsig::sign_request(&mut signed, &request, &wit, &key, &httpsig::SignOptions::default(), now).unwrap();
    let parsed = signatures(&signed).remove(0);
    let connect = RequestParts { headers: &signed, ..req("ledger.example:443") };
    let base =
        signature_base::<HeaderMap, HeaderMap>(&parsed.components, &parsed.signature_params, Some(&connect), None)
            .unwrap();
    assert!(base.starts_with("\"@method\": CONNECT\n\"@authority\": ledger.example:443\n"), "{base}");
    httpsig::verify_request(&connect, None, &verified, |_| true, &cfg, now).unwrap();

    // The signed response covers `"@authority";req` with the port as well.
    let (server_key, server_wit, server_verified) = workload(now);
    let mut res_headers = HeaderMap::new();
    let response = OutgoingResponse { status: 200, body: None, request_nonce: &sent.nonce };
    httpsig::sign_response(
        &mut res_headers,
        &response,
        &connect,
        &server_wit,
        &server_key,
        &httpsig::SignOptions::default(),
        now,
    )
    .unwrap();
    let parsed = signatures(&res_headers).remove(0);
    let res = ResponseParts { status: 200, headers: &res_headers };
    let base = signature_base(&parsed.components, &parsed.signature_params, Some(&connect), Some(&res)).unwrap();
    assert!(base.contains("\"@authority\";req: ledger.example:443\n"), "{base}");
    httpsig::verify_response(&connect, &res, None, &server_verified, &sent.nonce, &cfg, now).unwrap();
    let elsewhere = RequestParts { authority: "ledger.example", ..connect };
    let err = httpsig::verify_response(&elsewhere, &res, None, &server_verified, &sent.nonce, &cfg, now).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::InvalidHttpSignature);
}

/// The neighbour of the CONNECT rule: an origin- or absolute-form target of an https URI still
/// drops the default port (RFC 9421 §2.2.3), so `api.example:443` and `API.example` are one
/// `@authority`, while `:8443` is another.
#[test]
fn other_methods_drop_the_default_port() {
    use base64::Engine as _;
    let now = 1_800_000_000;
    let (key, wit, verified) = workload(now);
    // The profile does not cover @authority for GET: sign it explicitly, and require it.
    let mut cfg = SignatureValidation::default();
    cfg.required_components.push("@authority".into());
    let input = format!(
        "wimse=(\"@method\" \"@authority\" \"@path\" \"@query\" \"workload-identity-token\");created={now};expires={};nonce=\"YXV0aG9yaXR5LW5vbmNl\";tag=\"wimse-workload-to-workload\";wimse-aud=\"https://api.example/x\"",
        now + 60
    );
    let mut headers = HeaderMap::new();
    headers.insert("workload-identity-token", HeaderValue::from_str(&wit).unwrap());
    let parsed = parse_signatures(&[&input], &["wimse=:AAAA:"]).unwrap().remove(0);
    let parts = RequestParts {
        method: "GET",
        scheme: "https",
        authority: "api.example:443",
        path: "/x",
        query: None,
        headers: &headers,
    };
    let base = signature_base::<HeaderMap, HeaderMap>(&parsed.components, &parsed.signature_params, Some(&parts), None)
        .unwrap();
    assert!(base.contains("\"@authority\": api.example\n"), "{base}");
    let signature = key.sign(Backend::default(), base.as_bytes()).unwrap();
    headers.insert("signature-input", HeaderValue::from_str(&input).unwrap());
    let value = format!("wimse=:{}:", base64::engine::general_purpose::STANDARD.encode(signature));
    headers.insert("signature", HeaderValue::from_str(&value).unwrap());
    let at = |authority| RequestParts {
        method: "GET",
        scheme: "https",
        authority,
        path: "/x",
        query: None,
        headers: &headers,
    };
    for same in ["api.example:443", "API.example", "api.example"] {
        httpsig::verify_request(&at(same), None, &verified, |_| true, &cfg, now)
            .unwrap_or_else(|e| panic!("{same}: {e}"));
    }
    let err = httpsig::verify_request(&at("api.example:8443"), None, &verified, |_| true, &cfg, now).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::InvalidHttpSignature);
}

/// A CONNECT signature covering `@path` is refused with its own reason.
#[test]
fn connect_covering_the_path_is_a_forbidden_component() {
    let now = 1_800_000_000;
    let (key, wit, verified) = workload(now);
    let mut headers = HeaderMap::new();
    headers.insert("workload-identity-token", HeaderValue::from_str(&wit).unwrap());
    let input = format!(
        "wimse=(\"@method\" \"@authority\" \"@path\" \"workload-identity-token\");created={now};expires={};nonce=\"bm9uY2Utbm9uY2U\";tag=\"wimse-workload-to-workload\";wimse-aud=\"db.internal\"",
        now + 60
    );
    let placeholder = "wimse=:AAAA:";
    let parsed = httpsig::parse_signatures(&[&input], &[placeholder]).unwrap().remove(0);
    let req = RequestParts {
        method: "CONNECT",
        scheme: "https",
        authority: "db.internal:5432",
        path: "/x",
        query: None,
        headers: &headers,
    };
    let base =
        httpsig::signature_base::<HeaderMap, HeaderMap>(&parsed.components, &parsed.signature_params, Some(&req), None)
            .unwrap();
    let signature = key.sign(Backend::default(), base.as_bytes()).unwrap();
    headers.insert("signature-input", HeaderValue::from_str(&input).unwrap());
    let value = format!("wimse=:{}:", {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(signature)
    });
    headers.insert("signature", HeaderValue::from_str(&value).unwrap());
    let req = RequestParts {
        method: "CONNECT",
        scheme: "https",
        authority: "db.internal:5432",
        path: "/x",
        query: None,
        headers: &headers,
    };
    let err =
        httpsig::verify_request(&req, None, &verified, |_| true, &SignatureValidation::default(), now).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::ForbiddenComponent);
    assert_eq!(err.reason(), "forbidden_component");
}

/// A workload of `spiffe://d.example` with its key, its WIT and that WIT validated.
fn workload(now: u64) -> (SigningKey, String, VerifiedWit) {
    let issuer = SigningKey::generate(Algorithm::ES256).unwrap();
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let wit =
        WitIssuer::new(issuer.clone()).issue(&"spiffe://d.example/x".parse().unwrap(), key.public_jwk(), now).unwrap();
    let trust = TrustStore::new()
        .with("spiffe://d.example".parse().unwrap(), TrustAnchors::new().key(issuer.public_key().clone()));
    let verified = validate_wit(&wit, &trust, &WitValidation::default(), now).unwrap();
    (key, wit, verified)
}

/// The response to a CONNECT may not cover the request's `@path;req` either.
#[test]
fn a_connect_response_covering_the_path_is_refused() {
    use base64::Engine as _;
    let now = 1_800_000_000;
    let (server_key, server_wit, server_verified) = workload(now);
    let mut res_headers = HeaderMap::new();
    res_headers.insert("workload-identity-token", HeaderValue::from_str(&server_wit).unwrap());
    let params = format!(
        "(\"@status\" \"@method\";req \"@authority\";req \"@path\";req \"workload-identity-token\");created={now};expires={};nonce=\"cmVzcG9uc2Utbm9uY2U\";tag=\"wimse-workload-to-workload\";wimse-req-nonce=\"cmVxdWVzdA\"",
        now + 60
    );
    let req_headers = HeaderMap::new();
    let connect = RequestParts {
        method: "CONNECT",
        scheme: "https",
        authority: "ledger.example:443",
        path: "",
        query: None,
        headers: &req_headers,
    };
    let input = format!("sig={params}");
    let parsed = parse_signatures(&[&input], &["sig=:AAAA:"]).unwrap().remove(0);
    let res = ResponseParts { status: 200, headers: &res_headers };
    let base = signature_base(&parsed.components, &parsed.signature_params, Some(&connect), Some(&res)).unwrap();
    let signature = server_key.sign(Backend::default(), base.as_bytes()).unwrap();
    res_headers.insert("signature-input", HeaderValue::from_str(&input).unwrap());
    let value = format!("sig=:{}:", base64::engine::general_purpose::STANDARD.encode(signature));
    res_headers.insert("signature", HeaderValue::from_str(&value).unwrap());
    let res = ResponseParts { status: 200, headers: &res_headers };
    let err = httpsig::verify_response(
        &connect,
        &res,
        None,
        &server_verified,
        "cmVxdWVzdA",
        &SignatureValidation::default(),
        now,
    )
    .unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::ForbiddenComponent);
}
