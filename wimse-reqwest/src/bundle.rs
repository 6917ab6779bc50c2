//! Fetching a trust domain's bundle from its identity server and keeping verifiers current.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use wimse_core::health::{Health, Report};
use wimse_core::id::TrustDomain;
use wimse_core::protocol::trust::{TrustAnchors, TrustHandle};
use wimse_core::time::{Clock, SystemClock};
use wimse_core::{Error, ErrorKind};

/// Keeps the anchors of one trust domain in a [`TrustHandle`] up to date from a SPIFFE bundle
/// URL (such as the identity server's `/v1/bundle/spiffe`).
///
/// Refreshes on the bundle's `spiffe_refresh_hint` (each time at a random point of its last
/// 30 %, so verifiers started together do not stay in step), and early (rate-limited) when a
/// verifier met a key id it does not know. Refreshes are conditional: with the `ETag` of the
/// bundle held, an unchanged bundle is a 304 without a body (the identity server's bundles,
/// and a cache or CDN in front of them, answer so). Every fetch is bounded by a timeout (10 s by default), so an
/// endpoint that hangs cannot stop refreshing. When the endpoint is down the last good keys keep
/// serving until they are `max_stale` seconds old; then verification for the domain answers
/// 503. Keys absent from a new bundle are dropped.
///
/// **Sequence and key-store epoch.** A bundle whose `spiffe_sequence` goes backwards is refused
/// (a rollback, or a stale replica). The identity server also publishes the identity of its key
/// store, [`STORE_EPOCH_MEMBER`]; when a key store is lost and recreated, its sequence restarts
/// but its epoch is new, and the new store's bundle is accepted at once. A bundle of an epoch
/// that was replaced earlier is refused: the old store coming back is a rollback too.
pub struct BundleSource {
    domain: TrustDomain,
    url: String,
    client: std::sync::OnceLock<reqwest::Client>,
    max_stale: u64,
    min_interval: u64,
    timeout: Duration,
    clock: Arc<dyn Clock>,
    health: Health,
    state: Mutex<State>,
}

pub use wimse_core::protocol::trust::STORE_EPOCH_MEMBER;

/// Epochs remembered as replaced, to refuse their return.
const REPLACED_EPOCHS: usize = 16;

#[derive(Default)]
struct State {
    sequence: Option<u64>,
    epoch: Option<String>,
    replaced: std::collections::VecDeque<String>,
    last_attempt: Option<u64>,
    stale_reported: bool,
    /// The `ETag` of the bundle held, and its refresh hint, for conditional refreshes.
    etag: Option<String>,
    hint: u64,
}

impl State {
    /// Checks a bundle's sequence and epoch against what was accepted before.
    fn admit(&self, sequence: Option<u64>, epoch: Option<&str>) -> Result<(), Error> {
        if let Some(epoch) = epoch {
            if self.replaced.iter().any(|old| old == epoch) {
                return Err(unavailable("bundle of a key store that was replaced (rollback refused)"));
            }
            if self.epoch.as_deref().is_some_and(|current| current != epoch) {
                // A new key store: its sequence starts over.
                return Ok(());
            }
        }
        match (self.sequence, sequence) {
            (Some(seen), Some(new)) if new < seen => {
                Err(unavailable(format!("bundle sequence went backwards ({new} < {seen})")))
            }
            // A plain JWKS after a sequenced bundle would switch rollback protection off.
            (Some(_), None) => Err(unavailable("bundle has no spiffe_sequence, after one that had")),
            _ => Ok(()),
        }
    }

    fn accept(&mut self, sequence: Option<u64>, epoch: Option<String>) {
        if let Some(epoch) = epoch {
            if self.epoch.as_ref().is_some_and(|current| *current != epoch) {
                tracing::warn!(new_epoch = %epoch, "wimse: the identity server's key store was replaced; following its new keys");
                if let Some(old) = self.epoch.take() {
                    self.replaced.push_back(old);
                }
                if self.replaced.len() > REPLACED_EPOCHS {
                    self.replaced.pop_front();
                }
                self.sequence = None;
            }
            self.epoch = Some(epoch);
        }
        self.sequence = sequence.or(self.sequence);
    }
}

impl std::fmt::Debug for BundleSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleSource").field("domain", &self.domain).field("url", &self.url).finish_non_exhaustive()
    }
}

/// Largest bundle or identity-server answer read, in bytes: a hostile or broken endpoint
/// cannot make the client allocate without bound.
pub const MAX_DOCUMENT: usize = 1 << 20;

/// Reads a response body as text, refusing more than `cap` bytes (by `Content-Length` before
/// reading, and while reading for bodies without one) and bodies that are not UTF-8.
pub async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<String, String> {
    if response.content_length().is_some_and(|len| len > cap as u64) {
        return Err(format!("answer larger than {cap} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > cap {
            return Err(format!("answer larger than {cap} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| "answer is not UTF-8".to_owned())
}

fn unavailable(detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::with_detail(ErrorKind::TrustAnchorsUnavailable, detail)
}

impl BundleSource {
    /// Fetches `domain`'s bundle from `url`. Defaults: keys go stale one hour after the last
    /// successful fetch; at most one early refresh (or retry after a failure) every 10 seconds;
    /// 10 seconds per fetch.
    pub fn new(domain: TrustDomain, url: impl Into<String>) -> Self {
        Self {
            domain,
            url: url.into(),
            client: std::sync::OnceLock::new(),
            max_stale: 3600,
            min_interval: 10,
            timeout: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
            health: Health::new(60),
            state: Mutex::new(State::default()),
        }
    }

    /// How long fetched keys stay usable without a successful refresh, in seconds.
    pub fn max_stale(mut self, secs: u64) -> Self {
        self.max_stale = secs;
        self
    }

    /// The shortest time between two early refreshes, and the wait before retrying a failed
    /// one, in seconds.
    pub fn min_interval(mut self, secs: u64) -> Self {
        self.min_interval = secs;
        self
    }

    /// The longest one fetch may take, answer included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Uses this HTTP client (for TLS settings, proxies). The fetch timeout applies on top.
    pub fn client(self, client: reqwest::Client) -> Self {
        let _ = self.client.set(client);
        self
    }

    /// Uses another clock.
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Fetches the bundle once, within the timeout, and, if it is acceptable, makes it the
    /// domain's anchors. Returns the refresh hint in seconds.
    pub async fn refresh(&self, trust: &TrustHandle) -> Result<u64, Error> {
        self.refresh_now(trust, false).await
    }

    /// [`refresh`](Self::refresh); `past_caches` asks HTTP caches in between to check with the
    /// identity server (`Cache-Control: no-cache`): an early refresh for an unknown key id must
    /// not get a CDN's copy from before the key was published.
    async fn refresh_now(&self, trust: &TrustHandle, past_caches: bool) -> Result<u64, Error> {
        let result = match tokio::time::timeout(self.timeout, self.fetch(trust, past_caches)).await {
            Ok(result) => result,
            Err(_) => Err(unavailable(format!("bundle fetch: no answer within {:?}", self.timeout))),
        };
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("wimse_bundle_refreshes_total", "trust_domain" => self.domain.to_string(), "result" => outcome).increment(1);
        result
    }

    /// The HTTP client, made once (with the timeout) unless one was given.
    fn http_client(&self) -> &reqwest::Client {
        self.client.get_or_init(|| {
            reqwest::Client::builder().connect_timeout(self.timeout).timeout(self.timeout).build().unwrap_or_default()
        })
    }

    async fn fetch(&self, trust: &TrustHandle, past_caches: bool) -> Result<u64, Error> {
        let now = self.clock.now();
        let etag = match self.state.lock() {
            Ok(mut state) => {
                state.last_attempt = Some(now);
                state.etag.clone()
            }
            Err(_) => None,
        };
        let mut request = self.http_client().get(&self.url);
        if let Some(etag) = &etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        if past_caches {
            request = request.header(reqwest::header::CACHE_CONTROL, "no-cache");
        }
        let response = request.send().await.map_err(|e| unavailable(format!("bundle fetch: {e}")))?;
        if response.status() == reqwest::StatusCode::NOT_MODIFIED {
            return self.not_modified(trust, etag.is_some(), now);
        }
        let new_etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 256)
            .map(str::to_owned);
        if !response.status().is_success() {
            return Err(unavailable(format!("bundle fetch: HTTP {}", response.status())));
        }
        let text = read_capped(response, MAX_DOCUMENT).await.map_err(|e| unavailable(format!("bundle fetch: {e}")))?;
        let json: Value = serde_json::from_str(&text).map_err(|_| unavailable("the bundle is not JSON"))?;
        let sequence = json.get("spiffe_sequence").and_then(Value::as_u64);
        let epoch = json.get(STORE_EPOCH_MEMBER).and_then(Value::as_str).filter(|e| !e.is_empty() && e.len() <= 128);
        let hint = json.get("spiffe_refresh_hint").and_then(Value::as_u64).unwrap_or(300).clamp(1, 86_400);
        let mut state = self.state.lock().map_err(|_| unavailable("bundle state poisoned"))?;
        state.admit(sequence, epoch)?;
        let anchors = TrustAnchors::from_spiffe_bundle_json(&text).map_err(|e| unavailable(format!("bundle: {e}")))?;
        state.accept(sequence, epoch.map(str::to_owned));
        state.stale_reported = false;
        state.etag = new_etag;
        state.hint = hint;
        trust.set(self.domain.clone(), anchors.with_valid_until(now.saturating_add(self.max_stale)));
        tracing::debug!(trust_domain = %self.domain, sequence, "wimse: trust bundle refreshed");
        Ok(hint)
    }

    /// A 304 to a conditional refresh: the anchors held are current, usable for `max_stale`
    /// from now. Refused when nothing was asked conditionally or nothing is held (then the
    /// next refresh asks for the whole bundle).
    fn not_modified(&self, trust: &TrustHandle, conditional: bool, now: u64) -> Result<u64, Error> {
        let mut state = self.state.lock().map_err(|_| unavailable("bundle state poisoned"))?;
        let held = trust.read(|store| store.get(&self.domain).filter(|a| !a.keys().is_empty()).cloned());
        match held {
            Some(anchors) if conditional => {
                trust.set(self.domain.clone(), anchors.with_valid_until(now.saturating_add(self.max_stale)));
                state.stale_reported = false;
                tracing::debug!(trust_domain = %self.domain, "wimse: trust bundle unchanged (304)");
                Ok(state.hint.max(1))
            }
            _ => {
                state.etag = None;
                Err(unavailable("bundle fetch: 304 Not Modified for a bundle not held"))
            }
        }
    }

    /// Refreshes in the background until the task is dropped or aborted. Until the first
    /// successful fetch the domain has no usable keys (503).
    ///
    /// Logs a warning when refreshing starts failing, a reminder a minute while it fails, an
    /// error once when the anchors go stale, and one event when refreshing works again.
    pub fn spawn(self, trust: TrustHandle) -> tokio::task::JoinHandle<()> {
        if !trust.read(|store| store.get(&self.domain).is_some()) {
            trust.set(self.domain.clone(), TrustAnchors::new().with_valid_until(0));
        }
        tokio::spawn(async move {
            let mut next = 0u64;
            loop {
                let now = self.clock.now();
                let early = trust.take_refresh_request(&self.domain) && self.early_allowed(now);
                if now >= next || early {
                    next = match self.refresh_now(&trust, early && now < next).await {
                        Ok(hint) => {
                            if self.health.succeeded() {
                                tracing::info!(trust_domain = %self.domain, "wimse: trust bundle refreshed again");
                            }
                            now.saturating_add(jittered(hint, wimse_core::health::jitter()))
                        }
                        Err(error) => {
                            self.report_failure(&error);
                            now.saturating_add(self.min_interval.max(1))
                        }
                    };
                }
                self.report_stale(&trust);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    fn report_failure(&self, error: &Error) {
        match self.health.failed(self.clock.now()) {
            Report::StartedFailing => tracing::warn!(
                trust_domain = %self.domain,
                reason = error.reason(),
                detail = error.detail(),
                "wimse: trust bundle refresh failed; keeping the last bundle until it goes stale"
            ),
            Report::StillFailing { left_out } => tracing::warn!(
                trust_domain = %self.domain,
                reason = error.reason(),
                detail = error.detail(),
                failures_not_logged = left_out,
                "wimse: trust bundle refresh still failing"
            ),
            Report::Quiet => {}
        }
    }

    /// Logs once when the domain's anchors go stale (verification for it now answers 503).
    fn report_stale(&self, trust: &TrustHandle) {
        let now = self.clock.now();
        let stale = trust.read(|store| {
            store.get(&self.domain).is_some_and(|anchors| !anchors.keys().is_empty() && !anchors.usable_at(now))
        });
        let Ok(mut state) = self.state.lock() else { return };
        if stale && !state.stale_reported {
            state.stale_reported = true;
            tracing::error!(trust_domain = %self.domain, max_stale = self.max_stale, "wimse: trust bundle is stale; verification for this trust domain fails until a refresh succeeds");
        }
    }

    fn early_allowed(&self, now: u64) -> bool {
        self.state
            .lock()
            .map(|s| s.last_attempt.is_none_or(|last| now >= last.saturating_add(self.min_interval)))
            .unwrap_or(false)
    }
}

/// The wait until the next refresh: a point of the last 30 % of `hint` chosen by `jitter` in
/// `[0, 1)`, never longer than the hint (keys are pre-published two hints ahead of signing).
fn jittered(hint: u64, jitter: f64) -> u64 {
    let spread = hint.saturating_mul(3) / 10;
    hint.saturating_sub((spread as f64 * jitter.clamp(0.0, 1.0)) as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::State;

    #[test]
    fn refreshes_spread_over_the_last_30_percent_of_the_hint() {
        assert_eq!(super::jittered(300, 0.0), 300);
        assert_eq!(super::jittered(300, 0.999), 211);
        assert_eq!(super::jittered(300, 0.5), 255);
        assert_eq!(super::jittered(1, 0.9), 1, "never zero");
        let far = super::jittered(u64::MAX, 1.0);
        assert!(far < u64::MAX && far > u64::MAX / 2, "no overflow: {far}");
    }

    #[test]
    fn sequence_and_epoch_rules() {
        let mut state = State::default();
        state.admit(Some(4), Some("a")).unwrap();
        state.accept(Some(4), Some("a".into()));
        assert!(state.admit(Some(3), Some("a")).is_err(), "rollback within a store");
        assert!(state.admit(Some(3), None).is_err(), "no epoch: sequence alone");
        assert!(state.admit(None, Some("a")).is_err(), "no sequence after one was seen");
        assert!(State::default().admit(None, None).is_ok(), "a plain JWKS source stays usable");
        state.admit(Some(4), Some("a")).unwrap();
        // The store was lost: a new epoch restarts the sequence.
        state.admit(Some(1), Some("b")).unwrap();
        state.accept(Some(1), Some("b".into()));
        assert_eq!(state.sequence, Some(1));
        state.admit(Some(2), Some("b")).unwrap();
        assert!(state.admit(Some(9), Some("a")).is_err(), "the replaced store cannot come back");
        assert!(state.admit(Some(0), Some("b")).is_err());
        for i in 0..40 {
            let epoch = format!("e{i}");
            state.admit(Some(1), Some(&epoch)).unwrap();
            state.accept(Some(1), Some(epoch));
        }
        assert!(state.replaced.len() <= super::REPLACED_EPOCHS, "bounded memory");
    }
}
