//! Transaction Tokens at a verifier: each validation rule refused with its own kind, the `tth`
//! binding and the token's own validity checked independently, policies over the transaction.

use crate::common::*;
use http::{HeaderMap, HeaderValue};
use serde_json::json;
use wimse_core::prelude::*;
use wimse_core::protocol::txn::{NewTxnToken, TxnTokenIssuer, TxnTokenValidation, VerifiedTxnToken, validate};
use wimse_core::server::framing::Rejection;

const FRONT: &str = "spiffe://prod.example/front";

fn domain() -> TrustDomain {
    "spiffe://prod.example".parse().unwrap()
}

/// The TTS of prod.example: here the identity server's key (the fixture's WIT issuer).
fn tts(f: &Fixture) -> TxnTokenIssuer {
    TxnTokenIssuer::new(f.issuer_key.clone(), &domain()).issuer("https://issuer.prod.example")
}

fn txn_token(f: &Fixture) -> String {
    tts(f).issue(&NewTxnToken::new("user-1842", "orders.purchase orders.read").requested_by(FRONT), NOW - 5).unwrap()
}

fn verifier(f: &Fixture, validation: TxnTokenValidation) -> Verifier {
    f.verifier_with(f.config().txn_tokens(validation))
}

/// A request with a fresh WPT binding `txn` (by `tth`).
fn request(f: &Fixture, txn: &str) -> HeaderMap {
    let wpt = WptBuilder::new(&f.workload_key, &f.wit, &format!("{ORIGIN}{PATH}")).txn_token(txn).sign(NOW).unwrap();
    let mut headers = f.headers(&f.wit, &wpt);
    headers.insert("txn-token", HeaderValue::from_str(txn).unwrap());
    headers
}

fn refused(verifier: &Verifier, headers: &HeaderMap) -> ErrorKind {
    verifier.verify_sync(&RequestView::new(PATH, headers)).expect_err("accepted").into_kind()
}

/// Signs claims with the fixture's TTS key under the given header (tokens the issuer never makes).
fn forged(f: &Fixture, header: &str, claims: serde_json::Value) -> String {
    raw_token(header, &claims.to_string(), &f.issuer_key)
}

const TXN_HEADER: &str = r#"{"alg":"ES256","typ":"txntoken+jwt","kid":"k1"}"#;

fn claims() -> serde_json::Value {
    json!({"aud": "spiffe://prod.example", "iat": NOW - 5, "exp": NOW + 120, "txn": "t-1",
           "sub": "user-1842", "scope": "orders.purchase", "req_wl": FRONT})
}

#[test]
fn a_valid_txn_token_is_exposed_on_the_caller() {
    let f = Fixture::new();
    let token = txn_token(&f);
    let caller = verifier(&f, TxnTokenValidation::new(domain()))
        .verify_sync(&RequestView::new(PATH, &request(&f, &token)))
        .unwrap();
    let txn = caller.transaction().expect("transaction");
    assert_eq!(txn.subject(), "user-1842");
    assert!(txn.has_scope("orders.purchase") && txn.has_scope("orders.read") && !txn.has_scope("orders"));
    assert_eq!(txn.requesting_workloads(), [FRONT.to_owned()]);
    assert_eq!(txn.issuer(), Some("https://issuer.prod.example"));
    assert_eq!(txn.expires_at(), NOW - 5 + 300);
    assert_eq!(caller.txn_token(), Some(token.as_str()), "the raw token, to forward unchanged");
    // Without a Txn-Token configuration the binding is still checked but nothing is validated.
    let caller = f.verifier().verify_sync(&RequestView::new(PATH, &request(&f, "not-even-a-jwt"))).unwrap();
    assert!(caller.transaction().is_none());
}

#[test]
fn required_or_optional() {
    let f = Fixture::new();
    let plain = f.headers(&f.wit, &f.wpt());
    let optional = verifier(&f, TxnTokenValidation::new(domain()));
    assert!(optional.verify_sync(&RequestView::new(PATH, &plain)).unwrap().transaction().is_none());
    let required = verifier(&f, TxnTokenValidation::new(domain()).required());
    let kind = refused(&required, &plain);
    assert_eq!(kind, ErrorKind::MissingTxnToken);
    assert_eq!(Rejection::from_error(&kind.into()).status(), 403);
    // Where optional, an invalid one is still refused.
    assert_eq!(refused(&optional, &request(&f, "garbage")), ErrorKind::TxnTokenMalformed);
}

#[test]
fn each_validation_rule_has_its_own_refusal() {
    let f = Fixture::new();
    let v = verifier(&f, TxnTokenValidation::new(domain()));
    let check = |token: &str| refused(&v, &request(&f, token));
    let with = |patch: serde_json::Value| {
        let mut c = claims();
        for (k, val) in patch.as_object().unwrap() {
            if val.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = val.clone();
            }
        }
        forged(&f, TXN_HEADER, c)
    };
    // The hand-built path is accepted when nothing is wrong.
    assert!(v.verify_sync(&RequestView::new(PATH, &request(&f, &with(json!({}))))).is_ok());

    assert_eq!(check(&"a".repeat(9000)), ErrorKind::OversizedToken);
    assert_eq!(check("a.b"), ErrorKind::TxnTokenMalformed);
    let no_alg = format!("{}.e30.AAAA", wimse_core::jose::b64url_encode(r#"{"typ":"txntoken+jwt"}"#));
    assert_eq!(check(&no_alg), ErrorKind::TxnTokenMalformed, "no alg");
    let hs256 = format!("{}.e30.AAAA", wimse_core::jose::b64url_encode(r#"{"typ":"txntoken+jwt","alg":"HS256"}"#));
    assert_eq!(check(&hs256), ErrorKind::TxnTokenMalformed, "symmetric alg");
    let wrong_typ = raw_token(r#"{"alg":"ES256","typ":"wit+jwt","kid":"k1"}"#, &claims().to_string(), &f.issuer_key);
    assert_eq!(check(&wrong_typ), ErrorKind::TxnTokenWrongType);
    let no_typ = raw_token(r#"{"alg":"ES256","kid":"k1"}"#, &claims().to_string(), &f.issuer_key);
    assert_eq!(check(&no_typ), ErrorKind::TxnTokenWrongType);
    let crit = raw_token(
        r#"{"alg":"ES256","typ":"txntoken+jwt","kid":"k1","crit":["x"],"x":1}"#,
        &claims().to_string(),
        &f.issuer_key,
    );
    assert_eq!(check(&crit), ErrorKind::TxnTokenMalformed);
    // Minted by a workload (its own key, a valid tth binding): no TTS key matches.
    let by_workload = raw_token(TXN_HEADER, &claims().to_string(), &f.workload_key);
    assert_eq!(
        check(&by_workload),
        ErrorKind::InvalidTxnTokenSignature,
        "kid k1 names the TTS key; the signature is not its"
    );
    let workload_kid =
        raw_token(r#"{"alg":"ES256","typ":"txntoken+jwt","kid":"mine"}"#, &claims().to_string(), &f.workload_key);
    assert_eq!(check(&workload_kid), ErrorKind::TxnTokenUnknownKey);
    let mut tampered = with(json!({})).split('.').map(str::to_owned).collect::<Vec<_>>();
    tampered[1] = wimse_core::jose::b64url_encode(claims().to_string().replace("orders.purchase", "orders.refund"));
    assert_eq!(check(&tampered.join(".")), ErrorKind::InvalidTxnTokenSignature);

    assert_eq!(check(&with(json!({"aud": "spiffe://partner.example"}))), ErrorKind::TxnTokenAudienceMismatch);
    assert_eq!(
        check(&with(json!({"aud": ["spiffe://prod.example", "spiffe://partner.example"]}))),
        ErrorKind::TxnTokenAudienceMismatch
    );
    assert_eq!(check(&with(json!({"aud": 7}))), ErrorKind::TxnTokenAudienceMismatch);
    assert_eq!(check(&with(json!({"exp": NOW - 31}))), ErrorKind::ExpiredTxnToken);
    assert_eq!(check(&with(json!({"iat": NOW + 31, "exp": NOW + 100}))), ErrorKind::TxnTokenNotYetValid);
    assert_eq!(check(&with(json!({"iat": NOW - 5, "exp": NOW + 3600}))), ErrorKind::TxnTokenLifetimeTooLong);
    assert_eq!(check(&with(json!({"iat": NOW - 700, "exp": NOW + 10}))), ErrorKind::TxnTokenLifetimeTooLong);
    // `nbf` in the future (beyond the 30 s leeway) is refused like a future `iat`; at the edge
    // of the leeway, and in the past, it is accepted; a non-numeric one is malformed.
    let accepted = |token: &str| v.verify_sync(&RequestView::new(PATH, &request(&f, token))).map(|_| ());
    assert_eq!(check(&with(json!({"nbf": NOW + 31}))), ErrorKind::TxnTokenNotYetValid);
    assert_eq!(check(&with(json!({"nbf": NOW + 3600}))), ErrorKind::TxnTokenNotYetValid);
    assert_eq!(accepted(&with(json!({"nbf": NOW + 30}))), Ok(()));
    assert_eq!(accepted(&with(json!({"nbf": NOW - 5}))), Ok(()));
    assert_eq!(check(&with(json!({"nbf": "soon"}))), ErrorKind::TxnTokenMissingClaim("nbf"));
    // `exp` not after `iat` (both within the validity window, so no other check refuses it).
    let not_after_iat = |iat: u64, exp: u64| {
        let error = v.verify_sync(&RequestView::new(PATH, &request(&f, &with(json!({"iat": iat, "exp": exp})))));
        let error = error.expect_err("accepted");
        (error.kind().clone(), error.detail().map(str::to_owned))
    };
    let malformed = (ErrorKind::TxnTokenMalformed, Some("exp is not after iat".to_owned()));
    assert_eq!(not_after_iat(NOW + 10, NOW + 10), malformed, "exp == iat");
    assert_eq!(not_after_iat(NOW + 10, NOW + 5), malformed, "exp < iat");
    assert_eq!(accepted(&with(json!({"iat": NOW + 10, "exp": NOW + 11}))), Ok(()), "exp one second after iat");
    for claim in ["aud", "iat", "exp", "txn", "sub", "scope", "req_wl"] {
        assert_eq!(check(&with(json!({claim: null}))), ErrorKind::TxnTokenMissingClaim(claim), "{claim}");
    }
    assert_eq!(check(&with(json!({"txn": 5}))), ErrorKind::TxnTokenMissingClaim("txn"));
    assert_eq!(check(&with(json!({"scope": ""}))), ErrorKind::TxnTokenMissingClaim("scope"));
    assert_eq!(check(&with(json!({"req_wl": [FRONT]}))), ErrorKind::TxnTokenMissingClaim("req_wl"), "-10: one string");
    assert_eq!(check(&with(json!({"req_wl_chain": [FRONT, 3]}))), ErrorKind::TxnTokenMissingClaim("req_wl_chain"));
    // Claims the draft does not define are ignored (-10 §9.2).
    assert!(v.verify_sync(&RequestView::new(PATH, &request(&f, &with(json!({"x-extra": {"a": 1}}))))).is_ok());
    assert_eq!(check(&with(json!({"tctx": "x"}))), ErrorKind::TxnTokenMissingClaim("tctx"));
    assert_eq!(check(&with(json!({"rctx": []}))), ErrorKind::TxnTokenMissingClaim("rctx"));
    // Every one of them is a 400 that names its check.
    let rejection = Rejection::from_error(&ErrorKind::TxnTokenAudienceMismatch.into());
    assert_eq!((rejection.status().as_u16(), rejection.problem().reason), (400, Some("txn_token_audience_mismatch")));
}

#[test]
fn binding_and_validity_are_checked_independently() {
    let f = Fixture::new();
    let v = verifier(&f, TxnTokenValidation::new(domain()));
    let valid = txn_token(&f);
    // A valid Txn-Token replayed under a proof that bound another token: the binding fails.
    let wpt = WptBuilder::new(&f.workload_key, &f.wit, &format!("{ORIGIN}{PATH}"))
        .txn_token("another-token")
        .sign(NOW)
        .unwrap();
    let mut headers = f.headers(&f.wit, &wpt);
    headers.insert("txn-token", HeaderValue::from_str(&valid).unwrap());
    assert_eq!(refused(&v, &headers), ErrorKind::TxnTokenBindingMismatch);
    // A proof without tth beside a valid token: refused for the binding too.
    let mut headers = f.headers(&f.wit, &f.wpt());
    headers.insert("txn-token", HeaderValue::from_str(&valid).unwrap());
    assert_eq!(refused(&v, &headers), ErrorKind::TxnTokenBindingMismatch);
    // A correct binding of an invalid token: refused for the token.
    let expired = tts(&f).issue(&NewTxnToken::new("u", "s").requested_by(FRONT), NOW - 400).unwrap();
    assert_eq!(refused(&v, &request(&f, &expired)), ErrorKind::ExpiredTxnToken);
    // Duplicate fields are framing errors.
    let mut headers = request(&f, &valid);
    headers.append("txn-token", HeaderValue::from_str(&valid).unwrap());
    assert_eq!(refused(&v, &headers), ErrorKind::DuplicateContextToken);
}

#[test]
fn signed_requests_name_the_txn_check_too() {
    let f = Fixture::new();
    let v = verifier(&f, TxnTokenValidation::new(domain()));
    let sign = |txn: &str| {
        let mut headers = HeaderMap::new();
        headers.insert("txn-token", HeaderValue::from_str(txn).unwrap());
        f.sign_headers(headers, "POST", None, false)
    };
    let ok = v.verify_sync(&RequestView::new(PATH, &sign(&txn_token(&f))).method("POST").body(b"")).unwrap();
    assert_eq!(ok.transaction().unwrap().subject(), "user-1842");
    let foreign = forged(
        &f,
        TXN_HEADER,
        json!({"aud": "spiffe://partner.example", "iat": NOW, "exp": NOW + 60,
        "txn": "t", "sub": "u", "scope": "s", "req_wl": FRONT}),
    );
    let error = v.verify_sync(&RequestView::new(PATH, &sign(&foreign)).method("POST").body(b"")).unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::TxnTokenAudienceMismatch);
    assert_eq!(Rejection::from_error(&error).problem().reason, Some("txn_token_audience_mismatch"));
}

#[test]
fn a_separate_tts_key_source() {
    let f = Fixture::new();
    let tts_key = SigningKey::generate(Algorithm::EdDSA).unwrap().with_kid("tts-1");
    let keys = wimse_core::protocol::trust::TrustHandle::new(
        TrustStore::new().with(domain(), TrustAnchors::new().key(tts_key.public_key().clone())),
    );
    let v = verifier(&f, TxnTokenValidation::new(domain())).txn_token_keys(keys.clone());
    let token =
        TxnTokenIssuer::new(tts_key, &domain()).issue(&NewTxnToken::new("u", "s").requested_by(FRONT), NOW).unwrap();
    assert!(v.verify_sync(&RequestView::new(PATH, &request(&f, &token))).unwrap().transaction().is_some());
    // The identity server's key is not a TTS key here.
    assert_eq!(refused(&v, &request(&f, &txn_token(&f))), ErrorKind::TxnTokenUnknownKey);
    // TTS keys removed: the cached token is not used, the keys are unavailable (503).
    keys.remove(&domain());
    assert_eq!(refused(&v, &request(&f, &token)), ErrorKind::TrustAnchorsUnavailable);
}

#[test]
fn a_cached_token_still_expires() {
    let f = Fixture::new();
    let clock = std::sync::Arc::new(FixedClock::new(NOW));
    let v = Verifier::new(f.trust.clone(), f.config().txn_tokens(TxnTokenValidation::new(domain())))
        .unwrap()
        .clock(clock.clone());
    let token = tts(&f).lifetime(60).issue(&NewTxnToken::new("u", "s").requested_by(FRONT), NOW).unwrap();
    assert!(v.verify_sync(&RequestView::new(PATH, &request(&f, &token))).is_ok());
    assert!(v.verify_sync(&RequestView::new(PATH, &request(&f, &token))).is_ok(), "from the cache");
    clock.advance(91);
    let wpt =
        WptBuilder::new(&f.workload_key, &f.wit, &format!("{ORIGIN}{PATH}")).txn_token(&token).sign(NOW + 91).unwrap();
    let mut headers = f.headers(&f.wit, &wpt);
    headers.insert("txn-token", HeaderValue::from_str(&token).unwrap());
    assert_eq!(refused(&v, &headers), ErrorKind::ExpiredTxnToken);
}

#[test]
fn policies_over_the_transaction() {
    let f = Fixture::new();
    let token = txn_token(&f);
    let v = verifier(&f, TxnTokenValidation::new(domain()));
    let caller = v.verify_sync(&RequestView::new(PATH, &request(&f, &token))).unwrap();
    let base = || Policy::named("orders").allow(Rule::workload(f.id.clone()));
    assert!(base().require(Rule::txn_scope("orders.purchase")).check(&caller).is_ok());
    let denied = base().require(Rule::txn_scope("orders.refund")).check(&caller).unwrap_err();
    assert_eq!(denied.kind(), &ErrorKind::TxnScopeDenied);
    assert_eq!(Rejection::from_error(&denied).status(), 403);
    assert!(denied.detail().unwrap().contains("txn_scope(orders.refund)"), "{denied:?}");
    assert!(base().require(Rule::txn_subject("user-1842")).check(&caller).is_ok());
    let kind = |policy: Policy, caller: &VerifiedCaller| policy.check(caller).unwrap_err().into_kind();
    assert_eq!(kind(base().require(Rule::txn_subject("user-1")), &caller), ErrorKind::TxnSubjectDenied);
    assert_eq!(kind(base().deny(Rule::txn_subject("user-1842")), &caller), ErrorKind::TxnSubjectDenied, "deny first");
    assert_eq!(kind(base().deny(Rule::txn_scope("orders.read")), &caller), ErrorKind::TxnScopeDenied);
    // Combinations of one facet keep its reason; a rule mixing facets, or the identity, does not.
    let one_of_scopes = Rule::any_of([Rule::txn_scope("orders.refund"), Rule::txn_scope("orders.cancel")]);
    assert_eq!(kind(base().require(one_of_scopes), &caller), ErrorKind::TxnScopeDenied);
    let scope_in_txn = Rule::all_of([Rule::transaction(), Rule::not(Rule::txn_scope("orders.read"))]);
    assert_eq!(kind(base().require(scope_in_txn), &caller), ErrorKind::TxnScopeDenied);
    let mixed = Rule::all_of([Rule::txn_scope("orders.purchase"), Rule::txn_subject("user-1")]);
    assert_eq!(kind(base().require(mixed), &caller), ErrorKind::PolicyDenied);
    let with_identity = Rule::all_of([Rule::txn_scope("orders.refund"), Rule::workload(f.id.clone())]);
    assert_eq!(kind(base().require(with_identity), &caller), ErrorKind::PolicyDenied);
    assert_eq!(kind(base().require(Rule::not(Rule::transaction())), &caller), ErrorKind::PolicyDenied);
    // The first rule that refuses names the reason: deny rules, then requirements in order,
    // then the allow list (an unlisted caller with the wrong purpose: the purpose, and the log
    // says it was not on the list either).
    let stranger = Policy::named("orders").allow(Rule::exact("spiffe://prod.example/someone-else").unwrap());
    let both = kind(stranger.clone().require(Rule::txn_scope("orders.refund")), &caller);
    assert_eq!(both, ErrorKind::TxnScopeDenied);
    let detail = stranger.clone().require(Rule::txn_scope("orders.refund")).check(&caller).unwrap_err();
    assert!(detail.detail().unwrap().ends_with("no allow rule matches either"), "{detail:?}");
    assert_eq!(kind(stranger.clone().require(Rule::txn_scope("orders.purchase")), &caller), ErrorKind::PolicyDenied);
    let ordered = base().require(Rule::txn_subject("user-1")).require(Rule::txn_scope("orders.refund"));
    assert_eq!(kind(ordered, &caller), ErrorKind::TxnSubjectDenied);
    let ordered = base().require(Rule::txn_scope("orders.refund")).require(Rule::txn_subject("user-1"));
    assert_eq!(kind(ordered, &caller), ErrorKind::TxnScopeDenied);
    let denied_first = base().deny(Rule::workload(f.id.clone())).require(Rule::txn_scope("orders.refund"));
    assert_eq!(kind(denied_first, &caller), ErrorKind::PolicyDenied);
    // An allow list of purposes only.
    assert_eq!(kind(Policy::named("p").allow(Rule::txn_scope("orders.refund")), &caller), ErrorKind::TxnScopeDenied);
    // A caller without a transaction meets no transaction rule: the request has none.
    let plain = v.verify_sync(&RequestView::new(PATH, &f.headers(&f.wit, &f.wpt()))).unwrap();
    assert_eq!(kind(base().require(Rule::transaction()), &plain), ErrorKind::MissingTxnToken);
    assert_eq!(kind(base().require(Rule::txn_scope("orders.purchase")), &plain), ErrorKind::MissingTxnToken);
    assert_eq!(kind(base().deny(Rule::not(Rule::transaction())), &plain), ErrorKind::MissingTxnToken);
    assert!(base().require(Rule::transaction()).check(&caller).is_ok());
    // A Txn-Token the verifier does not validate cannot meet a rule: said so, not "none".
    let unvalidated = f.verifier().verify_sync(&RequestView::new(PATH, &request(&f, &token))).unwrap();
    let err = base().require(Rule::txn_scope("orders.purchase")).check(&unvalidated).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::PolicyDenied);
    assert!(err.detail().unwrap().contains("VerifierConfig::txn_tokens"), "{err:?}");
    // Identity-only checks (issuance) never satisfy them.
    assert!(!base().require(Rule::transaction()).allows_id(&f.id));
    // The same from a configuration file.
    let settings = wimse_core::config::Settings::from_json(
        &json!({"policy": {"name": "orders", "allow": {"workloads": [f.id.as_str()]},
                           "require": {"txn_scopes": ["orders.purchase"], "txn_subjects": ["user-1842", "user-2"]}}})
        .to_string(),
    )
    .unwrap();
    assert!(settings.policy().unwrap().check(&caller).is_ok());
    assert!(settings.policy().unwrap().check(&plain).is_err());
}

#[test]
fn replacement_narrows_and_keeps_the_transaction() {
    let f = Fixture::new();
    let cfg = TxnTokenValidation::new(domain());
    let original: VerifiedTxnToken = validate(&txn_token(&f), &f.trust, &cfg, NOW).unwrap();
    let orders = "spiffe://prod.example/orders";
    let narrowed = NewTxnToken::replacing(&original, "orders.read", orders).unwrap();
    let replacement = validate(&tts(&f).issue(&narrowed, NOW + 10).unwrap(), &f.trust, &cfg, NOW + 10).unwrap();
    assert_eq!(replacement.txn(), original.txn());
    assert_eq!(replacement.subject(), original.subject());
    assert_eq!(replacement.scope(), "orders.read");
    assert_eq!(replacement.requesting_workloads(), [FRONT.to_owned(), orders.to_owned()]);
    assert_eq!(replacement.expires_at(), original.expires_at(), "never outlives the original");
    let signed = tts(&f).issue_signed(&narrowed, NOW + 10).unwrap();
    assert_eq!((signed.txn.as_str(), signed.expires_at), (original.txn(), original.expires_at()));
    let too_late = tts(&f).issue(&narrowed, original.expires_at()).unwrap_err();
    assert_eq!(too_late.kind(), &ErrorKind::ExpiredTxnToken, "never issued already expired");
    for wider in ["orders.refund", "orders.read orders.admin", "", "  "] {
        assert_eq!(
            NewTxnToken::replacing(&original, wider, orders).unwrap_err().kind(),
            &ErrorKind::InvalidScope,
            "{wider:?}"
        );
    }
}

#[test]
fn configuration_bounds() {
    let f = Fixture::new();
    let too_lenient = f.config().txn_tokens(TxnTokenValidation::new(domain()).leeway(301));
    assert_eq!(Verifier::new(f.trust.clone(), too_lenient).unwrap_err().kind(), &ErrorKind::InvalidConfiguration);
    let bad = wimse_core::config::Settings::from_json(
        &json!({"verifier": {"origins": [ORIGIN], "trust": [], "txn_tokens": {"trust_domain": "not a domain"}}})
            .to_string(),
    )
    .unwrap();
    assert!(bad.verifier.txn_tokens.as_ref().unwrap().validation().is_err());
    // Fail closed: the config alone (no files) makes a verifier that refuses to start.
    let refused = Verifier::new(f.trust.clone(), bad.verifier.config().origin(ORIGIN)).unwrap_err();
    assert_eq!(refused.kind(), &ErrorKind::InvalidConfiguration);
}

#[test]
fn settings_with_a_separate_tts_key_file() {
    let f = Fixture::new();
    let dir = std::env::temp_dir().join(format!("wimse-txn-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tts_key = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("tts-1");
    std::fs::write(dir.join("issuer.jwk"), f.issuer_key.public_jwk().to_json()).unwrap();
    std::fs::write(dir.join("tts.jwk"), tts_key.public_jwk().to_json()).unwrap();
    let settings = wimse_core::config::Settings::from_json(
        &json!({"verifier": {"origins": [ORIGIN],
            "trust": [{"trust_domain": "spiffe://prod.example", "file": dir.join("issuer.jwk")}],
            "txn_tokens": {"trust_domain": "spiffe://prod.example", "required": true, "keys_file": dir.join("tts.jwk")}}})
        .to_string(),
    )
    .unwrap();
    let v = settings.verifier.build().unwrap().clock(FixedClock::new(NOW));
    assert_eq!(refused(&v, &f.headers(&f.wit, &f.wpt())), ErrorKind::MissingTxnToken);
    let token =
        TxnTokenIssuer::new(tts_key, &domain()).issue(&NewTxnToken::new("u", "s").requested_by(FRONT), NOW).unwrap();
    assert!(v.verify_sync(&RequestView::new(PATH, &request(&f, &token))).unwrap().transaction().is_some());
    assert_eq!(
        refused(&v, &request(&f, &txn_token(&f))),
        ErrorKind::TxnTokenUnknownKey,
        "the WIT issuer is not the TTS here"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Txn-Token request and answer are one type for the client that asks and the TTS that
/// answers; neither shows its tokens in logs.
#[test]
fn txn_token_requests_and_answers_never_show_their_tokens() {
    use wimse_core::protocol::oauth::ACCESS_TOKEN_TYPE;
    use wimse_core::protocol::txn::{IssuedTxnToken, TxnSubject, TxnTokenRequest};
    let request = TxnTokenRequest::for_access_token("secret-access-token", "orders.read")
        .audience("spiffe://prod.example")
        .request_context(serde_json::json!({"ip": "10.0.0.1"}));
    assert_eq!(
        request.subject,
        TxnSubject::Token { token: "secret-access-token".into(), token_type: ACCESS_TOKEN_TYPE.into() }
    );
    assert_eq!(request.audience.as_deref(), Some("spiffe://prod.example"));
    assert_eq!(request.request_context.as_deref(), Some(r#"{"ip":"10.0.0.1"}"#));
    let shown = format!("{request:?} {:?}", request.subject);
    assert!(!shown.contains("secret-access-token") && shown.contains(ACCESS_TOKEN_TYPE), "{shown}");
    let mut acting = request.clone().acting();
    assert_eq!(acting.actor, wimse_core::protocol::txn::TxnActor::Requester);
    acting.actor =
        wimse_core::protocol::txn::TxnActor::Token { token: "secret-wit".into(), token_type: "jwt-type".into() };
    let shown = format!("{acting:?}");
    assert!(!shown.contains("secret-wit") && shown.contains("jwt-type"), "{shown}");
    let deferred = TxnTokenRequest::self_signed_for("batch-7", "orders.read");
    assert_eq!(deferred.subject, TxnSubject::SelfSignedFor("batch-7".into()));
    let issued = IssuedTxnToken { token: "eyJ.secret.token".into(), expires_in: 300, txn: Some("t-1".into()) };
    let shown = format!("{issued:?}");
    assert!(!shown.contains("secret") && shown.contains("t-1"), "{shown}");
}

#[test]
fn policies_over_the_delegation_chain() {
    let f = Fixture::new();
    let v = verifier(&f, TxnTokenValidation::new(domain()));
    let agent: WorkloadId = "spiffe://prod.example/agents/planner".parse().unwrap();
    let booker: WorkloadId = "spiffe://prod.example/agents/booker".parse().unwrap();
    let chain = NewTxnToken::new("user-1842", "orders.purchase").requested_by(FRONT).acted_by(agent.clone());
    let chain = chain.acted_by(booker.clone());
    let delegated = tts(&f).issue(&chain, NOW - 5).unwrap();
    let caller = v.verify_sync(&RequestView::new(PATH, &request(&f, &delegated))).unwrap();
    let txn = caller.transaction().unwrap();
    assert_eq!(txn.actors(), [booker.clone(), agent.clone()], "the current actor first");
    assert_eq!(txn.actor(), Some(&booker));
    let own = v.verify_sync(&RequestView::new(PATH, &request(&f, &txn_token(&f)))).unwrap();
    assert!(own.transaction().unwrap().actors().is_empty());

    let base = || Policy::named("tools").allow(Rule::workload(f.id.clone()));
    let kind = |policy: Policy, caller: &VerifiedCaller| policy.check(caller).unwrap_err().into_kind();
    assert!(base().require(Rule::txn_delegated()).check(&caller).is_ok());
    assert_eq!(kind(base().require(Rule::txn_delegated()), &own), ErrorKind::TxnDelegationDenied);
    assert!(base().require(Rule::not(Rule::txn_delegated())).check(&own).is_ok());
    assert!(base().require(Rule::txn_actor(agent.clone())).check(&caller).is_ok(), "an earlier actor counts");
    assert_eq!(kind(base().deny(Rule::txn_actor(agent.clone())), &caller), ErrorKind::TxnDelegationDenied);
    assert!(base().require(Rule::txn_max_actors(2)).check(&caller).is_ok(), "at the limit");
    let too_deep = base().require(Rule::txn_max_actors(1)).check(&caller).unwrap_err();
    assert_eq!(too_deep.kind(), &ErrorKind::TxnDelegationDenied);
    assert!(too_deep.detail().unwrap().contains("txn_max_actors(1)"), "{too_deep:?}");
    assert_eq!(Rejection::from_error(&too_deep).status(), 403);
    assert!(base().require(Rule::txn_max_actors(0)).check(&own).is_ok());
    // Without a Txn-Token, no chain rule is met: the request has none.
    let plain = v.verify_sync(&RequestView::new(PATH, &f.headers(&f.wit, &f.wpt()))).unwrap();
    assert_eq!(kind(base().require(Rule::txn_max_actors(3)), &plain), ErrorKind::MissingTxnToken);
    // The same from a configuration file.
    let settings = |require: serde_json::Value| {
        wimse_core::config::Settings::from_json(
            &json!({"policy": {"name": "tools", "allow": {"workloads": [f.id.as_str()]}, "require": require}})
                .to_string(),
        )
        .unwrap()
        .policy()
    };
    let policy = settings(json!({"txn_delegated": true, "txn_actors": [agent.as_str()], "txn_max_actors": 2})).unwrap();
    assert!(policy.check(&caller).is_ok());
    assert_eq!(policy.check(&own).unwrap_err().into_kind(), ErrorKind::TxnDelegationDenied);
    let undelegated = settings(json!({"txn_delegated": false})).unwrap();
    assert!(undelegated.check(&own).is_ok() && undelegated.check(&caller).is_err());
    let error = settings(json!({"txn_actors": ["not an identifier"]})).unwrap_err();
    assert!(error.detail().unwrap().contains("policy.require.txn_actors[0]"), "{error:?}");
}

#[test]
fn a_malformed_chain_is_refused_even_when_signed() {
    let f = Fixture::new();
    let v = verifier(&f, TxnTokenValidation::new(domain()));
    // The TTS key signs claims with a broken `act` (as a buggy or foreign TTS would).
    for act in [
        json!("spiffe://prod.example/agents/planner"),
        json!({"iss": "x"}),
        json!({"sub": "user-1"}),
        (0..9).fold(
            json!({"sub": "spiffe://prod.example/a/0"}),
            |inner, i| json!({"sub": format!("spiffe://prod.example/a/{}", i + 1), "act": inner}),
        ),
    ] {
        let claims = json!({"iss": "https://issuer.prod.example", "aud": "spiffe://prod.example", "iat": NOW - 5, "exp": NOW + 60,
                            "txn": "t-1", "sub": "user-1842", "scope": "orders.read", "req_wl": FRONT, "act": act});
        let token = wimse_core::jose::jws::sign(
            "txntoken+jwt",
            f.issuer_key.kid(),
            &claims,
            &f.issuer_key,
            wimse_core::jose::Backend::default(),
        )
        .unwrap();
        assert_eq!(refused(&v, &request(&f, &token)), ErrorKind::TxnTokenMalformed, "{act}");
    }
    // More actors than a Txn-Token may name are never issued.
    let mut many = NewTxnToken::new("u", "s").requested_by(FRONT);
    for i in 0..9 {
        many = many.acted_by(format!("spiffe://prod.example/a/{i}").parse().unwrap());
    }
    assert_eq!(tts(&f).issue(&many, NOW).unwrap_err().into_kind(), ErrorKind::InvalidConfiguration);
}
