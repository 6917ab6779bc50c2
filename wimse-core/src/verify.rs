//! The inbound path: a request's headers in, a [`VerifiedCaller`] or a named rejection out.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::draft::{AUTHORIZATION_HEADER, TXN_TOKEN_HEADER, WIT_HEADER};
use crate::error::{Error, ErrorKind, Result};
use crate::http::{HeaderSource, extract_wpt_credentials, has_wimse_credentials, single_value};
use crate::httpsig::{self, RequestParts, SignatureValidation, has_signature};
use crate::id::{IdentifierPolicy, WorkloadId};
use crate::jose::{Algorithm, Backend};
use crate::policy::Policy;
use crate::replay::{InMemoryReplayCache, ReplayCache};
use crate::sign::Signer;
use crate::time::{Clock, SystemClock};
use crate::trust::{TrustHandle, TrustStore};
use crate::wit::{DEFAULT_MAX_TOKEN_LEN, MAX_LEEWAY_SECS, VerifiedWit, WitValidation, validate_wit};
use crate::wpt::{ProofContext, WptValidation, validate_wpt};

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
    /// How many verified WITs are remembered (by their SHA-256) so a steady caller's WIT is
    /// verified once, not on every request. 0 disables the cache. Defaults to 10 000.
    pub wit_cache_capacity: usize,
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
            wit_cache_capacity: 10_000,
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
    pub fn with_audience(mut self, aud: impl Into<String>) -> Self {
        self.audiences.push(aud.into());
        self
    }
    /// Accepts WPTs whose `aud` is `origin` + request path.
    pub fn with_origin(mut self, origin: impl Into<String>) -> Self {
        self.origins.push(origin.into().trim_end_matches('/').to_owned());
        self
    }
    /// Sets the clock leeway (seconds).
    pub fn with_leeway(mut self, secs: u64) -> Self {
        self.leeway = secs;
        self
    }
    /// Sets the longest accepted WPT lifetime (seconds).
    pub fn with_max_wpt_lifetime(mut self, secs: u64) -> Self {
        self.max_wpt_lifetime = secs;
        self
    }
    /// Sets the longest accepted WIT lifetime (seconds).
    pub fn with_max_wit_lifetime(mut self, secs: u64) -> Self {
        self.max_wit_lifetime = secs;
        self
    }
    /// Understands the context-token field `name` in `oth`.
    pub fn with_context_token(mut self, name: impl Into<String>) -> Self {
        self.context_tokens.push(name.into().to_ascii_lowercase());
        self
    }
    /// Chooses the crypto backend.
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    fn validate(&self) -> Result<()> {
        let bad = |d: &'static str| Err(Error::with_detail(ErrorKind::InvalidConfiguration, d));
        if self.audiences.is_empty() && self.origins.is_empty() {
            return bad("no audience or origin configured: every WPT would be refused");
        }
        if !self.accept_wpt && !self.accept_http_signatures {
            return bad("neither WPT nor HTTP signatures accepted: every request would be refused");
        }
        if self.leeway > MAX_LEEWAY_SECS {
            return bad("leeway above 300 seconds");
        }
        let reserved = [AUTHORIZATION_HEADER, WIT_HEADER, TXN_TOKEN_HEADER];
        if self.context_tokens.iter().any(|n| reserved.contains(&n.as_str()) || n.is_empty()) {
            return bad("context tokens cannot be Authorization, Workload-Identity-Token or Txn-Token");
        }
        Ok(())
    }

    fn audience_matches(&self, aud: &str, path: &str) -> bool {
        self.audiences.iter().any(|a| a == aud)
            || self.origins.iter().any(|o| aud.strip_prefix(o.as_str()) == Some(path_without_query(path)))
    }
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
    /// The received body, when the adapter read it (needed to check a `Content-Digest`).
    pub body: Option<&'a [u8]>,
}

impl<'a, H: ?Sized> RequestView<'a, H> {
    /// A `GET` of `path` (with query) with these headers and no body.
    pub fn new(path: &'a str, headers: &'a H) -> Self {
        Self { method: "GET", path, authority: "", headers, body: None }
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

/// How the caller proved possession of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProofMethod {
    /// A WIT + WPT (wpt-02).
    Wpt {
        /// The proof's `jti`.
        jti: String,
        /// The proof's expiry.
        exp: u64,
    },
    /// Mutual TLS with a Workload Identity Certificate (mutual-tls-03): the identity comes from
    /// the verified client certificate of the connection.
    MutualTls {
        /// base64url SHA-256 of the client's leaf certificate.
        certificate_fingerprint: String,
    },
    /// A WIT + HTTP message signature (http-signature-08).
    HttpSignature {
        /// The signature's `nonce` (a signed response carries it back).
        nonce: String,
        /// The signature's expiry.
        expires: u64,
        /// The caller asked for a signed response (`wimse-sign-response`).
        sign_response: bool,
    },
}

impl ProofMethod {
    /// `"wpt"` or `"http-signature"`.
    pub fn name(&self) -> &'static str {
        match self {
            ProofMethod::Wpt { .. } => "wpt",
            ProofMethod::HttpSignature { .. } => "http-signature",
            ProofMethod::MutualTls { .. } => "mtls",
        }
    }
}

/// An authenticated caller. Only a [`Verifier`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCaller {
    id: WorkloadId,
    method: ProofMethod,
    wit_exp: u64,
    wit_iss: Option<String>,
    wit_jti: Option<String>,
    key_thumbprint: String,
    txn_token: Option<String>,
    context_tokens: BTreeMap<String, String>,
}

/// The caller authenticated by the TLS layer (mutual TLS), put into request extensions by a
/// TLS-terminating adapter. A [`Guard`] uses it when the request carries no application-level
/// credentials; headers can never override it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPeer(VerifiedCaller);

impl TlsPeer {
    /// The caller.
    pub fn caller(&self) -> &VerifiedCaller {
        &self.0
    }
}

#[cfg(feature = "mtls")]
impl TlsPeer {
    /// The peer of a connection whose client certificate chain rustls verified with a
    /// [`WicClientVerifier`](crate::wic::WicClientVerifier).
    pub fn from_verified_chain(peer_certificates: &[rustls::pki_types::CertificateDer<'_>]) -> Result<Self> {
        let (id, fingerprint) = crate::wic::verified_peer(peer_certificates)?;
        Ok(Self(VerifiedCaller {
            id,
            method: ProofMethod::MutualTls { certificate_fingerprint: fingerprint.clone() },
            wit_exp: 0,
            wit_iss: None,
            wit_jti: None,
            key_thumbprint: fingerprint,
            txn_token: None,
            context_tokens: BTreeMap::new(),
        }))
    }
}

impl VerifiedCaller {
    /// The caller's Workload Identifier (the WIT's `sub`).
    pub fn id(&self) -> &WorkloadId {
        &self.id
    }
    /// How possession was proven.
    pub fn method(&self) -> &ProofMethod {
        &self.method
    }
    /// When the caller's WIT expires.
    pub fn wit_expires_at(&self) -> u64 {
        self.wit_exp
    }
    /// The WIT's `iss`, for audit.
    pub fn wit_issuer(&self) -> Option<&str> {
        self.wit_iss.as_deref()
    }
    /// The WIT's `jti`, for audit.
    pub fn wit_id(&self) -> Option<&str> {
        self.wit_jti.as_deref()
    }
    /// RFC 7638 thumbprint of the caller's confirmation key.
    pub fn key_thumbprint(&self) -> &str {
        &self.key_thumbprint
    }
    /// The `Txn-Token` value, present only when the proof bound it (`tth`).
    pub fn txn_token(&self) -> Option<&str> {
        self.txn_token.as_deref()
    }
    /// Context tokens bound by `oth`, by lower-case field name. Tokens not bound never appear.
    pub fn context_tokens(&self) -> &BTreeMap<String, String> {
        &self.context_tokens
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
/// let trust = TrustStore::new().with(id.trust_domain(), TrustAnchors::new().with_key(issuer_key.public_key().clone()));
/// let verifier = Verifier::new(trust, VerifierConfig::new().with_origin("https://payments.example"))?
///     .with_clock(FixedClock::new(now));
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("workload-identity-token", wit.parse()?);
/// headers.insert("authorization", format!("WPT {wpt}").parse()?);
/// let caller = verifier.verify(&RequestView::new("/charge?id=7", &headers))?;
/// assert_eq!(caller.id(), &id);
///
/// // The same proof again is a replay.
/// let again = verifier.verify(&RequestView::new("/charge", &headers));
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
    replay: Arc<dyn ReplayCache>,
    clock: Arc<dyn Clock>,
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
    pub fn with_trust_handle(mut self, trust: TrustHandle) -> Self {
        self.trust = trust;
        self
    }

    /// A verifier with an in-memory replay cache and the system clock. Fails on a configuration
    /// that would refuse everything or weaken checks beyond the bounds (no audience, leeway > 300 s).
    pub fn new(trust: TrustStore, config: VerifierConfig) -> Result<Self> {
        config.validate()?;
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
            context_tokens: config.context_tokens.clone(),
            backend: config.backend,
        };
        let signature_validation = SignatureValidation {
            leeway: config.leeway,
            max_age: config.max_signature_age,
            backend: config.backend,
            ..SignatureValidation::default()
        };
        Ok(Self {
            wit_cache: Arc::new(WitCache::new(config.wit_cache_capacity)),
            signature_validation: Arc::new(signature_validation),
            trust: TrustHandle::new(trust),
            config: Arc::new(config),
            wit_validation: Arc::new(wit_validation),
            wpt_validation: Arc::new(wpt_validation),
            replay: Arc::new(InMemoryReplayCache::default()),
            clock: Arc::new(SystemClock),
        })
    }

    /// Uses another replay cache (shared between replicas, or sized differently).
    pub fn with_replay_cache(mut self, cache: impl ReplayCache + 'static) -> Self {
        self.replay = Arc::new(cache);
        self
    }

    /// Uses another clock.
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// Verifies a WIT + WPT request. Rejections are logged with their reason, never with tokens.
    pub fn verify<H: HeaderSource + ?Sized>(&self, request: &RequestView<'_, H>) -> Result<VerifiedCaller> {
        let signed = has_signature(request.headers);
        let span = tracing::info_span!(
            "wimse_verify",
            mode = if signed { "http-signature" } else { "wpt" },
            caller = tracing::field::Empty,
            decision = tracing::field::Empty,
            reason = tracing::field::Empty
        );
        let _entered = span.enter();
        let result = if signed {
            self.verify_signed_request(request).map_err(Error::in_signature_mode)
        } else {
            self.verify_wpt_request(request)
        };
        let mode = if signed { "http-signature" } else { "wpt" };
        match &result {
            Ok(caller) => {
                span.record("caller", caller.id().as_str()).record("decision", "allow");
                tracing::info!(target: "wimse::audit", caller = %caller.id(), mode, decision = "allow", "request authenticated");
                metrics::counter!("wimse_verifications_total", "mode" => mode, "result" => "allow", "reason" => "ok")
                    .increment(1);
            }
            Err(e) => {
                span.record("decision", "reject").record("reason", e.reason());
                tracing::warn!(target: "wimse::audit", mode, decision = "reject", reason = e.reason(), detail = e.detail(), "request rejected");
                metrics::counter!("wimse_verifications_total", "mode" => mode, "result" => "reject", "reason" => e.reason()).increment(1);
            }
        }
        result
    }

    fn verify_signed_request<H: HeaderSource + ?Sized>(&self, request: &RequestView<'_, H>) -> Result<VerifiedCaller> {
        if !self.config.accept_http_signatures {
            return Err(Error::with_detail(ErrorKind::NoWimseSignature, "HTTP signatures are not accepted here"));
        }
        let now = self.clock.now();
        let wit = single_value(request.headers, WIT_HEADER, self.config.max_token_len, ErrorKind::DuplicateWit)?
            .ok_or(Error::new(ErrorKind::MissingWit))?;
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
        let sig = httpsig::verify_request(
            &parts,
            request.body,
            &wit,
            audience_ok,
            &self.signature_validation,
            self.replay.as_ref(),
            now,
        )?;
        // Covered context tokens are authenticated by the signature.
        let txn_token = single_value(
            request.headers,
            TXN_TOKEN_HEADER,
            self.config.max_token_len,
            ErrorKind::DuplicateContextToken,
        )?;
        Ok(self.caller(
            &wit,
            ProofMethod::HttpSignature { nonce: sig.nonce, expires: sig.expires, sign_response: sig.sign_response },
            txn_token,
            BTreeMap::new(),
        ))
    }

    /// Validates a WIT against the current anchors; a token naming a key the anchors do not
    /// have asks the bundle fetcher for a refresh.
    fn validate_wit(&self, wit: &str, now: u64) -> Result<Arc<VerifiedWit>> {
        let generation = self.trust.generation();
        let key = crate::wit::token_hash(wit);
        if let Some(hit) = self.wit_cache.get(&key, generation, now, &self.wit_validation) {
            metrics::counter!("wimse_wit_cache_total", "result" => "hit").increment(1);
            return Ok(hit);
        }
        metrics::counter!("wimse_wit_cache_total", "result" => "miss").increment(1);
        let result = self.trust.read(|trust| validate_wit(wit, trust, &self.wit_validation, now)).map(Arc::new);
        if let Ok(verified) = &result {
            self.wit_cache.insert(key, verified.clone(), generation, now);
        }
        if let Err(error) = &result
            && matches!(error.kind(), ErrorKind::UnknownKey | ErrorKind::TrustAnchorsUnavailable)
            && let Ok(jws) = crate::jose::jws::parse(wit, self.wit_validation.max_token_len)
            && let Some(Ok(sub)) = jws.claims.get("sub").and_then(serde_json::Value::as_str).map(WorkloadId::parse)
        {
            self.trust.request_refresh(&sub.trust_domain());
        }
        result
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

    fn caller(
        &self,
        wit: &VerifiedWit,
        method: ProofMethod,
        txn_token: Option<&str>,
        context: BTreeMap<String, &str>,
    ) -> VerifiedCaller {
        let claims = wit.claims();
        VerifiedCaller {
            id: claims.sub.clone(),
            method,
            wit_exp: claims.exp,
            wit_iss: claims.iss.clone(),
            wit_jti: claims.jti.clone(),
            key_thumbprint: wit.cnf_key().thumbprint(),
            txn_token: txn_token.map(str::to_owned),
            context_tokens: context.into_iter().map(|(k, v)| (k, v.to_owned())).collect(),
        }
    }

    fn verify_wpt_request<H: HeaderSource + ?Sized>(&self, request: &RequestView<'_, H>) -> Result<VerifiedCaller> {
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

        let wit = self.validate_wit(credentials.wit, now)?;
        let audience_ok = |aud: &str| self.config.audience_matches(aud, request.path);
        let wpt = validate_wpt(
            credentials.wpt,
            &wit,
            &context,
            audience_ok,
            &self.wpt_validation,
            self.replay.as_ref(),
            now,
        )?;

        Ok(self.caller(&wit, ProofMethod::Wpt { jti: wpt.jti, exp: wpt.exp }, context.txn_token, context.other_tokens))
    }
}

/// Verified WITs by the SHA-256 of the token, valid while the anchors they were checked against
/// are unchanged. Time-dependent checks are repeated on every hit; only the signature, the
/// parsing and the key checks are saved. Bounded: when full of unexpired entries, new WITs are
/// simply not cached (verification is unaffected). Only WITs that verified enter, so invalid
/// tokens cannot grow it.
struct WitCache {
    capacity: usize,
    entries: std::sync::Mutex<std::collections::HashMap<String, (Arc<VerifiedWit>, u64)>>,
}

impl WitCache {
    fn new(capacity: usize) -> Self {
        Self { capacity, entries: std::sync::Mutex::new(std::collections::HashMap::new()) }
    }

    fn get(&self, key: &str, generation: u64, now: u64, cfg: &WitValidation) -> Option<Arc<VerifiedWit>> {
        if self.capacity == 0 {
            return None;
        }
        let entries = self.entries.lock().ok()?;
        let (wit, cached_generation) = entries.get(key)?;
        let claims = wit.claims();
        let still_valid = *cached_generation == generation
            && now < claims.exp.saturating_add(cfg.leeway)
            && claims.nbf.is_none_or(|nbf| nbf <= now.saturating_add(cfg.leeway));
        still_valid.then(|| wit.clone())
    }

    fn insert(&self, key: String, wit: Arc<VerifiedWit>, generation: u64, now: u64) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else { return };
        if entries.len() >= self.capacity {
            entries.retain(|_, (w, g)| *g == generation && now < w.claims().exp);
        }
        if entries.len() < self.capacity {
            entries.insert(key, (wit, generation));
        }
    }

    fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}

/// What a server adapter applies to each request: a [`Verifier`], optionally a [`Policy`], and
/// whether anonymous requests may pass. Every adapter wraps one, so all decide alike.
#[derive(Debug, Clone)]
pub struct Guard {
    verifier: Verifier,
    policy: Option<Policy>,
    optional: bool,
    body_limit: usize,
    responses: Option<Signer>,
    sign_all: bool,
}

/// Largest body an adapter buffers by default to check a signed request's `Content-Digest`
/// (or to sign a response): 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;

impl Guard {
    /// Requires valid credentials on every request.
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            policy: None,
            optional: false,
            body_limit: DEFAULT_BODY_LIMIT,
            responses: None,
            sign_all: false,
        }
    }

    /// The largest body buffered for a signed request's digest or a signed response
    /// (default [`DEFAULT_BODY_LIMIT`]); larger request bodies are answered with 413.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Signs the responses that callers ask to be signed (`wimse-sign-response`), with this
    /// service's own credentials. Without it such requests are answered with 501.
    pub fn sign_responses(mut self, signer: Signer) -> Self {
        self.responses = Some(signer);
        self
    }

    /// Signs the response to every HTTP-signature request, asked or not (local policy; needs
    /// [`sign_responses`](Self::sign_responses)).
    pub fn always_sign_responses(mut self) -> Self {
        self.sign_all = true;
        self
    }

    /// The body limit.
    pub fn max_body(&self) -> usize {
        self.body_limit
    }

    /// The response signer, if responses are signed.
    pub fn response_signer(&self) -> Option<&Signer> {
        self.responses.as_ref()
    }

    /// The nonce a response must be signed for: `Ok(None)` when the caller did not ask,
    /// [`ErrorKind::SignedResponseUnsupported`] when it asked and this service does not sign.
    pub fn response_nonce(&self, caller: Option<&VerifiedCaller>) -> Result<Option<String>> {
        match caller.map(VerifiedCaller::method) {
            Some(ProofMethod::HttpSignature { nonce, sign_response: true, .. }) => match self.responses {
                Some(_) => Ok(Some(nonce.clone())),
                None => Err(ErrorKind::SignedResponseUnsupported.into()),
            },
            Some(ProofMethod::HttpSignature { nonce, .. }) if self.sign_all && self.responses.is_some() => {
                Ok(Some(nonce.clone()))
            }
            _ => Ok(None),
        }
    }

    /// Lets requests without any WIMSE credentials through, with no caller (see
    /// [`has_wimse_credentials`]). Requests that carry credentials must still verify.
    pub fn optional(mut self) -> Self {
        self.optional = true;
        self
    }

    /// Applies `policy` to every verified caller (403 when denied).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The verified (and allowed) caller, `None` for an anonymous request an optional guard
    /// lets through, or the rejection.
    pub fn check<H: HeaderSource + ?Sized>(&self, request: &RequestView<'_, H>) -> Result<Option<VerifiedCaller>> {
        self.check_with_tls(request, None)
    }

    /// Like [`check`](Self::check) on a connection whose TLS layer authenticated `tls`.
    /// Application-level credentials, when present, are verified and take precedence; without
    /// them the TLS peer is the caller (and the policy applies to it the same way).
    pub fn check_with_tls<H: HeaderSource + ?Sized>(
        &self,
        request: &RequestView<'_, H>,
        tls: Option<&TlsPeer>,
    ) -> Result<Option<VerifiedCaller>> {
        let caller = match (has_wimse_credentials(request.headers), tls) {
            (false, Some(peer)) => peer.caller().clone(),
            (false, None) if self.optional => return Ok(None),
            _ => self.verifier.verify(request)?,
        };
        if let Some(policy) = &self.policy {
            policy.check(&caller)?;
        }
        Ok(Some(caller))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audience_matching_uses_configuration_only() {
        let cfg = VerifierConfig::new().with_audience("urn:svc:payments").with_origin("https://pay.example/");
        assert!(cfg.audience_matches("urn:svc:payments", "/anything"));
        assert!(cfg.audience_matches("https://pay.example/charge", "/charge?x=1"));
        assert!(cfg.audience_matches("https://pay.example/", ""));
        assert!(!cfg.audience_matches("https://pay.example/charge", "/refund"));
        assert!(!cfg.audience_matches("https://pay.example.evil/charge", "/charge"));
        assert!(!cfg.audience_matches("https://pay.example/charge?x=1", "/charge?x=1"));
    }

    #[test]
    fn response_signing_decisions() {
        use crate::cred::StaticCredentials;
        use crate::jose::{Algorithm, SigningKey};
        let issuer = SigningKey::generate(Algorithm::ES256).unwrap();
        let key = SigningKey::generate(Algorithm::ES256).unwrap();
        let wit = crate::wit::WitIssuer::new(issuer)
            .issue(&"spiffe://a.example/s".parse().unwrap(), key.public_jwk(), 1)
            .unwrap();
        let signer = Signer::new(StaticCredentials::new(crate::cred::Credentials::new(wit, key).unwrap()));
        let verifier = Verifier::new(TrustStore::new(), VerifierConfig::new().with_audience("a")).unwrap();
        let caller = |sign_response| VerifiedCaller {
            id: "spiffe://a.example/c".parse().unwrap(),
            method: ProofMethod::HttpSignature { nonce: "n".into(), expires: 2, sign_response },
            wit_exp: 2,
            wit_iss: None,
            wit_jti: None,
            key_thumbprint: String::new(),
            txn_token: None,
            context_tokens: BTreeMap::new(),
        };
        let plain = Guard::new(verifier.clone());
        assert_eq!(
            plain.response_nonce(Some(&caller(true))).unwrap_err().kind(),
            &ErrorKind::SignedResponseUnsupported
        );
        assert_eq!(plain.response_nonce(Some(&caller(false))).unwrap(), None);
        let signing = Guard::new(verifier.clone()).sign_responses(signer.clone());
        assert_eq!(signing.response_nonce(Some(&caller(true))).unwrap().as_deref(), Some("n"));
        assert_eq!(signing.response_nonce(Some(&caller(false))).unwrap(), None);
        let always = Guard::new(verifier).sign_responses(signer).always_sign_responses();
        assert_eq!(always.response_nonce(Some(&caller(false))).unwrap().as_deref(), Some("n"));
        assert_eq!(always.response_nonce(None).unwrap(), None);
    }

    #[test]
    fn unsafe_configurations_are_refused() {
        let err = Verifier::new(TrustStore::new(), VerifierConfig::new()).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration);
        let err =
            Verifier::new(TrustStore::new(), VerifierConfig::new().with_audience("a").with_leeway(301)).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration);
        let err = Verifier::new(
            TrustStore::new(),
            VerifierConfig::new().with_audience("a").with_context_token("Authorization"),
        )
        .unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration);
    }
}
