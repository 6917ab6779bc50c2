//! The inbound path's credential and claim stages: a request's headers in, a
//! [`VerifiedCaller`] or a named rejection out. Adapters drive it through a
//! [`Pipeline`](crate::server::pipeline::Pipeline), which adds the policy between the two.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::draft::{AUTHORIZATION_HEADER, PARENT_REQUEST_HEADER, TXN_TOKEN_HEADER, WIT_HEADER};
use crate::error::{Error, ErrorKind, Result};
use crate::id::IdentifierPolicy;
use crate::jose::{Algorithm, Backend};
use crate::protocol::httpsig::{self, RequestParts, SignatureValidation, has_signature};
use crate::protocol::trust::{TrustHandle, TrustStore};
use crate::protocol::txn::{TxnTokenValidation, VerifiedTxnToken};
use crate::protocol::wit::{DEFAULT_MAX_TOKEN_LEN, MAX_LEEWAY_SECS, VerifiedWit, WitValidation, validate_wit};
use crate::protocol::wpt::{ProofContext, WptValidation};
use crate::replay::{
    CallerQuota, Claim, DEFAULT_CALLER_QUOTA, InMemoryReplayStore, QuotaOwner, ReplayClaim, ReplayStore,
};
use crate::server::audit;
use crate::server::caller::{Credential, PendingCaller, ProofMethod, VerifiedCaller};
use crate::server::framing::{HeaderSource, extract_wpt_credentials, single_value};
use crate::server::token_cache::{TokenCache, WitCache};
use crate::time::{Clock, SystemClock};

/// Verifier settings. Build with [`VerifierConfig::new`] and the `with_*` methods; the defaults
/// are the secure ones.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifierConfig {
    /// Exact `aud` values naming this service (deployment-specific audiences).
    pub audiences: Vec<String>,
    /// External origins of this service (`https://api.example`). A WPT whose `aud` is an origin
    /// followed by the request path (without query) is for this service. This is how services
    /// behind proxies are configured: the origin is what callers dial, never the `Host` field.
    pub origins: Vec<String>,
    /// Clock leeway in seconds (at most 300). Defaults to 30.
    pub leeway: u64,
    /// Longest WIT lifetime accepted, in seconds. Defaults to 24 hours.
    pub max_wit_lifetime: u64,
    /// Longest WPT lifetime accepted, in seconds. Defaults to 300.
    pub max_wpt_lifetime: u64,
    /// Largest token accepted, in bytes. Defaults to 8 KiB.
    pub max_token_len: usize,
    /// Algorithms a WIT's `cnf.jwk` may name.
    pub pop_algorithms: Vec<Algorithm>,
    /// Lower-case names of context-token fields (besides `Txn-Token`) bound through `oth`.
    pub context_tokens: Vec<String>,
    /// Identifier rules for `sub`.
    pub identifier_policy: IdentifierPolicy,
    /// Crypto backend.
    pub backend: Backend,
    /// Accept WIT + WPT requests. Defaults to `true`.
    pub accept_wpt: bool,
    /// Accept WIT + HTTP message signature requests. Defaults to `true`.
    pub accept_http_signatures: bool,
    /// HTTP signatures created longer ago than this are refused (seconds). Defaults to 300.
    pub max_signature_age: u64,
    /// Components an HTTP signature must cover besides the profile's (lower-case field names
    /// or derived components such as `@authority`). Defaults to none.
    pub required_components: Vec<String>,
    /// How many verified WITs are remembered (with the token, so at most this many times
    /// `max_token_len` bytes) so a steady caller's WIT is verified once, not on every request.
    /// 0 disables the cache. Defaults to 10 000.
    pub wit_cache_capacity: usize,
    /// Most live replay claims one workload identity may hold (see
    /// [`CallerQuota`]); past it that caller gets 429 with
    /// `Retry-After` while the others go on. Defaults to
    /// [`DEFAULT_CALLER_QUOTA`] (100 000).
    pub caller_quota: usize,
    /// How a request's `Txn-Token` is checked. `None` (the default): it is not validated, only
    /// its binding to the proof (`tth`, signature coverage) is, and
    /// [`VerifiedCaller::transaction`] is always `None`.
    pub txn_tokens: Option<TxnTokenValidation>,
    /// **Development only.** Every refusal's problem body names the failed check: its `reason`
    /// (a signed request's too, which http-signature-08 answers without one) and the error's
    /// `detail` (e.g. the audience received and the ones accepted). Defaults to `false`; see
    /// [`reveal_reasons`](Self::reveal_reasons).
    pub reveal_reasons: bool,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        let wit = WitValidation::default();
        Self {
            audiences: Vec::new(),
            origins: Vec::new(),
            leeway: wit.leeway,
            max_wit_lifetime: wit.max_lifetime,
            max_wpt_lifetime: WptValidation::default().max_lifetime,
            max_token_len: DEFAULT_MAX_TOKEN_LEN,
            pop_algorithms: wit.pop_algorithms,
            context_tokens: Vec::new(),
            identifier_policy: IdentifierPolicy::default(),
            backend: Backend::default(),
            accept_wpt: true,
            accept_http_signatures: true,
            max_signature_age: 300,
            required_components: Vec::new(),
            wit_cache_capacity: 10_000,
            caller_quota: DEFAULT_CALLER_QUOTA,
            txn_tokens: None,
            reveal_reasons: false,
        }
    }
}

impl VerifierConfig {
    /// Accepts only WPT requests.
    pub fn only_wpt(mut self) -> Self {
        self.accept_http_signatures = false;
        self.accept_wpt = true;
        self
    }
    /// Accepts only HTTP-signature requests.
    pub fn only_http_signatures(mut self) -> Self {
        self.accept_wpt = false;
        self.accept_http_signatures = true;
        self
    }
    /// Defaults; add at least one audience or origin.
    pub fn new() -> Self {
        Self::default()
    }
    /// Accepts WPTs whose `aud` is exactly `aud`.
    pub fn audience(mut self, aud: impl Into<String>) -> Self {
        self.audiences.push(aud.into());
        self
    }
    /// Accepts WPTs whose `aud` is `origin` + request path.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origins.push(origin.into().trim_end_matches('/').to_owned());
        self
    }
    /// Sets the clock leeway (seconds).
    pub fn leeway(mut self, secs: u64) -> Self {
        self.leeway = secs;
        self
    }
    /// Sets the longest accepted WPT lifetime (seconds).
    pub fn max_wpt_lifetime(mut self, secs: u64) -> Self {
        self.max_wpt_lifetime = secs;
        self
    }
    /// Sets the longest accepted WIT lifetime (seconds).
    pub fn max_wit_lifetime(mut self, secs: u64) -> Self {
        self.max_wit_lifetime = secs;
        self
    }
    /// Understands the context-token field `name` in `oth`.
    pub fn context_token(mut self, name: impl Into<String>) -> Self {
        self.context_tokens.push(name.into().to_ascii_lowercase());
        self
    }
    /// Chooses the crypto backend.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }
    /// Sets the maximum age of an HTTP signature (seconds since its `created`).
    pub fn max_signature_age(mut self, secs: u64) -> Self {
        self.max_signature_age = secs;
        self
    }
    /// Requires HTTP signatures to cover `component` too (a field name or a derived component).
    pub fn required_component(mut self, component: impl Into<String>) -> Self {
        self.required_components.push(component.into().to_ascii_lowercase());
        self
    }
    /// Validates every request's `Txn-Token` (and requires one if `validation.required`); see
    /// [`crate::protocol::txn`]. The TTS keys are the anchors of `validation.trust_domain` in this
    /// verifier's trust store unless [`Verifier::txn_token_keys`] names others.
    pub fn txn_tokens(mut self, validation: TxnTokenValidation) -> Self {
        self.txn_tokens = Some(validation);
        self
    }
    /// Sets the most live replay claims one caller may hold.
    pub fn caller_quota(mut self, claims: usize) -> Self {
        self.caller_quota = claims;
        self
    }
    /// **Development only**: puts the failed check (`reason`, `detail`) into every refusal's
    /// problem body, signed requests included, for a developer without a tracing subscriber
    /// (the logs carry the same). It tells any caller why it was refused, which the
    /// http-signature-08 profile keeps from callers on purpose: never in production. A verifier
    /// built with it logs a warning (settings: `reveal_reasons = true`, `WIMSE_REVEAL_REASONS=1`).
    pub fn reveal_reasons(mut self) -> Self {
        self.reveal_reasons = true;
        self
    }

    fn validate(&self) -> Result<()> {
        let bad = |d: &'static str| Err(Error::with_detail(ErrorKind::InvalidConfiguration, d));
        if self.audiences.is_empty() && self.origins.is_empty() {
            return bad("no audience or origin configured: every WPT would be refused");
        }
        if self.caller_quota == 0 {
            return bad("caller_quota is 0: every proof would be refused");
        }
        if !self.accept_wpt && !self.accept_http_signatures {
            return bad("neither WPT nor HTTP signatures accepted: every request would be refused");
        }
        if self.leeway > MAX_LEEWAY_SECS {
            return bad("leeway above 300 seconds");
        }
        if let Some(txn) = &self.txn_tokens {
            txn.check_bounds()?;
        }
        let reserved = [AUTHORIZATION_HEADER, WIT_HEADER, TXN_TOKEN_HEADER];
        if self.context_tokens.iter().any(|n| reserved.contains(&n.as_str()) || n.is_empty()) {
            return bad("context tokens cannot be Authorization, Workload-Identity-Token or Txn-Token");
        }
        if let Some(origin) = self.origins.iter().find(|o| !is_origin(o)) {
            return Err(Error::with_detail(
                ErrorKind::InvalidConfiguration,
                format!("origin {origin:?} is not scheme://authority (e.g. https://api.example)"),
            ));
        }
        Ok(())
    }

    /// Adds what this service accepts to an `audience_mismatch` (the received `aud` is already
    /// in it), so a misconfigured audience shows in the logs at once.
    fn explain_audience(&self, error: Error, path: &str) -> Error {
        if error.kind() != &ErrorKind::AudienceMismatch {
            return error;
        }
        let origins: Vec<String> = self.origins.iter().map(|o| format!("{o}{}", path_without_query(path))).collect();
        let signature_mode = error.is_signature_mode();
        let explained = Error::with_detail(
            ErrorKind::AudienceMismatch,
            format!(
                "{}; this service accepts {:?} (audiences) or {:?} (origins + path)",
                error.detail().unwrap_or("no aud"),
                self.audiences,
                origins
            ),
        );
        if signature_mode { explained.in_signature_mode() } else { explained }
    }

    fn audience_matches(&self, aud: &str, path: &str) -> bool {
        self.audiences.iter().any(|a| a == aud)
            || self.origins.iter().any(|o| aud.strip_prefix(o.as_str()) == Some(path_without_query(path)))
    }
}

/// `scheme://authority` with an http(s) scheme and nothing after the authority.
fn is_origin(origin: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else { return false };
    matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https")
        && !authority.is_empty()
        && !authority.contains(['/', '?', '#', '@', ' '])
        && authority.parse::<http::uri::Authority>().is_ok()
}

fn path_without_query(path: &str) -> &str {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    match &path[..end] {
        "" => "/",
        p => p,
    }
}

/// The parts of an inbound request the verifier reads.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestView<'a, H: ?Sized> {
    /// The method (`GET` unless set).
    pub method: &'a str,
    /// Request target path, with the query if any (ignored for the audience).
    pub path: &'a str,
    /// The authority the request was sent to (`Host` / `:authority`); signed only on CONNECT.
    pub authority: &'a str,
    /// The header fields.
    pub headers: &'a H,
    /// The received body, when the adapter read it. A signed request with content must be
    /// given its body ([`body`](Self::body)): without it, one that has a `Content-Digest`, a
    /// non-zero `Content-Length` or a `Transfer-Encoding` is refused
    /// ([`ErrorKind::BodyNotSupplied`]), never accepted unchecked; so is a signed request of any
    /// method but GET, HEAD, DELETE, OPTIONS, TRACE and CONNECT (an HTTP/2 body needs no header
    /// announcing it): give it `Some(b"")` when it is known to be empty.
    pub body: Option<&'a [u8]>,
    /// The body has not been read yet: check what the header fields can tell, and leave the
    /// body to [`PendingCaller::body_received`].
    body_follows: bool,
}

impl<'a, H: ?Sized> RequestView<'a, H> {
    /// A `GET` of `path` (with query) with these headers and no body.
    pub fn new(path: &'a str, headers: &'a H) -> Self {
        Self { method: "GET", path, authority: "", headers, body: None, body_follows: false }
    }

    /// Says the body is still to be read: a signed request is then checked on its header fields
    /// alone (WIT, signature, audience, parameters, and the policy), so a server reads the body
    /// only of a caller that passed them, and the returned [`PendingCaller`] must be given the
    /// body ([`PendingCaller::body_received`]) before it can be confirmed.
    pub fn body_follows(mut self) -> Self {
        self.body_follows = true;
        self.body = None;
        self
    }

    /// Sets the method.
    pub fn method(mut self, method: &'a str) -> Self {
        self.method = method;
        self
    }

    /// Sets the authority.
    pub fn authority(mut self, authority: &'a str) -> Self {
        self.authority = authority;
        self
    }

    /// Sets the received body.
    pub fn body(mut self, body: &'a [u8]) -> Self {
        self.body = Some(body);
        self
    }
}

/// Verifies WIMSE requests. Cheap to clone; share one per service.
///
/// ```
/// use wimse_core::prelude::*;
///
/// let now = 1_800_000_000;
/// let issuer_key = SigningKey::generate(Algorithm::ES256)?;
/// let workload_key = SigningKey::generate(Algorithm::ES256)?;
/// let id: WorkloadId = "spiffe://prod.example/orders".parse()?;
/// let wit = WitIssuer::new(issuer_key.clone()).issue(&id, workload_key.public_jwk(), now)?;
/// let wpt = WptBuilder::new(&workload_key, &wit, "https://payments.example/charge").sign(now)?;
///
/// let trust = TrustStore::new().with(id.trust_domain(), TrustAnchors::new().key(issuer_key.public_key().clone()));
/// let verifier = Verifier::new(trust, VerifierConfig::new().origin("https://payments.example"))?
///     .clock(FixedClock::new(now));
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("workload-identity-token", wit.parse()?);
/// headers.insert("authorization", format!("WPT {wpt}").parse()?);
/// // With the in-memory replay store the answer is ready at once; `verify(..).await` works
/// // with every store.
/// let caller = verifier.verify_sync(&RequestView::new("/charge?id=7", &headers))?;
/// assert_eq!(caller.id(), &id);
///
/// // The same proof again is a replay.
/// let again = verifier.verify_sync(&RequestView::new("/charge", &headers));
/// assert_eq!(again.unwrap_err().kind(), &ErrorKind::ReplayedProof);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Verifier {
    trust: TrustHandle,
    config: Arc<VerifierConfig>,
    wit_validation: Arc<WitValidation>,
    wpt_validation: Arc<WptValidation>,
    signature_validation: Arc<SignatureValidation>,
    wit_cache: Arc<WitCache>,
    txn_keys: Option<TrustHandle>,
    txn_cache: Arc<TokenCache<VerifiedTxnToken>>,
    replay: Arc<dyn ReplayStore>,
    quota: Arc<CallerQuota>,
    clock: Arc<dyn Clock>,
    audit_log: Option<crate::server::audit_log::AuditLog>,
    revocations: Option<crate::server::signals::Revocations>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("trust_domains", &self.trust.read(TrustStore::len))
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier whose anchors are `trust` (shared with whoever updates them).
    pub fn trust_handle(mut self, trust: TrustHandle) -> Self {
        self.trust = trust;
        // Generations count per handle: a cache filled under another handle must not answer.
        self.wit_cache = Arc::new(WitCache::new(self.config.wit_cache_capacity));
        self.txn_cache = Arc::new(TokenCache::new(txn_cache_capacity(&self.config)));
        self
    }

    /// A verifier with an in-memory replay cache and the system clock. Fails on a configuration
    /// that would refuse everything or weaken checks beyond the bounds (no audience, leeway > 300 s).
    pub fn new(trust: TrustStore, config: VerifierConfig) -> Result<Self> {
        config.validate()?;
        if config.reveal_reasons {
            tracing::warn!(
                "wimse: reveal_reasons is ON: refusals tell every caller which check failed. \
                 For development only; never run a production service with it"
            );
        }
        let wit_validation = WitValidation {
            leeway: config.leeway,
            max_lifetime: config.max_wit_lifetime,
            pop_algorithms: config.pop_algorithms.clone(),
            max_token_len: config.max_token_len,
            identifier_policy: config.identifier_policy.clone(),
            backend: config.backend,
        };
        let wpt_validation = WptValidation {
            leeway: config.leeway,
            max_lifetime: config.max_wpt_lifetime,
            max_token_len: config.max_token_len,
            // The parent request's field is understood by every verifier here (see
            // `parent_request`).
            context_tokens: config
                .context_tokens
                .iter()
                .cloned()
                .chain(
                    (!config.context_tokens.iter().any(|n| n == PARENT_REQUEST_HEADER))
                        .then(|| PARENT_REQUEST_HEADER.to_owned()),
                )
                .collect(),
            backend: config.backend,
        };
        let signature_validation = SignatureValidation {
            leeway: config.leeway,
            max_age: config.max_signature_age,
            required_components: config.required_components.clone(),
            backend: config.backend,
            ..SignatureValidation::default()
        };
        Ok(Self {
            quota: Arc::new(CallerQuota::new(config.caller_quota)),
            wit_cache: Arc::new(WitCache::new(config.wit_cache_capacity)),
            txn_keys: None,
            txn_cache: Arc::new(TokenCache::new(txn_cache_capacity(&config))),
            signature_validation: Arc::new(signature_validation),
            trust: TrustHandle::new(trust),
            config: Arc::new(config),
            wit_validation: Arc::new(wit_validation),
            wpt_validation: Arc::new(wpt_validation),
            replay: Arc::new(InMemoryReplayStore::default()),
            clock: Arc::new(SystemClock),
            audit_log: None,
            revocations: None,
        })
    }

    /// Uses another replay store (shared between replicas, or sized differently). The default
    /// is an [`InMemoryReplayStore`] of default capacity.
    pub fn replay_store(mut self, store: impl ReplayStore + 'static) -> Self {
        self.replay = Arc::new(store);
        self
    }

    /// Counts callers' live claims in `quota` instead of a quota of its own: verifiers that
    /// claim in one shared replay store (the routes of a gateway, say) must share their quota
    /// too, or a caller allowed on several of them could fill the store alone.
    pub fn with_caller_quota(mut self, quota: Arc<CallerQuota>) -> Self {
        self.quota = quota;
        self
    }

    /// Verifies Txn-Tokens with the anchors `keys` holds for the configured trust domain (a
    /// Transaction Token Service other than the identity server that signs WITs), instead of
    /// this verifier's own trust store.
    pub fn txn_token_keys(mut self, keys: TrustHandle) -> Self {
        self.txn_keys = Some(keys);
        self.txn_cache = Arc::new(TokenCache::new(txn_cache_capacity(&self.config)));
        self
    }

    /// Records every decision on the requests this verifier authenticates in `log` (the
    /// verifier's, the pipeline's and the adapters' decisions on the caller): a tamper-evident
    /// audit trail ([`audit_log`](crate::server::audit_log)).
    pub fn audit_log(mut self, log: crate::server::audit_log::AuditLog) -> Self {
        self.audit_log = Some(log);
        self
    }

    /// Refuses callers whose credential, and Txn-Tokens whose subject, a risk signal revoked
    /// ([`signals`](crate::server::signals)): checked on every request, cached credentials
    /// included.
    pub fn revocations(mut self, revocations: crate::server::signals::Revocations) -> Self {
        self.revocations = Some(revocations);
        self
    }

    /// Refuses `caller` if a risk signal revoked its credential or its Txn-Token's subject.
    pub(crate) fn check_revocations(&self, caller: &VerifiedCaller) -> Result<()> {
        let Some(revocations) = &self.revocations else { return Ok(()) };
        if revocations.is_empty() {
            return Ok(());
        }
        let issued_at = match &caller.credential {
            crate::server::caller::Credential::Wit(wit) => wit.claims().iat,
            // Its `notBefore`: issuers backdate it for clock differences (ours by 60 s) and do
            // not set it after the issuance, so a certificate issued before a revocation is
            // refused, and one issued within that margin after it too (on the safe side).
            crate::server::caller::Credential::Certificate { not_before, .. } => *not_before,
        };
        revocations.check_workload(&caller.id, issued_at)?;
        if let Some(txn) = caller.transaction() {
            revocations.check_subject(txn.subject(), txn.issued_at())?;
        }
        Ok(())
    }

    /// Where the decisions on a request for `method` and `path` are recorded, if anywhere.
    pub(crate) fn audit_context(
        &self,
        method: &str,
        path: &str,
    ) -> Option<Arc<crate::server::audit_log::AuditContext>> {
        let log = self.audit_log.as_ref()?;
        Some(Arc::new(crate::server::audit_log::AuditContext {
            log: log.clone(),
            action: method.to_owned(),
            resource: path.split('?').next().unwrap_or_default().to_owned(),
            policy: None,
        }))
    }

    /// Uses another clock.
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The current time on this verifier's clock (seconds since the epoch).
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// The configuration.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// Stages 1–2 of the inbound pipeline: reads the request's credentials and checks them
    /// (CPU only, no I/O). The caller still has to be [confirmed](Self::confirm) against
    /// replay. Rejections are logged (target `wimse::audit`) with their reason, never tokens.
    pub fn authenticate<H: HeaderSource + ?Sized>(&self, request: &RequestView<'_, H>) -> Result<PendingCaller> {
        let signed = has_signature(request.headers);
        let result = if signed {
            self.signed_request_credentials(request).map_err(Error::in_signature_mode)
        } else {
            self.wpt_request_credentials(request).map_err(|error| match error.kind() {
                // Neither a WPT nor a WIMSE signature, but a signature of some kind: say what is
                // wrong with it rather than send its author looking for a WPT.
                ErrorKind::MissingWpt => httpsig::why_no_wimse_signature(request.headers).unwrap_or(error),
                _ => error,
            })
        };
        // The Txn-Token's own validity, checked after (and independently of) its binding.
        let result = result.and_then(|mut pending| {
            self.attach_transaction(&mut pending.caller)?;
            self.check_revocations(&pending.caller)?;
            Ok(pending)
        });
        if let Err(error) = &result {
            let mode = if signed { "http-signature" } else { "wpt" };
            audit::rejected(mode, None, error);
            if let Some(log) = &self.audit_log {
                audit::log_unverified(log, mode, request.method, request.path, error);
            }
        }
        let mut result = result;
        if let Ok(pending) = &mut result {
            pending.caller.audit = self.audit_context(request.method, request.path);
        }
        result
    }

    /// Checks the caller's `Txn-Token` (already read and bound) as configured, and attaches the
    /// verified transaction. Without a Txn-Token configuration it does nothing.
    pub(crate) fn attach_transaction(&self, caller: &mut VerifiedCaller) -> Result<()> {
        let Some(cfg) = &self.config.txn_tokens else { return Ok(()) };
        let Some(raw) = caller.txn_token.as_deref() else {
            return match cfg.required {
                true => Err(Error::with_detail(ErrorKind::MissingTxnToken, "no Txn-Token field")),
                false => Ok(()),
            };
        };
        caller.transaction = Some(self.validate_txn_token(raw, cfg)?);
        Ok(())
    }

    /// Validates a Txn-Token against the TTS keys, through the verified-token cache: the same
    /// transaction's token is verified once per verifier, not on every hop's request.
    fn validate_txn_token(&self, raw: &str, cfg: &TxnTokenValidation) -> Result<Arc<VerifiedTxnToken>> {
        let keys = self.txn_keys.as_ref().unwrap_or(&self.trust);
        let now = self.clock.now();
        let generation = keys.generation();
        if let Some(hit) = self.txn_cache.get(raw, generation, now, cfg.leeway) {
            metrics::counter!("wimse_txn_token_cache_total", "result" => "hit").increment(1);
            return Ok(hit);
        }
        metrics::counter!("wimse_txn_token_cache_total", "result" => "miss").increment(1);
        let result = keys.read(|store| {
            let verified = crate::protocol::txn::validate(raw, store, cfg, now)?;
            Ok::<_, Error>((Arc::new(verified), store.get(&cfg.trust_domain).and_then(|a| a.valid_until())))
        });
        match result {
            Ok((verified, usable_until)) => {
                self.txn_cache.insert(raw, verified.clone(), generation, usable_until, now);
                Ok(verified)
            }
            Err(error) => {
                // A new TTS key not fetched yet: ask the bundle refresher (rate-limited there).
                if matches!(error.kind(), ErrorKind::TxnTokenUnknownKey | ErrorKind::TrustAnchorsUnavailable) {
                    keys.request_refresh(&cfg.trust_domain);
                }
                Err(error)
            }
        }
    }

    /// Stage 4: claims the caller's proof, within the caller's quota, in the replay store.
    /// Resolves to the [`VerifiedCaller`], or to [`ErrorKind::ReplayedProof`],
    /// [`ErrorKind::ReplayQuotaExceeded`] (429), [`ErrorKind::ReplayCacheFull`] or
    /// [`ErrorKind::ReplayCacheUnavailable`] (503). Ready at once with the in-memory store.
    pub fn confirm(&self, pending: PendingCaller) -> Confirm {
        let PendingCaller { caller, claim, content } = pending;
        if content.is_some() {
            // Admitted on its header fields, and nobody checked its body: fail closed.
            let error = Error::with_detail(ErrorKind::BodyNotSupplied, "the signed request's body was never checked");
            return Confirm::done(Err(settle_rejection(&caller, error)));
        }
        let Some(claim) = claim else {
            return Confirm::done(caller.audit_admitted().map(|()| caller));
        };
        let now = self.clock.now();
        let owner = self.quota.owner(&caller.id);
        if let Err(error) = self.quota.reserve(owner, claim.expires_at(), now) {
            return Confirm::done(Err(settle_rejection(&caller, error)));
        }
        let waiting = Waiting {
            claim: self.replay.claim(&claim, now),
            caller: Some(caller),
            quota: self.quota.clone(),
            owner,
            expires_at: claim.expires_at(),
        };
        let mut confirm = Confirm(ConfirmState::Waiting(waiting));
        // The in-memory store has answered already: settle without a poll.
        if let ConfirmState::Waiting(waiting) = &mut confirm.0
            && let Some(result) = waiting.try_settle()
        {
            return Confirm::done(result);
        }
        confirm
    }

    /// The credential and claim stages together, without a policy (adapters use a
    /// [`Pipeline`](crate::server::pipeline::Pipeline)): `verifier.verify(&request).await`.
    pub fn verify<H: HeaderSource + ?Sized>(&self, request: &RequestView<'_, H>) -> Confirm {
        match self.authenticate(request) {
            Ok(pending) => self.confirm(pending),
            Err(error) => Confirm::done(Err(error)),
        }
    }

    /// [`verify`](Self::verify) for synchronous callers (tools, tests) whose replay store answers
    /// at once, like the in-memory store. With an asynchronous store (Redis) it fails closed
    /// with [`ErrorKind::ReplayCacheUnavailable`]: use `verify(..).await` there.
    pub fn verify_sync<H: HeaderSource + ?Sized>(&self, request: &RequestView<'_, H>) -> Result<VerifiedCaller> {
        self.verify(request).take_ready().unwrap_or_else(|| {
            Err(Error::with_detail(
                ErrorKind::ReplayCacheUnavailable,
                "the replay store is asynchronous: use `verify(..).await`",
            ))
        })
    }

    fn signed_request_credentials<H: HeaderSource + ?Sized>(
        &self,
        request: &RequestView<'_, H>,
    ) -> Result<PendingCaller> {
        if !self.config.accept_http_signatures {
            return Err(Error::with_detail(ErrorKind::NoWimseSignature, "HTTP signatures are not accepted here"));
        }
        let now = self.clock.now();
        let wit = single_value(request.headers, WIT_HEADER, self.config.max_token_len, ErrorKind::DuplicateWit)?
            .ok_or_else(|| Error::new(ErrorKind::MissingWit))?;
        let wit = self.validate_wit(wit, now)?;
        let (path, query) = match request.path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (request.path, None),
        };
        let parts = RequestParts {
            method: request.method,
            scheme: "https",
            authority: request.authority,
            path,
            query,
            headers: request.headers,
        };
        let audience_ok = |aud: &str| self.config.audience_matches(aud, request.path);
        let (sig, content) = if request.body_follows {
            let sig = httpsig::verify_request_headers(&parts, &wit, audience_ok, &self.signature_validation, now);
            let digests = field_lines(request.headers, "content-digest")?;
            (sig, Some(digests))
        } else {
            let sig = httpsig::verify_request(&parts, request.body, &wit, audience_ok, &self.signature_validation, now);
            (sig, None)
        };
        let sig = sig.map_err(|e| self.config.explain_audience(e, request.path))?;
        // Covered context tokens are authenticated by the signature.
        let txn_token = single_value(
            request.headers,
            TXN_TOKEN_HEADER,
            self.config.max_token_len,
            ErrorKind::DuplicateContextToken,
        )?;
        let leeway = self.config.leeway;
        let claim = ReplayClaim::signature_nonce(
            &sig.nonce,
            sig.expires.saturating_add(leeway),
            sig.created.saturating_sub(leeway),
        );
        let method =
            ProofMethod::HttpSignature { nonce: sig.nonce, expires: sig.expires, sign_response: sig.sign_response };
        // Covered when present (`COVERED_IF_PRESENT`), so authenticated like the Txn-Token.
        let mut context = BTreeMap::new();
        if let Some(parent) = parent_request(request.headers)? {
            context.insert(PARENT_REQUEST_HEADER.to_owned(), parent);
        }
        let caller = self.caller(&wit, method, txn_token, context);
        Ok(PendingCaller { caller, claim: Some(claim), content })
    }

    /// Validates a WIT against the current anchors; a token naming a key the anchors do not
    /// have asks the bundle fetcher for a refresh.
    fn validate_wit(&self, wit: &str, now: u64) -> Result<Arc<VerifiedWit>> {
        let generation = self.trust.generation();
        if let Some(hit) = self.wit_cache.get(wit, generation, now, self.wit_validation.leeway) {
            metrics::counter!("wimse_wit_cache_total", "result" => "hit").increment(1);
            return Ok(hit);
        }
        metrics::counter!("wimse_wit_cache_total", "result" => "miss").increment(1);
        let result: Result<(Arc<VerifiedWit>, Option<u64>)> = self.trust.read(|trust| {
            let verified = validate_wit(wit, trust, &self.wit_validation, now)?;
            // Stale anchors refuse cached WITs exactly like uncached ones (`max_stale`).
            let usable_until = trust.get(&verified.subject().trust_domain()).and_then(|a| a.valid_until());
            Ok((Arc::new(verified), usable_until))
        });
        match result {
            Ok((verified, usable_until)) => {
                self.wit_cache.insert(wit, verified.clone(), generation, usable_until, now);
                Ok(verified)
            }
            Err(error) => {
                if matches!(error.kind(), ErrorKind::UnknownKey | ErrorKind::TrustAnchorsUnavailable)
                    && let Ok(jws) = crate::jose::jws::parse(wit, self.wit_validation.max_token_len)
                    && let Some(Ok(sub)) =
                        jws.claims.get("sub").and_then(serde_json::Value::as_str).map(crate::id::WorkloadId::parse)
                {
                    self.trust.request_refresh(&sub.trust_domain());
                }
                Err(error)
            }
        }
    }

    /// How many verified WITs are cached.
    pub fn cached_wits(&self) -> usize {
        self.wit_cache.len()
    }

    /// The handle on this verifier's trust anchors, to update them while serving (see
    /// `wimse_reqwest::BundleSource`).
    pub fn trust(&self) -> &TrustHandle {
        &self.trust
    }

    /// The per-caller quota on live replay claims.
    pub fn caller_quota(&self) -> &CallerQuota {
        &self.quota
    }

    fn caller(
        &self,
        wit: &Arc<VerifiedWit>,
        method: ProofMethod,
        txn_token: Option<&str>,
        context: BTreeMap<String, &str>,
    ) -> VerifiedCaller {
        VerifiedCaller {
            id: wit.claims().sub.clone(),
            method,
            credential: Credential::Wit(wit.clone()),
            txn_token: txn_token.map(str::to_owned),
            transaction: None,
            context_tokens: context.into_iter().map(|(k, v)| (k, v.to_owned())).collect(),
            audit: None,
        }
    }

    fn wpt_request_credentials<H: HeaderSource + ?Sized>(&self, request: &RequestView<'_, H>) -> Result<PendingCaller> {
        if !self.config.accept_wpt {
            return Err(Error::with_detail(ErrorKind::MissingWpt, "WPT requests are not accepted here"));
        }
        let now = self.clock.now();
        let credentials = extract_wpt_credentials(request.headers, self.config.max_token_len)?;
        let mut context = ProofContext { txn_token: credentials.txn_token, other_tokens: BTreeMap::new() };
        for name in &self.config.context_tokens {
            if let Some(value) =
                single_value(request.headers, name, self.config.max_token_len, ErrorKind::DuplicateContextToken)?
            {
                context.other_tokens.insert(name.clone(), value);
            }
        }
        if let Some(parent) = parent_request(request.headers)? {
            // Bound by `oth` like any context token: `check` refuses it unbound or changed.
            context.other_tokens.insert(PARENT_REQUEST_HEADER.to_owned(), parent);
        }

        let wit = self.validate_wit(credentials.wit, now)?;
        let audience_ok = |aud: &str| self.config.audience_matches(aud, request.path);
        let (exp, jti) =
            crate::protocol::wpt::check(credentials.wpt, &wit, &context, audience_ok, &self.wpt_validation, now)
                .map_err(|e| self.config.explain_audience(e, request.path))?;
        let leeway = self.config.leeway;
        // A verifier accepts a WPT only while `exp <= now + max lifetime + leeway`: no verifier
        // could have accepted it before `exp - max lifetime - leeway`.
        let earliest = exp.saturating_sub(self.config.max_wpt_lifetime.saturating_add(leeway));
        let claim = ReplayClaim::wpt(wit.subject(), &jti, exp.saturating_add(leeway), earliest);
        let method = ProofMethod::Wpt { jti, exp };
        let caller = self.caller(&wit, method, context.txn_token, context.other_tokens);
        Ok(PendingCaller { caller, claim: Some(claim), content: None })
    }
}

/// The request's [`PARENT_REQUEST_HEADER`]: one field, a proof id (at most
/// [`MAX_PROOF_ID_LEN`](crate::replay::MAX_PROOF_ID_LEN) bytes of `A-Z a-z 0-9 - _ . ~`), so
/// what audit records keep of it is bounded and plain.
fn parent_request<H: HeaderSource + ?Sized>(headers: &H) -> Result<Option<&str>> {
    let limit = crate::replay::MAX_PROOF_ID_LEN;
    let value = single_value(headers, PARENT_REQUEST_HEADER, limit, ErrorKind::DuplicateContextToken)?;
    if let Some(value) = value
        && (value.is_empty() || !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)))
    {
        return Err(Error::with_detail(
            ErrorKind::InvalidHeaderValue,
            format!("{PARENT_REQUEST_HEADER} is not a proof id (A-Z a-z 0-9 - _ . ~)"),
        ));
    }
    Ok(value)
}

/// Every field line of `name` as text (a signed request's `Content-Digest`, kept until its body
/// arrives; the header fields' own size limit bounds them).
fn field_lines<H: HeaderSource + ?Sized>(headers: &H, name: &str) -> Result<Vec<String>> {
    headers
        .header_values(name)
        .map(|v| std::str::from_utf8(v).map(str::to_owned).map_err(|_| Error::new(ErrorKind::InvalidHeaderValue)))
        .collect()
}

/// Txn-Tokens are cached like WITs, and not at all when they are not validated.
fn txn_cache_capacity(config: &VerifierConfig) -> usize {
    if config.txn_tokens.is_some() { config.wit_cache_capacity } else { 0 }
}

fn settle_rejection(caller: &VerifiedCaller, error: Error) -> Error {
    let error = match caller.method {
        ProofMethod::HttpSignature { .. } => error.in_signature_mode(),
        _ => error,
    };
    caller.audit_refused(&error);
    error
}

/// The answer of [`Verifier::confirm`] (and so of [`Verifier::verify`] and
/// [`Pipeline::confirm`](crate::server::pipeline::Pipeline::confirm)): a future resolving to the
/// [`VerifiedCaller`] once its proof is claimed. Ready at once with the in-memory store
/// ([`take_ready`](Self::take_ready) takes the answer without a runtime). Dropped before it
/// resolves, it gives the caller's quota back.
#[must_use = "the caller is verified only once the confirmation resolves"]
#[derive(Debug)]
pub struct Confirm(ConfirmState);

#[derive(Debug)]
enum ConfirmState {
    Done(Option<Result<VerifiedCaller>>),
    Waiting(Waiting),
}

#[derive(Debug)]
struct Waiting {
    claim: Claim,
    caller: Option<VerifiedCaller>,
    quota: Arc<CallerQuota>,
    owner: QuotaOwner,
    expires_at: u64,
}

impl Waiting {
    fn settle(&mut self, result: Result<()>) -> Result<VerifiedCaller> {
        let caller = self.caller.take().ok_or_else(|| {
            Error::with_detail(ErrorKind::ReplayCacheUnavailable, "confirmation polled after completion")
        })?;
        match result {
            // Nothing is let through without its record when the log refuses (`WhenFull::Refuse`).
            Ok(()) => caller.audit_admitted().map(|()| caller),
            Err(error) => {
                self.quota.release(self.owner, self.expires_at);
                Err(settle_rejection(&caller, error))
            }
        }
    }

    /// Settles without polling when the store answered at once.
    fn try_settle(&mut self) -> Option<Result<VerifiedCaller>> {
        let claim = std::mem::replace(&mut self.claim, Claim::ready(Ok(())));
        match claim.into_ready() {
            Ok(result) => Some(self.settle(result)),
            Err(pending) => {
                self.claim = pending;
                None
            }
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        // Abandoned before the store answered: the claim may or may not have landed; giving
        // the quota back errs on the side of the caller (the quota is a bound, not a ledger).
        if self.caller.is_some() {
            self.quota.release(self.owner, self.expires_at);
        }
    }
}

impl Confirm {
    fn done(result: Result<VerifiedCaller>) -> Self {
        Self(ConfirmState::Done(Some(result)))
    }

    /// Takes the answer if it is known now (`None`: `.await` the confirmation).
    pub fn take_ready(&mut self) -> Option<Result<VerifiedCaller>> {
        match &mut self.0 {
            ConfirmState::Done(result) => result.take(),
            ConfirmState::Waiting(_) => None,
        }
    }
}

impl Future for Confirm {
    type Output = Result<VerifiedCaller>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            ConfirmState::Done(result) => Poll::Ready(result.take().unwrap_or_else(|| {
                Err(Error::with_detail(ErrorKind::ReplayCacheUnavailable, "confirmation polled after completion"))
            })),
            ConfirmState::Waiting(waiting) => match Pin::new(&mut waiting.claim).poll(cx) {
                Poll::Ready(result) => Poll::Ready(waiting.settle(result)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audience_matching_uses_configuration_only() {
        let cfg = VerifierConfig::new().audience("urn:svc:payments").origin("https://pay.example/");
        assert!(cfg.audience_matches("urn:svc:payments", "/anything"));
        assert!(cfg.audience_matches("https://pay.example/charge", "/charge?x=1"));
        assert!(cfg.audience_matches("https://pay.example/", ""));
        assert!(!cfg.audience_matches("https://pay.example/charge", "/refund"));
        assert!(!cfg.audience_matches("https://pay.example.evil/charge", "/charge"));
        assert!(!cfg.audience_matches("https://pay.example/charge?x=1", "/charge?x=1"));
    }

    #[test]
    fn unsafe_configurations_are_refused() {
        let err = Verifier::new(TrustStore::new(), VerifierConfig::new()).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration);
        let err = Verifier::new(TrustStore::new(), VerifierConfig::new().audience("a").leeway(301)).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration);
        let err = Verifier::new(TrustStore::new(), VerifierConfig::new().audience("a").context_token("Authorization"))
            .unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration);
        let err = Verifier::new(TrustStore::new(), VerifierConfig::new().audience("a").caller_quota(0)).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration);
    }
}
