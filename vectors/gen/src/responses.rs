//! Suite `http-signature-responses`: signed responses bound to their request by
//! `wimse-req-nonce` (http-signature-08), as the client that sent the request checks them.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::json;
use wimse_core::ErrorKind::*;
use wimse_core::protocol::httpsig::ComponentId;

use crate::jwt::{fixed_id, set};
use crate::keys::{Key, Keys};
use crate::message::{Param, Request, Response, Signature, Signed};
use crate::signatures::{CONNECT_TARGET, COVERED_IF_PRESENT, HOST, TAG, wimse_signature};
use crate::suite::*;

const BODY: &str = "{\"entry\":\"e-9041\",\"status\":\"booked\"}";

#[derive(Debug, Serialize)]
struct Verifier {
    now: u64,
    trust_anchors: BTreeMap<&'static str, Vec<&'static str>>,
    expected_server: &'static str,
    leeway: u64,
    max_wit_lifetime: u64,
    max_signature_age: u64,
    max_signature_lifetime: u64,
    derived_components: &'static str,
}

/// What a response signature covers: `@status`, the request's `@method`, `@path`, `@query`
/// (CONNECT: `@method`, `@authority`) with `;req`, and the response's content fields and WIT.
fn profile_components(request: &Request, response: &Response) -> Vec<ComponentId> {
    let from_request: &[&str] =
        if request.method == "CONNECT" { &["@method", "@authority"] } else { &["@method", "@path", "@query"] };
    let mut components = vec![ComponentId::new("@status")];
    components.extend(from_request.iter().map(|c| ComponentId::req(c)));
    components.extend(
        COVERED_IF_PRESENT
            .iter()
            .filter(|f| !matches!(**f, "authorization" | "txn-token") && response.has(f))
            .map(|f| ComponentId::new(f)),
    );
    components
}

/// The responder's signature: made 2 seconds ago for a minute, bound to `request_nonce`.
fn response_signature(request: &Request, response: &Response, label: &str, request_nonce: &str) -> Signature {
    Signature {
        label: "wimse".into(),
        components: profile_components(request, response),
        params: vec![
            ("created".into(), Param::Int(NOW - 2)),
            ("expires".into(), Param::Int(NOW + 58)),
            ("nonce".into(), Param::Str(fixed_id(&format!("nonce response {label}")))),
            ("tag".into(), Param::Str(TAG.into())),
            ("wimse-req-nonce".into(), Param::Str(request_nonce.into())),
        ],
    }
}

/// A signed request (asking for a signed response) and its nonce.
struct SentRequest {
    request: Request,
    nonce: String,
}

fn sent(request: Request, label: &str, key: &Key) -> SentRequest {
    let mut signature = wimse_signature(&request, label);
    signature.params.push(("wimse-sign-response".into(), Param::True));
    let nonce = fixed_id(&format!("nonce {label}"));
    let signed = signature.sign_request(&request, key);
    SentRequest { request: request.with_signatures(&[&signed]), nonce }
}

fn case(
    id: &'static str,
    description: &'static str,
    expect: &'static str,
    sent: &SentRequest,
    response: (Response, Signed),
) -> Case {
    Case {
        id,
        description,
        expect,
        request: Some(sent.request.raw()),
        request_nonce: Some(sent.nonce.clone()),
        response: Some(response.0.raw()),
        signature_base: Some(response.1.base),
        ..Case::default()
    }
}

struct Build<'k> {
    keys: &'k Keys,
    server_wit: String,
}

impl Build<'_> {
    fn ok(&self) -> Response {
        Response::new(200).with_body("application/json", BODY).with("Workload-Identity-Token", &self.server_wit)
    }

    /// `response` to `sent` signed by the ledger, its signature changed by `edit`.
    fn signed(
        &self,
        sent: &SentRequest,
        response: Response,
        label: &str,
        edit: impl FnOnce(&mut Signature),
    ) -> (Response, Signed) {
        let mut signature = response_signature(&sent.request, &response, label, &sent.nonce);
        edit(&mut signature);
        let signed = signature.sign_response(&sent.request, &response, &self.keys.server_es256);
        (response.with_signatures(&[&signed]), signed)
    }
}

pub(crate) fn suite(keys: &Keys) -> String {
    let k = keys;
    let b = Build { keys, server_wit: wit(&k.issuer_es256, &wit_claims(LEDGER, &k.server_es256, "wit-ledger")) };
    let client_wit = wit(&k.issuer_es256, &wit_claims(CLIENT, &k.client_es256, "wit-client"));
    let post = sent(
        Request::new("POST", "/entries", HOST)
            .with_body("application/json", "{\"account\":\"42\",\"amount\":\"12.50\",\"currency\":\"EUR\"}")
            .with("Workload-Identity-Token", &client_wit),
        "request post",
        &k.client_es256,
    );
    let get = sent(
        Request::new("GET", "/entries?account=42&limit=10", HOST).with("Workload-Identity-Token", &client_wit),
        "request get",
        &k.client_es256,
    );
    let connect = sent(
        Request::new("CONNECT", CONNECT_TARGET, CONNECT_TARGET).with("Workload-Identity-Token", &client_wit),
        "request connect",
        &k.client_es256,
    );
    let mut cases = Vec::new();

    // ---- valid ----
    cases.push(case(
        "ok-with-body",
        "200 with a JSON body: covers @status, @method;req, @path;req, @query;req, content-type, content-digest, workload-identity-token; `wimse-req-nonce` is the request's nonce",
        VALID,
        &post,
        b.signed(&post, b.ok(), "ok", |_| {}),
    ));
    cases.push(case(
        "no-content",
        "204 without a body",
        VALID,
        &post,
        b.signed(&post, Response::new(204).with("Workload-Identity-Token", &b.server_wit), "no-content", |_| {}),
    ));
    cases.push(case(
        "request-with-query",
        "the response to a GET with a query covers `\"@query\";req: ?account=42&limit=10`",
        VALID,
        &get,
        b.signed(&get, b.ok(), "get", |_| {}),
    ));
    cases.push(case(
        "connect",
        "the response to CONNECT ledger.vectors.example:443 covers @method;req and `\"@authority\";req: ledger.vectors.example:443`",
        VALID,
        &connect,
        b.signed(&connect, Response::new(200).with("Workload-Identity-Token", &b.server_wit), "connect", |_| {}),
    ));

    // ---- negative ----
    cases.push(case(
        "request-nonce-mismatch",
        "`wimse-req-nonce` is the nonce of another request",
        reason(RequestNonceMismatch),
        &post,
        b.signed(&post, b.ok(), "nonce-mismatch", |s| {
            s.params.retain(|(n, _)| n != "wimse-req-nonce");
            s.params.push(("wimse-req-nonce".into(), Param::Str(get.nonce.clone())));
        }),
    ));
    cases.push(case(
        "request-nonce-missing",
        "no `wimse-req-nonce`",
        reason(MissingSignatureParameter),
        &post,
        b.signed(&post, b.ok(), "nonce-missing", |s| s.params.retain(|(n, _)| n != "wimse-req-nonce")),
    ));
    cases.push(case(
        "wimse-aud-on-response",
        "`wimse-aud`, forbidden on responses",
        reason(ForbiddenSignatureParameter),
        &post,
        b.signed(&post, b.ok(), "aud", |s| {
            s.params.push(("wimse-aud".into(), Param::Str("https://client.vectors.example".into())))
        }),
    ));
    cases.push(case(
        "status-not-covered",
        "`@status` is not covered",
        reason(MissingCoveredComponent),
        &post,
        b.signed(&post, b.ok(), "no-status", |s| s.components.retain(|c| c.name != "@status")),
    ));
    cases.push(case(
        "request-path-not-covered",
        "`@path;req` is not covered",
        reason(MissingCoveredComponent),
        &post,
        b.signed(&post, b.ok(), "no-path", |s| s.components.retain(|c| c.name != "@path")),
    ));
    {
        let (mut response, signed) = b.signed(&post, b.ok(), "status", |_| {});
        response.status = 500;
        cases.push(case(
            "status-changed",
            "signed as 200, delivered as 500",
            reason(InvalidHttpSignature),
            &post,
            (response, signed),
        ));
    }
    {
        let (mut response, signed) = b.signed(&post, b.ok(), "tampered", |_| {});
        response.replace_body("{\"entry\":\"e-9041\",\"status\":\"rejected\"}");
        cases.push(case(
            "body-tampered",
            "the body no longer matches the covered Content-Digest",
            reason(ContentDigestMismatch),
            &post,
            (response, signed),
        ));
    }
    {
        let response = b.ok();
        let signed = response_signature(&post.request, &response, "wrong-key", &post.nonce).sign_response(
            &post.request,
            &response,
            &k.rogue_es256,
        );
        cases.push(case(
            "wrong-key",
            "signed by a key other than the responder WIT's cnf.jwk",
            reason(InvalidHttpSignature),
            &post,
            (response.with_signatures(&[&signed]), signed),
        ));
    }
    {
        let response = Response::new(200).with("Workload-Identity-Token", &b.server_wit);
        let signed = response_signature(&connect.request, &response, "connect-no-port", &connect.nonce)
            .sign_response_as(&connect.request, Some(HOST), &response, &k.server_es256);
        cases.push(case(
            "connect-port-dropped",
            "the responder dropped the default port from the CONNECT's @authority;req",
            reason(InvalidHttpSignature),
            &connect,
            (response.with_signatures(&[&signed]), signed),
        ));
    }
    {
        let mallory_wit =
            wit(&k.issuer_es256, &wit_claims("spiffe://vectors.example/mallory", &k.rogue_es256, "wit-mallory"));
        let response =
            Response::new(200).with_body("application/json", BODY).with("Workload-Identity-Token", &mallory_wit);
        let signed = response_signature(&post.request, &response, "mallory", &post.nonce).sign_response(
            &post.request,
            &response,
            &k.rogue_es256,
        );
        cases.push(case(
            "unexpected-server",
            "a valid signed response from spiffe://vectors.example/mallory, not the expected server",
            reason(UnexpectedPeer),
            &post,
            (response.with_signatures(&[&signed]), signed),
        ));
    }
    {
        let mut claims = wit_claims(LEDGER, &k.server_es256, "wit-ledger-expired");
        set(&mut claims, "exp", json!(NOW - LEEWAY));
        let response = Response::new(200)
            .with_body("application/json", BODY)
            .with("Workload-Identity-Token", &wit(&k.issuer_es256, &claims));
        let signed = response_signature(&post.request, &response, "server-wit-expired", &post.nonce).sign_response(
            &post.request,
            &response,
            &k.server_es256,
        );
        cases.push(case(
            "server-wit-expired",
            "the responder's WIT expired",
            reason(ExpiredWit),
            &post,
            (response.with_signatures(&[&signed]), signed),
        ));
    }
    cases.push(case(
        "expired",
        "`expires` passed 30 seconds ago",
        reason(SignatureExpired),
        &post,
        b.signed(&post, b.ok(), "expired", |s| {
            s.params[0].1 = Param::Int(NOW - 90);
            s.params[1].1 = Param::Int(NOW - 30);
        }),
    ));

    let anchors = BTreeMap::from([(TRUST_DOMAIN, vec![k.issuer_es256.name])]);
    Suite {
        format: FORMAT,
        suite: "http-signature-responses",
        title: "Signed responses, checked by the client that sent the signed request",
        drafts: vec![wimse_core::draft::revisions::HTTP_SIGNATURE, wimse_core::draft::revisions::WORKLOAD_CREDS],
        generated_by: GENERATED_BY,
        procedure: vec![
            "Parse `request` (the signed request as sent) and `response` as HTTP/1.1 messages.",
            "Validate the responder's WIT in the response's `Workload-Identity-Token` as in the wpt suite; its `sub` must be `verifier.expected_server`.",
            "Find the response's one signature tagged `wimse-workload-to-workload`. Parameters: no `alg`, `keyid`, `wimse-aud` or `wimse-sign-response`; `created`, `expires`, `nonce`, `tag`, `wimse-req-nonce` present; times as for requests.",
            "Coverage: `@status`, the request's `@method`, `@path`, `@query` with `;req` (CONNECT: `@method`, `@authority`), plus content-type, content-digest, workload-identity-token when present.",
            "`wimse-req-nonce` is `request_nonce`, the nonce of the request's signature.",
            "Rebuild the signature base (components with `;req` from `request`) and verify it with the responder WIT's cnf.jwk; `signature_base` is what the responder signed.",
            "A body needs a matching Content-Digest.",
        ],
        keys: [&k.issuer_es256, &k.client_es256, &k.server_es256, &k.rogue_es256].into_iter().map(Key::entry).collect(),
        verifier: Verifier {
            now: NOW,
            trust_anchors: anchors,
            expected_server: LEDGER,
            leeway: LEEWAY,
            max_wit_lifetime: MAX_WIT_LIFETIME,
            max_signature_age: 300,
            max_signature_lifetime: 300,
            derived_components: "as in the http-signature-requests suite, read from `request` for components with `;req`",
        },
        cases,
    }
    .render()
}
