//! "Validating the WIT" (draft-ietf-wimse-workload-creds, next revision on the WG's main branch;
//! the WPT and HTTP-signature drafts reference it): one test per MUST of the list (signature,
//! `typ`, `sub`, `exp`, `cnf`), plus the MUSTs around it in the current text (§3 trust anchors
//! never from the token, §5.1.2 unknown claims ignored, §9.2 never a bearer token). Each test
//! names the MUST and checks the exact reason of every refusal, and that the valid neighbour
//! passes.

use crate::common::*;
use wimse_core::prelude::*;
use wimse_core::protocol::wit::{WitValidation, validate_wit};

fn check(f: &Fixture, wit: &str) -> Result<(), ErrorKind> {
    validate_wit(wit, &f.trust, &WitValidation::default(), NOW).map(|_| ()).map_err(Error::into_kind)
}

const HEADER: &str = r#"{"alg":"ES256","typ":"wit+jwt","kid":"k1"}"#;

/// MUST: the JWS signature verifies with a key of the trust anchors configured for the trust
/// domain of `sub` (never with key material carried in the token: `jwk`, `jku`, `x5c` in the
/// header, or a key found through `iss`).
#[test]
fn signature_must_verify_with_the_anchors_of_the_sub_trust_domain() {
    let f = Fixture::new();
    let claims = wit_claims(&f, NOW + 600, "");
    assert_eq!(check(&f, &raw_token(HEADER, &claims, &f.issuer_key)), Ok(()));
    let stranger = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("k1");
    assert_eq!(check(&f, &raw_token(HEADER, &claims, &stranger)), Err(ErrorKind::InvalidWitSignature));
    // The stranger names its own key in the header: it is not looked at.
    let embedded = format!(
        r#"{{"alg":"ES256","typ":"wit+jwt","kid":"k1","jwk":{},"jku":"https://evil.example/jwks"}}"#,
        stranger.public_jwk().to_json()
    );
    assert_eq!(check(&f, &raw_token(&embedded, &claims, &stranger)), Err(ErrorKind::InvalidWitSignature));
    // `iss` naming another issuer changes nothing: the anchors are those of `sub`'s domain.
    let iss = wit_claims(&f, NOW + 600, r#","iss":"https://evil.example""#);
    assert_eq!(check(&f, &raw_token(HEADER, &iss, &stranger)), Err(ErrorKind::InvalidWitSignature));
    assert_eq!(check(&f, &raw_token(HEADER, &iss, &f.issuer_key)), Ok(()));
    // `alg` none (an unsecured JWS cannot even be written in the WIT's ABNF), or a symmetric
    // algorithm, is never accepted.
    let none = format!(
        "{}.{}.",
        wimse_core::jose::b64url_encode(r#"{"alg":"none","typ":"wit+jwt"}"#),
        wimse_core::jose::b64url_encode(&claims)
    );
    assert_eq!(check(&f, &none), Err(ErrorKind::MalformedToken));
    for alg in ["none", "HS256"] {
        let header = format!(r#"{{"alg":"{alg}","typ":"wit+jwt","kid":"k1"}}"#);
        assert_eq!(
            check(&f, &raw_token(&header, &claims, &f.issuer_key)),
            Err(ErrorKind::UnsupportedAlgorithm),
            "{alg}"
        );
    }
}

/// MUST: the WIT is explicitly typed `wit+jwt` (RFC 8725 §3.11; `application/wit+jwt` and any
/// case are the same media type).
#[test]
fn typ_must_be_wit_jwt() {
    let f = Fixture::new();
    let claims = wit_claims(&f, NOW + 600, "");
    for typ in ["wit+jwt", "application/wit+jwt", "WIT+JWT"] {
        let header = format!(r#"{{"alg":"ES256","typ":"{typ}","kid":"k1"}}"#);
        assert_eq!(check(&f, &raw_token(&header, &claims, &f.issuer_key)), Ok(()), "{typ}");
    }
    for typ in [r#""typ":"wpt+jwt","#, r#""typ":"JWT","#, r#""typ":"wimse-id+jwt","#, ""] {
        let header = format!(r#"{{"alg":"ES256",{typ}"kid":"k1"}}"#);
        assert_eq!(check(&f, &raw_token(&header, &claims, &f.issuer_key)), Err(ErrorKind::WitWrongType), "{typ}");
    }
}

/// MUST: `sub` is a single Workload Identifier that satisfies the identifier draft's rules, in a
/// trust domain this verifier has anchors for.
#[test]
fn sub_must_be_one_valid_workload_identifier_of_a_trusted_domain() {
    let f = Fixture::new();
    let jwk = f.workload_key.public_jwk().to_json();
    let with_sub = |sub: &str| {
        raw_token(HEADER, &format!(r#"{{"sub":{sub},"exp":{},"cnf":{{"jwk":{jwk}}}}}"#, NOW + 600), &f.issuer_key)
    };
    assert_eq!(check(&f, &with_sub(r#""spiffe://prod.example/ns/orders""#)), Ok(()));
    assert!(matches!(
        check(&f, &with_sub(r#""spiffe://prod.example/ns/../admin""#)),
        Err(ErrorKind::InvalidSubject(_))
    ));
    assert!(matches!(check(&f, &with_sub(r#""spiffe://PROD.example/ns/orders""#)), Err(ErrorKind::InvalidSubject(_))));
    assert_eq!(
        check(&f, &with_sub(r#"["spiffe://prod.example/a","spiffe://prod.example/b"]"#)),
        Err(ErrorKind::MissingClaim("sub"))
    );
    assert_eq!(check(&f, &with_sub(r#""spiffe://other.example/ns/orders""#)), Err(ErrorKind::UntrustedTrustDomain));
}

/// MUST: a limited lifetime expressed by `exp`: present, not passed (beyond the bounded leeway),
/// not further away than the configured maximum lifetime.
#[test]
fn exp_must_be_present_and_not_passed() {
    let f = Fixture::new();
    let sign = |claims: String| raw_token(HEADER, &claims, &f.issuer_key);
    let jwk = f.workload_key.public_jwk().to_json();
    assert_eq!(
        check(&f, &sign(format!(r#"{{"sub":"{}","cnf":{{"jwk":{jwk}}}}}"#, f.id))),
        Err(ErrorKind::MissingClaim("exp"))
    );
    assert_eq!(check(&f, &sign(wit_claims(&f, NOW - 31, ""))), Err(ErrorKind::ExpiredWit), "past the 30 s leeway");
    assert_eq!(check(&f, &sign(wit_claims(&f, NOW - 29, ""))), Ok(()), "within the leeway");
    assert_eq!(check(&f, &sign(wit_claims(&f, NOW + 25 * 3600, ""))), Err(ErrorKind::WitLifetimeTooLong));
}

/// MUST: `cnf.jwk` holds the workload's public key with an `alg`; no private key, no `none`,
/// no symmetric or encryption algorithm, and the `alg` fits the key.
#[test]
fn cnf_must_hold_a_public_key_with_an_asymmetric_alg() {
    let f = Fixture::new();
    let sign = |cnf: &str| {
        raw_token(HEADER, &format!(r#"{{"sub":"{}","exp":{},"cnf":{cnf}}}"#, f.id, NOW + 600), &f.issuer_key)
    };
    let jwk = f.workload_key.public_jwk();
    assert_eq!(check(&f, &sign(&format!(r#"{{"jwk":{}}}"#, jwk.to_json()))), Ok(()));
    let json: serde_json::Value = serde_json::from_str(&jwk.to_json()).unwrap();
    let with = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut value = json.clone();
        change(&mut value);
        sign(&format!(r#"{{"jwk":{value}}}"#))
    };
    assert_eq!(check(&f, &sign("{}")), Err(ErrorKind::InvalidConfirmationKey), "no jwk");
    assert_eq!(
        check(
            &f,
            &with(&|v| {
                v.as_object_mut().unwrap().remove("alg");
            })
        ),
        Err(ErrorKind::InvalidConfirmationKey)
    );
    assert_eq!(check(&f, &with(&|v| v["alg"] = "none".into())), Err(ErrorKind::InvalidConfirmationKey));
    assert_eq!(check(&f, &with(&|v| v["alg"] = "HS256".into())), Err(ErrorKind::InvalidConfirmationKey));
    assert_eq!(check(&f, &with(&|v| v["alg"] = "RSA-OAEP".into())), Err(ErrorKind::InvalidConfirmationKey));
    assert_eq!(
        check(&f, &with(&|v| v["alg"] = "EdDSA".into())),
        Err(ErrorKind::InvalidConfirmationKey),
        "alg does not fit a P-256 key"
    );
    assert_eq!(check(&f, &with(&|v| v["d"] = "AAAA".into())), Err(ErrorKind::InvalidConfirmationKey), "a private key");
}

/// §5.1.2 MUST: claims a recipient does not understand are ignored.
#[test]
fn unknown_claims_must_be_ignored() {
    let f = Fixture::new();
    let claims = wit_claims(&f, NOW + 600, r#","x-team":"payments","nested":{"a":[1,2,{"b":null}]}"#);
    assert_eq!(check(&f, &raw_token(HEADER, &claims, &f.issuer_key)), Ok(()));
}

/// §9.2 MUST NOT: a WIT is never a bearer token: a request with a valid WIT and no proof is
/// refused, and a bearer token beside a WPT is refused.
#[test]
fn a_wit_must_not_be_a_bearer_token() {
    let f = Fixture::new();
    let mut headers = f.headers(&f.wit, &f.wpt());
    headers.remove("authorization");
    assert_eq!(f.verify(&headers).unwrap_err().into_kind(), ErrorKind::MissingWpt);
    headers.insert("authorization", format!("Bearer {}", f.wit).parse().unwrap());
    assert_eq!(f.verify(&headers).unwrap_err().into_kind(), ErrorKind::MissingWpt);
    let mut both = f.headers(&f.wit, &f.wpt());
    both.append("authorization", format!("Bearer {}", f.wit).parse().unwrap());
    assert_eq!(f.verify(&both).unwrap_err().into_kind(), ErrorKind::BearerWithWpt);
}
