//! The OpenAPI 3.1 description of the identity server's HTTP API (feature `openapi`),
//! generated from the handlers of [`router`](crate::router) and the types they read and write.
//! The repository holds it as `wimse-issuer/openapi.json`; a test regenerates it and checks it
//! against the router (every documented operation answers with a documented status and body
//! shape; undocumented methods are refused).
//!
//! The bodies built elsewhere are described in `schemas`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

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
