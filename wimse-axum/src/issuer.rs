//! The identity server's HTTP API (feature `issuer`), over [`wimse_core::issuer::IdentityServer`].
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/wit` | `Authorization: Bearer <platform token or dev secret>`, JSON `{"sub", "jwk", "lifetime"?}` → `{"wit", "expires_at"}` |
//! | `GET /v1/bundle/jwks` | the signing keys as a JWKS |
//! | `GET /v1/bundle/spiffe` | the signing keys as a SPIFFE bundle (`spiffe_sequence`, `spiffe_refresh_hint`) |

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use wimse_core::http::Rejection;
use wimse_core::issuer::IdentityServer;
use wimse_core::jose::Jwk;
use wimse_core::{Error, ErrorKind};

/// The body of `POST /v1/wit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WitRequest {
    sub: String,
    jwk: Jwk,
    #[serde(default)]
    lifetime: Option<u64>,
}

fn problem(error: &Error) -> Response {
    let rejection = Rejection::from_error(error);
    let status = match error.kind() {
        ErrorKind::InvalidSubject(_) | ErrorKind::InvalidKey => StatusCode::BAD_REQUEST,
        _ => rejection.status(),
    };
    let (_, body) = rejection.into_response().into_parts();
    (status, [("content-type", "application/problem+json")], body).into_response()
}

async fn issue_wit(
    State(server): State<Arc<IdentityServer>>,
    headers: HeaderMap,
    Json(request): Json<WitRequest>,
) -> Response {
    let bootstrap = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let Some(bootstrap) = bootstrap else {
        return problem(&Error::with_detail(ErrorKind::BootstrapTokenInvalid, "no bearer bootstrap credential"));
    };
    match server.issue_wit(bootstrap, &request.sub, &request.jwk, request.lifetime) {
        Ok(issued) => Json(issued).into_response(),
        Err(error) => problem(&error),
    }
}

async fn jwks(State(server): State<Arc<IdentityServer>>) -> Response {
    if let Err(error) = server.rotate_if_due() {
        return problem(&error);
    }
    Json(server.jwks()).into_response()
}

async fn spiffe_bundle(State(server): State<Arc<IdentityServer>>) -> Response {
    if let Err(error) = server.rotate_if_due() {
        return problem(&error);
    }
    Json(server.spiffe_bundle()).into_response()
}

/// The HTTP API of `server`.
pub fn router(server: Arc<IdentityServer>) -> Router {
    Router::new()
        .route("/v1/wit", post(issue_wit))
        .route("/v1/bundle/jwks", get(jwks))
        .route("/v1/bundle/spiffe", get(spiffe_bundle))
        .with_state(server)
}
