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
use crate::time::Clock;
use crate::trust::TrustAnchors;
use crate::wit::WitIssuer;

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
}

/// The result of an issuance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuedWit {
    /// The WIT.
    pub wit: String,
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
    store: RwLock<KeyStore>,
    clock: Arc<dyn Clock>,
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
        let mut platforms = Vec::new();
        for (i, p) in config.platforms.iter().enumerate() {
            let keys = TrustAnchors::from_jwks_json(&p.jwks.to_string())
                .map_err(|e| config_error(format!("platforms[{i}].jwks"), e))?;
            if p.issuer.is_empty() || p.audience.is_empty() {
                return Err(config_error(format!("platforms[{i}]"), "issuer and audience must be set"));
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
            clients.push(Client { config: c.clone(), rule: Rule::any_of(rules) });
        }
        let server = Self {
            domain,
            alg,
            platforms,
            clients,
            store: RwLock::new(KeyStore::default()),
            clock: Arc::new(clock),
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
            Ok(text) => serde_json::from_str::<KeyStore>(&text).map_err(Self::store_error)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeyStore::default(),
            Err(e) => return Err(Self::store_error(e)),
        };
        for key in &store.keys {
            SigningKey::from_jwk(&key.jwk).map_err(Self::store_error)?;
        }
        *self.store.write().map_err(Self::store_error)? = store;
        self.rotate_if_due()?;
        Ok(())
    }

    fn save(&self, store: &KeyStore) -> Result<()> {
        let path = &self.config.key_store;
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_string_pretty(store).map_err(Self::store_error)?;
        std::fs::write(&tmp, text).map_err(Self::store_error)?;
        std::fs::rename(&tmp, path).map_err(Self::store_error)
    }

    /// Keys are published before they sign: the next key appears in the bundle two refresh
    /// hints before it becomes active, so verifiers that refresh on the hint never see a WIT
    /// signed by a key they do not have.
    fn prepublish(&self) -> u64 {
        self.config.refresh_hint.saturating_mul(2)
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
        // A key is retired once a later key has been active for longer than any WIT lives.
        let max_wit = self.clients.iter().map(|c| c.config.max_lifetime).max().unwrap_or(0);
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
            && let Some(client) = self.clients.iter().find(|c| c.config.dev_secret.as_deref() == Some(bootstrap))
        {
            return Ok(client);
        }
        let token = jws::parse(bootstrap, 16 * 1024).map_err(|_| denied("not a JWT"))?;
        let iss = token.claims.get("iss").and_then(Value::as_str).ok_or_else(|| denied("no iss"))?;
        let platform =
            self.platforms.iter().find(|p| p.config.issuer == iss).ok_or_else(|| denied("unknown issuer"))?;
        let alg = token.algorithm()?;
        let kid = token.header_str("kid")?;
        let key: &PublicKey = platform.keys.select(kid, alg).map_err(|_| denied("no platform key matches"))?;
        if !key.verify(crate::jose::Backend::default(), alg, token.signing_input.as_bytes(), &token.signature) {
            return Err(denied("bad signature"));
        }
        let now = self.clock.now();
        let exp = token.claims.get("exp").and_then(Value::as_u64).ok_or_else(|| denied("no exp"))?;
        if now >= exp {
            return Err(denied("expired"));
        }
        if token.claims.get("nbf").and_then(Value::as_u64).is_some_and(|nbf| nbf > now + 30) {
            return Err(denied("not yet valid"));
        }
        let audience_ok = match token.claims.get("aud") {
            Some(Value::String(aud)) => aud == &platform.config.audience,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(&platform.config.audience)),
            _ => false,
        };
        if !audience_ok {
            return Err(denied("wrong audience"));
        }
        let sub = token.claims.get("sub").and_then(Value::as_str).ok_or_else(|| denied("no sub"))?;
        self.clients
            .iter()
            .find(|c| {
                c.config.platform.as_deref() == Some(&platform.config.name) && c.config.subject.as_deref() == Some(sub)
            })
            .ok_or_else(|| Error::with_detail(ErrorKind::IssuanceDenied, "no client for this platform subject"))
    }

    /// Issues a WIT for `sub` bound to `public_jwk`, for the client `bootstrap` authenticates.
    /// The lifetime is capped at the client's maximum.
    pub fn issue_wit(&self, bootstrap: &str, sub: &str, public_jwk: &Jwk, lifetime: Option<u64>) -> Result<IssuedWit> {
        let client = self.authenticate(bootstrap)?;
        let id = WorkloadId::parse(sub).map_err(|e| Error::new(ErrorKind::InvalidSubject(e)))?;
        if !crate::policy::Policy::named(&client.config.name).allow(client.rule.clone()).allows_id(&id) {
            tracing::warn!(target: "wimse::audit", client = %client.config.name, sub = %id, "issuance refused");
            return Err(Error::with_detail(
                ErrorKind::IssuanceDenied,
                format!("{} may not obtain {id}", client.config.name),
            ));
        }
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
        Ok(IssuedWit { wit, expires_at: now + lifetime })
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

/// Reads and checks a configuration file (JSON).
pub fn load_config(path: &std::path::Path) -> Result<IssuerConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| config_error(path.display().to_string(), e))?;
    serde_json::from_str(&text).map_err(|e| config_error(path.display().to_string(), e))
}
