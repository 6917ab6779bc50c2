//! The forward-auth endpoint over real HTTP, asked as a proxy would ask it: each check at its
//! edges (a trusted proxy and its neighbour address, default ports, prefixes and the names
//! beside them).

use std::time::Duration;

use crate::common::{Files, allowed, original, reason, wpt_headers};
use http::{HeaderMap, HeaderValue};
use wimse_gateway::Gateway;
use wimse_reqwest::ProofMode;
use wimse_testkit::{ALLOWED, DENIED, Deployment, signed_headers};

const PAYMENTS: &str = "https://payments.example";
const ORDERS: &str = "http://orders.example:8080";

fn routes() -> &'static str {
    r#"
[forward_auth]
listen = "127.0.0.1:0"
trusted_proxies = ["127.0.0.1"]

[[routes]]
origin = "https://payments.example"
path_prefix = "/api"
policy = { name = "payments", allow = { workloads = ["spiffe://prod.example/front"] } }

[[routes]]
origin = "https://payments.example"
path_prefix = "/api/admin"
policy = { name = "admin", allow = { workloads = ["spiffe://prod.example/ops"] } }

[[routes]]
origin = "http://orders.example:8080"
"#
}

struct Setup {
    deployment: Deployment,
    _files: Files,
    gateway: Gateway,
    client: reqwest::Client,
    url: String,
}

async fn setup() -> Setup {
    let deployment = Deployment::new();
    let files = Files::new(&deployment, "spiffe://prod.example/gateway");
    let gateway = Gateway::start(files.config(routes())).await.expect("gateway");
    let serving = gateway.clone();
    tokio::spawn(async move { serving.serve(std::future::pending()).await });
    let url = format!("http://{}/", gateway.forward_auth_address().expect("address"));
    Setup { deployment, _files: files, gateway, client: reqwest::Client::new(), url }
}

impl Setup {
    async fn ask(&self, headers: HeaderMap) -> reqwest::Response {
        self.client.get(&self.url).headers(headers).send().await.expect("answer")
    }
}

#[tokio::test]
async fn a_verified_request_is_answered_with_its_identity_and_never_twice() {
    let s = setup().await;
    let headers = original(
        wpt_headers(&allowed(&s.deployment), PAYMENTS, "/api/charge"),
        "POST",
        "/api/charge?x=1,2",
        "payments.example",
    );
    let ok = s.ask(headers.clone()).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-wimse-caller"], ALLOWED);
    assert_eq!(ok.headers()["x-wimse-proof"], "wpt");
    // No Txn-Token: its fields are there, empty, so a proxy copying them replaces whatever the
    // client sent under those names (nginx drops empty ones; Caddy skips them).
    assert_eq!(ok.headers()["x-wimse-txn"], "");
    assert_eq!(ok.headers()["x-wimse-txn-subject"], "");
    let replayed = s.ask(headers).await;
    assert_eq!(replayed.headers()["www-authenticate"], "WPT");
    assert_eq!(reason(replayed).await, (401, "replayed_proof".into()));
}

#[tokio::test]
async fn the_route_is_chosen_by_host_default_port_and_longest_prefix() {
    let s = setup().await;
    let front = allowed(&s.deployment);
    // The default port of the origin's scheme is the same host.
    let with_port = original(wpt_headers(&front, PAYMENTS, "/api/x"), "GET", "/api/x", "PAYMENTS.example:443");
    assert_eq!(s.ask(with_port).await.status(), 200);
    // Another port is another service.
    let other_port = original(wpt_headers(&front, PAYMENTS, "/api/x"), "GET", "/api/x", "payments.example:8443");
    assert_eq!(reason(s.ask(other_port).await).await, (403, "no_route".into()));
    // The longer prefix's policy applies below it, not beside it.
    let admin =
        original(wpt_headers(&front, PAYMENTS, "/api/admin/users"), "GET", "/api/admin/users", "payments.example");
    assert_eq!(reason(s.ask(admin).await).await, (403, "policy_denied".into()));
    let beside =
        original(wpt_headers(&front, PAYMENTS, "/api/administrator"), "GET", "/api/administrator", "payments.example");
    assert_eq!(s.ask(beside).await.status(), 200);
    // Outside every prefix of that host.
    let outside = original(wpt_headers(&front, PAYMENTS, "/apix"), "GET", "/apix", "payments.example");
    assert_eq!(reason(s.ask(outside).await).await, (403, "no_route".into()));
    // A path that could route elsewhere than it seems is refused.
    let dotted = original(wpt_headers(&front, PAYMENTS, "/api/../admin"), "GET", "/api/../admin", "payments.example");
    assert_eq!(reason(s.ask(dotted).await).await, (400, "non_canonical_path".into()));
    // A non-default port in the origin.
    let orders = original(wpt_headers(&front, ORDERS, "/list"), "GET", "/list", "orders.example:8080");
    assert_eq!(s.ask(orders).await.status(), 200);
}

#[tokio::test]
async fn a_proof_for_one_service_is_not_accepted_for_another() {
    let s = setup().await;
    let front = allowed(&s.deployment);
    // A WPT for the orders service, presented for payments (same path).
    let confused = original(wpt_headers(&front, ORDERS, "/api/charge"), "GET", "/api/charge", "payments.example");
    assert_eq!(reason(s.ask(confused).await).await, (401, "audience_mismatch".into()));
    // A WPT for another path of the same service.
    let moved = original(wpt_headers(&front, PAYMENTS, "/api/refund"), "GET", "/api/charge", "payments.example");
    assert_eq!(reason(s.ask(moved).await).await, (401, "audience_mismatch".into()));
}

#[tokio::test]
async fn callers_the_policy_does_not_allow_and_requests_without_credentials_are_refused() {
    let s = setup().await;
    let denied = s.deployment.credentials(DENIED, false, 0);
    let headers = original(wpt_headers(&denied, PAYMENTS, "/api/charge"), "GET", "/api/charge", "payments.example");
    assert_eq!(reason(s.ask(headers).await).await, (403, "policy_denied".into()));
    let rogue = s.deployment.credentials(ALLOWED, true, 0);
    let headers = original(wpt_headers(&rogue, PAYMENTS, "/api/charge"), "GET", "/api/charge", "payments.example");
    assert_eq!(s.ask(headers).await.status(), 401);
    let anonymous = original(HeaderMap::new(), "GET", "/api/charge", "payments.example");
    let refused = s.ask(anonymous).await;
    assert_eq!(refused.headers()["www-authenticate"], "WPT");
    assert_eq!(reason(refused).await, (401, "missing_wit".into()));
}

#[tokio::test]
async fn a_signature_covering_a_body_it_cannot_see_is_refused_with_that_reason() {
    let s = setup().await;
    let mode = ProofMode::HttpSignature { sign_response: false };
    let signed = signed_headers(&s.deployment, "https://payments.example/api/charge", "{\"amount\":1}", mode).await;
    let headers = original(signed, "POST", "/api/charge", "payments.example");
    let refused = s.ask(headers).await;
    assert_eq!(refused.headers()["www-authenticate"], "WPT", "the answer points to WPT");
    assert_eq!(reason(refused).await, (401, "body_not_forwarded".into()));
}

#[tokio::test]
async fn paths_an_application_might_route_elsewhere_are_refused() {
    let s = setup().await;
    let front = allowed(&s.deployment);
    // Matrix parameters (servlet containers route /api/admin;x/users as /api/admin/users),
    // backslashes, fragments.
    for path in ["/api/admin;x/users", "/api/..;/admin", "/api\\admin", "/api/x#/../admin"] {
        let headers = original(wpt_headers(&front, PAYMENTS, path), "GET", path, "payments.example");
        assert_eq!(reason(s.ask(headers).await).await, (400, "non_canonical_path".into()), "{path}");
    }
}

#[tokio::test]
async fn the_scheme_the_proxy_names_must_be_the_routes() {
    let s = setup().await;
    let front = allowed(&s.deployment);
    let mut https = original(wpt_headers(&front, PAYMENTS, "/api/x"), "GET", "/api/x", "payments.example");
    https.insert("x-original-proto", HeaderValue::from_static("https"));
    assert_eq!(s.ask(https).await.status(), 200);
    // The same host over plain HTTP is no route of this gateway.
    let mut http = original(wpt_headers(&front, PAYMENTS, "/api/x"), "GET", "/api/x", "payments.example");
    http.insert("x-original-proto", HeaderValue::from_static("http"));
    assert_eq!(reason(s.ask(http).await).await, (403, "no_route".into()));
}

#[tokio::test]
async fn an_identity_field_spelled_with_underscores_is_refused() {
    let s = setup().await;
    let mut headers =
        original(wpt_headers(&allowed(&s.deployment), PAYMENTS, "/api/x"), "GET", "/api/x", "payments.example");
    headers.insert("x_wimse_caller", HeaderValue::from_static("spiffe://prod.example/admin"));
    assert_eq!(reason(s.ask(headers).await).await, (400, "invalid_header_value".into()));
}

#[tokio::test]
async fn one_callers_claims_are_counted_once_across_routes() {
    let deployment = Deployment::new();
    let files = Files::new(&deployment, "spiffe://prod.example/gateway");
    let mut config = files.config(routes());
    config.verifier.caller_quota = Some(2);
    let gateway = crate::common::serve(config).await;
    let url = format!("http://{}/", gateway.forward_auth_address().expect("address"));
    let front = allowed(&deployment);
    let ask = |origin: &str, host: &str| original(wpt_headers(&front, origin, "/api/x"), "GET", "/api/x", host);
    let client = reqwest::Client::new();
    let send = |headers: HeaderMap| client.get(&url).headers(headers).send();
    assert_eq!(send(ask(PAYMENTS, "payments.example")).await.expect("answer").status(), 200);
    assert_eq!(send(ask(ORDERS, "orders.example:8080")).await.expect("answer").status(), 200);
    // Its third live claim, on either route: over the one quota the routes share.
    assert_eq!(send(ask(ORDERS, "orders.example:8080")).await.expect("answer").status(), 429);
}

#[tokio::test]
async fn the_original_request_must_be_named_once_by_the_configured_fields() {
    let s = setup().await;
    let front = allowed(&s.deployment);
    let mut caddy_style = wpt_headers(&front, PAYMENTS, "/api/charge");
    caddy_style.insert("x-forwarded-method", HeaderValue::from_static("GET"));
    caddy_style.insert("x-forwarded-uri", HeaderValue::from_static("/api/charge"));
    caddy_style.insert("x-forwarded-host", HeaderValue::from_static("payments.example"));
    assert_eq!(
        reason(s.ask(caddy_style).await).await,
        (400, "original_request_missing".into()),
        "nginx fields configured"
    );
    let mut repeated = original(wpt_headers(&front, PAYMENTS, "/api/charge"), "GET", "/api/charge", "payments.example");
    repeated.append("x-original-uri", HeaderValue::from_static("/api/other"));
    assert_eq!(reason(s.ask(repeated).await).await, (400, "original_request_missing".into()));
}

#[tokio::test]
async fn only_a_trusted_proxy_may_ask() {
    let s = setup().await;
    let headers = original(
        wpt_headers(&allowed(&s.deployment), PAYMENTS, "/api/charge"),
        "GET",
        "/api/charge",
        "payments.example",
    );
    // The neighbouring loopback address is not the configured proxy.
    let elsewhere =
        reqwest::Client::builder().local_address("127.0.0.2".parse::<std::net::IpAddr>().ok()).build().expect("client");
    let refused = elsewhere.get(&s.url).headers(headers.clone()).send().await.expect("answer");
    assert_eq!(reason(refused).await, (403, "untrusted_forwarder".into()));
    // The proof was not consumed by the refused request.
    assert_eq!(s.ask(headers).await.status(), 200);
}

#[tokio::test]
async fn oversized_subrequests_are_refused_before_they_are_read() {
    let s = setup().await;
    let mut headers = original(HeaderMap::new(), "GET", "/api/charge", "payments.example");
    headers.insert("workload-identity-token", HeaderValue::from_str(&"a".repeat(200 << 10)).expect("value"));
    let refused = s.ask(headers).await;
    assert_eq!(refused.status(), 431);
    // Many fields, each small.
    let mut many = original(HeaderMap::new(), "GET", "/api/charge", "payments.example");
    for i in 0..200 {
        many.insert(
            http::HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).expect("name"),
            HeaderValue::from_static("x"),
        );
    }
    let answer = s.client.get(&s.url).headers(many).timeout(Duration::from_secs(10)).send().await;
    assert!(answer.is_err() || answer.is_ok_and(|r| r.status() == 431), "too many fields are refused");
    // The gateway still answers.
    let fine = original(
        wpt_headers(&allowed(&s.deployment), PAYMENTS, "/api/charge"),
        "GET",
        "/api/charge",
        "payments.example",
    );
    assert_eq!(s.ask(fine).await.status(), 200);
}

#[tokio::test]
async fn a_reload_applies_to_the_next_request_and_a_bad_one_keeps_the_running_configuration() {
    let s = setup().await;
    let front = allowed(&s.deployment);
    let ask = |path: &str| original(wpt_headers(&front, PAYMENTS, path), "GET", path, "payments.example");
    assert_eq!(s.ask(ask("/api/a")).await.status(), 200);
    let files = Files::new(&s.deployment, "spiffe://prod.example/gateway");
    // The same listener, a policy that no longer allows the caller.
    let stricter =
        files.config(&routes().replace("spiffe://prod.example/front\"] } }", "spiffe://prod.example/ops\"] } }"));
    s.gateway.reload(stricter).await.expect("reloaded");
    assert_eq!(reason(s.ask(ask("/api/b")).await).await, (403, "policy_denied".into()));
    // A configuration that does not build is refused, the running one stays.
    let mut broken = files.config(routes());
    broken.routes[0].origin = "payments.example".into();
    let error = s.gateway.reload(broken).await.expect_err("refused");
    assert!(error.to_string().contains("routes[0]"), "{error}");
    assert_eq!(reason(s.ask(ask("/api/c")).await).await, (403, "policy_denied".into()));
    // Another listener address needs a restart.
    let mut moved = files.config(routes());
    moved.forward_auth.as_mut().expect("forward_auth").listen = "127.0.0.1:1".parse().expect("address");
    assert!(s.gateway.reload(moved).await.is_err());
}

/// With `[audit]`, every route's decisions go into one tamper-evident log.
#[tokio::test]
async fn decisions_are_recorded_in_the_audit_log() {
    use wimse_core::jose::{Algorithm, SigningKey};
    use wimse_core::server::audit_log::check;
    let deployment = Deployment::new();
    let files = Files::new(&deployment, "spiffe://prod.example/gateway");
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    std::fs::write(files.dir.join("audit.key.jwk"), serde_json::to_string(&key.to_private_jwk()).unwrap()).unwrap();
    let log = files.dir.join("gateway.audit.jsonl");
    let audit = format!(
        "[audit]\nfile = {:?}\nservice = \"spiffe://prod.example/gateway\"\nkey = {:?}\n",
        log,
        files.dir.join("audit.key.jwk")
    );
    let gateway = Gateway::start(files.config(&format!("{}{audit}", routes()))).await.expect("gateway");
    let serving = gateway.clone();
    tokio::spawn(async move { serving.serve(std::future::pending()).await });
    let url = format!("http://{}/", gateway.forward_auth_address().expect("address"));
    let client = reqwest::Client::new();
    let ask = |headers: HeaderMap| client.get(&url).headers(headers).send();
    let allowed_request = original(
        wpt_headers(&allowed(&deployment), PAYMENTS, "/api/charge"),
        "POST",
        "/api/charge",
        "payments.example",
    );
    assert_eq!(ask(allowed_request).await.unwrap().status(), 200);
    let denied = deployment.credentials(DENIED, false, 0);
    let denied_request =
        original(wpt_headers(&denied, PAYMENTS, "/api/charge"), "POST", "/api/charge", "payments.example");
    assert_eq!(ask(denied_request).await.unwrap().status(), 403);
    // Written within the writer's poll; then the records and the chain are checked.
    let mut records = Vec::new();
    for _ in 0..200 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        records = text.lines().filter(|l| l.contains("\"decision\"")).map(str::to_owned).collect();
        if records.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(records[0].contains(ALLOWED) && records[0].contains("\"decision\":\"allow\""), "{}", records[0]);
    assert!(records[1].contains(DENIED) && records[1].contains("\"reason\":\"policy_denied\""), "{}", records[1]);
    let text = std::fs::read(&log).unwrap();
    let report = check(
        vec![("gateway".to_owned(), std::io::BufReader::new(&text[..]))],
        std::slice::from_ref(key.public_key()),
        None,
    );
    assert!(report.findings.is_empty(), "{report:?}");
}

/// With `[signals]`, every route refuses what the transmitter revokes, and a reload keeps it
/// (the revocations are shared from one configuration to the next).
#[tokio::test]
async fn signals_revoke_across_every_route_and_a_reload() {
    use wimse_core::jose::{Algorithm, Backend, SigningKey, jws};
    use wimse_core::server::signals::ACCOUNT_DISABLED;
    let deployment = Deployment::new();
    let files = Files::new(&deployment, "spiffe://prod.example/gateway");
    let transmitter = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("ssf-1");
    let jwks = serde_json::json!({"keys": [transmitter.public_jwk()]}).to_string();
    std::fs::write(files.dir.join("ssf.jwks.json"), jwks).unwrap();
    // A stream nothing answers on (the SET below reaches the shared state another way); the
    // gateway refuses signals it could not receive at all.
    let signals = format!(
        "[signals]\nissuer = \"https://ssf.example\"\naudience = \"https://gateway.example\"\njwks_file = {:?}\n",
        files.dir.join("ssf.jwks.json")
    );
    let unreceivable = format!("{}{signals}", routes());
    assert!(Gateway::start(files.config(&unreceivable)).await.is_err(), "signals without a stream to poll");
    let text = format!("{unreceivable}poll_url = \"http://127.0.0.1:9/poll\"\npoll_interval = 60\n");
    let gateway = Gateway::start(files.config(&text)).await.expect("gateway");
    let serving = gateway.clone();
    tokio::spawn(async move { serving.serve(std::future::pending()).await });
    let url = format!("http://{}/", gateway.forward_auth_address().expect("address"));
    let client = reqwest::Client::new();
    let ask = |origin: &str, path: &str, host: &str| {
        let headers = original(wpt_headers(&allowed(&deployment), origin, path), "POST", path, host);
        client.get(&url).headers(headers).send()
    };
    assert_eq!(ask(PAYMENTS, "/api/charge", "payments.example").await.unwrap().status(), 200);

    // A SET pushed to a receiver built from the same settings (a push route would hold one).
    let receiver = files.config(&text).signals.expect("signals").receiver().unwrap();
    let set = serde_json::json!({"iss": "https://ssf.example", "aud": "https://gateway.example",
        "iat": wimse_testkit::now(), "jti": "set-1",
        "events": {ACCOUNT_DISABLED: {"subject": {"format": "uri", "uri": ALLOWED}}}});
    let token = jws::sign("secevent+jwt", Some("ssf-1"), &set, &transmitter, Backend::default()).unwrap();
    receiver.receive(&token, wimse_testkit::now()).unwrap();
    drop(receiver);
    for (origin, path, host) in [(PAYMENTS, "/api/charge", "payments.example"), (ORDERS, "/x", "orders.example:8080")] {
        let answer = ask(origin, path, host).await.unwrap();
        assert_eq!(reason(answer).await, (403, "workload_revoked".to_owned()), "{origin}{path}");
    }
    gateway.reload(files.config(&text)).await.expect("reload");
    assert_eq!(ask(PAYMENTS, "/api/charge", "payments.example").await.unwrap().status(), 403, "kept across a reload");
}
