//! The credentials the agent holds for its workloads: a key per identity, the WIT (and WIC)
//! the identity server issued for it, renewed before expiry, and the trust bundles. Published
//! as one snapshot that the Workload API streams follow.
//!
//! While the identity server is unreachable the agent keeps serving what it has (until each
//! credential expires), logs the outage once, a reminder a minute and the recovery, and exposes
//! it as metrics (`wimse_agent_issuer_reachable`, `wimse_agent_credentials_expire_at_seconds`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use wimse_core::health::{Health, Report, jitter, renewal_time, retry_delay};
use wimse_core::id::WorkloadId;
use wimse_core::jose::{Algorithm, SigningKey};
use wimse_core::{Error, ErrorKind};
use wimse_reqwest::{MAX_DOCUMENT, read_capped};

use crate::config::{AgentConfig, RegistrationEntry};

/// An identity's current credentials, in the Workload API's encodings.
#[derive(Clone)]
pub struct IdentityCredentials {
    /// The WIT (compact JWS).
    pub wit: Arc<str>,
    /// Its private key as a JWK JSON document.
    pub wit_key: Arc<str>,
    /// When the WIT expires.
    pub wit_expires_at: u64,
    /// The X.509-SVID, when the agent serves them.
    pub x509: Option<X509Credentials>,
}

/// An X.509-SVID in the Workload API's encoding. `Debug` does not show the key.
#[derive(Clone)]
pub struct X509Credentials {
    /// DER certificates concatenated, the leaf first.
    pub chain: Arc<[u8]>,
    /// The private key, PKCS#8 DER.
    pub key: Arc<[u8]>,
    /// When the certificate expires.
    pub expires_at: u64,
}

impl std::fmt::Debug for X509Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Credentials").field("expires_at", &self.expires_at).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for IdentityCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityCredentials")
            .field("wit_expires_at", &self.wit_expires_at)
            .field("x509", &self.x509)
            .finish_non_exhaustive()
    }
}

/// Everything the agent serves, as of one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Per identity.
    pub identities: HashMap<WorkloadId, IdentityCredentials>,
    /// WIT bundles: trust domain SPIFFE ID → JWKS JSON.
    pub wit_bundles: BTreeMap<String, String>,
    /// X.509 bundles: trust domain SPIFFE ID → concatenated DER CA certificates.
    pub x509_bundles: BTreeMap<String, Vec<u8>>,
}

/// Obtains and renews the credentials of every identity of the configuration.
#[derive(Debug)]
pub(crate) struct Issuance {
    config: AgentConfig,
    client: reqwest::Client,
    pub(crate) snapshot: watch::Sender<Arc<Snapshot>>,
    health: Health,
    /// Per identity: wakes its renewal task now (a forced rotation).
    rotate: HashMap<WorkloadId, Arc<Notify>>,
}

fn unavailable(detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::with_detail(ErrorKind::CredentialsUnavailable, detail)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Issuance {
    pub(crate) fn new(config: AgentConfig) -> Result<Self, Error> {
        let timeout = Duration::from_millis(config.issuer.timeout_ms.max(100));
        let client = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            // The agent's token must not follow a redirect elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| unavailable(format!("HTTP client: {e}")))?;
        let rotate = config.identities().into_iter().map(|id| (id, Arc::new(Notify::new()))).collect();
        metrics::gauge!("wimse_agent_issuer_reachable").set(0.0);
        Ok(Self { config, client, snapshot: watch::Sender::new(Arc::default()), health: Health::new(60), rotate })
    }

    pub(crate) fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Renews every identity's credentials now (new keys).
    pub(crate) fn rotate_all(&self) {
        self.rotate.values().for_each(|n| n.notify_one());
    }

    async fn token(&self) -> Result<String, Error> {
        let issuer = &self.config.issuer;
        match (&issuer.token_file, &issuer.token_env) {
            (Some(path), _) => tokio::fs::read_to_string(path)
                .await
                .map(|t| t.trim().to_owned())
                .map_err(|e| unavailable(format!("{}: {e}", path.display()))),
            (None, Some(var)) => std::env::var(var).map_err(|_| unavailable(format!("{var} is not set"))),
            (None, None) => Err(unavailable("no token configured")),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.issuer.url.trim_end_matches('/'))
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, Error> {
        let token = self.token().await?;
        let response = self
            .client
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(|e| unavailable(format!("identity server: {e}")))?;
        let status = response.status();
        let text =
            read_capped(response, MAX_DOCUMENT).await.map_err(|e| unavailable(format!("identity server: {e}")))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let reason = value["reason"].as_str().or_else(|| value["error"].as_str()).unwrap_or_default();
            return Err(unavailable(format!("identity server answered {status} ({reason})")));
        }
        Ok(value)
    }

    /// A new key and WIT (and WIC) for `entry`'s identity.
    async fn obtain(&self, entry: &RegistrationEntry) -> Result<IdentityCredentials, Error> {
        let id = entry.spiffe_id.as_str();
        // ES256: the WIT-SVID profile does not allow EdDSA.
        let key = SigningKey::generate(Algorithm::ES256)?;
        let issued = self.post("/v1/wit", json!({"sub": id, "jwk": key.public_jwk()})).await?;
        let wit = issued["wit"].as_str().ok_or_else(|| unavailable("no wit in the answer"))?;
        let credentials = wimse_core::cred::Credentials::new(wit, key.clone())?;
        if credentials.subject() != &entry.spiffe_id {
            return Err(unavailable(format!("the identity server issued a WIT for {}", credentials.subject())));
        }
        let wit_key = serde_json::to_string(&key.to_private_jwk()).map_err(|e| unavailable(e.to_string()))?;
        let x509 = if self.config.x509 { Some(self.obtain_x509(entry).await?) } else { None };
        Ok(IdentityCredentials {
            wit: Arc::from(wit),
            wit_key: Arc::from(wit_key),
            wit_expires_at: credentials.expires_at(),
            x509,
        })
    }

    async fn obtain_x509(&self, entry: &RegistrationEntry) -> Result<X509Credentials, Error> {
        let key = rcgen::KeyPair::generate().map_err(|e| unavailable(format!("X.509 key: {e}")))?;
        let spki =
            base64::engine::general_purpose::STANDARD.encode(rcgen::PublicKeyData::subject_public_key_info(&key));
        let body = json!({"sub": entry.spiffe_id.as_str(), "spki": spki, "usage": "both", "dns": entry.dns_names});
        let issued = self.post("/v1/wic", body).await?;
        let pem = issued["chain_pem"].as_str().ok_or_else(|| unavailable("no chain_pem in the answer"))?;
        let chain = wimse_core::wic::certificates_from_pem(pem)?;
        let expires_at = issued["expires_at"].as_u64().ok_or_else(|| unavailable("no expires_at in the answer"))?;
        let der = wimse_workload_api::der::concat_certificates(&chain);
        Ok(X509Credentials { chain: Arc::from(der), key: Arc::from(key.serialize_der()), expires_at })
    }

    async fn fetch_bundles(&self) -> Result<(), Error> {
        let get = |path: &str| self.client.get(self.url(path)).send();
        let jwks = get("/v1/bundle/jwks").await.map_err(|e| unavailable(format!("identity server: {e}")))?;
        if !jwks.status().is_success() {
            return Err(unavailable(format!("WIT bundle: {}", jwks.status())));
        }
        let jwks = read_capped(jwks, MAX_DOCUMENT).await.map_err(|e| unavailable(format!("WIT bundle: {e}")))?;
        // Checked before it is served: every key a public JWK with a kid.
        let anchors = wimse_core::trust::TrustAnchors::from_jwks_json(&jwks)?;
        if anchors.keys().iter().any(|k| k.kid().is_none()) {
            return Err(unavailable("WIT bundle: a key without kid"));
        }
        let mut x509 = None;
        if self.config.x509 {
            let pem = get("/v1/bundle/x509").await.map_err(|e| unavailable(format!("identity server: {e}")))?;
            if !pem.status().is_success() {
                return Err(unavailable(format!("X.509 bundle: {}", pem.status())));
            }
            let pem = read_capped(pem, MAX_DOCUMENT).await.map_err(|e| unavailable(format!("X.509 bundle: {e}")))?;
            let cas = wimse_core::wic::certificates_from_pem(&pem)?;
            x509 = Some(wimse_workload_api::der::concat_certificates(&cas));
        }
        let domain = self.config.trust_domain.to_string();
        self.snapshot.send_if_modified(|current| {
            let changed = current.wit_bundles.get(&domain) != Some(&jwks)
                || x509.as_ref().is_some_and(|der| current.x509_bundles.get(&domain) != Some(der));
            if changed {
                let mut next = Snapshot::clone(current);
                next.wit_bundles.insert(domain.clone(), jwks.clone());
                if let Some(der) = x509.take() {
                    next.x509_bundles.insert(domain.clone(), der);
                }
                *current = Arc::new(next);
            }
            changed
        });
        Ok(())
    }

    fn publish(&self, id: &WorkloadId, credentials: Option<IdentityCredentials>) {
        self.snapshot.send_modify(|current| {
            let mut next = Snapshot::clone(current);
            match credentials {
                Some(credentials) => {
                    metrics::gauge!("wimse_agent_credentials_expire_at_seconds", "spiffe_id" => id.to_string())
                        .set(credentials.wit_expires_at as f64);
                    next.identities.insert(id.clone(), credentials);
                }
                None => {
                    next.identities.remove(id);
                }
            }
            *current = Arc::new(next);
        });
    }

    fn succeeded(&self) {
        metrics::gauge!("wimse_agent_issuer_reachable").set(1.0);
        if self.health.succeeded() {
            tracing::info!(issuer = %self.config.issuer.url, "wimse agent: the identity server answers again");
        }
    }

    fn failed(&self, what: &str, error: &Error) {
        let cached = self.snapshot.borrow().identities.len();
        match self.health.failed(now()) {
            Report::StartedFailing => tracing::warn!(
                issuer = %self.config.issuer.url, what, reason = error.reason(), detail = error.detail(),
                cached_identities = cached,
                "wimse agent: the identity server failed; serving cached credentials until they expire"
            ),
            Report::StillFailing { left_out } => tracing::warn!(
                issuer = %self.config.issuer.url, what, reason = error.reason(), detail = error.detail(),
                cached_identities = cached, failures_not_logged = left_out,
                "wimse agent: the identity server still fails; serving cached credentials"
            ),
            Report::Quiet => {}
        }
        metrics::counter!("wimse_agent_issuer_failures_total").increment(1);
        metrics::gauge!("wimse_agent_issuer_reachable").set(0.0);
    }

    /// Keeps one identity's credentials current until the task is aborted.
    pub(crate) async fn maintain(self: Arc<Self>, entry: RegistrationEntry) {
        let retry_interval = Duration::from_millis(self.config.issuer.retry_interval_ms.max(100));
        let rotate = self.rotate.get(&entry.spiffe_id).cloned().unwrap_or_default();
        let mut failures = 0u32;
        loop {
            match self.obtain(&entry).await {
                Ok(credentials) => {
                    self.succeeded();
                    failures = 0;
                    let issued_at = now();
                    let expires_at = credentials
                        .x509
                        .as_ref()
                        .map_or(credentials.wit_expires_at, |x509| x509.expires_at.min(credentials.wit_expires_at));
                    tracing::info!(spiffe_id = %entry.spiffe_id, expires_at, "wimse agent: obtained credentials");
                    self.publish(&entry.spiffe_id, Some(credentials));
                    let renew_at = renewal_time(issued_at, expires_at, jitter());
                    let wait = Duration::from_secs_f64((renew_at - issued_at as f64).max(1.0));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = rotate.notified() => {}
                    }
                }
                Err(error) => {
                    self.failed(&format!("credentials for {}", entry.spiffe_id), &error);
                    failures = failures.saturating_add(1);
                    self.expire(&entry.spiffe_id);
                    tokio::select! {
                        _ = tokio::time::sleep(retry_delay(failures, retry_interval, jitter())) => {}
                        _ = rotate.notified() => {}
                    }
                }
            }
        }
    }

    /// Stops serving `id`'s credentials once they have expired.
    fn expire(&self, id: &WorkloadId) {
        let expired = self.snapshot.borrow().identities.get(id).is_some_and(|c| c.wit_expires_at <= now());
        if expired {
            tracing::error!(spiffe_id = %id, "wimse agent: credentials expired while the identity server was unreachable; no longer served");
            self.publish(id, None);
        }
    }

    /// Keeps the bundles current until the task is aborted.
    pub(crate) async fn maintain_bundles(self: Arc<Self>) {
        let refresh = Duration::from_secs(self.config.issuer.bundle_refresh_secs.max(1));
        let retry_interval = Duration::from_millis(self.config.issuer.retry_interval_ms.max(100));
        let mut failures = 0u32;
        loop {
            let wait = match self.fetch_bundles().await {
                Ok(()) => {
                    self.succeeded();
                    failures = 0;
                    refresh
                }
                Err(error) => {
                    self.failed("bundles", &error);
                    failures = failures.saturating_add(1);
                    retry_delay(failures, retry_interval.min(refresh), jitter())
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}
