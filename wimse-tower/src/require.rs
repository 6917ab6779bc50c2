//! Per-route authorization: apply a [`Policy`] to the caller a [`WimseLayer`](crate::WimseLayer)
//! verified (for axum, with `route_layer`).
//!
//! Order: a per-route policy runs after the layer has claimed the caller's proof against replay,
//! so a caller it refuses has used a replay slot; the per-caller quota
//! ([`VerifierConfig::caller_quota`](wimse_core::server::verify::VerifierConfig::caller_quota)) keeps such
//! a caller from exhausting the store for others. A policy given to the layer itself
//! ([`WimseLayer::policy`](crate::WimseLayer::policy)) runs before the claim.

use std::task::{Context, Poll};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;
use wimse_core::server::caller::VerifiedCaller;
use wimse_core::server::framing::Rejection;
use wimse_core::server::policy::Policy;
use wimse_core::{Error, ErrorKind};

use crate::rejection_response;
use crate::server::{WimseBody, WimseResponseFuture};

/// Requires a verified caller allowed by a policy: 401 with a challenge when the request has no
/// [`VerifiedCaller`], 403 when the policy denies it.
#[derive(Debug, Clone)]
pub struct RequirePolicyLayer {
    policy: Policy,
}

impl RequirePolicyLayer {
    /// Applies `policy`.
    pub fn new(policy: Policy) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for RequirePolicyLayer {
    type Service = RequirePolicy<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequirePolicy { inner, policy: self.policy.clone() }
    }
}

/// The service made by [`RequirePolicyLayer`].
#[derive(Debug, Clone)]
pub struct RequirePolicy<S> {
    inner: S,
    policy: Policy,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequirePolicy<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<WimseBody<ResBody>>;
    type Error = S::Error;
    type Future = WimseResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let grpc = wimse_core::server::framing::answers_as_grpc(req.version(), req.headers());
        let decision = match req.extensions().get::<VerifiedCaller>() {
            Some(caller) => self.policy.check_request(caller, req.method().as_str(), req.uri().path()),
            None => Err(Error::with_detail(ErrorKind::MissingWit, "route requires a verified caller")),
        };
        match decision {
            Ok(()) => WimseResponseFuture::inner(self.inner.call(req), None),
            Err(e) => {
                // The route's own decision, logged like the layer's (the caller may have
                // passed the layer: this event is the request's final one).
                match req.extensions().get::<VerifiedCaller>() {
                    Some(caller) => caller.audit_refused(&e),
                    None => wimse_core::server::audit::rejected("none", None, &e),
                }
                WimseResponseFuture::rejected(rejection_response(Rejection::from_error(&e), grpc))
            }
        }
    }
}
