//! Suite `txn-token`: Transaction Tokens checked by a workload of the trust domain
//! (draft-ietf-oauth-transaction-tokens-11 §9, §12.2).

use serde::Serialize;
use serde_json::{Value, json};
use wimse_core::ErrorKind::*;

use crate::jwt::{decode, header, jwt, set};
use crate::keys::{Key, Keys};
use crate::suite::*;

const MAX_LIFETIME: u64 = 600;

#[derive(Debug, Serialize)]
struct Verifier {
    now: u64,
    trust_domain: &'static str,
    audience: &'static str,
    tts_keys: Vec<&'static str>,
    leeway: u64,
    max_lifetime: u64,
}

fn case(id: &'static str, description: &'static str, expect: &'static str, token: String) -> Case {
    let (header, claims) = decode(&token);
    Case { id, description, expect, token: Some(token), header: Some(header), claims: Some(claims), ..Case::default() }
}

/// A token of the TTS with its claims changed by `edit`.
fn edited(tts: &Key, label: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut claims = txn_claims(label);
    edit(&mut claims);
    txn_token(tts, Some("txntoken+jwt"), &claims)
}

pub(crate) fn suite(keys: &Keys) -> String {
    let tts = &keys.tts_es256;
    let mut cases = vec![
        case("valid", "a Txn-Token of the trust domain's TTS", VALID, edited(tts, "valid", |_| {})),
        case(
            "typ-media-type",
            "`typ` `application/txntoken+jwt` (RFC 7515 §4.1.9)",
            VALID,
            txn_token(tts, Some("application/txntoken+jwt"), &txn_claims("typ-media")),
        ),
        case(
            "unknown-claims-ignored",
            "a claim this recipient does not understand is ignored (-10 §9.2)",
            VALID,
            edited(tts, "unknown-claim", |c| set(c, "x_region", "eu-west".into())),
        ),
        case(
            "expired-within-leeway",
            "`exp` passed 29 seconds ago, inside the 30-second leeway",
            VALID,
            edited(tts, "leeway", |c| {
                set(c, "iat", json!(NOW - 120));
                set(c, "exp", json!(NOW - 29));
            }),
        ),
        case("typ-jwt", "`typ` `JWT`", reason(TxnTokenWrongType), txn_token(tts, Some("JWT"), &txn_claims("typ-jwt"))),
        case("typ-missing", "no `typ`", reason(TxnTokenWrongType), txn_token(tts, None, &txn_claims("typ-missing"))),
        case(
            "audience-other-trust-domain",
            "`aud` is another trust domain",
            reason(TxnTokenAudienceMismatch),
            edited(tts, "aud", |c| set(c, "aud", "spiffe://partner.example".into())),
        ),
        case(
            "expired",
            "`exp` passed 30 seconds ago: the leeway is used up",
            reason(ExpiredTxnToken),
            edited(tts, "expired", |c| {
                set(c, "iat", json!(NOW - 120));
                set(c, "exp", json!(NOW - LEEWAY));
            }),
        ),
        case(
            "not-before-in-future",
            "`nbf` is 31 seconds ahead",
            reason(TxnTokenNotYetValid),
            edited(tts, "nbf", |c| set(c, "nbf", json!(NOW + LEEWAY + 1))),
        ),
        case(
            "issued-in-future",
            "`iat` is 31 seconds ahead",
            reason(TxnTokenNotYetValid),
            edited(tts, "iat", |c| {
                set(c, "iat", json!(NOW + LEEWAY + 1));
                set(c, "exp", json!(NOW + 300));
            }),
        ),
        case(
            "exp-not-after-iat",
            "`exp` equals `iat`",
            reason(TxnTokenMalformed),
            edited(tts, "exp-iat", |c| {
                set(c, "iat", json!(NOW - 10));
                set(c, "exp", json!(NOW - 10));
            }),
        ),
        case(
            "lifetime-too-long",
            "`exp` - `iat` is 601 seconds, over the 600-second maximum",
            reason(TxnTokenLifetimeTooLong),
            edited(tts, "long", |c| {
                set(c, "iat", json!(NOW - 10));
                set(c, "exp", json!(NOW - 10 + MAX_LIFETIME + 1));
            }),
        ),
        case(
            "unknown-key",
            "signed by a workload's own key (no TTS key has its `kid` `client`)",
            reason(TxnTokenUnknownKey),
            jwt(&header("ES256", Some("txntoken+jwt"), Some("client")), &txn_claims("unknown-key"), &keys.client_es256),
        ),
        case(
            "bad-signature",
            "signed by a key nobody trusts, with the TTS key's `kid`",
            reason(InvalidTxnTokenSignature),
            jwt(&header("ES256", Some("txntoken+jwt"), Some("tts-1")), &txn_claims("forged"), &keys.rogue_es256),
        ),
        case(
            "alg-none",
            "`alg` `none`",
            reason(TxnTokenMalformed),
            jwt(&header("none", Some("txntoken+jwt"), Some("tts-1")), &txn_claims("alg-none"), tts),
        ),
    ];
    for (claim, id, description) in [
        ("aud", "missing-aud", "no `aud`"),
        ("iat", "missing-iat", "no `iat`"),
        ("txn", "missing-txn", "no `txn`"),
        ("sub", "missing-sub", "no `sub`"),
        ("scope", "missing-scope", "no `scope`"),
        ("req_wl", "missing-req-wl", "no `req_wl`"),
    ] {
        cases.push(case(
            id,
            description,
            reason(TxnTokenMissingClaim(claim)),
            edited(tts, id, |c| set(c, claim, Value::Null)),
        ));
    }

    Suite {
        format: FORMAT,
        suite: "txn-token",
        title: "Transaction Tokens as a workload of the trust domain validates them",
        drafts: vec![wimse_core::draft::revisions::TXN_TOKENS],
        generated_by: GENERATED_BY,
        procedure: vec![
            "`token` is the value of a `Txn-Token` field (`header` and `claims` are its decoded parts, for reading).",
            "`typ` txntoken+jwt (also application/txntoken+jwt, any case); no `crit`; an asymmetric `alg`.",
            "The key: one of `verifier.tts_keys` with the token's `kid` and `alg`; then the signature.",
            "`aud` = `verifier.audience` (the trust domain).",
            "Times: now < exp + leeway; iat <= now + leeway and nbf (if any) <= now + leeway; exp > iat; exp - iat <= max_lifetime and exp <= now + max_lifetime + leeway.",
            "Required claims: iat, aud, exp, txn, sub, scope (non-empty strings or integers), req_wl; unknown claims are ignored.",
        ],
        keys: [tts, &keys.client_es256, &keys.rogue_es256].into_iter().map(Key::entry).collect(),
        verifier: Verifier {
            now: NOW,
            trust_domain: TRUST_DOMAIN,
            audience: TRUST_DOMAIN,
            tts_keys: vec![tts.name],
            leeway: LEEWAY,
            max_lifetime: MAX_LIFETIME,
        },
        cases,
    }
    .render()
}
