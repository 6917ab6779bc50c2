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
use wimse_core::protocol::trust::{STORE_EPOCH_MEMBER, TrustAnchors};
use wimse_core::protocol::wit::WitIssuer;
use wimse_core::rate::RateLimiter;
use wimse_core::replay::ReplayClaim;
use wimse_core::server::policy::Rule;
use wimse_core::time::Clock;
use wimse_core::{Error, ErrorKind, Result};

use crate::config::*;
use crate::external::validate_external;
use crate::keys::{Changes, KeyState, Loaded, Reconciled, RotationPolicy, reconcile};
use crate::store::{FileStorage, IssuanceRecord, KeyStorage};
use crate::{ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE};
use checked::Checked;

mod bundles;
mod checked;
mod federation;
mod lifecycle;
mod limits;
mod maintenance;
mod quiet;
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
struct AcceptedPlatformToken {
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
    pub usage: wimse_core::protocol::wic::WicUsage,
    /// DNS names for its subject alternative names (a server certificate).
    pub dns_names: &'a [String],
    /// IP addresses for its subject alternative names.
    pub ip_addresses: &'a [std::net::IpAddr],
    /// Its lifetime in seconds, at most the client's maximum (the maximum when `None`).
    pub lifetime: Option<u64>,
}

/// How a client authenticates for `/v1/wit` and `/v1/wic`.
#[derive(Debug, Clone, Copy)]
pub enum ClientAuthentication<'a> {
    /// `Authorization: Bearer`: a platform token or, in dev mode, a dev secret.
    Bootstrap(&'a str),
    /// A client WIC this server issued, verified in the TLS handshake: renewal of that
    /// identifier, by a client with [`wic_renewal`](crate::ClientConfig::wic_renewal).
    Wic(&'a WorkloadId),
}

impl<'a> From<&'a str> for ClientAuthentication<'a> {
    fn from(bootstrap: &'a str) -> Self {
        Self::Bootstrap(bootstrap)
    }
}

impl<'a> From<&'a String> for ClientAuthentication<'a> {
    fn from(bootstrap: &'a String) -> Self {
        Self::Bootstrap(bootstrap)
    }
}

/// The result of an issuance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct IssuedWit {
    /// The WIT.
    pub wit: String,
    /// When it was issued, seconds since the epoch.
    pub issued_at: u64,
    /// Its expiry, seconds since the epoch.
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
    /// Which refusals were logged lately (once per source and minute).
    pub(crate) quiet: quiet::Quiet,
    pub(crate) tts: Option<crate::tts::Tts>,
    /// Workloads a risk signal disabled are issued nothing.
    revocations: Option<wimse_core::server::signals::Revocations>,
    audit: Option<wimse_core::server::audit_log::AuditLog>,
}

impl std::fmt::Debug for IdentityServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityServer").field("trust_domain", &self.domain).finish_non_exhaustive()
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), marked `…` when cut: what a
/// sender chose, bounded before it is echoed or recorded.
pub(crate) fn clipped(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let cut = (0..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}…", &text[..cut])
}

impl IdentityServer {
    /// Checks `config` (errors name the field), opens its storage (`key_store` or `postgres`),
    /// loads the keys or creates them.
    pub async fn open(config: IssuerConfig, clock: impl Clock + 'static) -> Result<Self> {
        let storage = Self::open_storage(&config).await?;
        Self::with_storage(config, storage, clock).await
    }

    /// The storage `config` names (`key_store` or `postgres`), opened but not read.
    async fn open_storage(config: &IssuerConfig) -> Result<Arc<dyn KeyStorage>> {
        Ok(match (&config.key_store, &config.postgres) {
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
        })
    }

    /// Like [`open`](Self::open), with the given storage (the configuration's `key_store` and
    /// `postgres` are ignored).
    pub async fn with_storage(
        config: IssuerConfig,
        storage: Arc<dyn KeyStorage>,
        clock: impl Clock + 'static,
    ) -> Result<Self> {
        let Checked { domain, alg, platforms, clients, exchanges, tts } = config.check()?;
        let audit = config.audit.as_ref().map(wimse_core::config::AuditSettings::open).transpose()?;
        // Shared with whatever delivers the signals from the same settings (a poller, a push
        // route).
        let revocations =
            config.signals.as_ref().map(|signals| signals.receiver().map(|r| r.revocations().clone())).transpose()?;
        let clock: Arc<dyn Clock> = Arc::new(clock);
        let tts = tts.map(|checked| crate::tts::Tts::new(checked, storage.clone(), clock.clone())).transpose()?;
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
            quiet: quiet::Quiet::default(),
            revocations,
            audit,
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

    /// Issues nothing to a workload, or for a user, that a risk signal disabled (RISC
    /// `account-disabled`, from a `SetReceiver` filling `revocations`); a workload whose
    /// credentials a signal revoked gets new ones (issued after the event, they pass).
    pub fn revocations(mut self, revocations: wimse_core::server::signals::Revocations) -> Self {
        self.revocations = Some(revocations);
        self
    }

    /// Records every issuance and every refusal of the issuing endpoints (`/v1/wit`, `/token`,
    /// `/v1/wic`) in `log`, a tamper-evident audit log (see
    /// [`wimse_core::server::audit_log`]): action `issue:wit`, `issue:exchange`,
    /// `issue:jwt-bearer`, `issue:wic` or `issue:txn-token`; the requesting client (or
    /// workload) as the caller; the identifier issued for (a Txn-Token's scope) as the
    /// resource; a Txn-Token's transaction, subject and actors. A refusal names the failed
    /// check, and the caller only when it was authenticated.
    pub fn audit_log(mut self, log: wimse_core::server::audit_log::AuditLog) -> Self {
        self.audit = Some(log);
        self
    }

    /// Writes `event` into the audit log, if any (a full log drops or refuses as configured:
    /// a refusing log refuses the issuance).
    pub(crate) fn audit(&self, event: wimse_core::server::audit_log::AuditEvent) -> Result<()> {
        match &self.audit {
            Some(log) => log.record(event).inspect_err(|failure| {
                tracing::error!(error = %failure, "wimse issuer: the decision could not be recorded in the audit log");
            }),
            None => Ok(()),
        }
    }

    /// Records a refusal of `action` on `resource` (the identifier or scope asked for), by
    /// `caller` when it was authenticated.
    pub(crate) fn audit_refusal(&self, action: &str, caller: Option<String>, resource: Option<&str>, error: &Error) {
        // What an unauthenticated sender chose (an identifier, a scope) is kept to 256 bytes:
        // a flood of refusals holds at most the queue's records of that size.
        let _ = self.audit(wimse_core::server::audit_log::AuditEvent {
            caller,
            action: Some(format!("issue:{action}")),
            resource: resource.map(|text| clipped(text, 256)),
            decision: "deny".into(),
            reason: Some(error.reason().to_owned()),
            ..Default::default()
        });
    }

    /// Refuses `subject` (a workload identifier, or a Txn-Token's subject) when a risk signal
    /// disabled it.
    pub(crate) fn refuse_disabled(&self, subject: &str) -> Result<()> {
        match &self.revocations {
            Some(revocations) if revocations.is_disabled(subject) => {
                tracing::warn!(target: "wimse::audit", subject, "issuance refused: disabled by a risk signal");
                Err(Error::with_detail(ErrorKind::IssuanceDenied, format!("{subject} is disabled by a risk signal")))
            }
            _ => Ok(()),
        }
    }

    /// Signs a WIT for `id` with the active key. Returns it and the key id.
    fn sign_wit(&self, id: &WorkloadId, public_jwk: &Jwk, lifetime: u64, now: u64) -> Result<(String, String)> {
        self.refuse_disabled(id.as_str())?;
        let key = self.read_keys(|loaded| loaded.active_key(now).cloned())?;
        let kid = key.kid().unwrap_or_default().to_owned();
        let mut issuer = WitIssuer::new(key).lifetime(lifetime);
        if let Some(iss) = &self.config.issuer {
            issuer = issuer.issuer(iss.clone());
        }
        Ok((issuer.issue(id, public_jwk, now)?, kid))
    }

    /// Records an issuance in the storage (an audit row with PostgreSQL) and in the audit log
    /// before it is handed out. `event` holds what the audit record says beyond the issuance
    /// (a Txn-Token's transaction, subject, actors and scope); its caller and resource default
    /// to the client and the identifier.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn record(
        &self,
        kind: &'static str,
        client: &str,
        id: &WorkloadId,
        lifetime: u64,
        key_id: String,
        at: u64,
        event: wimse_core::server::audit_log::AuditEvent,
    ) -> Result<()> {
        let mut event = event;
        event.caller.get_or_insert_with(|| client.to_owned());
        event.resource.get_or_insert_with(|| id.to_string());
        let record = IssuanceRecord {
            at,
            kind,
            client: client.to_owned(),
            identifier: id.to_string(),
            lifetime,
            key_id,
            replica: self.replica.clone(),
        };
        // The storage first: an issuance it refuses is refused, and recorded once, as a refusal.
        self.storage.record(&record).await?;
        self.audit(wimse_core::server::audit_log::AuditEvent {
            action: Some(format!("issue:{kind}")),
            decision: "allow".into(),
            ..event
        })
    }

    /// Whether a client renews with its WIC ([`ClientConfig::wic_renewal`]): the TLS listener
    /// then asks for client certificates.
    pub fn renews_with_wics(&self) -> bool {
        self.clients.iter().any(|c| c.config.wic_renewal)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.domain
    }

    /// What an operator checks at start: the replica, the storage, and how many clients,
    /// platforms and exchange profiles the configuration has (no secret).
    pub fn describe(&self) -> String {
        format!(
            "replica {}, storage {}, {} clients, {} platforms, {} exchange profiles{}",
            self.replica,
            self.storage.describe(),
            self.clients.len(),
            self.platforms.len(),
            self.exchanges.len(),
            if self.config.dev_mode { ", dev mode (dev secrets accepted)" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::clipped;

    #[test]
    fn clipped_text_is_cut_on_a_character_boundary_and_marked() {
        assert_eq!(clipped("short", 256), "short");
        assert_eq!(clipped(&"a".repeat(256), 256), "a".repeat(256));
        assert_eq!(clipped(&"a".repeat(257), 256), format!("{}…", "a".repeat(256)));
        // "é" is two bytes: byte 3 falls inside the second one, so the cut is at 2.
        assert_eq!(clipped("ééé", 3), "é…");
        assert_eq!(clipped("é", 1), "…");
    }
}
