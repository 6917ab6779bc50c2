//! The reverse proxy over TLS: the gateway presents its WIC; a client WIC is the caller's
//! mutual-TLS proof; a client without one proves itself per request (WPT), unless the
//! listener requires a certificate; a certificate from an untrusted authority is refused.
//! Forward-auth over TLS: the proxy's own certificate authenticates the proxy, never the
//! caller. A listener beyond loopback without TLS is refused unless `allow_plaintext`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use wimse_core::protocol::wic::{
    CurrentCertificate, WicAnchors, WicAuthority, WicOptions, WicServerVerifier, WicUsage, WorkloadCertificate,
    client_config,
};
use wimse_gateway::Gateway;
use wimse_testkit::{ALLOWED, Deployment, now};

use crate::common::{Echo, Files, echo_app};

const GATEWAY_ID: &str = "spiffe://prod.example/gateway";

struct Pki {
    authority: WicAuthority,
    anchors: WicAnchors,
}

impl Pki {
    fn new() -> Self {
        let authority = WicAuthority::new("spiffe://prod.example".parse().expect("domain"), now(), 86_400).expect("CA");
        let anchors = WicAnchors::new();
        anchors.set(authority.trust_domain().clone(), [authority.certificate().clone()]).expect("anchors");
        Self { authority, anchors }
    }

    fn client(&self, id: &str) -> WorkloadCertificate {
        self.authority.issue(&id.parse().expect("id"), &WicOptions::new(WicUsage::Client, now(), 3600)).expect("WIC")
    }

    /// A client that verifies the gateway's WIC and presents `certificate`, or none.
    fn https(&self, certificate: Option<&WorkloadCertificate>) -> reqwest::Client {
        let expected = GATEWAY_ID.parse::<wimse_core::id::WorkloadId>().expect("id");
        let verifier = WicServerVerifier::new(self.anchors.clone())
            .expect(move |name| matches!(name, ServerName::IpAddress(_)).then(|| expected.clone()));
        let config = match certificate {
            Some(certificate) => client_config(
                verifier,
                CurrentCertificate::new(certificate, self.anchors.provider().clone()).expect("certificate"),
            )
            .expect("config"),
            None => rustls::ClientConfig::builder_with_provider(self.anchors.provider().clone())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth(),
        };
        wimse_reqwest::mtls_client_builder(config).build().expect("client")
    }
}

async fn start(files: &Files, pki: &Pki, app: std::net::SocketAddr, require: bool) -> Gateway {
    write_server_files(files, pki);
    let port = wimse_testkit::servers::free_port();
    let d = files.dir.display();
    let config = files.config(&format!(
        r#"
[reverse_proxy]
listen = "127.0.0.1:{port}"
tls = {{ certificate_file = "{d}/gateway.pem", key_file = "{d}/gateway.key.pem", client_trust = [{{ trust_domain = "spiffe://prod.example", file = "{d}/ca.pem" }}], require_client_certificate = {require} }}

[[routes]]
origin = "https://127.0.0.1:{port}"
upstream = "http://{app}"
policy = {{ name = "app", allow = {{ workloads = ["{ALLOWED}"] }} }}
"#
    ));
    crate::common::serve(config).await
}

async fn echo(response: reqwest::Response) -> Echo {
    assert_eq!(response.status(), 200);
    serde_json::from_slice(&response.bytes().await.expect("body")).expect("echo")
}

#[tokio::test]
async fn a_client_wic_is_a_proof_and_a_client_without_one_sends_a_wpt() {
    let deployment = Deployment::new();
    let files = Files::new(&deployment, GATEWAY_ID);
    let (pki, app) = (Pki::new(), echo_app().await);
    let gateway = start(&files, &pki, app, false).await;
    let base = format!("https://{}", gateway.reverse_proxy_address().expect("address"));

    let mtls = pki.https(Some(&pki.client(ALLOWED)));
    let seen = echo(mtls.get(format!("{base}/orders")).send().await.expect("answer")).await;
    assert_eq!(seen.header("x-wimse-caller"), Some(ALLOWED));
    assert_eq!(seen.header("x-wimse-proof"), Some("mtls"));

    // A WIC the policy does not allow.
    let intruder = pki.https(Some(&pki.client("spiffe://prod.example/intruder")));
    assert_eq!(intruder.get(format!("{base}/orders")).send().await.expect("answer").status(), 403);

    // No client certificate: TLS, then a WPT like any other request.
    let plain = pki.https(None);
    assert_eq!(plain.get(format!("{base}/orders")).send().await.expect("answer").status(), 401);
    let credentials = deployment.credentials(ALLOWED, false, 0);
    let headers = crate::common::wpt_headers(&credentials, &base, "/orders");
    let seen = echo(plain.get(format!("{base}/orders")).headers(headers).send().await.expect("answer")).await;
    assert_eq!(seen.header("x-wimse-proof"), Some("wpt"));
}

#[tokio::test]
async fn a_listener_that_requires_certificates_refuses_clients_without_a_trusted_one() {
    let deployment = Deployment::new();
    let files = Files::new(&deployment, GATEWAY_ID);
    let (pki, app) = (Pki::new(), echo_app().await);
    let gateway = start(&files, &pki, app, true).await;
    let base = format!("https://{}", gateway.reverse_proxy_address().expect("address"));
    assert!(pki.https(None).get(format!("{base}/orders")).send().await.is_err(), "no certificate, no connection");
    // A WIC from another authority for the same trust domain.
    let rogue = Pki::new();
    let foreign = rogue.client(ALLOWED);
    assert!(pki.https(Some(&foreign)).get(format!("{base}/orders")).send().await.is_err());
    let seen =
        echo(pki.https(Some(&pki.client(ALLOWED))).get(format!("{base}/orders")).send().await.expect("answer")).await;
    assert_eq!(seen.header("x-wimse-proof"), Some("mtls"));
}

/// The egress proxy upgrades an application's plain request to mutual TLS: the destination's
/// WIC must name the configured workload, the gateway presents its own client WIC.
#[tokio::test]
async fn the_egress_proxy_upgrades_plain_requests_to_mutual_tls() {
    let deployment = Deployment::new();
    let files = Files::new(&deployment, GATEWAY_ID);
    let (pki, app) = (Pki::new(), echo_app().await);
    let server = pki
        .authority
        .issue(
            &GATEWAY_ID.parse().expect("id"),
            &WicOptions::new(WicUsage::Server, now(), 3600).ip_address(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        )
        .expect("server WIC");
    let d = files.dir.display();
    for (name, (chain, key)) in [("server", server.to_pem()), ("client", pki.client(GATEWAY_ID).to_pem())] {
        std::fs::write(files.dir.join(format!("{name}.pem")), chain).expect("chain");
        std::fs::write(files.dir.join(format!("{name}.key.pem")), key).expect("key");
    }
    std::fs::write(files.dir.join("ca.pem"), pki.authority.to_pem().0).expect("ca");
    let port = wimse_testkit::servers::free_port();
    let config = |server_id: &str| {
        files.config(&format!(
            r#"
[reverse_proxy]
listen = "127.0.0.1:{port}"
tls = {{ certificate_file = "{d}/server.pem", key_file = "{d}/server.key.pem", client_trust = [{{ trust_domain = "spiffe://prod.example", file = "{d}/ca.pem" }}], require_client_certificate = true }}

[egress]
listen = "127.0.0.1:0"
destinations = [{{ origin = "http://orders.internal", upgrade = {{ to = "https://127.0.0.1:{port}", server = "{server_id}", trust_file = "{d}/ca.pem", certificate_file = "{d}/client.pem", key_file = "{d}/client.key.pem" }} }}]

[[routes]]
origin = "https://127.0.0.1:{port}"
upstream = "http://{app}"
policy = {{ name = "app", allow = {{ workloads = ["{GATEWAY_ID}"] }} }}
"#
        ))
    };
    let gateway = crate::common::serve(config(GATEWAY_ID)).await;
    let application = crate::common::through_egress(&gateway);
    let seen = echo(application.get("http://orders.internal/stock?n=2").send().await.expect("answer")).await;
    assert_eq!(seen.path, "/stock?n=2");
    assert_eq!(seen.header("x-wimse-caller"), Some(GATEWAY_ID));

    // A destination whose certificate names another workload than configured: not reached.
    gateway.reload(config("spiffe://prod.example/orders")).await.expect("reloaded");
    let refused = application.get("http://orders.internal/stock").send().await.expect("answer");
    assert_eq!(crate::common::reason(refused).await, (502, "upstream_unavailable".into()));
}

/// Writes the gateway's server WIC (for 127.0.0.1) and the CA into `files`.
fn write_server_files(files: &Files, pki: &Pki) {
    let server = pki
        .authority
        .issue(
            &GATEWAY_ID.parse().expect("id"),
            &WicOptions::new(WicUsage::Server, now(), 3600).ip_address(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        )
        .expect("server WIC");
    let (chain, key) = server.to_pem();
    std::fs::write(files.dir.join("gateway.pem"), chain).expect("chain");
    std::fs::write(files.dir.join("gateway.key.pem"), key).expect("key");
    std::fs::write(files.dir.join("ca.pem"), pki.authority.to_pem().0).expect("ca");
}

#[tokio::test]
async fn forward_auth_over_tls_authenticates_the_proxy_and_never_takes_it_for_the_caller() {
    let deployment = Deployment::new();
    let files = Files::new(&deployment, GATEWAY_ID);
    let pki = Pki::new();
    write_server_files(&files, &pki);
    let d = files.dir.display();
    let gateway = crate::common::serve(files.config(&format!(
        r#"
[forward_auth]
listen = "127.0.0.1:0"
trusted_proxies = ["127.0.0.1"]
tls = {{ certificate_file = "{d}/gateway.pem", key_file = "{d}/gateway.key.pem", client_trust = [{{ trust_domain = "spiffe://prod.example", file = "{d}/ca.pem" }}], require_client_certificate = true }}

[[routes]]
origin = "https://payments.example"
policy = {{ name = "payments", allow = {{ workloads = ["{ALLOWED}"] }} }}
"#
    )))
    .await;
    let url = format!("https://{}/", gateway.forward_auth_address().expect("address"));
    let proxy = pki.https(Some(&pki.client("spiffe://prod.example/nginx")));
    let ask = |headers: http::HeaderMap| proxy.get(&url).headers(headers).send();
    // A proxy without a certificate from the trust domain cannot even connect.
    assert!(pki.https(None).get(&url).send().await.is_err());
    // The proxy's certificate is not the caller's proof: no WPT, no identity.
    let bare = crate::common::original(http::HeaderMap::new(), "GET", "/charge", "payments.example");
    assert_eq!(ask(bare).await.expect("answer").status(), 401);
    let credentials = deployment.credentials(ALLOWED, false, 0);
    let headers = crate::common::original(
        crate::common::wpt_headers(&credentials, "https://payments.example", "/charge"),
        "GET",
        "/charge",
        "payments.example",
    );
    let ok = ask(headers).await.expect("answer");
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-wimse-caller"], ALLOWED);
    assert_eq!(ok.headers()["x-wimse-proof"], "wpt");
}

#[tokio::test]
async fn a_listener_beyond_loopback_needs_tls_or_allow_plaintext() {
    let deployment = Deployment::new();
    let files = Files::new(&deployment, GATEWAY_ID);
    let pki = Pki::new();
    write_server_files(&files, &pki);
    let d = files.dir.display();
    let tls = format!(r#"tls = {{ certificate_file = "{d}/gateway.pem", key_file = "{d}/gateway.key.pem" }}"#);
    let route = "[[routes]]\norigin = \"https://payments.example\"\nupstream = \"http://127.0.0.1:9\"\n";
    // validate() binds nothing: these addresses are checked, never listened on.
    for (section, field) in [
        ("[forward_auth]\nlisten = \"10.0.0.1:9100\"\ntrusted_proxies = [\"10.0.0.2\"]", "forward_auth.listen"),
        ("[ext_authz]\nlisten = \"0.0.0.0:9101\"\ntrusted_proxies = [\"10.0.0.2\"]", "ext_authz.listen"),
        ("[reverse_proxy]\nlisten = \"[::]:9102\"", "reverse_proxy.listen"),
        (
            "[egress]\nlisten = \"0.0.0.0:9103\"\ndestinations = [{ origin = \"http://orders.internal\" }]",
            "egress.listen",
        ),
        (
            "[egress]\nlisten = \"127.0.0.1:9103\"\ndestinations = [{ origin = \"http://orders.internal\", listen = \"0.0.0.0:9104\" }]",
            "egress.destinations[0].listen",
        ),
    ] {
        let refused = wimse_gateway::validate(files.config(&format!("{section}\n{route}"))).await.expect_err(field);
        assert!(refused.to_string().contains(field), "{refused}");
        // Said explicitly, it is allowed.
        let mut allowed = files.config(&format!("{section}\n{route}"));
        allowed.allow_plaintext = true;
        wimse_gateway::validate(allowed).await.expect(field);
        // With TLS (the listeners that have it), it is allowed too.
        if !field.starts_with("egress") {
            wimse_gateway::validate(files.config(&format!("{section}\n{tls}\n{route}"))).await.expect(field);
        }
    }
    // Loopback (v4 and v6) needs neither.
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let config = format!("[reverse_proxy]\nlisten = \"{listen}\"\n{route}");
        wimse_gateway::validate(files.config(&config)).await.expect(listen);
    }
}

/// Readiness follows the gateway's own credentials: when they expire (a node agent that
/// stopped renewing the files) the gateway is not ready, naming why; renewed, ready again.
#[tokio::test]
async fn readiness_follows_the_gateways_own_credentials() {
    let deployment = Deployment::new();
    let files = Files::new(&deployment, GATEWAY_ID);
    let write = |credentials: &wimse_core::client::cred::Credentials| {
        std::fs::write(&files.wit, credentials.wit()).expect("wit");
        let key = serde_json::to_string(&credentials.key().to_private_jwk()).expect("jwk");
        std::fs::write(&files.key, key).expect("key");
    };
    // One-hour WITs, this one issued 3597 s ago: it expires in 3 s.
    write(&deployment.credentials(GATEWAY_ID, false, 3597));
    let gateway = crate::common::serve(
        files.config("[egress]\nlisten = \"127.0.0.1:0\"\ndestinations = [{ origin = \"http://orders.internal\" }]\n"),
    )
    .await;
    assert_eq!(gateway.ready(), Ok(()));
    let until = async |want_ready: bool| {
        let start = std::time::Instant::now();
        while gateway.ready().is_ok() != want_ready {
            assert!(start.elapsed() < std::time::Duration::from_secs(10), "{:?}", gateway.ready());
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        gateway.ready()
    };
    let not_ready = until(false).await.expect_err("expired credentials");
    assert!(not_ready.contains("own credentials"), "{not_ready}");
    write(&deployment.credentials(GATEWAY_ID, false, 0));
    until(true).await.expect("renewed");
}
