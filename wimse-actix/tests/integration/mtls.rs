//! actix-web over rustls with mutual TLS: the client certificate's workload is the caller.

use std::net::{IpAddr, Ipv4Addr};

use actix_web::{App, HttpServer, web};
use rustls::pki_types::ServerName;
use wimse_actix::{Caller, Pipeline, WimseAuth};
use wimse_core::prelude::*;
use wimse_core::protocol::wic::{
    CurrentCertificate, WicAnchors, WicAuthority, WicOptions, WicServerVerifier, WicUsage, client_config, server_config,
};
use wimse_reqwest::mtls_client_builder;
use wimse_testkit::{DENIED, Deployment};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

async fn whoami(caller: Caller) -> String {
    format!("{} {}", caller.id(), caller.method().name())
}

#[actix_web::test]
async fn mutual_tls_callers() {
    let deployment = Deployment::new();
    let t = wimse_testkit::now();
    let ca = WicAuthority::new("spiffe://prod.example".parse().unwrap(), t, 86_400).unwrap();
    let anchors = WicAnchors::new();
    anchors.set(ca.trust_domain().clone(), [ca.certificate().clone()]).unwrap();
    let server_cert = ca
        .issue(
            &"spiffe://prod.example/ledger".parse().unwrap(),
            &WicOptions::new(WicUsage::Server, t, 3600).ip_address(LOCALHOST),
        )
        .unwrap();
    let tls =
        server_config(&anchors, CurrentCertificate::new(&server_cert, anchors.provider().clone()).unwrap()).unwrap();

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let policy = Policy::named("ledger").allow(Rule::exact("spiffe://prod.example/billing").unwrap());
    let config = Pipeline::new(deployment.verifier(&base)).policy(policy);
    let server = HttpServer::new(move || {
        App::new().wrap(WimseAuth::new(config.clone())).route("/whoami", web::get().to(whoami))
    })
    .on_connect(wimse_actix::tls::on_connect)
    .workers(1)
    .listen_rustls_0_23(listener, tls)
    .unwrap()
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);

    let client = |id: &str| {
        let cert = ca.issue(&id.parse().unwrap(), &WicOptions::new(WicUsage::Client, t, 3600)).unwrap();
        let expected: WorkloadId = "spiffe://prod.example/ledger".parse().unwrap();
        let verifier = WicServerVerifier::new(anchors.clone())
            .expect(move |name| matches!(name, ServerName::IpAddress(_)).then(|| expected.clone()));
        let current = CurrentCertificate::new(&cert, anchors.provider().clone()).unwrap();
        mtls_client_builder(client_config(verifier, current).unwrap()).build().unwrap()
    };
    let url = format!("{base}/whoami");
    let response = client("spiffe://prod.example/billing").get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "spiffe://prod.example/billing mtls");
    assert_eq!(client(DENIED).get(&url).send().await.unwrap().status(), 403);
    handle.stop(true).await;
}
