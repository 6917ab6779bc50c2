//! What a server adapter applies to each request: the inbound pipeline as one value.
//!
//! 1. *framing and mode*: the adapter builds a [`RequestView`]; the headers say which proof
//!    (WIT + WPT, WIT + WIMSE-tagged HTTP signature, or the TLS peer's certificate);
//! 2. *credentials* ([`Verifier::authenticate`]): synchronous, CPU only: the WIT (through the
//!    verified-WIT cache), the proof's signature, audience and lifetimes;
//! 3. *policy*: before any shared state is touched, so a refused caller costs nothing shared;
//! 4. *replay claim* ([`Pipeline::confirm`]): asynchronous, through the caller's quota into the
//!    [`ReplayStore`](crate::replay::ReplayStore); ready at once for the in-memory store;
//! 5. the handler, with the [`VerifiedCaller`] in the request extensions.
//!
//! Per-route policies applied after the adapter's layer (`RequirePolicyLayer`, actix scopes)
//! run after the claim; there the per-caller quota is what protects other callers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::client::sign::Signer;
use crate::error::{ErrorKind, Result};
use crate::server::caller::{PendingCaller, ProofMethod, TlsPeer, VerifiedCaller};
use crate::server::framing::{HeaderSource, Rejection, has_wimse_credentials};
use crate::server::policy::Policy;
use crate::server::verify::{Confirm, RequestView, Verifier};

/// What a server adapter applies to each request: a [`Verifier`], optionally a [`Policy`], and
/// whether anonymous requests may pass. Every adapter wraps one, so all decide alike.
///
/// ```
/// use wimse_core::prelude::*;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let issuer = SigningKey::generate(Algorithm::ES256)?;
/// let trust = TrustStore::new().with("spiffe://prod.example".parse()?, TrustAnchors::new().key(issuer.public_key().clone()));
/// let verifier = Verifier::new(trust, VerifierConfig::new().origin("https://payments.example"))?;
/// let guard = Pipeline::new(verifier).policy(Policy::named("payments").allow(Rule::exact("spiffe://prod.example/orders")?));
///
/// // An unsigned request: refused with its reason, before any handler runs.
/// let headers = http::HeaderMap::new();
/// let refused = guard.admit(&RequestView::new("/charge", &headers), None).unwrap_err();
/// assert_eq!(refused.reason(), "missing_wit");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Pipeline {
    verifier: Verifier,
    policy: Option<Policy>,
    optional: bool,
    body_limit: usize,
    body_time: Duration,
    responses: Option<Signer>,
    sign_all: bool,
    application_identity: bool,
    routes: Vec<(String, Policy)>,
    streams_end_at_expiry: bool,
    max_stream_age: Option<Duration>,
    body_budget: std::sync::Arc<BodyBudget>,
}

/// How many bytes of signed request bodies one [`Pipeline`] (and its clones) buffers at once, by
/// default: 64 MiB. A body is held against it from its first byte until it was checked, so
/// senders that trickle bodies (slowly, or in tiny frames) cannot make a server hold more.
pub const DEFAULT_BODY_BUDGET: usize = 64 << 20;

/// The bytes of signed request bodies being buffered, against a limit; shared by a guard's clones.
#[derive(Debug)]
pub(crate) struct BodyBudget {
    pub(crate) limit: usize,
    in_use: AtomicUsize,
}

impl BodyBudget {
    pub(crate) fn new(limit: usize) -> Self {
        Self { limit, in_use: AtomicUsize::new(0) }
    }

    pub(crate) fn try_take(&self, bytes: usize) -> bool {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    pub(crate) fn give_back(&self, bytes: usize) {
        if bytes > 0 {
            self.in_use.fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    /// Bytes held now.
    pub(crate) fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }
}

/// Largest body an adapter buffers by default to check a signed request's `Content-Digest`
/// (or to sign a response): 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;

/// How long an adapter waits by default for the whole body of a signed request that passed its
/// header checks: 10 seconds.
pub const DEFAULT_BODY_DEADLINE: Duration = Duration::from_secs(10);

impl Pipeline {
    /// Requires valid credentials on every request.
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            policy: None,
            optional: false,
            body_limit: DEFAULT_BODY_LIMIT,
            body_time: DEFAULT_BODY_DEADLINE,
            responses: None,
            sign_all: false,
            application_identity: false,
            routes: Vec::new(),
            streams_end_at_expiry: true,
            max_stream_age: None,
            body_budget: std::sync::Arc::new(BodyBudget::new(DEFAULT_BODY_BUDGET)),
        }
    }

    /// How many bytes of signed request bodies this guard and its clones buffer at once, all
    /// requests together (default [`DEFAULT_BODY_BUDGET`]);
    /// a body that would exceed it is refused with 503 `body_budget_exceeded` and `Retry-After`.
    /// Bounds what many slow or tiny-framed bodies can make a server hold, whoever sends them.
    pub fn body_budget(mut self, bytes: usize) -> Self {
        self.body_budget = std::sync::Arc::new(BodyBudget::new(bytes));
        self
    }

    /// Bytes of signed request bodies being buffered now, against the
    /// [`body_budget`](Self::body_budget).
    pub fn body_bytes_in_use(&self) -> usize {
        self.body_budget.in_use()
    }

    pub(crate) fn body_budget_ref(&self) -> &BodyBudget {
        &self.body_budget
    }

    /// The largest body buffered for a signed request's digest or a signed response
    /// (default [`DEFAULT_BODY_LIMIT`]); larger request bodies are answered with 413.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// How long the whole body of a signed request may take to arrive once its header fields
    /// passed (default [`DEFAULT_BODY_DEADLINE`]); slower bodies are answered with 408.
    pub fn body_deadline(mut self, deadline: Duration) -> Self {
        self.body_time = deadline;
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

    /// The body deadline.
    pub fn max_body_time(&self) -> Duration {
        self.body_time
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

    /// Lets a request's WIT and proof name another workload than the mutual-TLS certificate of
    /// its connection, and be the caller (mutual-tls-03: only where that is "protected and
    /// authorized by another mechanism", e.g. a trusted proxy that connects for many
    /// workloads). By default such a request is refused ([`ErrorKind::TlsPeerMismatch`], 403).
    pub fn allow_application_identity(mut self) -> Self {
        self.application_identity = true;
        self
    }

    /// Applies `policy` to every verified caller (403 when denied), except on the paths a
    /// [`route_policy`](Self::route_policy) covers.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Applies `policy` instead of the general one to requests whose path is `route` (exactly),
    /// or, when `route` ends with `/`, is `route` without its slash or starts with `route`; the
    /// longest matching route wins. For gRPC a route is a method (`/orders.v1.Orders/Cancel`) or
    /// a service (`/orders.v1.Orders/`); with a general policy that allows nobody, unlisted
    /// methods are refused. Checked before the proof is claimed, like the general policy.
    ///
    /// Paths are compared byte for byte. Since frameworks decode `%` escapes and some merge
    /// `//` or resolve dot segments before routing (actix-web matches `/%61dmin` as `/admin`),
    /// once any route policy is configured a path with a `%` escape, an empty segment or a
    /// `.`/`..` segment is refused (400 `non_canonical_path`) rather than matched: gRPC method
    /// paths never have them. For REST routes prefer the framework's own per-route layers
    /// (axum's `route_layer`, actix-web's `scope(..).wrap(..)`), which see its routing.
    pub fn route_policy(mut self, route: impl Into<String>, policy: Policy) -> Self {
        self.routes.push((route.into(), policy));
        // Longest first, so the first match is the most specific.
        self.routes.sort_by_key(|(route, _)| std::cmp::Reverse(route.len()));
        self
    }

    /// The policy that applies to `path` (a request target; its query is ignored); refused when
    /// route policies are configured and the path is not canonical (see
    /// [`route_policy`](Self::route_policy)).
    pub fn policy_for(&self, path: &str) -> Result<Option<&Policy>> {
        let path = path.split_once('?').map_or(path, |(path, _)| path);
        if self.routes.is_empty() {
            return Ok(self.policy.as_ref());
        }
        if !is_canonical_path(path) {
            return Err(ErrorKind::NonCanonicalPath.into());
        }
        let route = self.routes.iter().find(|(route, _)| match route.strip_suffix('/') {
            Some(bare) => path == bare || path.starts_with(route.as_str()),
            None => path == route,
        });
        Ok(route.map(|(_, policy)| policy).or(self.policy.as_ref()))
    }

    /// Lets streamed responses (gRPC streams) run on after the caller's credentials expired.
    /// By default a stream ends with `UNAUTHENTICATED` when the WIT that opened it expires
    /// (after the verifier's leeway), as a new call with it would be refused.
    pub fn keep_streams_past_expiry(mut self) -> Self {
        self.streams_end_at_expiry = false;
        self
    }

    /// Ends every streamed response after `age` at most, whatever the credentials (mutual-TLS
    /// callers included, whose certificate expiry does not end a stream).
    pub fn max_stream_age(mut self, age: Duration) -> Self {
        self.max_stream_age = Some(age);
        self
    }

    /// How much longer a streamed response to `caller` may run: until its credentials expire
    /// (unless [`keep_streams_past_expiry`](Self::keep_streams_past_expiry)) and within
    /// [`max_stream_age`](Self::max_stream_age); `None` when neither bounds it.
    pub fn stream_deadline(&self, caller: Option<&VerifiedCaller>) -> Option<Duration> {
        let expiry =
            caller.filter(|_| self.streams_end_at_expiry).map(VerifiedCaller::wit_expires_at).filter(|exp| *exp > 0);
        let by_credentials = expiry.map(|exp| {
            let until = exp.saturating_add(self.verifier.config().leeway);
            Duration::from_secs(until.saturating_sub(self.verifier.now()))
        });
        match (by_credentials, self.max_stream_age) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Stages 1–3 of the inbound pipeline: framing, credentials (CPU only, no I/O) and the
    /// policy. Returns the caller still to be [confirmed](Self::confirm) against replay, `None`
    /// for an anonymous request an optional guard lets through, or the rejection. A caller the
    /// policy refuses is rejected here, before the replay store is touched.
    ///
    /// `tls` is the peer a TLS-terminating adapter authenticated (mutual TLS). Without
    /// application-level credentials the TLS peer is the caller (and the policy applies to it
    /// the same way). Credentials that are present are verified, and must name the same
    /// workload as the peer unless [`allow_application_identity`](Self::allow_application_identity)
    /// was chosen.
    pub fn admit<H: HeaderSource + ?Sized>(
        &self,
        request: &RequestView<'_, H>,
        tls: Option<&TlsPeer>,
    ) -> Result<Option<PendingCaller>> {
        // Only an optional guard or a TLS peer needs to know whether credentials are present;
        // otherwise the verifier reads them (and names what is missing).
        let lenient = tls.is_some() || self.optional;
        let pending = match (lenient && !has_wimse_credentials(request.headers), tls) {
            (true, Some(peer)) => self.tls_caller(peer, request)?,
            (true, None) => return Ok(None),
            (false, _) => self.verifier.authenticate(request)?,
        };
        let mut pending = pending;
        if let Some(peer) = tls
            && peer.caller().id() != pending.id()
            && !self.application_identity
        {
            let error = crate::Error::with_detail(
                ErrorKind::TlsPeerMismatch,
                format!("TLS peer {}, request credentials {}", peer.caller().id(), pending.id()),
            );
            pending.caller.audit_refused(&error);
            return Err(error);
        }
        let policy = match self.policy_for(request.path) {
            Ok(policy) => policy,
            Err(error) => {
                pending.caller.audit_refused(&error);
                return Err(error);
            }
        };
        if let Some(policy) = policy {
            if let Err(error) = policy.check_request(&pending.caller, request.method, request.path) {
                pending.caller.audit_refused_by(policy.name(), &error);
                return Err(error);
            }
            // Named in the allow's record (written once the proof is claimed), not in later
            // refusals, which the policy did not decide.
            pending.caller.audit_policy(policy.name());
        }
        Ok(Some(pending))
    }

    /// The TLS peer as the caller, with the `Txn-Token` its connection carried (the mutual-TLS
    /// channel is what binds it; mutual-tls-03 has no token binding), validated as configured.
    fn tls_caller<H: HeaderSource + ?Sized>(
        &self,
        peer: &TlsPeer,
        request: &RequestView<'_, H>,
    ) -> Result<PendingCaller> {
        let mut pending = PendingCaller::from(peer);
        pending.caller.audit = self.verifier.audit_context(request.method, request.path);
        let checked = crate::server::framing::single_value(
            request.headers,
            crate::draft::TXN_TOKEN_HEADER,
            self.verifier.config().max_token_len,
            ErrorKind::DuplicateContextToken,
        )
        .and_then(|txn| {
            pending.caller.txn_token = txn.map(str::to_owned);
            self.verifier.attach_transaction(&mut pending.caller)?;
            self.verifier.check_revocations(&pending.caller)
        });
        if let Err(error) = checked {
            pending.caller.audit_refused(&error);
            return Err(error);
        }
        Ok(pending)
    }

    /// Stage 4: claims the caller's proof in the verifier's replay store (see
    /// [`Verifier::confirm`]). Ready at once with the in-memory store.
    pub fn confirm(&self, pending: PendingCaller) -> Confirm {
        self.verifier.confirm(pending)
    }

    /// The whole pipeline for one request: [`admit`](Self::admit), then
    /// [`confirm`](Self::confirm).
    pub async fn check<H: HeaderSource + ?Sized>(
        &self,
        request: &RequestView<'_, H>,
        tls: Option<&TlsPeer>,
    ) -> Result<Option<VerifiedCaller>> {
        match self.admit(request, tls)? {
            Some(pending) => self.confirm(pending).await.map(Some),
            None => Ok(None),
        }
    }

    /// The verifier.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// How an adapter answers `error`: [`Rejection::from_error`], or [`Rejection::revealing`]
    /// when the verifier was built with
    /// [`VerifierConfig::reveal_reasons`](crate::server::verify::VerifierConfig::reveal_reasons)
    /// (development only).
    pub fn rejection(&self, error: &crate::Error) -> Rejection {
        if self.verifier.config().reveal_reasons { Rejection::revealing(error) } else { Rejection::from_error(error) }
    }
}

pub use crate::server::policy::is_canonical_path;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_signing_decisions() {
        use crate::client::cred::StaticCredentials;
        use crate::jose::{Algorithm, SigningKey};
        use crate::protocol::trust::TrustStore;
        use crate::server::verify::VerifierConfig;
        use std::collections::BTreeMap;
        let issuer = SigningKey::generate(Algorithm::ES256).unwrap();
        let key = SigningKey::generate(Algorithm::ES256).unwrap();
        let wit = crate::protocol::wit::WitIssuer::new(issuer)
            .issue(&"spiffe://a.example/s".parse().unwrap(), key.public_jwk(), 1)
            .unwrap();
        let signer = Signer::new(StaticCredentials::new(crate::client::cred::Credentials::new(wit, key).unwrap()));
        let verifier = Verifier::new(TrustStore::new(), VerifierConfig::new().audience("a")).unwrap();
        let caller = |sign_response| VerifiedCaller {
            id: "spiffe://a.example/c".parse().unwrap(),
            method: ProofMethod::HttpSignature { nonce: "n".into(), expires: 2, sign_response },
            credential: crate::server::caller::Credential::Certificate { fingerprint: String::new(), not_before: None },
            txn_token: None,
            transaction: None,
            context_tokens: BTreeMap::new(),
            audit: None,
        };
        let plain = Pipeline::new(verifier.clone());
        assert_eq!(
            plain.response_nonce(Some(&caller(true))).unwrap_err().kind(),
            &ErrorKind::SignedResponseUnsupported
        );
        assert_eq!(plain.response_nonce(Some(&caller(false))).unwrap(), None);
        let signing = Pipeline::new(verifier.clone()).sign_responses(signer.clone());
        assert_eq!(signing.response_nonce(Some(&caller(true))).unwrap().as_deref(), Some("n"));
        assert_eq!(signing.response_nonce(Some(&caller(false))).unwrap(), None);
        let always = Pipeline::new(verifier).sign_responses(signer).always_sign_responses();
        assert_eq!(always.response_nonce(Some(&caller(false))).unwrap().as_deref(), Some("n"));
        assert_eq!(always.response_nonce(None).unwrap(), None);
    }

    #[test]
    fn route_policies_choose_the_longest_route_exact_or_prefix() {
        use crate::protocol::trust::TrustStore;
        use crate::server::policy::Rule;
        use crate::server::verify::VerifierConfig;
        let verifier = Verifier::new(TrustStore::new(), VerifierConfig::new().audience("a")).unwrap();
        let named = |name: &str| Policy::named(name).allow(Rule::any());
        let guard = Pipeline::new(verifier)
            .policy(named("general"))
            .route_policy("/pkg.Svc/", named("service"))
            .route_policy("/pkg.Svc/Get", named("get"));
        let name = |path: &str| guard.policy_for(path).unwrap().map(Policy::name);
        assert_eq!(name("/pkg.Svc/Get"), Some("get"));
        assert_eq!(name("/pkg.Svc/Get?x=1"), Some("get"), "the query is not part of the route");
        assert_eq!(name("/pkg.Svc/GetAll"), Some("service"), "an exact route is not a prefix");
        assert_eq!(name("/pkg.Svc/"), Some("service"));
        assert_eq!(name("/pkg.Svc"), Some("service"), "a prefix route covers its bare path");
        assert_eq!(name("/pkg.SvcX/Get"), Some("general"));
        assert_eq!(name("/pkg.SvcX"), Some("general"));
        assert_eq!(name("/other"), Some("general"));
        assert_eq!(name("/other/"), Some("general"), "a trailing slash is canonical");
        assert_eq!(name("/"), Some("general"));
        assert_eq!(name("/pkg.Svc/Get?a=%2F&b=//"), Some("get"), "the query is not the path");
    }

    #[test]
    fn with_route_policies_non_canonical_paths_are_refused() {
        use crate::protocol::trust::TrustStore;
        use crate::server::policy::Rule;
        use crate::server::verify::VerifierConfig;
        let verifier = || Verifier::new(TrustStore::new(), VerifierConfig::new().audience("a")).unwrap();
        let general = Policy::named("general").allow(Rule::any());
        let guard = Pipeline::new(verifier())
            .policy(general.clone())
            .route_policy("/admin/", Policy::named("strict").allow(Rule::exact("spiffe://d/admin").unwrap()));
        // Each of these is routed to /admin/users by some framework (actix-web decodes escapes;
        // NormalizePath merges slashes; dot segments resolve), so none may fall back to "general".
        for path in [
            "/%61dmin/users",
            "/admin%2Fusers",
            "//admin/users",
            "/x/../admin/users",
            "/./admin/users",
            "/admin/.",
            "/admin/..",
            "/a//b",
        ] {
            let error = guard.policy_for(path).unwrap_err();
            assert_eq!(error.kind(), &ErrorKind::NonCanonicalPath, "{path}");
            assert_eq!(error.kind().answer(), crate::error::Answer::Status(400));
        }
        // Names that merely contain dots are canonical.
        assert_eq!(guard.policy_for("/admin/v1.2/..x").unwrap().map(Policy::name), Some("strict"));
        assert_eq!(guard.policy_for("/.well-known/x").unwrap().map(Policy::name), Some("general"));
        // Without route policies nothing is refused: the general policy applies to every path.
        let plain = Pipeline::new(verifier()).policy(general);
        assert_eq!(plain.policy_for("/%61dmin//x/../").unwrap().map(Policy::name), Some("general"));
    }

    #[test]
    fn streams_end_with_the_credentials_or_their_age() {
        use crate::protocol::trust::TrustStore;
        use crate::server::verify::VerifierConfig;
        use crate::time::FixedClock;
        let verifier = Verifier::new(TrustStore::new(), VerifierConfig::new().audience("a").leeway(5))
            .unwrap()
            .clock(FixedClock::new(1_000));
        let issuer = crate::jose::SigningKey::generate(crate::jose::Algorithm::ES256).unwrap();
        let key = crate::jose::SigningKey::generate(crate::jose::Algorithm::ES256).unwrap();
        let wit = crate::protocol::wit::WitIssuer::new(issuer.clone())
            .lifetime(100)
            .issue(&"spiffe://a.example/c".parse().unwrap(), key.public_jwk(), 950)
            .unwrap();
        let trust = TrustStore::new().with(
            "spiffe://a.example".parse().unwrap(),
            crate::protocol::trust::TrustAnchors::new().key(issuer.public_key().clone()),
        );
        let validated = crate::protocol::wit::validate_wit(&wit, &trust, &Default::default(), 1_000).unwrap();
        let caller = VerifiedCaller {
            id: validated.subject().clone(),
            method: ProofMethod::Wpt { jti: "j".into(), exp: 1_010 },
            credential: crate::server::caller::Credential::Wit(std::sync::Arc::new(validated)),
            txn_token: None,
            transaction: None,
            context_tokens: Default::default(),
            audit: None,
        };
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs());
        // WIT exp 1050 + leeway 5, now 1000: 55 s.
        let guard = Pipeline::new(verifier);
        assert_eq!(secs(guard.stream_deadline(Some(&caller))), Some(55));
        assert_eq!(
            secs(guard.clone().max_stream_age(Duration::from_secs(10)).stream_deadline(Some(&caller))),
            Some(10)
        );
        assert_eq!(
            secs(guard.clone().max_stream_age(Duration::from_secs(99)).stream_deadline(Some(&caller))),
            Some(55)
        );
        assert_eq!(guard.clone().keep_streams_past_expiry().stream_deadline(Some(&caller)), None);
        assert_eq!(secs(guard.clone().max_stream_age(Duration::from_secs(7)).stream_deadline(None)), Some(7));
        assert_eq!(guard.stream_deadline(None), None);
    }
}
