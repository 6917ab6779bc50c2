//! Mutual TLS for tower-based clients (feature `mtls`).

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;

/// An HTTPS connector for hyper-util's `Client` that presents the workload's certificate and
/// verifies servers with `config` (see `wimse_core::protocol::wic::client_config`, whose server verifier
/// maps each host to the workload it must be). Plain `http://` URIs are refused.
pub fn mtls_connector(config: rustls::ClientConfig) -> HttpsConnector<HttpConnector> {
    HttpsConnectorBuilder::new().with_tls_config(config).https_only().enable_http1().build()
}
