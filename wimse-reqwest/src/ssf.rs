//! Poll delivery of Security Event Tokens (RFC 8936) into a [`SetReceiver`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use wimse_core::server::signals::SetReceiver;
use wimse_core::{Error, ErrorKind};

/// The largest poll answer read (the SETs of one poll).
const MAX_ANSWER: usize = 1 << 20;

/// Polls one SSF stream and applies what it receives: every replica of a service polls its own
/// stream (its own bearer token), so all follow every event without sharing state. A SET that
/// validates is acknowledged on the next poll; one that does not is reported back in `setErrs`
/// (RFC 8936 §2.4) and never applied.
#[derive(Debug)]
pub struct SsfPoller {
    endpoint: String,
    bearer: Option<String>,
    receiver: Arc<SetReceiver>,
    http: reqwest::Client,
    interval: Duration,
    max_events: u32,
    ack: Vec<String>,
    errors: BTreeMap<String, Value>,
}

/// What one poll did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Polled {
    /// SETs applied.
    pub applied: usize,
    /// SETs refused (reported back on the next poll).
    pub refused: usize,
    /// The transmitter has more waiting.
    pub more_available: bool,
}

fn unavailable(detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::with_detail(ErrorKind::TrustAnchorsUnavailable, detail)
}

impl SsfPoller {
    /// Polls `endpoint` (the stream's poll URL: https, or http on loopback) into `receiver`, every
    /// 5 seconds.
    pub fn new(endpoint: impl Into<String>, receiver: Arc<SetReceiver>) -> Result<Self, Error> {
        let endpoint = endpoint.into();
        if !crate::secure_or_loopback(&endpoint) {
            let detail = format!("SSF poll endpoint {endpoint}: https, or http on loopback only");
            return Err(Error::with_detail(ErrorKind::InvalidConfiguration, detail));
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::with_detail(ErrorKind::InvalidConfiguration, e.to_string()))?;
        Ok(Self {
            endpoint,
            bearer: None,
            receiver,
            http,
            interval: Duration::from_secs(5),
            max_events: 100,
            ack: Vec::new(),
            errors: BTreeMap::new(),
        })
    }

    /// Authenticates polls with this bearer token (the stream's).
    pub fn bearer(mut self, token: impl Into<String>) -> Self {
        self.bearer = Some(token.into());
        self
    }

    /// How long to wait between polls when nothing more is waiting.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Polls once: acknowledges what was applied last time, reports what was refused, applies
    /// what arrives.
    pub async fn poll_once(&mut self) -> Result<Polled, Error> {
        let body = json!({
            "maxEvents": self.max_events,
            "returnImmediately": true,
            "ack": self.ack,
            "setErrs": self.errors,
        });
        let mut request = self
            .http
            .post(&self.endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        if let Some(token) = &self.bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| unavailable(format!("SSF poll: {e}")))?;
        if !response.status().is_success() {
            return Err(unavailable(format!("SSF poll: the transmitter answered {}", response.status())));
        }
        let answer =
            crate::read_capped(response, MAX_ANSWER).await.map_err(|e| unavailable(format!("SSF poll: {e}")))?;
        // Acknowledged and reported: the transmitter has them now.
        self.ack.clear();
        self.errors.clear();
        let answer: Value = serde_json::from_str(&answer).map_err(|e| unavailable(format!("SSF poll answer: {e}")))?;
        let sets = answer.get("sets").and_then(Value::as_object).cloned().unwrap_or_default();
        let mut polled =
            Polled { more_available: answer["moreAvailable"].as_bool().unwrap_or(false), ..Default::default() };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        for (jti, token) in sets {
            // Applying a SET may write the revocations' state file: off the runtime's threads.
            let receiver = self.receiver.clone();
            let token = token.as_str().map(str::to_owned);
            let outcome = tokio::task::spawn_blocking(move || token.map(|token| receiver.receive(&token, now)))
                .await
                .map_err(|e| unavailable(format!("SSF poll: {e}")))?;
            match outcome {
                Some(Ok(_)) => {
                    polled.applied += 1;
                    self.ack.push(jti);
                }
                Some(Err(refused)) => {
                    polled.refused += 1;
                    self.errors.insert(jti, json!({ "err": refused.code, "description": refused.description }));
                }
                None => {
                    polled.refused += 1;
                    self.errors.insert(jti, json!({ "err": "invalid_request", "description": "not a string" }));
                }
            }
        }
        Ok(polled)
    }

    /// Polls until the task is aborted: at once while more is waiting, else every interval;
    /// a failed poll is logged and retried at the next interval.
    pub fn spawn(mut self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match self.poll_once().await {
                    Ok(polled) if polled.more_available => continue,
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "wimse: polling the SSF stream failed"),
                }
                tokio::time::sleep(self.interval).await;
            }
        })
    }
}

/// The `[signals]` of a settings file at work: its receiver, sharing its revocations with the
/// verifiers built from the same settings (`Settings::verifier`, `Settings::complete`), and,
/// with `poll_url`, the poller following the stream on the current Tokio runtime. Dropping it
/// stops the polling. Without `poll_url`, SETs are pushed: hand each to
/// [`receiver`](Self::receiver)'s `push` (on a blocking thread: it may write the state file).
#[derive(Debug)]
pub struct SignalFeed {
    receiver: Arc<SetReceiver>,
    poller: Option<tokio::task::JoinHandle<()>>,
}

impl SignalFeed {
    /// The receiver (for a push route, or to read its revocations).
    pub fn receiver(&self) -> &Arc<SetReceiver> {
        &self.receiver
    }

    /// Whether SETs are polled.
    pub fn polls(&self) -> bool {
        self.poller.is_some()
    }
}

impl Drop for SignalFeed {
    fn drop(&mut self) {
        if let Some(poller) = &self.poller {
            poller.abort();
        }
    }
}

/// Starts what `settings` describe: the receiver, and the poller when `poll_url` is set (its
/// bearer token from `poll_token_file` or `poll_token_env`; an unreadable file or unset
/// variable is an error naming it).
///
/// ```no_run
/// # async fn run() -> Result<(), wimse_core::Error> {
/// let settings = wimse_core::config::Settings::load("/etc/wimse/service.toml")?;
/// let verifier = settings.verifier()?; // refuses what the signals revoke
/// let _feed = match &settings.signals {
///     Some(signals) => Some(wimse_reqwest::signals_from_settings(signals)?),
///     None => None,
/// };
/// # let _ = verifier;
/// # Ok(())
/// # }
/// ```
pub fn signals_from_settings(settings: &wimse_core::config::SignalSettings) -> Result<SignalFeed, Error> {
    let invalid = |field: &str, problem: String| {
        Error::with_detail(ErrorKind::InvalidConfiguration, format!("signals.{field}: {problem}"))
    };
    let receiver = settings.receiver()?;
    let Some(url) = &settings.poll_url else { return Ok(SignalFeed { receiver, poller: None }) };
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(invalid("poll_url", "polling needs a Tokio runtime: call this from within one".to_owned()));
    }
    let token = match (&settings.poll_token_file, &settings.poll_token_env) {
        (Some(file), _) => Some(
            std::fs::read_to_string(file)
                .map_err(|e| invalid("poll_token_file", format!("{}: {e}", file.display())))?
                .trim()
                .to_owned(),
        ),
        (None, Some(variable)) => Some(
            std::env::var(variable)
                .map_err(|_| invalid("poll_token_env", format!("{variable} is not set")))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    let mut poller = SsfPoller::new(url.clone(), receiver.clone())?;
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        poller = poller.bearer(token);
    }
    if let Some(seconds) = settings.poll_interval {
        poller = poller.interval(Duration::from_secs(seconds.max(1)));
    }
    Ok(SignalFeed { receiver, poller: Some(poller.spawn()) })
}
