//! Mutual TLS with Workload Identity Certificates over real rustls handshakes on loopback.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use wimse_core::prelude::*;
use wimse_core::protocol::wic::{
    CurrentCertificate, WicAnchors, WicAuthority, WicOptions, WicServerVerifier, WicUsage, WorkloadCertificate,
    client_config, server_config, verified_peer, wimse_error,
};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

struct Pki {
    ca: WicAuthority,
    anchors: WicAnchors,
}

impl Pki {
    fn new() -> Self {
        let ca = WicAuthority::new("spiffe://prod.example".parse().unwrap(), now(), 86_400).unwrap();
        let anchors = WicAnchors::new();
        anchors.set(ca.trust_domain().clone(), [ca.certificate().clone()]).unwrap();
        Self { ca, anchors }
    }

    fn server_cert(&self) -> WorkloadCertificate {
        let options = WicOptions::new(WicUsage::Server, now(), 3600).ip_address(LOCALHOST);
        self.ca.issue(&"spiffe://prod.example/payments".parse().unwrap(), &options).unwrap()
    }

    fn client_cert(&self) -> WorkloadCertificate {
        self.ca
            .issue(&"spiffe://prod.example/orders".parse().unwrap(), &WicOptions::new(WicUsage::Client, now(), 3600))
            .unwrap()
    }

    fn current(&self, cert: &WorkloadCertificate) -> CurrentCertificate {
        CurrentCertificate::new(cert, self.anchors.provider().clone()).unwrap()
    }

    fn server_config(&self, cert: CurrentCertificate) -> ServerConfig {
        server_config(&self.anchors, cert).unwrap()
    }

    fn client_config(&self, cert: &WorkloadCertificate, expect: &str) -> ClientConfig {
        let expected: WorkloadId = expect.parse().unwrap();
        let verifier = WicServerVerifier::new(self.anchors.clone()).expect(move |_| Some(expected.clone()));
        client_config(verifier, self.current(cert)).unwrap()
    }
}

/// The outcome of one connection, seen from both ends: the verified peer id or the rustls error,
/// and the SHA-256 fingerprint of the leaf certificate the server presented (when the client
/// accepted it).
struct Outcome {
    server: Result<WorkloadId, rustls::Error>,
    client: Result<WorkloadId, rustls::Error>,
    served: Option<String>,
}

fn rustls_error(e: std::io::Error) -> rustls::Error {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned()
        .unwrap_or_else(|| rustls::Error::General(e.to_string()))
}

async fn connect(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_side = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut tls = TlsAcceptor::from(server).accept(stream).await.map_err(rustls_error)?;
        let peer = verified_peer(tls.get_ref().1.peer_certificates().unwrap_or_default())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(rustls_error)?;
        tls.write_all(&byte).await.map_err(rustls_error)?;
        tls.shutdown().await.ok();
        Ok::<_, rustls::Error>(peer.0)
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut served = None;
    let client_side = async {
        let mut tls = TlsConnector::from(client)
            .connect(ServerName::IpAddress(LOCALHOST.into()), stream)
            .await
            .map_err(rustls_error)?;
        let peer = verified_peer(tls.get_ref().1.peer_certificates().unwrap_or_default())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        served = Some(peer.1);
        // With TLS 1.3 a refused client certificate is reported after the handshake.
        tls.write_all(b"x").await.map_err(rustls_error)?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(rustls_error)?;
        Ok::<_, rustls::Error>(peer.0)
    };
    let client = client_side.await;
    let server = server_side.await.unwrap();
    Outcome { server, client, served }
}

/// The chain does not lead to an anchor of the peer's trust domain (no issuer of that name, or
/// one with that name but another key).
fn untrusted_chain(result: &Result<WorkloadId, rustls::Error>) -> bool {
    matches!(
        result,
        Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature))
    )
}

fn wimse_kind(error: &rustls::Error) -> Option<ErrorKind> {
    wimse_error(error).map(|e| e.kind().clone())
}

#[tokio::test]
async fn accepted_peers_know_each_other() {
    let pki = Pki::new();
    let server = Arc::new(pki.server_config(pki.current(&pki.server_cert())));
    let client = Arc::new(pki.client_config(&pki.client_cert(), "spiffe://prod.example/payments"));
    let outcome = connect(server, client).await;
    assert_eq!(outcome.server.unwrap().as_str(), "spiffe://prod.example/orders");
    assert_eq!(outcome.client.unwrap().as_str(), "spiffe://prod.example/payments");
}

#[tokio::test]
async fn client_certificates_that_must_be_refused() {
    let pki = Pki::new();
    let server = Arc::new(pki.server_config(pki.current(&pki.server_cert())));
    let expect = "spiffe://prod.example/payments";
    let t = now();

    // From an untrusted CA (same trust domain name, other key).
    let rogue = WicAuthority::new("spiffe://prod.example".parse().unwrap(), t, 86_400).unwrap();
    let cert = rogue
        .issue(&"spiffe://prod.example/orders".parse().unwrap(), &WicOptions::new(WicUsage::Client, t, 3600))
        .unwrap();
    let outcome = connect(server.clone(), Arc::new(pki.client_config(&cert, expect))).await;
    assert!(untrusted_chain(&outcome.server), "{:?}", outcome.server);
    // The client hears the server's refusal as the alert for that error.
    assert!(
        matches!(
            outcome.client,
            Err(rustls::Error::AlertReceived(
                rustls::AlertDescription::UnknownCA | rustls::AlertDescription::DecryptError
            ))
        ),
        "{:?}",
        outcome.client
    );

    // Two URI SANs.
    let cert = pki
        .ca
        .issue_with_uris(
            &["spiffe://prod.example/orders", "spiffe://prod.example/admin"],
            &WicOptions::new(WicUsage::Client, t, 3600),
        )
        .unwrap();
    let outcome = connect(server.clone(), Arc::new(pki.client_config(&cert, expect))).await;
    assert_eq!(wimse_kind(outcome.server.as_ref().unwrap_err()), Some(ErrorKind::InvalidCertificate));

    // A trust domain that does not match the anchor that signed it: prod's CA vouching for
    // other.example, which the server trusts only through other.example's own CA.
    let other = WicAuthority::new("spiffe://other.example".parse().unwrap(), t, 86_400).unwrap();
    pki.anchors.set(other.trust_domain().clone(), [other.certificate().clone()]).unwrap();
    let cert = pki
        .ca
        .issue_with_uris(&["spiffe://other.example/orders"], &WicOptions::new(WicUsage::Client, t, 3600))
        .unwrap();
    let outcome = connect(server.clone(), Arc::new(pki.client_config(&cert, expect))).await;
    assert!(untrusted_chain(&outcome.server), "{:?}", outcome.server);
    // And a trust domain with no anchors at all.
    let cert = pki
        .ca
        .issue_with_uris(&["spiffe://nowhere.example/orders"], &WicOptions::new(WicUsage::Client, t, 3600))
        .unwrap();
    let outcome = connect(server.clone(), Arc::new(pki.client_config(&cert, expect))).await;
    assert_eq!(wimse_kind(outcome.server.as_ref().unwrap_err()), Some(ErrorKind::UntrustedTrustDomain));
    // The issuer API itself refuses identifiers outside its domain.
    let outside =
        pki.ca.issue(&"spiffe://other.example/x".parse().unwrap(), &WicOptions::new(WicUsage::Client, t, 3600));
    assert_eq!(outside.unwrap_err().kind(), &ErrorKind::InvalidConfiguration);

    // Expired.
    let mut expired = WicOptions::new(WicUsage::Client, t - 7200, 3600);
    expired.not_after = t - 3600;
    let cert = pki.ca.issue(&"spiffe://prod.example/orders".parse().unwrap(), &expired).unwrap();
    let outcome = connect(server.clone(), Arc::new(pki.client_config(&cert, expect))).await;
    assert!(
        matches!(
            outcome.server,
            Err(rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }))
        ),
        "{:?}",
        outcome.server
    );

    // Wrong EKU: a server-only certificate used as a client certificate.
    let cert = pki
        .ca
        .issue(&"spiffe://prod.example/orders".parse().unwrap(), &WicOptions::new(WicUsage::Server, t, 3600))
        .unwrap();
    let outcome = connect(server, Arc::new(pki.client_config(&cert, expect))).await;
    assert!(
        matches!(
            outcome.server,
            Err(rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
            ))
        ),
        "{:?}",
        outcome.server
    );
}

#[tokio::test]
async fn the_client_checks_the_server_identity() {
    let pki = Pki::new();
    let server = Arc::new(pki.server_config(pki.current(&pki.server_cert())));
    let client = Arc::new(pki.client_config(&pki.client_cert(), "spiffe://prod.example/billing"));
    let outcome = connect(server.clone(), client).await;
    assert_eq!(wimse_kind(outcome.client.as_ref().unwrap_err()), Some(ErrorKind::UnexpectedPeer));
    // A server certificate without the serverAuth EKU is refused by the client.
    let client_only = pki
        .ca
        .issue(
            &"spiffe://prod.example/payments".parse().unwrap(),
            &WicOptions::new(WicUsage::Client, now(), 3600).ip_address(LOCALHOST),
        )
        .unwrap();
    let server = Arc::new(pki.server_config(pki.current(&client_only)));
    let outcome =
        connect(server, Arc::new(pki.client_config(&pki.client_cert(), "spiffe://prod.example/payments"))).await;
    assert!(
        matches!(
            outcome.client,
            Err(rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
            ))
        ),
        "{:?}",
        outcome.client
    );
}

#[tokio::test]
async fn server_certificate_rotation_without_failed_connections() {
    let pki = Pki::new();
    let first = pki.server_cert();
    let current = pki.current(&first);
    let server = Arc::new(pki.server_config(current.clone()));
    let client = Arc::new(pki.client_config(&pki.client_cert(), "spiffe://prod.example/payments"));
    let fingerprint = |cert: &WorkloadCertificate| verified_peer(cert.chain()).unwrap().1;
    let second = pki.server_cert();
    assert_ne!(fingerprint(&second), fingerprint(&first), "two certificates (same workload, new key and serial)");
    for round in 0..6 {
        // Rotated between rounds 2 and 3, while the server keeps serving.
        if round == 3 {
            current.set(&second).unwrap();
        }
        let outcome = connect(server.clone(), client.clone()).await;
        assert_eq!(outcome.client.unwrap().as_str(), "spiffe://prod.example/payments", "round {round}");
        assert_eq!(outcome.server.unwrap().as_str(), "spiffe://prod.example/orders", "round {round}");
        let expected = if round < 3 { &first } else { &second };
        assert_eq!(outcome.served, Some(fingerprint(expected)), "round {round}: the certificate served");
    }
    // Anchor rotation: once the CA is no longer trusted, new handshakes fail, and the client
    // says why (the server's trust domain has no anchors left).
    pki.anchors.remove(pki.ca.trust_domain());
    let outcome = connect(server, client).await;
    assert_eq!(wimse_kind(outcome.client.as_ref().unwrap_err()), Some(ErrorKind::UntrustedTrustDomain));
    assert_eq!(outcome.served, None);
}
