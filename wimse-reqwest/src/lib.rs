//! # wimse-reqwest
//!
//! A [`reqwest_middleware::Middleware`] that gives every outgoing request a WIT and a fresh WPT.
//!
//! ```no_run
//! use reqwest_middleware::ClientBuilder;
//! use wimse_core::prelude::*;
//! use wimse_reqwest::WimseMiddleware;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let now = 1_800_000_000;
//! let credentials = FileCredentials::new("/var/run/wimse/wit.jwt", "/var/run/wimse/key.jwk", now)?;
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(WimseMiddleware::new(Signer::new(credentials)))
//!     .build();
//! let response = client.get("https://billing.internal/invoices").header("txn-token", "…").send().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Per request, an [`AudienceOverride`] or [`ContextTokens`] in the request's extensions
//! (`RequestBuilder::with_extension`) changes the audience or adds context tokens bound by `oth`.

use std::fmt;
use std::sync::Arc;

use http::{Extensions, HeaderName, HeaderValue};
use reqwest::{Request, Response, Url};
use reqwest_middleware::{Middleware, Next, Result};
pub use wimse_core;
use wimse_core::id::WorkloadId;
pub use wimse_core::sign::AudienceOverride;
use wimse_core::sign::Signer;
use wimse_core::{Error, ErrorKind};

/// Context tokens to add to one request and bind with `oth`: `(header name, value)` pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextTokens(pub Vec<(String, String)>);

type UrlFn<T> = dyn Fn(&Url) -> Option<T> + Send + Sync;

/// Signs each request with the workload's current credentials.
#[derive(Clone)]
pub struct WimseMiddleware {
    signer: Signer,
    alias: Option<Arc<UrlFn<String>>>,
    expected_identity: Option<Arc<UrlFn<WorkloadId>>>,
}

impl fmt::Debug for WimseMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WimseMiddleware").field("signer", &self.signer).finish_non_exhaustive()
    }
}

/// The audience of a request to `url`: scheme, host, port if any, and path.
pub fn audience_for_url(url: &Url) -> String {
    let mut aud = url.clone();
    aud.set_query(None);
    aud.set_fragment(None);
    aud.to_string()
}

impl WimseMiddleware {
    /// Signs with `signer`.
    pub fn new(signer: Signer) -> Self {
        Self { signer, alias: None, expected_identity: None }
    }

    /// Maps a URL to the audience its server expects; `None` uses the URL itself.
    pub fn audience_alias(mut self, alias: impl Fn(&Url) -> Option<String> + Send + Sync + 'static) -> Self {
        self.alias = Some(Arc::new(alias));
        self
    }

    /// Maps a URL to the Workload Identifier its server must have. The deployment-defined
    /// mapping the identifier draft requires; used by modes that authenticate the server
    /// (signed responses, mutual TLS).
    pub fn expected_identity(mut self, map: impl Fn(&Url) -> Option<WorkloadId> + Send + Sync + 'static) -> Self {
        self.expected_identity = Some(Arc::new(map));
        self
    }

    /// The identity the server at `url` must have, if the mapping names one.
    pub fn expected_identity_for(&self, url: &Url) -> Option<WorkloadId> {
        self.expected_identity.as_ref().and_then(|map| map(url))
    }

    fn sign(&self, req: &mut Request, extensions: &Extensions) -> std::result::Result<(), Error> {
        let aud = match extensions.get::<AudienceOverride>() {
            Some(AudienceOverride(aud)) => aud.clone(),
            None => {
                self.alias.as_ref().and_then(|alias| alias(req.url())).unwrap_or_else(|| audience_for_url(req.url()))
            }
        };
        let mut extra = Vec::new();
        if let Some(ContextTokens(tokens)) = extensions.get::<ContextTokens>() {
            for (name, value) in tokens {
                let invalid = || Error::with_detail(ErrorKind::InvalidHeaderValue, format!("context token `{name}`"));
                let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
                req.headers_mut().insert(header.clone(), HeaderValue::from_str(value).map_err(|_| invalid())?);
                extra.push(header.as_str().to_owned());
            }
        }
        self.signer.sign_headers_binding(req.headers_mut(), &aud, &extra)
    }
}

#[async_trait::async_trait]
impl Middleware for WimseMiddleware {
    async fn handle(&self, mut req: Request, extensions: &mut Extensions, next: Next<'_>) -> Result<Response> {
        if let Err(e) = self.sign(&mut req, extensions) {
            tracing::warn!(reason = e.reason(), detail = e.detail(), "wimse: could not sign request");
            return Err(reqwest_middleware::Error::middleware(e));
        }
        next.run(req, extensions).await
    }
}
