//! # wimse-axum
//!
//! The protocol is [`wimse_core`] (re-exported; its front page lists every adapter); [`prelude`]
//! has what a program needs. A runnable example: `cargo run -p wimse-examples --bin axum-service`.
//!
//! WIMSE workload identity for axum: the [`Caller`] extractor hands handlers the verified
//! caller that [`WimseLayer`] put into the request, and [`WimseRejection`] answers like every
//! other wimse adapter (status, `WWW-Authenticate: WPT`, RFC 9457 problem body).
//!
//! ```
//! use axum::{Router, routing::get};
//! use wimse_axum::{Caller, RequirePolicyLayer, WimseLayer};
//! use wimse_core::prelude::*;
//!
//! async fn whoami(Caller(caller): Caller) -> String {
//!     format!("hello {}", caller.id())
//! }
//!
//! async fn health(caller: Option<Caller>) -> &'static str {
//!     if caller.is_some() { "ok (authenticated)" } else { "ok" }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let issuer = SigningKey::generate(Algorithm::ES256)?;
//! let trust = TrustStore::new().with(
//!     "spiffe://prod.example".parse()?,
//!     TrustAnchors::new().key(issuer.public_key().clone()),
//! );
//! let verifier = Verifier::new(trust, VerifierConfig::new().origin("https://orders.example"))?;
//! let admins = Policy::named("admin").allow(Rule::exact("spiffe://prod.example/ops")?);
//!
//! let app: Router = Router::new()
//!     .route("/admin", get(whoami).route_layer(RequirePolicyLayer::new(admins)))
//!     .route("/whoami", get(whoami))
//!     .route("/health", get(health))
//!     // Optional: requests without credentials pass (as `None`); bad credentials are refused.
//!     .layer(WimseLayer::new(verifier).optional());
//! # Ok(())
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

use std::convert::Infallible;
use std::ops::Deref;
use std::sync::Arc;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use wimse_core::protocol::txn::VerifiedTxnToken;
use wimse_core::server::caller::VerifiedCaller;
use wimse_core::server::framing::Rejection;
use wimse_core::{Error, ErrorKind};

pub use wimse_core;

#[cfg(feature = "tls")]
pub mod tls;
pub use wimse_tower::{ProofMode, RequirePolicyLayer, WimseLayer, WimseSignLayer};

/// What an axum service needs: the layers, the extractor, the rejection, and the core prelude.
pub mod prelude {
    pub use crate::{Caller, RequirePolicyLayer, Transaction, WimseLayer, WimseRejection, WimseSignLayer};
    pub use wimse_core::prelude::*;
}

/// Extracts the [`VerifiedCaller`] put into the request by [`WimseLayer`].
///
/// Without one (no layer, or an optional layer and a request without credentials) the handler
/// is not called and the client gets a 401 with `WWW-Authenticate: WPT`. Use `Option<Caller>`
/// to accept anonymous requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub VerifiedCaller);

impl Deref for Caller {
    type Target = VerifiedCaller;

    fn deref(&self) -> &VerifiedCaller {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = WimseRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<VerifiedCaller>().cloned().map(Caller).ok_or_else(|| {
            WimseRejection::from(Error::with_detail(ErrorKind::MissingWit, "handler requires a verified caller"))
        })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<VerifiedCaller>().cloned().map(Caller))
    }
}

/// Extracts the verified transaction (the request's Txn-Token, validated by a verifier
/// configured with [`VerifierConfig::txn_tokens`](wimse_core::server::verify::VerifierConfig::txn_tokens)).
///
/// Without one the handler is not called and the client gets 403 `missing_txn_token`. Use
/// `Option<Transaction>` where a transaction is optional.
///
/// ```
/// use wimse_axum::{Caller, Transaction};
///
/// async fn purchase(Caller(caller): Caller, txn: Transaction) -> String {
///     format!("{} buys for {} (txn {}, purpose {})", caller.id(), txn.subject(), txn.txn(), txn.scope())
/// }
/// # let _ = axum::Router::<()>::new().route("/purchase", axum::routing::post(purchase));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction(pub Arc<VerifiedTxnToken>);

impl Deref for Transaction {
    type Target = VerifiedTxnToken;

    fn deref(&self) -> &VerifiedTxnToken {
        &self.0
    }
}

fn transaction(parts: &Parts) -> Option<Transaction> {
    parts.extensions.get::<VerifiedCaller>().and_then(VerifiedCaller::shared_transaction).map(Transaction)
}

impl<S: Send + Sync> FromRequestParts<S> for Transaction {
    type Rejection = WimseRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        transaction(parts).ok_or_else(|| {
            let error = Error::with_detail(ErrorKind::MissingTxnToken, "handler requires a verified Txn-Token");
            match parts.extensions.get::<VerifiedCaller>() {
                Some(caller) => caller.audit_refused(&error),
                None => wimse_core::server::audit::rejected("none", None, &error),
            }
            WimseRejection::from(error)
        })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Transaction {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(transaction(parts))
    }
}

/// A WIMSE rejection as an axum response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WimseRejection(pub Rejection);

impl From<Error> for WimseRejection {
    fn from(error: Error) -> Self {
        Self(Rejection::from_error(&error))
    }
}

impl IntoResponse for WimseRejection {
    fn into_response(self) -> Response {
        let (parts, body) = self.0.into_response().into_parts();
        (parts.status, parts.headers, body).into_response()
    }
}
