//! Negative tests beyond the vectors: each hostile or broken input is refused with its own kind.

use crate::common::*;
use http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};
use wimse_core::jose::b64url_encode;
use wimse_core::prelude::*;
use wimse_core::server::framing::Rejection;

fn kind(result: Result<VerifiedCaller, Error>) -> ErrorKind {
    result.expect_err("request was accepted").into_kind()
}

const WIT_HEADER: &str = r#"{"alg":"ES256","typ":"wit+jwt","kid":"k1"}"#;

#[test]
fn the_happy_path_is_accepted() {
    let f = Fixture::new();
    let caller = f.verify(&f.headers(&f.wit, &f.wpt())).unwrap();
    assert_eq!(caller.id(), &f.id);
    assert_eq!(caller.wit_issuer(), Some("https://issuer.prod.example"));
    assert_eq!(caller.key_thumbprint(), f.workload_key.public_key().thumbprint());
    assert!(matches!(caller.method(), wimse_core::server::caller::ProofMethod::Wpt { .. }));
    // The hand-built token path used below also works when nothing is wrong.
    let wit = raw_token(WIT_HEADER, &wit_claims(&f, NOW + 600, ""), &f.issuer_key);
    f.verify_wit(&wit).unwrap();
}

#[test]
fn alg_none_is_refused() {
    let f = Fixture::new();
    let claims = wit_claims(&f, NOW + 600, "");
    let none = format!("{}.{}.", b64url_encode(r#"{"alg":"none","typ":"wit+jwt"}"#), b64url_encode(&claims));
    assert_eq!(kind(f.verify_wit(&none)), ErrorKind::MalformedToken, "empty signature part");
    let none_sig = format!("{none}AAAA");
    assert_eq!(kind(f.verify_wit(&none_sig)), ErrorKind::UnsupportedAlgorithm);
    // A WPT with alg none never matches cnf.jwk.alg.
    let wpt = format!(
        "{}.{}.AAAA",
        b64url_encode(r#"{"alg":"none","typ":"wpt+jwt"}"#),
        b64url_encode(wpt_claims(&f.wit, NOW + 60, ""))
    );
    assert_eq!(kind(f.verify(&f.headers(&f.wit, &wpt))), ErrorKind::WptAlgorithmMismatch);
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new().chain_update(k.map(|b| b ^ 0x36)).chain_update(msg).finalize();
    Sha256::new().chain_update(k.map(|b| b ^ 0x5c)).chain_update(inner).finalize().to_vec()
}

#[test]
fn hs256_with_the_public_key_as_secret_is_refused() {
    let f = Fixture::new();
    let input = format!(
        "{}.{}",
        b64url_encode(r#"{"alg":"HS256","typ":"wit+jwt","kid":"k1"}"#),
        b64url_encode(wit_claims(&f, NOW + 600, ""))
    );
    for secret in [f.issuer_key.public_jwk().to_json(), f.issuer_key.public_key().thumbprint().to_owned()] {
        let token = format!("{input}.{}", b64url_encode(hmac_sha256(secret.as_bytes(), input.as_bytes())));
        assert_eq!(kind(f.verify_wit(&token)), ErrorKind::UnsupportedAlgorithm);
    }
}

/// RFC 7515 §4.1.9: `application/` may be omitted, and media types compare case-insensitively.
#[test]
fn media_type_spellings_of_typ_are_accepted() {
    let f = Fixture::new();
    let claims = wit_claims(&f, NOW + 600, "");
    for typ in ["application/wit+jwt", "APPLICATION/WIT+JWT", "Wit+Jwt", "application/WIT+jwt"] {
        let wit = raw_token(&format!(r#"{{"alg":"ES256","typ":"{typ}","kid":"k1"}}"#), &claims, &f.issuer_key);
        f.verify_wit(&wit).unwrap_or_else(|e| panic!("typ {typ}: {e}"));
    }
    for typ in ["application/wpt+jwt", "WPT+JWT", "Application/Wpt+Jwt"] {
        let wpt = raw_token(
            &format!(r#"{{"alg":"ES256","typ":"{typ}"}}"#),
            &wpt_claims(&f.wit, NOW + 60, ""),
            &f.workload_key,
        );
        f.verify(&f.headers(&f.wit, &wpt)).unwrap_or_else(|e| panic!("typ {typ}: {e}"));
    }
}

#[test]
fn wrong_and_legacy_wit_typ_values_are_refused() {
    let f = Fixture::new();
    let claims = wit_claims(&f, NOW + 600, "");
    for typ in ["JWT", "jwt", "wpt+jwt", "wimse-id+jwt", "text/wit+jwt", "application/wimse-id+jwt", "wit+jwt "] {
        let token = raw_token(&format!(r#"{{"alg":"ES256","typ":"{typ}","kid":"k1"}}"#), &claims, &f.issuer_key);
        assert_eq!(kind(f.verify_wit(&token)), ErrorKind::WitWrongType, "typ {typ}");
    }
    let untyped = raw_token(r#"{"alg":"ES256","kid":"k1"}"#, &claims, &f.issuer_key);
    assert_eq!(kind(f.verify_wit(&untyped)), ErrorKind::WitWrongType);
    let numeric = raw_token(r#"{"alg":"ES256","typ":7,"kid":"k1"}"#, &claims, &f.issuer_key);
    assert_eq!(kind(f.verify_wit(&numeric)), ErrorKind::MalformedToken);
    // A WPT presented as the WIT is refused by its typ, whoever signed it.
    assert_eq!(kind(f.verify_wit(&f.wpt())), ErrorKind::WitWrongType);
}

#[test]
fn wrong_and_legacy_wpt_typ_values_are_refused() {
    let f = Fixture::new();
    for typ in ["JWT", "wit+jwt", "wimse-proof+jwt", "application/wimse-proof+jwt", "application/wpt+jwt;v=1"] {
        let wpt = raw_token(
            &format!(r#"{{"alg":"ES256","typ":"{typ}"}}"#),
            &wpt_claims(&f.wit, NOW + 60, ""),
            &f.workload_key,
        );
        assert_eq!(kind(f.verify(&f.headers(&f.wit, &wpt))), ErrorKind::WptWrongType, "typ {typ}");
    }
    // The WIT presented as the proof.
    assert_eq!(kind(f.verify(&f.headers(&f.wit, &f.wit))), ErrorKind::WptWrongType);
}

#[test]
fn a_wit_signed_with_another_trust_domains_key_is_refused() {
    let f = Fixture::new();
    let other_issuer = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("k1");
    let mut trust = f.trust.clone();
    trust.insert("spiffe://other.example".parse().unwrap(), TrustAnchors::new().key(other_issuer.public_key().clone()));
    let verifier = Verifier::new(trust, f.config()).unwrap().clock(FixedClock::new(NOW));
    let verify = |wit: &str| {
        let wpt = WptBuilder::new(&f.workload_key, wit, &format!("{ORIGIN}{PATH}")).sign(NOW).unwrap();
        verifier.verify_sync(&RequestView::new(PATH, &f.headers(wit, &wpt)))
    };
    // other.example's issuer signs an identity in prod.example: prod.example's key does not verify it.
    let forged = WitIssuer::new(other_issuer.clone()).issue(&f.id, f.workload_key.public_jwk(), NOW).unwrap();
    assert_eq!(kind(verify(&forged)), ErrorKind::InvalidWitSignature);
    // With a kid prod.example does not have, no key is even tried.
    let forged =
        WitIssuer::new(other_issuer.clone().with_kid("k9")).issue(&f.id, f.workload_key.public_jwk(), NOW).unwrap();
    assert_eq!(kind(verify(&forged)), ErrorKind::UnknownKey);
    // Its own identities verify.
    let own = WitIssuer::new(other_issuer.clone())
        .issue(&"spiffe://other.example/x".parse().unwrap(), f.workload_key.public_jwk(), NOW)
        .unwrap();
    verify(&own).unwrap();
    // Same authority, other scheme: a different, untrusted trust domain.
    let wimse = WitIssuer::new(f.issuer_key.clone())
        .issue(&"wimse://prod.example/ns/orders".parse().unwrap(), f.workload_key.public_jwk(), NOW)
        .unwrap();
    assert_eq!(kind(verify(&wimse)), ErrorKind::UntrustedTrustDomain);
}

#[test]
fn wit_lifetime_checks() {
    let f = Fixture::new();
    let token = |claims: String| raw_token(WIT_HEADER, &claims, &f.issuer_key);
    assert_eq!(kind(f.verify_wit(&token(wit_claims(&f, NOW - 31, "")))), ErrorKind::ExpiredWit);
    // Within the 30 s leeway.
    f.verify_wit(&token(wit_claims(&f, NOW - 29, ""))).unwrap();
    assert_eq!(kind(f.verify_wit(&token(wit_claims(&f, NOW + 365 * 86400, "")))), ErrorKind::WitLifetimeTooLong);
    assert_eq!(
        kind(f.verify_wit(&token(wit_claims(&f, NOW + 600, &format!(r#","nbf":{}"#, NOW + 120))))),
        ErrorKind::WitNotYetValid
    );
    f.verify_wit(&token(wit_claims(&f, NOW + 600, &format!(r#","nbf":{}"#, NOW + 10)))).unwrap();
    let no_exp = format!(r#"{{"sub":"{}","cnf":{{"jwk":{}}}}}"#, f.id, f.workload_key.public_jwk().to_json());
    assert_eq!(kind(f.verify_wit(&token(no_exp))), ErrorKind::MissingClaim("exp"));
    let string_exp = format!(
        r#"{{"sub":"{}","exp":"{}","cnf":{{"jwk":{}}}}}"#,
        f.id,
        NOW + 60,
        f.workload_key.public_jwk().to_json()
    );
    assert_eq!(kind(f.verify_wit(&token(string_exp))), ErrorKind::MissingClaim("exp"));
}

#[test]
fn wpt_lifetime_checks() {
    let f = Fixture::new();
    let wpt = |exp: u64| raw_token(r#"{"alg":"ES256","typ":"wpt+jwt"}"#, &wpt_claims(&f.wit, exp, ""), &f.workload_key);
    assert_eq!(kind(f.verify(&f.headers(&f.wit, &wpt(NOW - 31)))), ErrorKind::ExpiredWpt);
    assert_eq!(kind(f.verify(&f.headers(&f.wit, &wpt(NOW + 3600)))), ErrorKind::WptLifetimeTooLong);
    f.verify(&f.headers(&f.wit, &wpt(NOW + 300))).unwrap();
}

#[test]
fn bad_confirmation_keys_are_refused() {
    let f = Fixture::new();
    let public = f.workload_key.public_jwk().to_json();
    let private = f.workload_key.to_private_jwk().to_json();
    let no_alg = public.replace(r#""alg":"ES256","#, "");
    let hs = public.replace(r#""alg":"ES256""#, r#""alg":"HS256""#);
    let wrong_curve = public.replace(r#""alg":"ES256""#, r#""alg":"EdDSA""#);
    let ed_key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let ed_as_es = ed_key.public_jwk().to_json().replace(r#""alg":"EdDSA""#, r#""alg":"ES256""#);
    assert_ne!(no_alg, public);
    for (label, jwk) in [
        ("private", private),
        ("no alg", no_alg),
        ("hs256", hs),
        ("alg/curve", wrong_curve),
        ("okp as es256", ed_as_es),
        ("not an object", "\"x\"".to_owned()),
    ] {
        let claims = format!(r#"{{"sub":"{}","exp":{},"cnf":{{"jwk":{jwk}}}}}"#, f.id, NOW + 600);
        let wit = raw_token(WIT_HEADER, &claims, &f.issuer_key);
        assert_eq!(kind(f.verify_wit(&wit)), ErrorKind::InvalidConfirmationKey, "{label}");
    }
    let no_cnf = raw_token(WIT_HEADER, &format!(r#"{{"sub":"{}","exp":{}}}"#, f.id, NOW + 600), &f.issuer_key);
    assert_eq!(kind(f.verify_wit(&no_cnf)), ErrorKind::InvalidConfirmationKey);
}

#[test]
fn wpt_alg_must_equal_cnf_alg() {
    let f = Fixture::new();
    let ed_key = SigningKey::generate(Algorithm::EdDSA).unwrap();
    // Signed correctly by a key of another algorithm: refused on alg before any signature work.
    let wpt = WptBuilder::new(&ed_key, &f.wit, &format!("{ORIGIN}{PATH}")).sign(NOW).unwrap();
    assert_eq!(kind(f.verify(&f.headers(&f.wit, &wpt))), ErrorKind::WptAlgorithmMismatch);
    // Same algorithm, another key: the signature check catches it.
    let other = SigningKey::generate(Algorithm::ES256).unwrap();
    let wpt = WptBuilder::new(&other, &f.wit, &format!("{ORIGIN}{PATH}")).sign(NOW).unwrap();
    assert_eq!(kind(f.verify(&f.headers(&f.wit, &wpt))), ErrorKind::InvalidWptSignature);
}

#[test]
fn wth_of_another_valid_wit_is_refused() {
    let f = Fixture::new();
    let second_wit = WitIssuer::new(f.issuer_key.clone()).issue(&f.id, f.workload_key.public_jwk(), NOW).unwrap();
    assert_ne!(second_wit, f.wit);
    let wpt_for_second = WptBuilder::new(&f.workload_key, &second_wit, &format!("{ORIGIN}{PATH}")).sign(NOW).unwrap();
    assert_eq!(kind(f.verify(&f.headers(&f.wit, &wpt_for_second))), ErrorKind::WitBindingMismatch);
}

#[test]
fn replayed_jti_is_refused_per_sender() {
    let f = Fixture::new();
    let verifier = f.verifier();
    let headers = f.headers(&f.wit, &f.wpt());
    verifier.verify_sync(&RequestView::new(PATH, &headers)).unwrap();
    assert_eq!(kind(verifier.verify_sync(&RequestView::new(PATH, &headers))), ErrorKind::ReplayedProof);
    // A fresh proof is fine.
    verifier.verify_sync(&RequestView::new(PATH, &f.headers(&f.wit, &f.wpt()))).unwrap();
    // A rejected proof does not use up its jti.
    let wpt = f.wpt();
    let bad_path = verifier.verify_sync(&RequestView::new("/elsewhere", &f.headers(&f.wit, &wpt)));
    assert_eq!(kind(bad_path), ErrorKind::AudienceMismatch);
    verifier.verify_sync(&RequestView::new(PATH, &f.headers(&f.wit, &wpt))).unwrap();
}

#[test]
fn a_full_replay_cache_fails_closed() {
    let f = Fixture::new();
    let verifier = f.verifier().replay_store(InMemoryReplayStore::new(1));
    verifier.verify_sync(&RequestView::new(PATH, &f.headers(&f.wit, &f.wpt()))).unwrap();
    let err = verifier.verify_sync(&RequestView::new(PATH, &f.headers(&f.wit, &f.wpt()))).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::ReplayCacheFull);
    assert_eq!(Rejection::from_error(&err).status(), 503);
}

#[test]
fn authorization_framing() {
    let f = Fixture::new();
    let wpt = f.wpt();
    let mut two = f.headers(&f.wit, &wpt);
    two.append("authorization", HeaderValue::from_str(&format!("WPT {wpt}")).unwrap());
    assert_eq!(kind(f.verify(&two)), ErrorKind::DuplicateAuthorization);
    let mut bearer = f.headers(&f.wit, &wpt);
    bearer.append("authorization", HeaderValue::from_static("Bearer 16_mAd0GiwaZokU26_0902100"));
    assert_eq!(kind(f.verify(&bearer)), ErrorKind::BearerWithWpt);
    let mut only_bearer = f.headers(&f.wit, &wpt);
    only_bearer.insert("authorization", HeaderValue::from_static("Bearer abc"));
    assert_eq!(kind(f.verify(&only_bearer)), ErrorKind::MissingWpt);
    let mut joined = f.headers(&f.wit, &wpt);
    joined.insert("authorization", HeaderValue::from_str(&format!("WPT {wpt}, Bearer abc")).unwrap());
    assert_eq!(kind(f.verify(&joined)), ErrorKind::MalformedAuthorization);
    let mut empty = f.headers(&f.wit, &wpt);
    empty.insert("authorization", HeaderValue::from_static("WPT"));
    assert_eq!(kind(f.verify(&empty)), ErrorKind::MalformedAuthorization);
    let mut no_auth = f.headers(&f.wit, &wpt);
    no_auth.remove("authorization");
    assert_eq!(kind(f.verify(&no_auth)), ErrorKind::MissingWpt);
    // The scheme name is case-insensitive.
    let mut lower = f.headers(&f.wit, &wpt);
    lower.insert("authorization", HeaderValue::from_str(&format!("wpt {wpt}")).unwrap());
    f.verify(&lower).unwrap();
}

#[test]
fn wit_field_framing() {
    let f = Fixture::new();
    let wpt = f.wpt();
    let mut two = f.headers(&f.wit, &wpt);
    two.append("workload-identity-token", HeaderValue::from_str(&f.wit).unwrap());
    assert_eq!(kind(f.verify(&two)), ErrorKind::DuplicateWit);
    let mut joined = f.headers(&f.wit, &wpt);
    joined.insert("workload-identity-token", HeaderValue::from_str(&format!("{},{}", f.wit, f.wit)).unwrap());
    assert_eq!(kind(f.verify(&joined)), ErrorKind::DuplicateWit);
    let mut none = f.headers(&f.wit, &wpt);
    none.remove("workload-identity-token");
    assert_eq!(kind(f.verify(&none)), ErrorKind::MissingWit);
    let mut binary = f.headers(&f.wit, &wpt);
    binary.insert("workload-identity-token", HeaderValue::from_bytes(b"\xffabc").unwrap());
    assert_eq!(kind(f.verify(&binary)), ErrorKind::InvalidHeaderValue);
}

#[test]
fn oversized_and_non_base64url_tokens_are_refused() {
    let f = Fixture::new();
    let huge = format!("{}.{}.{}", "e".repeat(4000), "e".repeat(4000), "A".repeat(1000));
    assert_eq!(kind(f.verify(&f.headers(&huge, &f.wpt()))), ErrorKind::OversizedToken);
    assert_eq!(kind(f.verify(&f.headers(&f.wit, &huge))), ErrorKind::OversizedToken);
    let one_mib = "A".repeat(1 << 20);
    assert_eq!(kind(f.verify(&f.headers(&one_mib, &f.wpt()))), ErrorKind::OversizedToken);
    for bad in ["abc", "a.b.c", "e30.e30.e30=", "e30.e30.+/+/", "e30..AA", "e30.e30.AA.AA", "%7B.e30.AA"] {
        assert_eq!(kind(f.verify_wit(bad)), ErrorKind::MalformedToken, "WIT {bad}");
        assert_eq!(kind(f.verify(&f.headers(&f.wit, bad))), ErrorKind::MalformedToken, "WPT {bad}");
    }
    // Padding on a real token.
    let padded = format!("{}=", f.wit);
    assert_eq!(kind(f.verify_wit(&padded)), ErrorKind::MalformedToken);
}

#[test]
fn duplicate_json_members_are_refused() {
    let f = Fixture::new();
    let claims = wit_claims(&f, NOW + 600, r#","sub":"spiffe://prod.example/ns/admin""#);
    assert_eq!(kind(f.verify_wit(&raw_token(WIT_HEADER, &claims, &f.issuer_key))), ErrorKind::DuplicateJsonMember);
    let header = r#"{"alg":"ES256","typ":"wit+jwt","kid":"k1","typ":"wit+jwt"}"#;
    assert_eq!(
        kind(f.verify_wit(&raw_token(header, &wit_claims(&f, NOW + 600, ""), &f.issuer_key))),
        ErrorKind::DuplicateJsonMember
    );
    let wpt = raw_token(
        r#"{"alg":"ES256","typ":"wpt+jwt"}"#,
        &wpt_claims(&f.wit, NOW + 60, r#","aud":"https://evil.example/charge""#),
        &f.workload_key,
    );
    assert_eq!(kind(f.verify(&f.headers(&f.wit, &wpt))), ErrorKind::DuplicateJsonMember);
}

#[test]
fn critical_header_extensions_are_refused() {
    let f = Fixture::new();
    let header = r#"{"alg":"ES256","typ":"wit+jwt","kid":"k1","crit":["exp"]}"#;
    assert_eq!(
        kind(f.verify_wit(&raw_token(header, &wit_claims(&f, NOW + 600, ""), &f.issuer_key))),
        ErrorKind::UnsupportedCriticalHeader
    );
}

#[test]
fn key_selection_and_rotation() {
    let f = Fixture::new();
    let next = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("k2");
    let anchors = TrustAnchors::new().key(f.issuer_key.public_key().clone()).key(next.public_key().clone());
    let trust = TrustStore::new().with(f.id.trust_domain(), anchors);
    let verifier = Verifier::new(trust, f.config()).unwrap().clock(FixedClock::new(NOW));
    let verify = |wit: &str| {
        let wpt = WptBuilder::new(&f.workload_key, wit, &format!("{ORIGIN}{PATH}")).sign(NOW).unwrap();
        verifier.verify_sync(&RequestView::new(PATH, &f.headers(wit, &wpt)))
    };
    // During rotation both keys are trusted, each chosen by kid.
    verify(&f.wit).unwrap();
    verify(&WitIssuer::new(next.clone()).issue(&f.id, f.workload_key.public_jwk(), NOW).unwrap()).unwrap();
    // Without kid and two candidate keys the choice is ambiguous: refused.
    let no_kid = raw_token(r#"{"alg":"ES256","typ":"wit+jwt"}"#, &wit_claims(&f, NOW + 600, ""), &f.issuer_key);
    assert_eq!(kind(verify(&no_kid)), ErrorKind::UnknownKey);
    // Without kid and one key it is not.
    f.verify_wit(&no_kid).unwrap();
}

#[test]
fn per_trust_domain_algorithm_allowlist() {
    let f = Fixture::with_algs(Algorithm::ES384, Algorithm::ES256);
    f.verify_wit(&f.wit).unwrap();
    let trust = TrustStore::new().with(
        f.id.trust_domain(),
        TrustAnchors::new().key(f.issuer_key.public_key().clone()).with_algorithms([Algorithm::ES256]),
    );
    let verifier = Verifier::new(trust, f.config()).unwrap().clock(FixedClock::new(NOW));
    let err = verifier.verify_sync(&RequestView::new(PATH, &f.headers(&f.wit, &f.wpt()))).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::DisallowedAlgorithm);
}

#[test]
fn subject_must_be_a_strict_identifier() {
    let f = Fixture::new();
    for sub in [
        "spiffe://prod.example/ns/%6Frders",
        "spiffe://PROD.example/ns/orders",
        "spiffe://prod.example/ns/../admin",
        "spiffe://prod.example:443/ns/orders",
        "not a uri",
    ] {
        let claims = format!(
            r#"{{"sub":"{sub}","exp":{},"cnf":{{"jwk":{}}}}}"#,
            NOW + 600,
            f.workload_key.public_jwk().to_json()
        );
        let err = kind(f.verify_wit(&raw_token(WIT_HEADER, &claims, &f.issuer_key)));
        assert!(matches!(err, ErrorKind::InvalidSubject(_)), "{sub}: {err:?}");
    }
    let no_sub = raw_token(WIT_HEADER, &format!(r#"{{"exp":{}}}"#, NOW + 600), &f.issuer_key);
    assert_eq!(kind(f.verify_wit(&no_sub)), ErrorKind::MissingClaim("sub"));
}

#[test]
fn context_token_binding() {
    let f = Fixture::new();
    let config = f.config().context_token("x-ctx");
    let verifier = f.verifier_with(config);
    let aud = format!("{ORIGIN}{PATH}");
    let verify = |headers: &HeaderMap| verifier.verify_sync(&RequestView::new(PATH, headers));

    // Txn-Token present but not bound.
    let mut h = f.headers(&f.wit, &f.wpt());
    h.insert("txn-token", HeaderValue::from_static("txn"));
    assert_eq!(kind(verify(&h)), ErrorKind::TxnTokenBindingMismatch);
    // Bound and present.
    let wpt = WptBuilder::new(&f.workload_key, &f.wit, &aud)
        .txn_token("txn")
        .other_token("X-Ctx", "  ctx-value ")
        .sign(NOW)
        .unwrap();
    let mut h = f.headers(&f.wit, &wpt);
    h.insert("txn-token", HeaderValue::from_static("txn"));
    h.insert("x-ctx", HeaderValue::from_static("ctx-value"));
    let caller = verify(&h).unwrap();
    assert_eq!(caller.txn_token(), Some("txn"));
    assert_eq!(caller.context_tokens()["x-ctx"], "ctx-value");
    // A configured context token present but not covered by oth.
    let mut h = f.headers(&f.wit, &f.wpt());
    h.insert("x-ctx", HeaderValue::from_static("ctx-value"));
    assert_eq!(kind(verify(&h)), ErrorKind::OtherTokenBindingMismatch);
    // Two Txn-Token fields.
    let mut h = f.headers(&f.wit, &f.wpt());
    h.append("txn-token", HeaderValue::from_static("a"));
    h.append("txn-token", HeaderValue::from_static("b"));
    assert_eq!(kind(verify(&h)), ErrorKind::DuplicateContextToken);
    // An oth entry the service does not understand.
    let wpt = WptBuilder::new(&f.workload_key, &f.wit, &aud).other_token("x-unknown", "v").sign(NOW).unwrap();
    let mut h = f.headers(&f.wit, &wpt);
    h.insert("x-unknown", HeaderValue::from_static("v"));
    assert_eq!(kind(verify(&h)), ErrorKind::UnsupportedOtherToken);
}

#[test]
fn audience_comes_from_configuration_not_host() {
    let f = Fixture::new();
    let wpt = WptBuilder::new(&f.workload_key, &f.wit, "https://attacker.example/charge").sign(NOW).unwrap();
    let mut h = f.headers(&f.wit, &wpt);
    h.insert("host", HeaderValue::from_static("attacker.example"));
    h.insert("x-forwarded-host", HeaderValue::from_static("attacker.example"));
    assert_eq!(kind(f.verify(&h)), ErrorKind::AudienceMismatch);
    let array_aud = raw_token(
        r#"{"alg":"ES256","typ":"wpt+jwt"}"#,
        &wpt_claims(&f.wit, NOW + 60, "").replacen(
            &format!(r#""aud":"{ORIGIN}{PATH}""#),
            &format!(r#""aud":["{ORIGIN}{PATH}"]"#),
            1,
        ),
        &f.workload_key,
    );
    assert_eq!(kind(f.verify(&f.headers(&f.wit, &array_aud))), ErrorKind::MissingClaim("aud"));
}

#[test]
fn rejections_map_to_status_challenge_and_problem() {
    let f = Fixture::new();
    let err = f.verify(&f.headers(&f.wit, &f.wit)).unwrap_err();
    let rejection = Rejection::from_error(&err);
    assert_eq!(rejection.status(), 401);
    assert_eq!(rejection.challenge(), Some("WPT"));
    let response = rejection.into_response();
    assert_eq!(response.headers()["www-authenticate"], "WPT");
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(body["type"], "urn:wimse-rs:problem:wpt_wrong_type");
    assert_eq!(body["status"], 401);
    assert_eq!(body["reason"], "wpt_wrong_type");
    // The body never echoes the token.
    assert!(!String::from_utf8_lossy(response.body()).contains(&f.wit[..20]));

    let mut two = f.headers(&f.wit, &f.wpt());
    two.append("workload-identity-token", HeaderValue::from_str(&f.wit).unwrap());
    let rejection = Rejection::from_error(&f.verify(&two).unwrap_err());
    assert_eq!(rejection.status(), 400);
    assert_eq!(rejection.challenge(), None);
    assert!(!rejection.headers().contains_key("www-authenticate"));
}

#[test]
fn rsa_issuers_sign_rs256_and_ps256_wits() {
    let jwk = Jwk::from_json(&testdata("drafts/rfc9421-test-key-rsa.jwk.json")).unwrap();
    assert!(SigningKey::from_jwk(&jwk).is_err(), "an RSA key without alg is ambiguous");
    for alg in ["RS256", "PS256"] {
        let mut value: serde_json::Value =
            serde_json::from_str(&testdata("drafts/rfc9421-test-key-rsa.jwk.json")).unwrap();
        value["alg"] = alg.into();
        let issuer_key = SigningKey::from_jwk(&Jwk::from_json(&value.to_string()).unwrap()).unwrap();
        assert_eq!(issuer_key.public_key().thumbprint(), "BHj8s0GPnMEQtkaULIM-PLgEhLBbuGUQ1vMxmBWZzEo");
        let f = Fixture::new();
        let wit = WitIssuer::new(issuer_key.clone()).issue(&f.id, f.workload_key.public_jwk(), NOW).unwrap();
        let trust =
            TrustStore::new().with(f.id.trust_domain(), TrustAnchors::new().key(issuer_key.public_key().clone()));
        let verifier = Verifier::new(trust, f.config()).unwrap().clock(FixedClock::new(NOW));
        let wpt = WptBuilder::new(&f.workload_key, &wit, &format!("{ORIGIN}{PATH}")).sign(NOW).unwrap();
        verifier.verify_sync(&RequestView::new(PATH, &f.headers(&wit, &wpt))).unwrap();
    }
}

#[test]
fn tokens_cross_backends() {
    for issuer_backend in Backend::available() {
        for verifier_backend in Backend::available() {
            let f = Fixture::with_algs(Algorithm::EdDSA, Algorithm::ES384);
            let wit = WitIssuer::new(f.issuer_key.clone())
                .backend(issuer_backend)
                .issue(&f.id, f.workload_key.public_jwk(), NOW)
                .unwrap();
            let wpt = WptBuilder::new(&f.workload_key, &wit, &format!("{ORIGIN}{PATH}"))
                .backend(issuer_backend)
                .sign(NOW)
                .unwrap();
            let verifier = f.verifier_with(f.config().backend(verifier_backend));
            verifier.verify_sync(&RequestView::new(PATH, &f.headers(&wit, &wpt))).unwrap();
        }
    }
}

/// An audience mismatch says what was received and what this service accepts (in the error's
/// detail, for the logs; never the token), in both proof modes; an origin that is not
/// `scheme://authority` is refused when the verifier is built.
#[test]
fn audience_errors_explain_and_origins_are_validated() {
    use wimse_core::prelude::*;
    for bad in
        ["127.0.0.1:18083", "api.example", "https://api.example/v1", "ftp://api.example", "https://", "https://a b"]
    {
        let err = Verifier::new(TrustStore::new(), VerifierConfig::new().origin(bad)).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration, "{bad}");
        assert!(err.detail().unwrap().contains("scheme://authority"), "{bad}: {err:?}");
    }
    for good in ["https://api.example", "http://127.0.0.1:18083/", "https://[::1]:8443"] {
        Verifier::new(TrustStore::new(), VerifierConfig::new().origin(good)).unwrap();
    }

    // WPT mode: the received aud and what this service accepts.
    let f = Fixture::new();
    let verifier = f.verifier_with(f.config().audience("urn:svc:payments"));
    let wpt = WptBuilder::new(&f.workload_key, &f.wit, "https://other.example/pay").sign(NOW).unwrap();
    let err = verifier.verify_sync(&RequestView::new(PATH, &f.headers(&f.wit, &wpt))).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::AudienceMismatch);
    let detail = err.detail().unwrap();
    assert!(detail.starts_with("received aud \"https://other.example/pay\""), "{detail}");
    assert!(detail.contains("urn:svc:payments") && detail.contains(&format!("{ORIGIN}{PATH}")), "{detail}");
    assert!(!detail.contains(&f.wit[..30]) && !detail.contains(&wpt[..30]), "no token in the detail");
    // Signature mode: explained in the logs, and still a plain 400 for the caller.
    let signed = f.signed_request("GET", None, false);
    let verifier = f.verifier_with(VerifierConfig::new().origin("https://elsewhere.example"));
    let err = verifier.verify_sync(&RequestView::new(PATH, &signed).authority("payments.example")).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::AudienceMismatch);
    assert!(err.is_signature_mode());
    assert!(err.detail().unwrap().contains("https://elsewhere.example/charge"), "{err:?}");
    assert_eq!(Rejection::from_error(&err).status(), 400);
    // Worded for the mode: a signature has a wimse-aud, and no WPT.
    let message = err.to_string();
    assert!(message.contains("received wimse-aud \""), "{message}");
    assert!(!message.contains("WPT"), "a signed request has no WPT: {message}");
}
