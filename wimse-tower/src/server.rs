//! The server layer: verifies the caller of every request, and signs responses when asked.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use wimse_core::client::sign::Signer;
use wimse_core::protocol::httpsig::has_signature;
use wimse_core::server::caller::{TlsPeer, VerifiedCaller};
use wimse_core::server::pipeline::Pipeline;
use wimse_core::server::policy::Policy;
use wimse_core::server::verify::{RequestView, Verifier};
use wimse_core::{Error, ErrorKind};

use crate::rejection_response;
use crate::stream::ExpiringBody;

/// Body of responses from [`WimseService`]: the inner service's body (ended when a gRPC
/// caller's credentials expire, see [`ExpiringBody`]), or a rejection's problem JSON (or a
/// signed response's buffered body).
pub type WimseBody<B> = Either<ExpiringBody<B>, Full<Bytes>>;

/// Body of requests passed on by [`WimseService`]: the original body, or the buffered bytes that a
/// signed request's `Content-Digest` was checked against (the handler sees exactly those).
pub type WimseRequestBody<B> = Either<B, Full<Bytes>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub use wimse_core::server::pipeline::DEFAULT_BODY_LIMIT;

/// Verifies the caller of every request: WIT + `Authorization: WPT`, or WIT + HTTP message
/// signature, through the pipeline of [`Pipeline`](wimse_core::server::pipeline::Pipeline): credentials, then
/// the policy, then the replay claim (a shared store is awaited without holding a thread; the
/// in-memory store answers at once, without boxing). Puts the [`VerifiedCaller`](wimse_core::server::caller::VerifiedCaller) into the request extensions. Rejected requests are
/// answered by the layer (401 with `WWW-Authenticate: WPT`, 400, 403 for a policy, 413 for a
/// body over the limit) and never reach the inner service.
///
/// Signed requests with a body are buffered (up to [`body_limit`](Self::body_limit)) so the
/// `Content-Digest` can be checked; WPT requests are streamed untouched. When a signed request
/// asks for a signed response (`wimse-sign-response`), the layer signs it with the credentials
/// given to [`sign_responses`](Self::sign_responses), or answers 501 if none were given: never
/// an unsigned success.
///
/// ```
/// use tower::ServiceBuilder;
/// use wimse_core::prelude::*;
/// use wimse_tower::WimseLayer;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let issuer = SigningKey::generate(Algorithm::ES256)?;
/// let trust = TrustStore::new().with("spiffe://prod.example".parse()?, TrustAnchors::new().key(issuer.public_key().clone()));
/// let verifier = Verifier::new(trust, VerifierConfig::new().origin("https://payments.example"))?;
/// let policy = Policy::named("payments").allow(Rule::exact("spiffe://prod.example/orders")?);
/// let service = ServiceBuilder::new()
///     .layer(WimseLayer::new(verifier).policy(policy))
///     .service_fn(|request: http::Request<String>| async move {
///         // Only verified, allowed callers get here.
///         let caller = request.extensions().get::<VerifiedCaller>().expect("set by the layer");
///         Ok::<_, std::convert::Infallible>(http::Response::new(format!("hello {}", caller.id())))
///     });
/// # let _ = service;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct WimseLayer {
    // Shared: axum and tower clone the service for every request.
    guard: Arc<Pipeline>,
}

impl WimseLayer {
    /// Requires every request to carry valid credentials.
    pub fn new(verifier: Verifier) -> Self {
        Self::from(Pipeline::new(verifier))
    }

    /// Lets requests with no WIMSE credentials at all through, without a `VerifiedCaller`.
    /// Requests that carry credentials must still verify.
    pub fn optional(self) -> Self {
        Self::from(Arc::unwrap_or_clone(self.guard).optional())
    }

    /// Applies `policy` to every verified caller (403 when denied).
    pub fn policy(self, policy: Policy) -> Self {
        Self::from(Arc::unwrap_or_clone(self.guard).policy(policy))
    }

    /// Applies `policy` instead of the general one on `route` (an exact path, or a prefix
    /// ending in `/`; for gRPC a method `/pkg.Service/Method` or a service `/pkg.Service/`);
    /// see [`Pipeline::route_policy`]. Checked before the proof is claimed.
    pub fn route_policy(self, route: impl Into<String>, policy: Policy) -> Self {
        Self::from(Arc::unwrap_or_clone(self.guard).route_policy(route, policy))
    }

    /// Lets gRPC streams run on after the caller's credentials expired (by default a stream
    /// ends with `UNAUTHENTICATED`, `credentials_expired`, when the WIT that opened it expires).
    pub fn keep_streams_past_expiry(self) -> Self {
        Self::from(Arc::unwrap_or_clone(self.guard).keep_streams_past_expiry())
    }

    /// Ends every gRPC stream after `age` at most (mutual-TLS callers included).
    pub fn max_stream_age(self, age: std::time::Duration) -> Self {
        Self::from(Arc::unwrap_or_clone(self.guard).max_stream_age(age))
    }

    /// The largest signed-request body buffered for its digest (default 1 MiB; beyond: 413).
    pub fn body_limit(self, bytes: usize) -> Self {
        Self::from(Arc::unwrap_or_clone(self.guard).body_limit(bytes))
    }

    /// How long a signed request's body may take to arrive once its header fields passed
    /// (default 10 s; beyond: 408). Nothing is read of a body before its headers are checked.
    pub fn body_deadline(self, deadline: std::time::Duration) -> Self {
        Self::from(Arc::unwrap_or_clone(self.guard).body_deadline(deadline))
    }

    /// How many bytes of signed request bodies the layer buffers at once, all requests together
    /// (default [`wimse_core::server::pipeline::DEFAULT_BODY_BUDGET`], 64 MiB); see [`Pipeline::body_budget`].
    pub fn body_budget(self, bytes: usize) -> Self {
        Self::from(Arc::unwrap_or_clone(self.guard).body_budget(bytes))
    }

    /// Signs responses that callers ask to be signed, with this service's own credentials.
    pub fn sign_responses(self, signer: Signer) -> Self {
        Self::from(Arc::unwrap_or_clone(self.guard).sign_responses(signer))
    }

    /// Signs the response to every HTTP-signature request, asked or not (needs
    /// [`sign_responses`](Self::sign_responses)).
    pub fn always_sign_responses(self) -> Self {
        Self::from(Arc::unwrap_or_clone(self.guard).always_sign_responses())
    }
}

impl From<Pipeline> for WimseLayer {
    fn from(guard: Pipeline) -> Self {
        Self { guard: Arc::new(guard) }
    }
}

impl<S> Layer<S> for WimseLayer {
    type Service = WimseService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WimseService { inner, layer: self.clone() }
    }
}

/// The service made by [`WimseLayer`].
#[derive(Debug, Clone)]
pub struct WimseService<S> {
    inner: S,
    layer: WimseLayer,
}

impl<S> WimseService<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, layer: WimseLayer) -> Self {
        Self { inner, layer }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

fn path_and_query_of(uri: &http::Uri) -> &str {
    uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
}

/// The authority the request was sent to: the target's (HTTP/2 `:authority`, an absolute or
/// CONNECT target) or the `Host` field.
fn authority_of<'a>(uri: &'a http::Uri, headers: &'a http::HeaderMap) -> &'a str {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(http::header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or_default()
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for WimseService<S>
where
    S: Service<Request<WimseRequestBody<ReqBody>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<WimseBody<ResBody>>;
    type Error = S::Error;
    type Future = WimseResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // How a refusal is answered follows the protocol (HTTP/2 and `te: trailers`), but whether
        // a response is a stream to bound does not depend on what the caller chose to send:
        // tonic serves gRPC without `te`, and the bound is what constrains the caller.
        let grpc = wimse_core::server::framing::answers_as_grpc(req.version(), req.headers());
        let stream = wimse_core::server::framing::is_grpc(req.headers());
        if has_signature(req.headers()) {
            if wimse_core::server::framing::is_grpc(req.headers()) {
                // A gRPC body is a stream the signature's Content-Digest cannot cover before
                // it ends: refuse plainly rather than buffer a stream.
                let error = Error::with_detail(
                    ErrorKind::UnsupportedProof,
                    "HTTP message signatures are not supported for gRPC; use a WPT",
                );
                wimse_core::server::audit::rejected("http-signature", None, &error);
                return WimseResponseFuture::rejected(reject(&self.layer.guard, &error, grpc));
            }
            // The inner service was made ready by `poll_ready`; hand that one to the future and
            // keep a fresh clone (the usual tower pattern for services called from a future).
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            return WimseResponseFuture::boxed(Box::pin(signed(self.layer.clone(), inner, req)));
        }
        let view = RequestView::new(path_and_query_of(req.uri()), req.headers())
            .method(req.method().as_str())
            .authority(authority_of(req.uri(), req.headers()));
        let tls = req.extensions().get::<TlsPeer>();
        let pending = match self.layer.guard.admit(&view, tls) {
            Ok(Some(pending)) => pending,
            Ok(None) => return WimseResponseFuture::inner(self.inner.call(req.map(Either::Left)), None),
            Err(error) => return WimseResponseFuture::rejected(reject(&self.layer.guard, &error, grpc)),
        };
        let mut confirm = self.layer.guard.confirm(pending);
        match confirm.take_ready() {
            // The in-memory store answers at once: no allocation, no extra poll.
            Some(Ok(caller)) => {
                let deadline = stream_deadline(&self.layer.guard, stream, &caller);
                let mut req = req.map(Either::Left);
                req.extensions_mut().insert(caller);
                WimseResponseFuture::inner(self.inner.call(req), deadline)
            }
            Some(Err(error)) => WimseResponseFuture::rejected(reject(&self.layer.guard, &error, grpc)),
            // A shared store answers later; the request waits without holding a thread.
            None => {
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let guard = self.layer.guard.clone();
                WimseResponseFuture::boxed(Box::pin(async move {
                    match confirm.await {
                        Ok(caller) => {
                            let deadline = stream_deadline(&guard, stream, &caller);
                            let mut req = req.map(Either::Left);
                            req.extensions_mut().insert(caller);
                            let response = inner.call(req).await?;
                            Ok(response.map(|body| Either::Left(ExpiringBody::new(body, deadline))))
                        }
                        Err(error) => Ok(reject(&guard, &error, grpc)),
                    }
                }))
            }
        }
    }
}

/// When a gRPC call's response (maybe a stream) must end: when the caller's credentials do.
fn stream_deadline(guard: &Pipeline, stream: bool, caller: &VerifiedCaller) -> Option<tokio::time::Instant> {
    if !stream {
        return None;
    }
    guard.stream_deadline(Some(caller)).map(|left| tokio::time::Instant::now() + left)
}

fn reject<B>(guard: &Pipeline, error: &Error, grpc: bool) -> Response<WimseBody<B>> {
    rejection_response(guard.rejection(error), grpc)
}

/// The signed-request path: the core's [`Pipeline::admit_signed`] over the body's data frames,
/// the inner service with the checked bytes, then [`ResponseSigner::sign_body`] when a signed
/// response is due (trailers are not part of the content).
async fn signed<S, ReqBody, ResBody>(
    layer: WimseLayer,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<WimseBody<ResBody>>, S::Error>
where
    S: Service<Request<WimseRequestBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let view = RequestView::new(path_and_query_of(&parts.uri), &parts.headers)
        .method(parts.method.as_str())
        .authority(authority_of(&parts.uri, &parts.headers));
    let admitted = layer.guard.admit_signed(view, parts.extensions.get::<TlsPeer>(), body.into_data_stream()).await;
    let admitted = match admitted {
        Ok(admitted) => admitted,
        Err(error) => return Ok(reject(&layer.guard, &error, false)),
    };
    let mut req = Request::from_parts(parts, Either::Right(Full::new(admitted.body)));
    if let Some(caller) = admitted.caller {
        req.extensions_mut().insert(caller);
    }
    let response = inner.call(req).await?;
    let Some(signer) = admitted.response else {
        return Ok(response.map(|body| Either::Left(ExpiringBody::unbounded(body))));
    };
    let (mut res_parts, res_body) = response.into_parts();
    match signer.sign_body(res_parts.status.as_u16(), &mut res_parts.headers, res_body.into_data_stream()).await {
        Ok(body) => Ok(Response::from_parts(res_parts, Either::Right(Full::new(body)))),
        Err(error) => Ok(reject(&layer.guard, &error, false)),
    }
}

type BoxedResponse<B, E> = Pin<Box<dyn Future<Output = Result<Response<WimseBody<B>>, E>> + Send>>;

pin_project! {
    /// Response future of [`WimseService`] and [`RequirePolicy`](crate::RequirePolicy).
    pub struct WimseResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Inner { #[pin] future: F, deadline: Option<tokio::time::Instant> },
        Rejected { response: Option<Response<WimseBody<B>>> },
        Boxed { future: BoxedResponse<B, E> },
    }
}

impl<F, B, E> WimseResponseFuture<F, B, E> {
    /// The inner service's answer, its body ended at `deadline` if one is given.
    pub(crate) fn inner(future: F, deadline: Option<tokio::time::Instant>) -> Self {
        Self { kind: Kind::Inner { future, deadline } }
    }

    pub(crate) fn rejected(response: Response<WimseBody<B>>) -> Self {
        Self { kind: Kind::Rejected { response: Some(response) } }
    }

    fn boxed(future: BoxedResponse<B, E>) -> Self {
        Self { kind: Kind::Boxed { future } }
    }
}

impl<F, B, E> Future for WimseResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<WimseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future, deadline } => {
                let deadline = *deadline;
                Poll::Ready(
                    ready!(future.poll(cx)).map(|r| r.map(|body| Either::Left(ExpiringBody::new(body, deadline)))),
                )
            }
            KindProj::Rejected { response } => Poll::Ready(Ok(response.take().unwrap_or_else(polled_after_ready))),
            KindProj::Boxed { future } => future.as_mut().poll(cx),
        }
    }
}

/// Answer for a future polled again after completion: a contract violation by the caller,
/// answered with a 500 rather than a panic.
pub(crate) fn polled_after_ready<B>() -> Response<WimseBody<B>> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
    *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    response
}
