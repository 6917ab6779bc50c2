//! Fetching a trust domain's bundle from its identity server and keeping verifiers current.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use wimse_core::id::TrustDomain;
use wimse_core::time::{Clock, SystemClock};
use wimse_core::trust::{TrustAnchors, TrustHandle};
use wimse_core::{Error, ErrorKind};

/// Keeps the anchors of one trust domain in a [`TrustHandle`] up to date from a SPIFFE bundle
/// URL (such as the identity server's `/v1/bundle/spiffe`).
///
/// Refreshes on the bundle's `spiffe_refresh_hint`, and early (rate-limited) when a verifier
/// met a key id it does not know. When the endpoint is down the last good keys keep serving
/// until they are `max_stale` seconds old; then verification for the domain answers 503. A
/// bundle whose `spiffe_sequence` goes backwards is refused; keys absent from a new bundle are
/// dropped.
pub struct BundleSource {
    domain: TrustDomain,
    url: String,
    client: reqwest::Client,
    max_stale: u64,
    min_interval: u64,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    sequence: Option<u64>,
    last_attempt: Option<u64>,
}

impl std::fmt::Debug for BundleSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleSource").field("domain", &self.domain).field("url", &self.url).finish_non_exhaustive()
    }
}

/// Largest bundle or identity-server answer read, in bytes: a hostile or broken endpoint
/// cannot make the client allocate without bound.
pub(crate) const MAX_DOCUMENT: usize = 1 << 20;

/// Reads a response body as text, refusing more than `cap` bytes.
pub(crate) async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<String, String> {
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
    /// successful fetch; at most one early refresh every 10 seconds.
    pub fn new(domain: TrustDomain, url: impl Into<String>) -> Self {
        Self {
            domain,
            url: url.into(),
            client: reqwest::Client::new(),
            max_stale: 3600,
            min_interval: 10,
            clock: Arc::new(SystemClock),
            state: Mutex::new(State::default()),
        }
    }

    /// How long fetched keys stay usable without a successful refresh, in seconds.
    pub fn max_stale(mut self, secs: u64) -> Self {
        self.max_stale = secs;
        self
    }

    /// The shortest time between two early refreshes, in seconds.
    pub fn min_interval(mut self, secs: u64) -> Self {
        self.min_interval = secs;
        self
    }

    /// Uses this HTTP client (for TLS settings, proxies, timeouts).
    pub fn with_client(mut self, client: reqwest::Client) -> Self {
        self.client = client;
        self
    }

    /// Uses another clock.
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Fetches the bundle once and, if it is acceptable, makes it the domain's anchors.
    /// Returns the refresh hint in seconds.
    pub async fn refresh(&self, trust: &TrustHandle) -> Result<u64, Error> {
        let result = self.fetch(trust).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("wimse_bundle_refreshes_total", "trust_domain" => self.domain.to_string(), "result" => outcome).increment(1);
        result
    }

    async fn fetch(&self, trust: &TrustHandle) -> Result<u64, Error> {
        let now = self.clock.now();
        if let Ok(mut state) = self.state.lock() {
            state.last_attempt = Some(now);
        }
        let response =
            self.client.get(&self.url).send().await.map_err(|e| unavailable(format!("bundle fetch: {e}")))?;
        if !response.status().is_success() {
            return Err(unavailable(format!("bundle fetch: HTTP {}", response.status())));
        }
        let text = read_capped(response, MAX_DOCUMENT).await.map_err(|e| unavailable(format!("bundle fetch: {e}")))?;
        let json: Value = serde_json::from_str(&text).map_err(|_| unavailable("the bundle is not JSON"))?;
        let sequence = json.get("spiffe_sequence").and_then(Value::as_u64);
        let hint = json.get("spiffe_refresh_hint").and_then(Value::as_u64).unwrap_or(300).clamp(1, 86_400);
        let mut state = self.state.lock().map_err(|_| unavailable("bundle state poisoned"))?;
        if let (Some(seen), Some(new)) = (state.sequence, sequence)
            && new < seen
        {
            return Err(unavailable(format!("bundle sequence went backwards ({new} < {seen})")));
        }
        let anchors = TrustAnchors::from_spiffe_bundle_json(&text).map_err(|e| unavailable(format!("bundle: {e}")))?;
        state.sequence = sequence.or(state.sequence);
        trust.set(self.domain.clone(), anchors.with_valid_until(now.saturating_add(self.max_stale)));
        tracing::info!(trust_domain = %self.domain, sequence, "wimse: trust bundle refreshed");
        Ok(hint)
    }

    /// Refreshes in the background until the task is dropped or aborted. Until the first
    /// successful fetch the domain has no usable keys (503).
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
                    next = match self.refresh(&trust).await {
                        Ok(hint) => now.saturating_add(hint),
                        Err(error) => {
                            tracing::warn!(trust_domain = %self.domain, reason = error.reason(), detail = error.detail(), "wimse: keeping the last trust bundle");
                            now.saturating_add(self.min_interval.max(1))
                        }
                    };
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    fn early_allowed(&self, now: u64) -> bool {
        self.state
            .lock()
            .map(|s| s.last_attempt.is_none_or(|last| now >= last.saturating_add(self.min_interval)))
            .unwrap_or(false)
    }
}
