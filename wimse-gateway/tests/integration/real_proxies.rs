//! The gateway behind a real nginx (`auth_request`) and a real Caddy (`forward_auth`), each in
//! front of a Python application that links no WIMSE library, with the configuration snippets
//! of `deploy/` (the README's) used verbatim. Skipped when nginx, Caddy or python3 is missing,
//! unless `WIMSE_REQUIRE_NGINX=1`, `WIMSE_REQUIRE_CADDY=1`, `WIMSE_REQUIRE_PYTHON=1`.

use std::path::PathBuf;

use crate::common::{Echo, Files};
use reqwest::StatusCode;
use wimse_gateway::Gateway;
use wimse_testkit::servers::{Spawned, free_port, start_caddy, start_nginx, start_python};
use wimse_testkit::{ALLOWED, DENIED, Deployment};

const GATEWAY_ID: &str = "spiffe://prod.example/gateway";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proxy {
    Nginx,
    Caddy,
}

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy").join(file)
}

/// A Python application behind `proxy`, which asks the gateway about every request.
struct Chain {
    deployment: Deployment,
    _files: Files,
    gateway: Gateway,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _app: Spawned,
    proxy: Spawned,
}

impl Chain {
    async fn start(kind: Proxy) -> Option<Self> {
        let deployment = Deployment::new();
        let files = Files::new(&deployment, GATEWAY_ID);
        let app = start_python(&files.dir, "app", &deploy("echo_app.py"), &[])?;
        let proxy_port = free_port();
        let fields = if kind == Proxy::Nginx { "x-original" } else { "x-forwarded" };
        let config = files.config(&format!(
            r#"
[verifier.txn_tokens]
trust_domain = "spiffe://prod.example"

[forward_auth]
listen = "127.0.0.1:0"
trusted_proxies = ["127.0.0.1"]
original_request = "{fields}"

[egress]
listen = "127.0.0.1:0"
destinations = [{{ origin = "http://127.0.0.1:{proxy_port}", forward_txn_token = true }}]

[[routes]]
origin = "http://127.0.0.1:{proxy_port}"
policy = {{ name = "app", allow = {{ workloads = ["{ALLOWED}", "{GATEWAY_ID}"] }} }}
"#
        ));
        let gateway = Gateway::start(config).await.expect("gateway");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = gateway.clone();
        tokio::spawn(async move {
            serving
                .serve(async {
                    let _ = stopped.await;
                })
                .await
        });
        let gateway_port = gateway.forward_auth_address().expect("address").port();
        let proxy = match kind {
            Proxy::Nginx => start_nginx(
                &files.dir,
                proxy_port,
                &deploy("nginx.conf"),
                &[("wimse_gateway", gateway_port), ("app", app.port())],
            )?,
            Proxy::Caddy => start_caddy(
                &files.dir,
                proxy_port,
                &deploy("Caddyfile"),
                &[
                    ("WIMSE_GATEWAY", format!("127.0.0.1:{gateway_port}")),
                    ("WIMSE_APP", format!("127.0.0.1:{}", app.port())),
                ],
            )?,
        };
        Some(Self { deployment, _files: files, gateway, stop: Some(stop), _app: app, proxy })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy.origin())
    }
}

async fn echo(response: reqwest::Response) -> Echo {
    assert_eq!(response.status(), 200, "{:?}", response.headers());
    serde_json::from_slice(&response.bytes().await.expect("body")).expect("echo")
}

async fn verified_callers_reach_the_application_and_spoofed_identities_never_do(kind: Proxy) {
    let Some(chain) = Chain::start(kind).await else { return };
    let client = chain.deployment.client(ALLOWED);
    // Spoofed fields beside valid credentials: the application sees the gateway's only, and
    // none for what the gateway did not vouch for (no Txn-Token: no transaction fields).
    let response = client
        .get(chain.url("/orders?id=7"))
        .header("x-wimse-caller", "spiffe://prod.example/admin")
        .header("x-wimse-txn-subject", "admin")
        .send()
        .await
        .expect("answer");
    let seen = echo(response).await;
    assert_eq!(seen.path, "/orders?id=7");
    assert_eq!(seen.header("x-wimse-caller"), Some(ALLOWED));
    assert_eq!(seen.count("x-wimse-caller"), 1);
    assert_eq!(seen.header("x-wimse-proof"), Some("wpt"));
    // nginx drops the empty field, Caddy passes it empty: either way, not the client's.
    let subject = seen.header("x-wimse-txn-subject");
    assert!(matches!(subject, None | Some("")), "{kind:?} passed a spoofed field on: {subject:?}");

    // With a Txn-Token, verified by the gateway: its subject reaches the application.
    let txn = chain.deployment.txn_token("user-7", "orders.read", false);
    let response = client.get(chain.url("/orders")).header("txn-token", &txn).send().await.expect("answer");
    let seen = echo(response).await;
    assert_eq!(seen.header("x-wimse-txn-subject"), Some("user-7"));
    assert_eq!(seen.header("x-wimse-txn-scope"), Some("orders.read"));
    assert_eq!(seen.header("txn-token"), Some(txn.as_str()), "passed on, for the application's own calls");
    let actors = seen.header("x-wimse-txn-actors");
    assert!(matches!(actors, None | Some("")), "no one acts for the user: {actors:?}");

    // An agent acting for the user (a delegation chain): the application sees who acts.
    let chain_token = chain.deployment.delegated_txn_token(
        "user-7",
        "orders.read",
        &["spiffe://prod.example/agents/booker", "spiffe://prod.example/agents/planner"],
    );
    let response = client
        .get(chain.url("/orders"))
        .header("txn-token", &chain_token)
        .header("x-wimse-txn-actors", "spiffe://prod.example/admin")
        .send()
        .await
        .expect("answer");
    let seen = echo(response).await;
    assert_eq!(
        seen.header("x-wimse-txn-actors"),
        Some("spiffe://prod.example/agents/booker spiffe://prod.example/agents/planner")
    );
    assert_eq!(seen.count("x-wimse-txn-actors"), 1, "never the client's");
}

async fn refusals_pass_through_with_their_status_and_challenge(kind: Proxy) {
    let Some(chain) = Chain::start(kind).await else { return };
    let plain = reqwest::Client::new();
    let refused = plain.get(chain.url("/orders")).header("x-wimse-caller", ALLOWED).send().await.expect("answer");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(refused.headers()["www-authenticate"], "WPT");
    let denied = chain.deployment.client(DENIED).get(chain.url("/orders")).send().await.expect("answer");
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    // A rogue issuer's WIT.
    let rogue = wimse_testkit::client_with(wimse_core::client::sign::Signer::new(
        wimse_core::client::cred::StaticCredentials::new(chain.deployment.credentials(ALLOWED, true, 0)),
    ));
    assert_eq!(rogue.get(chain.url("/orders")).send().await.expect("answer").status(), StatusCode::UNAUTHORIZED);
}

async fn a_gateway_that_is_down_makes_the_proxy_refuse(mut chain: Chain) {
    let client = chain.deployment.client(ALLOWED);
    assert_eq!(client.get(chain.url("/before")).send().await.expect("answer").status(), 200);
    let _ = chain.stop.take().expect("running").send(());
    // Serving stops once the listener is dropped; the proxy then cannot ask.
    let mut status = StatusCode::OK;
    for _ in 0..50 {
        status = client.get(chain.url("/after")).send().await.expect("answer").status();
        if status != StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(status.is_server_error(), "fail closed: {status}");
}

/// A Python client (urllib, no WIMSE library) sends plain HTTP through the egress proxy; the
/// gateway signs as its own workload, the Txn-Token goes along, and the proxy's forward-auth
/// verifies both before the Python application sees the request.
async fn a_python_client_goes_through_the_egress_proxy(kind: Proxy) {
    let Some(chain) = Chain::start(kind).await else { return };
    let txn = chain.deployment.txn_token("user-9", "orders.read", false);
    let egress = chain.gateway.egress_address().expect("egress");
    let script = "import json, sys, urllib.request\n\
                  opener = urllib.request.build_opener(urllib.request.ProxyHandler({'http': sys.argv[1]}))\n\
                  request = urllib.request.Request(sys.argv[2], headers={'Txn-Token': sys.argv[3]})\n\
                  print(opener.open(request, timeout=10).read().decode())\n";
    let output = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(format!("http://{egress}"))
        .arg(chain.url("/from-python"))
        .arg(&txn)
        .output()
        .await
        .expect("python3 runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let seen: Echo = serde_json::from_slice(&output.stdout).expect("echo");
    assert_eq!(seen.header("x-wimse-caller"), Some(GATEWAY_ID));
    assert_eq!(seen.header("x-wimse-txn-subject"), Some("user-9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_verified_callers_reach_the_application_and_spoofed_identities_never_do() {
    verified_callers_reach_the_application_and_spoofed_identities_never_do(Proxy::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_verified_callers_reach_the_application_and_spoofed_identities_never_do() {
    verified_callers_reach_the_application_and_spoofed_identities_never_do(Proxy::Caddy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_refusals_pass_through_with_their_status_and_challenge() {
    refusals_pass_through_with_their_status_and_challenge(Proxy::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_refusals_pass_through_with_their_status_and_challenge() {
    refusals_pass_through_with_their_status_and_challenge(Proxy::Caddy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_fails_closed_when_the_gateway_is_down() {
    let Some(chain) = Chain::start(Proxy::Nginx).await else { return };
    a_gateway_that_is_down_makes_the_proxy_refuse(chain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_fails_closed_when_the_gateway_is_down() {
    let Some(chain) = Chain::start(Proxy::Caddy).await else { return };
    a_gateway_that_is_down_makes_the_proxy_refuse(chain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_a_python_client_goes_through_the_egress_proxy() {
    a_python_client_goes_through_the_egress_proxy(Proxy::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_a_python_client_goes_through_the_egress_proxy() {
    a_python_client_goes_through_the_egress_proxy(Proxy::Caddy).await;
}

/// Caddy names the original request in `X-Forwarded-*` fields it sets itself: a client's own
/// `X-Forwarded-Uri` cannot make the gateway check another path than the one requested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_a_client_cannot_choose_which_uri_is_checked() {
    let Some(chain) = Chain::start(Proxy::Caddy).await else { return };
    let credentials = chain.deployment.credentials(ALLOWED, false, 0);
    // A proof for /public, sent to /admin with X-Forwarded-Uri claiming /public.
    let headers = crate::common::wpt_headers(&credentials, &chain.proxy.origin(), "/public");
    let response = reqwest::Client::new()
        .get(chain.url("/admin"))
        .headers(headers)
        .header("x-forwarded-uri", "/public")
        .header("x-forwarded-method", "GET")
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "the proof names another path than the request's");
}

/// Both ends not Rust: a Python client (urllib) sends plain HTTP through the egress proxy,
/// which signs it; the gateway's reverse proxy verifies it and hands it to the Python
/// application, which sees the verified identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_reaches_a_python_service_through_the_egress_and_reverse_proxies() {
    let deployment = Deployment::new();
    let files = Files::new(&deployment, GATEWAY_ID);
    let Some(app) = start_python(&files.dir, "app", &deploy("echo_app.py"), &[]) else { return };
    let port = free_port();
    let config = files.config(&crate::common::egress_to_own_proxy(port, &app.origin(), GATEWAY_ID));
    let gateway = crate::common::serve(config).await;
    let egress = gateway.egress_address().expect("egress");
    let script = "import sys, urllib.request\n\
                  opener = urllib.request.build_opener(urllib.request.ProxyHandler({'http': sys.argv[1]}))\n\
                  print(opener.open(sys.argv[2], data=b'{\"n\": 1}', timeout=10).read().decode())\n";
    let output = tokio::process::Command::new("python3")
        .args(["-c", script, &format!("http://{egress}"), &format!("http://127.0.0.1:{port}/orders")])
        .output()
        .await
        .expect("python3 runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let seen: Echo = serde_json::from_slice(&output.stdout).expect("echo");
    assert_eq!((seen.method.as_str(), seen.body.as_str()), ("POST", "{\"n\": 1}"));
    assert_eq!(seen.header("x-wimse-caller"), Some(GATEWAY_ID));
    // Straight to the reverse proxy, without the egress proxy's signature: refused.
    let output = tokio::process::Command::new("python3")
        .args(["-c", "import sys, urllib.request\ntry:\n    urllib.request.urlopen(sys.argv[1], timeout=10)\nexcept urllib.error.HTTPError as e:\n    print(e.code)\n", &format!("http://127.0.0.1:{port}/orders")])
        .env("no_proxy", "*")
        .output()
        .await
        .expect("python3 runs");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "401");
}
