//! TLS on the reverse proxy's listener: the gateway presents its Workload Identity Certificate,
//! and a client WIC that chains to the configured anchors authenticates the caller (mutual TLS).

use std::sync::Arc;

use wimse_core::id::TrustDomain;
use wimse_core::protocol::wic::{
    CurrentCertificate, WicAnchors, WicClientVerifier, WorkloadCertificate, certificates_from_pem, server_config_with,
};

use crate::config::TlsSettings;
use crate::error::GatewayError;

fn read(path: &std::path::Path, what: &str) -> Result<String, GatewayError> {
    std::fs::read_to_string(path).map_err(|e| GatewayError::Config(format!("tls.{what} {}: {e}", path.display())))
}

/// The rustls configuration of `settings` (files read now), offering HTTP/2 and HTTP/1.1.
pub(crate) fn server_config(settings: &TlsSettings) -> Result<Arc<rustls::ServerConfig>, GatewayError> {
    let certificate = WorkloadCertificate::from_pem(
        &read(&settings.certificate_file, "certificate_file")?,
        &read(&settings.key_file, "key_file")?,
    )?;
    let anchors = WicAnchors::new();
    for (i, trust) in settings.client_trust.iter().enumerate() {
        let domain: TrustDomain = trust
            .trust_domain
            .parse()
            .map_err(|e| GatewayError::Config(format!("tls.client_trust[{i}].trust_domain: {e}")))?;
        anchors.set(domain, certificates_from_pem(&read(&trust.file, "client_trust.file")?)?)?;
    }
    let mut verifier = WicClientVerifier::new(anchors.clone());
    if !settings.require_client_certificate {
        verifier = verifier.optional();
    }
    let mut config = server_config_with(verifier, CurrentCertificate::new(&certificate, anchors.provider().clone())?)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
