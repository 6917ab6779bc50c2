//! The identity server's logic, framework-free: who may obtain which identifiers, bootstrap
//! credentials, WIT issuance, signing-key rotation with overlap, trust bundles, and a key store
//! that survives restarts. `wimse-axum` serves it over HTTP.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{Error, ErrorKind, Result};
use crate::id::{TrustDomain, WorkloadId};
use crate::jose::{Algorithm, Jwk, PublicKey, SigningKey, jws};
use crate::policy::Rule;
use crate::rate::{Rate, RateLimiter};
use crate::time::Clock;
use crate::trust::TrustAnchors;
use crate::wit::WitIssuer;

/// RFC 8693 token type of OAuth access tokens.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 8693 token type of JWTs (JWT-SVIDs, platform tokens; and of the issued WIT).
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

fn config_error(field: impl Into<String>, problem: impl std::fmt::Display) -> Error {
    Error::with_detail(ErrorKind::InvalidConfiguration, format!("{}: {problem}", field.into()))
}

/// A platform whose tokens bootstrap workloads (a Kubernetes cluster's service-account issuer,
/// a CI system's OIDC issuer).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// Name used by clients to refer to this platform.
    pub name: String,
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// The `aud` its tokens must carry for this identity server.
    pub audience: String,
    /// Its signing keys (a JWKS), configured out of band.
    pub jwks: Value,
    /// Platform tokens that expire further ahead than this are refused, in seconds (1 to
    /// 604800). Defaults to 86400: projected service-account tokens live an hour, CI OIDC
    /// tokens minutes; a token valid for years is a leaked-forever credential.
    #[serde(default = "default_external_lifetime")]
    pub max_token_lifetime: u64,
}

fn default_external_lifetime() -> u64 {
    86_400
}

/// A client: who, authenticated how, may obtain which identifiers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Name, for audit records.
    pub name: String,
    /// The platform whose token authenticates this client (with `subject`).
    #[serde(default)]
    pub platform: Option<String>,
    /// The `sub` of that platform token.
    #[serde(default)]
    pub subject: Option<String>,
    /// A static secret instead of a platform token: only accepted in `dev_mode`.
    #[serde(default)]
    pub dev_secret: Option<String>,
    /// Identifiers it may obtain, exactly.
    #[serde(default)]
    pub allowed: Vec<String>,
    /// Identifier prefixes it may obtain (segment boundaries respected).
    #[serde(default)]
    pub allowed_prefixes: Vec<String>,
    /// Longest WIT lifetime it may obtain, in seconds.
    pub max_lifetime: u64,
    /// Longest WIC lifetime it may obtain, in seconds (1 to 86400). Defaults to `max_lifetime`.
    #[serde(default)]
    pub max_wic_lifetime: Option<u64>,
    /// DNS names it may put in a WIC's subject alternative names: exact names
    /// (`billing.prod.example`) or `*.suffix` patterns, which allow any name with at least one
    /// more label (`*.svc.prod.example` allows `a.svc.prod.example`, not `svc.prod.example`,
    /// and a wildcard SAN only if the same pattern is listed). None by default: a client can
    /// name only its workload identifier.
    #[serde(default)]
    pub allowed_dns_names: Vec<String>,
    /// IP addresses it may put in a WIC's subject alternative names. None by default.
    #[serde(default)]
    pub allowed_ip_addresses: Vec<std::net::IpAddr>,
}

#[cfg_attr(not(feature = "mtls"), allow(dead_code))]
/// Whether `name` (a requested DNS SAN) is allowed by `allowlist` (exact names and `*.suffix`
/// patterns, compared case-insensitively).
fn dns_name_allowed(allowlist: &[String], name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    allowlist.iter().any(|allowed| {
        let allowed = allowed.to_ascii_lowercase();
        if allowed == name {
            return true;
        }
        match allowed.strip_prefix("*.") {
            // One or more labels before the suffix, none of them a wildcard.
            Some(suffix) => name
                .strip_suffix(suffix)
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|head| !head.is_empty() && !head.contains('*')),
            None => false,
        }
    })
}

/// A DNS name or `*.suffix` pattern of an allowlist: lower-case-insensitive LDH labels.
fn valid_dns_pattern(pattern: &str) -> bool {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The kind of token a [`ExchangeProfile`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExchangeKind {
    /// An OAuth JWT access token (RFC 9068): `typ` must be `at+jwt`.
    AccessToken,
    /// A SPIFFE JWT-SVID: `sub` is a SPIFFE ID; the template may use `{trust_domain}` and `{path}`.
    JwtSvid,
    /// Any JWT from the issuer (a platform token).
    Jwt,
}

/// A token-exchange profile (RFC 8693): which tokens from another system are exchanged for WITs
/// of this trust domain, and how their subject maps onto a workload identifier.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeProfile {
    /// Name, for audit records.
    pub name: String,
    /// What the incoming token is.
    pub kind: ExchangeKind,
    /// The exact `iss` of incoming tokens.
    pub issuer: String,
    /// The `aud` they must carry for this identity server.
    pub audience: String,
    /// The issuer's keys (a JWKS), configured out of band.
    pub jwks: Value,
    /// The identifier issued, e.g. `spiffe://prod.example/partners/{sub}`. `{sub}` must be a
    /// single safe path segment (`[A-Za-z0-9._-]`) or the exchange is refused.
    pub subject_template: String,
    /// Longest WIT lifetime issued, in seconds.
    pub max_lifetime: u64,
    /// Incoming tokens that expire further ahead than this are refused, in seconds (1 to
    /// 604800). Defaults to 86400.
    #[serde(default = "default_external_lifetime")]
    pub max_token_lifetime: u64,
    /// For `jwt-svid`: the one SPIFFE trust domain whose SVIDs this profile exchanges (e.g.
    /// `spiffe://partner.example`); required, so a partner's issuer cannot speak for another
    /// trust domain (this one included).
    #[serde(default)]
    pub subject_trust_domain: Option<String>,
}

/// How often callers may ask. Over a limit the request is refused with 429
/// (`rate_limited`) and `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Issuance per client (WITs and WICs) and per exchange profile: 30 at once, 120 a minute.
    pub per_client: Rate,
    /// Requests per source address, whoever they claim to be: 60 at once, 600 a minute.
    pub per_source: Rate,
    /// Failed authentications per source address: after 10 at once (then 10 a minute), the
    /// address is refused until its budget refills, valid credentials or not.
    pub failed_authentications: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            per_client: Rate { burst: 30, per_minute: 120 },
            per_source: Rate { burst: 60, per_minute: 600 },
            failed_authentications: Rate { burst: 10, per_minute: 10 },
        }
    }
}

/// The identity server's configuration (a JSON file for `wimse issuer serve`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The trust domain it issues for, e.g. `spiffe://prod.example`.
    pub trust_domain: String,
    /// The `iss` claim of issued WITs.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Where signing keys are kept across restarts.
    pub key_store: PathBuf,
    /// Signing key algorithm. Defaults to ES256.
    #[serde(default = "default_alg")]
    pub algorithm: String,
    /// A new signing key is made after this many seconds. Defaults to one day.
    #[serde(default = "default_rotation")]
    pub rotation_period: u64,
    /// `spiffe_refresh_hint` of the published bundle, in seconds. Defaults to 300.
    #[serde(default = "default_refresh_hint")]
    pub refresh_hint: u64,
    /// Accept `dev_secret` clients. Never in production.
    #[serde(default)]
    pub dev_mode: bool,
    /// Platforms whose tokens bootstrap workloads.
    #[serde(default)]
    pub platforms: Vec<PlatformConfig>,
    /// Clients.
    pub clients: Vec<ClientConfig>,
    /// Token-exchange profiles.
    #[serde(default)]
    pub exchange: Vec<ExchangeProfile>,
    /// Rate limits on issuance and authentication (defaults in [`RateLimits`]).
    #[serde(default)]
    pub rate_limits: RateLimits,
}

fn default_alg() -> String {
    "ES256".into()
}
fn default_rotation() -> u64 {
    86_400
}
fn default_refresh_hint() -> u64 {
    300
}

struct Platform {
    config: PlatformConfig,
    keys: TrustAnchors,
}

struct Client {
    config: ClientConfig,
    rule: Rule,
}

struct Exchange {
    profile: ExchangeProfile,
    keys: TrustAnchors,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    created: u64,
    /// When it starts signing; published in the bundle from `created` on.
    active_from: u64,
    jwk: Jwk,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct KeyStore {
    sequence: u64,
    keys: Vec<StoredKey>,
    /// The WIC certificate authority (certificate and key, PEM), made on first start.
    #[serde(default)]
    wic_ca: Option<(String, String)>,
}

/// The result of an issuance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuedWit {
    /// The WIT.
    pub wit: String,
    /// When it was issued.
    pub issued_at: u64,
    /// Its expiry.
    pub expires_at: u64,
}

/// An identity server for one trust domain. Cheap to share behind an `Arc`.
pub struct IdentityServer {
    domain: TrustDomain,
    config: IssuerConfig,
    alg: Algorithm,
    platforms: Vec<Platform>,
    clients: Vec<Client>,
    exchanges: Vec<Exchange>,
    store: RwLock<KeyStore>,
    clock: Arc<dyn Clock>,
    per_client: RateLimiter<String>,
    per_source: RateLimiter<std::net::IpAddr>,
    failures: RateLimiter<std::net::IpAddr>,
}

impl std::fmt::Debug for IdentityServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityServer").field("trust_domain", &self.domain).finish_non_exhaustive()
    }
}

impl IdentityServer {
    /// Checks `config` (errors name the field), loads or creates the key store.
    pub fn new(config: IssuerConfig, clock: impl Clock + 'static) -> Result<Self> {
        let domain = TrustDomain::parse(&config.trust_domain).map_err(|e| config_error("trust_domain", e))?;
        let alg: Algorithm = config.algorithm.parse().map_err(|e: Error| config_error("algorithm", e))?;
        if config.rotation_period == 0 {
            return Err(config_error("rotation_period", "must be positive"));
        }
        let limits = &config.rate_limits;
        for (name, rate) in [
            ("per_client", limits.per_client),
            ("per_source", limits.per_source),
            ("failed_authentications", limits.failed_authentications),
        ] {
            if rate.burst == 0 || rate.per_minute == 0 {
                return Err(config_error(format!("rate_limits.{name}"), "burst and per_minute must be positive"));
            }
        }
        let mut platforms = Vec::new();
        for (i, p) in config.platforms.iter().enumerate() {
            let keys = TrustAnchors::from_jwks_json(&p.jwks.to_string())
                .map_err(|e| config_error(format!("platforms[{i}].jwks"), e))?;
            if p.issuer.is_empty() || p.audience.is_empty() {
                return Err(config_error(format!("platforms[{i}]"), "issuer and audience must be set"));
            }
            if p.max_token_lifetime == 0 || p.max_token_lifetime > 604_800 {
                return Err(config_error(
                    format!("platforms[{i}].max_token_lifetime"),
                    "must be between 1 and 604800 seconds",
                ));
            }
            platforms.push(Platform { config: p.clone(), keys });
        }
        let mut clients = Vec::new();
        for (i, c) in config.clients.iter().enumerate() {
            let field = |name: &str| format!("clients[{i}].{name}");
            match (&c.platform, &c.subject, &c.dev_secret) {
                (Some(platform), Some(_), None) => {
                    if !platforms.iter().any(|p| &p.config.name == platform) {
                        return Err(config_error(field("platform"), format!("no platform named `{platform}`")));
                    }
                }
                (None, None, Some(secret)) => {
                    if !config.dev_mode {
                        return Err(config_error(
                            field("dev_secret"),
                            "static secrets are only accepted with dev_mode",
                        ));
                    }
                    if secret.len() < 16 {
                        return Err(config_error(field("dev_secret"), "shorter than 16 characters"));
                    }
                }
                _ => {
                    return Err(config_error(
                        format!("clients[{i}]"),
                        "set either platform and subject, or dev_secret",
                    ));
                }
            }
            let mut rules = Vec::new();
            for (j, id) in c.allowed.iter().enumerate() {
                let id = WorkloadId::parse(id).map_err(|e| config_error(field(&format!("allowed[{j}]")), e))?;
                if !id.is_in(&domain) {
                    return Err(config_error(field(&format!("allowed[{j}]")), format!("not in {domain}")));
                }
                rules.push(Rule::exact(id));
            }
            for (j, prefix) in c.allowed_prefixes.iter().enumerate() {
                let rule =
                    Rule::path_prefix(prefix).map_err(|e| config_error(field(&format!("allowed_prefixes[{j}]")), e))?;
                if !prefix.starts_with(&format!("{domain}/")) {
                    return Err(config_error(field(&format!("allowed_prefixes[{j}]")), format!("not in {domain}")));
                }
                rules.push(rule);
            }
            if rules.is_empty() {
                return Err(config_error(field("allowed"), "the client may obtain no identifier"));
            }
            if c.max_lifetime == 0 || c.max_lifetime > 86_400 {
                return Err(config_error(field("max_lifetime"), "must be between 1 and 86400 seconds"));
            }
            for (j, pattern) in c.allowed_dns_names.iter().enumerate() {
                if !valid_dns_pattern(pattern) {
                    return Err(config_error(
                        field(&format!("allowed_dns_names[{j}]")),
                        "not a DNS name or a *.suffix pattern",
                    ));
                }
            }
            if c.max_wic_lifetime.is_some_and(|secs| secs == 0 || secs > 86_400) {
                return Err(config_error(field("max_wic_lifetime"), "must be between 1 and 86400 seconds"));
            }
            clients.push(Client { config: c.clone(), rule: Rule::any_of(rules) });
        }
        let mut exchanges = Vec::new();
        for (i, p) in config.exchange.iter().enumerate() {
            let keys = TrustAnchors::from_jwks_json(&p.jwks.to_string())
                .map_err(|e| config_error(format!("exchange[{i}].jwks"), e))?;
            if !p.subject_template.starts_with(&format!("{domain}/")) {
                return Err(config_error(format!("exchange[{i}].subject_template"), format!("not in {domain}")));
            }
            if p.max_lifetime == 0 || p.max_lifetime > 86_400 {
                return Err(config_error(format!("exchange[{i}].max_lifetime"), "must be between 1 and 86400 seconds"));
            }
            if p.max_token_lifetime == 0 || p.max_token_lifetime > 604_800 {
                return Err(config_error(
                    format!("exchange[{i}].max_token_lifetime"),
                    "must be between 1 and 604800 seconds",
                ));
            }
            match (p.kind, &p.subject_trust_domain) {
                (ExchangeKind::JwtSvid, None) => {
                    return Err(config_error(
                        format!("exchange[{i}].subject_trust_domain"),
                        "a jwt-svid profile names the trust domain whose SVIDs it exchanges",
                    ));
                }
                (_, Some(td)) => {
                    let td = TrustDomain::parse(td)
                        .map_err(|e| config_error(format!("exchange[{i}].subject_trust_domain"), e))?;
                    if p.kind != ExchangeKind::JwtSvid || td.scheme() != "spiffe" {
                        return Err(config_error(
                            format!("exchange[{i}].subject_trust_domain"),
                            "only for jwt-svid profiles, as spiffe://name",
                        ));
                    }
                }
                (_, None) => {}
            }
            exchanges.push(Exchange { profile: p.clone(), keys });
        }
        let server = Self {
            domain,
            alg,
            platforms,
            clients,
            exchanges,
            store: RwLock::new(KeyStore::default()),
            clock: Arc::new(clock),
            per_client: RateLimiter::new(config.rate_limits.per_client),
            per_source: RateLimiter::new(config.rate_limits.per_source),
            failures: RateLimiter::new(config.rate_limits.failed_authentications),
            config,
        };
        server.load_or_create()?;
        Ok(server)
    }

    fn store_error(e: impl std::fmt::Display) -> Error {
        Error::with_detail(ErrorKind::InvalidConfiguration, format!("key_store: {e}"))
    }

    fn load_or_create(&self) -> Result<()> {
        let path = &self.config.key_store;
        let store = match std::fs::read_to_string(path) {
            Ok(text) => {
                // It holds the signing keys and the WIC authority's key.
                crate::cred::check_private_file(path).map_err(Self::store_error)?;
                serde_json::from_str::<KeyStore>(&text).map_err(Self::store_error)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeyStore::default(),
            Err(e) => return Err(Self::store_error(e)),
        };
        for key in &store.keys {
            SigningKey::from_jwk(&key.jwk).map_err(Self::store_error)?;
        }
        *self.store.write().map_err(Self::store_error)? = store;
        self.rotate_if_due()?;
        #[cfg(feature = "mtls")]
        self.ensure_wic_ca()?;
        Ok(())
    }

    fn save(&self, store: &KeyStore) -> Result<()> {
        let text = serde_json::to_string_pretty(store).map_err(Self::store_error)?;
        crate::cred::write_atomically(&self.config.key_store, text.as_bytes()).map_err(Self::store_error)
    }

    /// Keys are published before they sign: the next key appears in the bundle two refresh
    /// hints before it becomes active, so verifiers that refresh on the hint never see a WIT
    /// signed by a key they do not have.
    fn prepublish(&self) -> u64 {
        self.config.refresh_hint.saturating_mul(2)
    }

    /// The longest lifetime of any WIT this server issues (clients and exchange profiles).
    fn longest_wit_lifetime(&self) -> u64 {
        let clients = self.clients.iter().map(|c| c.config.max_lifetime);
        let exchanges = self.exchanges.iter().map(|x| x.profile.max_lifetime);
        clients.chain(exchanges).max().unwrap_or(0)
    }

    /// Publishes the next signing key when the active one is due for rotation, and drops keys
    /// no WIT signed by them can still be valid for. Returns whether anything changed.
    pub fn rotate_if_due(&self) -> Result<bool> {
        let now = self.clock.now();
        let mut store = self.store.write().map_err(Self::store_error)?;
        let mut changed = false;
        let active_from = store.keys.iter().map(|k| k.active_from).filter(|&t| t <= now).max();
        let pending = store.keys.iter().any(|k| k.active_from > now);
        let due = match active_from {
            None => Some(now),
            Some(from)
                if !pending
                    && now.saturating_add(self.prepublish()) >= from.saturating_add(self.config.rotation_period) =>
            {
                Some(now.saturating_add(self.prepublish()).max(from.saturating_add(1)))
            }
            _ => None,
        };
        if let Some(active_from) = due {
            let kid = format!("{}-{now}", self.alg);
            let key = SigningKey::generate(self.alg)?.with_kid(kid);
            store.keys.push(StoredKey { created: now, active_from, jwk: key.to_private_jwk() });
            changed = true;
        }
        // A key is retired once a later key has been active for longer than any WIT it signed
        // can live: issued to a client or through a token exchange.
        let max_wit = self.longest_wit_lifetime();
        let activations: Vec<u64> = store.keys.iter().map(|k| k.active_from).collect();
        let before = store.keys.len();
        store.keys.retain(|k| {
            !activations.iter().any(|&later| later > k.active_from && now >= later.saturating_add(max_wit))
        });
        changed |= store.keys.len() != before;
        if changed {
            store.sequence += 1;
            self.save(&store)?;
            tracing::info!(target: "wimse::audit", trust_domain = %self.domain, sequence = store.sequence, "signing keys rotated");
        }
        Ok(changed)
    }

    fn active_key(&self) -> Result<SigningKey> {
        let now = self.clock.now();
        let store = self.store.read().map_err(Self::store_error)?;
        let active = store
            .keys
            .iter()
            .filter(|k| k.active_from <= now)
            .max_by_key(|k| k.active_from)
            .ok_or_else(|| Self::store_error("no active signing key"))?;
        SigningKey::from_jwk(&active.jwk)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.domain
    }

    fn authenticate(&self, bootstrap: &str) -> Result<&Client> {
        let denied = |d: &'static str| Error::with_detail(ErrorKind::BootstrapTokenInvalid, d);
        if self.config.dev_mode
            && let Some(client) = self
                .clients
                .iter()
                .find(|c| c.config.dev_secret.as_deref().is_some_and(|secret| constant_time_eq(secret, bootstrap)))
        {
            return Ok(client);
        }
        let token = jws::parse(bootstrap, 16 * 1024).map_err(|_| denied("not a JWT"))?;
        let iss = token.claims.get("iss").and_then(Value::as_str).ok_or_else(|| denied("no iss"))?;
        let platform =
            self.platforms.iter().find(|p| p.config.issuer == iss).ok_or_else(|| denied("unknown issuer"))?;
        let claims = validate_external(
            &token,
            &platform.keys,
            &platform.config.audience,
            platform.config.max_token_lifetime,
            self.clock.now(),
        )
        .map_err(denied)?;
        let sub = claims.get("sub").and_then(Value::as_str).ok_or_else(|| denied("no sub"))?;
        self.clients
            .iter()
            .find(|c| {
                c.config.platform.as_deref() == Some(&platform.config.name) && c.config.subject.as_deref() == Some(sub)
            })
            .ok_or_else(|| Error::with_detail(ErrorKind::IssuanceDenied, "no client for this platform subject"))
    }

    /// Takes one request from `key`'s issuance budget.
    fn limit(&self, key: &str) -> Result<()> {
        self.per_client.take(&key.to_owned(), 1, self.clock.now()).map_err(|retry| {
            tracing::warn!(target: "wimse::audit", who = key, "issuance rate limited");
            Error::with_detail(ErrorKind::RateLimited, format!("{key}: too many requests")).with_retry_after(retry)
        })
    }

    /// Admits one request from `source` (the HTTP adapter calls this with the peer address):
    /// refused while the address has spent its failed-authentication budget, or is over its
    /// request budget.
    pub fn admit_source(&self, source: std::net::IpAddr) -> Result<()> {
        let now = self.clock.now();
        let limited = |retry: u64, what: &str| {
            Error::with_detail(ErrorKind::RateLimited, format!("{source}: {what}")).with_retry_after(retry)
        };
        self.failures
            .would_allow(&source, 1, now)
            .map_err(|retry| limited(retry, "too many failed authentications"))?;
        self.per_source.take(&source, 1, now).map_err(|retry| limited(retry, "too many requests"))
    }

    /// Counts a failed authentication from `source`.
    pub fn record_failed_authentication(&self, source: std::net::IpAddr) {
        if self.failures.take(&source, 1, self.clock.now()).is_err() {
            tracing::warn!(target: "wimse::audit", %source, "source refused after repeated failed authentications");
        }
    }

    /// The client `bootstrap` authenticates, if it may obtain `sub`.
    fn authorize(&self, bootstrap: &str, sub: &str) -> Result<(&Client, WorkloadId)> {
        let client = self.authenticate(bootstrap)?;
        self.limit(&format!("client {}", client.config.name))?;
        let id = WorkloadId::parse(sub).map_err(|e| Error::new(ErrorKind::InvalidSubject(e)))?;
        if !crate::policy::Policy::named(&client.config.name).allow(client.rule.clone()).allows_id(&id) {
            tracing::warn!(target: "wimse::audit", client = %client.config.name, sub = %id, "issuance refused");
            return Err(Error::with_detail(
                ErrorKind::IssuanceDenied,
                format!("{} may not obtain {id}", client.config.name),
            ));
        }
        Ok((client, id))
    }

    /// Issues a WIT for `sub` bound to `public_jwk`, for the client `bootstrap` authenticates.
    /// The lifetime is capped at the client's maximum.
    pub fn issue_wit(&self, bootstrap: &str, sub: &str, public_jwk: &Jwk, lifetime: Option<u64>) -> Result<IssuedWit> {
        let (client, id) = self.authorize(bootstrap, sub)?;
        if public_jwk.has_private_members() {
            return Err(Error::with_detail(ErrorKind::InvalidKey, "send the public key only"));
        }
        let lifetime = lifetime.unwrap_or(client.config.max_lifetime).min(client.config.max_lifetime);
        self.rotate_if_due()?;
        let mut issuer = WitIssuer::new(self.active_key()?).with_lifetime(lifetime);
        if let Some(iss) = &self.config.issuer {
            issuer = issuer.with_issuer(iss.clone());
        }
        let now = self.clock.now();
        let wit = issuer.issue(&id, public_jwk, now)?;
        tracing::info!(target: "wimse::audit", client = %client.config.name, sub = %id, lifetime, "WIT issued");
        Ok(IssuedWit { wit, issued_at: now, expires_at: now + lifetime })
    }

    /// Token exchange (RFC 8693): validates `subject_token` (of `subject_token_type`) against the
    /// profile of its issuer, maps its subject onto an identifier of this trust domain, and
    /// issues a WIT for it bound to `public_jwk`.
    pub fn exchange(&self, subject_token: &str, subject_token_type: &str, public_jwk: &Jwk) -> Result<IssuedWit> {
        let refused = |d: String| Error::with_detail(ErrorKind::ExchangeRefused, d);
        let accepted: &[ExchangeKind] = match subject_token_type {
            ACCESS_TOKEN_TYPE => &[ExchangeKind::AccessToken],
            JWT_TOKEN_TYPE => &[ExchangeKind::Jwt, ExchangeKind::JwtSvid],
            _ => return Err(Error::with_detail(ErrorKind::UnsupportedTokenType, "subject_token_type")),
        };
        let token = jws::parse(subject_token, 16 * 1024).map_err(|e| refused(format!("subject_token: {e}")))?;
        let iss = token.claims.get("iss").and_then(Value::as_str).ok_or_else(|| refused("no iss".into()))?;
        let exchange = self
            .exchanges
            .iter()
            .find(|x| x.profile.issuer == iss && accepted.contains(&x.profile.kind))
            .ok_or_else(|| refused("no exchange profile for this issuer and token type".into()))?;
        let typ = token.header_str("typ")?.map(str::to_ascii_lowercase);
        let typ_ok = match exchange.profile.kind {
            ExchangeKind::AccessToken => matches!(typ.as_deref(), Some("at+jwt" | "application/at+jwt")),
            ExchangeKind::JwtSvid => matches!(typ.as_deref(), None | Some("jwt" | "jose")),
            ExchangeKind::Jwt => true,
        };
        if !typ_ok {
            return Err(refused(format!("typ {typ:?} does not fit profile `{}`", exchange.profile.name)));
        }
        self.limit(&format!("exchange {}", exchange.profile.name))?;
        let claims = validate_external(
            &token,
            &exchange.keys,
            &exchange.profile.audience,
            exchange.profile.max_token_lifetime,
            self.clock.now(),
        )
        .map_err(|d| refused(d.to_owned()))?;
        let sub = claims.get("sub").and_then(Value::as_str).ok_or_else(|| refused("no sub".into()))?;
        let safe =
            |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        let mut mapped = exchange.profile.subject_template.clone();
        if exchange.profile.kind == ExchangeKind::JwtSvid {
            let svid = WorkloadId::parse(sub).map_err(|e| refused(format!("JWT-SVID sub: {e}")))?;
            if svid.scheme() != "spiffe" {
                return Err(refused("JWT-SVID sub is not a SPIFFE ID".into()));
            }
            // Checked at start: a jwt-svid profile names its trust domain.
            if exchange.profile.subject_trust_domain.as_deref() != Some(svid.trust_domain().as_str()) {
                return Err(refused(format!(
                    "profile `{}` exchanges SVIDs of {}, not of {}",
                    exchange.profile.name,
                    exchange.profile.subject_trust_domain.as_deref().unwrap_or("no trust domain"),
                    svid.trust_domain()
                )));
            }
            mapped = mapped
                .replace("{trust_domain}", svid.trust_domain_name())
                .replace("{path}", svid.path().trim_start_matches('/'));
        }
        if mapped.contains("{sub}") {
            if !safe(sub) {
                return Err(refused("sub is not a single safe path segment".into()));
            }
            mapped = mapped.replace("{sub}", sub);
        }
        let id = WorkloadId::parse(&mapped).map_err(|e| refused(format!("mapped identifier: {e}")))?;
        if !id.is_in(&self.domain) {
            return Err(refused(format!("{id} is not in {}", self.domain)));
        }
        if public_jwk.has_private_members() {
            return Err(Error::with_detail(ErrorKind::InvalidKey, "send the public key only"));
        }
        self.rotate_if_due()?;
        let lifetime = exchange.profile.max_lifetime;
        let mut issuer = WitIssuer::new(self.active_key()?).with_lifetime(lifetime);
        if let Some(iss) = &self.config.issuer {
            issuer = issuer.with_issuer(iss.clone());
        }
        let now = self.clock.now();
        let wit = issuer.issue(&id, public_jwk, now)?;
        tracing::info!(target: "wimse::audit", profile = %exchange.profile.name, subject = sub, issued = %id, "token exchanged for a WIT");
        Ok(IssuedWit { wit, issued_at: now, expires_at: now + lifetime })
    }

    #[cfg(feature = "mtls")]
    fn ensure_wic_ca(&self) -> Result<()> {
        let mut store = self.store.write().map_err(Self::store_error)?;
        if store.wic_ca.is_none() {
            let ca = crate::wic::WicAuthority::new(self.domain.clone(), self.clock.now(), 10 * 365 * 86_400)?;
            store.wic_ca = Some(ca.to_pem());
            self.save(&store)?;
        }
        Ok(())
    }

    #[cfg(feature = "mtls")]
    fn wic_authority(&self) -> Result<crate::wic::WicAuthority> {
        let store = self.store.read().map_err(Self::store_error)?;
        let (cert, key) = store.wic_ca.as_ref().ok_or_else(|| Self::store_error("no WIC authority"))?;
        crate::wic::WicAuthority::from_pem(self.domain.clone(), cert, key)
    }

    /// The WIC authority's certificate (PEM): the X.509 trust anchor of this trust domain.
    #[cfg(feature = "mtls")]
    pub fn wic_bundle_pem(&self) -> Result<String> {
        let store = self.store.read().map_err(Self::store_error)?;
        store.wic_ca.as_ref().map(|(cert, _)| cert.clone()).ok_or_else(|| Self::store_error("no WIC authority"))
    }

    /// Issues a Workload Identity Certificate for `sub` certifying the workload's public key
    /// (`spki_der`), under the same per-client authority as WITs. Returns the chain (leaf first)
    /// and its expiry.
    #[cfg(feature = "mtls")]
    pub fn issue_wic(
        &self,
        bootstrap: &str,
        sub: &str,
        spki_der: &[u8],
        usage: crate::wic::WicUsage,
        dns_names: &[String],
        ip_addresses: &[std::net::IpAddr],
    ) -> Result<(Vec<rustls::pki_types::CertificateDer<'static>>, u64)> {
        let (client, id) = self.authorize(bootstrap, sub)?;
        // Server names go into certificates that mTLS clients trust for those names: a client
        // may name only what its configuration grants.
        let refuse = |what: String| {
            tracing::warn!(target: "wimse::audit", client = %client.config.name, sub = %id, refused = %what, "WIC refused");
            Error::with_detail(ErrorKind::IssuanceDenied, format!("{what} is not allowed for this client"))
        };
        if let Some(name) = dns_names.iter().find(|n| !dns_name_allowed(&client.config.allowed_dns_names, n)) {
            let shown: String = name.chars().take(64).collect();
            return Err(refuse(format!("DNS name `{shown}`")));
        }
        if let Some(ip) = ip_addresses.iter().find(|ip| !client.config.allowed_ip_addresses.contains(ip)) {
            return Err(refuse(format!("IP address {ip}")));
        }
        let now = self.clock.now();
        let lifetime = client.config.max_wic_lifetime.unwrap_or(client.config.max_lifetime);
        let mut options = crate::wic::WicOptions::new(usage, now, lifetime);
        options.dns_names = dns_names.to_vec();
        options.ip_addresses = ip_addresses.to_vec();
        let chain = self.wic_authority()?.issue_for_key(&id, spki_der, &options)?;
        tracing::info!(target: "wimse::audit", client = %client.config.name, sub = %id, "WIC issued");
        Ok((chain, options.not_after))
    }

    /// The public signing keys as a JWKS.
    pub fn jwks(&self) -> Value {
        json!({ "keys": self.public_keys() })
    }

    /// The public signing keys as a SPIFFE trust bundle, with sequence number and refresh hint.
    pub fn spiffe_bundle(&self) -> Value {
        let sequence = self.store.read().map(|s| s.sequence).unwrap_or(0);
        json!({
            "keys": self.public_keys(),
            "spiffe_sequence": sequence,
            "spiffe_refresh_hint": self.config.refresh_hint,
        })
    }

    fn public_keys(&self) -> Vec<Value> {
        let store = match self.store.read() {
            Ok(store) => store,
            Err(_) => return Vec::new(),
        };
        store
            .keys
            .iter()
            .map(|k| {
                let mut public = serde_json::to_value(k.jwk.to_public()).unwrap_or(Value::Null);
                public["use"] = crate::draft::SPIFFE_BUNDLE_WIT_USE.into();
                public
            })
            .collect()
    }

    /// The current anchors, as a verifier in the same process would configure them.
    pub fn anchors(&self) -> Result<TrustAnchors> {
        TrustAnchors::from_spiffe_bundle_json(&self.spiffe_bundle().to_string())
    }
}

/// Compares two secrets in time that depends only on their lengths, not on where they differ.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks an externally issued JWT (platform token, access token, JWT-SVID) whose issuer was
/// already matched: no `crit`, key from the configured keys by `kid`, signature, `exp` (and at
/// most `max_lifetime` ahead, with 30 s leeway), `nbf`, `aud`.
/// Returns the claims, or the name of the failed check.
fn validate_external(
    token: &jws::UnverifiedJws<'_>,
    keys: &TrustAnchors,
    audience: &str,
    max_lifetime: u64,
    now: u64,
) -> std::result::Result<serde_json::Map<String, Value>, &'static str> {
    // No JWS extension is understood, so none may be critical (RFC 7515 §4.1.11).
    token.reject_crit().map_err(|_| "unsupported crit")?;
    let alg = token.algorithm().map_err(|_| "unsupported alg")?;
    let kid = token.header_str("kid").map_err(|_| "malformed kid")?;
    let key: &PublicKey = keys.select(kid, alg).map_err(|_| "no issuer key matches")?;
    if !key.verify(crate::jose::Backend::default(), alg, token.signing_input.as_bytes(), &token.signature) {
        return Err("bad signature");
    }
    let exp = token.claims.get("exp").and_then(Value::as_u64).ok_or("no exp")?;
    if now >= exp {
        return Err("expired");
    }
    if exp > now.saturating_add(max_lifetime).saturating_add(30) {
        return Err("expires too far ahead");
    }
    if token.claims.get("nbf").and_then(Value::as_u64).is_some_and(|nbf| nbf > now + 30) {
        return Err("not yet valid");
    }
    let audience_ok = match token.claims.get("aud") {
        Some(Value::String(aud)) => aud == audience,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    if !audience_ok {
        return Err("wrong audience");
    }
    Ok(token.claims.clone())
}

/// Reads and checks a configuration file (JSON).
pub fn load_config(path: &std::path::Path) -> Result<IssuerConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| config_error(path.display().to_string(), e))?;
    serde_json::from_str(&text).map_err(|e| config_error(path.display().to_string(), e))
}

#[cfg(test)]
mod san_tests {
    use super::{dns_name_allowed, valid_dns_pattern};

    #[test]
    fn dns_allowlists_match_exact_names_and_suffix_patterns() {
        let list = ["billing.prod.example".to_owned(), "*.svc.prod.example".to_owned()];
        assert!(dns_name_allowed(&list, "billing.prod.example"));
        assert!(dns_name_allowed(&list, "BILLING.prod.example"));
        assert!(dns_name_allowed(&list, "a.svc.prod.example"));
        assert!(dns_name_allowed(&list, "a.b.svc.prod.example"));
        assert!(dns_name_allowed(&list, "*.svc.prod.example"), "the listed pattern itself");
        for refused in [
            "svc.prod.example",
            "evilsvc.prod.example",
            "*.prod.example",
            "prod.example",
            "127.0.0.1",
            "x.*.svc.prod.example",
        ] {
            assert!(!dns_name_allowed(&list, refused), "{refused}");
        }
        assert!(!dns_name_allowed(&[], "billing.prod.example"), "none by default");
        assert!(valid_dns_pattern("*.svc.prod.example") && valid_dns_pattern("a-b.example"));
        for bad in ["", "*", "*.", "a..b", "-a.example", "a*.example", "*.*.example", "a b.example"] {
            assert!(!valid_dns_pattern(bad), "{bad}");
        }
    }
}
