//! TLS on the reverse proxy's listener: the gateway presents its Workload Identity Certificate,
//! and a client WIC that chains to the configured anchors authenticates the caller (mutual TLS).

use std::sync::Arc;

use wimse_core::id::TrustDomain;
use wimse_core::protocol::wic::{
    CurrentCertificate, WicAnchors, WicClientVerifier, WorkloadCertificate, certificates_from_pem, server_config_with,
};

use wimse_core::server::caller::TlsPeer;

use crate::config::{ClientTrustSettings, TlsSettings};
use crate::error::GatewayError;

fn read(path: &std::path::Path, what: &str) -> Result<String, GatewayError> {
    std::fs::read_to_string(path).map_err(|e| GatewayError::Config(format!("tls.{what} {}: {e}", path.display())))
}

/// The anchors of client WICs in `trust` (files read now).
pub(crate) fn client_anchors(trust: &[ClientTrustSettings], field: &str) -> Result<WicAnchors, GatewayError> {
    let anchors = WicAnchors::new();
    for (i, trust) in trust.iter().enumerate() {
        let domain: TrustDomain =
            trust.trust_domain.parse().map_err(|e| GatewayError::Config(format!("{field}[{i}].trust_domain: {e}")))?;
        anchors.set(domain, certificates_from_pem(&read(&trust.file, "client_trust.file")?)?)?;
    }
    Ok(anchors)
}

/// The caller's mutual-TLS identity from the certificate Envoy reports (URL-encoded PEM, leaf
/// first), verified against `anchors` as a client WIC now.
pub(crate) fn peer_from_envoy(anchors: &WicAnchors, certificate: &str) -> Result<TlsPeer, wimse_core::Error> {
    use rustls::server::danger::ClientCertVerifier as _;
    let invalid = |detail: String| wimse_core::Error::with_detail(wimse_core::ErrorKind::InvalidCertificate, detail);
    let pem = percent_encoding::percent_decode_str(certificate).decode_utf8().map_err(|e| invalid(e.to_string()))?;
    let chain = certificates_from_pem(&pem)?;
    let (leaf, intermediates) = chain.split_first().ok_or_else(|| invalid("no certificate".into()))?;
    WicClientVerifier::new(anchors.clone())
        .verify_client_cert(leaf, intermediates, rustls::pki_types::UnixTime::now())
        .map_err(|e| invalid(e.to_string()))?;
    TlsPeer::from_verified_chain(&chain)
}

/// The rustls configuration of `settings` (files read now), offering HTTP/2 and HTTP/1.1.
/// `field` names the settings in errors (`reverse_proxy.tls`).
pub(crate) fn server_config(settings: &TlsSettings, field: &str) -> Result<Arc<rustls::ServerConfig>, GatewayError> {
    let certificate = WorkloadCertificate::from_pem(
        &read(&settings.certificate_file, "certificate_file")?,
        &read(&settings.key_file, "key_file")?,
    )?;
    let anchors = client_anchors(&settings.client_trust, &format!("{field}.client_trust"))?;
    let mut verifier = WicClientVerifier::new(anchors.clone());
    if !settings.require_client_certificate {
        verifier = verifier.optional();
    }
    let mut config = server_config_with(verifier, CurrentCertificate::new(&certificate, anchors.provider().clone())?)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
