//! The identity server: who may obtain which identifiers, bootstrap credentials, WIT and WIC
//! issuance, token exchange, rotation on a timer, trust bundles.
//!
//! This module holds the server's state and what every endpoint shares (opening it from its
//! configuration, reading the keys, signing a WIT, recording an issuance); one submodule per
//! family of endpoints adds its methods: [`limits`] (bootstrap authentication, rate limits),
//! [`wit`] (`/v1/wit` and RFC 8693 exchange), [`federation`] (RFC 7523 assertions), [`wic`]
//! (certificates), [`txn`] (the Transaction Token Service), [`bundles`] (JWKS and SPIFFE
//! bundles) and [`maintenance`] (rotation, reconciling with the storage).

use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde_json::{Value, json};
use wimse_core::id::{TrustDomain, WorkloadId};
use wimse_core::jose::{Algorithm, Jwk, jws};
use wimse_core::policy::Rule;
use wimse_core::rate::RateLimiter;
use wimse_core::replay::ReplayClaim;
use wimse_core::time::Clock;
use wimse_core::trust::{STORE_EPOCH_MEMBER, TrustAnchors};
use wimse_core::wit::WitIssuer;
use wimse_core::{Error, ErrorKind, Result};

use crate::config::*;
use crate::external::validate_external;
use crate::keys::{Changes, KeyState, Loaded, Reconciled, RotationPolicy, reconcile};
use crate::store::{FileStorage, IssuanceRecord, KeyStorage};
use crate::{ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE};

mod bundles;
mod federation;
mod limits;
mod maintenance;
mod txn;
mod wic;
mod wit;

struct Platform {
    config: PlatformConfig,
    keys: TrustAnchors,
}

struct Client {
    config: ClientConfig,
    rule: Rule,
}

impl Client {
    /// The longest WIC the client may obtain: `max_wic_lifetime`, by default the client's WIT
    /// lifetime (workload-creds, next revision: WIC lifetimes on a similar scale to WITs).
    fn wic_lifetime(&self) -> u64 {
        self.config.max_wic_lifetime.unwrap_or(self.config.max_lifetime)
    }
}

struct Exchange {
    profile: ExchangeProfile,
    keys: TrustAnchors,
}

/// What a validated platform token contributes beyond its client.
struct PlatformToken {
    issuer: String,
    jti: Option<String>,
    expires_at: u64,
    /// The earliest moment it could have been accepted (for its replay claim).
    earliest_claim: u64,
    single_use: bool,
}

/// What a client asks for in a Workload Identity Certificate ([`IdentityServer::issue_wic`]).
#[derive(Debug, Clone)]
pub struct WicRequest<'a> {
    /// The workload identifier.
    pub sub: &'a str,
    /// The workload's public key: an X.509 SubjectPublicKeyInfo, DER.
    pub spki_der: &'a [u8],
    /// What the certificate is for (its extended key usage).
    pub usage: wimse_core::wic::WicUsage,
    /// DNS names for its subject alternative names (a server certificate).
    pub dns_names: &'a [String],
    /// IP addresses for its subject alternative names.
    pub ip_addresses: &'a [std::net::IpAddr],
    /// Its lifetime in seconds, at most the client's maximum (the maximum when `None`).
    pub lifetime: Option<u64>,
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
    pub(crate) domain: TrustDomain,
    pub(crate) config: IssuerConfig,
    alg: Algorithm,
    platforms: Vec<Platform>,
    clients: Vec<Client>,
    exchanges: Vec<Exchange>,
    pub(crate) storage: Arc<dyn KeyStorage>,
    keys: RwLock<Loaded>,
    replica: String,
    maintenance_started: std::sync::atomic::AtomicBool,
    /// Serialises [`maintain`](Self::maintain).
    maintenance: tokio::sync::Mutex<()>,
    pub(crate) clock: Arc<dyn Clock>,
    per_client: RateLimiter<String>,
    per_source: RateLimiter<std::net::IpAddr>,
    failures: RateLimiter<std::net::IpAddr>,
    pub(crate) tts: Option<crate::tts::Tts>,
}

impl std::fmt::Debug for IdentityServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityServer").field("trust_domain", &self.domain).finish_non_exhaustive()
    }
}

impl IdentityServer {
    /// Checks `config` (errors name the field), opens its storage (`key_store` or `postgres`),
    /// loads the keys or creates them.
    pub async fn open(config: IssuerConfig, clock: impl Clock + 'static) -> Result<Self> {
        let storage: Arc<dyn KeyStorage> = match (&config.key_store, &config.postgres) {
            (Some(path), None) => Arc::new(FileStorage::new(path)),
            #[cfg(feature = "postgres")]
            (None, Some(postgres)) => {
                Arc::new(crate::postgres::PostgresStorage::connect(postgres, &config.trust_domain).await?)
            }
            #[cfg(not(feature = "postgres"))]
            (None, Some(_)) => {
                return Err(config_error("postgres", "this build has no PostgreSQL support (feature `postgres`)"));
            }
            _ => return Err(config_error("key_store", "set either key_store (a file) or postgres")),
        };
        Self::with_storage(config, storage, clock).await
    }

    /// Like [`open`](Self::open), with the given storage (the configuration's `key_store` and
    /// `postgres` are ignored).
    pub async fn with_storage(
        config: IssuerConfig,
        storage: Arc<dyn KeyStorage>,
        clock: impl Clock + 'static,
    ) -> Result<Self> {
        let domain = TrustDomain::parse(&config.trust_domain).map_err(|e| config_error("trust_domain", e))?;
        let alg: Algorithm = config.algorithm.parse().map_err(|e: Error| config_error("algorithm", e))?;
        if config.refresh_hint == 0 || config.refresh_hint > 86_400 {
            return Err(config_error("refresh_hint", "must be between 1 and 86400 seconds"));
        }
        // A key is published two refresh hints before it signs: the period must be longer.
        if config.rotation_period <= config.refresh_hint.saturating_mul(2) {
            return Err(config_error("rotation_period", "must be longer than two refresh hints"));
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
            if p.token_types.is_empty() {
                return Err(config_error(format!("platforms[{i}].token_types"), "accept at least one typ"));
            }
            platforms.push(Platform { config: p.clone(), keys });
        }
        let mut clients = Vec::new();
        for (i, c) in config.clients.iter().enumerate() {
            let field = |name: &str| format!("clients[{i}].{name}");
            for (pointer, condition) in &c.claims {
                let strings = |v: &Value| v.as_array().is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string));
                if !pointer.starts_with('/') || !(condition.is_string() || strings(condition)) {
                    return Err(config_error(
                        field(&format!("claims[{pointer:?}]")),
                        "a JSON pointer (/claim/member) to a string, or a non-empty list of strings",
                    ));
                }
            }
            match (&c.platform, &c.subject, &c.dev_secret) {
                (Some(platform), subject, None) => {
                    if !platforms.iter().any(|p| &p.config.name == platform) {
                        return Err(config_error(field("platform"), format!("no platform named `{platform}`")));
                    }
                    if subject.is_none() && c.claims.is_empty() {
                        return Err(config_error(field("subject"), "name the platform subject, or claims to match"));
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
                        "set either platform (with subject or claims), or dev_secret",
                    ));
                }
            }
            let mut rules = Vec::new();
            for (j, id) in c.allowed.iter().enumerate() {
                let id = WorkloadId::parse(id).map_err(|e| config_error(field(&format!("allowed[{j}]")), e))?;
                if !id.is_in(&domain) {
                    return Err(config_error(field(&format!("allowed[{j}]")), format!("not in {domain}")));
                }
                rules.push(Rule::workload(id));
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
            for (j, ip) in c.allowed_ip_addresses.iter().enumerate() {
                if let Err(e) = wimse_core::wic::check_ip_address(*ip) {
                    return Err(config_error(field(&format!("allowed_ip_addresses[{j}]")), e));
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
        if let Some(endpoint) = &config.token_endpoint {
            let uri: axum::http::Uri = endpoint.parse().map_err(|e| config_error("token_endpoint", e))?;
            let loopback = uri.host().is_some_and(wimse_core::http::is_loopback_host);
            let scheme_ok = uri.scheme_str() == Some("https") || (uri.scheme_str() == Some("http") && loopback);
            if !scheme_ok || uri.authority().is_none() || uri.query().is_some() {
                return Err(config_error(
                    "token_endpoint",
                    "an absolute https URI without query (http only on loopback)",
                ));
            }
            // The grant's audience must be its own: a token for the bearer bootstrap or an
            // exchange profile must not double as an RFC 7523 assertion, nor the reverse.
            let mut shared =
                config.platforms.iter().map(|p| &p.audience).chain(config.exchange.iter().map(|x| &x.audience));
            if shared.any(|audience| audience == endpoint) {
                return Err(config_error("token_endpoint", "also a platform's or exchange profile's audience"));
            }
        }
        for (i, p) in config.platforms.iter().enumerate() {
            if config.platforms[..i].iter().any(|q| q.issuer == p.issuer || q.name == p.name) {
                return Err(config_error(format!("platforms[{i}]"), "another platform has the same name or issuer"));
            }
        }
        if let Some(iss) = &config.issuer
            && domain.scheme() == "spiffe"
            && wimse_core::draft::oidc_discovery_compatible(iss)
        {
            // Allowed (creds §5.1.3 even suggests an https iss), but its WITs are WIT-SVIDs.
            tracing::warn!(trust_domain = %domain, issuer = %iss, "wimse issuer: `issuer` is an https URL without query or fragment, a value compatible with OpenID Connect Discovery, which the SPIFFE WIT-SVID profile (section 3.7) says a WIT-SVID's iss SHOULD NOT be (a relying party could take the WIT for an OIDC ID token without proof of possession); leave `issuer` unset or use another form, such as the trust domain's spiffe:// ID");
        }
        let clock: Arc<dyn Clock> = Arc::new(clock);
        let tts = match &config.txn_tokens {
            Some(tts) => Some(crate::tts::Tts::new(tts, &domain, &config, storage.clone(), clock.clone())?),
            None => None,
        };
        let server = Self {
            tts,
            domain,
            alg,
            platforms,
            clients,
            exchanges,
            storage,
            keys: RwLock::new(Loaded::default()),
            replica: crate::keys::random_id()[..12].to_owned(),
            maintenance_started: std::sync::atomic::AtomicBool::new(false),
            maintenance: tokio::sync::Mutex::new(()),
            clock,
            per_client: RateLimiter::new(config.rate_limits.per_client),
            per_source: RateLimiter::new(config.rate_limits.per_source),
            failures: RateLimiter::new(config.rate_limits.failed_authentications),
            config,
        };
        let state = server.storage.load().await?;
        match &state {
            Some(state) => {
                tracing::info!(trust_domain = %server.domain, storage = %server.storage.describe(), epoch = %state.epoch(), sequence = state.sequence(), "wimse issuer: key store loaded")
            }
            None => {
                tracing::warn!(trust_domain = %server.domain, storage = %server.storage.describe(), "wimse issuer: no key store found; creating a new one (a new epoch: verifiers will follow its keys)")
            }
        }
        server.maintain().await?;
        Ok(server)
    }

    pub(crate) fn read_keys<T>(&self, f: impl FnOnce(&Loaded) -> T) -> T {
        f(&self.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Signs a WIT for `id` with the active key. Returns it and the key id.
    fn sign_wit(&self, id: &WorkloadId, public_jwk: &Jwk, lifetime: u64, now: u64) -> Result<(String, String)> {
        let key = self.read_keys(|loaded| loaded.active_key(now).cloned())?;
        let kid = key.kid().unwrap_or_default().to_owned();
        let mut issuer = WitIssuer::new(key).with_lifetime(lifetime);
        if let Some(iss) = &self.config.issuer {
            issuer = issuer.with_issuer(iss.clone());
        }
        Ok((issuer.issue(id, public_jwk, now)?, kid))
    }

    /// Records an issuance in the storage (an audit row with PostgreSQL) before it is handed out.
    pub(crate) async fn record(
        &self,
        kind: &'static str,
        client: &str,
        id: &WorkloadId,
        lifetime: u64,
        key_id: String,
        at: u64,
    ) -> Result<()> {
        let record = IssuanceRecord {
            at,
            kind,
            client: client.to_owned(),
            identifier: id.to_string(),
            lifetime,
            key_id,
            replica: self.replica.clone(),
        };
        self.storage.record(&record).await
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.domain
    }
}
