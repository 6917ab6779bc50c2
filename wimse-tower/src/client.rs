//! The client layer: proves the workload's identity on every outgoing request, by WPT (the
//! default) or by HTTP message signature, with the rules of the core's
//! [`ClientExchange`](wimse_core::client::exchange::ClientExchange).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, Limited};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use wimse_core::client::exchange::{ClientExchange, HttpTarget, OutgoingBody};
use wimse_core::client::sign::Signer;
use wimse_core::server::pipeline::DEFAULT_BODY_LIMIT;
use wimse_core::{Error, ErrorKind};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body handling of a [`WimseSignLayer`] that proves with WPTs: bodies pass untouched (and
/// may be streams); the inner service gets the request as it came.
#[derive(Debug, Clone, Copy)]
pub struct Streamed;

/// Body handling of a [`WimseSignLayer`] in HTTP-signature mode: bodies are buffered (up to
/// [`body_limit`](WimseSignLayer::body_limit)) so the signature's `Content-Digest` covers them,
/// and the inner service gets `Request<Full<Bytes>>`.
#[derive(Debug, Clone, Copy)]
pub struct Buffered;

/// Proves the workload's identity on each request of a tower-based HTTP client (hyper-util's
/// `Client`, a tonic `Channel`): a WIT and a fresh WPT by default, or a WIT and an HTTP message
/// signature after [`http_signatures`](Self::http_signatures), which buffers bodies and can ask
/// for and verify signed responses. Per request, a
/// [`ProofMode`](wimse_core::client::exchange::ProofMode),
/// [`AudienceOverride`](wimse_core::client::sign::AudienceOverride),
/// [`ContextTokens`](wimse_core::client::exchange::ContextTokens) or
/// [`TxnToken`](wimse_core::protocol::txn::TxnToken) extension changes what is sent (a signed
/// request needs the HTTP-signature layer, which has its body).
///
/// The audience is, in order: an `AudienceOverride` in the request extensions, the configured
/// alias, the request URI without query when it is absolute, or, for a path-only URI (what a
/// tonic `Channel` hands its layers), the [origin](Self::origin) + the path. A request none of
/// these names an audience for is refused before it is sent
/// ([`ErrorKind::InvalidConfiguration`], a message naming the fix; with the `tonic` feature, a
/// gRPC call through the WPT layer gets it as a `FAILED_PRECONDITION` status).
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
pub struct WimseSignLayer<M = Streamed> {
    exchange: ClientExchange<Uri>,
    body_limit: usize,
    bodies: PhantomData<fn() -> M>,
}

impl<M> Clone for WimseSignLayer<M> {
    fn clone(&self) -> Self {
        Self { exchange: self.exchange.clone(), body_limit: self.body_limit, bodies: PhantomData }
    }
}

impl<M> std::fmt::Debug for WimseSignLayer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WimseSignLayer")
            .field("exchange", &self.exchange)
            .field("body_limit", &self.body_limit)
            .finish()
    }
}

impl WimseSignLayer {
    /// Signs with `signer`, by WPT.
    pub fn new(signer: Signer) -> Self {
        Self { exchange: ClientExchange::new(signer), body_limit: DEFAULT_BODY_LIMIT, bodies: PhantomData }
    }

    /// Signs with `signer` for the server at `origin`: the layer for a tonic `Channel` (see
    /// [`origin`](Self::origin)).
    pub fn for_origin(signer: Signer, origin: &str) -> Result<Self, Error> {
        Self::new(signer).origin(origin)
    }

    /// Proves with HTTP message signatures (http-signature-08) over method, path, query,
    /// fields and body, instead of WPTs: bodies are buffered from now on (see [`Buffered`]).
    pub fn http_signatures(self) -> WimseSignLayer<Buffered> {
        WimseSignLayer { exchange: self.exchange.http_signatures(), body_limit: self.body_limit, bodies: PhantomData }
    }
}

impl<M> WimseSignLayer<M> {
    /// The server's origin (`scheme://host[:port]`, exactly as its verifier names it in
    /// `VerifierConfig::origin`), for requests whose URI is only a path, as a tonic
    /// `Channel` sends them: their audience is this origin + the path (for gRPC,
    /// `/package.Service/Method`), and their Txn-Token goes where this origin's would (see
    /// [`trust_domain_origins`](Self::trust_domain_origins)). Absolute URIs keep their own.
    /// Refused unless http(s) with a host and no path, query or user info.
    pub fn origin(mut self, origin: &str) -> Result<Self, Error> {
        self.exchange = self.exchange.origin(origin)?;
        Ok(self)
    }

    wimse_core::client_exchange_setters!(routing Uri);
}

impl WimseSignLayer<Buffered> {
    wimse_core::client_exchange_setters!(responses Uri);

    /// The largest request or response body buffered (default 1 MiB).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }
}

impl<S, M> Layer<S> for WimseSignLayer<M> {
    type Service = WimseSign<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        WimseSign { inner, layer: self.clone() }
    }
}

/// The service made by [`WimseSignLayer`].
pub struct WimseSign<S, M = Streamed> {
    inner: S,
    layer: WimseSignLayer<M>,
}

impl<S: Clone, M> Clone for WimseSign<S, M> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), layer: self.layer.clone() }
    }
}

impl<S: std::fmt::Debug, M> std::fmt::Debug for WimseSign<S, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WimseSign").field("inner", &self.inner).field("layer", &self.layer).finish()
    }
}

/// What a request in WPT mode asking for an HTTP signature is told.
const NEEDS_BUFFERING: &str = "an HTTP signature covers the body, which this layer streams: build it with \
                               WimseSignLayer::http_signatures(), which buffers bodies";

impl<S, B> Service<Request<B>> for WimseSign<S, Streamed>
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

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let target = HttpTarget { uri: &parts.uri, method: &parts.method };
        let streamed = OutgoingBody::Streamed { why: NEEDS_BUFFERING };
        if let Err(error) = self.layer.exchange.sign(&target, &parts.extensions, &mut parts.headers, streamed) {
            let error = call_error(error, wimse_core::server::framing::is_grpc(&parts.headers));
            return SignFuture { future: None, error: Some(error) };
        }
        SignFuture { future: Some(self.inner.call(Request::from_parts(parts, body))), error: None }
    }
}

/// Response future of a [`WimseSign`] in HTTP-signature mode.
pub type SignatureFuture<B> = Pin<Box<dyn Future<Output = Result<Response<Either<B, Full<Bytes>>>, BoxError>> + Send>>;

impl<S, B, ResBody> Service<Request<B>> for WimseSign<S, Buffered>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Either<ResBody, Full<Bytes>>>;
    type Error = BoxError;
    type Future = SignatureFuture<ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The inner service was made ready by `poll_ready`: hand that one to the future.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(sign_and_send(self.layer.clone(), inner, req))
    }
}

/// The HTTP-signature path: buffer the body, sign, send, and when the exchange says so,
/// buffer the response and verify it.
async fn sign_and_send<S, B, ResBody>(
    layer: WimseSignLayer<Buffered>,
    mut inner: S,
    req: Request<B>,
) -> Result<Response<Either<ResBody, Full<Bytes>>>, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let body = Limited::new(body, layer.body_limit)
        .collect()
        .await
        .map_err(|_| Error::with_detail(ErrorKind::BodyTooLarge, "the request body could not be buffered for signing"))?
        .to_bytes();
    let target = HttpTarget { uri: &parts.uri, method: &parts.method };
    let sent = layer.exchange.sign(&target, &parts.extensions, &mut parts.headers, OutgoingBody::Bytes(Some(&body)))?;
    let response = inner.call(Request::from_parts(parts, Full::new(body))).await.map_err(Into::into)?;
    if !sent.must_verify(response.headers())? {
        return Ok(response.map(Either::Left));
    }
    let (res_parts, res_body) = response.into_parts();
    let res_body = Limited::new(res_body, layer.body_limit)
        .collect()
        .await
        .map_err(|_| {
            Error::with_detail(
                ErrorKind::BodyTooLarge,
                "the response body could not be buffered to check its signature",
            )
        })?
        .to_bytes();
    sent.verify(res_parts.status.as_u16(), &res_parts.headers, &res_body)?;
    Ok(Response::from_parts(res_parts, Either::Right(Full::new(res_body))))
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
    status.set_source(std::sync::Arc::new(error));
    status
}

pin_project! {
    /// Response future of a [`WimseSign`] that proves with WPTs.
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
