//! Credentials obtained from an identity server and renewed before they expire.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{Value, json};
use wimse_core::client::cred::{CredentialSource, Credentials};
use wimse_core::health::{Health, Report};
use wimse_core::jose::{Algorithm, SigningKey};
use wimse_core::time::{Clock, SystemClock};
use wimse_core::{Error, ErrorKind};

/// How the workload authenticates to the identity server. `Debug` never shows a token.
#[derive(Clone)]
pub enum Bootstrap {
    /// A token re-read from a file on every request (a Kubernetes projected service-account
    /// token, which the kubelet rotates in place).
    TokenFile(PathBuf),
    /// A fixed token or dev secret.
    Token(String),
    /// The platform token as an RFC 7523 assertion at the identity server's token endpoint
    /// (`<url>/v1/token`), each new key proven with a DPoP proof: the standard federation flow
    /// (workload-identity-practices), read anew for every renewal.
    Assertion(crate::PlatformToken),
}

impl std::fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bootstrap::TokenFile(path) => f.debug_tuple("TokenFile").field(path).finish(),
            Bootstrap::Token(_) => f.write_str("Token(..)"),
            Bootstrap::Assertion(platform) => f.debug_tuple("Assertion").field(platform).finish(),
        }
    }
}

/// Where Kubernetes projects a pod's default service-account token.
pub const KUBERNETES_SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

impl Bootstrap {
    /// The pod's projected service-account token: the path in `WIMSE_BOOTSTRAP_TOKEN_FILE`
    /// (a projected volume with this identity server as its audience, as the practices draft
    /// recommends), else [`KUBERNETES_SERVICE_ACCOUNT_TOKEN`].
    pub fn kubernetes() -> Self {
        let path =
            std::env::var_os("WIMSE_BOOTSTRAP_TOKEN_FILE").unwrap_or_else(|| KUBERNETES_SERVICE_ACCOUNT_TOKEN.into());
        Bootstrap::TokenFile(PathBuf::from(path))
    }

    async fn token(&self) -> Result<String, Error> {
        match self {
            Bootstrap::Token(token) => Ok(token.clone()),
            Bootstrap::TokenFile(path) => tokio::fs::read_to_string(path)
                .await
                .map(|t| t.trim().to_owned())
                .map_err(|e| Error::with_detail(ErrorKind::CredentialsUnavailable, format!("{}: {e}", path.display()))),
            Bootstrap::Assertion(_) => Err(unavailable("an assertion is not a bearer token")),
        }
    }
}

/// A [`CredentialSource`] backed by an identity server's `POST /v1/wit`: a fresh key pair per
/// WIT (workload-creds-02 §9.4), renewed between half and two thirds of its lifetime (a point
/// drawn at random per WIT, so workloads spread out), and retried on failure with jittered
/// backoff capped at the retry interval, before and after the WIT expired alike: the workload
/// recovers within one retry interval of the identity server's return.
///
/// Every call to the identity server is bounded by a timeout, so a server that accepts
/// connections and never answers cannot stop renewal.
#[derive(Clone)]
pub struct IssuerCredentials {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    sub: String,
    algorithm: Algorithm,
    bootstrap: Bootstrap,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
    timeout: Duration,
    retry_interval: Duration,
    key_check: Option<Duration>,
    health: Health,
    current: RwLock<Option<Current>>,
    /// The key ids of the JWKS last read and its `ETag`, for conditional key checks.
    published: std::sync::Mutex<Option<(String, Vec<String>)>>,
}

struct Current {
    credentials: Arc<Credentials>,
    /// When to renew, in seconds since the epoch (fractional: the jitter is finer than a second).
    renew_at: f64,
}

impl std::fmt::Debug for IssuerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerCredentials")
            .field("url", &self.inner.url)
            .field("sub", &self.inner.sub)
            .finish_non_exhaustive()
    }
}

fn unavailable(detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::with_detail(ErrorKind::CredentialsUnavailable, detail)
}

use wimse_core::health::jitter;
pub use wimse_core::health::{renewal_time, retry_delay};

/// Settings of [`IssuerCredentials`] before the first WIT is obtained.
#[derive(Debug)]
pub struct IssuerCredentialsBuilder {
    url: String,
    sub: String,
    bootstrap: Bootstrap,
    client: Option<reqwest::Client>,
    clock: Arc<dyn Clock>,
    timeout: Duration,
    retry_interval: Duration,
    key_check: Option<Duration>,
}

/// How often, by default, a renewing workload checks that the identity server still publishes
/// the key that signed its WIT.
pub const DEFAULT_KEY_CHECK_INTERVAL: Duration = Duration::from_secs(60);

impl IssuerCredentialsBuilder {
    /// Uses this HTTP client (TLS settings, proxies). The per-call timeout applies on top.
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Uses another clock.
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The longest one call to the identity server may take, answer included. Default 10 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest wait between two attempts while renewal fails. Default 10 s.
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval.max(Duration::from_millis(100));
        self
    }

    /// How often the renewal task checks that the identity server still publishes the key that
    /// signed the current WIT (`GET /v1/bundle/jwks`, spread with jitter between half and the
    /// whole interval); when it does not (the key store was lost or replaced, so every verifier
    /// refuses the WIT as `unknown_key`), the WIT is renewed at once instead of at its scheduled
    /// time (counted in `wimse_wit_forced_renewals_total`). When the renewed WIT is signed by the
    /// very key the JWKS lacked, the JWKS is what is wrong (a stale cache, a lagging replica):
    /// the interval then doubles at each such renewal, up to 64 times, until a check finds the
    /// key again. Default [`DEFAULT_KEY_CHECK_INTERVAL`]; `None` turns the check off.
    pub fn key_check_interval(mut self, interval: Option<Duration>) -> Self {
        self.key_check = interval.map(|i| i.max(Duration::from_millis(100)));
        self
    }

    /// Obtains the first WIT.
    pub async fn connect(self) -> Result<IssuerCredentials, Error> {
        let client = match self.client {
            Some(client) => client,
            // No redirects: a bootstrap token or an assertion must not follow one elsewhere.
            None => reqwest::Client::builder()
                .connect_timeout(self.timeout)
                .timeout(self.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| unavailable(format!("HTTP client: {e}")))?,
        };
        let source = IssuerCredentials {
            inner: Arc::new(Inner {
                url: self.url,
                sub: self.sub,
                algorithm: Algorithm::ES256,
                bootstrap: self.bootstrap,
                client,
                clock: self.clock,
                timeout: self.timeout,
                retry_interval: self.retry_interval,
                key_check: self.key_check,
                health: Health::new(60),
                current: RwLock::new(None),
                published: std::sync::Mutex::new(None),
            }),
        };
        source.renew().await?;
        Ok(source)
    }
}

/// A failed call to the identity server, with its `Retry-After` if it sent one.
struct Refused {
    error: Error,
    retry_after: Option<u64>,
    /// The server did not answer, or answered 5xx: an outage, not a refusal.
    outage: bool,
}

impl From<Error> for Refused {
    fn from(error: Error) -> Self {
        Self { error, retry_after: None, outage: false }
    }
}

impl Refused {
    fn outage(error: Error) -> Self {
        Self { error, retry_after: None, outage: true }
    }
}

impl IssuerCredentials {
    /// Settings for credentials of `sub` from the identity server at `url` (its base URL).
    pub fn builder(url: impl Into<String>, sub: impl Into<String>, bootstrap: Bootstrap) -> IssuerCredentialsBuilder {
        IssuerCredentialsBuilder {
            url: url.into(),
            sub: sub.into(),
            bootstrap,
            client: None,
            clock: Arc::new(SystemClock),
            timeout: Duration::from_secs(10),
            retry_interval: Duration::from_secs(10),
            key_check: Some(DEFAULT_KEY_CHECK_INTERVAL),
        }
    }

    /// Obtains a first WIT for `sub` from the identity server at `url` (its base URL), with the
    /// default settings.
    pub async fn connect(url: impl Into<String>, sub: impl Into<String>, bootstrap: Bootstrap) -> Result<Self, Error> {
        Self::builder(url, sub, bootstrap).connect().await
    }

    /// Like [`connect`](Self::connect), with an HTTP client and a clock.
    pub async fn connect_with(
        url: impl Into<String>,
        sub: impl Into<String>,
        bootstrap: Bootstrap,
        client: reqwest::Client,
        clock: impl Clock + 'static,
    ) -> Result<Self, Error> {
        Self::builder(url, sub, bootstrap).client(client).clock(clock).connect().await
    }

    /// Obtains a new WIT (with a new key) now, within the call timeout.
    pub async fn renew(&self) -> Result<(), Error> {
        self.try_renew().await.map_err(|refused| refused.error)
    }

    async fn try_renew(&self) -> Result<(), Refused> {
        let inner = &self.inner;
        match tokio::time::timeout(inner.timeout, self.obtain()).await {
            Ok(outcome) => outcome,
            Err(_) => {
                Err(Refused::outage(unavailable(format!("identity server: no answer within {:?}", inner.timeout))))
            }
        }
    }

    async fn obtain(&self) -> Result<(), Refused> {
        let inner = &self.inner;
        let key = SigningKey::generate(inner.algorithm)?;
        let base = inner.url.trim_end_matches('/');
        let request = match &inner.bootstrap {
            Bootstrap::Assertion(platform) => {
                let token_url = format!("{base}/v1/token");
                let now = inner.clock.now();
                let assertion = platform.read(&inner.client, now).await?;
                let proof = wimse_core::protocol::dpop::proof(&key, "POST", &token_url, now)?;
                let form = [
                    ("grant_type", crate::JWT_BEARER_GRANT),
                    ("assertion", assertion.as_str()),
                    ("scope", inner.sub.as_str()),
                ];
                inner.client.post(token_url).header("dpop", proof).form(&form)
            }
            bearer => {
                let body = json!({"sub": inner.sub, "jwk": key.public_jwk()});
                inner
                    .client
                    .post(format!("{base}/v1/wit"))
                    .bearer_auth(bearer.token().await?)
                    .header("content-type", "application/json")
                    .body(body.to_string())
            }
        };
        let response =
            request.send().await.map_err(|e| Refused::outage(unavailable(format!("identity server: {e}"))))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let text = crate::bundle::read_capped(response, crate::bundle::MAX_DOCUMENT)
            .await
            .map_err(|e| Refused::outage(unavailable(format!("identity server: {e}"))))?;
        if !status.is_success() {
            let reason = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["reason"].as_str().or_else(|| v["error"].as_str()).map(str::to_owned));
            let error = unavailable(format!("identity server answered {status} ({})", reason.unwrap_or_default()));
            return Err(Refused { error, retry_after, outage: status.is_server_error() });
        }
        let issued: Value =
            serde_json::from_str(&text).map_err(|_| unavailable("identity server answer is not JSON"))?;
        let wit = issued["wit"]
            .as_str()
            .or_else(|| issued["access_token"].as_str())
            .ok_or_else(|| unavailable("no wit in the answer"))?;
        let credentials = Credentials::new(wit, key)?;
        let issued_at = issued["issued_at"].as_u64().unwrap_or_else(|| inner.clock.now());
        tracing::info!(sub = %credentials.subject(), expires_at = credentials.expires_at(), "wimse: obtained a WIT");
        wimse_core::client::cred::record_expiry(&credentials);
        // Drawn once per WIT: workloads that obtained theirs together renew apart.
        let renew_at = renewal_time(issued_at, credentials.expires_at(), jitter());
        *inner.current.write().map_err(|_| unavailable("credential state poisoned"))? =
            Some(Current { credentials: Arc::new(credentials), renew_at });
        Ok(())
    }

    /// When the current WIT is due for renewal and when it expires (seconds).
    fn schedule(&self) -> Option<(f64, u64)> {
        let current = self.inner.current.read().ok()?;
        current.as_ref().map(|c| (c.renew_at, c.credentials.expires_at()))
    }

    /// Renews in the background until the task is aborted: at [`renewal_time`], and after a
    /// failure again after [`retry_delay`] (honouring a longer `Retry-After` from the server up
    /// to the WIT's expiry). While the identity server is down (no answer, or 5xx), one renewal
    /// per process and server retries; the process's other renewals for that server wait for
    /// it to succeed and then renew as long after the recovery as they fell due after the outage
    /// began (at most half of their WIT's remaining lifetime, plus a point of one retry
    /// interval), so a process with many identities costs a down server one request per interval
    /// and no burst at its recovery. Logs when renewal starts failing, a reminder a minute while it
    /// fails, once when the WIT expires, and once when renewal works again.
    pub fn spawn_renewal(&self) -> tokio::task::JoinHandle<()> {
        let source = self.clone();
        tokio::spawn(async move {
            let inner = &source.inner;
            let mut failures = 0u32;
            let mut expiry_reported = false;
            // Doublings of the key-check interval: a JWKS that keeps lacking the key the server
            // still signs with is what is wrong, and must not make every workload renew at
            // each check (up to 64 times the interval).
            let mut check_backoff = 0u32;
            // The kid a forced renewal was for: a renewed WIT signed by it again means the JWKS lies.
            let mut forced_for: Option<String> = None;
            let next_check = |backoff: u32| {
                inner.key_check.map(|every| {
                    tokio::time::Instant::now() + every.mul_f64(f64::from(1u32 << backoff) * (0.5 + jitter() / 2.0))
                })
            };
            let mut key_check_at = next_check(check_backoff);
            // While the identity server is down, one renewal of this process probes it (see
            // `outage`); the others wait for it to answer again.
            let gate = crate::outage::gate(&inner.url);
            let mut probing = None;
            loop {
                let now = inner.clock.now();
                let schedule = source.schedule();
                let wait = schedule.map_or(0.0, |(renew_at, _)| renew_at - now as f64);
                if failures == 0 && wait > 0.0 {
                    let until_check = key_check_at.map(|at| at.saturating_duration_since(tokio::time::Instant::now()));
                    if until_check == Some(Duration::ZERO) {
                        key_check_at = next_check(check_backoff);
                        if source.signing_key_published().await {
                            check_backoff = 0;
                            continue;
                        }
                        forced_for = source.current_kid();
                        metrics::counter!("wimse_wit_forced_renewals_total").increment(1);
                        tracing::warn!(
                            sub = %inner.sub,
                            "wimse: the identity server no longer publishes the key that signed this WIT (its key store was lost or replaced); renewing now"
                        );
                    } else {
                        // Re-checked at least every 30 s, so clock changes are noticed.
                        let sleep = Duration::from_secs_f64(wait.min(30.0));
                        tokio::time::sleep(until_check.map_or(sleep, |c| c.min(sleep))).await;
                        continue;
                    }
                }
                if probing.is_none() && gate.probed_elsewhere() {
                    // How long into the outage this renewal fell due.
                    let fell_due_after = gate.down_since().map_or(Duration::ZERO, |since| since.elapsed());
                    // Re-checked every interval, in case the prober's task is gone (its guard
                    // with it): then this one tries itself, and may become the prober.
                    while gate.probed_elsewhere() && !gate.wait_until_up(inner.retry_interval).await {}
                    // Recovered: the renewals that fell due during the outage reach the server at
                    // the rate they fell due, not all at once (see `recovery_delay`). Still down
                    // with no prober (its task is gone): this one tries now, and may probe.
                    if !gate.is_down() {
                        let until_expiry =
                            schedule.map_or(0, |(_, expires_at)| expires_at.saturating_sub(inner.clock.now()));
                        let delay = wimse_core::health::recovery_delay(
                            fell_due_after,
                            inner.retry_interval,
                            Duration::from_secs(until_expiry),
                            jitter(),
                        );
                        tokio::time::sleep(delay).await;
                    }
                }
                match source.try_renew().await {
                    Ok(()) => {
                        probing = None;
                        gate.mark_up();
                        if let Some(missing) = forced_for.take()
                            && source.current_kid().as_deref() == Some(missing.as_str())
                        {
                            check_backoff = (check_backoff + 1).min(6);
                            key_check_at = next_check(check_backoff);
                            tracing::warn!(
                                sub = %inner.sub,
                                kid = %missing,
                                "wimse: the identity server signs with a key its JWKS does not list (a stale cache or a lagging replica?); checking it less often"
                            );
                        }
                        if inner.health.succeeded() {
                            tracing::info!(sub = %inner.sub, failed_attempts = failures, "wimse: WIT renewal works again");
                        }
                        failures = 0;
                        expiry_reported = false;
                    }
                    Err(refused) => {
                        failures = failures.saturating_add(1);
                        if refused.outage {
                            gate.mark_down();
                            if probing.is_none() {
                                probing = gate.try_probe();
                            }
                        } else {
                            // The server answered (a refusal of this identity, a rate limit):
                            // it is up for the others, whatever becomes of this one.
                            probing = None;
                            gate.mark_up();
                        }
                        let now = inner.clock.now();
                        source.report_failure(&refused.error, now);
                        let expires_at = schedule.map_or(0, |(_, expires_at)| expires_at);
                        if now >= expires_at && !expiry_reported {
                            expiry_reported = true;
                            tracing::error!(sub = %inner.sub, "wimse: the WIT expired and could not be renewed; requests cannot be signed until the identity server answers");
                        }
                        let mut delay = retry_delay(failures, inner.retry_interval, jitter());
                        // A rate-limited workload waits as told, but not past its WIT's expiry.
                        if let Some(after) = refused.retry_after {
                            let until_expiry = expires_at.saturating_sub(now);
                            delay = delay.max(Duration::from_secs(after.min(until_expiry)));
                        }
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        })
    }

    /// The `kid` of the key that signed the current WIT.
    fn current_kid(&self) -> Option<String> {
        self.inner.current.read().ok()?.as_ref()?.credentials.issuer_kid().map(str::to_owned)
    }

    /// Whether the identity server's JWKS still has the key that signed the current WIT. Any
    /// doubt (no WIT, no `kid`, the server unreachable or answering nonsense) counts as yes:
    /// the scheduled renewal and its retries handle outages.
    async fn signing_key_published(&self) -> bool {
        let inner = &self.inner;
        let Some(kid) = self.current_kid() else { return true };
        let url = format!("{}/v1/bundle/jwks", inner.url.trim_end_matches('/'));
        // Conditional: an unchanged JWKS is a 304 without a body (what thousands of workloads
        // checking every minute cost the identity server).
        let held = inner.published.lock().ok().and_then(|p| p.clone());
        let fetch = async {
            let mut request = inner.client.get(url);
            if let Some((etag, _)) = &held {
                request = request.header(reqwest::header::IF_NONE_MATCH, etag);
            }
            let response = request.send().await.ok()?;
            if response.status() == reqwest::StatusCode::NOT_MODIFIED {
                return held.as_ref().map(|(_, kids)| kids.clone());
            }
            if !response.status().is_success() {
                return None;
            }
            let etag = response.headers().get(reqwest::header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let text = crate::bundle::read_capped(response, crate::bundle::MAX_DOCUMENT).await.ok()?;
            let jwks = serde_json::from_str::<Value>(&text).ok()?;
            let kids: Vec<String> =
                jwks["keys"].as_array()?.iter().filter_map(|k| k["kid"].as_str().map(str::to_owned)).collect();
            if let Ok(mut published) = inner.published.lock() {
                *published = etag.filter(|e| e.len() <= 256).map(|etag| (etag, kids.clone()));
            }
            Some(kids)
        };
        let Ok(Some(kids)) = tokio::time::timeout(inner.timeout, fetch).await else { return true };
        kids.contains(&kid)
    }

    fn report_failure(&self, error: &Error, now: u64) {
        match self.inner.health.failed(now) {
            Report::StartedFailing => tracing::warn!(
                sub = %self.inner.sub,
                reason = error.reason(),
                detail = error.detail(),
                "wimse: WIT renewal failed; retrying"
            ),
            Report::StillFailing { left_out } => tracing::warn!(
                sub = %self.inner.sub,
                reason = error.reason(),
                detail = error.detail(),
                failures_not_logged = left_out,
                "wimse: WIT renewal still failing"
            ),
            Report::Quiet => {}
        }
    }
}

impl CredentialSource for IssuerCredentials {
    fn credentials(&self, now: u64) -> Result<Arc<Credentials>, Error> {
        let current = self.inner.current.read().map_err(|_| unavailable("credential state poisoned"))?;
        match current.as_ref() {
            Some(current) if now < current.credentials.expires_at() => Ok(current.credentials.clone()),
            _ => Err(unavailable("the WIT expired and was not renewed")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[tokio::test]
    async fn kubernetes_bootstrap_path() {
        match super::Bootstrap::kubernetes() {
            super::Bootstrap::TokenFile(path) => {
                let expected = std::env::var_os("WIMSE_BOOTSTRAP_TOKEN_FILE")
                    .map(std::path::PathBuf::from)
                    .unwrap_or_else(|| super::KUBERNETES_SERVICE_ACCOUNT_TOKEN.into());
                assert_eq!(path, expected);
            }
            other => panic!("{other:?}"),
        }
        assert!(super::Bootstrap::TokenFile("/nonexistent/token".into()).token().await.is_err());
        let secret = super::Bootstrap::Token("s3cret-dev-token".into());
        assert_eq!(format!("{secret:?}"), "Token(..)");
        let builder = super::IssuerCredentials::builder("http://127.0.0.1:1", "spiffe://d/x", secret);
        assert!(!format!("{builder:?}").contains("s3cret"));
    }

    #[test]
    fn renewal_happens_between_half_and_two_thirds() {
        assert_eq!(super::renewal_time(1000, 4000, 0.0), 3000.0);
        assert!((super::renewal_time(1000, 4000, 0.999) - 2500.5).abs() < 0.01);
        assert_eq!(super::renewal_time(1000, 1000, 0.5), 1000.0);
    }

    #[test]
    fn jitter_spreads_workloads() {
        let draws: Vec<f64> = (0..1000).map(|_| super::jitter()).collect();
        assert!(draws.iter().all(|j| (0.0..1.0).contains(j)));
        // A thousand draws fill all ten deciles: not rounded, not constant.
        for decile in 0..10 {
            let low = decile as f64 / 10.0;
            assert!(draws.iter().any(|&j| j >= low && j < low + 0.1), "nothing in [{low}, {})", low + 0.1);
        }
        let mut distinct = draws.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        assert!(distinct.len() > 990);
    }

    #[test]
    fn retries_back_off_up_to_the_interval_and_stay_there() {
        let interval = Duration::from_secs(10);
        assert_eq!(super::retry_delay(1, interval, 0.999_999).as_millis(), 499);
        assert_eq!(super::retry_delay(1, interval, 0.0), Duration::from_millis(250));
        assert_eq!(super::retry_delay(3, interval, 0.0), Duration::from_secs(1));
        for failures in [6, 7, 50, u32::MAX] {
            let delay = super::retry_delay(failures, interval, 0.0);
            assert_eq!(delay, Duration::from_secs(5), "after {failures} failures");
            assert!(super::retry_delay(failures, interval, 0.999_999) <= interval);
        }
    }
}
