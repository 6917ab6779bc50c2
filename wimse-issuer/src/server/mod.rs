//! The identity server: who may obtain which identifiers, bootstrap credentials, WIT and WIC
//! issuance, token exchange, rotation on a timer, trust bundles.

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

mod txn;

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

    /// Keys are published before they sign: the next key appears in the bundle two refresh
    /// hints before it becomes active, so verifiers that refresh on the hint never see a WIT
    /// signed by a key they do not have.
    fn rotation_policy(&self) -> RotationPolicy {
        RotationPolicy {
            algorithm: self.alg,
            rotation_period: self.config.rotation_period,
            prepublish: self.config.refresh_hint.saturating_mul(2),
            longest_lifetime: self.longest_lifetime(),
        }
    }

    /// The longest lifetime of anything a signing key signs: WITs issued to clients (and their
    /// WICs, which the authority signs, are bounded the same way) and exchanged WITs.
    fn longest_lifetime(&self) -> u64 {
        let clients = self.clients.iter().map(|c| c.config.max_lifetime);
        let exchanges = self.exchanges.iter().map(|x| x.profile.max_lifetime);
        clients.chain(exchanges).max().unwrap_or(0)
    }

    /// How often [`start_maintenance`](Self::start_maintenance) runs: half a refresh hint, at
    /// most a minute. Other replicas' new keys are published within it; a due rotation happens
    /// within it (keys are pre-published two hints ahead, so that is early enough).
    pub fn maintenance_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs((self.config.refresh_hint / 2).clamp(1, 60))
    }

    /// Reads the stored keys (another replica may have rotated), rotates and retires keys
    /// when due, all under the storage's lock. Returns whether the published keys changed.
    /// When the storage lost its state, this replica's keys are written back; when another
    /// store replaced it (a new epoch), this replica follows.
    pub async fn maintain(&self) -> Result<bool> {
        // One at a time: a slow run must not install an older state after a faster one.
        let _running = self.maintenance.lock().await;
        let now = self.clock.now();
        let policy = self.rotation_policy();
        let ours = self.read_keys(|loaded| loaded.state.clone());
        let mut changes = Changes::default();
        let mut how = Reconciled::Stored;
        let state = self
            .storage
            .update(&mut |stored: Option<KeyState>| {
                let (mut state, reconciled) = reconcile(stored.clone(), &ours, now, &policy)?;
                how = reconciled;
                changes = state.maintain(now, &policy, &self.domain)?;
                // Written whenever it differs from what is stored (an epoch given to an old
                // file, a merge, a rotation).
                Ok((stored.as_ref() != Some(&state)).then_some(state))
            })
            .await?;
        self.log_reconciled(&how, &state);
        for (kid, active_from) in &changes.created {
            tracing::info!(target: "wimse::audit", trust_domain = %self.domain, kid = %kid, active_from, sequence = state.sequence(), "wimse issuer: signing key created");
        }
        for kid in &changes.retired {
            tracing::info!(target: "wimse::audit", trust_domain = %self.domain, kid = %kid, sequence = state.sequence(), "wimse issuer: signing key retired");
        }
        if changes.wic_authority_created {
            tracing::info!(target: "wimse::audit", trust_domain = %self.domain, "wimse issuer: WIC certificate authority created");
        }
        let changed = state != ours;
        if changed {
            let loaded = Loaded::new(state, &self.domain)?;
            *self.keys.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = loaded;
        }
        Ok(changed)
    }

    fn log_reconciled(&self, how: &Reconciled, state: &KeyState) {
        let (domain, storage, epoch, sequence) =
            (&self.domain, self.storage.describe(), state.epoch(), state.sequence());
        match how {
            Reconciled::Stored => {}
            Reconciled::Created => {
                tracing::info!(trust_domain = %domain, %storage, %epoch, "wimse issuer: key store created")
            }
            Reconciled::Restored => {
                tracing::error!(trust_domain = %domain, %storage, %epoch, sequence, "wimse issuer: the key store was lost; wrote this replica's keys back")
            }
            Reconciled::Replaced { old_epoch } => {
                tracing::warn!(trust_domain = %domain, %old_epoch, %epoch, "wimse issuer: the key store was replaced; following its keys")
            }
            Reconciled::Merged { stored_sequence } => {
                tracing::error!(trust_domain = %domain, %storage, stored_sequence, sequence, "wimse issuer: the stored keys were older than or diverged from this replica's; wrote back the union")
            }
            Reconciled::RollbackRefused { stale_epoch } => {
                tracing::error!(trust_domain = %domain, %storage, %stale_epoch, %epoch, "wimse issuer: a replaced key store came back (a restored backup?); kept the current one")
            }
        }
    }

    /// Replaces the key store on purpose (after a compromise, or to drop every key at once): a
    /// new epoch, new signing keys, a new WIC authority; the old epoch is remembered so that it
    /// cannot come back. Other replicas follow at their next maintenance; verifiers accept the
    /// new epoch at their next refresh (or at once, on the first unknown `kid`). Every WIT and
    /// WIC issued before is invalid from then on.
    pub async fn replace_key_store(&self) -> Result<(String, String)> {
        let old = {
            let _running = self.maintenance.lock().await;
            let mut old_epoch = String::new();
            self.storage
                .update(&mut |stored: Option<KeyState>| {
                    old_epoch = stored.as_ref().map(|s| s.epoch().to_owned()).unwrap_or_default();
                    Ok(Some(KeyState::replacing(stored.as_ref())))
                })
                .await?;
            old_epoch
        };
        tracing::warn!(target: "wimse::audit", trust_domain = %self.domain, old_epoch = %old, "wimse issuer: key store replaced on request");
        self.maintain().await?;
        Ok((old, self.key_state().0))
    }

    /// Starts the task that runs [`maintain`](Self::maintain) every
    /// [`maintenance_interval`](Self::maintenance_interval), once: later calls do nothing and
    /// return false. [`router`](crate::router) calls it, so serving the API is enough; rotation
    /// then happens on time whether requests arrive or not. The task ends when the last `Arc`
    /// of the server is dropped. Needs a tokio runtime (without one it logs and returns false).
    ///
    /// Storage failures are logged (a warning when they start, one a minute while they last,
    /// one event when it works again); issuance meanwhile goes on with the keys in memory.
    pub fn start_maintenance(self: &Arc<Self>) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(trust_domain = %self.domain, "wimse issuer: no tokio runtime; keys do not rotate until maintenance is started in one");
            return false;
        };
        if self.maintenance_started.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return false;
        }
        let weak = Arc::downgrade(self);
        let interval = self.maintenance_interval();
        runtime.spawn(async move {
            let health = wimse_core::health::Health::new(60);
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(server) = weak.upgrade() else { return };
                // Run apart so that a panic (a bug, a malformed row) is logged and the timer
                // goes on, instead of ending rotation silently.
                let run = tokio::spawn({
                    let server = server.clone();
                    async move { server.maintain().await }
                });
                let outcome = run.await.unwrap_or_else(|panic| {
                    tracing::error!(trust_domain = %server.domain, %panic, "wimse issuer: key maintenance panicked");
                    Err(Error::with_detail(ErrorKind::KeyStoreUnavailable, "key maintenance panicked"))
                });
                match outcome {
                    Ok(_) => {
                        if health.succeeded() {
                            tracing::info!(trust_domain = %server.domain, "wimse issuer: key store reachable again");
                        }
                    }
                    Err(error) => {
                        if health.failed(server.clock.now()) != wimse_core::health::Report::Quiet {
                            tracing::warn!(trust_domain = %server.domain, reason = error.reason(), detail = error.detail(), "wimse issuer: key maintenance failed; issuing with the keys in memory");
                        }
                    }
                }
            }
        });
        true
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

    fn authenticate(&self, bootstrap: &str) -> Result<&Client> {
        if self.config.dev_mode
            && let Some(client) = self
                .clients
                .iter()
                .find(|c| c.config.dev_secret.as_deref().is_some_and(|secret| constant_time_eq(secret, bootstrap)))
        {
            return Ok(client);
        }
        let denied = |e: Error| match e.kind() {
            ErrorKind::ExchangeRefused => {
                Error::with_detail(ErrorKind::BootstrapTokenInvalid, e.detail().unwrap_or("").to_owned())
            }
            _ => e,
        };
        let (client, _) = self.platform_token(bootstrap, None, self.clock.now()).map_err(denied)?;
        Ok(client)
    }

    /// Validates a platform token and finds the client it authenticates, the same way for the
    /// bearer bootstrap (`audience` None: the platform's configured audience) and for RFC 7523
    /// assertions (`audience` the token endpoint): a configured issuer (no discovery), its
    /// `typ` policy, its keys, one audience, bounded lifetime, then the client whose platform,
    /// subject and claim conditions all match. Errors are `ExchangeRefused` naming the check.
    fn platform_token(&self, token: &str, audience: Option<&str>, now: u64) -> Result<(&Client, PlatformToken)> {
        let refused = |d: String| Error::with_detail(ErrorKind::ExchangeRefused, d);
        let parsed = jws::parse(token, 16 * 1024).map_err(|_| refused("not a JWT".into()))?;
        let iss = parsed.claims.get("iss").and_then(Value::as_str).ok_or_else(|| refused("no iss".into()))?;
        let platform = self
            .platforms
            .iter()
            .find(|p| p.config.issuer == iss)
            .ok_or_else(|| refused("issuer not on the allowlist".into()))?;
        let typ = parsed.header_str("typ").map_err(|_| refused("typ".into()))?.unwrap_or("none");
        if !platform.config.token_types.iter().any(|t| t.eq_ignore_ascii_case(typ)) {
            return Err(refused(format!("typ {typ:?} not accepted for platform `{}`", platform.config.name)));
        }
        let audience = audience.unwrap_or(&platform.config.audience);
        let claims = validate_external(&parsed, &platform.keys, audience, platform.config.max_token_lifetime, now)
            .map_err(|d| refused(d.to_owned()))?;
        let sub = claims.get("sub").and_then(Value::as_str).ok_or_else(|| refused("no sub".into()))?;
        let claims_value = Value::Object(claims.clone());
        let conditions_hold = |c: &Client| {
            c.config.claims.iter().all(|(pointer, condition)| {
                let Some(actual) = claims_value.pointer(pointer).and_then(Value::as_str) else { return false };
                match condition {
                    Value::String(expected) => expected == actual,
                    Value::Array(allowed) => allowed.iter().any(|a| a.as_str() == Some(actual)),
                    _ => false,
                }
            })
        };
        let client = self
            .clients
            .iter()
            .find(|c| {
                c.config.platform.as_deref() == Some(&platform.config.name)
                    && c.config.subject.as_deref().is_none_or(|s| s == sub)
                    && conditions_hold(c)
            })
            .ok_or_else(|| {
                tracing::warn!(target: "wimse::audit", platform = %platform.config.name, sub, "platform token matches no client (subject or claim conditions)");
                Error::with_detail(ErrorKind::IssuanceDenied, "no client for this platform token (subject or claim conditions)")
            })?;
        let expires_at = claims.get("exp").and_then(Value::as_u64).unwrap_or(now);
        let token = PlatformToken {
            issuer: iss.to_owned(),
            jti: claims.get("jti").and_then(Value::as_str).map(str::to_owned),
            expires_at,
            // Accepted only while `exp <= now + max_token_lifetime + 30` (validate_external).
            earliest_claim: expires_at.saturating_sub(platform.config.max_token_lifetime.saturating_add(30)),
            single_use: platform.config.single_use,
        };
        Ok((client, token))
    }

    /// RFC 7523 §2.1 (and §2.2 through `client_assertion`): a platform token as the grant, the
    /// WIT bound to the key of the request's DPoP proof (RFC 9449). `scope`, if given, names
    /// the identifier; else the client's one exact identifier. Each assertion `jti` and each
    /// proof `jti` is accepted once.
    pub async fn jwt_bearer_grant(
        &self,
        assertion: &str,
        dpop: Option<&str>,
        scope: Option<&str>,
    ) -> Result<IssuedWit> {
        let endpoint = self.config.token_endpoint.as_deref().ok_or_else(|| {
            Error::with_detail(ErrorKind::UnsupportedGrantType, "the jwt-bearer grant needs token_endpoint configured")
        })?;
        let now = self.clock.now();
        let dpop = dpop.ok_or_else(|| Error::with_detail(ErrorKind::InvalidDpopProof, "no DPoP proof"))?;
        let validation = wimse_core::dpop::DpopValidation::default();
        let proof = wimse_core::dpop::verify(dpop, "POST", endpoint, &validation, now)?;
        let (client, token) = self.platform_token(assertion, Some(endpoint), now)?;
        let refused = |d: &'static str| Error::with_detail(ErrorKind::ExchangeRefused, d);
        // Authorize and rate-limit first: a refusal must not spend a single-use assertion, and
        // the budget protects the replay store.
        self.limit(&format!("client {}", client.config.name))?;
        let sub = match scope {
            Some(scope) => scope.to_owned(),
            None => match client.config.allowed.as_slice() {
                [only] if client.config.allowed_prefixes.is_empty() => only.clone(),
                _ => return Err(Error::with_detail(ErrorKind::InvalidScope, "name the identifier in scope")),
            },
        };
        let id =
            WorkloadId::parse(&sub).map_err(|_| Error::with_detail(ErrorKind::InvalidScope, "not an identifier"))?;
        if !wimse_core::policy::Policy::named(&client.config.name).allow(client.rule.clone()).allows_id(&id) {
            tracing::warn!(target: "wimse::audit", client = %client.config.name, sub = %id, "issuance refused");
            return Err(Error::with_detail(
                ErrorKind::InvalidScope,
                format!("{} may not obtain {id}", client.config.name),
            ));
        }
        let single_use_jti = match (token.single_use, token.jti.as_deref()) {
            (true, None) => return Err(refused("the assertion has no jti")),
            (true, Some(jti)) => Some(jti),
            (false, _) => None,
        };
        // Signed before anything is spent, so that a signing failure (no active key) spends
        // nothing; discarded if a claim below fails.
        let lifetime = client.config.max_lifetime;
        let (wit, kid) = self.sign_wit(&id, &proof.jwk, lifetime, now)?;
        // The proof is claimed before the assertion: a replayed proof (or a replay store that
        // cannot answer) must not spend the single-use assertion, which the client keeps and
        // may present again with a fresh proof. A replayed assertion spends only its proof.
        let proof_expiry = proof.iat.saturating_add(validation.max_age + validation.leeway);
        // Times from the tokens themselves, never from now (see ReplayClaim::token).
        let claim = ReplayClaim::token("dpop", &proof.jti, proof_expiry, proof.iat.saturating_sub(validation.leeway));
        self.storage.claim_once(&claim, now).await.map_err(|e| match e.kind() {
            ErrorKind::ReplayedProof => Error::with_detail(ErrorKind::InvalidDpopProof, "DPoP proof jti already used"),
            _ => e,
        })?;
        if let Some(jti) = single_use_jti {
            let claim =
                ReplayClaim::token(&token.issuer, jti, token.expires_at.saturating_add(30), token.earliest_claim);
            self.storage.claim_once(&claim, now).await.map_err(|e| match e.kind() {
                ErrorKind::ReplayedProof => refused("assertion jti already used"),
                _ => e,
            })?;
        }
        self.record("jwt-bearer", &client.config.name, &id, lifetime, kid, now).await?;
        tracing::info!(target: "wimse::audit", client = %client.config.name, sub = %id, lifetime, "WIT issued for an RFC 7523 assertion");
        Ok(IssuedWit { wit, issued_at: now, expires_at: now + lifetime })
    }

    /// Takes one request from `key`'s issuance budget.
    pub(crate) fn limit(&self, key: &str) -> Result<()> {
        self.per_client.take(&key.to_owned(), 1, self.clock.now()).map_err(|retry| {
            tracing::warn!(target: "wimse::audit", who = key, "issuance rate limited");
            Error::with_detail(ErrorKind::RateLimited, format!("{key}: too many requests")).with_retry_after(retry)
        })
    }

    /// Admits one request from `source` (the HTTP adapter calls this with the peer address):
    /// refused while the address has spent its failed-authentication budget, or is over its
    /// request budget.
    pub fn admit_source(&self, source: std::net::IpAddr) -> Result<()> {
        let source = source_key(source);
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
        let source = source_key(source);
        if self.failures.take(&source, 1, self.clock.now()).is_err() {
            tracing::warn!(target: "wimse::audit", %source, "source refused after repeated failed authentications");
        }
    }

    /// The client `bootstrap` authenticates, if it may obtain `sub`.
    fn authorize(&self, bootstrap: &str, sub: &str) -> Result<(&Client, WorkloadId)> {
        let client = self.authenticate(bootstrap)?;
        self.limit(&format!("client {}", client.config.name))?;
        let id = WorkloadId::parse(sub).map_err(|e| Error::new(ErrorKind::InvalidSubject(e)))?;
        if !wimse_core::policy::Policy::named(&client.config.name).allow(client.rule.clone()).allows_id(&id) {
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
    pub async fn issue_wit(
        &self,
        bootstrap: &str,
        sub: &str,
        public_jwk: &Jwk,
        lifetime: Option<u64>,
    ) -> Result<IssuedWit> {
        let (client, id) = self.authorize(bootstrap, sub)?;
        if public_jwk.has_private_members() {
            return Err(Error::with_detail(ErrorKind::InvalidKey, "send the public key only"));
        }
        let lifetime = lifetime.unwrap_or(client.config.max_lifetime).min(client.config.max_lifetime);
        let now = self.clock.now();
        let (wit, kid) = self.sign_wit(&id, public_jwk, lifetime, now)?;
        self.record("wit", &client.config.name, &id, lifetime, kid, now).await?;
        tracing::info!(target: "wimse::audit", client = %client.config.name, sub = %id, lifetime, "WIT issued");
        Ok(IssuedWit { wit, issued_at: now, expires_at: now + lifetime })
    }

    /// Token exchange (RFC 8693): validates `subject_token` (of `subject_token_type`) against the
    /// profile of its issuer, maps its subject onto an identifier of this trust domain, and
    /// issues a WIT for it bound to `public_jwk`.
    pub async fn exchange(&self, subject_token: &str, subject_token_type: &str, public_jwk: &Jwk) -> Result<IssuedWit> {
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
        let claims = validate_external(
            &token,
            &exchange.keys,
            &exchange.profile.audience,
            exchange.profile.max_token_lifetime,
            self.clock.now(),
        )
        .map_err(|d| refused(d.to_owned()))?;
        // Counted only once the token verified: a caller who merely knows the issuer's name
        // cannot spend the profile's budget (failed attempts count against its address).
        self.limit(&format!("exchange {}", exchange.profile.name))?;
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
        let lifetime = exchange.profile.max_lifetime;
        let now = self.clock.now();
        let (wit, kid) = self.sign_wit(&id, public_jwk, lifetime, now)?;
        self.record("exchange", &exchange.profile.name, &id, lifetime, kid, now).await?;
        tracing::info!(target: "wimse::audit", profile = %exchange.profile.name, subject = sub, issued = %id, "token exchanged for a WIT");
        Ok(IssuedWit { wit, issued_at: now, expires_at: now + lifetime })
    }

    /// The WIC authority's certificate (PEM): the X.509 trust anchor of this trust domain.
    pub fn wic_bundle_pem(&self) -> Result<String> {
        self.read_keys(|loaded| loaded.state.wic_ca.as_ref().map(|(cert, _)| cert.clone()))
            .ok_or_else(|| crate::store::unavailable("no WIC authority"))
    }

    /// Issues a Workload Identity Certificate for the request's `sub` certifying the workload's
    /// public key, under the same per-client authority as WITs. The key must satisfy the policy
    /// of WIT confirmation keys (`invalid_key`); DNS names and IP addresses must be valid server
    /// names (`invalid_subject_alt_name`, 400) and granted by the client's `allowed_dns_names`
    /// and `allowed_ip_addresses` (`issuance_denied`, 403). The lifetime is the one asked for,
    /// capped at the client's maximum. Returns the chain (leaf first) and its expiry.
    pub async fn issue_wic(
        &self,
        bootstrap: &str,
        request: &WicRequest<'_>,
    ) -> Result<(Vec<rustls::pki_types::CertificateDer<'static>>, u64)> {
        let (client, id) = self.authorize(bootstrap, request.sub)?;
        let refuse = |error: Error| {
            tracing::warn!(target: "wimse::audit", client = %client.config.name, sub = %id, reason = error.reason(), detail = error.detail(), "WIC refused");
            error
        };
        // Only names a TLS client can match: whatever the allowlist says.
        for name in request.dns_names {
            wimse_core::wic::check_dns_name(name).map_err(refuse)?;
        }
        for ip in request.ip_addresses {
            wimse_core::wic::check_ip_address(*ip).map_err(refuse)?;
        }
        // Server names go into certificates that mTLS clients trust for those names: a client
        // may name only what its configuration grants.
        let denied = |what: String| {
            refuse(Error::with_detail(ErrorKind::IssuanceDenied, format!("{what} is not allowed for this client")))
        };
        if let Some(name) = request.dns_names.iter().find(|n| !dns_name_allowed(&client.config.allowed_dns_names, n)) {
            return Err(denied(format!("DNS name `{name}`")));
        }
        if let Some(ip) = request.ip_addresses.iter().find(|ip| !client.config.allowed_ip_addresses.contains(ip)) {
            return Err(denied(format!("IP address {ip}")));
        }
        let now = self.clock.now();
        let max = client.wic_lifetime();
        let lifetime = request.lifetime.unwrap_or(max).clamp(1, max);
        let mut options = wimse_core::wic::WicOptions::new(request.usage, now, lifetime);
        options.dns_names = request.dns_names.to_vec();
        options.ip_addresses = request.ip_addresses.to_vec();
        let chain = self
            .read_keys(|loaded| loaded.wic_authority()?.issue_for_key(&id, request.spki_der, &options))
            .map_err(|error| match error.kind() {
                ErrorKind::InvalidKey | ErrorKind::InvalidSubjectAltName => refuse(error),
                _ => error,
            })?;
        self.record("wic", &client.config.name, &id, lifetime, "wic-authority".to_owned(), now).await?;
        tracing::info!(target: "wimse::audit", client = %client.config.name, sub = %id, lifetime, "WIC issued");
        Ok((chain, options.not_after))
    }

    /// The public signing keys as a JWKS.
    pub fn jwks(&self) -> Value {
        json!({ "keys": self.read_keys(|loaded| loaded.state.public_keys()) })
    }

    /// The public signing keys as a SPIFFE trust bundle, with sequence number, refresh hint,
    /// and the key store's epoch ([`STORE_EPOCH_MEMBER`]).
    pub fn spiffe_bundle(&self) -> Value {
        self.read_keys(|loaded| self.spiffe_bundle_of(loaded))
    }

    pub(crate) fn spiffe_bundle_of(&self, loaded: &Loaded) -> Value {
        json!({
            "keys": loaded.state.public_keys(),
            "spiffe_sequence": loaded.state.sequence(),
            "spiffe_refresh_hint": self.config.refresh_hint,
            STORE_EPOCH_MEMBER: loaded.state.epoch(),
        })
    }

    /// The stored state's epoch and sequence, as this replica last read them.
    pub fn key_state(&self) -> (String, u64) {
        self.read_keys(|loaded| (loaded.state.epoch().to_owned(), loaded.state.sequence()))
    }

    /// The current anchors, as a verifier in the same process would configure them.
    pub fn anchors(&self) -> Result<TrustAnchors> {
        TrustAnchors::from_spiffe_bundle_json(&self.spiffe_bundle().to_string())
    }
}

/// The key a source address is limited under: IPv4 addresses as they are (IPv4-mapped IPv6
/// ones too), IPv6 addresses by their /64, which one host can rotate through at will.
fn source_key(source: std::net::IpAddr) -> std::net::IpAddr {
    match source {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

/// Compares two secrets in time that depends only on their lengths, not on where they differ.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn ipv6_sources_are_limited_by_their_64() {
        let key = |s: &str| super::source_key(s.parse().unwrap()).to_string();
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff::9"));
        assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::");
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
    }
}
