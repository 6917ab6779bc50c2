//! The client layer: adds a WIT and a fresh WPT to every outgoing request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Uri};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use wimse_core::client::sign::{AudienceOverride, Signer, audience_for};
use wimse_core::protocol::txn::{TxnForwarding, TxnToken};
use wimse_core::{Error, ErrorKind};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type AudienceFn = dyn Fn(&Uri) -> Option<String> + Send + Sync;

/// Signs each request for tower-based HTTP clients (e.g. hyper-util's `Client`, a tonic
/// `Channel`).
///
/// The audience is, in order: an [`AudienceOverride`] in the request extensions, the configured
/// alias function, the request URI without query when it is absolute, or, for a path-only URI
/// (what a tonic `Channel` hands its layers), the [origin](Self::origin) + the path. A request
/// none of these names an audience for is refused before it is sent
/// ([`ErrorKind::InvalidConfiguration`], a message naming the fix; with the `tonic` feature, a
/// gRPC call gets it as a `FAILED_PRECONDITION` status).
///
/// ```no_run
/// use tower::ServiceBuilder;
/// use wimse_tower::WimseSignLayer;
/// # async fn run(signer: wimse_core::client::sign::Signer) -> Result<(), Box<dyn std::error::Error>> {
/// let origin = "http://orders.internal:50051";
/// let channel = tonic::transport::Endpoint::from_static(origin).connect().await?;
/// // A Channel's requests carry only the method's path: the layer adds the origin.
/// let signed = ServiceBuilder::new().layer(WimseSignLayer::for_origin(signer, origin)?).service(channel);
/// # let _ = signed;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct WimseSignLayer {
    signer: Signer,
    alias: Option<Arc<AudienceFn>>,
    origin: Option<Arc<str>>,
    txn_forwarding: TxnForwarding,
}

impl std::fmt::Debug for WimseSignLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WimseSignLayer")
            .field("signer", &self.signer)
            .field("alias", &self.alias.is_some())
            .field("origin", &self.origin)
            .finish()
    }
}

impl WimseSignLayer {
    /// Signs with `signer`.
    pub fn new(signer: Signer) -> Self {
        Self { signer, alias: None, origin: None, txn_forwarding: TxnForwarding::unconfigured() }
    }

    /// Signs with `signer` for the server at `origin`: the layer for a tonic `Channel` (see
    /// [`origin`](Self::origin)).
    pub fn for_origin(signer: Signer, origin: &str) -> Result<Self, Error> {
        Self::new(signer).origin(origin)
    }

    /// The server's origin (`scheme://host[:port]`, exactly as its verifier names it in
    /// `VerifierConfig::with_origin`), for requests whose URI is only a path, as a tonic
    /// `Channel` sends them: their audience is this origin + the path (for gRPC,
    /// `/package.Service/Method`), and their Txn-Token goes where this origin's would (see
    /// [`trust_domain_origins`](Self::trust_domain_origins)). Absolute URIs keep their own.
    /// Refused unless http(s) with a host and no path, query or user info.
    pub fn origin(mut self, origin: &str) -> Result<Self, Error> {
        let trimmed = origin.trim_end_matches('/');
        let is_origin = trimmed.parse::<Uri>().is_ok_and(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.authority().is_some_and(|a| !a.as_str().contains('@') && !a.host().is_empty())
                && matches!(uri.path(), "" | "/")
                && uri.query().is_none()
        });
        if !is_origin {
            return Err(Error::with_detail(
                ErrorKind::InvalidConfiguration,
                format!("WimseSignLayer::origin: `{origin}` is not an origin (http(s)://host[:port], no path)"),
            ));
        }
        self.origin = Some(Arc::from(trimmed));
        Ok(self)
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

    /// The request's origin: its URI's scheme and authority, else the configured origin; empty
    /// when neither (no origin, so nothing is forwarded).
    fn request_origin(&self, uri: &Uri) -> String {
        match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(authority)) => format!("{scheme}://{authority}"),
            _ => self.origin.as_deref().unwrap_or_default().to_owned(),
        }
    }

    fn audience(&self, req: &Request<impl Sized>) -> Result<String, Error> {
        if let Some(AudienceOverride(aud)) = req.extensions().get::<AudienceOverride>() {
            return Ok(aud.clone());
        }
        let uri = req.uri();
        if let Some(aud) = self.alias.as_ref().and_then(|alias| alias(uri)).or_else(|| audience_for(uri)) {
            return Ok(aud);
        }
        match &self.origin {
            Some(origin) if uri.authority().is_none() => Ok(format!("{origin}{}", uri.path())),
            _ => Err(Error::with_detail(
                ErrorKind::InvalidConfiguration,
                "the request URI has no scheme and host (a tonic Channel sends only the path), so the signing \
                 layer cannot name the audience: build it for the server's origin, \
                 WimseSignLayer::for_origin(signer, \"http://host:port\"), or give it .origin(..) or \
                 .audience_alias(..)",
            )),
        }
    }

    fn sign<B>(&self, req: &mut Request<B>) -> Result<(), Error> {
        let token = req.extensions().get::<TxnToken>().cloned();
        if self.txn_forwarding.is_configured() || token.is_some() {
            // Scheme and authority; `TxnForwarding` normalizes them (and refuses user info).
            let origin = self.request_origin(req.uri());
            self.txn_forwarding.apply(&origin, req.headers_mut(), token.as_ref())?;
        }
        let aud = self.audience(req)?;
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
                let error = call_error(e, wimse_core::server::framing::is_grpc(req.headers()));
                SignFuture { future: None, error: Some(error) }
            }
        }
    }
}

/// The error a refused call ends with: the [`Error`] itself, or for a gRPC call (feature
/// `tonic`) a `tonic::Status` carrying it, which tonic hands to the caller as it is (any other
/// error becomes an `UNKNOWN` status).
fn call_error(error: Error, grpc: bool) -> BoxError {
    #[cfg(feature = "tonic")]
    if grpc {
        return Box::new(grpc_status(error));
    }
    let _ = grpc;
    Box::new(error)
}

/// A client-side refusal as the gRPC status a tonic caller sees: its code says who must act
/// (a misconfigured client, missing credentials), its message the reason code and the fix.
#[cfg(feature = "tonic")]
fn grpc_status(error: Error) -> tonic::Status {
    let code = match error.kind() {
        ErrorKind::InvalidConfiguration => tonic::Code::FailedPrecondition,
        ErrorKind::CredentialsUnavailable => tonic::Code::Unauthenticated,
        ErrorKind::InvalidHeaderValue => tonic::Code::InvalidArgument,
        _ => tonic::Code::Internal,
    };
    let mut status = tonic::Status::new(code, format!("wimse: {}: {error}", error.reason()));
    status.set_source(Arc::new(error));
    status
}

pin_project! {
    /// Response future of [`WimseSign`].
    pub struct SignFuture<F> {
        #[pin]
        future: Option<F>,
        error: Option<BoxError>,
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
                    .unwrap_or_else(|| Box::new(Error::with_detail(ErrorKind::Crypto, "polled after completion")));
                Poll::Ready(Err(error))
            }
        }
    }
}
