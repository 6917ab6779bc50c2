//! # wimse-tower
//!
//! The protocol is [`wimse_core`] (re-exported; its front page lists every adapter); [`prelude`]
//! has what a program needs. A runnable example: `cargo run -p wimse-examples --bin tower-client`.
//!
//! WIMSE workload identity as tower middleware: [`WimseLayer`] verifies callers on a server
//! (WPT or HTTP-signature mode, and signs responses when asked), [`WimseSignLayer`] proves the
//! workload's identity on a client's requests (WPT, or with
//! [`http_signatures`](WimseSignLayer::http_signatures) HTTP signatures and signed responses), and
//! [`RequirePolicyLayer`] applies an authorization policy per route.
//!
//! gRPC: `WimseLayer` goes on a tonic server as it is; on a tonic `Channel`, whose requests
//! carry only the method's path, build the client layer with [`WimseSignLayer::for_origin`].
//! With the `tonic` feature a call the client layer refuses reaches the caller as a gRPC status
//! naming the fix (`FAILED_PRECONDITION`, `UNAUTHENTICATED`) rather than `UNKNOWN`. A runnable
//! pair: `cargo run -p wimse-examples --bin grpc-server`, then the `grpc-client` command it prints.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use wimse_core::prelude::*;
//! use wimse_tower::{WimseLayer, WimseRequestBody};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let issuer = SigningKey::generate(Algorithm::ES256)?;
//! let trust = TrustStore::new().with(
//!     "spiffe://prod.example".parse()?,
//!     TrustAnchors::new().key(issuer.public_key().clone()),
//! );
//! let verifier = Verifier::new(trust, VerifierConfig::new().origin("https://orders.example"))?;
//!
//! let service = ServiceBuilder::new()
//!     .layer(WimseLayer::new(verifier).policy(Policy::named("orders").allow(Rule::path_prefix("spiffe://prod.example/front")?)))
//!     .service(service_fn(|req: Request<WimseRequestBody<String>>| async move {
//!         let caller = req.extensions().get::<VerifiedCaller>().expect("set by WimseLayer");
//!         Ok::<_, Infallible>(Response::new(format!("hello {}", caller.id())))
//!     }));
//!
//! // A request without credentials is answered by the layer itself.
//! let response = service.oneshot(Request::new(String::new())).await?;
//! assert_eq!(response.status(), 401);
//! assert_eq!(response.headers()["www-authenticate"], "WPT");
//! # Ok(())
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
#[cfg(feature = "mtls")]
mod mtls;
mod require;
mod server;
mod stream;

pub use client::{Buffered, SignFuture, SignatureFuture, Streamed, WimseSign, WimseSignLayer};
#[cfg(feature = "mtls")]
pub use mtls::mtls_connector;
pub use require::{RequirePolicy, RequirePolicyLayer};
pub use server::{DEFAULT_BODY_LIMIT, WimseBody, WimseLayer, WimseRequestBody, WimseResponseFuture, WimseService};
pub use stream::ExpiringBody;
pub use wimse_core;
/// Per-request options of the client layer (request extensions).
pub use wimse_core::client::exchange::{ContextTokens, ProofMode};

/// The layers and the core prelude.
pub mod prelude {
    pub use crate::{RequirePolicyLayer, WimseLayer, WimseSignLayer};
    pub use wimse_core::prelude::*;
}

use bytes::Bytes;
use http::Response;
use http_body_util::{Either, Full};
use wimse_core::server::framing::Rejection;

/// A response carrying a rejection's status, headers and problem body; for a gRPC request, the
/// same rejection as a gRPC status (so tonic clients see `UNAUTHENTICATED`,
/// `PERMISSION_DENIED`, … instead of a parse error).
pub(crate) fn rejection_response<B>(rejection: Rejection, grpc: bool) -> Response<Either<B, Full<Bytes>>> {
    let response = if grpc { rejection.into_grpc_response() } else { rejection.into_response() };
    response.map(|body| Either::Right(Full::new(Bytes::from(body))))
}
