//! Client side: credentials, credential sources and the Signer, checked by the Verifier.

use crate::common::*;
use http::{HeaderMap, HeaderValue};
use wimse_core::prelude::*;

fn credentials(f: &Fixture) -> Credentials {
    Credentials::new(f.wit.clone(), f.workload_key.clone()).unwrap()
}

fn verify(verifier: &Verifier, headers: &HeaderMap) -> Result<VerifiedCaller, Error> {
    verifier.verify_sync(&RequestView::new(PATH, headers))
}

#[test]
fn credentials_must_match_their_wit() {
    let f = Fixture::new();
    let c = credentials(&f);
    assert_eq!(c.subject(), &f.id);
    assert_eq!(c.expires_at(), NOW - 60 + 3600);
    let other = SigningKey::generate(Algorithm::ES256).unwrap();
    assert_eq!(Credentials::new(f.wit.clone(), other).unwrap_err().kind(), &ErrorKind::CredentialsUnavailable);
    assert_eq!(
        Credentials::new("not a token", f.workload_key.clone()).unwrap_err().kind(),
        &ErrorKind::CredentialsUnavailable
    );
    assert!(!format!("{c:?}").contains(&f.wit[..20]), "Debug does not print the WIT");
}

#[test]
fn static_credentials_stop_at_expiry() {
    let f = Fixture::new();
    let source = StaticCredentials::new(credentials(&f));
    assert!(source.credentials(NOW).is_ok());
    assert_eq!(source.credentials(NOW + 3600).unwrap_err().kind(), &ErrorKind::CredentialsUnavailable);
}

#[test]
fn signer_output_verifies_and_binds_context_tokens() {
    let f = Fixture::new();
    let signer =
        Signer::new(StaticCredentials::new(credentials(&f))).clock(FixedClock::new(NOW)).context_tokens(["X-Ctx"]);
    let verifier = f.verifier_with(f.config().context_token("x-ctx"));
    let mut headers = HeaderMap::new();
    headers.insert("txn-token", HeaderValue::from_static("txn-1"));
    headers.insert("x-ctx", HeaderValue::from_static("ctx-1"));
    // Inbound credentials copied by mistake are replaced, never forwarded.
    headers.insert("workload-identity-token", HeaderValue::from_static("inbound.wit.token"));
    headers.insert("authorization", HeaderValue::from_static("WPT inbound.proof.token"));
    signer.sign_headers(&mut headers, &format!("{ORIGIN}{PATH}")).unwrap();
    assert_eq!(headers.get_all("authorization").iter().count(), 1);
    assert_ne!(headers["workload-identity-token"], "inbound.wit.token");
    assert!(headers["authorization"].is_sensitive());
    let caller = verify(&verifier, &headers).unwrap();
    assert_eq!(caller.txn_token(), Some("txn-1"));
    assert_eq!(caller.context_tokens()["x-ctx"], "ctx-1");

    // Per-call extra bindings.
    let mut headers = HeaderMap::new();
    headers.insert("x-ctx", HeaderValue::from_static("ctx-2"));
    let plain = Signer::new(StaticCredentials::new(credentials(&f))).clock(FixedClock::new(NOW));
    plain.sign_headers_binding(&mut headers, &format!("{ORIGIN}{PATH}"), &["x-ctx".into()]).unwrap();
    assert_eq!(verify(&verifier, &headers).unwrap().context_tokens()["x-ctx"], "ctx-2");
}

#[test]
fn signer_refuses_what_it_cannot_sign() {
    let f = Fixture::new();
    let signer = Signer::new(StaticCredentials::new(credentials(&f))).clock(FixedClock::new(NOW));
    let mut bearer = HeaderMap::new();
    bearer.insert("authorization", HeaderValue::from_static("Bearer abc"));
    assert_eq!(signer.sign_headers(&mut bearer, "https://a/b").unwrap_err().kind(), &ErrorKind::BearerWithWpt);
    let mut two = HeaderMap::new();
    two.append("txn-token", HeaderValue::from_static("a"));
    two.append("txn-token", HeaderValue::from_static("b"));
    assert_eq!(signer.sign_headers(&mut two, "https://a/b").unwrap_err().kind(), &ErrorKind::DuplicateContextToken);
    let expired = Signer::new(StaticCredentials::new(credentials(&f))).clock(FixedClock::new(NOW + 7200));
    assert_eq!(
        expired.sign_headers(&mut HeaderMap::new(), "https://a/b").unwrap_err().kind(),
        &ErrorKind::CredentialsUnavailable
    );
}

struct Files(std::path::PathBuf);

impl Files {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wimse-core-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn write(&self, wit: &str, key: &SigningKey) {
        std::fs::write(self.0.join("wit.jwt"), wit).unwrap();
        std::fs::write(self.0.join("key.jwk"), key.to_private_jwk().to_json()).unwrap();
    }
    fn source(&self, now: u64) -> Result<FileCredentials, Error> {
        FileCredentials::new_at(self.0.join("wit.jwt"), self.0.join("key.jwk"), now)
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn file_credentials_follow_rotation_by_content() {
    let f = Fixture::new();
    let files = Files::new("rotation");
    files.write(&f.wit, &f.workload_key);
    let source = files.source(NOW).unwrap().recheck_every(30).renew_before(300);
    let first = source.credentials(NOW).unwrap();
    assert_eq!(first.wit(), f.wit);

    // The agent writes a new key and WIT atomically (same file names; mtime is not consulted).
    let new_key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let new_wit = WitIssuer::new(f.issuer_key.clone()).issue(&f.id, new_key.public_jwk(), NOW + 10).unwrap();
    let pair = Credentials::new(new_wit.clone(), new_key.clone()).unwrap();
    wimse_core::client::cred::write_credential_files(&files.0.join("wit.jwt"), &files.0.join("key.jwk"), &pair)
        .unwrap();
    // Before the recheck interval the current pair is kept.
    assert_eq!(source.credentials(NOW + 10).unwrap().wit(), f.wit);
    assert_eq!(source.credentials(NOW + 31).unwrap().wit(), new_wit);

    // A half-written rotation (new WIT, old key) is not taken.
    let newer_wit = WitIssuer::new(f.issuer_key.clone()).issue(&f.id, f.workload_key.public_jwk(), NOW + 40).unwrap();
    std::fs::write(files.0.join("wit.jwt"), &newer_wit).unwrap();
    assert_eq!(source.credentials(NOW + 62).unwrap().wit(), new_wit);
    // The agent finishes: the pair now matches.
    std::fs::write(files.0.join("key.jwk"), f.workload_key.to_private_jwk().to_json()).unwrap();
    assert_eq!(source.credentials(NOW + 93).unwrap().wit(), newer_wit);

    // Signed requests verify with whichever pair is current.
    let signer = Signer::new(source).clock(FixedClock::new(NOW + 93));
    let mut headers = HeaderMap::new();
    signer.sign_headers(&mut headers, &format!("{ORIGIN}{PATH}")).unwrap();
    let verifier = Verifier::new(f.trust.clone(), f.config()).unwrap().clock(FixedClock::new(NOW + 93));
    verify(&verifier, &headers).unwrap();
}

#[test]
fn file_credentials_expire_without_renewal() {
    let f = Fixture::new();
    let files = Files::new("expiry");
    files.write(&f.wit, &f.workload_key);
    let source = files.source(NOW).unwrap();
    let expiry = NOW - 60 + 3600;
    assert!(source.credentials(expiry - 1).is_ok());
    assert_eq!(source.credentials(expiry).unwrap_err().kind(), &ErrorKind::CredentialsUnavailable);
    // Unreadable or mismatched files at start are an error, not a silent empty source.
    std::fs::write(files.0.join("key.jwk"), SigningKey::generate(Algorithm::ES256).unwrap().to_private_jwk().to_json())
        .unwrap();
    assert_eq!(files.source(NOW).unwrap_err().kind(), &ErrorKind::CredentialsUnavailable);
    std::fs::remove_file(files.0.join("wit.jwt")).unwrap();
    assert_eq!(files.source(NOW).unwrap_err().kind(), &ErrorKind::CredentialsUnavailable);
}

#[test]
fn policies_apply_to_verified_callers() {
    let f = Fixture::new();
    let caller = f.verify(&f.headers(&f.wit, &f.wpt())).unwrap();
    let allow = Policy::named("orders").allow(Rule::trust_domain(f.id.trust_domain()));
    allow.check(&caller).unwrap();
    let deny = allow.clone().deny(Rule::from_fn(|c: &VerifiedCaller| c.txn_token().is_none()));
    let err = deny.check(&caller).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::PolicyDenied);
    assert!(err.detail().unwrap().contains("orders"));
    let rejection = wimse_core::server::framing::Rejection::from_error(&err);
    assert_eq!(rejection.status(), 403);
    assert_eq!(rejection.challenge(), None);
}

/// `FileCredentials::new` reads the files on the system clock: a WIT valid now loads, one that
/// expired an hour ago by the system clock does not.
#[test]
fn file_credentials_on_the_system_clock() {
    use wimse_core::time::{Clock as _, SystemClock};
    let f = Fixture::new();
    let files = Files::new("system-clock");
    let now = SystemClock.now();
    let expired = WitIssuer::new(f.issuer_key.clone()).issue(&f.id, f.workload_key.public_jwk(), now - 7200).unwrap();
    files.write(&expired, &f.workload_key);
    let (wit, key) = (files.0.join("wit.jwt"), files.0.join("key.jwk"));
    assert_eq!(FileCredentials::new(&wit, &key).unwrap_err().kind(), &ErrorKind::CredentialsUnavailable);
    let fresh = WitIssuer::new(f.issuer_key.clone()).issue(&f.id, f.workload_key.public_jwk(), now).unwrap();
    files.write(&fresh, &f.workload_key);
    let source = FileCredentials::new(&wit, &key).unwrap();
    assert_eq!(source.credentials(now).unwrap().wit(), fresh);
}

/// The audience rule every client adapter shares: override, then alias, then the URI, then
/// the configured origin + path for a path-only URI, else a refusal naming the fix.
#[test]
fn the_client_exchange_chooses_the_audience_in_one_order() {
    use wimse_core::client::exchange::{ClientExchange, HttpTarget};
    use wimse_core::client::sign::AudienceOverride;
    let f = Fixture::new();
    let signer = Signer::new(StaticCredentials::new(credentials(&f))).clock(FixedClock::new(NOW));
    let plain = ClientExchange::<http::Uri>::new(signer.clone());
    let none = http::Extensions::new();
    let mut overridden = http::Extensions::new();
    overridden.insert(AudienceOverride("https://named.example/x".into()));
    let (absolute, path_only): (http::Uri, http::Uri) =
        ("https://payments.example/charge?id=1".parse().unwrap(), "/pkg.Service/Call".parse().unwrap());
    let (absolute, path_only) = (
        HttpTarget { uri: &absolute, method: &http::Method::POST },
        HttpTarget { uri: &path_only, method: &http::Method::POST },
    );
    assert_eq!(plain.audience(&absolute, &none).unwrap(), "https://payments.example/charge");
    assert_eq!(plain.audience(&absolute, &overridden).unwrap(), "https://named.example/x");
    let err = plain.audience(&path_only, &none).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration);
    assert!(err.to_string().contains("origin"), "{err}");
    let aliased = plain.clone().audience_alias(|uri| (uri.path() == "/charge").then(|| "https://alias.example".into()));
    assert_eq!(aliased.audience(&absolute, &none).unwrap(), "https://alias.example");
    assert_eq!(aliased.audience(&absolute, &overridden).unwrap(), "https://named.example/x", "override first");
    let for_origin = plain.origin("http://orders.internal:50051/").unwrap();
    assert_eq!(for_origin.audience(&path_only, &none).unwrap(), "http://orders.internal:50051/pkg.Service/Call");
    assert_eq!(for_origin.audience(&absolute, &none).unwrap(), "https://payments.example/charge", "its own first");
    // The origin stands in for a path-only URI only: a target naming another host (authority
    // form, no scheme) is refused, not signed for the configured origin.
    let elsewhere: http::Uri = "other.example:443".parse().unwrap();
    let elsewhere = HttpTarget { uri: &elsewhere, method: &http::Method::CONNECT };
    assert_eq!(for_origin.audience(&elsewhere, &none).unwrap_err().kind(), &ErrorKind::InvalidConfiguration);
    // A path-only request signed with an HTTP signature covers the origin's authority.
    let mut headers = http::HeaderMap::new();
    let signing = for_origin.clone().http_signatures();
    signing.sign(&path_only, &none, &mut headers, wimse_core::client::exchange::OutgoingBody::Bytes(None)).unwrap();
    let verifier = Verifier::new(f.trust.clone(), VerifierConfig::new().origin("http://orders.internal:50051"))
        .unwrap()
        .clock(FixedClock::new(NOW));
    let view = RequestView::new("/pkg.Service/Call", &headers).method("POST").authority("orders.internal:50051");
    verifier.verify_sync(&view.body(b"")).unwrap();
    for bad in ["http://orders.internal/path", "ftp://orders.internal", "http://user@orders.internal", "orders"] {
        assert!(ClientExchange::<http::Uri>::new(signer.clone()).origin(bad).is_err(), "{bad}");
    }
}

/// When a response must be verified, one rule for every client adapter: never for a WPT
/// request; required when a signed response was asked for; checked when signed and anchors
/// were given; left alone when signed unasked and no anchors were given.
#[test]
fn the_client_exchange_says_when_a_response_must_be_verified() {
    use wimse_core::client::exchange::{ClientExchange, HttpTarget, OutgoingBody, ProofMode};
    let f = Fixture::new();
    let signer = Signer::new(StaticCredentials::new(credentials(&f))).clock(FixedClock::new(NOW));
    let uri: http::Uri = "https://payments.example/charge".parse().unwrap();
    let target = HttpTarget { uri: &uri, method: &http::Method::POST };
    let mut signed = http::HeaderMap::new();
    signed
        .insert("signature-input", r#"wimse=("@status");created=1;tag="wimse-workload-to-workload""#.parse().unwrap());
    signed.insert("signature", "wimse=:AAAA:".parse().unwrap());
    let unsigned = http::HeaderMap::new();
    let send = |exchange: &ClientExchange<http::Uri>, mode: Option<ProofMode>| {
        let mut extensions = http::Extensions::new();
        if let Some(mode) = mode {
            extensions.insert(mode);
        }
        exchange.sign(&target, &extensions, &mut http::HeaderMap::new(), OutgoingBody::Bytes(Some(b"x"))).unwrap()
    };
    // WPT: never (the response has no nonce to be bound to).
    let wpt = ClientExchange::new(signer.clone()).signed_responses(f.trust.clone());
    let sent = send(&wpt, None);
    assert!(sent.signature().is_none());
    assert!(!sent.must_verify(&signed).unwrap());
    // Signed, anchors given: a signed response is asked for and required.
    let checking = ClientExchange::new(signer.clone()).http_signatures().signed_responses(f.trust.clone());
    let sent = send(&checking, None);
    assert!(sent.signature().unwrap().sign_response);
    assert!(sent.must_verify(&signed).unwrap());
    assert_eq!(sent.must_verify(&unsigned).unwrap_err().kind(), &ErrorKind::NoWimseSignature);
    // Not asked for this request: an unsigned answer passes, a signed one is still checked.
    let sent = send(&checking, Some(ProofMode::HttpSignature { sign_response: false }));
    assert!(!sent.must_verify(&unsigned).unwrap());
    assert!(sent.must_verify(&signed).unwrap());
    // A signed response it cannot bind (its signature is garbage) fails verification.
    assert!(sent.verify(200, &signed, b"").is_err());
    // No anchors: signed unasked is left alone; asked for, nothing could check it, so the
    // request is refused before it is sent.
    let blind = ClientExchange::new(signer.clone()).http_signatures();
    assert!(!send(&blind, None).must_verify(&signed).unwrap());
    let mut asking = http::Extensions::new();
    asking.insert(ProofMode::HttpSignature { sign_response: true });
    let err = blind.sign(&target, &asking, &mut http::HeaderMap::new(), OutgoingBody::Bytes(None)).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration);
    // Anchors given either way (trust anchors or a verifier) ask for signed responses.
    let verifying = ClientExchange::new(signer.clone())
        .http_signatures()
        .response_verifier(wimse_core::client::response::ResponseVerifier::new(f.trust.clone()));
    assert!(send(&verifying, None).signature().unwrap().sign_response);
    // Its Debug names the request's fields, never their values (a Txn-Token, a cookie).
    let mut carrying = http::Extensions::new();
    carrying.insert(wimse_core::client::exchange::ContextTokens(vec![("x-ctx".into(), "ctx-secret".into())]));
    let sent = checking.sign(&target, &carrying, &mut http::HeaderMap::new(), OutgoingBody::Bytes(None)).unwrap();
    let shown = format!("{sent:?}");
    assert!(shown.contains("x-ctx") && !shown.contains("ctx-secret"), "{shown}");
    // A context token may not name a protocol field: a Txn-Token set that way would pass
    // around the forwarding rules.
    for name in ["txn-token", "Workload-Identity-Token", "authorization", "signature-input"] {
        let mut smuggling = http::Extensions::new();
        smuggling.insert(wimse_core::client::exchange::ContextTokens(vec![(name.into(), "x".into())]));
        let err = checking.sign(&target, &smuggling, &mut http::HeaderMap::new(), OutgoingBody::Bytes(None));
        assert_eq!(err.unwrap_err().kind(), &ErrorKind::InvalidConfiguration, "{name}");
    }
    // A streamed body cannot be signed: refused with the adapter's reason.
    let err = checking
        .sign(
            &target,
            &http::Extensions::new(),
            &mut http::HeaderMap::new(),
            OutgoingBody::Streamed { why: "buffer it" },
        )
        .unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration);
    assert!(err.to_string().contains("buffer it"));
}
