//! Suite `http-signature-requests`: requests signed with HTTP Message Signatures as
//! http-signature-08 profiles them, CONNECT included.

use std::collections::BTreeMap;

use serde::Serialize;
use wimse_core::ErrorKind::*;
use wimse_core::protocol::httpsig::ComponentId;

use crate::jwt::{fixed_id, set};
use crate::keys::{Key, Keys};
use crate::message::{Param, Request, Signature, Signed};
use crate::suite::*;

pub(crate) const HOST: &str = "ledger.vectors.example";
pub(crate) const CONNECT_TARGET: &str = "ledger.vectors.example:443";
pub(crate) const AUDIENCE: &str = "https://ledger.vectors.example";
pub(crate) const TAG: &str = "wimse-workload-to-workload";
const MAX_SIGNATURE_AGE: u64 = 300;
const MAX_SIGNATURE_LIFETIME: u64 = 300;
/// Fields a request signature covers whenever present (http-signature-08), in this order.
pub(crate) const COVERED_IF_PRESENT: [&str; 5] =
    ["content-type", "content-digest", "authorization", "txn-token", "workload-identity-token"];
const BODY: &str = "{\"account\":\"42\",\"amount\":\"12.50\",\"currency\":\"EUR\"}";

#[derive(Debug, Serialize)]
struct Verifier {
    now: u64,
    trust_anchors: BTreeMap<&'static str, Vec<&'static str>>,
    audiences: Vec<&'static str>,
    leeway: u64,
    max_wit_lifetime: u64,
    max_signature_age: u64,
    max_signature_lifetime: u64,
    derived_components: &'static str,
    replay: &'static str,
}

/// What the profile has a request signature cover: `@method` and `@authority` for CONNECT,
/// `@method`, `@path`, `@query` otherwise, then every field of [`COVERED_IF_PRESENT`] present.
pub(crate) fn profile_components(request: &Request) -> Vec<ComponentId> {
    let derived: &[&str] =
        if request.method == "CONNECT" { &["@method", "@authority"] } else { &["@method", "@path", "@query"] };
    let mut components: Vec<ComponentId> = derived.iter().map(|c| ComponentId::new(c)).collect();
    components.extend(COVERED_IF_PRESENT.iter().filter(|f| request.has(f)).map(|f| ComponentId::new(f)));
    components
}

/// `created`, `expires`, `nonce`, `tag`, `wimse-aud`: made 5 seconds ago for a minute.
pub(crate) fn request_params(label: &str) -> Vec<(String, Param)> {
    vec![
        ("created".into(), Param::Int(NOW - 5)),
        ("expires".into(), Param::Int(NOW + 55)),
        ("nonce".into(), Param::Str(fixed_id(&format!("nonce {label}")))),
        ("tag".into(), Param::Str(TAG.into())),
        ("wimse-aud".into(), Param::Str(AUDIENCE.into())),
    ]
}

fn param_set(params: &mut Vec<(String, Param)>, name: &str, value: Option<Param>) {
    params.retain(|(n, _)| n != name);
    if let Some(value) = value {
        params.push((name.into(), value));
    }
}

/// A WIMSE request signature labelled `wimse` with the profile's components and parameters.
pub(crate) fn wimse_signature(request: &Request, label: &str) -> Signature {
    Signature { label: "wimse".into(), components: profile_components(request), params: request_params(label) }
}

struct Build<'k> {
    keys: &'k Keys,
    wit: String,
    batch_wit: String,
}

impl Build<'_> {
    fn post(&self) -> Request {
        Request::new("POST", "/entries", HOST)
            .with_body("application/json", BODY)
            .with("Workload-Identity-Token", &self.wit)
    }

    fn get(&self, target: &str) -> Request {
        Request::new("GET", target, HOST).with("Workload-Identity-Token", &self.wit)
    }

    fn connect(&self) -> Request {
        Request::new("CONNECT", CONNECT_TARGET, CONNECT_TARGET).with("Workload-Identity-Token", &self.wit)
    }

    /// `request` signed by the client with `signature` changed by `edit`.
    fn signed(&self, request: Request, label: &str, edit: impl FnOnce(&mut Signature)) -> (Request, Signed) {
        let mut signature = wimse_signature(&request, label);
        edit(&mut signature);
        let signed = signature.sign_request(&request, &self.keys.client_es256);
        (request.with_signatures(&[&signed]), signed)
    }
}

fn case(
    id: &'static str,
    description: &'static str,
    expect: &'static str,
    (request, signed): (Request, Signed),
) -> Case {
    Case { id, description, expect, request: Some(request.raw()), signature_base: Some(signed.base), ..Case::default() }
}

pub(crate) fn suite(keys: &Keys) -> String {
    let k = keys;
    let b = Build {
        keys,
        wit: wit(&k.issuer_es256, &wit_claims(CLIENT, &k.client_es256, "wit-client")),
        batch_wit: wit(&k.issuer_eddsa, &wit_claims(BATCH, &k.client_eddsa, "wit-batch")),
    };
    let txn = txn_token(&k.tts_es256, Some("txntoken+jwt"), &txn_claims("txn-sig"));
    let mut cases = Vec::new();

    // ---- valid ----
    cases.push(case(
        "post-with-body",
        "POST with a JSON body: covers @method, @path, @query, content-type, content-digest, workload-identity-token",
        VALID,
        b.signed(b.post(), "post-with-body", |_| {}),
    ));
    cases.push(case(
        "get-with-query",
        "GET without a body, with a query",
        VALID,
        b.signed(b.get("/entries?account=42&limit=10"), "get-with-query", |_| {}),
    ));
    cases.push(case(
        "get-without-query",
        "GET without a query: `@query` is `?`",
        VALID,
        b.signed(b.get("/balance"), "get-without-query", |_| {}),
    ));
    cases.push(case(
        "connect-default-port",
        "CONNECT ledger.vectors.example:443 covers @method and @authority; the authority-form target keeps its port, default or not: `\"@authority\": ledger.vectors.example:443`",
        VALID,
        b.signed(b.connect(), "connect", |_| {}),
    ));
    {
        let request = Request::new("GET", "/balance", HOST).with("Workload-Identity-Token", &b.batch_wit);
        let signed = wimse_signature(&request, "eddsa").sign_request(&request, &k.client_eddsa);
        cases.push(case(
            "eddsa-key",
            "signed with an Ed25519 workload key (its WIT's cnf.jwk.alg is EdDSA)",
            VALID,
            (request.with_signatures(&[&signed]), signed),
        ));
    }
    cases.push(case(
        "txn-token-covered",
        "a Txn-Token field, covered",
        VALID,
        b.signed(b.get("/balance").with("Txn-Token", &txn), "txn-token", |_| {}),
    ));
    cases.push(case(
        "sign-response-requested",
        "asks for a signed response with the Boolean `wimse-sign-response`",
        VALID,
        b.signed(b.post(), "sign-response", |s| s.params.push(("wimse-sign-response".into(), Param::True))),
    ));
    cases.push(case(
        "label-not-wimse",
        "the WIMSE signature is labelled `sig1`: it is found by its tag, never by its label",
        VALID,
        b.signed(b.get("/balance"), "label-sig1", |s| s.label = "sig1".into()),
    ));
    {
        let request = b.post();
        let ours = wimse_signature(&request, "beside-proxy").sign_request(&request, &k.client_es256);
        let proxy = proxy_signature(&request, "proxy", "example-proxy-hop", &k.rogue_es256);
        cases.push(case(
            "beside-a-proxy-signature",
            "a proxy added its own signature (tag `example-proxy-hop`, with `keyid`): it is skipped, never interpreted",
            VALID,
            (request.with_signatures(&[&proxy, &ours]), ours),
        ));
    }
    cases.push(case(
        "expired-within-leeway",
        "`expires` passed 29 seconds ago, inside the 30-second leeway",
        VALID,
        b.signed(b.get("/balance"), "leeway", |s| {
            param_set(&mut s.params, "created", Some(Param::Int(NOW - 89)));
            param_set(&mut s.params, "expires", Some(Param::Int(NOW - 29)));
            move_to_front(&mut s.params, &["created", "expires"]);
        }),
    ));

    // ---- parameters ----
    for (id, name, value, description) in [
        ("forbidden-alg", "alg", "ecdsa-p256-sha256", "carries `alg`, which the profile forbids"),
        ("forbidden-keyid", "keyid", "client", "carries `keyid`, which the profile forbids"),
    ] {
        cases.push(case(
            id,
            description,
            reason(ForbiddenSignatureParameter),
            b.signed(b.post(), id, |s| s.params.push((name.into(), Param::Str(value.into())))),
        ));
    }
    for (id, name, description) in [
        ("missing-created", "created", "no `created`"),
        ("missing-expires", "expires", "no `expires`"),
        ("missing-nonce", "nonce", "no `nonce`"),
        ("missing-wimse-aud", "wimse-aud", "no `wimse-aud` (required on requests)"),
        (
            "missing-tag",
            "tag",
            "the only signature has no `tag`: no WIMSE signature, and the reason says what it lacks",
        ),
    ] {
        cases.push(case(
            id,
            description,
            reason(MissingSignatureParameter),
            b.signed(b.post(), id, |s| param_set(&mut s.params, name, None)),
        ));
    }
    cases.push(case(
        "wrong-tag",
        "the only signature is tagged `example-proxy-hop`: no WIMSE signature",
        reason(SignatureWrongTag),
        b.signed(b.post(), "wrong-tag", |s| {
            param_set(&mut s.params, "tag", Some(Param::Str("example-proxy-hop".into())))
        }),
    ));
    {
        let request = b.post();
        let first = proxy_signature(&request, "proxy", "example-proxy-hop", &k.rogue_es256);
        let second = proxy_signature(&request, "wimse", "example-origin-hop", &k.client_es256);
        cases.push(case(
            "no-wimse-signature",
            "two signatures, tagged `example-proxy-hop` and `example-origin-hop` (one labelled `wimse`): none is a WIMSE signature",
            reason(NoWimseSignature),
            (request.with_signatures(&[&first, &second]), second),
        ));
    }
    {
        let request = b.post();
        let ours = wimse_signature(&request, "two-1").sign_request(&request, &k.client_es256);
        let mut other = wimse_signature(&request, "two-2");
        other.label = "second".into();
        let other = other.sign_request(&request, &k.rogue_es256);
        cases.push(case(
            "two-wimse-signatures",
            "two signatures tagged `wimse-workload-to-workload`: refused rather than one picked",
            reason(AmbiguousWimseSignature),
            (request.with_signatures(&[&ours, &other]), ours),
        ));
    }
    {
        let request = b.post();
        let first = wimse_signature(&request, "dup-1").sign_request(&request, &k.client_es256);
        let second = wimse_signature(&request, "dup-2").sign_request(&request, &k.client_es256);
        cases.push(case(
            "duplicate-label",
            "two `Signature-Input` members labelled `wimse`",
            reason(SignatureMalformed),
            (request.with_signatures(&[&first, &second]), first),
        ));
    }

    // ---- coverage ----
    for (id, component, description) in [
        ("content-digest-not-covered", "content-digest", "Content-Digest is present but not covered"),
        ("wit-not-covered", "workload-identity-token", "the Workload-Identity-Token field is not covered"),
        ("query-not-covered", "@query", "`@query` is not covered"),
    ] {
        cases.push(case(
            id,
            description,
            reason(MissingCoveredComponent),
            b.signed(b.post(), id, |s| s.components.retain(|c| c.name != component)),
        ));
    }
    cases.push(case(
        "txn-token-not-covered",
        "a Txn-Token field is present but not covered",
        reason(MissingCoveredComponent),
        b.signed(b.get("/balance").with("Txn-Token", &txn), "txn-not-covered", |s| {
            s.components.retain(|c| c.name != "txn-token")
        }),
    ));
    {
        let mut request = b.post();
        request.remove("Content-Digest");
        cases.push(case(
            "body-without-content-digest",
            "a body without Content-Digest (the signature itself is valid)",
            reason(MissingCoveredComponent),
            b.signed(request, "no-digest", |_| {}),
        ));
    }
    cases.push(case(
        "connect-covers-path",
        "a CONNECT signature that covers `@path`",
        reason(ForbiddenComponent),
        b.signed(b.connect(), "connect-path", |s| s.components.insert(2, ComponentId::new("@path"))),
    ));
    {
        let request = b.connect();
        let signed =
            wimse_signature(&request, "connect-no-port").sign_request_as(&request, Some(HOST), &k.client_es256);
        cases.push(case(
            "connect-port-dropped",
            "the signer dropped the default port from a CONNECT's @authority (`ledger.vectors.example`); the target is `ledger.vectors.example:443`",
            reason(InvalidHttpSignature),
            (request.with_signatures(&[&signed]), signed),
        ));
    }

    // ---- content, routing, keys ----
    {
        let (mut request, signed) = b.signed(b.post(), "tampered", |_| {});
        request.replace_body("{\"account\":\"42\",\"amount\":\"1250.00\",\"currency\":\"EUR\"}");
        cases.push(case(
            "body-tampered",
            "the body no longer matches the covered Content-Digest",
            reason(ContentDigestMismatch),
            (request, signed),
        ));
    }
    {
        let (mut request, signed) = b.signed(b.get("/entries?account=42"), "rerouted", |_| {});
        request.target = "/entries/archive?account=42".into();
        cases.push(case(
            "path-changed",
            "an intermediary changed the path after signing",
            reason(InvalidHttpSignature),
            (request, signed),
        ));
    }
    {
        let request = b.post();
        let signed = wimse_signature(&request, "wrong-key").sign_request(&request, &k.rogue_es256);
        cases.push(case(
            "wrong-key",
            "signed by a key other than the WIT's cnf.jwk",
            reason(InvalidHttpSignature),
            (request.with_signatures(&[&signed]), signed),
        ));
    }
    cases.push(case(
        "audience-mismatch",
        "`wimse-aud` names another service",
        reason(AudienceMismatch),
        b.signed(b.post(), "aud", |s| {
            param_set(&mut s.params, "wimse-aud", Some(Param::Str("https://billing.vectors.example".into())))
        }),
    ));

    // ---- time ----
    let timed = |id: &'static str, created: u64, expires: u64| {
        b.signed(b.get("/balance"), id, |s| {
            param_set(&mut s.params, "created", Some(Param::Int(created)));
            param_set(&mut s.params, "expires", Some(Param::Int(expires)));
            move_to_front(&mut s.params, &["created", "expires"]);
        })
    };
    cases.push(case(
        "created-in-future",
        "`created` is 31 seconds ahead",
        reason(SignatureCreatedInFuture),
        timed("future", NOW + 31, NOW + 91),
    ));
    cases.push(case(
        "expired",
        "`expires` passed 30 seconds ago: the leeway is used up",
        reason(SignatureExpired),
        timed("expired", NOW - 90, NOW - 30),
    ));
    cases.push(case(
        "lifetime-too-long",
        "`expires` - `created` is 301 seconds",
        reason(SignatureLifetimeTooLong),
        timed("long", NOW - 5, NOW + 296),
    ));
    {
        let mut claims = wit_claims(CLIENT, &k.client_es256, "wit-expired");
        set(&mut claims, "exp", serde_json::json!(NOW - LEEWAY));
        let request =
            Request::new("GET", "/balance", HOST).with("Workload-Identity-Token", &wit(&k.issuer_es256, &claims));
        let signed = wimse_signature(&request, "wit-expired").sign_request(&request, &k.client_es256);
        cases.push(case(
            "wit-expired",
            "a valid signature, but the WIT expired: the WIT is validated first",
            reason(ExpiredWit),
            (request.with_signatures(&[&signed]), signed),
        ));
    }
    cases.push(Case {
        deliveries: Some(2),
        ..case(
            "replayed",
            "the same signed request delivered twice: the second carries a nonce already seen",
            reason(ReplayedProof),
            b.signed(b.post(), "replayed", |_| {}),
        )
    });

    let anchors = BTreeMap::from([(TRUST_DOMAIN, vec![k.issuer_es256.name, k.issuer_eddsa.name])]);
    Suite {
        format: FORMAT,
        suite: "http-signature-requests",
        title: "Requests signed with HTTP Message Signatures (RFC 9421) as the WIMSE profile requires",
        drafts: vec![wimse_core::draft::revisions::HTTP_SIGNATURE, wimse_core::draft::revisions::WORKLOAD_CREDS],
        generated_by: GENERATED_BY,
        procedure: vec![
            "Parse `request` as an HTTP/1.1 request (CRLF line ends; the body is Content-Length bytes).",
            "Validate the WIT in `Workload-Identity-Token` as in the wpt suite, before the signature.",
            "Find the one signature whose `tag` is `wimse-workload-to-workload` (never by label); skip the others uninterpreted. None: the only signature lacks `tag` -> missing_parameter, has another tag -> wrong_tag, several without it -> no_wimse_signature. Two -> ambiguous_wimse_signature. A repeated label is malformed.",
            "Parameters: no `alg`, no `keyid`; `created`, `expires`, `nonce`, `tag`, `wimse-aud` present; created <= now + leeway; now < expires + leeway; now - created <= max_signature_age + leeway; 0 <= expires - created <= max_signature_lifetime.",
            "Coverage: `@method`, `@path`, `@query` (CONNECT: `@method`, `@authority`, and never `@path`/`@query`), plus each of content-type, content-digest, authorization, txn-token, workload-identity-token that is present.",
            "`wimse-aud` is one of `verifier.audiences`, byte-exact.",
            "Rebuild the signature base (RFC 9421 §2.5; see `verifier.derived_components`) and verify it with the WIT's cnf.jwk and cnf.jwk.alg (ECDSA: r || s, 64 bytes). `signature_base` is what the signer signed.",
            "A body needs a Content-Digest (sha-256 or sha-512, RFC 9530) that matches it.",
            "Replay: claim the nonce in a cache that is empty at the start of each case; a nonce seen twice is refused, whoever sends it.",
        ],
        keys: [&k.issuer_es256, &k.issuer_eddsa, &k.client_es256, &k.client_eddsa, &k.tts_es256, &k.rogue_es256]
            .into_iter()
            .map(Key::entry)
            .collect(),
        verifier: Verifier {
            now: NOW,
            trust_anchors: anchors,
            audiences: vec![AUDIENCE],
            leeway: LEEWAY,
            max_wit_lifetime: MAX_WIT_LIFETIME,
            max_signature_age: MAX_SIGNATURE_AGE,
            max_signature_lifetime: MAX_SIGNATURE_LIFETIME,
            derived_components: "scheme https; `@authority` of a CONNECT is its authority-form target as sent (lower case, port kept, default or not), otherwise the Host field (lower case, default port dropped); `@path` and `@query` from the origin-form target (`@query` is `?` when there is none)",
            replay: "one cache per case, empty at its start; key: the nonce alone",
        },
        cases,
    }
    .render()
}

/// Puts the named parameters first, in the order given (a replaced parameter went last).
fn move_to_front(params: &mut Vec<(String, Param)>, names: &[&str]) {
    for name in names.iter().rev() {
        if let Some(i) = params.iter().position(|(n, _)| n == name) {
            let entry = params.remove(i);
            params.insert(0, entry);
        }
    }
}

/// A signature someone else (a proxy) adds: its own tag, a `keyid`, other components.
pub(crate) fn proxy_signature(request: &Request, label: &str, tag: &str, key: &Key) -> Signed {
    Signature {
        label: label.into(),
        components: vec![ComponentId::new("@method"), ComponentId::new("@path")],
        params: vec![
            ("created".into(), Param::Int(NOW - 4)),
            ("keyid".into(), Param::Str(format!("{tag}-key"))),
            ("tag".into(), Param::Str(tag.into())),
        ],
    }
    .sign_request(request, key)
}
