//! axum over rustls with mutual TLS: the client certificate's workload is the caller, the policy
//! applies to it, and reqwest presents a WIC and checks the server's identity.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use reqwest_middleware::ClientBuilder;
use rustls::pki_types::ServerName;
use tokio::net::TcpListener;
use wimse_axum::{Caller, WimseLayer};
use wimse_core::prelude::*;
use wimse_core::protocol::wic::{
    CurrentCertificate, WicAnchors, WicAuthority, WicOptions, WicServerVerifier, WicUsage, client_config,
    server_config, wimse_error,
};
use wimse_reqwest::{WimseSignMiddleware, mtls_client_builder};
use wimse_testkit::{ALLOWED, DENIED, Deployment};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const LEDGER: &str = "spiffe://prod.example/ledger";

async fn whoami(Caller(caller): Caller) -> String {
    match caller.transaction() {
        Some(txn) => format!("{} {} for {}", caller.id(), caller.method().name(), txn.subject()),
        None => format!("{} {}", caller.id(), caller.method().name()),
    }
}

struct Setup {
    ca: WicAuthority,
    anchors: WicAnchors,
    base: String,
}

async fn start(deployment: &Deployment) -> Setup {
    let t = wimse_testkit::now();
    let ca = WicAuthority::new("spiffe://prod.example".parse().unwrap(), t, 86_400).unwrap();
    let anchors = WicAnchors::new();
    anchors.set(ca.trust_domain().clone(), [ca.certificate().clone()]).unwrap();
    let server_cert =
        ca.issue(&LEDGER.parse().unwrap(), &WicOptions::new(WicUsage::Server, t, 3600).ip_address(LOCALHOST)).unwrap();
    let config =
        server_config(&anchors, CurrentCertificate::new(&server_cert, anchors.provider().clone()).unwrap()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let policy = Policy::named("ledger")
        .allow(Rule::one_of([ALLOWED.parse().unwrap(), "spiffe://prod.example/orders".parse().unwrap()]));
    let app = Router::new()
        .route("/whoami", get(whoami))
        .layer(WimseLayer::new(deployment.txn_verifier(&base, false)).policy(policy));
    tokio::spawn(wimse_axum::tls::serve(listener, Arc::new(config), app));
    Setup { ca, anchors, base }
}

/// The rustls error under a client error (reqwest -> hyper -> io::Error(s) -> rustls::Error):
/// `io::Error::source` skips the error it wraps, so a wrapped error is looked into as well.
fn tls_error(error: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls.clone());
    }
    let wrapped = error.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref);
    let wrapped = wrapped.map(|inner| inner as &(dyn std::error::Error + 'static));
    wrapped.and_then(tls_error).or_else(|| error.source().and_then(tls_error))
}

fn client(setup: &Setup, id: &str, expect: &str) -> reqwest::Client {
    let t = wimse_testkit::now();
    let cert = setup.ca.issue(&id.parse().unwrap(), &WicOptions::new(WicUsage::Client, t, 3600)).unwrap();
    let expected: WorkloadId = expect.parse().unwrap();
    let verifier = WicServerVerifier::new(setup.anchors.clone())
        .expect(move |name| matches!(name, ServerName::IpAddress(_)).then(|| expected.clone()));
    let current = CurrentCertificate::new(&cert, setup.anchors.provider().clone()).unwrap();
    mtls_client_builder(client_config(verifier, current).unwrap()).build().unwrap()
}

#[tokio::test]
async fn mutual_tls_callers() {
    let deployment = Deployment::new();
    let setup = start(&deployment).await;
    let url = format!("{}/whoami", setup.base);

    let orders = client(&setup, "spiffe://prod.example/orders", LEDGER);
    let response = orders.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "spiffe://prod.example/orders mtls");

    // The connection carries the caller's Txn-Token (mutual-tls-03 binds no token: the
    // authenticated channel does); it is validated like any other.
    let txn = deployment.txn_token("user-1842", "orders.read", false);
    let response = orders.get(&url).header("txn-token", &txn).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "spiffe://prod.example/orders mtls for user-1842");
    let forged = deployment.txn_token("user-1842", "orders.read", true);
    let response = orders.get(&url).header("txn-token", &forged).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<serde_json::Value>().await.unwrap()["reason"], "invalid_txn_token_signature");

    // The policy applies to mTLS callers as to the others.
    let denied = client(&setup, DENIED, LEDGER).get(&url).send().await.unwrap();
    assert_eq!(denied.status(), 403);

    // The client refuses a server that is not the workload it expects for that address.
    let error = client(&setup, "spiffe://prod.example/orders", "spiffe://prod.example/billing")
        .get(&url)
        .send()
        .await
        .unwrap_err();
    let tls = tls_error(&error).unwrap_or_else(|| panic!("not a TLS error: {error:?}"));
    assert_eq!(wimse_error(&tls).map(|e| e.kind().clone()), Some(ErrorKind::UnexpectedPeer), "{tls:?}");

    // No client certificate: the server refuses the connection. The client trusts the server
    // (the same verifier the clients above use), so the refusal is the server's: its
    // `certificate_required` alert (TLS 1.3), and its log line.
    let logs = wimse_testkit::logs::Logs::global();
    let expected: WorkloadId = LEDGER.parse().unwrap();
    let verifier = WicServerVerifier::new(setup.anchors.clone())
        .expect(move |name| matches!(name, ServerName::IpAddress(_)).then(|| expected.clone()));
    let anonymous = rustls::ClientConfig::builder_with_provider(setup.anchors.provider().clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let anonymous = mtls_client_builder(anonymous).build().unwrap();
    let error = anonymous.get(&url).send().await.unwrap_err();
    let tls = tls_error(&error).unwrap_or_else(|| panic!("not a TLS error: {error:?}"));
    assert_eq!(tls, rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired));
    let refused = logs.lines_with(&["WARN", "TLS handshake refused", "peer sent no certificates"]);
    assert_eq!(refused.len(), 1, "{refused:?}");

    // Application-level credentials on an mTLS connection are verified and must name the
    // connection's workload (mutual-tls-03): another workload's valid WPT is refused...
    let other = ClientBuilder::new(client(&setup, "spiffe://prod.example/orders", LEDGER))
        .with(WimseSignMiddleware::new(deployment.signer(ALLOWED)))
        .build();
    let response = other.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "tls_peer_mismatch");
    // ...while the same workload's is the caller, with its proof mode.
    let front = ClientBuilder::new(client(&setup, ALLOWED, LEDGER))
        .with(WimseSignMiddleware::new(deployment.signer(ALLOWED)))
        .build();
    let response = front.get(&url).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), format!("{ALLOWED} wpt"));
    let forged = orders.get(&url).header("workload-identity-token", "x.y.z").send().await.unwrap();
    assert_eq!(forged.status(), 401);
}

/// The tower client side: hyper-util's client over the WIMSE mTLS connector.
#[tokio::test]
async fn tower_client_over_mutual_tls() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let deployment = Deployment::new();
    let setup = start(&deployment).await;
    let t = wimse_testkit::now();
    let cert = setup
        .ca
        .issue(&"spiffe://prod.example/orders".parse().unwrap(), &WicOptions::new(WicUsage::Client, t, 3600))
        .unwrap();
    let expected: WorkloadId = LEDGER.parse().unwrap();
    let verifier = WicServerVerifier::new(setup.anchors.clone()).expect(move |_| Some(expected.clone()));
    let current = CurrentCertificate::new(&cert, setup.anchors.provider().clone()).unwrap();
    let connector = wimse_tower::mtls_connector(client_config(verifier, current).unwrap());
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let response = client.get(format!("{}/whoami", setup.base).parse().unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "spiffe://prod.example/orders mtls");
}
