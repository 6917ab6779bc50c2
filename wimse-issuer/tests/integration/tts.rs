//! The identity server as the Transaction Token Service, on loopback: workloads authenticate
//! with WIT + WPT, exchange a user's access token (or a token of their own, or a Txn-Token to
//! narrow) for a Txn-Token; every refusal is distinct.

use std::sync::Arc;

use wimse_core::time::FixedClock;

use serde_json::{Value, json};
use tokio::net::TcpListener;
use wimse_core::jose::{Backend, jws};
use wimse_core::prelude::*;
use wimse_core::protocol::txn::TxnActor;
use wimse_core::protocol::txn::{TxnTokenValidation, VerifiedTxnToken, validate};
use wimse_issuer::{IdentityServer, IssuerConfig};
use wimse_reqwest::{Bootstrap, IssuerCredentials, TxnTokenRequest, TxnTokenService, self_signed_subject};

const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

const FRONT: &str = "spiffe://prod.example/front";
const ORDERS: &str = "spiffe://prod.example/orders";
const INTRUDER: &str = "spiffe://prod.example/intruder";
/// Agents acting for users (`actor: true`).
const AGENT: &str = "spiffe://prod.example/agents/planner";
const SUBAGENT: &str = "spiffe://prod.example/agents/booker";
const THIRD: &str = "spiffe://prod.example/agents/payer";
const IDP: &str = "https://idp.prod.example";
const API: &str = "https://api.prod.example";

fn now() -> u64 {
    wimse_testkit::now()
}

fn secret(id: &str) -> String {
    format!("dev-secret-for:{id}")
}

struct Setup {
    base: String,
    server: Arc<IdentityServer>,
    idp: SigningKey,
    domain: TrustDomain,
    /// What risk signals disabled (none unless a test says so).
    revocations: wimse_core::server::signals::Revocations,
    /// The server's audit log.
    audit: std::path::PathBuf,
}

impl Setup {
    async fn start() -> Self {
        let idp = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("idp-1");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("wimse-tts-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let clients: Vec<Value> = [FRONT, ORDERS, INTRUDER, AGENT, SUBAGENT, THIRD]
            .iter()
            .map(|id| json!({"name": id, "dev_secret": secret(id), "allowed": [id], "max_lifetime": 600}))
            .collect();
        let audit_key = SigningKey::generate(Algorithm::ES256).unwrap();
        std::fs::write(dir.join("audit.jwk"), serde_json::to_string(&audit_key.to_private_jwk()).unwrap()).unwrap();
        let audit = dir.join("issuer.audit.jsonl");
        let config: IssuerConfig = serde_json::from_value(json!({
            "trust_domain": "spiffe://prod.example",
            "audit": {"file": audit, "service": "spiffe://prod.example/issuer", "key": dir.join("audit.jwk")},
            "issuer": "https://issuer.prod.example",
            "key_store": dir.join("keys.json"),
            "dev_mode": true,
            "token_endpoint": format!("{base}/v1/token"),
            "clients": clients,
            "txn_tokens": {
                "lifetime": 120,
                "subject_issuers": [{"name": "users", "kind": "access-token", "issuer": IDP, "audience": API,
                                     "jwks": {"keys": [idp.public_jwk()]}, "subject_prefix": "users:"}],
                "named_subject_prefix": "internal:",
                "requesters": [
                    {"workloads": [FRONT], "scopes": ["orders.purchase", "orders.read", "orders.admin"],
                     "subject_token_types": ["access_token"], "subject_issuers": ["users"]},
                    {"workloads": [ORDERS], "scopes": ["orders.read"], "subject_token_types": ["txn_token", "self_signed"]},
                    {"workloads": [AGENT], "scopes": ["orders.purchase", "orders.read"], "actor": true,
                     "subject_token_types": ["access_token"], "subject_issuers": ["users"]},
                    {"workloads": [SUBAGENT, THIRD], "scopes": ["orders.purchase", "orders.read"], "actor": true,
                     "subject_token_types": ["txn_token"]}
                ],
                "max_actors": 2
            }
        }))
        .unwrap();
        let revocations = wimse_core::server::signals::Revocations::new();
        let server =
            Arc::new(IdentityServer::open(config, SystemClock).await.unwrap().revocations(revocations.clone()));
        let app = wimse_issuer::router(server.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, server, idp, domain: "spiffe://prod.example".parse().unwrap(), revocations, audit }
    }

    async fn signer(&self, id: &str) -> Signer {
        Signer::new(IssuerCredentials::connect(&self.base, id, Bootstrap::Token(secret(id))).await.unwrap())
    }

    async fn tts(&self, id: &str) -> TxnTokenService {
        TxnTokenService::new(self.signer(id).await, format!("{}/v1/token", self.base), &self.domain).unwrap()
    }

    /// A user's access token from the IdP (RFC 9068).
    fn access_token(&self, claims: Value) -> String {
        let mut base = json!({"iss": IDP, "sub": "user-1842", "aud": API, "scope": "orders.purchase orders.read",
                              "iat": now(), "exp": now() + 600, "client_id": "shop-web"});
        for (k, v) in claims.as_object().unwrap() {
            if v.is_null() {
                base.as_object_mut().unwrap().remove(k);
            } else {
                base[k] = v.clone();
            }
        }
        jws::sign("at+jwt", Some("idp-1"), &base, &self.idp, Backend::default()).unwrap()
    }

    fn check(&self, token: &str) -> VerifiedTxnToken {
        let keys = TrustStore::new().with(self.domain.clone(), self.server.anchors().unwrap());
        validate(token, &keys, &TxnTokenValidation::new(self.domain.clone()), now()).unwrap()
    }
}

impl Setup {
    /// The decisions in the audit log, once it holds `count` of them (its writer runs apart).
    async fn decisions(&self, count: usize) -> Vec<Value> {
        let started = std::time::Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.audit).unwrap_or_default();
            let decisions: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .filter(|r| r["kind"] == "decision")
                .collect();
            if decisions.len() >= count {
                return decisions;
            }
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "{decisions:?}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

fn kind<T: std::fmt::Debug>(result: Result<T, Error>) -> ErrorKind {
    result.expect_err("issued").into_kind()
}

#[tokio::test]
async fn txn_tokens_for_users_at_the_edge() {
    let s = Setup::start().await;
    let front = s.tts(FRONT).await;
    let request = TxnTokenRequest::for_access_token(s.access_token(json!({})), "orders.purchase")
        .request_details(json!({"action": "purchase", "order": "7d1f"}))
        .request_context(json!({"channel": "web"}));
    let issued = front.request(&request).await.unwrap();
    let txn = s.check(&issued.token);
    assert_eq!(txn.subject(), "users:user-1842", "the issuer's subjects are kept apart");
    assert_eq!(txn.scope(), "orders.purchase");
    assert_eq!(txn.requesting_workloads(), [FRONT.to_owned()]);
    assert_eq!(txn.transaction_context().unwrap()["order"], "7d1f");
    assert_eq!(txn.request_context().unwrap()["channel"], "web");
    // What vouched for the subject, asserted by the TTS over anything the requester sends.
    assert_eq!(txn.request_context().unwrap()["subject_token_type"], "urn:ietf:params:oauth:token-type:access_token");
    assert_eq!(txn.request_context().unwrap()["subject_issuer"], "users");
    let spoofed = front
        .request(
            &TxnTokenRequest::for_access_token(s.access_token(json!({})), "orders.read")
                .request_context(json!({"subject_token_type": "forged", "subject_issuer": "forged"})),
        )
        .await
        .unwrap();
    assert_eq!(s.check(&spoofed.token).request_context().unwrap()["subject_issuer"], "users");
    assert_eq!(txn.issuer(), Some("https://issuer.prod.example"));
    assert!(issued.expires_in <= 120 && issued.expires_in > 100, "{}", issued.expires_in);
    let user_token = s.access_token(json!({}));
    let user_signature = user_token.rsplit('.').next().unwrap();
    assert!(!issued.token.contains(user_signature), "the access token is not embedded");
    // Each transaction gets its own id.
    let again =
        front.request(&TxnTokenRequest::for_access_token(s.access_token(json!({})), "orders.read")).await.unwrap();
    assert_ne!(s.check(&again.token).txn(), txn.txn());
    // Never outlives the user's access token.
    let short = s.access_token(json!({"exp": now() + 30}));
    let brief = front.request(&TxnTokenRequest::for_access_token(short, "orders.read")).await.unwrap();
    assert!(brief.expires_in <= 30);
}

#[tokio::test]
async fn refusals_are_distinct() {
    let s = Setup::start().await;
    let front = s.tts(FRONT).await;
    let user = |claims: Value| s.access_token(claims);
    let ask = |token: String, scope: &str| TxnTokenRequest::for_access_token(token, scope);

    // A purpose this workload may not ask for.
    assert_eq!(kind(front.request(&ask(user(json!({})), "orders.refund")).await), ErrorKind::InvalidScope);
    // One it may ask for, but wider than the user's token.
    assert_eq!(kind(front.request(&ask(user(json!({})), "orders.admin")).await), ErrorKind::InvalidScope);
    // An access token whose scope is unknown bounds nothing.
    assert_eq!(kind(front.request(&ask(user(json!({"scope": null})), "orders.read")).await), ErrorKind::InvalidScope);
    // Invalid subject tokens.
    for bad in [
        user(json!({"exp": now() - 60})),
        user(json!({"aud": "https://other.example"})),
        user(json!({"iss": "https://evil.example"})),
        jws::sign(
            "at+jwt",
            Some("idp-1"),
            &json!({"iss": IDP, "sub": "u", "aud": API, "scope": "orders.read", "exp": now() + 60}),
            &SigningKey::generate(Algorithm::ES256).unwrap(),
            Backend::default(),
        )
        .unwrap(),
        jws::sign(
            "JWT",
            Some("idp-1"),
            &json!({"iss": IDP, "sub": "u", "aud": API, "scope": "orders.read", "exp": now() + 60}),
            &s.idp,
            Backend::default(),
        )
        .unwrap(),
        "not a token".to_owned(),
        "x".repeat(20_000),
    ] {
        assert_eq!(kind(front.request(&ask(bad, "orders.read")).await), ErrorKind::ExchangeRefused);
    }
    // Not a requester at all, and a type this requester may not present.
    let intruder = s.tts(INTRUDER).await;
    assert_eq!(kind(intruder.request(&ask(user(json!({})), "orders.read")).await), ErrorKind::IssuanceDenied);
    assert_eq!(
        kind(front.request(&TxnTokenRequest::unsigned("user-9", "orders.read")).await),
        ErrorKind::IssuanceDenied
    );
    // Refresh tokens are never subjects; unknown types neither.
    let refresh = TxnTokenRequest::new("r", "urn:ietf:params:oauth:token-type:refresh_token", "orders.read");
    assert_eq!(kind(front.request(&refresh).await), ErrorKind::ExchangeRefused);
    // Many invalid subject tokens (a user's garbage, passed on by the edge) do not get the
    // edge's address refused: only the requester's own failed authentications count.
    for _ in 0..15 {
        assert_eq!(kind(front.request(&ask("garbage".into(), "orders.read")).await), ErrorKind::ExchangeRefused);
    }
    assert!(front.request(&ask(user(json!({})), "orders.read")).await.is_ok());
    // Another trust domain's Txn-Token.
    let partner = TxnTokenService::new(
        s.signer(FRONT).await,
        format!("{}/v1/token", s.base),
        &"spiffe://partner.example".parse().unwrap(),
    )
    .unwrap();
    assert_eq!(kind(partner.request(&ask(user(json!({})), "orders.read")).await), ErrorKind::InvalidTarget);
}

#[tokio::test]
async fn the_requester_must_prove_its_wit() {
    let s = Setup::start().await;
    let endpoint = format!("{}/v1/token", s.base);
    let form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange".to_owned()),
        ("requested_token_type", "urn:ietf:params:oauth:token-type:txn_token".to_owned()),
        ("audience", "spiffe://prod.example".to_owned()),
        ("scope", "orders.read".to_owned()),
        ("subject_token", s.access_token(json!({}))),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token".to_owned()),
    ];
    let http = reqwest::Client::new();
    let anonymous = http.post(&endpoint).form(&form).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "WPT");
    let body = anonymous.json::<Value>().await.unwrap();
    assert_eq!(
        (&body["error"], &body["error_description"]),
        (&json!("invalid_client"), &json!(ErrorKind::MissingWit.description()))
    );
    // One proof, sent twice: the second is a replay.
    let signer = s.signer(FRONT).await;
    let mut headers = http::HeaderMap::new();
    signer.sign_headers(&mut headers, &endpoint).unwrap();
    let send = || http.post(&endpoint).headers(headers.clone()).form(&form).send();
    assert_eq!(send().await.unwrap().status(), 200);
    let replayed = send().await.unwrap();
    assert_eq!(replayed.status(), 401);
    let body = replayed.json::<Value>().await.unwrap();
    assert_eq!(
        (&body["error"], &body["error_description"]),
        (&json!("invalid_client"), &json!(ErrorKind::ReplayedProof.description()))
    );
    // A proof for another audience.
    let mut headers = http::HeaderMap::new();
    signer.sign_headers(&mut headers, "https://orders.prod.example/").unwrap();
    let wrong = http.post(&endpoint).headers(headers).form(&form).send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let body = wrong.json::<Value>().await.unwrap();
    assert_eq!(
        (&body["error"], &body["error_description"]),
        (&json!("invalid_client"), &json!(ErrorKind::AudienceMismatch.description()))
    );
}

#[tokio::test]
async fn replacement_and_internal_transactions() {
    let s = Setup::start().await;
    let front = s.tts(FRONT).await;
    let wide = front
        .request(&TxnTokenRequest::for_access_token(s.access_token(json!({})), "orders.purchase orders.read"))
        .await
        .unwrap();
    let original = s.check(&wide.token);
    let orders_signer = s.signer(ORDERS).await;
    let orders = TxnTokenService::new(orders_signer.clone(), format!("{}/v1/token", s.base), &s.domain).unwrap();
    // Narrowed by the next hop: same transaction and subject, the chain of requesters kept.
    let narrow = orders.request(&TxnTokenRequest::replacing(&wide.token, "orders.read")).await.unwrap();
    let replacement = s.check(&narrow.token);
    assert_eq!(
        (replacement.txn(), replacement.subject(), replacement.scope()),
        (original.txn(), "users:user-1842", "orders.read")
    );
    assert_eq!(replacement.requesting_workloads(), [FRONT.to_owned(), ORDERS.to_owned()]);
    assert!(replacement.expires_at() <= original.expires_at());
    // Never wider than the token replaced, nor than the requester's grant.
    let only_read = orders.request(&TxnTokenRequest::replacing(&narrow.token, "orders.read")).await.unwrap();
    assert_eq!(s.check(&only_read.token).scope(), "orders.read");
    let front_narrow = front
        .request(&TxnTokenRequest::for_access_token(
            s.access_token(json!({"scope": "orders.purchase"})),
            "orders.purchase",
        ))
        .await
        .unwrap();
    assert_eq!(
        kind(orders.request(&TxnTokenRequest::replacing(&front_narrow.token, "orders.read")).await),
        ErrorKind::InvalidScope
    );
    // A Txn-Token minted by a workload is no subject.
    let forged = jws::sign(
        "txntoken+jwt",
        None,
        &json!({"aud": "spiffe://prod.example", "iat": now(), "exp": now() + 60,
        "txn": "t", "sub": "admin", "scope": "orders.read", "req_wl": FRONT}),
        orders_signer.credentials().unwrap().key(),
        Backend::default(),
    )
    .unwrap();
    assert_eq!(
        kind(orders.request(&TxnTokenRequest::replacing(forged, "orders.read")).await),
        ErrorKind::ExchangeRefused
    );

    // A transaction orders starts itself (a batch job), with a self-signed subject token.
    let subject = self_signed_subject(&orders_signer, orders.endpoint(), "batch-job-7").unwrap();
    let batch = orders.request(&TxnTokenRequest::self_signed(subject, "orders.read")).await.unwrap();
    assert_eq!(s.check(&batch.token).subject(), "internal:batch-job-7", "never mistaken for a user");
    // The same in one call: the service signs the subject token when it sends the request.
    let one_call = orders.request(&TxnTokenRequest::self_signed_for("batch-job-7", "orders.read")).await.unwrap();
    assert_eq!(s.check(&one_call.token).subject(), "internal:batch-job-7");
    let elsewhere = self_signed_subject(&orders_signer, "https://other-tts.example/token", "batch-job-7").unwrap();
    assert_eq!(
        kind(orders.request(&TxnTokenRequest::self_signed(elsewhere, "orders.read")).await),
        ErrorKind::ExchangeRefused
    );
    // Signed by another workload's key: not this requester's.
    let front_signer = s.signer(FRONT).await;
    let theirs = self_signed_subject(&front_signer, orders.endpoint(), "batch-job-7").unwrap();
    assert_eq!(
        kind(orders.request(&TxnTokenRequest::self_signed(theirs, "orders.read")).await),
        ErrorKind::ExchangeRefused
    );
}

#[tokio::test]
async fn configuration_is_checked() {
    let base = json!({"trust_domain": "spiffe://prod.example", "key_store": std::env::temp_dir().join("wimse-tts-cfg-never-opened.json"),
                      "dev_mode": true, "clients": [{"name": "a", "dev_secret": "0123456789abcdefg", "allowed": [FRONT], "max_lifetime": 60}]});
    let with = |txn: Value, endpoint: bool| {
        let mut c = base.clone();
        c["txn_tokens"] = txn;
        if endpoint {
            c["token_endpoint"] = json!("http://127.0.0.1:1/v1/token");
        }
        serde_json::from_value::<IssuerConfig>(c).unwrap()
    };
    let requester = json!({"workloads": [FRONT], "scopes": ["a"], "subject_token_types": ["self_signed"]});
    for (txn, endpoint, field) in [
        (json!({"requesters": [requester]}), false, "token_endpoint"),
        (json!({"lifetime": 3600, "requesters": [requester]}), true, "lifetime"),
        (json!({"max_actors": 0, "requesters": [requester]}), true, "max_actors"),
        (json!({"max_actors": 9, "requesters": [requester]}), true, "max_actors"),
        (
            json!({"requesters": [{"workloads": ["spiffe://other.example/x"], "scopes": ["a"], "subject_token_types": ["self_signed"]}]}),
            true,
            "not in",
        ),
        (
            json!({"requesters": [{"workloads": [FRONT], "scopes": ["a b"], "subject_token_types": ["self_signed"]}]}),
            true,
            "scopes",
        ),
        (
            json!({"requesters": [{"workloads": [FRONT], "scopes": ["a"], "subject_token_types": ["refresh_token"]}]}),
            true,
            "unknown subject token type",
        ),
        (
            json!({"requesters": [{"workloads": [FRONT], "scopes": ["a"], "subject_token_types": ["access_token"]}]}),
            true,
            "subject_issuers",
        ),
    ] {
        let invalid = with(txn.clone(), endpoint).validate().unwrap_err();
        assert!(invalid.detail().unwrap().contains(field), "{invalid:?} should name {field}");
        let error = IdentityServer::open(with(txn, endpoint), SystemClock).await.unwrap_err();
        assert_eq!(error.kind(), &ErrorKind::InvalidConfiguration);
        assert_eq!(error.detail(), invalid.detail());
    }
}

#[tokio::test]
async fn requesters_are_verified_with_the_keys_after_a_rotation() {
    const T0: u64 = 1_800_000_000;
    let dir = std::env::temp_dir().join(format!("wimse-tts-rotation-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let endpoint = "https://issuer.prod.example/v1/token";
    let config: IssuerConfig = serde_json::from_value(json!({
        "trust_domain": "spiffe://prod.example", "key_store": dir.join("keys.json"), "dev_mode": true,
        "rotation_period": 3600, "refresh_hint": 300, "token_endpoint": endpoint,
        "clients": [{"name": "front", "dev_secret": secret(FRONT), "allowed": [FRONT], "max_lifetime": 600}],
        "txn_tokens": {"requesters": [{"workloads": [FRONT], "scopes": ["orders.read"], "subject_token_types": ["unsigned_json"]}]}
    }))
    .unwrap();
    let clock = Arc::new(FixedClock::new(T0));
    let server = IdentityServer::open(config, clock.clone()).await.unwrap();
    let authenticate = |at: u64| {
        let server = &server;
        async move {
            let key = SigningKey::generate(Algorithm::ES256).unwrap();
            let wit = server.issue_wit(&secret(FRONT), FRONT, key.public_jwk(), None).await.unwrap().wit;
            let wpt = WptBuilder::new(&key, &wit, endpoint).sign(at).unwrap();
            let mut headers = axum::http::HeaderMap::new();
            headers.insert("workload-identity-token", wit.parse().unwrap());
            headers.insert("authorization", format!("WPT {wpt}").parse().unwrap());
            (
                server.authenticate_requester(&headers).await,
                wimse_core::jose::jws::parse(&wit, 8192).unwrap().header["kid"].clone(),
            )
        }
    };
    let (first, first_kid) = authenticate(T0).await;
    first.unwrap();
    // Two rotation periods later the WITs are signed by keys created since.
    for step in 1..=16 {
        clock.set(T0 + step * 450);
        server.maintain().await.unwrap();
    }
    let (later, later_kid) = authenticate(T0 + 16 * 450).await;
    assert_ne!(first_kid, later_kid, "a new signing key");
    later.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn agents_act_for_users_and_chains_only_grow_narrower() {
    let s = Setup::start().await;
    let agent = s.tts(AGENT).await;
    let user_token = |claims: Value| s.access_token(claims);
    let ask = |token: String, scope: &str| TxnTokenRequest::for_access_token(token, scope).acting();

    // The agent acts for the user: it is the token's actor.
    let issued = agent.request(&ask(user_token(json!({})), "orders.purchase orders.read")).await.unwrap();
    let txn = s.check(&issued.token);
    assert_eq!(txn.subject(), "users:user-1842");
    let id = |s: &str| s.parse::<WorkloadId>().unwrap();
    assert_eq!(txn.actors(), [id(AGENT)]);
    assert_eq!(txn.actor(), Some(&id(AGENT)));
    assert_eq!(txn.requesting_workloads(), [AGENT.to_owned()]);
    // Without `acting()`, the same agent asks for the user's own transaction: no actor.
    let own = agent.request(&TxnTokenRequest::for_access_token(user_token(json!({})), "orders.read")).await.unwrap();
    assert!(s.check(&own.token).actors().is_empty());

    // The user's token may say who may act for them (RFC 8693 may_act).
    let allowed = user_token(json!({"may_act": {"sub": AGENT}}));
    assert!(agent.request(&ask(allowed, "orders.read")).await.is_ok());
    let someone_else = user_token(json!({"may_act": {"sub": SUBAGENT}}));
    assert_eq!(kind(agent.request(&ask(someone_else, "orders.read")).await), ErrorKind::DelegationDenied);
    let other_issuer = user_token(json!({"may_act": {"sub": AGENT, "iss": "https://elsewhere.example"}}));
    assert_eq!(kind(agent.request(&ask(other_issuer, "orders.read")).await), ErrorKind::DelegationDenied);
    let malformed = user_token(json!({"may_act": AGENT}));
    assert_eq!(kind(agent.request(&ask(malformed, "orders.read")).await), ErrorKind::ExchangeRefused);
    // An actor chain claimed by another issuer is never taken over.
    let claimed = user_token(json!({"act": {"sub": THIRD}}));
    assert_eq!(kind(agent.request(&ask(claimed, "orders.read")).await), ErrorKind::DelegationDenied);
    // A workload the TTS does not let act.
    let front = s.tts(FRONT).await;
    assert_eq!(kind(front.request(&ask(user_token(json!({})), "orders.read")).await), ErrorKind::DelegationDenied);

    // The agent hands the work to a sub-agent: the chain grows, the scope narrows.
    let booker = s.tts(SUBAGENT).await;
    let handed = booker.request(&TxnTokenRequest::replacing(&issued.token, "orders.purchase").acting()).await.unwrap();
    let chain = s.check(&handed.token);
    assert_eq!(chain.actors(), [id(SUBAGENT), id(AGENT)], "the current actor first");
    assert_eq!((chain.txn(), chain.subject()), (txn.txn(), txn.subject()), "the same transaction, the same user");
    assert_eq!(chain.requesting_workloads(), [AGENT.to_owned(), SUBAGENT.to_owned()]);
    // Never wider than what the agent had.
    let narrow = booker.request(&TxnTokenRequest::replacing(&issued.token, "orders.read").acting()).await.unwrap();
    assert_eq!(
        kind(booker.request(&TxnTokenRequest::replacing(&narrow.token, "orders.purchase").acting()).await),
        ErrorKind::InvalidScope,
        "a chain never widens its scope"
    );
    // A replacement without acting keeps the chain as it is.
    let kept = booker.request(&TxnTokenRequest::replacing(&handed.token, "orders.purchase")).await.unwrap();
    assert_eq!(s.check(&kept.token).actors(), [id(SUBAGENT), id(AGENT)]);
    // A third actor would exceed max_actors (2).
    let payer = s.tts(THIRD).await;
    assert_eq!(
        kind(payer.request(&TxnTokenRequest::replacing(&handed.token, "orders.purchase").acting()).await),
        ErrorKind::DelegationTooDeep
    );
}

#[tokio::test]
async fn may_act_follows_the_transaction_and_an_agent_acts_once() {
    let s = Setup::start().await;
    let front = s.tts(FRONT).await;
    let booker = s.tts(SUBAGENT).await;
    let replace = |token: &str| TxnTokenRequest::replacing(token, "orders.read").acting();
    // The user named the planner. The edge (not acting) passes the user's transaction on; a
    // sub-agent the user did not name cannot become its first actor.
    let for_planner = s.access_token(json!({"may_act": {"sub": AGENT}}));
    let plain = front.request(&TxnTokenRequest::for_access_token(for_planner, "orders.read")).await.unwrap();
    assert_eq!(s.check(&plain.token).may_act(), Some(&json!({"sub": AGENT})), "carried in the Txn-Token");
    assert_eq!(kind(booker.request(&replace(&plain.token)).await), ErrorKind::DelegationDenied);
    // Had the user named the booker, it could.
    let for_booker = s.access_token(json!({"may_act": {"sub": SUBAGENT}}));
    let plain = front.request(&TxnTokenRequest::for_access_token(for_booker, "orders.read")).await.unwrap();
    let acting = booker.request(&replace(&plain.token)).await.unwrap();
    let id = |s: &str| s.parse::<WorkloadId>().unwrap();
    assert_eq!(s.check(&acting.token).actors(), [id(SUBAGENT)]);
    // Acting twice in a row would only spend the chain's depth.
    assert_eq!(kind(booker.request(&replace(&acting.token)).await), ErrorKind::DelegationDenied);
    // A may_act that is not an object with a sub is refused, acting or not (the Txn-Token
    // carrying it would be unverifiable).
    for malformed in [json!("x"), json!({"iss": IDP}), json!({"sub": 7})] {
        let token = s.access_token(json!({"may_act": malformed}));
        assert_eq!(
            kind(front.request(&TxnTokenRequest::for_access_token(token, "orders.read")).await),
            ErrorKind::ExchangeRefused,
            "{malformed}"
        );
    }
}

#[tokio::test]
async fn an_actor_token_is_the_requesters_own_wit() {
    let s = Setup::start().await;
    let agent = s.tts(AGENT).await;
    let ask = || TxnTokenRequest::for_access_token(s.access_token(json!({})), "orders.read");
    // Another workload's WIT (valid, of this trust domain) as the actor token: refused.
    let others = IssuerCredentials::connect(&s.base, SUBAGENT, Bootstrap::Token(secret(SUBAGENT))).await.unwrap();
    let other_wit = others.credentials(now()).unwrap().wit().to_owned();
    let mut forged = ask();
    forged.actor = TxnActor::Token { token: other_wit.clone(), token_type: JWT.into() };
    assert_eq!(kind(agent.request(&forged).await), ErrorKind::ActorTokenInvalid);
    // Garbage, a wrong type, an oversized token.
    for (token, token_type) in [
        ("not a token".to_owned(), JWT),
        (other_wit, "urn:ietf:params:oauth:token-type:access_token"),
        ("x".repeat(20_000), JWT),
    ] {
        let mut request = ask();
        request.actor = TxnActor::Token { token, token_type: token_type.into() };
        assert_eq!(kind(agent.request(&request).await), ErrorKind::ActorTokenInvalid);
    }
    // Its own WIT, given by hand, is what `acting()` sends.
    let own = IssuerCredentials::connect(&s.base, AGENT, Bootstrap::Token(secret(AGENT))).await.unwrap();
    let signer = Signer::new(own.clone());
    let by_hand = TxnTokenService::new(signer, format!("{}/v1/token", s.base), &s.domain).unwrap();
    let mut request = ask();
    request.actor = TxnActor::Token { token: own.credentials(now()).unwrap().wit().to_owned(), token_type: JWT.into() };
    let issued = by_hand.request(&request).await.unwrap();
    assert_eq!(s.check(&issued.token).actors().len(), 1);

    // An actor token on the WIT exchange (a WIT names one workload, never an actor).
    let form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
        ("subject_token", "x"),
        ("subject_token_type", JWT),
        ("actor_token", "y"),
        ("actor_token_type", JWT),
    ];
    let response = reqwest::Client::new().post(format!("{}/v1/token", s.base)).form(&form).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (body["error"].as_str(), body["reason"].as_str()),
        (Some("invalid_request"), Some("actor_token_invalid"))
    );
}

/// A user a risk signal disabled gets no Txn-Token, new or replaced; others do.
#[tokio::test]
async fn a_disabled_user_gets_no_transaction() {
    let s = Setup::start().await;
    let front = s.tts(FRONT).await;
    let issued =
        front.request(&TxnTokenRequest::for_access_token(s.access_token(json!({})), "orders.read")).await.unwrap();
    s.revocations.disable("users:user-1842", now()).unwrap();
    let refused = front.request(&TxnTokenRequest::for_access_token(s.access_token(json!({})), "orders.read")).await;
    assert_eq!(kind(refused), ErrorKind::IssuanceDenied);
    let orders = s.tts(ORDERS).await;
    assert!(
        orders.request(&TxnTokenRequest::replacing(&issued.token, "orders.read")).await.is_err(),
        "nor a replacement"
    );
    let other = s.access_token(json!({"sub": "user-77"}));
    assert!(front.request(&TxnTokenRequest::for_access_token(other, "orders.read")).await.is_ok());
}

/// The TTS's audit records: each Txn-Token issued (its transaction, subject, actors, scope, the
/// requester) and each refusal with the failed check and the authenticated requester.
#[tokio::test]
async fn txn_tokens_issued_and_refused_are_audited() {
    let s = Setup::start().await;
    let agent = s.tts(AGENT).await;
    let token = s.access_token(json!({}));
    let issued =
        agent.request(&TxnTokenRequest::for_access_token(token.clone(), "orders.read").acting()).await.unwrap();
    let txn = s.check(&issued.token);
    let refused = agent.request(&TxnTokenRequest::for_access_token(token, "orders.admin")).await;
    assert_eq!(kind(refused), ErrorKind::InvalidScope);

    let decisions = s.decisions(3).await;
    // Each requester's WIT is issued first (`issue:wit`), then its Txn-Tokens.
    let txn_records: Vec<&Value> = decisions.iter().filter(|r| r["action"] == "issue:txn-token").collect();
    assert_eq!(txn_records.len(), 2, "{decisions:?}");
    let (allowed, denied) = (txn_records[0], txn_records[1]);
    assert_eq!(
        (
            allowed["decision"].as_str(),
            allowed["txn"].as_str(),
            allowed["subject"].as_str(),
            allowed["caller"].as_str()
        ),
        (Some("allow"), Some(txn.txn()), Some("users:user-1842"), Some(AGENT))
    );
    assert_eq!((allowed["actors"][0].as_str(), allowed["resource"].as_str()), (Some(AGENT), Some("orders.read")));
    assert_eq!(
        (
            denied["decision"].as_str(),
            denied["reason"].as_str(),
            denied["caller"].as_str(),
            denied["resource"].as_str()
        ),
        (Some("deny"), Some("invalid_scope"), Some(AGENT), Some("orders.admin"))
    );
    assert!(decisions.iter().any(|r| r["action"] == "issue:wit" && r["resource"] == AGENT));
}

/// A requester whose credentials a signal revoked gets no Txn-Token with its old WIT, and one
/// with a WIT issued after the event does.
#[tokio::test]
async fn a_revoked_requester_gets_no_transaction_with_its_old_wit() {
    let s = Setup::start().await;
    let front = s.tts(FRONT).await;
    let ask = || TxnTokenRequest::for_access_token(s.access_token(json!({})), "orders.read");
    front.request(&ask()).await.unwrap();
    // Revoked a second after its WIT was issued (`iat` has a second's resolution).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    s.revocations.revoke_before(FRONT, now(), now()).unwrap();
    let refused = front.request(&ask()).await.expect_err("refused");
    assert!(format!("{refused:?}").contains("unauthorized_client"), "{refused:?}");
    let decisions = s.decisions(3).await;
    assert!(decisions.iter().any(|r| r["reason"] == "workload_revoked"), "{decisions:?}");
    // A WIT issued after the event.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let renewed = s.tts(FRONT).await;
    renewed.request(&ask()).await.expect("a new WIT passes");
}
