//! The client layer: adds a WIT and a fresh WPT to every outgoing request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Uri};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use wimse_core::sign::{AudienceOverride, Signer, audience_for};
use wimse_core::txn::{TxnForwarding, TxnToken};
use wimse_core::{Error, ErrorKind};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type AudienceFn = dyn Fn(&Uri) -> Option<String> + Send + Sync;

/// Signs each request for tower-based HTTP clients (e.g. hyper-util's `Client`).
///
/// The audience is, in order: an [`AudienceOverride`] in the request extensions, the configured
/// alias function, or the request URI without query (which must then be absolute).
#[derive(Clone)]
pub struct WimseSignLayer {
    signer: Signer,
    alias: Option<Arc<AudienceFn>>,
    txn_forwarding: TxnForwarding,
}

impl std::fmt::Debug for WimseSignLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WimseSignLayer").field("signer", &self.signer).field("alias", &self.alias.is_some()).finish()
    }
}

impl WimseSignLayer {
    /// Signs with `signer`.
    pub fn new(signer: Signer) -> Self {
        Self { signer, alias: None, txn_forwarding: TxnForwarding::unconfigured() }
    }

    /// Maps a request URI to the audience its server expects (for servers known by another
    /// name than the URL they are reached at). `None` falls back to the URI.
    pub fn audience_alias(mut self, alias: impl Fn(&Uri) -> Option<String> + Send + Sync + 'static) -> Self {
        self.alias = Some(Arc::new(alias));
        self
    }

    /// The origins of this trust domain's services: a `Txn-Token` (a [`TxnToken`] extension,
    /// or the field) goes to these only and is removed from requests to any other origin (see
    /// [`TxnForwarding`]). Without this setting a [`TxnToken`] extension is never sent (a
    /// warning says so, once per origin).
    pub fn trust_domain_origins(mut self, origins: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.txn_forwarding = TxnForwarding::new(origins);
        self
    }

    fn sign<B>(&self, req: &mut Request<B>) -> Result<(), Error> {
        let token = req.extensions().get::<TxnToken>().cloned();
        if self.txn_forwarding.is_configured() || token.is_some() {
            let uri = req.uri();
            // Scheme and authority; `TxnForwarding` normalizes them (and refuses user info). A
            // relative URI names no origin: nothing is forwarded.
            let origin = match (uri.scheme_str(), uri.authority()) {
                (Some(scheme), Some(authority)) => format!("{scheme}://{authority}"),
                _ => String::new(),
            };
            self.txn_forwarding.apply(&origin, req.headers_mut(), token.as_ref())?;
        }
        let aud = match req.extensions().get::<AudienceOverride>() {
            Some(AudienceOverride(aud)) => aud.clone(),
            None => {
                self.alias.as_ref().and_then(|alias| alias(req.uri())).or_else(|| audience_for(req.uri())).ok_or_else(
                    || Error::with_detail(ErrorKind::InvalidConfiguration, "relative request URI and no audience"),
                )?
            }
        };
        self.signer.sign_headers(req.headers_mut(), &aud)
    }
}

impl<S> Layer<S> for WimseSignLayer {
    type Service = WimseSign<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WimseSign { inner, layer: self.clone() }
    }
}

/// The service made by [`WimseSignLayer`].
#[derive(Debug, Clone)]
pub struct WimseSign<S> {
    inner: S,
    layer: WimseSignLayer,
}

impl<S, B> Service<Request<B>> for WimseSign<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = SignFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match self.layer.sign(&mut req) {
            Ok(()) => {
                self.layer.signer.signed();
                SignFuture { future: Some(self.inner.call(req)), error: None }
            }
            Err(e) => {
                // Rate-limited: a credential outage must not log once per request.
                self.layer.signer.log_failure(&e);
                SignFuture { future: None, error: Some(e) }
            }
        }
    }
}

pin_project! {
    /// Response future of [`WimseSign`].
    pub struct SignFuture<F> {
        #[pin]
        future: Option<F>,
        error: Option<Error>,
    }
}

impl<F, T, E> Future for SignFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.future.as_pin_mut() {
            Some(future) => future.poll(cx).map_err(Into::into),
            None => {
                let error = this
                    .error
                    .take()
                    .unwrap_or_else(|| Error::with_detail(ErrorKind::Crypto, "polled after completion"));
                Poll::Ready(Err(Box::new(error)))
            }
        }
    }
}
