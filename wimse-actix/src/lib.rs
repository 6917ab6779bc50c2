//! # wimse-actix
//!
//! WIMSE workload identity for actix-web: the [`Wimse`] middleware verifies the caller of every
//! request (WIT + `Authorization: WPT`), and the [`Caller`] extractor hands it to handlers.
//! Rejections are answered exactly like the tower and axum adapters do.
//!
//! ```
//! use actix_web::{App, web};
//! use wimse_actix::{Caller, Wimse, WimseConfig};
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
//!     TrustAnchors::new().with_key(issuer.public_key().clone()),
//! );
//! let verifier = Verifier::new(trust, VerifierConfig::new().with_origin("https://billing.example"))?;
//! let config = WimseConfig::new(verifier).policy(Policy::named("billing").allow(Rule::path_prefix("spiffe://prod.example/orders")?));
//!
//! // Configure once through app data; the middleware reads it from there.
//! let app = App::new()
//!     .app_data(web::Data::new(config))
//!     .wrap(Wimse::from_app_data())
//!     .route("/whoami", web::get().to(whoami));
//! # let _ = app;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::{Ready, ready};
use std::ops::Deref;
use std::rc::Rc;

use actix_web::body::EitherBody;
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError, web};
use futures_util::future::LocalBoxFuture;
use wimse_core::http::{HeaderSource, Rejection};
use wimse_core::verify::{Guard, RequestView, VerifiedCaller};
use wimse_core::{Error, ErrorKind};

pub use wimse_core;

/// What the middleware checks: the core [`Guard`] (verifier, optional policy, required or
/// optional). Put it in app data (`web::Data<WimseConfig>`) or give it to [`Wimse::new`].
pub type WimseConfig = Guard;

fn authenticate(config: &WimseConfig, req: &ServiceRequest) -> Result<Option<VerifiedCaller>, Error> {
    config.check(&RequestView::new(req.path(), &ActixHeaders(req.headers())))
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
pub struct Wimse {
    config: Option<Rc<WimseConfig>>,
}

impl Wimse {
    /// Uses `config`.
    pub fn new(config: WimseConfig) -> Self {
        Self { config: Some(Rc::new(config)) }
    }

    /// Reads a `web::Data<WimseConfig>` from app data on each request. Without one, requests
    /// are refused with a 500 (fail closed).
    pub fn from_app_data() -> Self {
        Self { config: None }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Wimse
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = WimseMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(WimseMiddleware { service: Rc::new(service), config: self.config.clone() }))
    }
}

/// The middleware service made by [`Wimse`].
pub struct WimseMiddleware<S> {
    service: Rc<S>,
    config: Option<Rc<WimseConfig>>,
}

impl<S> fmt::Debug for WimseMiddleware<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WimseMiddleware").field("config", &self.config).finish_non_exhaustive()
    }
}

impl<S, B> Service<ServiceRequest> for WimseMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let outcome = match &self.config {
            Some(config) => authenticate(config, &req),
            None => match req.app_data::<web::Data<WimseConfig>>() {
                Some(config) => authenticate(config, &req),
                None => Err(Error::with_detail(ErrorKind::InvalidConfiguration, "no WimseConfig in app data")),
            },
        };
        match outcome {
            Ok(caller) => {
                if let Some(caller) = caller {
                    req.extensions_mut().insert(caller);
                }
                let future = self.service.call(req);
                Box::pin(async move { future.await.map(ServiceResponse::map_into_left_body) })
            }
            Err(error) => {
                let response = rejection_response(&Rejection::from_error(&error));
                Box::pin(ready(Ok(req.into_response(response).map_into_right_body())))
            }
        }
    }
}

fn rejection_response(rejection: &Rejection) -> HttpResponse {
    let status = StatusCode::from_u16(rejection.status().as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut builder = HttpResponse::build(status);
    for (name, value) in rejection.headers().iter() {
        if let Ok(value) = value.to_str() {
            builder.insert_header((name.as_str(), value));
        }
    }
    builder.body(rejection.body())
}

/// Extracts the [`VerifiedCaller`] put into the request by [`Wimse`]. Without one the handler
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
    type Error = WimseError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let caller = req.extensions().get::<VerifiedCaller>().cloned().map(Caller);
        ready(
            caller
                .ok_or_else(|| Error::with_detail(ErrorKind::MissingWit, "handler requires a verified caller").into()),
        )
    }
}

/// A WIMSE rejection as an actix-web error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WimseError(pub Rejection);

impl From<Error> for WimseError {
    fn from(error: Error) -> Self {
        Self(Rejection::from_error(&error))
    }
}

impl fmt::Display for WimseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.problem().title)
    }
}

impl ResponseError for WimseError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status().as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        rejection_response(&self.0)
    }
}
