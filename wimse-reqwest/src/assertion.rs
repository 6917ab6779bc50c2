//! Federation from the client side (workload-identity-practices, RFC 7521/7523): the platform's
//! credential for this workload (a projected token file, a CI OIDC token, a WIT) goes as a
//! jwt-bearer assertion to **any** RFC 7523 authorization server, and the access token it
//! answers with goes on outbound requests to OAuth-protected APIs.
//!
//! ```no_run
//! use reqwest_middleware::ClientBuilder;
//! use wimse_reqwest::{AssertionGrant, OAuthTokenMiddleware, PlatformToken};
//!
//! # fn main() {
//! // The projected service-account token, re-read for every exchange (the kubelet rotates it).
//! let grant = AssertionGrant::new(
//!     "https://login.partner.example/oauth2/token",
//!     PlatformToken::File("/var/run/secrets/tokens/partner-token".into()),
//! )
//! .scope("invoices.read");
//! let middleware = OAuthTokenMiddleware::new(grant).for_origin("https://invoices.partner.example");
//! let client = ClientBuilder::new(reqwest::Client::new()).with(middleware).build();
//! # let _ = client;
//! # }
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use serde_json::Value;
use wimse_core::client::cred::CredentialSource;
use wimse_core::jose::SigningKey;
pub use wimse_core::protocol::oauth::{JWT_BEARER_CLIENT_ASSERTION, JWT_BEARER_GRANT, TOKEN_EXCHANGE_GRANT};
use wimse_core::time::{Clock, SystemClock};
use wimse_core::{Error, ErrorKind};

fn unavailable(detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::with_detail(ErrorKind::CredentialsUnavailable, detail)
}

/// Where the platform's token for this workload comes from. It is read anew for every exchange,
/// so a token the platform rotated in place is never used stale. `Debug` shows no token.
#[derive(Clone)]
pub enum PlatformToken {
    /// A file the platform rewrites (a Kubernetes projected service-account token,
    /// `AZURE_FEDERATED_TOKEN_FILE`, `AWS_WEB_IDENTITY_TOKEN_FILE`).
    File(PathBuf),
    /// GitHub Actions OIDC, from `ACTIONS_ID_TOKEN_REQUEST_URL` and
    /// `ACTIONS_ID_TOKEN_REQUEST_TOKEN` (the job needs `permissions: id-token: write`), with
    /// this audience.
    GitHubActions {
        /// The `aud` to ask for (the authorization server's token endpoint).
        audience: String,
    },
    /// A CI OIDC endpoint in GitHub's shape, given explicitly: `GET url&audience=…` with
    /// `Authorization: Bearer request_token` answers `{"value": "<jwt>"}`.
    OidcEndpoint {
        /// The request URL (GitHub's `ACTIONS_ID_TOKEN_REQUEST_URL`).
        url: String,
        /// The bearer token for it (GitHub's `ACTIONS_ID_TOKEN_REQUEST_TOKEN`).
        request_token: String,
        /// The `aud` to ask for.
        audience: String,
    },
    /// The workload's current WIT, as the assertion toward another trust domain.
    Wit(Arc<dyn CredentialSource>),
    /// A fixed token.
    Static(String),
}

impl std::fmt::Debug for PlatformToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlatformToken::File(path) => f.debug_tuple("File").field(path).finish(),
            PlatformToken::GitHubActions { audience } => {
                f.debug_struct("GitHubActions").field("audience", audience).finish()
            }
            PlatformToken::OidcEndpoint { url, audience, .. } => {
                f.debug_struct("OidcEndpoint").field("url", url).field("audience", audience).finish_non_exhaustive()
            }
            PlatformToken::Wit(source) => f.debug_tuple("Wit").field(source).finish(),
            PlatformToken::Static(_) => f.write_str("Static(..)"),
        }
    }
}

impl PlatformToken {
    /// Reads the token now.
    pub async fn read(&self, http: &reqwest::Client, now: u64) -> Result<String, Error> {
        match self {
            PlatformToken::File(path) => tokio::fs::read_to_string(path)
                .await
                .map(|t| t.trim().to_owned())
                .map_err(|e| unavailable(format!("platform token {}: {e}", path.display()))),
            PlatformToken::Static(token) => Ok(token.clone()),
            PlatformToken::Wit(source) => Ok(source.credentials(now)?.wit().to_owned()),
            PlatformToken::GitHubActions { audience } => {
                let var = |name: &'static str| {
                    std::env::var(name).map_err(|_| unavailable(format!("{name} is not set (id-token: write?)")))
                };
                let endpoint = PlatformToken::OidcEndpoint {
                    url: var("ACTIONS_ID_TOKEN_REQUEST_URL")?,
                    request_token: var("ACTIONS_ID_TOKEN_REQUEST_TOKEN")?,
                    audience: audience.clone(),
                };
                Box::pin(endpoint.read(http, now)).await
            }
            PlatformToken::OidcEndpoint { url, request_token, audience } => {
                let response = http
                    .get(url)
                    .query(&[("audience", audience)])
                    .bearer_auth(request_token)
                    .send()
                    .await
                    .map_err(|e| unavailable(format!("CI OIDC endpoint: {e}")))?;
                let status = response.status();
                let text = crate::bundle::read_capped(response, crate::bundle::MAX_DOCUMENT)
                    .await
                    .map_err(|e| unavailable(format!("CI OIDC endpoint: {e}")))?;
                if !status.is_success() {
                    return Err(unavailable(format!("CI OIDC endpoint answered {status}")));
                }
                let body: Value = serde_json::from_str(&text).map_err(|_| unavailable("CI OIDC endpoint: not JSON"))?;
                body["value"].as_str().map(str::to_owned).ok_or_else(|| unavailable("CI OIDC endpoint: no value"))
            }
        }
    }
}

/// Whether `url` is https, or http to a loopback host (the URL parsed, so user info such as
/// `http://localhost:80@elsewhere/` cannot pass for loopback).
pub fn secure_or_loopback(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else { return false };
    match url.scheme() {
        "https" => true,
        "http" => url.host_str().is_some_and(wimse_core::server::framing::is_loopback_host),
        _ => false,
    }
}

/// An access token from an authorization server. `Debug` shows no token.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// The token.
    pub token: String,
    /// `Bearer`, or `DPoP` when bound to the grant's DPoP key.
    pub token_type: String,
    /// When it expires (seconds since the epoch).
    pub expires_at: u64,
    /// The granted scope, if the server said.
    pub scope: Option<String>,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// How the platform token is presented.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    /// RFC 7523 §2.1 `assertion` with the jwt-bearer grant.
    Grant,
    /// RFC 7523 §2.2 `client_assertion` with the `client_credentials` grant.
    ClientAssertion,
    /// RFC 8693 `subject_token` of this type (identity chaining across domains).
    TokenExchange(String),
}

/// Most resources a grant keeps a token for.
const MAX_RESOURCES: usize = 64;

/// A request extension naming the resource (RFC 8707) one request's token is for; the
/// middleware then uses a token obtained for it (cached per resource).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenResource(pub String);

/// A client of an RFC 7523 authorization server: the platform token as a jwt-bearer grant (or
/// as a client assertion), optionally with a DPoP proof (RFC 9449), the answer cached until
/// shortly before it expires.
pub struct AssertionGrant {
    token_url: String,
    platform: PlatformToken,
    http: reqwest::Client,
    form: Vec<(String, String)>,
    mode: Mode,
    dpop: Option<SigningKey>,
    timeout: Duration,
    refresh_before: u64,
    clock: Arc<dyn Clock>,
    /// Tokens per resource (`None`: the grant's own parameters only), at most [`MAX_RESOURCES`].
    cached: Mutex<HashMap<Option<String>, Arc<AccessToken>>>,
    /// One request at a time refreshes the cache.
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for AssertionGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionGrant")
            .field("token_url", &self.token_url)
            .field("platform", &self.platform)
            .finish_non_exhaustive()
    }
}

impl AssertionGrant {
    /// Exchanges `platform`'s token at `token_url` with the jwt-bearer grant.
    pub fn new(token_url: impl Into<String>, platform: PlatformToken) -> Self {
        Self {
            token_url: token_url.into(),
            platform,
            // No redirects: the assertion is in the form body, which a 307/308 would re-send to
            // wherever the redirect points.
            http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap_or_default(),
            form: Vec::new(),
            mode: Mode::Grant,
            dpop: None,
            timeout: Duration::from_secs(10),
            refresh_before: 60,
            clock: Arc::new(SystemClock),
            cached: Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// Asks for `scope`.
    pub fn scope(self, scope: impl Into<String>) -> Self {
        self.param("scope", scope)
    }

    /// Names the resource the token is for (RFC 8707); see also [`TokenResource`] per request.
    pub fn resource(self, resource: impl Into<String>) -> Self {
        self.param("resource", resource)
    }

    /// Sends `client_id` too (some servers want it with the grant).
    pub fn client_id(self, client_id: impl Into<String>) -> Self {
        self.param("client_id", client_id)
    }

    /// Sends another form parameter with every token request.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.form.push((name.into(), value.into()));
        self
    }

    /// Sends the token as RFC 7523 §2.2 client authentication with the `client_credentials`
    /// grant (as Entra workload identity expects) instead of as the grant.
    pub fn as_client_assertion(mut self) -> Self {
        self.mode = Mode::ClientAssertion;
        self
    }

    /// Sends the token as an RFC 8693 `subject_token` of `subject_token_type` (e.g.
    /// `urn:ietf:params:oauth:token-type:jwt`), for identity chaining at a token-exchange
    /// server, instead of as an RFC 7523 grant.
    pub fn token_exchange(mut self, subject_token_type: impl Into<String>) -> Self {
        self.mode = Mode::TokenExchange(subject_token_type.into());
        self
    }

    /// Proves possession of `key` with a DPoP proof on every token request, so the token is
    /// bound to it (and sent with a proof per request by [`OAuthTokenMiddleware`]).
    pub fn dpop(mut self, key: SigningKey) -> Self {
        self.dpop = Some(key);
        self
    }

    /// Uses this HTTP client.
    pub fn client(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// The longest a token request may take. Default 10 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long before expiry a cached token is replaced, in seconds. Default 60.
    pub fn refresh_before(mut self, secs: u64) -> Self {
        self.refresh_before = secs;
        self
    }

    /// Uses another clock.
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The DPoP key, if the grant uses one.
    pub fn dpop_key(&self) -> Option<&SigningKey> {
        self.dpop.as_ref()
    }

    /// A token valid for at least `refresh_before` more seconds: the cached one, or a new one.
    pub async fn token(&self) -> Result<Arc<AccessToken>, Error> {
        self.token_for(None).await
    }

    /// Like [`token`](Self::token), for `resource` (RFC 8707) when given: tokens are cached
    /// per resource.
    pub async fn token_for(&self, resource: Option<&str>) -> Result<Arc<AccessToken>, Error> {
        let key = resource.map(str::to_owned);
        let fresh = |now: u64| {
            let cached = self.cached.lock().ok()?.get(&key).cloned()?;
            (now.saturating_add(self.refresh_before) < cached.expires_at).then_some(cached)
        };
        if let Some(token) = fresh(self.clock.now()) {
            return Ok(token);
        }
        let _refreshing = self.refreshing.lock().await;
        if let Some(token) = fresh(self.clock.now()) {
            return Ok(token);
        }
        let token = Arc::new(self.request_for(resource).await?);
        if let Ok(mut cached) = self.cached.lock() {
            if cached.len() >= MAX_RESOURCES && !cached.contains_key(&key) {
                let now = self.clock.now();
                cached.retain(|_, t| t.expires_at > now);
                if cached.len() >= MAX_RESOURCES {
                    cached.clear();
                }
            }
            cached.insert(key, token.clone());
        }
        Ok(token)
    }

    /// Asks the authorization server for a new token now (not cached).
    pub async fn request(&self) -> Result<AccessToken, Error> {
        self.request_for(None).await
    }

    async fn request_for(&self, resource: Option<&str>) -> Result<AccessToken, Error> {
        match tokio::time::timeout(self.timeout, self.exchange(resource)).await {
            Ok(result) => result,
            Err(_) => Err(unavailable(format!("{}: no answer within {:?}", self.token_url, self.timeout))),
        }
    }

    async fn exchange(&self, resource: Option<&str>) -> Result<AccessToken, Error> {
        if !secure_or_loopback(&self.token_url) {
            return Err(unavailable(format!("{}: assertions go only over https (or to loopback)", self.token_url)));
        }
        let now = self.clock.now();
        let assertion = self.platform.read(&self.http, now).await?;
        let mut form: Vec<(String, String)> = match &self.mode {
            Mode::Grant => vec![("grant_type".into(), JWT_BEARER_GRANT.into()), ("assertion".into(), assertion)],
            Mode::ClientAssertion => vec![
                ("grant_type".into(), "client_credentials".into()),
                ("client_assertion_type".into(), JWT_BEARER_CLIENT_ASSERTION.into()),
                ("client_assertion".into(), assertion),
            ],
            Mode::TokenExchange(token_type) => vec![
                ("grant_type".into(), TOKEN_EXCHANGE_GRANT.into()),
                ("subject_token".into(), assertion),
                ("subject_token_type".into(), token_type.clone()),
            ],
        };
        form.extend(self.form.iter().cloned());
        if let Some(resource) = resource {
            form.push(("resource".into(), resource.to_owned()));
        }
        let mut request = self.http.post(&self.token_url).form(&form);
        if let Some(key) = &self.dpop {
            request = request.header("dpop", wimse_core::protocol::dpop::proof(key, "POST", &self.token_url, now)?);
        }
        let response = request.send().await.map_err(|e| unavailable(format!("{}: {e}", self.token_url)))?;
        let status = response.status();
        let text = crate::bundle::read_capped(response, crate::bundle::MAX_DOCUMENT)
            .await
            .map_err(|e| unavailable(format!("{}: {e}", self.token_url)))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            // RFC 6749 §5.2: say what the server said, never the assertion.
            let field = |name: &str| body[name].as_str().map(|s| s.chars().take(200).collect::<String>());
            return Err(unavailable(format!(
                "{} answered {status}: {} {}",
                self.token_url,
                field("error").unwrap_or_default(),
                field("error_description").unwrap_or_default()
            )));
        }
        let token = body["access_token"].as_str().ok_or_else(|| unavailable("no access_token in the answer"))?;
        let expires_in = body["expires_in"].as_u64().unwrap_or(300);
        Ok(AccessToken {
            token: token.to_owned(),
            token_type: body["token_type"].as_str().unwrap_or("Bearer").to_owned(),
            expires_at: now.saturating_add(expires_in),
            scope: body["scope"].as_str().map(str::to_owned),
        })
    }
}

/// Puts the grant's access token on every outgoing request: `Authorization: Bearer <token>`, or
/// for a DPoP-bound token `Authorization: DPoP <token>` with a fresh DPoP proof (with `ath`).
/// A [`TokenResource`] in a request's extensions asks for a token for that resource.
///
/// The token goes only to the origins given with [`for_origin`](Self::for_origin): a request
/// anywhere else (a pagination link, a redirect target, a webhook URL) fails instead of
/// carrying it.
#[derive(Debug, Clone)]
pub struct OAuthTokenMiddleware {
    grant: Arc<AssertionGrant>,
    origins: Arc<[String]>,
}

impl OAuthTokenMiddleware {
    /// Uses `grant` (shared by clones). Add the API's origin with [`for_origin`](Self::for_origin).
    pub fn new(grant: AssertionGrant) -> Self {
        Self { grant: Arc::new(grant), origins: Arc::from([]) }
    }

    /// Sends the token to `origin` (`scheme://host[:port]`, as in `https://api.example`).
    pub fn for_origin(self, origin: impl Into<String>) -> Self {
        let mut origins = self.origins.to_vec();
        origins.push(origin.into().trim_end_matches('/').to_ascii_lowercase());
        Self { grant: self.grant, origins: origins.into() }
    }
}

#[async_trait::async_trait]
impl Middleware for OAuthTokenMiddleware {
    async fn handle(
        &self,
        mut req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let origin = req.url().origin().ascii_serialization();
        if !self.origins.contains(&origin) {
            return Err(reqwest_middleware::Error::middleware(unavailable(format!(
                "{origin} is not an origin this access token is for"
            ))));
        }
        let resource = extensions.get::<TokenResource>().map(|r| r.0.clone());
        let token = self.grant.token_for(resource.as_deref()).await.map_err(reqwest_middleware::Error::middleware)?;
        let mut url = req.url().clone();
        url.set_query(None);
        url.set_fragment(None);
        let (scheme, proof) = match (token.token_type.eq_ignore_ascii_case("dpop"), self.grant.dpop_key()) {
            (true, None) => {
                return Err(reqwest_middleware::Error::middleware(unavailable(
                    "a DPoP-bound token needs the grant's DPoP key",
                )));
            }
            (true, Some(key)) => {
                let proof = wimse_core::protocol::dpop::proof_for_token(
                    key,
                    req.method().as_str(),
                    url.as_str(),
                    self.grant.clock.now(),
                    &token.token,
                )
                .map_err(reqwest_middleware::Error::middleware)?;
                ("DPoP", Some(proof))
            }
            _ => ("Bearer", None),
        };
        let value = http::HeaderValue::from_str(&format!("{scheme} {}", token.token)).map_err(|_| {
            reqwest_middleware::Error::middleware(unavailable("the access token is not a header value"))
        })?;
        req.headers_mut().insert(http::header::AUTHORIZATION, value);
        if let Some(proof) = proof {
            let proof = http::HeaderValue::from_str(&proof)
                .map_err(|_| reqwest_middleware::Error::middleware(unavailable("DPoP proof")))?;
            req.headers_mut().insert("dpop", proof);
        }
        next.run(req, extensions).await
    }
}
