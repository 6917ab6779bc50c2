//! The server layer: verifies the caller of every request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use wimse_core::http::Rejection;
use wimse_core::policy::Policy;
use wimse_core::verify::{Guard, RequestView, Verifier};

use crate::rejection_response;

/// Body of responses from [`Wimse`]: the inner service's body, or a rejection's problem JSON.
pub type WimseBody<B> = Either<B, Full<Bytes>>;

/// Verifies WIT + `Authorization: WPT` on every request and puts the [`VerifiedCaller`] into
/// the request extensions. Rejected requests are answered by the layer (401 with
/// `WWW-Authenticate: WPT`, 400, or 403 for a policy) and never reach the inner service.
#[derive(Debug, Clone)]
pub struct WimseLayer {
    guard: Guard,
}

impl WimseLayer {
    /// Requires every request to carry valid credentials.
    pub fn new(verifier: Verifier) -> Self {
        Self { guard: Guard::new(verifier) }
    }

    /// Lets requests with no WIMSE credentials at all through, without a `VerifiedCaller`.
    /// Requests that carry credentials must still verify.
    pub fn optional(self) -> Self {
        Self { guard: self.guard.optional() }
    }

    /// Applies `policy` to every verified caller (403 when denied).
    pub fn policy(self, policy: Policy) -> Self {
        Self { guard: self.guard.policy(policy) }
    }
}

impl From<Guard> for WimseLayer {
    fn from(guard: Guard) -> Self {
        Self { guard }
    }
}

impl<S> Layer<S> for WimseLayer {
    type Service = Wimse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Wimse { inner, layer: self.clone() }
    }
}

/// The service made by [`WimseLayer`].
#[derive(Debug, Clone)]
pub struct Wimse<S> {
    inner: S,
    layer: WimseLayer,
}

impl<S> Wimse<S> {
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

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Wimse<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<WimseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        match self.layer.guard.check(&RequestView { path: req.uri().path(), headers: req.headers() }) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    req.extensions_mut().insert(caller);
                }
                ResponseFuture::inner(self.inner.call(req))
            }
            Err(error) => ResponseFuture::rejected(rejection_response(Rejection::from_error(&error))),
        }
    }
}

pin_project! {
    /// Response future of [`Wimse`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Inner { #[pin] future: F },
        Rejected { response: Option<Response<WimseBody<B>>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn inner(future: F) -> Self {
        Self { kind: Kind::Inner { future } }
    }

    pub(crate) fn rejected(response: Response<WimseBody<B>>) -> Self {
        Self { kind: Kind::Rejected { response: Some(response) } }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<WimseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => Poll::Ready(ready!(future.poll(cx)).map(|r| r.map(Either::Left))),
            KindProj::Rejected { response } => Poll::Ready(Ok(response.take().unwrap_or_else(polled_after_ready))),
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
