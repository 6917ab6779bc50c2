//! The bodies of the identity server's HTTP API that other code builds (RFC 9457 problems by
//! `wimse-core`, RFC 6749 errors, the bundles), as OpenAPI schemas (feature `openapi`): the
//! handlers name them in their descriptions, and `tests/integration/openapi.rs` validates real
//! answers against them.

use utoipa::ToSchema;

/// An RFC 9457 problem (`application/problem+json`).
#[derive(ToSchema, serde::Serialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct Problem {
    /// `urn:wimse-rs:problem:<reason>`.
    #[schema(rename = "type")]
    type_uri: String,
    /// What failed, in words.
    title: String,
    /// The HTTP status code.
    status: u16,
    /// The stable reason code (`bootstrap_token_invalid`, `issuance_denied`, …).
    reason: Option<String>,
    /// For a request's own mistakes: which value, which check.
    detail: Option<String>,
}

/// An RFC 6749 §5.2 error.
#[derive(ToSchema, serde::Serialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct OAuthError {
    /// The error code (`invalid_grant`, `invalid_request`, …).
    error: String,
    /// What failed, in words (for `invalid_grant`, also which check).
    error_description: Option<String>,
    /// The Transaction Token Service's refusals: which check refused, as the project's error
    /// kinds name it (`delegation_denied`, `delegation_too_deep`, `actor_token_invalid`, …).
    reason: Option<String>,
}

/// A refusal of the token endpoint: a problem (the source address's budget) or an RFC 6749
/// error (the client's).
#[derive(ToSchema, serde::Serialize)]
#[allow(dead_code)]
#[serde(untagged)]
pub(crate) enum TokenRefusal {
    Problem(Problem),
    OAuth(OAuthError),
}

/// A public JWK (RFC 7517): `kty` and the members of its type (`crv`, `x`, `y` for EC and OKP;
/// `n`, `e` for RSA). Private members are refused.
#[derive(ToSchema, serde::Serialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct PublicJwk {
    /// `EC`, `OKP` or `RSA`.
    kty: String,
    /// The key id.
    kid: Option<String>,
    /// The algorithm.
    alg: Option<String>,
    /// `wit-svid` in bundles (the SPIFFE key use of WIT signing keys).
    #[schema(rename = "use")]
    key_use: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

/// A JWK Set (RFC 7517 §5).
#[derive(ToSchema, serde::Serialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct Jwks {
    keys: Vec<PublicJwk>,
}

/// A SPIFFE trust bundle (JWKS with SPIFFE members) and the key store's epoch.
#[derive(ToSchema, serde::Serialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct SpiffeBundle {
    keys: Vec<PublicJwk>,
    /// Increases with every change of the published keys within an epoch.
    spiffe_sequence: u64,
    /// How often verifiers should fetch it, in seconds.
    spiffe_refresh_hint: u64,
    /// The key store's epoch: a new one after a replacement (verifiers accept it at once and
    /// refuse an epoch replaced before).
    wimse_key_store_epoch: String,
}
