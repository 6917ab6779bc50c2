//! Suite `wpt`: requests with a WIT and a WPT (wpt-02, workload-creds-02).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};
use wimse_core::ErrorKind::*;

use crate::jwt::{fixed_id, header, jwt, set};
use crate::keys::{Key, Keys};
use crate::message::Request;
use crate::suite::*;

const HOST: &str = "orders.vectors.example";
const AUD: &str = "https://orders.vectors.example/orders/7";
const POST_AUD: &str = "https://orders.vectors.example/orders";
const CONTEXT: &str = "x-order-context";
const MAX_WPT_LIFETIME: u64 = 300;

#[derive(Debug, Serialize)]
struct Verifier {
    now: u64,
    trust_anchors: BTreeMap<&'static str, Vec<&'static str>>,
    audiences: Vec<&'static str>,
    context_tokens: Vec<&'static str>,
    leeway: u64,
    max_wit_lifetime: u64,
    max_wpt_lifetime: u64,
    replay: &'static str,
    txn_tokens: &'static str,
}

/// What one case changes in the standard request.
struct Build<'k> {
    keys: &'k Keys,
}

impl Build<'_> {
    fn client_wit(&self) -> String {
        wit(&self.keys.issuer_es256, &wit_claims(CLIENT, &self.keys.client_es256, "wit-client"))
    }

    fn wpt_claims(&self, aud: &str, wit: &str, label: &str) -> Value {
        json!({"aud": aud, "exp": NOW + 30, "jti": fixed_id(label), "wth": hash(wit)})
    }

    fn wpt(&self, key: &Key, typ: &str, claims: &Value) -> String {
        jwt(&header(key.alg(), Some(typ), None), claims, key)
    }

    /// `GET /orders/7` with this WIT and WPT.
    fn get(&self, wit: &str, wpt: &str) -> Request {
        Request::new("GET", "/orders/7", HOST)
            .with("Workload-Identity-Token", wit)
            .with("Authorization", &format!("WPT {wpt}"))
    }

    /// The client's request with its WIT, the WPT claims changed by `edit`.
    fn client_get(&self, label: &str, edit: impl FnOnce(&mut Value)) -> Request {
        let wit = self.client_wit();
        let mut claims = self.wpt_claims(AUD, &wit, label);
        edit(&mut claims);
        self.get(&wit, &self.wpt(&self.keys.client_es256, "wpt+jwt", &claims))
    }

    /// The client's request with a WIT whose claims `edit` changed, signed by `issuer` with `typ`.
    fn wit_case(&self, label: &str, issuer: &Key, typ: Option<&str>, edit: impl FnOnce(&mut Value)) -> Request {
        let mut claims = wit_claims(CLIENT, &self.keys.client_es256, label);
        edit(&mut claims);
        let wit = jwt(&header(issuer.alg(), typ, Some("issuer-es256")), &claims, issuer);
        let wpt = self.wpt(&self.keys.client_es256, "wpt+jwt", &self.wpt_claims(AUD, &wit, label));
        self.get(&wit, &wpt)
    }
}

fn case(id: &'static str, description: &'static str, expect: &'static str, request: Request) -> Case {
    Case { id, description, expect, request: Some(request.raw()), ..Case::default() }
}

pub(crate) fn suite(keys: &Keys) -> String {
    let b = Build { keys };
    let k = keys;
    let txn = txn_token(&k.tts_es256, Some("txntoken+jwt"), &txn_claims("txn-wpt"));
    let other_txn = txn_token(&k.tts_es256, Some("txntoken+jwt"), &txn_claims("txn-other"));
    let context = "ctx.order-7.priority";
    let mut cases = Vec::new();

    // ---- valid ----
    cases.push(case(
        "es256-get",
        "ES256 WIT and ES256 WPT on a GET without a body",
        VALID,
        b.client_get("wpt-es256-get", |_| {}),
    ));
    {
        let wit = wit(&k.issuer_eddsa, &wit_claims(BATCH, &k.client_eddsa, "wit-batch"));
        let wpt = b.wpt(&k.client_eddsa, "wpt+jwt", &b.wpt_claims(POST_AUD, &wit, "wpt-eddsa-post"));
        let request = Request::new("POST", "/orders", HOST)
            .with("Workload-Identity-Token", &wit)
            .with("Authorization", &format!("WPT {wpt}"))
            .with_body("application/json", "{\"item\":\"book\",\"quantity\":1}");
        cases.push(case(
            "eddsa-post",
            "EdDSA WIT (second anchor key) and EdDSA WPT on a POST with a body (a WPT does not cover the body)",
            VALID,
            request,
        ));
    }
    {
        let wit = b.client_wit();
        let mut claims = b.wpt_claims(AUD, &wit, "wpt-txn");
        set(&mut claims, "tth", hash(&txn).into());
        let request = b.get(&wit, &b.wpt(&k.client_es256, "wpt+jwt", &claims)).with("Txn-Token", &txn);
        cases.push(case("txn-token-bound", "a Txn-Token bound by `tth`", VALID, request));
    }
    {
        let wit = b.client_wit();
        let mut claims = b.wpt_claims(AUD, &wit, "wpt-oth");
        set(&mut claims, "oth", json!({ CONTEXT: hash(context) }));
        let request = b.get(&wit, &b.wpt(&k.client_es256, "wpt+jwt", &claims)).with("X-Order-Context", context);
        cases.push(case(
            "other-token-bound",
            "a context token in `X-Order-Context` bound by `oth` (lower-cased field name -> hash of the trimmed value)",
            VALID,
            request,
        ));
    }
    cases.push(case(
        "wit-typ-media-type",
        "WIT `typ` `application/wit+jwt`: the full media type names the same type (RFC 7515 §4.1.9)",
        VALID,
        b.wit_case("wit-typ-media", &k.issuer_es256, Some("application/wit+jwt"), |_| {}),
    ));
    cases.push(case(
        "wit-typ-upper-case",
        "WIT `typ` `WIT+JWT`: media types compare case-insensitively",
        VALID,
        b.wit_case("wit-typ-upper", &k.issuer_es256, Some("WIT+JWT"), |_| {}),
    ));
    {
        let wit = b.client_wit();
        let wpt = b.wpt(&k.client_es256, "Application/WPT+JWT", &b.wpt_claims(AUD, &wit, "wpt-typ-mixed"));
        cases.push(case("wpt-typ-media-type-mixed-case", "WPT `typ` `Application/WPT+JWT`", VALID, b.get(&wit, &wpt)));
    }
    {
        let wit = b.client_wit();
        let wpt = b.wpt(&k.client_es256, "wpt+jwt", &b.wpt_claims(AUD, &wit, "wpt-scheme-case"));
        let request = Request::new("GET", "/orders/7", HOST)
            .with("Workload-Identity-Token", &wit)
            .with("Authorization", &format!("wpt {wpt}"));
        cases.push(case(
            "authorization-scheme-lower-case",
            "`Authorization: wpt …`: the scheme name is case-insensitive",
            VALID,
            request,
        ));
    }
    {
        let request = b.client_get("wpt-beside-proxy", |_| {});
        let proxy = crate::signatures::proxy_signature(&request, "proxy", "example-proxy-hop", &k.rogue_es256);
        cases.push(case(
            "beside-a-proxy-signature",
            "a proxy added its own HTTP signature (tag `example-proxy-hop`): not a WIMSE signature, so the request is still a WPT request",
            VALID,
            request.with_signatures(&[&proxy]),
        ));
    }
    cases.push(case(
        "wit-expired-within-leeway",
        "the WIT expired 29 seconds ago, inside the 30-second leeway",
        VALID,
        b.wit_case("wit-leeway", &k.issuer_es256, Some("wit+jwt"), |c| set(c, "exp", json!(NOW - 29))),
    ));
    cases.push(case(
        "wpt-lifetime-at-limit",
        "the WPT expires 330 seconds from now: the maximum lifetime (300) plus the leeway (30)",
        VALID,
        b.client_get("wpt-at-limit", |c| set(c, "exp", json!(NOW + MAX_WPT_LIFETIME + LEEWAY))),
    ));

    // ---- the WIT ----
    for (id, typ, description) in [
        ("wit-typ-jwt", Some("JWT"), "WIT `typ` `JWT`"),
        ("wit-typ-legacy", Some("wimse-id+jwt"), "WIT `typ` `wimse-id+jwt` (s2s-protocol-02 and earlier)"),
        ("wit-typ-missing", None, "WIT without `typ`"),
        ("wit-typ-with-parameter", Some("application/wit+jwt; charset=utf-8"), "WIT `typ` with a media-type parameter"),
    ] {
        cases.push(case(id, description, reason(WitWrongType), b.wit_case(id, &k.issuer_es256, typ, |_| {})));
    }
    {
        let claims = wit_claims(CLIENT, &k.client_es256, "wit-alg-none");
        let wit = jwt(&header("none", Some("wit+jwt"), Some("issuer-es256")), &claims, &k.issuer_es256);
        let wpt = b.wpt(&k.client_es256, "wpt+jwt", &b.wpt_claims(AUD, &wit, "wit-alg-none"));
        cases.push(case(
            "wit-alg-none",
            "WIT `alg` `none` (the signature part carries an ES256 signature)",
            reason(UnsupportedAlgorithm),
            b.get(&wit, &wpt),
        ));
    }
    cases.push(case(
        "wit-bad-signature",
        "WIT signed by a key nobody trusts, with the trusted key's `kid`",
        reason(InvalidWitSignature),
        b.wit_case("wit-forged", &k.rogue_es256, Some("wit+jwt"), |_| {}),
    ));
    {
        let claims = wit_claims(CLIENT, &k.client_es256, "wit-unknown-kid");
        let wit = jwt(&header("ES256", Some("wit+jwt"), Some("issuer-retired")), &claims, &k.issuer_es256);
        let wpt = b.wpt(&k.client_es256, "wpt+jwt", &b.wpt_claims(AUD, &wit, "wit-unknown-kid"));
        cases.push(case(
            "wit-unknown-kid",
            "WIT whose `kid` names no anchor key of its trust domain",
            reason(UnknownKey),
            b.get(&wit, &wpt),
        ));
    }
    cases.push(case(
        "wit-untrusted-trust-domain",
        "WIT for `spiffe://elsewhere.example/client`: no anchors for that trust domain",
        reason(UntrustedTrustDomain),
        b.wit_case("wit-elsewhere", &k.issuer_es256, Some("wit+jwt"), |c| {
            set(c, "sub", "spiffe://elsewhere.example/client".into())
        }),
    ));
    cases.push(case(
        "wit-expired",
        "the WIT expired 30 seconds ago: the leeway is used up",
        reason(ExpiredWit),
        b.wit_case("wit-expired", &k.issuer_es256, Some("wit+jwt"), |c| set(c, "exp", json!(NOW - LEEWAY))),
    ));
    cases.push(case(
        "wit-not-yet-valid",
        "the WIT's `nbf` is 31 seconds ahead",
        reason(WitNotYetValid),
        b.wit_case("wit-nbf", &k.issuer_es256, Some("wit+jwt"), |c| set(c, "nbf", json!(NOW + LEEWAY + 1))),
    ));
    cases.push(case(
        "wit-lifetime-too-long",
        "the WIT expires more than 24 hours (plus leeway) from now",
        reason(WitLifetimeTooLong),
        b.wit_case("wit-long", &k.issuer_es256, Some("wit+jwt"), |c| {
            set(c, "exp", json!(NOW + MAX_WIT_LIFETIME + LEEWAY + 1))
        }),
    ));
    cases.push(case(
        "wit-missing-cnf",
        "the WIT has no `cnf`",
        reason(InvalidConfirmationKey),
        b.wit_case("wit-no-cnf", &k.issuer_es256, Some("wit+jwt"), |c| set(c, "cnf", Value::Null)),
    ));
    cases.push(case(
        "wit-cnf-without-alg",
        "the WIT's `cnf.jwk` has no `alg`",
        reason(InvalidConfirmationKey),
        b.wit_case("wit-cnf-no-alg", &k.issuer_es256, Some("wit+jwt"), |c| {
            set(&mut c["cnf"]["jwk"], "alg", Value::Null)
        }),
    ));
    cases.push(case(
        "wit-cnf-private-key",
        "the WIT's `cnf.jwk` carries the private key (`d`)",
        reason(InvalidConfirmationKey),
        b.wit_case("wit-cnf-private", &k.issuer_es256, Some("wit+jwt"), |c| {
            c["cnf"]["jwk"] = serde_json::to_value(k.client_es256.signing.to_private_jwk()).expect("a JWK");
        }),
    ));

    // ---- the WPT ----
    {
        let wit = b.client_wit();
        let wpt = b.wpt(&k.client_es256, "wimse-proof+jwt", &b.wpt_claims(AUD, &wit, "wpt-legacy"));
        cases.push(case(
            "wpt-typ-legacy",
            "WPT `typ` `wimse-proof+jwt` (s2s-protocol-02 and earlier)",
            reason(WptWrongType),
            b.get(&wit, &wpt),
        ));
    }
    {
        let wit = b.client_wit();
        let wpt = b.wpt(&k.rogue_eddsa, "wpt+jwt", &b.wpt_claims(AUD, &wit, "wpt-alg-mismatch"));
        cases.push(case(
            "wpt-alg-mismatch",
            "WPT `alg` `EdDSA` while the WIT's `cnf.jwk.alg` is `ES256`",
            reason(WptAlgorithmMismatch),
            b.get(&wit, &wpt),
        ));
    }
    {
        let wit = b.client_wit();
        let wpt = b.wpt(&k.rogue_es256, "wpt+jwt", &b.wpt_claims(AUD, &wit, "wpt-forged"));
        cases.push(case(
            "wpt-bad-signature",
            "WPT signed by a key other than the WIT's `cnf.jwk`",
            reason(InvalidWptSignature),
            b.get(&wit, &wpt),
        ));
    }
    cases.push(case(
        "wpt-expired",
        "the WPT expired 30 seconds ago: the leeway is used up",
        reason(ExpiredWpt),
        b.client_get("wpt-expired", |c| set(c, "exp", json!(NOW - LEEWAY))),
    ));
    cases.push(case(
        "wpt-lifetime-too-long",
        "the WPT expires 331 seconds from now, one second past the maximum lifetime plus leeway",
        reason(WptLifetimeTooLong),
        b.client_get("wpt-long", |c| set(c, "exp", json!(NOW + MAX_WPT_LIFETIME + LEEWAY + 1))),
    ));
    cases.push(case(
        "wpt-audience-mismatch",
        "the WPT is for another service",
        reason(AudienceMismatch),
        b.client_get("wpt-aud", |c| set(c, "aud", "https://billing.vectors.example/orders/7".into())),
    ));
    cases.push(case(
        "wpt-audience-with-query",
        "the WPT's `aud` carries the query: the audience is the target URI without it",
        reason(AudienceMismatch),
        b.client_get("wpt-aud-query", |c| set(c, "aud", format!("{AUD}?expand=items").into())),
    ));
    {
        let wit = b.client_wit();
        let other =
            wit_typed(&k.issuer_es256, Some("wit+jwt"), &wit_claims(CLIENT, &k.client_es256, "wit-client-renewed"));
        let wpt = b.wpt(&k.client_es256, "wpt+jwt", &b.wpt_claims(AUD, &other, "wpt-wth"));
        cases.push(case(
            "wpt-wth-mismatch",
            "the WPT's `wth` is the hash of another WIT of the same workload and key",
            reason(WitBindingMismatch),
            b.get(&wit, &wpt),
        ));
    }
    {
        let wit = b.client_wit();
        let mut claims = b.wpt_claims(AUD, &wit, "wpt-tth");
        set(&mut claims, "tth", hash(&other_txn).into());
        let request = b.get(&wit, &b.wpt(&k.client_es256, "wpt+jwt", &claims)).with("Txn-Token", &txn);
        cases.push(case(
            "wpt-tth-mismatch",
            "the WPT's `tth` is the hash of another Txn-Token than the one sent",
            reason(TxnTokenBindingMismatch),
            request,
        ));
    }
    cases.push(case(
        "wpt-tth-missing",
        "a Txn-Token is sent but the WPT has no `tth`",
        reason(TxnTokenBindingMismatch),
        b.client_get("wpt-no-tth", |_| {}).with("Txn-Token", &txn),
    ));
    cases.push(case(
        "wpt-tth-without-txn-token",
        "the WPT has a `tth` but no Txn-Token is sent",
        reason(TxnTokenBindingMismatch),
        b.client_get("wpt-tth-alone", |c| set(c, "tth", hash(&txn).into())),
    ));
    cases.push(case(
        "wpt-oth-mismatch",
        "the WPT's `oth` entry does not hash the `X-Order-Context` value sent",
        reason(OtherTokenBindingMismatch),
        b.client_get("wpt-oth-bad", |c| set(c, "oth", json!({ CONTEXT: hash("ctx.order-8.priority") })))
            .with("X-Order-Context", context),
    ));
    cases.push(case(
        "wpt-oth-field-absent",
        "the WPT's `oth` names `x-order-context` but no such field is sent",
        reason(OtherTokenBindingMismatch),
        b.client_get("wpt-oth-absent", |c| set(c, "oth", json!({ CONTEXT: hash(context) }))),
    ));
    cases.push(case(
        "wpt-context-token-not-bound",
        "`X-Order-Context` is sent but the WPT has no `oth` for it",
        reason(OtherTokenBindingMismatch),
        b.client_get("wpt-oth-unbound", |_| {}).with("X-Order-Context", context),
    ));
    cases.push(case(
        "wpt-oth-unknown-field",
        "the WPT's `oth` names `x-session`, a field this verifier does not understand",
        reason(UnsupportedOtherToken),
        b.client_get("wpt-oth-unknown", |c| set(c, "oth", json!({"x-session": hash("s-1")}))).with("X-Session", "s-1"),
    ));
    cases.push(case(
        "wpt-missing-jti",
        "the WPT has no `jti`",
        reason(MissingClaim("jti")),
        b.client_get("wpt-no-jti", |c| set(c, "jti", Value::Null)),
    ));

    // ---- framing and replay ----
    {
        let mut request = b.client_get("no-wpt", |_| {});
        request.remove("Authorization");
        cases.push(case("missing-wpt", "a WIT without a WPT", reason(MissingWpt), request));
    }
    {
        let mut request = b.client_get("no-wit", |_| {});
        request.remove("Workload-Identity-Token");
        cases.push(case("missing-wit", "a WPT without a WIT", reason(MissingWit), request));
    }
    cases.push(case(
        "bearer-token-beside-wpt",
        "a second `Authorization` field with a bearer token (wpt-02 removed `ath`)",
        reason(BearerWithWpt),
        b.client_get("wpt-bearer", |_| {}).with("Authorization", "Bearer mF_9.B5f-4.1JqM"),
    ));
    cases.push(Case {
        deliveries: Some(2),
        ..case(
            "wpt-replayed",
            "the same request delivered twice: the second carries a `jti` already seen from this workload",
            reason(ReplayedProof),
            b.client_get("wpt-replayed", |_| {}),
        )
    });

    let anchors = BTreeMap::from([(TRUST_DOMAIN, vec![k.issuer_es256.name, k.issuer_eddsa.name])]);
    Suite {
        format: FORMAT,
        suite: "wpt",
        title: "Requests authenticated with a WIT and a Workload Proof Token",
        drafts: vec![wimse_core::draft::revisions::WPT, wimse_core::draft::revisions::WORKLOAD_CREDS],
        generated_by: GENERATED_BY,
        procedure: vec![
            "Parse `request` as an HTTP/1.1 request (CRLF line ends; the body is Content-Length bytes).",
            "WIT (`Workload-Identity-Token`): compact JWS; `typ` wit+jwt (also application/wit+jwt, any case); `alg` asymmetric; `sub` a Workload Identifier whose trust domain has anchors in `verifier.trust_anchors`; the anchor key named by `kid`; the signature; `exp` not passed (now < exp + leeway); `nbf` not ahead (nbf <= now + leeway); `exp` <= now + max_wit_lifetime + leeway; `cnf.jwk` a public JWK with `alg`.",
            "WPT (`Authorization: WPT <token>`, scheme case-insensitive, one Authorization field): `typ` wpt+jwt (also application/wpt+jwt, any case); `alg` string-equal to the WIT's `cnf.jwk.alg`; the signature by `cnf.jwk`; now < exp + leeway; exp <= now + max_wpt_lifetime + leeway; `aud` one of `verifier.audiences` (byte-exact); `wth` = hash of the WIT field value; `tth` = hash of the `Txn-Token` field value, both or neither; `oth` names only fields of `verifier.context_tokens`, each present and hashed to its trimmed value, and every such field present is named; `jti` present.",
            "Hashes are base64url (no padding) of SHA-256 over the value's bytes.",
            "Replay: claim (WIT `sub`, `jti`) in a cache that is empty at the start of each case; a second claim is refused.",
            "A case passes when the verifier accepts the last delivery and `expect` is `valid`, or refuses it for the check `expect` names.",
        ],
        keys: [&k.issuer_es256, &k.issuer_eddsa, &k.client_es256, &k.client_eddsa, &k.tts_es256, &k.rogue_es256, &k.rogue_eddsa]
            .into_iter()
            .map(Key::entry)
            .collect(),
        verifier: Verifier {
            now: NOW,
            trust_anchors: anchors,
            audiences: vec![AUD, POST_AUD],
            context_tokens: vec![CONTEXT],
            leeway: LEEWAY,
            max_wit_lifetime: MAX_WIT_LIFETIME,
            max_wpt_lifetime: MAX_WPT_LIFETIME,
            replay: "one cache per case, empty at its start; key: the WIT's sub and the WPT's jti",
            txn_tokens: "bound by tth only; their own validity is the txn-token suite's",
        },
        cases,
    }
    .render()
}
