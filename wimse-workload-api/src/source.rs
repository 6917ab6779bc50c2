//! Streams that keep a signer's credentials, a verifier's WIT anchors and the mutual-TLS
//! certificate and anchors current, reconnecting with backoff.
//!
//! Each message of a Workload API stream is complete: what it no longer contains is no longer
//! used. `PermissionDenied` mid-stream revokes everything the stream delivered; `Unimplemented`
//! and `InvalidArgument` stop the stream (logged once: retrying cannot help); anything else is
//! retried with jittered backoff capped at the retry interval.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use wimse_core::client::cred::{CredentialSource, Credentials};
use wimse_core::health::{Health, Report, jitter, retry_delay};
use wimse_core::id::{TrustDomain, WorkloadId};
use wimse_core::protocol::trust::TrustHandle;
use wimse_core::protocol::wic::{CurrentCertificate, WicAnchors};
use wimse_core::time::{Clock, SystemClock};

use crate::client::{
    WIT_PROFILE, X509_PROFILE, open_first, parse_wit_bundles, parse_wit_svid, parse_x509_svid, x509_bundles,
};
use crate::{Endpoint, WitSvid, WorkloadApiClient, WorkloadApiError, X509Svid};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// Aborts the background stream when the last handle goes away.
#[derive(Debug)]
struct Task(Mutex<Option<tokio::task::JoinHandle<()>>>);

impl Task {
    fn new() -> Self {
        Self(Mutex::new(None))
    }
    fn set(&self, handle: tokio::task::JoinHandle<()>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(handle);
        }
    }
    fn is_running(&self) -> bool {
        self.0.lock().map(|slot| slot.as_ref().is_some_and(|h| !h.is_finished())).unwrap_or(false)
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Ok(Some(handle)) = self.0.get_mut().map(Option::take) {
            handle.abort();
        }
    }
}

/// One stream of the Workload API and what to do with its messages.
trait Stream: Send + 'static {
    type Message: Send + 'static;
    /// For logs: `WIT-SVID`, `WIT bundle`, `X.509-SVID`.
    const WHAT: &'static str;
    fn open(
        &self,
        client: &WorkloadApiClient,
    ) -> impl Future<Output = Result<tonic::Streaming<Self::Message>, WorkloadApiError>> + Send;
    fn profile(&self) -> &'static str;
    /// Applies a complete message.
    fn apply(&mut self, message: Self::Message) -> Result<(), WorkloadApiError>;
    /// The endpoint took the identity away: stop using what the stream delivered.
    fn revoke(&mut self);
}

/// Opens `stream` and applies its first message, retrying what can be retried (the endpoint
/// not listening yet, `Unavailable` while it starts, `PermissionDenied` until an entry appears)
/// with backoff until `timeout`: a workload starting next to its agent waits for it, and says
/// so once, at the first failed attempt. The last error is returned at the deadline;
/// `Unimplemented`, `InvalidArgument` and a path that is not a socket at once.
async fn start<S: Stream>(
    client: &WorkloadApiClient,
    stream: &mut S,
    timeout: Duration,
    retry_interval: Duration,
) -> Result<tonic::Streaming<S::Message>, WorkloadApiError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut failures = 0u32;
    let mut last_error = None;
    loop {
        let attempt = async {
            let (message, messages) = open_first(stream.open(client), stream.profile()).await?;
            stream.apply(message).map(|()| messages)
        };
        let error = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(messages)) => return Ok(messages),
            Ok(Err(error)) if !error.is_retryable() => return Err(error),
            Ok(Err(error)) => error,
            // What the earlier attempts found says more than the deadline.
            Err(_) => {
                return Err(
                    last_error.unwrap_or_else(|| WorkloadApiError::NoAnswer(format!("nothing within {timeout:?}")))
                );
            }
        };
        failures = failures.saturating_add(1);
        let wake = tokio::time::Instant::now() + retry_delay(failures, retry_interval, jitter());
        if wake >= deadline {
            return Err(error);
        }
        if failures == 1 {
            tracing::info!(
                endpoint = %client.endpoint(),
                "wimse: {} not available yet ({error}); waiting up to {timeout:?} for the Workload API",
                S::WHAT
            );
        } else {
            tracing::debug!(endpoint = %client.endpoint(), %error, "wimse: {} not available yet; retrying", S::WHAT);
        }
        last_error = Some(error);
        tokio::time::sleep_until(wake).await;
    }
}

/// Follows `stream` until it cannot help: reconnects after errors with backoff, logs a failure
/// when it starts, a reminder a minute, and the recovery.
async fn follow<S: Stream>(
    client: WorkloadApiClient,
    mut stream: S,
    mut messages: Option<tonic::Streaming<S::Message>>,
    retry_interval: Duration,
) {
    let health = Health::new(60);
    let mut failures = 0u32;
    loop {
        let outcome = match messages.take() {
            Some(open) => Ok(open),
            None => stream.open(&client).await,
        };
        let error = match outcome {
            Ok(mut open) => loop {
                match open.message().await {
                    Ok(Some(message)) => match stream.apply(message) {
                        Ok(()) => {
                            failures = 0;
                            if health.succeeded() {
                                tracing::info!(endpoint = %client.endpoint(), "wimse: {} updates work again", S::WHAT);
                            }
                        }
                        // The previous material stays in use (it was valid when delivered).
                        Err(error) => {
                            tracing::error!(endpoint = %client.endpoint(), %error, "wimse: {} update refused", S::WHAT)
                        }
                    },
                    Ok(None) => break WorkloadApiError::NoAnswer("the stream ended".into()),
                    Err(status) => break WorkloadApiError::from_status(&status, stream.profile()),
                }
            },
            Err(error) => error,
        };
        if matches!(error, WorkloadApiError::PermissionDenied(_)) {
            stream.revoke();
        }
        if !error.is_retryable() {
            tracing::error!(endpoint = %client.endpoint(), %error, "wimse: {} stream stopped; not retrying", S::WHAT);
            return;
        }
        failures = failures.saturating_add(1);
        match health.failed(SystemClock.now()) {
            Report::StartedFailing => {
                tracing::warn!(endpoint = %client.endpoint(), %error, "wimse: {} stream failed; reconnecting", S::WHAT)
            }
            Report::StillFailing { left_out } => tracing::warn!(
                endpoint = %client.endpoint(), %error, failures_not_logged = left_out,
                "wimse: {} stream still failing", S::WHAT
            ),
            Report::Quiet => {}
        }
        tokio::time::sleep(retry_delay(failures, retry_interval, jitter())).await;
    }
}

// ---- WIT-SVIDs -------------------------------------------------------------------------------

/// Which WIT-SVID of a response a [`WitSvidSource`] uses.
#[derive(Debug, Clone, Default)]
struct Choice {
    spiffe_id: Option<WorkloadId>,
    hint: Option<String>,
}

impl Choice {
    /// Whether the SVID delivered for `spiffe_id` with `hint` is the one to use.
    fn accepts(&self, spiffe_id: &str, hint: &str) -> bool {
        self.spiffe_id.as_ref().is_none_or(|id| id.as_str() == spiffe_id)
            && self.hint.as_ref().is_none_or(|wanted| wanted == hint)
    }

    fn missing(&self) -> WorkloadApiError {
        WorkloadApiError::InvalidResponse(format!(
            "no WIT-SVID{}{} in the response",
            self.spiffe_id.as_ref().map(|id| format!(" for {id}")).unwrap_or_default(),
            self.hint.as_ref().map(|h| format!(" with hint {h:?}")).unwrap_or_default()
        ))
    }
}

struct WitSvids {
    choice: Choice,
    current: Arc<watch::Sender<Option<WitSvid>>>,
}

impl Stream for WitSvids {
    type Message = crate::proto::WitsvidResponse;
    const WHAT: &'static str = "WIT-SVID";

    fn open(
        &self,
        client: &WorkloadApiClient,
    ) -> impl Future<Output = Result<tonic::Streaming<Self::Message>, WorkloadApiError>> + Send {
        let client = client.clone();
        let spiffe_id = self.choice.spiffe_id.clone();
        async move { client.stream_wit_svids(spiffe_id.as_ref()).await }
    }
    fn profile(&self) -> &'static str {
        WIT_PROFILE
    }
    fn apply(&mut self, message: Self::Message) -> Result<(), WorkloadApiError> {
        // On duplicate hints the first wins, as the standard says; only the chosen SVID is
        // parsed, so a broken other identity does not hold this one back.
        let chosen = message.svids.into_iter().find(|svid| self.choice.accepts(&svid.spiffe_id, &svid.hint));
        let Some(chosen) = chosen else {
            // Each message is complete: an SVID it no longer carries must not be used.
            self.revoke();
            return Err(self.choice.missing());
        };
        let svid = parse_wit_svid(chosen)?;
        let changed = self.current.borrow().as_ref().is_none_or(|old| old.credentials.wit() != svid.credentials.wit());
        if changed {
            tracing::info!(
                sub = %svid.spiffe_id,
                expires_at = svid.credentials.expires_at(),
                "wimse: WIT-SVID from the Workload API"
            );
            wimse_core::client::cred::record_expiry(&svid.credentials);
            self.current.send_replace(Some(svid));
        }
        Ok(())
    }
    fn revoke(&mut self) {
        self.current.send_replace(None);
    }
}

/// A [`CredentialSource`] fed by the Workload API's `FetchWITSVID` stream: the WIT-SVID of this
/// process (the one with the configured SPIFFE ID or hint, else the first), replaced as the
/// endpoint rotates it, without a restart. Clones share one stream, which stops when the last
/// clone is dropped.
#[derive(Debug, Clone)]
pub struct WitSvidSource {
    current: Arc<watch::Sender<Option<WitSvid>>>,
    task: Arc<Task>,
}

/// Settings of a [`WitSvidSource`].
#[derive(Debug)]
pub struct WitSvidSourceBuilder {
    endpoint: Endpoint,
    choice: Choice,
    timeout: Duration,
    retry_interval: Duration,
}

impl WitSvidSourceBuilder {
    /// Uses the WIT-SVID of this identity only (and asks the endpoint for it alone).
    pub fn spiffe_id(mut self, id: WorkloadId) -> Self {
        self.choice.spiffe_id = Some(id);
        self
    }
    /// Uses the WIT-SVID with this hint (the operator's label, such as `internal`).
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.choice.hint = Some(hint.into());
        self
    }
    /// How long to wait for the first WIT-SVID. Default 10 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// The longest wait between reconnection attempts. Default 10 s.
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval.max(Duration::from_millis(100));
        self
    }

    /// Waits for the first WIT-SVID, then follows the stream in the background.
    ///
    /// Fails at once with [`WorkloadApiError::Unimplemented`] when the endpoint has no WIT-SVID
    /// profile, [`WorkloadApiError::PermissionDenied`] when it has no identity for this process.
    pub async fn start(self) -> Result<WitSvidSource, WorkloadApiError> {
        let client = WorkloadApiClient::new(self.endpoint);
        let current = Arc::new(watch::Sender::new(None));
        let mut stream = WitSvids { choice: self.choice, current: current.clone() };
        let messages = start(&client, &mut stream, self.timeout, self.retry_interval).await?;
        let task = Arc::new(Task::new());
        task.set(tokio::spawn(follow(client, stream, Some(messages), self.retry_interval)));
        Ok(WitSvidSource { current, task })
    }
}

impl WitSvidSource {
    /// Settings for a source reading from `endpoint`.
    pub fn builder(endpoint: Endpoint) -> WitSvidSourceBuilder {
        WitSvidSourceBuilder {
            endpoint,
            choice: Choice::default(),
            timeout: DEFAULT_TIMEOUT,
            retry_interval: DEFAULT_RETRY_INTERVAL,
        }
    }

    /// The WIT-SVID in use (none after the endpoint revoked it).
    pub fn current(&self) -> Option<WitSvid> {
        self.current.borrow().clone()
    }

    /// Notified on every change of the WIT-SVID in use.
    pub fn subscribe(&self) -> watch::Receiver<Option<WitSvid>> {
        self.current.subscribe()
    }

    /// Whether the stream is still followed (false after `Unimplemented` or `InvalidArgument`).
    pub fn is_following(&self) -> bool {
        self.task.is_running()
    }
}

impl CredentialSource for WitSvidSource {
    fn credentials(&self, now: u64) -> wimse_core::Result<Arc<Credentials>> {
        match self.current.borrow().as_ref() {
            Some(svid) if now < svid.credentials.expires_at() => Ok(svid.credentials.clone()),
            Some(_) => Err(unavailable("the WIT-SVID expired and the Workload API has not renewed it")),
            None => Err(unavailable("the Workload API revoked this process's WIT-SVID")),
        }
    }
}

fn unavailable(detail: &'static str) -> wimse_core::Error {
    wimse_core::Error::with_detail(wimse_core::ErrorKind::CredentialsUnavailable, detail)
}

// ---- WIT bundles -----------------------------------------------------------------------------

struct WitBundles {
    trust: TrustHandle,
    /// The trust domains this stream set, so a later message can take them away again.
    applied: Vec<TrustDomain>,
    updates: Arc<watch::Sender<u64>>,
}

impl Stream for WitBundles {
    type Message = crate::proto::WitBundlesResponse;
    const WHAT: &'static str = "WIT bundle";

    fn open(
        &self,
        client: &WorkloadApiClient,
    ) -> impl Future<Output = Result<tonic::Streaming<Self::Message>, WorkloadApiError>> + Send {
        let client = client.clone();
        async move { client.stream_wit_bundles().await }
    }
    fn profile(&self) -> &'static str {
        WIT_PROFILE
    }
    fn apply(&mut self, message: Self::Message) -> Result<(), WorkloadApiError> {
        let bundles = parse_wit_bundles(message)?;
        let domains: Vec<TrustDomain> = bundles.iter().map(|(d, _)| d.clone()).collect();
        for gone in self.applied.iter().filter(|d| !domains.contains(d)) {
            self.trust.remove(gone);
        }
        for (domain, anchors) in bundles {
            self.trust.set(domain, anchors);
        }
        tracing::debug!(domains = domains.len(), "wimse: WIT bundles from the Workload API");
        self.applied = domains;
        self.updates.send_modify(|n| *n += 1);
        Ok(())
    }
    fn revoke(&mut self) {
        for domain in self.applied.drain(..) {
            self.trust.remove(&domain);
        }
        self.updates.send_modify(|n| *n += 1);
    }
}

/// Keeps a [`TrustHandle`] current from the `FetchWITBundles` stream: each trust domain's WIT
/// keys are set as they arrive, and a trust domain a later message leaves out is removed again
/// (domains configured by other means are not touched). Stops when dropped.
#[derive(Debug)]
pub struct WitBundleWatch {
    updates: watch::Receiver<u64>,
    _task: Task,
}

impl WitBundleWatch {
    /// Waits for the first bundles (10 s at most), then follows the stream.
    pub async fn start(endpoint: Endpoint, trust: TrustHandle) -> Result<Self, WorkloadApiError> {
        Self::start_with(endpoint, trust, DEFAULT_TIMEOUT, DEFAULT_RETRY_INTERVAL).await
    }

    /// Like [`start`](Self::start) with a first-message timeout and a retry interval.
    pub async fn start_with(
        endpoint: Endpoint,
        trust: TrustHandle,
        timeout: Duration,
        retry_interval: Duration,
    ) -> Result<Self, WorkloadApiError> {
        let client = WorkloadApiClient::new(endpoint);
        let updates = Arc::new(watch::Sender::new(0));
        let receiver = updates.subscribe();
        let mut stream = WitBundles { trust, applied: Vec::new(), updates };
        let retry_interval = retry_interval.max(Duration::from_millis(100));
        let messages = start(&client, &mut stream, timeout, retry_interval).await?;
        let task = Task::new();
        task.set(tokio::spawn(follow(client, stream, Some(messages), retry_interval)));
        Ok(Self { updates: receiver, _task: task })
    }

    /// Notified after every applied bundle message (the value counts them).
    pub fn updates(&self) -> watch::Receiver<u64> {
        self.updates.clone()
    }
}

// ---- X.509-SVIDs -----------------------------------------------------------------------------

struct X509Svids {
    hint: Option<String>,
    certificate: Option<CurrentCertificate>,
    anchors: WicAnchors,
    applied: Vec<TrustDomain>,
    current: Arc<watch::Sender<Option<X509Svid>>>,
}

impl Stream for X509Svids {
    type Message = crate::proto::X509svidResponse;
    const WHAT: &'static str = "X.509-SVID";

    fn open(
        &self,
        client: &WorkloadApiClient,
    ) -> impl Future<Output = Result<tonic::Streaming<Self::Message>, WorkloadApiError>> + Send {
        let client = client.clone();
        async move { client.stream_x509_svids().await }
    }
    fn profile(&self) -> &'static str {
        X509_PROFILE
    }
    fn apply(&mut self, message: Self::Message) -> Result<(), WorkloadApiError> {
        let chosen = message.svids.into_iter().find(|svid| self.hint.as_ref().is_none_or(|hint| &svid.hint == hint));
        let Some(chosen) = chosen else {
            self.revoke();
            return Err(WorkloadApiError::InvalidResponse(format!("no X.509-SVID with hint {:?}", self.hint)));
        };
        let svid = parse_x509_svid(chosen)?;
        let bundles = x509_bundles(std::slice::from_ref(&svid), message.federated_bundles)?;
        let invalid = |e: wimse_core::Error| WorkloadApiError::InvalidResponse(e.to_string());
        // Everything is checked before anything changes: no half-applied update.
        let scratch = WicAnchors::with_provider(self.anchors.provider().clone());
        for (domain, cas) in &bundles {
            scratch.set(domain.clone(), cas.clone()).map_err(invalid)?;
        }
        let certificate = match &self.certificate {
            Some(current) => {
                svid.certificate.certified_key(self.anchors.provider()).map_err(invalid)?;
                current.clone()
            }
            None => CurrentCertificate::new(&svid.certificate, self.anchors.provider().clone()).map_err(invalid)?,
        };
        // The anchors first: a peer with the new CA must not be refused once our new certificate is out.
        let domains: Vec<TrustDomain> = bundles.iter().map(|(d, _)| d.clone()).collect();
        for (domain, cas) in bundles {
            self.anchors.set(domain, cas).map_err(invalid)?;
        }
        for gone in self.applied.iter().filter(|d| !domains.contains(d)) {
            self.anchors.remove(gone);
        }
        self.applied = domains;
        certificate.set(&svid.certificate).map_err(invalid)?;
        self.certificate = Some(certificate);
        tracing::info!(sub = %svid.spiffe_id, "wimse: X.509-SVID from the Workload API");
        self.current.send_replace(Some(svid));
        Ok(())
    }
    fn revoke(&mut self) {
        // rustls needs a certificate to present: the revoked one stays in the resolver until it
        // expires, but the anchors go, so no handshake with this process's peers verifies.
        for domain in self.applied.drain(..) {
            self.anchors.remove(&domain);
        }
        self.current.send_replace(None);
    }
}

/// Keeps mutual TLS current from the `FetchX509SVID` stream: this process's certificate (the
/// X.509-SVID with the configured hint, else the first) in a [`CurrentCertificate`], and every
/// trust domain's CA certificates (its own and the federated ones) in [`WicAnchors`]. New
/// handshakes use the new material; stops when dropped.
#[derive(Debug)]
pub struct X509SvidWatch {
    certificate: CurrentCertificate,
    current: Arc<watch::Sender<Option<X509Svid>>>,
    _task: Task,
}

impl X509SvidWatch {
    /// Waits for the first X.509-SVID (10 s at most), then follows the stream. `hint` picks one
    /// of several SVIDs.
    pub async fn start(endpoint: Endpoint, anchors: WicAnchors, hint: Option<&str>) -> Result<Self, WorkloadApiError> {
        let client = WorkloadApiClient::new(endpoint);
        let current = Arc::new(watch::Sender::new(None));
        let mut stream = X509Svids {
            hint: hint.map(str::to_owned),
            certificate: None,
            anchors,
            applied: Vec::new(),
            current: current.clone(),
        };
        let messages = start(&client, &mut stream, DEFAULT_TIMEOUT, DEFAULT_RETRY_INTERVAL).await?;
        let certificate = stream.certificate.clone().ok_or_else(|| {
            WorkloadApiError::InvalidResponse("the first X.509-SVID message had no usable SVID".into())
        })?;
        let task = Task::new();
        task.set(tokio::spawn(follow(client, stream, Some(messages), DEFAULT_RETRY_INTERVAL)));
        Ok(Self { certificate, current, _task: task })
    }

    /// The certificate to give rustls ([`wimse_core::protocol::wic::client_config`],
    /// [`wimse_core::protocol::wic::server_config`]); it follows rotation.
    pub fn certificate(&self) -> CurrentCertificate {
        self.certificate.clone()
    }

    /// The X.509-SVID in use (none after the endpoint revoked it).
    pub fn current(&self) -> Option<X509Svid> {
        self.current.borrow().clone()
    }

    /// Notified on every change.
    pub fn subscribe(&self) -> watch::Receiver<Option<X509Svid>> {
        self.current.subscribe()
    }
}
