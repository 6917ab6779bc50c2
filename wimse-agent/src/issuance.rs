//! The credentials the agent holds for its workloads: a key per identity, the WIT (and WIC)
//! the identity server issued for it, renewed before expiry, and the trust bundles. Published
//! as one snapshot that the Workload API streams follow.
//!
//! While the identity server is unreachable the agent keeps serving what it has (until each
//! credential expires), logs the outage once, a reminder a minute and the recovery, and exposes
//! it as metrics (`wimse_agent_issuer_reachable`, `wimse_agent_credentials_expire_at_seconds`).
//!
//! A refusal is not an outage: the identity server answering 401 (the agent's token) or 403
//! (this identity) is a configuration or authorization mistake that retrying does not fix. It
//! is logged as such (the token's once for the agent, an identity's once per identity and
//! part), counted under its own reason, and tried again on the renewal schedule, not within
//! seconds. The first answer for every identity is recorded, so that a start where every
//! identity is refused fails ([`FirstAnswers`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::watch;
use wimse_core::health::{Health, Report, jitter, renewal_time, retry_delay};
use wimse_core::id::WorkloadId;
use wimse_core::jose::{Algorithm, SigningKey};
use wimse_core::time::{Clock, SystemClock};
use wimse_core::{Error, ErrorKind};
use wimse_reqwest::{MAX_DOCUMENT, read_capped};

use crate::config::{AgentConfig, RegistrationEntry};
use crate::error::Refusal;

/// An identity's current credentials, in the Workload API's encodings. Each part is renewed
/// on its own: a failing WIC does not hold the WIT back.
#[derive(Debug, Clone, Default)]
pub struct IdentityCredentials {
    /// The WIT-SVID, once issued.
    pub wit: Option<WitCredentials>,
    /// The X.509-SVID, when the agent serves them and once issued.
    pub x509: Option<X509Credentials>,
}

/// A WIT-SVID in the Workload API's encoding. `Debug` does not show the key.
#[derive(Clone)]
pub struct WitCredentials {
    /// The WIT (compact JWS).
    pub wit: Arc<str>,
    /// Its private key as a JWK JSON document.
    pub key: Arc<str>,
    /// When the WIT expires.
    pub expires_at: u64,
}

impl std::fmt::Debug for WitCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WitCredentials").field("expires_at", &self.expires_at).finish_non_exhaustive()
    }
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

/// One newly issued part.
pub(crate) enum Issued {
    Wit(WitCredentials),
    X509(X509Credentials),
}

/// Obtains and renews the credentials of every identity of the configuration.
#[derive(Debug)]
pub(crate) struct Issuance {
    config: AgentConfig,
    client: reqwest::Client,
    pub(crate) snapshot: watch::Sender<Arc<Snapshot>>,
    /// Counts forced rotations: every renewal task wakes when it changes.
    rotation: watch::Sender<u64>,
    /// What the first attempt of each renewal task found.
    pub(crate) first_answers: watch::Sender<FirstAnswers>,
    /// The agent's token missing, and refused (401): one state each for every task, so that
    /// they are logged once for the agent, not once per identity.
    no_token: Health,
    token_refused: Health,
    /// The `ETag` of each bundle served (by path), for conditional refreshes.
    bundle_etags: std::sync::Mutex<std::collections::HashMap<&'static str, String>>,
}

/// What the first attempts of the renewal tasks (one per identity and part) found.
#[derive(Debug, Clone, Default)]
pub(crate) struct FirstAnswers {
    /// Tasks whose first attempt has not ended.
    pub(crate) pending: usize,
    /// Some first attempt was granted, or failed in a way a retry can fix (an outage): the
    /// agent has, or may soon have, something to serve.
    pub(crate) hopeful: bool,
    /// The agent had no token (what was wrong with its source).
    pub(crate) no_token: Option<String>,
    /// What the identity server refused.
    pub(crate) refusals: Vec<Refusal>,
}

/// What a failed attempt means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The agent has no token to send (`token_env`'s variable unset or empty, `token_file`
    /// unreadable or empty): its configuration. Nothing was sent; retried as an outage is.
    NoToken,
    /// The identity server refuses the agent's token (401).
    TokenRefused,
    /// The identity server refuses this identity (403).
    IdentityRefused,
    /// The identity server is unreachable, failing (5xx), or answered what the agent cannot
    /// use: an outage, retried with backoff.
    Outage,
}

impl Failure {
    /// What a failed request to the identity server means.
    fn of_answer(error: &Error) -> Self {
        match error.kind() {
            ErrorKind::BootstrapTokenInvalid => Failure::TokenRefused,
            ErrorKind::IssuanceDenied => Failure::IdentityRefused,
            _ => Failure::Outage,
        }
    }

    /// The `reason` label of `wimse_agent_issuer_failures_total`.
    fn label(self) -> &'static str {
        match self {
            Failure::NoToken => "no_token",
            Failure::TokenRefused => "bootstrap_token_invalid",
            Failure::IdentityRefused => "issuance_denied",
            Failure::Outage => "unavailable",
        }
    }
}

/// After a refusal, the next attempt when the identity's lifetime is not known (nothing was
/// issued for it yet): a refusal is not retried within seconds.
const RETRY_AFTER_REFUSAL: Duration = Duration::from_secs(300);

/// How often a refusal that persists is logged again (attempts are rarer than this anyway).
const REFUSAL_REMINDER_SECS: u64 = 600;

/// The part of an identity's credentials one renewal task keeps current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Wit,
    X509,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Wit => "WIT",
            Part::X509 => "X.509-SVID",
        }
    }
}

fn unavailable(detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::with_detail(ErrorKind::CredentialsUnavailable, detail)
}

fn now() -> u64 {
    SystemClock.now()
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
        metrics::gauge!("wimse_agent_issuer_reachable").set(0.0);
        let tasks = config.identities().len() * if config.x509 { 2 } else { 1 };
        let first_answers = FirstAnswers { pending: tasks, ..FirstAnswers::default() };
        Ok(Self {
            config,
            client,
            snapshot: watch::Sender::new(Arc::default()),
            rotation: watch::Sender::new(0),
            first_answers: watch::Sender::new(first_answers),
            no_token: Health::new(REFUSAL_REMINDER_SECS),
            token_refused: Health::new(REFUSAL_REMINDER_SECS),
            bundle_etags: Default::default(),
        })
    }

    pub(crate) fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Renews every identity's credentials now (new keys).
    pub(crate) fn rotate_all(&self) {
        self.rotation.send_modify(|n| *n += 1);
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.issuer.url.trim_end_matches('/'))
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Result<Value, Error> {
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
            let mut detail = format!("the identity server answered {status} ({reason})");
            if let Some(more) = value["detail"].as_str() {
                detail = format!("{detail}: {more}");
            }
            // Refusals that no retry fixes, told apart from an outage.
            let kind = match status {
                reqwest::StatusCode::UNAUTHORIZED => ErrorKind::BootstrapTokenInvalid,
                reqwest::StatusCode::FORBIDDEN => ErrorKind::IssuanceDenied,
                _ => ErrorKind::CredentialsUnavailable,
            };
            return Err(Error::with_detail(kind, detail));
        }
        Ok(value)
    }

    /// A new key and WIT for `entry`'s identity.
    async fn obtain_wit(&self, entry: &RegistrationEntry, token: &str) -> Result<WitCredentials, Error> {
        // ES256: the WIT-SVID profile does not allow EdDSA.
        let key = SigningKey::generate(Algorithm::ES256)?;
        let issued =
            self.post("/v1/wit", token, json!({"sub": entry.spiffe_id.as_str(), "jwk": key.public_jwk()})).await?;
        let wit = issued["wit"].as_str().ok_or_else(|| unavailable("no wit in the answer"))?;
        let credentials = wimse_core::client::cred::Credentials::new(wit, key.clone())?;
        if credentials.subject() != &entry.spiffe_id {
            return Err(unavailable(format!("the identity server issued a WIT for {}", credentials.subject())));
        }
        let wit_key = serde_json::to_string(&key.to_private_jwk()).map_err(|e| unavailable(e.to_string()))?;
        Ok(WitCredentials { wit: Arc::from(wit), key: Arc::from(wit_key), expires_at: credentials.expires_at() })
    }

    async fn obtain_x509(&self, entry: &RegistrationEntry, token: &str) -> Result<X509Credentials, Error> {
        let key = rcgen::KeyPair::generate().map_err(|e| unavailable(format!("X.509 key: {e}")))?;
        let spki =
            base64::engine::general_purpose::STANDARD.encode(rcgen::PublicKeyData::subject_public_key_info(&key));
        let body = json!({"sub": entry.spiffe_id.as_str(), "spki": spki, "usage": "both", "dns": entry.dns_names});
        let issued = self.post("/v1/wic", token, body).await?;
        let pem = issued["chain_pem"].as_str().ok_or_else(|| unavailable("no chain_pem in the answer"))?;
        let chain = wimse_core::protocol::wic::certificates_from_pem(pem)?;
        let expires_at = issued["expires_at"].as_u64().ok_or_else(|| unavailable("no expires_at in the answer"))?;
        let der = wimse_workload_api::der::concat_certificates(&chain);
        Ok(X509Credentials { chain: Arc::from(der), key: Arc::from(key.serialize_der()), expires_at })
    }

    /// One bundle document, asked for conditionally: `None` when the one served is current
    /// (304 to its `ETag`), else the document and its `ETag` (recorded by the caller once the
    /// document is served, so a tag is never held for a document that was not).
    async fn fetch_bundle(&self, path: &'static str, what: &str) -> Result<Option<(String, Option<String>)>, Error> {
        let held = self.bundle_etags.lock().ok().and_then(|etags| etags.get(path).cloned());
        let mut request = self.client.get(self.url(path));
        if let Some(etag) = &held {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let response = request.send().await.map_err(|e| unavailable(format!("identity server: {e}")))?;
        if response.status() == reqwest::StatusCode::NOT_MODIFIED && held.is_some() {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(unavailable(format!("{what}: {}", response.status())));
        }
        let etag = response.headers().get(reqwest::header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let text = read_capped(response, MAX_DOCUMENT).await.map_err(|e| unavailable(format!("{what}: {e}")))?;
        Ok(Some((text, etag.filter(|e| e.len() <= 256))))
    }

    /// Records the `ETag`s of documents now served.
    fn served_etags(&self, tags: &[(&'static str, Option<String>)]) {
        if let Ok(mut etags) = self.bundle_etags.lock() {
            for (path, etag) in tags {
                match etag {
                    Some(etag) => etags.insert(path, etag.clone()),
                    None => etags.remove(path),
                };
            }
        }
    }

    async fn fetch_bundles(&self) -> Result<(), Error> {
        let domain = self.config.trust_domain.to_string();
        let served = self.snapshot.borrow().clone();
        let mut tags = Vec::new();
        let mut jwks = match self.fetch_bundle("/v1/bundle/jwks", "WIT bundle").await? {
            Some((jwks, etag)) => {
                // Checked before it is served, as its clients will read it.
                wimse_workload_api::wit_bundle_anchors(&jwks).map_err(|e| unavailable(format!("WIT bundle: {e}")))?;
                tags.push(("/v1/bundle/jwks", etag));
                Some(jwks)
            }
            None if served.wit_bundles.contains_key(&domain) => None,
            None => return Err(unavailable("WIT bundle: 304 for a bundle not served")),
        };
        let mut x509 = None;
        if self.config.x509 {
            match self.fetch_bundle("/v1/bundle/x509", "X.509 bundle").await? {
                Some((pem, etag)) => {
                    let cas = wimse_core::protocol::wic::certificates_from_pem(&pem)?;
                    x509 = Some(wimse_workload_api::der::concat_certificates(&cas));
                    tags.push(("/v1/bundle/x509", etag));
                }
                None if served.x509_bundles.contains_key(&domain) => {}
                None => return Err(unavailable("X.509 bundle: 304 for a bundle not served")),
            }
        }
        self.snapshot.send_if_modified(|current| {
            let changed = jwks.as_ref().is_some_and(|jwks| current.wit_bundles.get(&domain) != Some(jwks))
                || x509.as_ref().is_some_and(|der| current.x509_bundles.get(&domain) != Some(der));
            if changed {
                let mut next = Snapshot::clone(current);
                if let Some(jwks) = jwks.take() {
                    next.wit_bundles.insert(domain.clone(), jwks);
                }
                if let Some(der) = x509.take() {
                    next.x509_bundles.insert(domain.clone(), der);
                }
                *current = Arc::new(next);
            }
            changed
        });
        self.served_etags(&tags);
        Ok(())
    }

    /// Replaces (or, with `None`, withdraws) one part of `id`'s credentials.
    fn publish(&self, id: &WorkloadId, part: Part, issued: Option<Issued>) {
        if let Some(Issued::Wit(wit)) = &issued {
            metrics::gauge!("wimse_agent_credentials_expire_at_seconds", "spiffe_id" => id.to_string())
                .set(wit.expires_at as f64);
        }
        self.snapshot.send_modify(|current| {
            let mut next = Snapshot::clone(current);
            let credentials = next.identities.entry(id.clone()).or_default();
            match (part, issued) {
                (_, Some(Issued::Wit(wit))) => credentials.wit = Some(wit),
                (_, Some(Issued::X509(x509))) => credentials.x509 = Some(x509),
                (Part::Wit, None) => credentials.wit = None,
                (Part::X509, None) => credentials.x509 = None,
            }
            if credentials.wit.is_none() && credentials.x509.is_none() {
                next.identities.remove(id);
            }
            *current = Arc::new(next);
        });
    }

    /// `part` of `id` as served now, with its expiry.
    fn served_expiry(&self, id: &WorkloadId, part: Part) -> Option<u64> {
        let snapshot = self.snapshot.borrow();
        let credentials = snapshot.identities.get(id)?;
        match part {
            Part::Wit => credentials.wit.as_ref().map(|w| w.expires_at),
            Part::X509 => credentials.x509.as_ref().map(|x| x.expires_at),
        }
    }

    fn succeeded(&self, health: &Health, what: &str) {
        metrics::gauge!("wimse_agent_issuer_reachable").set(1.0);
        if health.succeeded() {
            tracing::info!(issuer = %self.config.issuer.url, what, "wimse agent: the identity server answers again");
        }
    }

    fn failed(&self, health: &Health, what: &str, error: &Error) {
        let cached = self.snapshot.borrow().identities.len();
        match health.failed(now()) {
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
        metrics::counter!("wimse_agent_issuer_failures_total", "reason" => Failure::Outage.label()).increment(1);
        metrics::gauge!("wimse_agent_issuer_reachable").set(0.0);
    }

    /// A failed attempt for `what` (`WIT of <id>`), logged and counted as what it is: an
    /// outage as one, a refusal or a missing token as the configuration or authorization
    /// mistake it is.
    fn report_failure(&self, outage: &Health, refusal: &Health, what: &str, failure: Failure, error: &Error) {
        if failure == Failure::Outage {
            self.failed(outage, what, error);
            return;
        }
        metrics::counter!("wimse_agent_issuer_failures_total", "reason" => failure.label()).increment(1);
        let detail = error.detail().unwrap_or_default();
        if failure != Failure::NoToken {
            // It answered: not an outage, whatever the previous attempts found.
            self.succeeded(outage, what);
        }
        match failure {
            Failure::Outage => {}
            Failure::NoToken => {
                if self.no_token.failed(now()) != Report::Quiet {
                    tracing::error!(
                        detail,
                        "wimse agent: no token for the identity server, a configuration error (not an outage); serving cached credentials until they expire"
                    );
                }
            }
            Failure::TokenRefused => {
                if self.token_refused.failed(now()) != Report::Quiet {
                    tracing::error!(
                        issuer = %self.config.issuer.url, reason = error.reason(), detail,
                        token = %crate::token::source_name(&self.config.issuer),
                        "wimse agent: the identity server refuses the agent's token, a configuration error (not an outage): check the token against the identity server's client entry for the agent; serving cached credentials until they expire, retrying on the renewal schedule (SIGHUP retries at once)"
                    );
                }
            }
            Failure::IdentityRefused => {
                if refusal.failed(now()) != Report::Quiet {
                    tracing::error!(
                        issuer = %self.config.issuer.url, what, reason = error.reason(), detail,
                        "wimse agent: the identity server refuses to issue this identity, an authorization error (not an outage): its client entry for the agent must allow it (allowed, allowed_prefixes, allowed_dns_names); serving cached credentials until they expire, retrying on the renewal schedule (SIGHUP retries at once)"
                    );
                }
            }
        }
    }

    /// A success for `what` ends a missing token, a refused token and a refused identity.
    fn granted(&self, refusal: &Health, what: &str) {
        if self.no_token.succeeded() {
            tracing::info!(token = %crate::token::source_name(&self.config.issuer), "wimse agent: the agent has its token again");
        }
        if self.token_refused.succeeded() {
            tracing::info!(issuer = %self.config.issuer.url, "wimse agent: the identity server accepts the agent's token again");
        }
        if refusal.succeeded() {
            tracing::info!(issuer = %self.config.issuer.url, what, "wimse agent: the identity server issues this identity again");
        }
    }

    /// Records the first attempt of a renewal task.
    fn first_answer(&self, id: &WorkloadId, part: Part, outcome: Result<(), (Failure, &Error)>) {
        self.first_answers.send_modify(|answers| {
            answers.pending = answers.pending.saturating_sub(1);
            match outcome {
                Ok(()) | Err((Failure::Outage, _)) => answers.hopeful = true,
                Err((Failure::NoToken, error)) => {
                    answers.no_token = Some(error.detail().unwrap_or_default().to_owned());
                }
                Err((_, error)) => answers.refusals.push(Refusal {
                    spiffe_id: id.clone(),
                    part: part.name(),
                    reason: error.reason(),
                    detail: error.detail().unwrap_or_default().to_owned(),
                }),
            }
        });
    }

    /// When to try again after a refusal: on the renewal schedule of the identity's last
    /// `lifetime` (between half and two thirds of it from now), and no later than the expiry of
    /// what is served, so that it is withdrawn on time; never sooner than `retry_interval`.
    fn after_refusal(&self, id: &WorkloadId, part: Part, lifetime: Option<u64>, retry_interval: Duration) -> Duration {
        let now = now();
        let schedule = match lifetime {
            Some(lifetime) => Duration::from_secs_f64(
                (renewal_time(now, now.saturating_add(lifetime), jitter()) - now as f64).max(0.0),
            ),
            None => RETRY_AFTER_REFUSAL.mul_f64(0.5 + jitter() / 2.0),
        };
        let mut wait = schedule.max(retry_interval);
        if let Some(expires_at) = self.served_expiry(id, part).filter(|&at| at > now) {
            wait = wait.min(Duration::from_secs(expires_at - now));
        }
        wait
    }

    /// New credentials for `part` of `entry`'s identity, or why not.
    async fn obtain(&self, entry: &RegistrationEntry, part: Part) -> Result<(Issued, u64), (Failure, Error)> {
        // Read for every attempt (a projected token rotates); without one nothing is sent.
        let token = crate::token::read(&self.config.issuer).await.map_err(|e| (Failure::NoToken, e))?;
        let issued = match part {
            Part::Wit => self.obtain_wit(entry, &token).await.map(|wit| (wit.expires_at, Issued::Wit(wit))),
            Part::X509 => self.obtain_x509(entry, &token).await.map(|x509| (x509.expires_at, Issued::X509(x509))),
        }
        .map_err(|e| (Failure::of_answer(&e), e))?;
        // Something already expired (a skewed clock) would be renewed in a tight loop.
        if issued.0 <= now() {
            let error = unavailable(format!("the identity server issued an expired {}", part.name()));
            return Err((Failure::Outage, error));
        }
        Ok((issued.1, issued.0))
    }

    /// Keeps one part of one identity's credentials current until the task is aborted: renews
    /// between half and two thirds of the lifetime, retries an outage with backoff and a
    /// refusal on the renewal schedule, stops serving what expired, and renews at once on a
    /// forced rotation.
    pub(crate) async fn maintain(self: Arc<Self>, entry: RegistrationEntry, part: Part) {
        let retry_interval = Duration::from_millis(self.config.issuer.retry_interval_ms.max(100));
        let mut rotation = self.rotation.subscribe();
        let what = format!("{} of {}", part.name(), entry.spiffe_id);
        let outage = Health::new(60);
        let refusal = Health::new(REFUSAL_REMINDER_SECS);
        let mut failures = 0u32;
        // The lifetime of the last credentials issued: the renewal schedule.
        let mut lifetime = None;
        let mut first = true;
        loop {
            let wait = match self.obtain(&entry, part).await {
                Ok((issued, expires_at)) => {
                    self.succeeded(&outage, &what);
                    self.granted(&refusal, &what);
                    failures = 0;
                    let issued_at = now();
                    lifetime = Some(expires_at.saturating_sub(issued_at));
                    tracing::info!(spiffe_id = %entry.spiffe_id, part = part.name(), expires_at, "wimse agent: obtained credentials");
                    self.publish(&entry.spiffe_id, part, Some(issued));
                    if std::mem::take(&mut first) {
                        self.first_answer(&entry.spiffe_id, part, Ok(()));
                    }
                    let renew_at = renewal_time(issued_at, expires_at, jitter());
                    Duration::from_secs_f64((renew_at - issued_at as f64).max(1.0))
                }
                Err((failure, error)) => {
                    self.report_failure(&outage, &refusal, &what, failure, &error);
                    if std::mem::take(&mut first) {
                        self.first_answer(&entry.spiffe_id, part, Err((failure, &error)));
                    }
                    failures = failures.saturating_add(1);
                    if self.served_expiry(&entry.spiffe_id, part).is_some_and(|expires_at| expires_at <= now()) {
                        tracing::error!(spiffe_id = %entry.spiffe_id, part = part.name(), reason = error.reason(), "wimse agent: credentials expired before they could be renewed; no longer served");
                        self.publish(&entry.spiffe_id, part, None);
                    }
                    match failure {
                        // Nothing was sent (no token) or the server failed: soon again.
                        Failure::Outage | Failure::NoToken => retry_delay(failures, retry_interval, jitter()),
                        Failure::TokenRefused | Failure::IdentityRefused => {
                            self.after_refusal(&entry.spiffe_id, part, lifetime, retry_interval)
                        }
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = rotation.changed() => {}
            }
        }
    }

    /// Keeps the bundles current until the task is aborted.
    pub(crate) async fn maintain_bundles(self: Arc<Self>) {
        let refresh = Duration::from_secs(self.config.issuer.bundle_refresh_secs.max(1));
        let health = Health::new(60);
        let retry_interval = Duration::from_millis(self.config.issuer.retry_interval_ms.max(100));
        let mut failures = 0u32;
        loop {
            let wait = match self.fetch_bundles().await {
                Ok(()) => {
                    self.succeeded(&health, "bundles");
                    failures = 0;
                    // At a random point of the interval's last 30 %: agents started together
                    // (a node pool scaled up at once) do not stay in step.
                    refresh.mul_f64(1.0 - 0.3 * jitter())
                }
                Err(error) => {
                    self.failed(&health, "bundles", &error);
                    failures = failures.saturating_add(1);
                    retry_delay(failures, retry_interval.min(refresh), jitter())
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}
