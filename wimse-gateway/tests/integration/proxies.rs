//! The reverse proxy and the egress proxy over real HTTP, with an application behind them
//! that echoes what it received.

use crate::common::{Echo, Files, echo_app, reason};
use wimse_gateway::Gateway;
use wimse_reqwest::ProofMode;
use wimse_testkit::{ALLOWED, Deployment, signature_client};

const GATEWAY_ID: &str = "spiffe://prod.example/gateway";

/// A gateway whose reverse proxy fronts the echo application at `origin`, and whose egress
/// proxy signs for that origin (inside the trust domain) and for `outside` (outside it).
async fn start(deployment: &Deployment, files: &Files, app: std::net::SocketAddr, outside: &str) -> Gateway {
    // The reverse proxy's port must be known for its origin: bind one first, then free it.
    let (port, local) = (wimse_testkit::servers::free_port(), wimse_testkit::servers::free_port());
    // `localhost:<port>` is another route on the same listener: its responses are signed.
    let config = files.config(&format!(
        r#"
[reverse_proxy]
listen = "127.0.0.1:{port}"

[egress]
listen = "127.0.0.1:0"
destinations = [
  {{ origin = "http://127.0.0.1:{port}", forward_txn_token = true, listen = "127.0.0.1:{local}" }},
  {{ origin = "{outside}" }},
  {{ origin = "http://localhost:{port}", proof = "http-signature", response_signed_by = "{GATEWAY_ID}" }},
]

[[routes]]
origin = "http://127.0.0.1:{port}"
upstream = "http://{app}"
policy = {{ name = "app", allow = {{ workloads = ["{ALLOWED}", "{GATEWAY_ID}"] }} }}

[[routes]]
origin = "http://localhost:{port}"
upstream = "http://{app}"
sign_responses = true
policy = {{ name = "app", allow = {{ workloads = ["{ALLOWED}", "{GATEWAY_ID}"] }} }}
"#
    ));
    let _ = deployment;
    crate::common::serve(config).await
}

async fn echo(response: reqwest::Response) -> Echo {
    assert_eq!(response.status(), 200, "{:?}", response.headers());
    serde_json::from_slice(&response.bytes().await.expect("body")).expect("echo")
}

#[tokio::test]
async fn the_reverse_proxy_passes_verified_callers_with_their_identity_and_nothing_spoofed() {
    let deployment = Deployment::new();
    let files = Files::new(&deployment, GATEWAY_ID);
    let app = echo_app().await;
    let gateway = start(&deployment, &files, app, "http://127.0.0.9:9").await;
    let base = format!("http://{}", gateway.reverse_proxy_address().expect("address"));

    // WPT, with a spoofed identity field beside it.
    let client = deployment.client(ALLOWED);
    let response = client
        .get(format!("{base}/orders?id=7"))
        .header("x-wimse-caller", "spiffe://prod.example/admin")
        .header("x-wimse-caller", "spiffe://prod.example/root")
        .send()
        .await
        .expect("answer");
    let seen = echo(response).await;
    assert_eq!(seen.path, "/orders?id=7");
    assert_eq!(seen.header("x-wimse-caller"), Some(ALLOWED));
    assert_eq!(seen.count("x-wimse-caller"), 1, "only the gateway's");
    assert_eq!(seen.header("x-wimse-proof"), Some("wpt"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));

    // An HTTP signature covering a body: checked (the body is read), then passed on.
    let signing = signature_client(&deployment, ALLOWED, GATEWAY_ID);
    let response = signing
        .post(format!("{base}/charge"))
        .body("{\"amount\":3}")
        .with_extension(ProofMode::HttpSignature { sign_response: false })
        .send()
        .await
        .expect("answer");
    let seen = echo(response).await;
    assert_eq!(seen.body, "{\"amount\":3}");
    assert_eq!(seen.header("x-wimse-proof"), Some("http-signature"));

    // No credentials, only a spoofed identity field: refused, the application never asked.
    let plain = reqwest::Client::new();
    let refused = plain.get(format!("{base}/orders")).header("x-wimse-caller", ALLOWED).send().await.expect("answer");
    assert_eq!(reason(refused).await, (401, "missing_wit".into()));
    // A host no route names.
    let refused = plain.get(format!("{base}/orders")).header("host", "other.example").send().await.expect("answer");
    assert_eq!(reason(refused).await, (403, "no_route".into()));
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502() {
    let deployment = Deployment::new();
    let files = Files::new(&deployment, GATEWAY_ID);
    let gone = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    };
    let gateway = start(&deployment, &files, gone, "http://127.0.0.9:9").await;
    let base = format!("http://{}", gateway.reverse_proxy_address().expect("address"));
    let refused = deployment.client(ALLOWED).get(format!("{base}/x")).send().await.expect("answer");
    assert_eq!(reason(refused).await, (502, "upstream_unavailable".into()));
}

#[tokio::test]
async fn the_egress_proxy_signs_for_its_destinations_only_and_keeps_txn_tokens_inside() {
    let deployment = Deployment::new();
    let files = Files::new(&deployment, GATEWAY_ID);
    let app = echo_app().await;
    // "Outside" the trust domain: the echo application itself, reached directly.
    let outside = format!("http://{app}");
    let gateway = start(&deployment, &files, app, &outside).await;
    let proxy = reqwest::Proxy::http(format!("http://{}", gateway.egress_address().expect("address"))).expect("proxy");
    // The application does not follow redirects itself, to see what the proxy answered.
    let application =
        reqwest::Client::builder().proxy(proxy).redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let inside = format!("http://{}", gateway.reverse_proxy_address().expect("address"));
    let txn = deployment.txn_token("user-7", "orders", false);

    // Inside: signed as the gateway's workload, the Txn-Token bound and passed on; whatever
    // credentials the application set are replaced.
    let response = application
        .get(format!("{inside}/orders"))
        .header("txn-token", &txn)
        .header("authorization", "Bearer application-secret")
        .header("x-wimse-caller", ALLOWED)
        .send()
        .await
        .expect("answer");
    let seen = echo(response).await;
    assert_eq!(seen.header("x-wimse-caller"), Some(GATEWAY_ID));
    assert_eq!(seen.header("txn-token"), Some(txn.as_str()));
    assert!(seen.header("authorization").is_some_and(|a| a.starts_with("WPT ")));

    // Outside: signed, but the Txn-Token removed.
    let response = application.get(format!("{outside}/report")).header("txn-token", &txn).send().await.expect("answer");
    let seen = echo(response).await;
    assert!(seen.header("workload-identity-token").is_some());
    assert_eq!(seen.header("txn-token"), None, "a Txn-Token never leaves its trust domain");

    // A redirect comes back to the application; the proxy does not follow it with credentials.
    let response = application.get(format!("{outside}/redirect")).send().await.expect("answer");
    assert_eq!(response.status(), 302);

    // Anywhere else: refused, nothing sent.
    let refused = application.get("http://127.0.0.9:9/steal").send().await.expect("answer");
    assert_eq!(reason(refused).await, (403, "destination_not_allowed".into()));
    // A request not in absolute form (sent to the proxy as if it were the server).
    let direct = reqwest::Client::new();
    let refused =
        direct.get(format!("http://{}/x", gateway.egress_address().expect("address"))).send().await.expect("answer");
    assert_eq!(reason(refused).await, (403, "destination_not_allowed".into()));
}

#[tokio::test]
async fn the_egress_proxy_refuses_connect_tunnels() {
    let deployment = Deployment::new();
    let files = Files::new(&deployment, GATEWAY_ID);
    let app = echo_app().await;
    let gateway = start(&deployment, &files, app, &format!("http://{app}")).await;
    let address = gateway.egress_address().expect("address");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    let target = format!("{app}");
    stream.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await.expect("write");
    let mut answer = vec![0; 4096];
    let n = stream.read(&mut answer).await.expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.contains("tunnel_refused"), "{answer}");
}

#[tokio::test]
async fn the_reverse_proxy_signs_responses_where_its_route_says_so() {
    let deployment = Deployment::new();
    let files = Files::new(&deployment, GATEWAY_ID);
    let app = echo_app().await;
    let gateway = start(&deployment, &files, app, "http://127.0.0.9:9").await;
    let port = gateway.reverse_proxy_address().expect("address").port();
    // The client asks for a signed response and verifies it came from the gateway's workload.
    let signing = signature_client(&deployment, ALLOWED, GATEWAY_ID);
    let ask = ProofMode::HttpSignature { sign_response: true };
    let signed = signing.post(format!("http://localhost:{port}/charge")).body("{}").with_extension(ask).send().await;
    let seen = echo(signed.expect("a signed, verified answer")).await;
    assert_eq!(seen.header("x-wimse-caller"), Some(ALLOWED));
    // A route that does not sign: the caller is told so (501), not answered unsigned.
    let refused = signing.post(format!("http://127.0.0.1:{port}/charge")).body("{}").with_extension(ask).send().await;
    assert!(refused.is_err() || refused.is_ok_and(|r| r.status() == 501));
}

#[tokio::test]
async fn a_destination_with_a_port_of_its_own_takes_plain_requests() {
    let deployment = Deployment::new();
    let files = Files::new(&deployment, GATEWAY_ID);
    let app = echo_app().await;
    let gateway = start(&deployment, &files, app, "http://127.0.0.9:9").await;
    let inside = format!("http://{}", gateway.reverse_proxy_address().expect("address"));
    let local = gateway.destination_address(&inside).expect("a port of its own");
    // An application that cannot use a proxy: plain requests to the local port.
    let response = reqwest::Client::new().get(format!("http://{local}/orders?id=1")).send().await.expect("answer");
    let seen = echo(response).await;
    assert_eq!(seen.path, "/orders?id=1");
    assert_eq!(seen.header("x-wimse-caller"), Some(GATEWAY_ID));
    // Absolute-form requests are not taken there (that is the proxy port's job).
    let proxy = reqwest::Proxy::http(format!("http://{local}")).expect("proxy");
    let client = reqwest::Client::builder().proxy(proxy).build().expect("client");
    let refused = client.get(format!("http://{app}/x")).send().await.expect("answer");
    assert_eq!(reason(refused).await, (403, "destination_not_allowed".into()));
}

#[tokio::test]
async fn the_egress_proxy_verifies_the_signed_responses_a_destination_must_send() {
    let deployment = Deployment::new();
    let files = Files::new(&deployment, GATEWAY_ID);
    let app = echo_app().await;
    let gateway = start(&deployment, &files, app, "http://127.0.0.9:9").await;
    let application = crate::common::through_egress(&gateway);
    let port = gateway.reverse_proxy_address().expect("address").port();
    // The destination (the reverse proxy's signing route) signs as the expected workload.
    let response =
        application.post(format!("http://localhost:{port}/pay")).body("{\"n\":1}").send().await.expect("answer");
    let seen = echo(response).await;
    assert_eq!(seen.body, "{\"n\":1}");
    assert_eq!(seen.header("x-wimse-proof"), Some("http-signature"));
}

#[tokio::test]
async fn a_signed_response_from_another_workload_is_refused() {
    let deployment = Deployment::new();
    let files = Files::new(&deployment, GATEWAY_ID);
    let app = echo_app().await;
    let port = wimse_testkit::servers::free_port();
    // The destination must be signed by `spiffe://prod.example/payments`; the gateway's
    // reverse proxy signs as the gateway.
    let config = files.config(&format!(
        r#"
[reverse_proxy]
listen = "127.0.0.1:{port}"
[egress]
listen = "127.0.0.1:0"
destinations = [{{ origin = "http://127.0.0.1:{port}", proof = "http-signature", response_signed_by = "spiffe://prod.example/payments" }}]
[[routes]]
origin = "http://127.0.0.1:{port}"
upstream = "http://{app}"
sign_responses = true
policy = {{ name = "app", allow = {{ workloads = ["{GATEWAY_ID}"] }} }}
"#
    ));
    let gateway = crate::common::serve(config).await;
    let application = crate::common::through_egress(&gateway);
    let refused = application.post(format!("http://127.0.0.1:{port}/pay")).body("{}").send().await.expect("answer");
    // Refused, with the failed check named (the application is the gateway's own caller).
    assert_eq!(reason(refused).await, (403, "unexpected_peer".into()));
}

#[tokio::test]
async fn a_host_that_differs_from_the_request_target_is_refused() {
    let deployment = Deployment::new();
    let files = Files::new(&deployment, GATEWAY_ID);
    let app = echo_app().await;
    let gateway = start(&deployment, &files, app, "http://127.0.0.9:9").await;
    let address = gateway.reverse_proxy_address().expect("address");
    // Verified for 127.0.0.1:<port>, but the application would see another Host.
    let credentials = deployment.credentials(ALLOWED, false, 0);
    let origin = format!("http://{address}");
    let headers = crate::common::wpt_headers(&credentials, &origin, "/x");
    let mut request = format!("GET {origin}/x HTTP/1.1\r\nHost: admin.example\r\n");
    for (name, value) in &headers {
        request.push_str(&format!("{name}: {}\r\n", value.to_str().expect("ascii")));
    }
    request.push_str("\r\n");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = vec![0; 4096];
    let n = stream.read(&mut answer).await.expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // An identity field spelled with underscores, beside valid credentials.
    let response = deployment
        .client(ALLOWED)
        .get(format!("{origin}/x"))
        .header("x_wimse_caller", "spiffe://prod.example/admin")
        .send()
        .await
        .expect("answer");
    assert_eq!(reason(response).await, (400, "invalid_header_value".into()));
}

#[tokio::test]
async fn the_egress_proxy_serves_its_applications_only() {
    let deployment = Deployment::new();
    let files = Files::new(&deployment, GATEWAY_ID);
    let app = echo_app().await;
    let outside = format!("http://{app}");
    let gateway = start(&deployment, &files, app, &outside).await;
    let egress = gateway.egress_address().expect("address");
    let proxy = reqwest::Proxy::http(format!("http://{egress}")).expect("proxy");
    // Another address than the configured clients (loopback 127.0.0.1 and ::1 by default).
    let elsewhere = reqwest::Client::builder()
        .proxy(proxy.clone())
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().ok())
        .build()
        .expect("client");
    let refused = elsewhere.get(format!("{outside}/x")).send().await.expect("answer");
    assert_eq!(reason(refused).await, (403, "destination_not_allowed".into()));
    // A browser's request (a cross-site form post to the proxy's address).
    let application = reqwest::Client::builder().proxy(proxy).build().expect("client");
    let refused =
        application.post(format!("{outside}/x")).header("origin", "https://evil.example").send().await.expect("answer");
    assert_eq!(reason(refused).await, (403, "destination_not_allowed".into()));
    // The Host the application wrote is not what the destination gets.
    let seen =
        echo(application.get(format!("{outside}/x")).header("host", "other.example").send().await.expect("answer"))
            .await;
    assert_eq!(seen.header("host"), Some(app.to_string().as_str()));
    // A destination's own port takes requests that name it, not a rebound name.
    let inside = format!("http://{}", gateway.reverse_proxy_address().expect("address"));
    let local = gateway.destination_address(&inside).expect("local port");
    let plain = reqwest::Client::new();
    let rebound = plain.get(format!("http://{local}/x")).header("host", format!("evil.example:{}", local.port()));
    assert_eq!(reason(rebound.send().await.expect("answer")).await, (403, "destination_not_allowed".into()));
    let named = plain.get(format!("http://localhost:{}/x", local.port())).send().await.expect("answer");
    assert_eq!(echo(named).await.header("x-wimse-caller"), Some(GATEWAY_ID));
}
