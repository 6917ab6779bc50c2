//! A per-scope or per-resource policy on callers that [`WimseAuth`](crate::WimseAuth) already
//! verified further out: actix-web's counterpart of axum's `route_layer(RequirePolicyLayer)`.

use std::future::{Ready, ready};
use std::rc::Rc;

use actix_web::HttpMessage as _;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use futures_util::future::LocalBoxFuture;
use wimse_core::server::caller::VerifiedCaller;
use wimse_core::server::framing::Rejection;
use wimse_core::server::policy::Policy;
use wimse_core::{Error, ErrorKind};

/// Refuses callers `policy` does not allow (403 `policy_denied`, or the reason of a Txn-Token
/// rule such as `txn_scope_denied`: see [`Policy::check`]) and requests without a verified
/// caller (401), logging each refusal once on `wimse::audit`.
///
/// Wrap it on a scope or resource inside one wrapped with [`WimseAuth`](crate::WimseAuth) (often
/// an optional one, so public routes stay open). A policy given to the `Pipeline` itself refuses
/// callers before their proof is claimed against replay; this one runs after, which is fine for
/// per-route differences between callers the service accepts at all.
///
/// ```
/// use actix_web::{App, web};
/// use wimse_actix::{Caller, Pipeline, RequirePolicy, WimseAuth};
/// use wimse_core::prelude::*;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let verifier = Verifier::new(TrustStore::new(), VerifierConfig::new().origin("https://ops.example"))?;
/// let admins = Policy::named("admin").allow(Rule::exact("spiffe://prod.example/ops")?);
/// let app = App::new()
///     .wrap(WimseAuth::new(Pipeline::new(verifier).optional()))
///     .route("/health", web::get().to(|| async { "ok" }))
///     .service(
///         web::scope("/admin")
///             .wrap(RequirePolicy::new(admins))
///             .route("/rotate", web::post().to(|caller: Caller| async move { format!("by {}", caller.id()) })),
///     );
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RequirePolicy {
    policy: Rc<Policy>,
}

impl RequirePolicy {
    /// Requires callers `policy` allows.
    pub fn new(policy: Policy) -> Self {
        Self { policy: Rc::new(policy) }
    }
}

impl<S, B> Transform<S, ServiceRequest> for RequirePolicy
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = RequirePolicyMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequirePolicyMiddleware { service: Rc::new(service), policy: self.policy.clone() }))
    }
}

/// The service made by [`RequirePolicy`].
#[derive(Debug)]
pub struct RequirePolicyMiddleware<S> {
    service: Rc<S>,
    policy: Rc<Policy>,
}

impl<S, B> Service<ServiceRequest> for RequirePolicyMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let decision = match req.extensions().get::<VerifiedCaller>() {
            Some(caller) => self
                .policy
                .check_request(caller, req.method().as_str(), req.path())
                .map_err(|e| (Some(caller.clone()), e)),
            None => Err((None, Error::with_detail(ErrorKind::MissingWit, "scope requires a verified caller"))),
        };
        match decision {
            Ok(()) => {
                let service = self.service.clone();
                Box::pin(async move { service.call(req).await.map(ServiceResponse::map_into_left_body) })
            }
            Err((caller, error)) => {
                match &caller {
                    Some(caller) => caller.audit_refused(&error),
                    None => wimse_core::server::audit::rejected("none", None, &error),
                }
                let response = crate::rejection_response(&Rejection::from_error(&error));
                Box::pin(ready(Ok(req.into_response(response).map_into_right_body())))
            }
        }
    }
}
