//! # wimse-reqwest
//!
//! The protocol is [`wimse_core`] (re-exported; its front page lists every adapter); [`prelude`]
//! has what a program needs. A runnable example: `cargo run -p wimse-examples --bin reqwest-client`.
//!
//! A [`reqwest_middleware::Middleware`](https://docs.rs/reqwest-middleware/latest/reqwest_middleware/trait.Middleware.html) that authenticates every outgoing request as the
//! workload: a WIT plus a fresh WPT (default), or a WIT plus an HTTP message signature
//! (http-signature-08), optionally asking for a signed response and verifying it.
//!
//! ```no_run
//! use reqwest_middleware::ClientBuilder;
//! use wimse_core::prelude::*;
//! use wimse_reqwest::WimseSignMiddleware;
//!
//! # async fn run(trust: TrustStore) -> Result<(), Box<dyn std::error::Error>> {
//! let credentials = FileCredentials::new("/var/run/wimse/wit.jwt", "/var/run/wimse/key.jwk")?;
//! // Txn-Tokens go to the trust domain's origins only, and never follow a redirect elsewhere.
//! let http = reqwest::Client::builder().redirect(wimse_reqwest::same_origin_redirects()).build()?;
//! let client = ClientBuilder::new(http)
//!     .with(WimseSignMiddleware::new(Signer::new(credentials)).trust_domain_origins(["https://billing.internal"]))
//!     .build();
//! // The Txn-Token of the request being served, exactly as received (`caller.txn_token()`).
//! let txn = wimse_reqwest::TxnToken("eyJ…".into());
//! let response = client.get("https://billing.internal/invoices").with_extension(txn).send().await?;
//!
//! // Signatures over method, path, query and body, with a signed response from the server:
//! let credentials = FileCredentials::new("/var/run/wimse/wit.jwt", "/var/run/wimse/key.jwk")?;
//! let signing = WimseSignMiddleware::new(Signer::new(credentials)).http_signatures().signed_responses(trust);
//! # Ok(())
//! # }
//! ```
//!
//! Per request, an [`AudienceOverride`], [`ContextTokens`], [`TxnToken`] or [`ProofMode`] in the
//! request's extensions (`RequestBuilder::with_extension`) changes the audience, adds context
//! tokens or the Txn-Token to forward, or picks the proof mode. [`TxnTokenService`] obtains
//! Txn-Tokens from the trust domain's Transaction Token Service. [`BundleSource`] keeps a
//! verifier's anchors current from the identity server's bundle, and
//! [`verifier_from_settings`] does it for the `bundle_url` entries of a settings file.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod assertion;
mod bundle;
mod issuer_source;
mod outage;
mod settings;
mod ssf;
mod txn;

pub use assertion::{
    AccessToken, AssertionGrant, JWT_BEARER_CLIENT_ASSERTION, JWT_BEARER_GRANT, OAuthTokenMiddleware, PlatformToken,
    TOKEN_EXCHANGE_GRANT, TokenResource, secure_or_loopback,
};
pub use bundle::{BundleSource, MAX_DOCUMENT, STORE_EPOCH_MEMBER, read_capped};
pub use issuer_source::{
    Bootstrap, DEFAULT_KEY_CHECK_INTERVAL, IssuerCredentials, IssuerCredentialsBuilder,
    KUBERNETES_SERVICE_ACCOUNT_TOKEN, renewal_time, retry_delay,
};
pub use settings::{fetch_bundles, verifier_from_settings};
pub use ssf::{Polled, SignalFeed, SsfPoller, signals_from_settings};
pub use txn::{TxnTokenService, same_origin_redirects, self_signed_subject};
pub use wimse_core::protocol::oauth::ACCESS_TOKEN_TYPE;
pub use wimse_core::protocol::txn::{IssuedTxnToken, TxnTokenRequest};
pub use wimse_core::protocol::txn::{TxnForwarding, TxnToken};

use http::Extensions;
use reqwest::{Request, Response, ResponseBuilderExt as _, Url};
use reqwest_middleware::{Middleware, Next, Result};
pub use wimse_core;

/// What a reqwest client needs: the middleware, per-request options, credential sources and
/// bundle refresh, and the core prelude.
pub mod prelude {
    pub use crate::{
        Bootstrap, BundleSource, ContextTokens, IssuerCredentials, ProofMode, TxnToken, TxnTokenRequest,
        TxnTokenService, WimseSignMiddleware,
    };
    pub use wimse_core::prelude::*;
}
use wimse_core::client::exchange::{ClientExchange, Outgoing, OutgoingBody, SentRequest};
pub use wimse_core::client::exchange::{ContextTokens, ProofMode};
pub use wimse_core::client::sign::AudienceOverride;
use wimse_core::client::sign::Signer;
use wimse_core::id::WorkloadId;
use wimse_core::{Error, ErrorKind};

/// A reqwest client builder that authenticates with mutual TLS (feature `mtls`): it presents the
/// workload's certificate and verifies servers with `config` (see
/// [`wimse_core::protocol::wic::client_config`], whose server verifier maps each host to the workload it
/// must be).
#[cfg(feature = "mtls")]
pub fn mtls_client_builder(config: rustls::ClientConfig) -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_backend_preconfigured(config)
}

/// Proves the workload's identity on each request with its current credentials, with the
/// rules of the core's [`ClientExchange`] (audience, Txn-Token forwarding, proof mode, when a
/// response must be a verified signed response).
///
/// Redirects happen below the middleware: give the client [`same_origin_redirects`] (or no
/// redirects) so a Txn-Token sent to an origin of the trust domain cannot follow one elsewhere.
#[derive(Clone, Debug)]
pub struct WimseSignMiddleware {
    exchange: ClientExchange<Url>,
}

/// The audience of a request to `url`: scheme, host, port if any, and path.
pub fn audience_for_url(url: &Url) -> String {
    let mut aud = url.clone();
    aud.set_query(None);
    aud.set_fragment(None);
    aud.to_string()
}

/// A response that failed its checks (each one is an event worth a log line: a peer answered).
fn middleware_error(error: Error) -> reqwest_middleware::Error {
    tracing::warn!(reason = error.reason(), detail = error.detail(), "wimse: response refused on the client");
    reqwest_middleware::Error::middleware(error)
}

impl WimseSignMiddleware {
    /// Signs with `signer`, using WPTs.
    pub fn new(signer: Signer) -> Self {
        Self { exchange: ClientExchange::new(signer) }
    }

    /// Uses HTTP message signatures instead of WPTs.
    pub fn http_signatures(mut self) -> Self {
        self.exchange = self.exchange.http_signatures();
        self
    }

    wimse_core::client_exchange_setters!(responses Url);
    wimse_core::client_exchange_setters!(routing Url);

    /// The identity the server at `url` must have, if the mapping names one.
    pub fn expected_identity_for(&self, url: &Url) -> Option<WorkloadId> {
        self.exchange.expected_identity_for(url)
    }

    /// Verifies the signed response to `sent` (the exchange said it must be) and rebuilds it
    /// from its buffered body.
    async fn verified(response: Response, sent: &SentRequest) -> std::result::Result<Response, Error> {
        let status = response.status();
        let version = response.version();
        let headers = response.headers().clone();
        // Kept for the rebuilt response: its final URL (after redirects) and extensions.
        let response_url = response.url().clone();
        let extensions = response.extensions().clone();
        let body = response
            .bytes()
            .await
            .map_err(|_| Error::with_detail(ErrorKind::ContentDigestMismatch, "the response body could not be read"))?;
        sent.verify(status.as_u16(), &headers, &body)?;
        let mut rebuilt = http::Response::builder()
            .status(status)
            .version(version)
            .url(response_url)
            .body(body)
            .map_err(|_| Error::with_detail(ErrorKind::InvalidHeaderValue, "the response could not be rebuilt"))?;
        *rebuilt.headers_mut() = headers;
        rebuilt.extensions_mut().extend(extensions);
        Ok(Response::from(rebuilt))
    }
}

/// A reqwest request's target, as the core's client exchange reads it.
struct Target<'a> {
    url: &'a Url,
    method: &'a reqwest::Method,
    /// `@authority`, made only when an HTTP signature needs it (not for a WPT).
    authority: std::cell::OnceCell<String>,
}

impl Outgoing for Target<'_> {
    type Uri = Url;

    fn uri(&self) -> &Url {
        self.url
    }

    fn method(&self) -> &str {
        self.method.as_str()
    }

    fn scheme(&self) -> Option<&str> {
        Some(self.url.scheme())
    }

    fn authority(&self) -> &str {
        self.authority.get_or_init(|| signed_authority(self.method, self.url))
    }

    fn path(&self) -> &str {
        self.url.path()
    }

    fn query(&self) -> Option<&str> {
        self.url.query()
    }

    fn audience(&self) -> Option<String> {
        Some(audience_for_url(self.url))
    }

    fn origin(&self) -> Option<String> {
        Some(self.url.origin().ascii_serialization())
    }
}

#[async_trait::async_trait]
impl Middleware for WimseSignMiddleware {
    async fn handle(&self, mut req: Request, extensions: &mut Extensions, next: Next<'_>) -> Result<Response> {
        let sent = {
            // Sign into a detached header map so the body can be borrowed, not copied.
            let mut headers = std::mem::take(req.headers_mut());
            let target = Target { url: req.url(), method: req.method(), authority: Default::default() };
            let body = match req.body() {
                None => OutgoingBody::Bytes(None),
                Some(body) => match body.as_bytes() {
                    Some(bytes) => OutgoingBody::Bytes(Some(bytes)),
                    None => OutgoingBody::Streamed {
                        why: "a streaming body cannot be signed: its Content-Digest needs the bytes",
                    },
                },
            };
            let sent = self.exchange.sign(&target, extensions, &mut headers, body);
            *req.headers_mut() = headers;
            sent.map_err(reqwest_middleware::Error::middleware)?
        };
        let response = next.run(req, extensions).await?;
        match sent.must_verify(response.headers()) {
            Ok(false) => Ok(response),
            Ok(true) => Self::verified(response, &sent).await.map_err(middleware_error),
            Err(error) => Err(middleware_error(error)),
        }
    }
}

/// `@authority` as this client sends it. `url` drops a scheme's default port, which RFC 9421
/// §2.2.3 also drops for http(s) targets; a CONNECT target is in authority-form and keeps its
/// port, so it is put back (`CONNECT ledger.example:443`).
fn signed_authority(method: &reqwest::Method, url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    let port = if method == reqwest::Method::CONNECT { url.port_or_known_default() } else { url.port() };
    match port {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

#[cfg(test)]
mod authority_tests {
    use super::signed_authority;
    use reqwest::Method;
    use reqwest::Url;

    #[test]
    fn connect_keeps_the_default_port_other_methods_drop_it() {
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(signed_authority(&Method::CONNECT, &url("https://ledger.example")), "ledger.example:443");
        assert_eq!(signed_authority(&Method::CONNECT, &url("https://ledger.example:443")), "ledger.example:443");
        assert_eq!(signed_authority(&Method::CONNECT, &url("http://ledger.example")), "ledger.example:80");
        assert_eq!(signed_authority(&Method::CONNECT, &url("https://ledger.example:5432")), "ledger.example:5432");
        assert_eq!(signed_authority(&Method::GET, &url("https://api.example:443/x")), "api.example");
        assert_eq!(signed_authority(&Method::GET, &url("https://api.example:8443/x")), "api.example:8443");
        assert_eq!(signed_authority(&Method::GET, &url("http://[::1]:8080/")), "[::1]:8080");
    }
}
