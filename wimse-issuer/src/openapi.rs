//! The OpenAPI 3.1 description of the identity server's HTTP API (feature `openapi`),
//! generated from the handlers of [`router`](crate::router) and the types they read and write.
//! The repository holds it as `wimse-issuer/openapi.json`; a test regenerates it and checks it
//! against the router (every documented operation answers with a documented status and body
//! shape; undocumented methods are refused).
//!
//! The schemas below describe bodies built elsewhere (RFC 9457 problems by `wimse-core`, RFC
//! 6749 errors, the bundles): the same test validates real answers against them.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

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

/// The security schemes: `bootstrap` (`Authorization: Bearer` with a platform token or a dev
/// secret) and `client_wic` (mutual TLS with a WIC, for renewal).
struct Bootstrap;

impl Modify for Bootstrap {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "A platform token (Kubernetes service-account token, CI OIDC token) or, in dev mode, a dev secret",
            ))
            .build();
        components.add_security_scheme("bootstrap", SecurityScheme::Http(scheme));
        components.add_security_scheme(
            "client_wic",
            SecurityScheme::MutualTls {
                description: Some(
                    "Renewal: a client WIC this identity server issued, presented in the TLS handshake, for its own identifier (clients with `wic_renewal`)".into(),
                ),
                extensions: None,
                deprecated: None,
            },
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "wimse identity server",
        description = "Issues WITs and WICs to authenticated workloads, exchanges tokens (RFC 8693, RFC 7523, Txn-Tokens), publishes trust bundles.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        crate::http::issue_wit,
        crate::http::token,
        crate::http::issue_wic,
        crate::http::x509_bundle,
        crate::http::jwks,
        crate::http::spiffe_bundle,
    ),
    modifiers(&Bootstrap),
    tags(
        (name = "issuance", description = "Credentials for authenticated workloads"),
        (name = "bundles", description = "What verifiers fetch: no authentication"),
    )
)]
struct IssuerApi;

/// The OpenAPI description, as pretty-printed JSON (what `wimse-issuer/openapi.json` holds).
pub fn openapi_json() -> String {
    let mut api = IssuerApi::openapi();
    api.info.version = env!("CARGO_PKG_VERSION").to_owned();
    api.to_pretty_json().unwrap_or_default() + "\n"
}
