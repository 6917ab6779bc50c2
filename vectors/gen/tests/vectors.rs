//! The committed vectors are what the generator writes, byte for byte, and every case comes out
//! of wimse-core as it says: `valid` passes, each negative fails with exactly its reason.
//!
//! The cases are read from the committed JSON the way another implementation would read them
//! (raw HTTP text, tokens, keys as JWKs); nothing here uses the generator's internals.

use std::collections::{BTreeSet, HashMap};

use http::HeaderMap;
use serde_json::Value;
use sha2::{Digest, Sha256};
use wimse_core::client::response::ResponseVerifier;
use wimse_core::draft::HTTPSIG_TAG;
use wimse_core::jose::{Jwk, PublicKey, SigningKey, b64url_encode, jws};
use wimse_core::prelude::*;
use wimse_core::protocol::httpsig::{
    RequestParts, ResponseParts, SignatureValidation, parse_signatures, signature_base,
};
use wimse_core::protocol::txn::{TxnTokenValidation, validate};
use wimse_core::protocol::wit::{WitValidation, validate_wit};
use wimse_core::protocol::wit_svid::check_profile;
use wimse_core::raw::{RawRequest, RawResponse};

fn load(name: &str) -> Value {
    let text = std::fs::read_to_string(wimse_vectors::vectors_dir().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn str_of<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name].as_str().unwrap_or_else(|| panic!("`{name}` is not a string in {v}"))
}

fn u64_of(v: &Value, name: &str) -> u64 {
    v[name].as_u64().unwrap_or_else(|| panic!("`{name}` is not an integer"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect()
}

/// The suite's keys by name, checked against their seeds.
fn keys(suite: &Value) -> HashMap<String, (SigningKey, PublicKey)> {
    let mut out = HashMap::new();
    for key in suite["keys"].as_array().unwrap() {
        let name = str_of(key, "name");
        let private = Jwk::from_json(&key["private_jwk"].to_string()).unwrap();
        let public = Jwk::from_json(&key["public_jwk"].to_string()).unwrap();
        let seed = Sha256::digest(format!("wimse-rs vectors v1 key {name}").as_bytes());
        assert_eq!(private.d.as_deref(), Some(b64url_encode(seed).as_str()), "{name}: d is not its seed");
        let signing = SigningKey::from_jwk(&private).unwrap();
        assert_eq!(signing.public_jwk(), &public, "{name}: the public JWK is not the private one's");
        out.insert(name.to_owned(), (signing, PublicKey::from_jwk(&public).unwrap()));
    }
    out
}

/// `verifier.trust_anchors`: trust domain -> key names.
fn trust_store(suite: &Value) -> TrustStore {
    let keys = keys(suite);
    let mut store = TrustStore::new();
    for (domain, names) in suite["verifier"]["trust_anchors"].as_object().unwrap() {
        let mut anchors = TrustAnchors::new();
        for name in strings(names) {
            anchors = anchors.key(keys[name].1.clone());
        }
        store.insert(domain.parse().unwrap(), anchors);
    }
    store
}

/// Compares an outcome with `expect`.
fn check<T>(id: &str, expect: &str, outcome: Result<T, Error>) {
    match (expect, outcome) {
        ("valid", Ok(_)) => {}
        ("valid", Err(e)) => panic!("{id}: must be valid, refused: {} ({e})", e.reason()),
        (reason, Ok(_)) => panic!("{id}: must fail with {reason}, accepted"),
        (reason, Err(e)) => assert_eq!(e.reason(), reason, "{id}: {e}"),
    }
}

/// Every case of a suite, with the checks every suite shares: unique ids, reasons that exist,
/// at least one valid case and every reason in `required`.
fn cases<'a>(suite: &'a Value, required: &[ErrorKind]) -> &'a [Value] {
    let cases = suite["cases"].as_array().unwrap();
    let ids: BTreeSet<&str> = cases.iter().map(|c| str_of(c, "id")).collect();
    assert_eq!(ids.len(), cases.len(), "case ids repeat");
    let known: BTreeSet<&str> = ErrorKind::all().iter().map(ErrorKind::reason).collect();
    let expected: BTreeSet<&str> = cases.iter().map(|c| str_of(c, "expect")).collect();
    assert!(expected.contains("valid"), "no valid case");
    for reason in &expected {
        assert!(*reason == "valid" || known.contains(reason), "unknown reason {reason}");
    }
    for kind in required {
        assert!(expected.contains(kind.reason()), "no case for {}", kind.reason());
    }
    assert_eq!(str_of(suite, "format"), "wimse-rs-vectors/1");
    cases
}

/// What the request's signature base reads: `@authority` is a CONNECT's target, else `Host`.
fn request_parts<'a>(raw: &'a RawRequest, headers: &'a HeaderMap) -> RequestParts<'a, HeaderMap> {
    let connect = raw.method.eq_ignore_ascii_case("CONNECT");
    let host = raw.header("host").map(|h| std::str::from_utf8(h).unwrap()).unwrap_or_default();
    let (authority, target) = if connect { (raw.target.as_str(), "") } else { (host, raw.path()) };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    RequestParts { method: &raw.method, scheme: "https", authority, path, query, headers }
}

/// Delivers each case's request to a fresh verifier (`deliveries` times).
fn run_requests(file: &str, config: VerifierConfig, required: &[ErrorKind]) {
    let suite = load(file);
    let now = u64_of(&suite["verifier"], "now");
    let trust = trust_store(&suite);
    for case in cases(&suite, required) {
        let id = str_of(case, "id");
        let raw = RawRequest::parse(str_of(case, "request").as_bytes()).unwrap();
        let headers = raw.header_map().unwrap();
        let parts = request_parts(&raw, &headers);
        let path = if raw.method.eq_ignore_ascii_case("CONNECT") { "" } else { raw.path() };
        let view = RequestView::new(path, &headers).method(&raw.method).authority(parts.authority).body(&raw.body);
        let verifier = Verifier::new(trust.clone(), config.clone()).unwrap().clock(FixedClock::new(now));
        for _ in 1..case["deliveries"].as_u64().unwrap_or(1) {
            verifier.verify_sync(&view).unwrap_or_else(|e| panic!("{id}: an earlier delivery was refused: {e}"));
        }
        check(id, str_of(case, "expect"), verifier.verify_sync(&view));
        if str_of(case, "expect") == "valid"
            && let Some(base) = case["signature_base"].as_str()
        {
            assert_eq!(rebuilt_base(&raw, &parts), base, "{id}: the signature base");
        }
    }
}

/// The signature base of the message's WIMSE signature, rebuilt from the message alone.
fn rebuilt_base(raw: &RawRequest, request: &RequestParts<'_, HeaderMap>) -> String {
    rebuilt(&raw.headers, Some(request), None)
}

fn rebuilt(
    fields: &[(String, Vec<u8>)],
    request: Option<&RequestParts<'_, HeaderMap>>,
    response: Option<&ResponseParts<'_, HeaderMap>>,
) -> String {
    let values = |name: &str| -> Vec<&str> {
        fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| std::str::from_utf8(v).unwrap())
            .collect()
    };
    let signatures = parse_signatures(&values("signature-input"), &values("signature")).unwrap();
    let ours = signatures.iter().find(|s| s.str_param("tag").unwrap() == Some(HTTPSIG_TAG)).unwrap();
    signature_base(&ours.components, &ours.signature_params, request, response).unwrap()
}

#[test]
fn committed_files_are_what_the_generator_writes() {
    let files = wimse_vectors::files();
    assert_eq!(files, wimse_vectors::files(), "two runs of the generator differ");
    for (name, text) in &files {
        let committed = std::fs::read_to_string(wimse_vectors::vectors_dir().join(name)).unwrap_or_default();
        assert!(committed == *text, "vectors/{name} is out of date: run `cargo run -p wimse-vectors`");
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(wimse_vectors::vectors_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    on_disk.sort();
    let mut generated: Vec<String> = files.iter().map(|(name, _)| (*name).to_owned()).collect();
    generated.sort();
    assert_eq!(on_disk, generated, "vectors/ holds JSON files the generator does not write");
}

#[test]
fn the_readme_explains_every_reason_the_cases_expect() {
    let readme = std::fs::read_to_string(wimse_vectors::vectors_dir().join("README.md")).unwrap();
    for (name, _) in wimse_vectors::files() {
        for case in load(name)["cases"].as_array().unwrap() {
            let expect = str_of(case, "expect");
            assert!(expect == "valid" || readme.contains(&format!("`{expect}`")), "vectors/README.md: {expect}");
        }
    }
}

#[test]
fn wpt_suite() {
    let suite = load("wpt.json");
    let v = &suite["verifier"];
    let mut config = VerifierConfig::new()
        .only_wpt()
        .leeway(u64_of(v, "leeway"))
        .max_wit_lifetime(u64_of(v, "max_wit_lifetime"))
        .max_wpt_lifetime(u64_of(v, "max_wpt_lifetime"));
    for aud in strings(&v["audiences"]) {
        config = config.audience(aud);
    }
    for name in strings(&v["context_tokens"]) {
        config = config.context_token(name);
    }
    use ErrorKind::*;
    let required = [
        WitWrongType,
        WptWrongType,
        UnsupportedAlgorithm,
        InvalidWitSignature,
        UnknownKey,
        UntrustedTrustDomain,
        ExpiredWit,
        WitNotYetValid,
        WitLifetimeTooLong,
        InvalidConfirmationKey,
        WptAlgorithmMismatch,
        InvalidWptSignature,
        ExpiredWpt,
        WptLifetimeTooLong,
        AudienceMismatch,
        WitBindingMismatch,
        TxnTokenBindingMismatch,
        OtherTokenBindingMismatch,
        UnsupportedOtherToken,
        ReplayedProof,
    ];
    run_requests("wpt.json", config, &required);
}

#[test]
fn http_signature_request_suite() {
    let suite = load("http-signature-requests.json");
    let v = &suite["verifier"];
    assert_eq!(u64_of(v, "max_signature_lifetime"), SignatureValidation::default().max_lifetime);
    let mut config = VerifierConfig::new()
        .only_http_signatures()
        .leeway(u64_of(v, "leeway"))
        .max_wit_lifetime(u64_of(v, "max_wit_lifetime"))
        .max_signature_age(u64_of(v, "max_signature_age"));
    for aud in strings(&v["audiences"]) {
        config = config.audience(aud);
    }
    use ErrorKind::*;
    let required = [
        ForbiddenSignatureParameter,
        MissingSignatureParameter,
        SignatureWrongTag,
        NoWimseSignature,
        AmbiguousWimseSignature,
        MissingCoveredComponent,
        ForbiddenComponent,
        InvalidHttpSignature,
        ContentDigestMismatch,
        AudienceMismatch,
        SignatureCreatedInFuture,
        SignatureExpired,
        SignatureLifetimeTooLong,
        ReplayedProof,
    ];
    run_requests("http-signature-requests.json", config, &required);
}

#[test]
fn http_signature_response_suite() {
    let suite = load("http-signature-responses.json");
    let v = &suite["verifier"];
    let defaults = (WitValidation::default(), SignatureValidation::default());
    assert_eq!(
        (u64_of(v, "leeway"), u64_of(v, "max_wit_lifetime"), u64_of(v, "max_signature_age")),
        (defaults.1.leeway, defaults.0.max_lifetime, defaults.1.max_age),
        "the response verifier runs with the defaults"
    );
    let now = u64_of(v, "now");
    let trust = trust_store(&suite);
    let expected: WorkloadId = str_of(v, "expected_server").parse().unwrap();
    use ErrorKind::*;
    let required = [
        RequestNonceMismatch,
        MissingSignatureParameter,
        ForbiddenSignatureParameter,
        MissingCoveredComponent,
        InvalidHttpSignature,
        ContentDigestMismatch,
        UnexpectedPeer,
    ];
    for case in cases(&suite, &required) {
        let id = str_of(case, "id");
        let request = RawRequest::parse(str_of(case, "request").as_bytes()).unwrap();
        let response = RawResponse::parse(str_of(case, "response").as_bytes()).unwrap();
        let (req_headers, res_headers) = (request.header_map().unwrap(), response.header_map().unwrap());
        let req = request_parts(&request, &req_headers);
        let res = ResponseParts { status: response.status, headers: &res_headers };
        let verifier = ResponseVerifier::new(trust.clone()).clock(FixedClock::new(now));
        let nonce = str_of(case, "request_nonce");
        check(id, str_of(case, "expect"), verifier.verify(&req, &res, &response.body, nonce, Some(&expected)));
        if str_of(case, "expect") == "valid" {
            let base = rebuilt(&response.headers, Some(&req), Some(&res));
            assert_eq!(base, str_of(case, "signature_base"), "{id}: the signature base");
        }
    }
}

#[test]
fn txn_token_suite() {
    let suite = load("txn-token.json");
    let v = &suite["verifier"];
    let keys = keys(&suite);
    let domain: TrustDomain = str_of(v, "trust_domain").parse().unwrap();
    let mut anchors = TrustAnchors::new();
    for name in strings(&v["tts_keys"]) {
        anchors = anchors.key(keys[name].1.clone());
    }
    let store = TrustStore::new().with(domain.clone(), anchors);
    let cfg = TxnTokenValidation::new(domain)
        .audience(str_of(v, "audience"))
        .leeway(u64_of(v, "leeway"))
        .max_lifetime(u64_of(v, "max_lifetime"));
    use ErrorKind::*;
    let required = [
        TxnTokenWrongType,
        TxnTokenAudienceMismatch,
        ExpiredTxnToken,
        TxnTokenNotYetValid,
        TxnTokenMalformed,
        TxnTokenLifetimeTooLong,
        TxnTokenUnknownKey,
        InvalidTxnTokenSignature,
        TxnTokenMissingClaim("aud"),
    ];
    for case in cases(&suite, &required) {
        let id = str_of(case, "id");
        let token = str_of(case, "token");
        assert_decoded(case, token);
        check(id, str_of(case, "expect"), validate(token, &store, &cfg, u64_of(v, "now")));
    }
}

#[test]
fn wit_svid_suite() {
    let suite = load("wit-svid.json");
    let v = &suite["verifier"];
    assert_eq!(strings(&v["profile_algorithms"]), wimse_core::protocol::wit_svid::ALGORITHMS);
    let anchors = TrustAnchors::from_spiffe_bundle_json(&v["bundle"].to_string()).unwrap();
    let store = TrustStore::new().with(str_of(v, "trust_domain").parse().unwrap(), anchors);
    let mut validation = WitValidation::default();
    validation.leeway = u64_of(v, "leeway");
    validation.max_lifetime = u64_of(v, "max_wit_lifetime");
    use ErrorKind::*;
    let required = [MissingKeyId, ForbiddenClaim("aud"), DisallowedAlgorithm, InvalidConfirmationKey, UnknownKey];
    for case in cases(&suite, &required) {
        let id = str_of(case, "id");
        let token = str_of(case, "token");
        assert_decoded(case, token);
        let profile = check_profile(&jws::parse(token, validation.max_token_len).unwrap());
        let generic = validate_wit(token, &store, &validation, u64_of(v, "now"));
        let expect = str_of(case, "expect");
        // Whichever step runs first, a negative fails for its one reason.
        for step in [profile.clone().err(), generic.as_ref().err().cloned()].into_iter().flatten() {
            assert_eq!(step.reason(), expect, "{id}: {step}");
        }
        check(id, expect, profile.and(generic));
    }
}

/// `header` and `claims` are the token's own.
fn assert_decoded(case: &Value, token: &str) {
    let parsed = jws::parse(token, 1 << 16).unwrap();
    assert_eq!(Value::Object(parsed.header), case["header"], "{}: header", str_of(case, "id"));
    assert_eq!(Value::Object(parsed.claims), case["claims"], "{}: claims", str_of(case, "id"));
}
