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
mod settings;
mod txn;

use std::fmt;
use std::sync::Arc;

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
pub use txn::{
    ACCESS_TOKEN_TYPE, IssuedTxnToken, TxnTokenRequest, TxnTokenService, same_origin_redirects, self_signed_subject,
};
pub use wimse_core::protocol::txn::{TxnForwarding, TxnToken};

use http::{Extensions, HeaderName, HeaderValue};
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
use wimse_core::client::response::ResponseVerifier;
pub use wimse_core::client::sign::AudienceOverride;
use wimse_core::client::sign::Signer;
use wimse_core::id::WorkloadId;
use wimse_core::protocol::httpsig::{self, OutgoingRequest, RequestParts, ResponseParts};
use wimse_core::protocol::trust::TrustStore;
use wimse_core::{Error, ErrorKind};

/// A reqwest client builder that authenticates with mutual TLS (feature `mtls`): it presents the
/// workload's certificate and verifies servers with `config` (see
/// [`wimse_core::protocol::wic::client_config`], whose server verifier maps each host to the workload it
/// must be).
#[cfg(feature = "mtls")]
pub fn mtls_client_builder(config: rustls::ClientConfig) -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_backend_preconfigured(config)
}

/// Context tokens to add to one request and bind with `oth`: `(header name, value)` pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextTokens(pub Vec<(String, String)>);

/// How a request proves the workload's identity. Set per client, or per request as an extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProofMode {
    /// WIT + `Authorization: WPT` (wpt-02).
    #[default]
    Wpt,
    /// WIT + HTTP message signature (http-signature-08); `sign_response` asks the server to
    /// sign its response, which is then required.
    HttpSignature {
        /// Require a signed response.
        sign_response: bool,
    },
}

type UrlFn<T> = dyn Fn(&Url) -> Option<T> + Send + Sync;

/// Signs each request with the workload's current credentials.
#[derive(Clone)]
pub struct WimseSignMiddleware {
    signer: Signer,
    mode: ProofMode,
    alias: Option<Arc<UrlFn<String>>>,
    expected_identity: Option<Arc<UrlFn<WorkloadId>>>,
    responses: Option<ResponseVerifier>,
    txn_forwarding: TxnForwarding,
}

impl fmt::Debug for WimseSignMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WimseSignMiddleware")
            .field("signer", &self.signer)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
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
        Self {
            signer,
            mode: ProofMode::Wpt,
            alias: None,
            expected_identity: None,
            responses: None,
            txn_forwarding: TxnForwarding::unconfigured(),
        }
    }

    /// Uses HTTP message signatures instead of WPTs.
    pub fn http_signatures(mut self) -> Self {
        self.mode = ProofMode::HttpSignature { sign_response: self.responses.is_some() };
        self
    }

    /// Verifies signed responses with these trust anchors. Any signed response is then verified
    /// (and refused if invalid); in HTTP-signature mode every response must be signed.
    pub fn signed_responses(mut self, trust: TrustStore) -> Self {
        self.responses = Some(ResponseVerifier::new(trust));
        if let ProofMode::HttpSignature { .. } = self.mode {
            self.mode = ProofMode::HttpSignature { sign_response: true };
        }
        self
    }

    /// Uses another response verifier (for instance with a test clock).
    pub fn with_response_verifier(mut self, verifier: ResponseVerifier) -> Self {
        self.responses = Some(verifier);
        self
    }

    /// Maps a URL to the audience its server expects; `None` uses the URL itself.
    pub fn audience_alias(mut self, alias: impl Fn(&Url) -> Option<String> + Send + Sync + 'static) -> Self {
        self.alias = Some(Arc::new(alias));
        self
    }

    /// Maps a URL to the Workload Identifier its server must have (the deployment-defined
    /// mapping the identifier draft requires). A signed response from another identity is refused.
    pub fn expected_identity(mut self, map: impl Fn(&Url) -> Option<WorkloadId> + Send + Sync + 'static) -> Self {
        self.expected_identity = Some(Arc::new(map));
        self
    }

    /// The origins (`scheme://host[:port]`) of the services of this workload's trust domain: a
    /// `Txn-Token` (the field, or a [`TxnToken`] extension) is sent to these only and removed
    /// from requests to any other origin, since a Txn-Token must not leave its trust domain
    /// (draft-ietf-oauth-transaction-tokens-11 §14; see [`TxnForwarding`]). Without this
    /// setting a [`TxnToken`] extension is never sent (a warning says so, once per origin),
    /// and a `Txn-Token` field set by the application is sent as is. Redirects happen below
    /// the middleware: give the client [`same_origin_redirects`] (or no redirects) so a
    /// Txn-Token cannot follow one elsewhere.
    pub fn trust_domain_origins(mut self, origins: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.txn_forwarding = TxnForwarding::new(origins);
        self
    }

    /// The identity the server at `url` must have, if the mapping names one.
    pub fn expected_identity_for(&self, url: &Url) -> Option<WorkloadId> {
        self.expected_identity.as_ref().and_then(|map| map(url))
    }

    fn audience(&self, req: &Request, extensions: &Extensions) -> String {
        match extensions.get::<AudienceOverride>() {
            Some(AudienceOverride(aud)) => aud.clone(),
            None => {
                self.alias.as_ref().and_then(|alias| alias(req.url())).unwrap_or_else(|| audience_for_url(req.url()))
            }
        }
    }

    fn add_context_tokens(req: &mut Request, extensions: &Extensions) -> std::result::Result<Vec<String>, Error> {
        let mut names = Vec::new();
        if let Some(ContextTokens(tokens)) = extensions.get::<ContextTokens>() {
            for (name, value) in tokens {
                let invalid = || Error::with_detail(ErrorKind::InvalidHeaderValue, format!("context token `{name}`"));
                let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
                req.headers_mut().insert(header.clone(), HeaderValue::from_str(value).map_err(|_| invalid())?);
                names.push(header.as_str().to_owned());
            }
        }
        Ok(names)
    }

    /// Signs `req`; returns the request signature's nonce in HTTP-signature mode.
    fn sign(
        &self,
        req: &mut Request,
        extensions: &Extensions,
        mode: ProofMode,
    ) -> std::result::Result<Option<httpsig::RequestSignature>, Error> {
        let aud = self.audience(req, extensions);
        let token = extensions.get::<TxnToken>();
        if self.txn_forwarding.is_configured() || token.is_some() {
            let origin = req.url().origin().ascii_serialization();
            self.txn_forwarding.apply(&origin, req.headers_mut(), token)?;
        }
        let extra = Self::add_context_tokens(req, extensions)?;
        match mode {
            ProofMode::Wpt => self.signer.sign_headers_binding(req.headers_mut(), &aud, &extra).map(|()| None),
            ProofMode::HttpSignature { sign_response } => {
                let url = req.url().clone();
                let authority = signed_authority(req.method(), &url);
                // Sign into a detached header map so the body can be borrowed, not copied.
                let mut headers = std::mem::take(req.headers_mut());
                let body = match req.body() {
                    None => None,
                    Some(body) => Some(body.as_bytes().ok_or_else(|| {
                        Error::with_detail(
                            ErrorKind::InvalidConfiguration,
                            "a streaming body cannot be signed: its Content-Digest needs the bytes",
                        )
                    })?),
                };
                let request = OutgoingRequest {
                    method: req.method().as_str(),
                    scheme: url.scheme(),
                    authority: &authority,
                    path: url.path(),
                    query: url.query(),
                    body,
                    aud: &aud,
                    sign_response,
                };
                let signature = self.signer.sign_request_signature(&mut headers, &request);
                *req.headers_mut() = headers;
                Ok(Some(signature?))
            }
        }
    }

    /// Verifies a signed response (required when it was asked for).
    async fn check_response(
        &self,
        response: Response,
        request: (reqwest::Method, Url, http::HeaderMap),
        signature: Option<httpsig::RequestSignature>,
    ) -> std::result::Result<Response, Error> {
        let signed = httpsig::has_signature(response.headers());
        let required = signature.as_ref().is_some_and(|s| s.sign_response);
        if !signed && !required {
            return Ok(response);
        }
        let Some(signature) = signature else {
            // A signed response to a WPT request: it carries no request nonce to bind it to.
            return Ok(response);
        };
        // A server MAY sign a response it was not asked to sign: checked when this client can
        // (it has trust anchors), otherwise ignored (http-signature-08).
        let Some(verifier) = self.responses.as_ref() else {
            if required {
                return Err(Error::with_detail(
                    ErrorKind::InvalidConfiguration,
                    "a signed response was asked for but no trust anchors were given to check it (WimseSignMiddleware::signed_responses)",
                ));
            }
            tracing::debug!("wimse: unsolicited signed response not checked (no trust anchors for responses)");
            return Ok(response);
        };
        if !signed {
            return Err(Error::with_detail(ErrorKind::NoWimseSignature, "the response is not signed"));
        }
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
        let (method, url, req_headers) = request;
        let authority = signed_authority(&method, &url);
        let req = RequestParts {
            method: method.as_str(),
            scheme: url.scheme(),
            authority: &authority,
            path: url.path(),
            query: url.query(),
            headers: &req_headers,
        };
        let res = ResponseParts { status: status.as_u16(), headers: &headers };
        verifier.verify(&req, &res, &body, &signature.nonce, self.expected_identity_for(&url).as_ref())?;
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

#[async_trait::async_trait]
impl Middleware for WimseSignMiddleware {
    async fn handle(&self, mut req: Request, extensions: &mut Extensions, next: Next<'_>) -> Result<Response> {
        let mode = extensions.get::<ProofMode>().copied().unwrap_or(self.mode);
        let signature = match self.sign(&mut req, extensions, mode) {
            Ok(signature) => {
                self.signer.signed();
                signature
            }
            Err(error) => {
                // Rate-limited: a credential outage must not log once per request.
                self.signer.log_failure(&error);
                return Err(reqwest_middleware::Error::middleware(error));
            }
        };
        let request = (req.method().clone(), req.url().clone(), req.headers().clone());
        let response = next.run(req, extensions).await?;
        self.check_response(response, request, signature).await.map_err(middleware_error)
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
