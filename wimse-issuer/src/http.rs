//! The identity server's HTTP API (axum), over [`IdentityServer`]. `wimse-issuer/openapi.json`
//! describes it in full (generated from these handlers with the `openapi` feature).
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/wit` | `Authorization: Bearer <platform token or dev secret>`, JSON `{"sub", "jwk", "lifetime"?}` → `{"wit", "expires_at"}` |
//! | `POST /v1/token` | RFC 8693 token exchange (form: `grant_type`, `subject_token`, `subject_token_type`, `wimse_jwk`) → `{"access_token": <WIT>, "issued_token_type", "token_type": "N_A", "expires_in"}`; RFC 7523 jwt-bearer grant (`assertion`, `scope`?, `DPoP` header) or client assertion → `{"access_token": <WIT bound to the DPoP key>, "token_type": "DPoP", …}` |
//! | `POST /v1/token` (Txn-Tokens) | RFC 8693 with `requested_token_type=urn:ietf:params:oauth:token-type:txn_token`, `audience` (the trust domain), `scope`, `subject_token`, `subject_token_type`, `request_context`?, `request_details`?, `actor_token`? + `actor_token_type`? (an agent acting for the subject: its own WIT, type `…:jwt`; recorded as `act`); the requesting workload sends its `Workload-Identity-Token` and `Authorization: WPT` (`aud` = the token endpoint) → `{"access_token": <Txn-Token>, "issued_token_type": "…:txn_token", "token_type": "N_A", "expires_in"}` |
//! | `POST /v1/wic` | `Authorization: Bearer …`, JSON `{"sub", "spki" (base64 DER), "usage": "client"\|"server"\|"both", "dns"?, "ip"?, "lifetime"?}` → `{"chain_pem", "expires_at"}` |
//! | `GET /v1/bundle/x509` | the WIC certificate authority (PEM) |
//! | `GET /v1/bundle/jwks` | the signing keys as a JWKS |
//! | `GET /v1/bundle/spiffe` | the signing keys as a SPIFFE bundle (`spiffe_sequence`, `spiffe_refresh_hint`) |

use std::sync::Arc;

use crate::IdentityServer;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use wimse_core::jose::Jwk;
use wimse_core::protocol::oauth::{
    JWT_BEARER_CLIENT_ASSERTION, JWT_BEARER_GRANT, JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT,
};
use wimse_core::protocol::txn::TXN_TOKEN_TYPE;
use wimse_core::protocol::txn::{TxnActor, TxnTokenRequest};
use wimse_core::server::framing::Rejection;
use wimse_core::{Error, ErrorKind};

/// The body of `POST /v1/wit`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub(crate) struct WitRequest {
    /// The workload identifier asked for (e.g. `spiffe://prod.example/payments`): one the
    /// authenticated client may obtain.
    sub: String,
    /// The workload's public key (a JWK without private members), bound into the WIT's `cnf`.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schemas::PublicJwk))]
    jwk: Jwk,
    /// The lifetime asked for, in seconds (capped at the client's `max_lifetime`; 0 is refused).
    #[serde(default)]
    lifetime: Option<u64>,
}

/// A token endpoint's answer (RFC 6749 §5.1, RFC 8693 §2.2.1).
#[derive(Debug, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenResponse {
    /// The issued token: a WIT, or a Txn-Token.
    access_token: String,
    /// `urn:ietf:params:oauth:token-type:jwt` (a WIT) or
    /// `urn:ietf:params:oauth:token-type:txn_token`.
    issued_token_type: &'static str,
    /// `N_A` (token exchange), or `DPoP` (a WIT bound to the DPoP proof's key).
    token_type: &'static str,
    /// Seconds until it expires.
    expires_in: u64,
}

/// The answer of `POST /v1/wic`.
#[derive(Debug, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub(crate) struct WicResponse {
    /// The certificate and the issuing authority's, PEM, leaf first.
    chain_pem: String,
    /// When the certificate expires, seconds since the epoch.
    expires_at: u64,
}

/// A request extension: the identifier of the client WIC this server issued that the peer
/// presented in the TLS handshake, verified against this server's WIC authority. Only the TLS
/// listener sets it (`wimse issuer serve --tls-cert`, when a client has
/// [`wic_renewal`](crate::ClientConfig::wic_renewal)); nothing a client sends can. Without an
/// `Authorization` header, `/v1/wit` and `/v1/wic` authenticate with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientWic(pub wimse_core::id::WorkloadId);

/// How the request authenticates: its bearer credential, else its client WIC.
fn presented<'a>(headers: &'a HeaderMap, wic: Option<&'a ClientWic>) -> Option<crate::ClientAuthentication<'a>> {
    match (bearer(headers), wic) {
        (Some(bootstrap), _) => Some(crate::ClientAuthentication::Bootstrap(bootstrap)),
        (None, Some(ClientWic(id))) => Some(crate::ClientAuthentication::Wic(id)),
        (None, None) => None,
    }
}

fn problem(error: &Error) -> Response {
    let rejection = Rejection::from_error(error);
    let status = match error.kind() {
        ErrorKind::InvalidSubject(_) | ErrorKind::InvalidKey | ErrorKind::InvalidLifetime => StatusCode::BAD_REQUEST,
        _ => rejection.status(),
    };
    let (parts, mut body) = rejection.into_response().into_parts();
    // What was wrong with the request's own name or key is told to its sender (RFC 9457
    // `detail`): which name, which check, what to send instead.
    if let (
        ErrorKind::InvalidSubjectAltName
        | ErrorKind::InvalidKey
        | ErrorKind::InvalidLifetime
        | ErrorKind::MalformedRequest,
        Some(detail),
    ) = (error.kind(), error.detail())
        && let Ok(mut problem) = serde_json::from_slice::<serde_json::Value>(&body)
    {
        problem["detail"] = detail.into();
        body = serde_json::to_vec(&problem).unwrap_or(body);
    }
    let mut response = (status, body).into_response();
    // Content-Type, Cache-Control and Retry-After as the rejection set them.
    response.headers_mut().extend(parts.headers);
    response.headers_mut().remove(axum::http::header::WWW_AUTHENTICATE);
    response
}

/// Per source address: refused while over its request budget or after repeated failed
/// authentications (which it counts). Needs the peer address (`ConnectInfo<SocketAddr>`:
/// serve with `into_make_service_with_connect_info`); without it, only the per-client limits apply.
async fn limit_sources(
    State(server): State<Arc<IdentityServer>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let source = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| server.client_address(info.0.ip(), request.headers()));
    if let Some(source) = source
        && let Err(error) = server.admit_source(source)
    {
        return problem(&error);
    }
    let response = next.run(request).await;
    if let Some(source) = source
        && (response.status() == StatusCode::UNAUTHORIZED
            || response.extensions().get::<FailedAuthentication>().is_some())
    {
        server.record_failed_authentication(source);
    }
    response
}

/// A JSON request body; one that does not parse is refused with the same problem JSON as
/// every other refusal (400 `malformed_request`, the detail naming what is wrong), not with
/// axum's plain-text 415/422.
struct JsonBody<T>(T);

/// The longest `detail` a malformed body's refusal carries (bytes).
const MAX_DETAIL: usize = 256;

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(body)) => Ok(Self(body)),
            Err(rejection) => {
                // serde's message quotes the offending value: bounded, so a huge one is not
                // sent back (or logged) whole.
                let detail = crate::server::clipped(&rejection.body_text(), MAX_DETAIL);
                Err(problem(&Error::with_detail(ErrorKind::MalformedRequest, detail)))
            }
        }
    }
}

/// A WIT for the authenticated client's workload.
///
/// The client authenticates with `Authorization: Bearer` and its platform token (a Kubernetes
/// service-account token, a CI OIDC token) or, in dev mode, its dev secret.
#[cfg_attr(feature = "openapi", utoipa::path(
    post, path = "/v1/wit", tag = "issuance", request_body = WitRequest,
    security(("bootstrap" = []), ("client_wic" = [])),
    responses(
        (status = 200, description = "The WIT", body = crate::IssuedWit),
        (status = 400, description = "The body is not what the endpoint takes (`malformed_request`), or names an invalid identifier, key, lifetime or name", body = crate::schemas::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bootstrap credential, and no client WIC of a client with `wic_renewal` (`bootstrap_token_invalid`)", body = crate::schemas::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The client may not obtain this identifier (`issuance_denied`)", body = crate::schemas::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the client's or source address's budget, or locked out after failed authentications (`rate_limited`); see `Retry-After`", body = crate::schemas::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The key store does not answer (`key_store_unavailable`)", body = crate::schemas::Problem, content_type = "application/problem+json"),
    )
))]
async fn issue_wit(
    State(server): State<Arc<IdentityServer>>,
    headers: HeaderMap,
    wic: Option<axum::Extension<ClientWic>>,
    JsonBody(request): JsonBody<WitRequest>,
) -> Response {
    let Some(presented) = presented(&headers, wic.as_ref().map(|w| &w.0)) else {
        let error = Error::with_detail(ErrorKind::BootstrapTokenInvalid, "no bearer bootstrap credential");
        server.audit_refusal("wit", None, Some(&request.sub), &error);
        return problem(&error);
    };
    match server.issue_wit(presented, &request.sub, &request.jwk, request.lifetime).await {
        Ok(issued) => Json(issued).into_response(),
        Err(error) => {
            server.audit_refusal("wit", None, Some(&request.sub), &error);
            problem(&error)
        }
    }
}

/// The token endpoint's parameters (form-encoded), for every grant it serves:
/// - RFC 8693 token exchange: `subject_token`, `subject_token_type`, and `wimse_jwk` (the public
///   JWK the WIT binds; token exchange has no standard parameter for it);
/// - RFC 7523 §2.1 jwt-bearer grant: `assertion` (a platform token), optional `scope` (the
///   identifier), a `DPoP` header (RFC 9449) whose key the WIT binds;
/// - RFC 7523 §2.2 client authentication: `grant_type=client_credentials` with
///   `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer` and
///   `client_assertion`, treated like the grant.
#[derive(Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub(crate) struct TokenRequest {
    /// `urn:ietf:params:oauth:grant-type:token-exchange`,
    /// `urn:ietf:params:oauth:grant-type:jwt-bearer` or `client_credentials`.
    grant_type: String,
    /// Token exchange: the token exchanged (a foreign JWT, a JWT-SVID; for a Txn-Token, the
    /// subject's token).
    subject_token: Option<String>,
    /// Token exchange: its RFC 8693 type URN.
    subject_token_type: Option<String>,
    /// Token exchange for a WIT: the public JWK (JSON) the WIT binds.
    wimse_jwk: Option<String>,
    /// jwt-bearer grant: the platform token.
    assertion: Option<String>,
    /// Client assertion: `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`.
    client_assertion_type: Option<String>,
    /// Client assertion: the platform token.
    client_assertion: Option<String>,
    /// jwt-bearer grant: the identifier asked for; Txn-Token: the scope.
    scope: Option<String>,
    /// `urn:ietf:params:oauth:token-type:txn_token` for a Txn-Token.
    requested_token_type: Option<String>,
    /// Txn-Token: the trust domain it is for.
    audience: Option<String>,
    /// Txn-Token: JSON about the request's context (becomes `rctx`).
    request_context: Option<String>,
    /// Txn-Token: JSON about the request (becomes `tctx`).
    request_details: Option<String>,
    /// Txn-Token: the requester acts for the subject (an agent); its own WIT, the one the
    /// request is proven with (RFC 8693 §2.1). Becomes the token's `act`.
    actor_token: Option<String>,
    /// Txn-Token: `urn:ietf:params:oauth:token-type:jwt`, with `actor_token`.
    actor_token_type: Option<String>,
}

impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens.
        f.debug_struct("TokenRequest")
            .field("grant_type", &self.grant_type)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

fn missing(parameter: &'static str) -> Response {
    let body = serde_json::json!({"error": "invalid_request", "error_description": format!("{parameter} is missing")});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// Marks a response to a request whose credentials did not verify (a refused subject token),
/// so the per-source failure count includes it although it is not a 401.
#[derive(Debug, Clone, Copy)]
struct FailedAuthentication;

/// RFC 6749 §5.2 error response; rate limits (429 with `Retry-After`) and an unavailable key
/// store (503) keep their status.
fn oauth_error(error: &Error) -> Response {
    let (status, code) = match error.kind() {
        ErrorKind::UnsupportedTokenType => (StatusCode::BAD_REQUEST, "unsupported_token_type"),
        ErrorKind::ExchangeRefused | ErrorKind::IssuanceDenied => (StatusCode::BAD_REQUEST, "invalid_grant"),
        ErrorKind::InvalidDpopProof => (StatusCode::BAD_REQUEST, "invalid_dpop_proof"),
        ErrorKind::InvalidSubject(_) | ErrorKind::InvalidScope => (StatusCode::BAD_REQUEST, "invalid_scope"),
        ErrorKind::UnsupportedGrantType => (StatusCode::BAD_REQUEST, "unsupported_grant_type"),
        ErrorKind::ReplayCacheFull | ErrorKind::ReplayCacheUnavailable => {
            (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
        }
        ErrorKind::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "slow_down"),
        ErrorKind::KeyStoreUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
        _ => (StatusCode::BAD_REQUEST, "invalid_request"),
    };
    let body = serde_json::json!({"error": code, "error_description": grant_description(error)});
    let mut response = (status, Json(body)).into_response();
    if let Some(retry) = error.retry_after() {
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, retry.into());
    }
    if matches!(error.kind(), ErrorKind::ExchangeRefused | ErrorKind::InvalidDpopProof) {
        response.extensions_mut().insert(FailedAuthentication);
    }
    response
}

/// `error_description` of an RFC 6749 error: the kind's description, and for a refused grant
/// (`invalid_grant`) also the check that failed, so a client's operator can tell an expired
/// assertion from a wrong audience. The detail is the server's own wording (never a token),
/// kept within RFC 6749's character set (`"` becomes `'`, `\` `/`, anything else outside
/// printable ASCII `?`) and to 200 characters, since a few details quote a claim's value.
fn grant_description(error: &Error) -> String {
    let description = error.kind().description();
    let detail = match (error.kind(), error.detail()) {
        (ErrorKind::ExchangeRefused | ErrorKind::IssuanceDenied, Some(detail)) => detail,
        _ => return description.into_owned(),
    };
    let detail: String = detail
        .chars()
        .take(200)
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            ' '..='~' => c,
            _ => '?',
        })
        .collect();
    format!("{description}: {detail}")
}

/// The token endpoint: RFC 8693 token exchange (a foreign token for a WIT; a Txn-Token from
/// the Transaction Token Service), RFC 7523 jwt-bearer grant and client assertion (a platform
/// token and a DPoP proof for a WIT bound to the proof's key).
///
/// Txn-Token requests (`requested_token_type` = `urn:ietf:params:oauth:token-type:txn_token`)
/// authenticate the requesting workload with its `Workload-Identity-Token` header and
/// `Authorization: WPT` (`aud` = this endpoint).
#[cfg_attr(feature = "openapi", utoipa::path(
    post, path = "/v1/token", tag = "issuance",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    params(
        ("DPoP" = Option<String>, Header, description = "A DPoP proof (RFC 9449), for the jwt-bearer grant"),
        ("Workload-Identity-Token" = Option<String>, Header, description = "The requesting workload's WIT, for a Txn-Token"),
    ),
    responses(
        (status = 200, description = "The token", body = TokenResponse),
        (status = 400, description = "RFC 6749 §5.2 error: `invalid_request`, `invalid_grant`, `invalid_scope`, `invalid_target`, `unsupported_grant_type`, `unsupported_token_type`, `invalid_dpop_proof`, `unauthorized_client`", body = crate::schemas::OAuthError),
        (status = 401, description = "The Txn-Token requester's WIT and WPT did not verify (`invalid_client`)", body = crate::schemas::OAuthError,
            headers(("WWW-Authenticate" = String, description = "`WPT`"))),
        (status = 429, description = "Over a budget: the source address's (a problem body) or the client's (`slow_down`); see `Retry-After`", body = crate::schemas::TokenRefusal,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The key store or replay store does not answer (`temporarily_unavailable`)", body = crate::schemas::OAuthError),
    )
))]
async fn token(
    State(server): State<Arc<IdentityServer>>,
    headers: HeaderMap,
    request: Result<Form<TokenRequest>, axum::extract::rejection::FormRejection>,
) -> Response {
    // RFC 6749 §5.2 even for a malformed request (a missing or repeated parameter).
    let Ok(Form(request)) = request else {
        let body = serde_json::json!({"error": "invalid_request", "error_description": "malformed token request"});
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    };
    let assertion = match (request.grant_type.as_str(), request.client_assertion_type.as_deref()) {
        (TOKEN_EXCHANGE_GRANT, _) if request.requested_token_type.as_deref() == Some(TXN_TOKEN_TYPE) => {
            return txn_token_exchange(&server, &headers, request).await;
        }
        // Delegation is recorded in Txn-Tokens only: a WIT names one workload, never an actor.
        _ if request.actor_token.is_some() || request.actor_token_type.is_some() => {
            let body = serde_json::json!({"error": "invalid_request", "reason": "actor_token_invalid",
                                          "error_description": "actor_token is taken for Txn-Tokens only"});
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
        (TOKEN_EXCHANGE_GRANT, _) => return token_exchange(&server, request).await,
        (JWT_BEARER_GRANT, _) => request.assertion,
        ("client_credentials", Some(JWT_BEARER_CLIENT_ASSERTION)) => request.client_assertion,
        _ => {
            let body = serde_json::json!({"error": "unsupported_grant_type"});
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
    };
    let Some(assertion) = assertion else { return missing("assertion") };
    let dpop = match headers.get_all("dpop").iter().collect::<Vec<_>>().as_slice() {
        [] => None,
        [one] => one.to_str().ok(),
        _ => return oauth_error(&Error::with_detail(ErrorKind::InvalidDpopProof, "more than one DPoP header")),
    };
    match server.jwt_bearer_grant(&assertion, dpop, request.scope.as_deref()).await {
        Ok(issued) => Json(TokenResponse {
            expires_in: issued.expires_at.saturating_sub(issued.issued_at),
            access_token: issued.wit,
            issued_token_type: JWT_TOKEN_TYPE,
            token_type: "DPoP",
        })
        .into_response(),
        Err(error) => {
            server.audit_refusal("jwt-bearer", None, request.scope.as_deref(), &error);
            oauth_error(&error)
        }
    }
}

async fn token_exchange(server: &IdentityServer, request: TokenRequest) -> Response {
    let (Some(subject_token), Some(subject_token_type)) = (request.subject_token, request.subject_token_type) else {
        return missing("subject_token");
    };
    let Some(jwk) = request.wimse_jwk else { return missing("wimse_jwk") };
    let jwk = match Jwk::from_json(&jwk) {
        Ok(jwk) => jwk,
        Err(error) => return oauth_error(&error),
    };
    match server.exchange(&subject_token, &subject_token_type, &jwk).await {
        Ok(issued) => Json(TokenResponse {
            expires_in: issued.expires_at.saturating_sub(issued.issued_at),
            access_token: issued.wit,
            issued_token_type: JWT_TOKEN_TYPE,
            token_type: "N_A",
        })
        .into_response(),
        Err(error) => {
            server.audit_refusal("exchange", None, None, &error);
            oauth_error(&error)
        }
    }
}

/// RFC 6749 §5.2 answer of the Transaction Token Service: `invalid_client` (401) when the
/// requester's WIT + WPT did not verify, `unauthorized_client` when it may not request this,
/// `invalid_scope`, `invalid_target`, `invalid_request` for an invalid subject token.
fn txn_error(error: &Error) -> Response {
    let (status, code) = match error.kind() {
        ErrorKind::IssuanceDenied
        | ErrorKind::DelegationDenied
        | ErrorKind::DelegationTooDeep
        | ErrorKind::WorkloadRevoked
        | ErrorKind::SubjectRevoked => (StatusCode::BAD_REQUEST, "unauthorized_client"),
        ErrorKind::ActorTokenInvalid => (StatusCode::BAD_REQUEST, "invalid_request"),
        ErrorKind::InvalidScope => (StatusCode::BAD_REQUEST, "invalid_scope"),
        ErrorKind::InvalidTarget => (StatusCode::BAD_REQUEST, "invalid_target"),
        ErrorKind::ExchangeRefused | ErrorKind::UnsupportedTokenType => (StatusCode::BAD_REQUEST, "invalid_request"),
        _ if Rejection::from_error(error).status() == StatusCode::UNAUTHORIZED => {
            (StatusCode::UNAUTHORIZED, "invalid_client")
        }
        _ => return oauth_error(error),
    };
    // `reason` (an extension member, RFC 6749 §5.2 allows them): which check refused, as the
    // project's error kinds name it, so a client can tell a delegation refusal from others.
    let body = serde_json::json!({"error": code, "error_description": error.kind().description(),
                                  "reason": error.kind().reason()});
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        // RFC 6749 §5.2: a 401 names the scheme the client should authenticate with.
        response
            .headers_mut()
            .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("WPT"));
    }
    // Only the requester's own failed authentication counts against its address (the 401s): an
    // invalid subject token comes from the requester's caller (a user on the internet), and
    // must not get the edge's address refused.
    response
}

/// The Transaction Token Service (draft-ietf-oauth-transaction-tokens-11 §11): the requester
/// authenticates with its WIT + WPT (`aud` = the token endpoint).
async fn txn_token_exchange(server: &IdentityServer, headers: &HeaderMap, request: TokenRequest) -> Response {
    let requester = match server.authenticate_requester(headers).await {
        Ok(requester) => requester,
        Err(error) => {
            server.audit_refusal("txn-token", None, request.scope.as_deref(), &error);
            return txn_error(&error);
        }
    };
    let (Some(subject_token), Some(subject_token_type)) = (&request.subject_token, &request.subject_token_type) else {
        return missing("subject_token");
    };
    let (Some(audience), Some(scope)) = (&request.audience, &request.scope) else {
        return missing("audience or scope");
    };
    let mut txn_request = TxnTokenRequest::new(subject_token, subject_token_type, scope).audience(audience);
    txn_request.request_context = request.request_context;
    txn_request.request_details = request.request_details;
    txn_request.actor = match (request.actor_token, request.actor_token_type) {
        (None, None) => TxnActor::None,
        (Some(token), Some(token_type)) => TxnActor::Token { token, token_type },
        _ => return missing("actor_token and actor_token_type (one without the other)"),
    };
    match server.issue_txn_token(&requester, &txn_request).await {
        Ok(issued) => {
            let body = Json(TokenResponse {
                access_token: issued.token,
                issued_token_type: TXN_TOKEN_TYPE,
                token_type: "N_A",
                expires_in: issued.expires_in,
            });
            ([(axum::http::header::CACHE_CONTROL, "no-store")], body).into_response()
        }
        Err(error) => {
            server.audit_refusal("txn-token", Some(requester.id().to_string()), Some(scope), &error);
            txn_error(&error)
        }
    }
}

/// The body of `POST /v1/wic`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub(crate) struct WicBody {
    /// The workload identifier asked for (the certificate's URI SAN).
    sub: String,
    /// The workload's public key: an X.509 SubjectPublicKeyInfo, DER, base64.
    spki: String,
    /// `client` (the default), `server` or `both`: the extended key usages.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = "^(client|server|both)$"))]
    usage: Option<String>,
    /// DNS names (server certificates), within the client's `allowed_dns_names`.
    #[serde(default)]
    dns: Vec<String>,
    /// IP addresses (server certificates). Parsed here, so a malformed address is a 400 naming
    /// it rather than a JSON error.
    #[serde(default)]
    ip: Vec<String>,
    /// The lifetime asked for, in seconds (capped at the client's `max_wic_lifetime`).
    #[serde(default)]
    lifetime: Option<u64>,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
}

/// A WIC (an X.509 workload certificate) for the authenticated client's workload, issued by
/// the trust domain's WIC authority (see `GET /v1/bundle/x509`).
#[cfg_attr(feature = "openapi", utoipa::path(
    post, path = "/v1/wic", tag = "issuance", request_body = WicBody,
    security(("bootstrap" = []), ("client_wic" = [])),
    responses(
        (status = 200, description = "The certificate chain", body = WicResponse),
        (status = 400, description = "The body is not what the endpoint takes (`malformed_request`), or names an invalid identifier, key, lifetime or name", body = crate::schemas::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bootstrap credential, and no client WIC of a client with `wic_renewal` (`bootstrap_token_invalid`)", body = crate::schemas::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The client may not obtain this identifier (`issuance_denied`)", body = crate::schemas::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over the client's or source address's budget, or locked out after failed authentications (`rate_limited`); see `Retry-After`", body = crate::schemas::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The key store does not answer (`key_store_unavailable`)", body = crate::schemas::Problem, content_type = "application/problem+json"),
    )
))]
async fn issue_wic(
    State(server): State<Arc<IdentityServer>>,
    headers: HeaderMap,
    wic: Option<axum::Extension<ClientWic>>,
    JsonBody(request): JsonBody<WicBody>,
) -> Response {
    use base64::Engine as _;
    use wimse_core::protocol::wic::{WicUsage, chain_to_pem};
    let Some(presented) = presented(&headers, wic.as_ref().map(|w| &w.0)) else {
        return problem(&Error::with_detail(ErrorKind::BootstrapTokenInvalid, "no bearer bootstrap credential"));
    };
    let usage = match request.usage.as_deref() {
        None | Some("client") => WicUsage::Client,
        Some("server") => WicUsage::Server,
        Some("both") => WicUsage::ClientAndServer,
        Some(_) => return problem(&Error::with_detail(ErrorKind::InvalidKey, "usage is client, server or both")),
    };
    let Ok(spki) = base64::engine::general_purpose::STANDARD.decode(&request.spki) else {
        return problem(&Error::with_detail(ErrorKind::InvalidKey, "spki is not base64"));
    };
    let mut ip_addresses = Vec::with_capacity(request.ip.len());
    for ip in &request.ip {
        match ip.parse::<std::net::IpAddr>() {
            Ok(ip) => ip_addresses.push(ip),
            Err(_) => {
                let shown: String = ip.chars().take(64).collect();
                let detail = format!("{shown:?} is not an IP address");
                return problem(&Error::with_detail(ErrorKind::InvalidSubjectAltName, detail));
            }
        }
    }
    let wic = crate::WicRequest {
        sub: &request.sub,
        spki_der: &spki,
        usage,
        dns_names: &request.dns,
        ip_addresses: &ip_addresses,
        lifetime: request.lifetime,
    };
    match server.issue_wic(presented, &wic).await {
        Ok((chain, expires_at)) => Json(WicResponse { chain_pem: chain_to_pem(&chain), expires_at }).into_response(),
        Err(error) => {
            server.audit_refusal("wic", None, Some(&request.sub), &error);
            problem(&error)
        }
    }
}

/// The WIC certificate authority: the trust anchor of the trust domain's WICs.
#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/v1/bundle/x509", tag = "bundles",
    params(("If-None-Match" = Option<String>, Header, description = "The `ETag` of the copy held: 304 without a body when it is current")),
    responses(
        (status = 200, description = "The authority's certificate", body = String, content_type = "application/x-pem-file", headers(("ETag" = String, description = "A digest of the body, the same on every replica"), ("Cache-Control" = String, description = "`public, max-age=` half the refresh hint"))),
        (status = 304, description = "The copy named by `If-None-Match` is current", headers(("ETag" = String, description = "A digest of the body, the same on every replica"), ("Cache-Control" = String, description = "`public, max-age=` half the refresh hint"))),
        (status = 503, description = "No authority yet (`key_store_unavailable`)", body = crate::schemas::Problem, content_type = "application/problem+json"),
    )
))]
async fn x509_bundle(State(server): State<Arc<IdentityServer>>, headers: HeaderMap) -> Response {
    match server.wic_bundle_pem() {
        Ok(pem) => cacheable(&server, &headers, "application/x-pem-file", pem.into_bytes()),
        Err(error) => problem(&error),
    }
}

/// A document every verifier polls, answered so that caches and CDNs can serve it: a strong
/// `ETag` (a digest of the body, the same on every replica holding the same keys),
/// `Cache-Control: public, max-age` of half the refresh hint (a key is published two hints
/// before it signs, so a cached copy plus a verifier's own interval still see it in time), and
/// 304 without a body for a request whose `If-None-Match` names it.
fn cacheable(server: &IdentityServer, headers: &HeaderMap, content_type: &'static str, body: Vec<u8>) -> Response {
    use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(&body);
    let etag = format!("\"{}\"", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16]));
    let max_age = (server.config.refresh_hint / 2).max(1);
    let cache = format!("public, max-age={max_age}");
    // RFC 9110 §13.1.2: weak comparison, any of a list, or `*`.
    let matches = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|value| value.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag));
    let status = if matches { StatusCode::NOT_MODIFIED } else { StatusCode::OK };
    let body = if matches { Vec::new() } else { body };
    let mut response = (status, body).into_response();
    let fields = response.headers_mut();
    if let (Ok(etag), Ok(cache)) = (etag.parse(), cache.parse()) {
        fields.insert(ETAG, etag);
        fields.insert(CACHE_CONTROL, cache);
    }
    if !matches {
        fields.insert(CONTENT_TYPE, axum::http::HeaderValue::from_static(content_type));
    }
    response
}

// Bundles are served from memory: rotation runs on a timer (`IdentityServer::start_maintenance`),
// and verification keeps working while the key store is unreachable.
/// The signing keys (published and pending) as a JWKS.
#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/v1/bundle/jwks", tag = "bundles",
    params(("If-None-Match" = Option<String>, Header, description = "The `ETag` of the copy held: 304 without a body when it is current")),
    responses(
        (status = 200, description = "The JWKS", body = crate::schemas::Jwks, headers(("ETag" = String, description = "A digest of the body, the same on every replica"), ("Cache-Control" = String, description = "`public, max-age=` half the refresh hint"))),
        (status = 304, description = "The copy named by `If-None-Match` is current", headers(("ETag" = String, description = "A digest of the body, the same on every replica"), ("Cache-Control" = String, description = "`public, max-age=` half the refresh hint"))),
    )
))]
async fn jwks(State(server): State<Arc<IdentityServer>>, headers: HeaderMap) -> Response {
    cacheable(&server, &headers, "application/json", server.jwks().to_string().into_bytes())
}

/// The signing keys as a SPIFFE trust bundle: what verifiers fetch (`spiffe_sequence`,
/// `spiffe_refresh_hint`, the key store's epoch).
#[cfg_attr(feature = "openapi", utoipa::path(
    get, path = "/v1/bundle/spiffe", tag = "bundles",
    params(("If-None-Match" = Option<String>, Header, description = "The `ETag` of the copy held: 304 without a body when it is current")),
    responses(
        (status = 200, description = "The SPIFFE bundle", body = crate::schemas::SpiffeBundle, headers(("ETag" = String, description = "A digest of the body, the same on every replica"), ("Cache-Control" = String, description = "`public, max-age=` half the refresh hint"))),
        (status = 304, description = "The copy named by `If-None-Match` is current", headers(("ETag" = String, description = "A digest of the body, the same on every replica"), ("Cache-Control" = String, description = "`public, max-age=` half the refresh hint"))),
    )
))]
async fn spiffe_bundle(State(server): State<Arc<IdentityServer>>, headers: HeaderMap) -> Response {
    cacheable(&server, &headers, "application/json", server.spiffe_bundle().to_string().into_bytes())
}

/// The HTTP API of `server`. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` so the per-source-address limits
/// apply (see [`IssuerConfig::rate_limits`](crate::IssuerConfig::rate_limits)).
///
/// Starts the server's key maintenance (rotation on a timer) if it is not running yet: see
/// [`IdentityServer::start_maintenance`].
pub fn router(server: Arc<IdentityServer>) -> Router {
    server.start_maintenance();
    let issuance = Router::new()
        .route("/v1/wit", post(issue_wit))
        .route("/v1/token", post(token))
        .route("/v1/wic", post(issue_wic))
        // Every issuance request is small (a token, a JWK, a public key).
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .route_layer(axum::middleware::from_fn_with_state(server.clone(), limit_sources));
    Router::new()
        .merge(issuance)
        .route("/v1/bundle/x509", get(x509_bundle))
        .route("/v1/bundle/jwks", get(jwks))
        .route("/v1/bundle/spiffe", get(spiffe_bundle))
        .route_layer(axum::middleware::from_fn_with_state(server.clone(), count_requests))
        .with_state(server)
}

/// `wimse_issuer_requests_total{endpoint, status}` and `wimse_issuer_request_seconds{endpoint}`
/// for every request to a route (issuances by result: `/v1/wit` with 200, 401, 403, 503...).
async fn count_requests(
    State(server): State<Arc<IdentityServer>>,
    path: axum::extract::MatchedPath,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use tracing::Instrument as _;
    let endpoint = path.as_str().to_owned();
    let started = std::time::Instant::now();
    // One span per request (exported over OTLP by `wimse issuer serve` when configured): the
    // authenticated client and the identifier, or the Txn-Token's requester and `txn`, are
    // recorded on it once known.
    let method = request.method().clone();
    let span = tracing::info_span!(
        "wimse.issuer.request",
        otel.name = %format!("{method} {endpoint}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %endpoint,
        http.response.status_code = tracing::field::Empty,
        wimse.caller = tracing::field::Empty,
        wimse.workload = tracing::field::Empty,
        wimse.txn = tracing::field::Empty,
    );
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    // A server error (the key store down: 503) is the operator's to see, once a minute.
    if response.status().is_server_error()
        && server.quiet.first_in_interval(&format!("{} {endpoint}", response.status()), server.clock.now())
    {
        tracing::warn!(%endpoint, status = response.status().as_u16(), "wimse issuer: answered a server error (logged once a minute per endpoint and status)");
    }
    let status = response.status().as_u16().to_string();
    metrics::histogram!("wimse_issuer_request_seconds", "endpoint" => endpoint.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("wimse_issuer_requests_total", "endpoint" => endpoint, "status" => status).increment(1);
    response
}

#[cfg(test)]
mod tests {
    use super::grant_description;
    use wimse_core::{Error, ErrorKind};

    #[test]
    fn a_refused_grant_says_which_check_failed_in_rfc_6749_characters() {
        let refused = Error::with_detail(ErrorKind::ExchangeRefused, "typ \"a\\b\u{e9}\n\" not accepted");
        assert_eq!(grant_description(&refused), "the token exchange was refused: typ 'a/b??' not accepted");
        let long = Error::with_detail(ErrorKind::ExchangeRefused, "x".repeat(10_000));
        assert_eq!(grant_description(&long).len(), "the token exchange was refused: ".len() + 200);
        // Other errors keep their description only.
        let dpop = Error::with_detail(ErrorKind::InvalidDpopProof, "DPoP proof jti already used");
        assert_eq!(grant_description(&dpop), ErrorKind::InvalidDpopProof.description());
    }
}
