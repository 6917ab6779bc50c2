//! # wimse-actix
//!
//! The protocol is [`wimse_core`] (re-exported; its front page lists every adapter); [`prelude`]
//! has what a program needs. A runnable example: `cargo run -p wimse-examples --bin actix-service`.
//!
//! WIMSE workload identity for actix-web: the [`WimseAuth`] middleware verifies the caller of every
//! request (WIT + `Authorization: WPT`, WIT + HTTP message signature, or a mutual-TLS peer with
//! feature `tls`), and the [`Caller`] extractor hands it to handlers. Rejections are answered
//! exactly like the tower and axum adapters do.
//!
//! The middleware runs the pipeline of [`Pipeline`]: credentials, then the
//! configured policy, then the replay claim (awaited without blocking the worker when the
//! store is shared). A `WimseAuth` wrapped on a scope with its own policy refuses callers before
//! their proof is claimed; checks in handlers run after it, where the per-caller quota protects
//! the other callers. Wrap a request in one `WimseAuth` only: one app-wide and another on a scope
//! would claim the same proof twice, and every request would fail as `replayed_proof`; for a
//! stricter policy on a scope under an app-wide `WimseAuth`, wrap the scope in
//! [`RequirePolicy`].
//!
//! ```
//! use actix_web::{App, web};
//! use wimse_actix::{Caller, WimseAuth, Pipeline};
//! use wimse_core::prelude::*;
//!
//! async fn whoami(caller: Caller) -> String {
//!     format!("hello {}", caller.id())
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let issuer = SigningKey::generate(Algorithm::ES256)?;
//! let trust = TrustStore::new().with(
//!     "spiffe://prod.example".parse()?,
//!     TrustAnchors::new().key(issuer.public_key().clone()),
//! );
//! let verifier = Verifier::new(trust, VerifierConfig::new().origin("https://billing.example"))?;
//! let config = Pipeline::new(verifier).policy(Policy::named("billing").allow(Rule::path_prefix("spiffe://prod.example/orders")?));
//!
//! // Configure once through app data; the middleware reads it from there.
//! let app = App::new()
//!     .app_data(web::Data::new(config))
//!     .wrap(WimseAuth::from_app_data())
//!     .route("/whoami", web::get().to(whoami));
//! # let _ = app;
//! # Ok(())
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

use std::fmt;
use std::future::{Ready, ready};
use std::ops::Deref;
use std::rc::Rc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError, web};
use futures_util::future::LocalBoxFuture;
use wimse_core::protocol::httpsig::has_signature;
use wimse_core::server::caller::{PendingCaller, TlsPeer, VerifiedCaller};
use wimse_core::server::framing::{HeaderSource, Rejection};
use wimse_core::server::verify::RequestView;
use wimse_core::{Error, ErrorKind};

mod require;

pub use require::{RequirePolicy, RequirePolicyMiddleware};

/// What an actix-web service needs: the middleware, the extractor, the rejection, and the core
/// prelude (which has [`Pipeline`]).
pub mod prelude {
    pub use crate::{Caller, RequirePolicy, Transaction, WimseAuth, WimseRejection};
    pub use wimse_core::prelude::*;
}
pub use wimse_core;
/// What the middleware checks: the verifier, an optional policy, required or optional
/// authentication. Put it in app data (`web::Data<Pipeline>`) or give it to [`WimseAuth::new`].
pub use wimse_core::server::pipeline::Pipeline;

/// Mutual TLS (feature `tls`): serve with `HttpServer::listen_rustls_0_23` and a config from
/// [`wimse_core::protocol::wic::server_config`], and pass [`tls::on_connect`] to `HttpServer::on_connect`.
#[cfg(feature = "tls")]
pub mod tls {
    use std::any::Any;

    use actix_tls::accept::rustls_0_23::TlsStream;
    use actix_web::dev::Extensions;
    use actix_web::rt::net::TcpStream;
    use wimse_core::server::caller::TlsPeer;

    /// Records the workload of a connection's verified client certificate as its [`TlsPeer`],
    /// which the [`WimseAuth`](crate::WimseAuth) middleware then treats as the caller.
    pub fn on_connect(connection: &dyn Any, data: &mut Extensions) {
        let Some(stream) = connection.downcast_ref::<TlsStream<TcpStream>>() else { return };
        let Some(certificates) = stream.get_ref().1.peer_certificates() else { return };
        match TlsPeer::from_verified_chain(certificates) {
            Ok(peer) => {
                data.insert(peer);
            }
            Err(error) => tracing::warn!(reason = error.reason(), "wimse: peer certificate names no workload"),
        }
    }
}

/// Stages 1–3 of the pipeline (framing, credentials, policy); the claim follows in
/// [`Pipeline::confirm`].
fn admit(config: &Pipeline, req: &ServiceRequest) -> Result<Option<PendingCaller>, Error> {
    let target = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let headers = ActixHeaders(req.headers());
    let view = RequestView::new(target, &headers).method(req.method().as_str()).authority(authority(req));
    config.admit(&view, req.conn_data::<TlsPeer>())
}

/// The authority the request was sent to: the target's (HTTP/2 `:authority`, an absolute or
/// CONNECT target) or the `Host` field. Not `ConnectionInfo::host`, which believes any
/// `Forwarded` / `X-Forwarded-Host` a client sends, and so would let a caller choose the
/// `@authority` a CONNECT signature is checked against and a signed response names.
fn authority(req: &ServiceRequest) -> &str {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(actix_web::http::header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or_default()
}

/// actix-web's header map (from `http` 0.2) seen through the core's [`HeaderSource`].
struct ActixHeaders<'h>(&'h actix_web::http::header::HeaderMap);

impl HeaderSource for ActixHeaders<'_> {
    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.0.get_all(name).map(|v| v.as_bytes())
    }
}

/// The middleware factory (`App::wrap`, `Scope::wrap`, `Resource::wrap`).
#[derive(Debug, Clone)]
pub struct WimseAuth {
    config: Option<web::Data<Pipeline>>,
}

impl WimseAuth {
    /// Uses `config`.
    pub fn new(config: Pipeline) -> Self {
        Self { config: Some(web::Data::new(config)) }
    }

    /// Reads a `web::Data<Pipeline>` from app data on each request. Without one, requests
    /// are refused with a 500 (fail closed).
    pub fn from_app_data() -> Self {
        Self { config: None }
    }
}

impl<S, B> Transform<S, ServiceRequest> for WimseAuth
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = WimseAuthMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(WimseAuthMiddleware { service: Rc::new(service), config: self.config.clone() }))
    }
}

/// The middleware service made by [`WimseAuth`].
pub struct WimseAuthMiddleware<S> {
    service: Rc<S>,
    config: Option<web::Data<Pipeline>>,
}

impl<S> fmt::Debug for WimseAuthMiddleware<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WimseAuthMiddleware").field("config", &self.config).finish_non_exhaustive()
    }
}

impl<S, B> Service<ServiceRequest> for WimseAuthMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        // Shared, not copied: the configuration is behind an `Arc` either way.
        let config = match self.config.as_ref().or_else(|| req.app_data::<web::Data<Pipeline>>()) {
            Some(config) => Ok(config.clone()),
            None => Err(Error::with_detail(ErrorKind::InvalidConfiguration, "no Pipeline in app data")),
        };
        let config = match config {
            Ok(config) => config,
            Err(error) => {
                tracing::error!(
                    "wimse: WimseAuth::from_app_data() found no web::Data<Pipeline>; refusing every request (500)"
                );
                wimse_core::server::audit::rejected("none", None, &error);
                return reject(req, Rejection::from_error(&error));
            }
        };
        if has_signature(&ActixHeaders(req.headers())) {
            return Box::pin(signed(config, self.service.clone(), req));
        }
        let pending = match admit(&config, &req) {
            Ok(pending) => pending,
            Err(error) => return reject(req, config.rejection(&error)),
        };
        let confirm = match pending.map(|pending| config.confirm(pending)) {
            None => None,
            Some(mut confirm) => match confirm.take_ready() {
                Some(Ok(caller)) => Some(Ok(caller)),
                Some(Err(error)) => return reject(req, config.rejection(&error)),
                None => Some(Err(confirm)),
            },
        };
        let service = self.service.clone();
        Box::pin(async move {
            let caller = match confirm {
                None => None,
                Some(Ok(caller)) => Some(caller),
                // A shared store: wait for its answer without blocking the worker.
                Some(Err(confirm)) => match confirm.await {
                    Ok(caller) => Some(caller),
                    Err(error) => return reject(req, config.rejection(&error)).await,
                },
            };
            if let Some(caller) = caller {
                req.extensions_mut().insert(caller);
            }
            service.call(req).await.map(ServiceResponse::map_into_left_body)
        })
    }
}

fn reject<B: 'static>(
    req: ServiceRequest,
    rejection: Rejection,
) -> LocalBoxFuture<'static, Result<ServiceResponse<EitherBody<B>>, actix_web::Error>> {
    let response = rejection_response(&rejection);
    Box::pin(ready(Ok(req.into_response(response).map_into_right_body())))
}

/// actix-web's (`http` 0.2) header map copied into an `http` 1 map, for signing.
fn http1_headers(headers: &actix_web::http::header::HeaderMap) -> http::HeaderMap {
    let mut out = http::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(name.as_str().as_bytes()), http::HeaderValue::from_bytes(value.as_bytes()))
        {
            out.append(name, value);
        }
    }
    out
}

/// The signed-request path: the core's [`Pipeline::admit_signed`] over the payload, the
/// service with the checked bytes, then [`ResponseSigner::sign_body`](wimse_core::server::exchange::ResponseSigner::sign_body)
/// when a signed response is due.
async fn signed<S, B>(
    guard: web::Data<Pipeline>,
    service: Rc<S>,
    mut req: ServiceRequest,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    let payload = req.take_payload();
    let admitted = {
        let target = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let headers = ActixHeaders(req.headers());
        let view = RequestView::new(target, &headers).method(req.method().as_str()).authority(authority(&req));
        guard.admit_signed(view, req.conn_data::<TlsPeer>(), payload).await
    };
    let admitted = match admitted {
        Ok(admitted) => admitted,
        Err(error) => return reject(req, guard.rejection(&error)).await,
    };
    req.set_payload(Payload::from(admitted.body));
    if let Some(caller) = admitted.caller {
        req.extensions_mut().insert(caller);
    }
    let response = service.call(req).await?;
    let Some(signer) = admitted.response else {
        return Ok(response.map_into_left_body());
    };
    let (http_req, response) = response.into_parts();
    let status = response.status();
    let mut headers = http1_headers(response.headers());
    let mut body = std::pin::pin!(response.into_body());
    let chunks = futures_util::stream::poll_fn(|cx| body.as_mut().poll_next(cx));
    let response = match signer.sign_body(status.as_u16(), &mut headers, chunks).await {
        Ok(bytes) => {
            let mut builder = HttpResponse::build(status);
            for (name, value) in &headers {
                // Every value as signed, bytes included (a UTF-8 file name, an opaque cookie).
                if let Ok(value) = actix_web::http::header::HeaderValue::from_bytes(value.as_bytes()) {
                    builder.append_header((name.as_str(), value));
                }
            }
            builder.body(bytes)
        }
        Err(error) => rejection_response(&guard.rejection(&error)),
    };
    Ok(ServiceResponse::new(http_req, response).map_into_right_body())
}

pub(crate) fn rejection_response(rejection: &Rejection) -> HttpResponse {
    let status = StatusCode::from_u16(rejection.status().as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut builder = HttpResponse::build(status);
    for (name, value) in rejection.headers().iter() {
        if let Ok(value) = value.to_str() {
            builder.insert_header((name.as_str(), value));
        }
    }
    builder.body(rejection.body())
}

/// Extracts the [`VerifiedCaller`] put into the request by [`WimseAuth`]. Without one the handler
/// is not called (401 with `WWW-Authenticate: WPT`); use `Option<Caller>` to allow anonymous requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub VerifiedCaller);

impl Deref for Caller {
    type Target = VerifiedCaller;

    fn deref(&self) -> &VerifiedCaller {
        &self.0
    }
}

impl FromRequest for Caller {
    type Error = WimseRejection;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let caller = req.extensions().get::<VerifiedCaller>().cloned().map(Caller);
        ready(
            caller
                .ok_or_else(|| Error::with_detail(ErrorKind::MissingWit, "handler requires a verified caller").into()),
        )
    }
}

/// Extracts the verified transaction (the request's Txn-Token, validated by a verifier
/// configured with [`VerifierConfig::txn_tokens`](wimse_core::server::verify::VerifierConfig::txn_tokens));
/// 403 `missing_txn_token` without one. Use `Option<Transaction>` where it is optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction(pub std::sync::Arc<wimse_core::protocol::txn::VerifiedTxnToken>);

impl Deref for Transaction {
    type Target = wimse_core::protocol::txn::VerifiedTxnToken;

    fn deref(&self) -> &wimse_core::protocol::txn::VerifiedTxnToken {
        &self.0
    }
}

impl FromRequest for Transaction {
    type Error = WimseRejection;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let extensions = req.extensions();
        let caller = extensions.get::<VerifiedCaller>();
        ready(caller.and_then(VerifiedCaller::shared_transaction).map(Transaction).ok_or_else(|| {
            let error = Error::with_detail(ErrorKind::MissingTxnToken, "handler requires a verified Txn-Token");
            match caller {
                Some(caller) => caller.audit_refused(&error),
                None => wimse_core::server::audit::rejected("none", None, &error),
            }
            error.into()
        }))
    }
}

/// A WIMSE rejection as an actix-web error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WimseRejection(pub Rejection);

impl From<Error> for WimseRejection {
    fn from(error: Error) -> Self {
        Self(Rejection::from_error(&error))
    }
}

impl fmt::Display for WimseRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.problem().title)
    }
}

impl ResponseError for WimseRejection {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status().as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        rejection_response(&self.0)
    }
}
