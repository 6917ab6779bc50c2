//! Transaction Tokens (`draft-ietf-oauth-transaction-tokens-11`): the signed context of one
//! call chain — who it is for (`sub`), why (`scope`), under which transaction id (`txn`) —
//! that the Transaction Token Service (TTS) of a trust domain issues at the edge and every
//! workload of the chain verifies and forwards unchanged in the `Txn-Token` field.
//!
//! - [`validate`] checks a token against the TTS keys: explicit type `txntoken+jwt`, an
//!   algorithm the keys allow, the signature, `aud` = this trust domain (configuration only),
//!   `iat`/`exp` within a short maximum lifetime and bounded leeway, and the required claims.
//! - [`TxnTokenIssuer`] signs them (the TTS; `wimse-issuer` serves it at `/v1/token`).
//! - A [`Verifier`](crate::server::verify::Verifier) configured with [`TxnTokenValidation`] checks the
//!   `Txn-Token` of every request (independently of the proof's `tth` binding, which it also
//!   checks) and exposes the result as
//!   [`VerifiedCaller::transaction`](crate::server::caller::VerifiedCaller::transaction);
//!   [`Rule::txn_scope`](crate::server::policy::Rule::txn_scope) and friends make it a policy input.
//!
//! A Txn-Token is not an authentication credential: the caller is still the workload that
//! proved its WIT; the token only says on whose behalf and for what the chain runs.
//!
//! ```
//! use wimse_core::prelude::*;
//! use wimse_core::protocol::txn::{NewTxnToken, TxnTokenIssuer, TxnTokenValidation, validate};
//!
//! let now = 1_800_000_000;
//! let tts_key = SigningKey::generate(Algorithm::ES256)?.with_kid("tts-1");
//! let domain: TrustDomain = "spiffe://prod.example".parse()?;
//! let tts = TxnTokenIssuer::new(tts_key.clone(), &domain);
//! let token = tts.issue(&NewTxnToken::new("user-1842", "orders.purchase").requested_by("spiffe://prod.example/front"), now)?;
//!
//! let keys = TrustStore::new().with(domain.clone(), TrustAnchors::new().key(tts_key.public_key().clone()));
//! let verified = validate(&token, &keys, &TxnTokenValidation::new(domain), now)?;
//! assert_eq!(verified.subject(), "user-1842");
//! assert!(verified.has_scope("orders.purchase"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::id::{TrustDomain, WorkloadId};
use crate::jose::random_id;
use crate::jose::{Backend, SigningKey, jws};
use crate::protocol::trust::TrustStore;
use crate::protocol::wit::{MAX_LEEWAY_SECS, token_hash};

mod delegation;
mod forwarding;
mod request;
pub use delegation::{MAX_ACTORS, may_act_allows, parse_actors};
pub use forwarding::{MAX_WARNED_ORIGINS, TxnForwarding};
pub use request::{IssuedTxnToken, TxnActor, TxnSubject, TxnTokenRequest};

/// JOSE `typ` of a Txn-Token (draft -10 §9.1), as emitted; `application/txntoken+jwt` and any
/// case are accepted too (RFC 7515 §4.1.9).
pub const TXN_TOKEN_TYP: &str = "txntoken+jwt";
/// The RFC 8693 token type of a Txn-Token (`requested_token_type`, `issued_token_type`, and
/// `subject_token_type` of a replacement request).
pub const TXN_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:txn_token";
/// Subject token type for a transaction a workload starts itself (draft -10 §11.2.1).
pub const SELF_SIGNED_TYPE: &str = "urn:ietf:params:oauth:token-type:self_signed";
/// Subject token type of an unsigned JSON object naming the subject (draft -10 §11.2.2).
pub const UNSIGNED_JSON_TYPE: &str = "urn:ietf:params:oauth:token-type:unsigned_json";
/// The private claim holding the workloads that requested the tokens a replacement replaced,
/// first first (`req_wl` names only the latest requester in draft -10).
pub const REQ_WL_CHAIN: &str = "req_wl_chain";
/// Default longest Txn-Token lifetime a verifier accepts: 10 minutes (the draft: "short-lived",
/// minutes or less).
pub const DEFAULT_MAX_TXN_LIFETIME: u64 = 600;
/// Default largest Txn-Token accepted: 8 KiB, the framing limit of every token field.
pub const DEFAULT_MAX_TXN_TOKEN_LEN: usize = crate::protocol::wit::DEFAULT_MAX_TOKEN_LEN;

/// How Txn-Tokens are checked. Build with [`TxnTokenValidation::new`]; defaults are the secure
/// ones.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TxnTokenValidation {
    /// The trust domain: whose TTS keys verify the token, and the only accepted `aud`.
    pub trust_domain: TrustDomain,
    /// The `aud` value accepted (defaults to the trust domain, e.g. `spiffe://prod.example`).
    pub audience: String,
    /// Whether every request must carry a Txn-Token. Defaults to `false`: a request without one
    /// passes, one with an invalid token is refused.
    pub required: bool,
    /// Clock leeway in seconds (at most 300). Defaults to 30.
    pub leeway: u64,
    /// Longest accepted lifetime (`exp - iat`, and `exp` ahead of now), seconds. Defaults to
    /// [`DEFAULT_MAX_TXN_LIFETIME`].
    pub max_lifetime: u64,
    /// Largest token accepted, bytes. Defaults to [`DEFAULT_MAX_TXN_TOKEN_LEN`].
    pub max_token_len: usize,
    /// Crypto backend.
    pub backend: Backend,
}

impl TxnTokenValidation {
    /// Tokens of `trust_domain`'s TTS, for `aud` = the trust domain; optional on requests.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            audience: trust_domain.as_str().to_owned(),
            trust_domain,
            required: false,
            leeway: 30,
            max_lifetime: DEFAULT_MAX_TXN_LIFETIME,
            max_token_len: DEFAULT_MAX_TXN_TOKEN_LEN,
            backend: Backend::default(),
        }
    }
    /// Every request must carry a valid Txn-Token ([`ErrorKind::MissingTxnToken`] otherwise).
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }
    /// Accepts `aud` = `audience` instead of the trust domain's name.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = audience.into();
        self
    }
    /// Sets the longest accepted lifetime (seconds).
    pub fn max_lifetime(mut self, secs: u64) -> Self {
        self.max_lifetime = secs;
        self
    }
    /// Sets the clock leeway (seconds, at most 300).
    pub fn leeway(mut self, secs: u64) -> Self {
        self.leeway = secs;
        self
    }

    /// A validation no verifier accepts (an empty audience): what settings with an invalid
    /// Txn-Token section turn into, so they fail at start instead of disabling the checks.
    pub(crate) fn unusable() -> Self {
        let domain = TrustDomain::parse("spiffe://invalid").unwrap_or_else(|_| unreachable!("a valid literal"));
        Self { audience: String::new(), ..Self::new(domain) }
    }

    pub(crate) fn check_bounds(&self) -> Result<()> {
        let bad = |d: &'static str| Err(Error::with_detail(ErrorKind::InvalidConfiguration, d));
        if self.leeway > MAX_LEEWAY_SECS {
            return bad("txn-token leeway above 300 seconds");
        }
        if self.max_lifetime == 0 || self.audience.is_empty() {
            return bad("txn-token max_lifetime 0 or empty audience: every Txn-Token would be refused");
        }
        Ok(())
    }
}

/// A Txn-Token whose signature, type, audience, times and claims verified. (Its `Debug` shows
/// the claims, which may name a person: log [`txn`](Self::txn) and [`hash`](Self::hash).)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedTxnToken {
    txn: String,
    sub: String,
    scope: String,
    iat: u64,
    exp: u64,
    iss: Option<String>,
    requesting_workloads: Vec<String>,
    actors: Vec<WorkloadId>,
    may_act: Option<Value>,
    tctx: Option<Map<String, Value>>,
    rctx: Option<Map<String, Value>>,
    hash: String,
}

impl VerifiedTxnToken {
    /// The transaction id (`txn`): the same on every hop of the call chain, for audit.
    pub fn txn(&self) -> &str {
        &self.txn
    }
    /// The subject the transaction is for (`sub`, unique within the trust domain).
    pub fn subject(&self) -> &str {
        &self.sub
    }
    /// The purpose (`scope`), as sent: space-separated scope values.
    pub fn scope(&self) -> &str {
        &self.scope
    }
    /// The scope values.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ').filter(|s| !s.is_empty())
    }
    /// Whether `value` is one of the scope values (exact comparison).
    pub fn has_scope(&self, value: &str) -> bool {
        self.scopes().any(|s| s == value)
    }
    /// When it was issued (`iat`).
    pub fn issued_at(&self) -> u64 {
        self.iat
    }
    /// When it expires (`exp`).
    pub fn expires_at(&self) -> u64 {
        self.exp
    }
    /// The issuing TTS (`iss`), if named.
    pub fn issuer(&self) -> Option<&str> {
        self.iss.as_deref()
    }
    /// The workloads that requested this token and the tokens it replaced, first first; the last
    /// is `req_wl`.
    pub fn requesting_workloads(&self) -> &[String] {
        &self.requesting_workloads
    }
    /// The workloads acting for the subject (RFC 8693 `act`), the current actor first, then
    /// the one that delegated to it, back to the first delegate; empty when no one acts for
    /// the subject (a transaction of the subject's own, or of a workload for itself). Only the
    /// first acts now; the others are history.
    pub fn actors(&self) -> &[WorkloadId] {
        &self.actors
    }
    /// The workload acting for the subject now (the outermost `act`), if any.
    pub fn actor(&self) -> Option<&WorkloadId> {
        self.actors.first()
    }
    /// Who the subject allowed to act for it (RFC 8693 `may_act`, carried over by the TTS
    /// from the subject token), if it said.
    pub fn may_act(&self) -> Option<&Value> {
        self.may_act.as_ref()
    }
    /// The immutable transaction context (`tctx`), if any.
    pub fn transaction_context(&self) -> Option<&Map<String, Value>> {
        self.tctx.as_ref()
    }
    /// The request context (`rctx`), if any.
    pub fn request_context(&self) -> Option<&Map<String, Value>> {
        self.rctx.as_ref()
    }
    /// base64url SHA-256 of the token (what a WPT's `tth` carries); log this, never the token.
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

/// Checks a Txn-Token against `keys` (the anchors of `cfg.trust_domain`: the TTS keys), now.
/// Each refusal names its check: [`ErrorKind::OversizedToken`], [`ErrorKind::TxnTokenMalformed`],
/// [`ErrorKind::TxnTokenWrongType`], [`ErrorKind::TxnTokenUnknownKey`],
/// [`ErrorKind::InvalidTxnTokenSignature`], [`ErrorKind::TxnTokenAudienceMismatch`],
/// [`ErrorKind::ExpiredTxnToken`], [`ErrorKind::TxnTokenNotYetValid`],
/// [`ErrorKind::TxnTokenLifetimeTooLong`], [`ErrorKind::TxnTokenMissingClaim`],
/// [`ErrorKind::TrustAnchorsUnavailable`] (the TTS keys are stale or missing).
pub fn validate(token: &str, keys: &TrustStore, cfg: &TxnTokenValidation, now: u64) -> Result<VerifiedTxnToken> {
    let malformed = |e: Error| match e.kind() {
        ErrorKind::OversizedToken => e,
        _ => Error::with_detail(ErrorKind::TxnTokenMalformed, e.kind().reason()),
    };
    let jws = jws::parse(token, cfg.max_token_len).map_err(malformed)?;
    if !jws.header_str("typ").map_err(malformed)?.is_some_and(|typ| crate::draft::typ_is(typ, TXN_TOKEN_TYP)) {
        return Err(ErrorKind::TxnTokenWrongType.into());
    }
    jws.reject_crit().map_err(malformed)?;
    let alg = jws.algorithm().map_err(malformed)?;
    let kid = jws.header_str("kid").map_err(malformed)?;
    let anchors = keys
        .get(&cfg.trust_domain)
        .ok_or_else(|| Error::with_detail(ErrorKind::TrustAnchorsUnavailable, "no Transaction Token Service keys"))?;
    if !anchors.usable_at(now) {
        return Err(Error::with_detail(ErrorKind::TrustAnchorsUnavailable, "Transaction Token Service keys are stale"));
    }
    // Only the TTS keys: a token signed by any other key (a workload's own) names no anchor.
    let key = anchors
        .select(kid, alg)
        .map_err(|e| Error::with_detail(ErrorKind::TxnTokenUnknownKey, e.detail().unwrap_or_default().to_owned()))?;
    if !key.verify(cfg.backend, alg, jws.signing_input.as_bytes(), &jws.signature) {
        return Err(ErrorKind::InvalidTxnTokenSignature.into());
    }
    let claims = &jws.claims;
    let missing = |name: &'static str| Error::new(ErrorKind::TxnTokenMissingClaim(name));
    let string = |name: &'static str| match claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(missing(name)),
    };
    let number = |name: &'static str| claims.get(name).and_then(Value::as_u64).ok_or_else(|| missing(name));
    // One audience, exactly ours: a token of another trust domain is never accepted here.
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == &cfg.audience,
        Some(Value::Array(auds)) => auds.len() == 1 && auds[0].as_str() == Some(cfg.audience.as_str()),
        None => return Err(missing("aud")),
        Some(_) => false,
    };
    if !audience_ok {
        return Err(Error::with_detail(
            ErrorKind::TxnTokenAudienceMismatch,
            format!("this trust domain is {}", cfg.audience),
        ));
    }
    let (iat, exp) = (number("iat")?, number("exp")?);
    if now >= exp.saturating_add(cfg.leeway) {
        return Err(ErrorKind::ExpiredTxnToken.into());
    }
    let nbf = claims.get("nbf").map(|v| v.as_u64().ok_or_else(|| missing("nbf"))).transpose()?;
    if iat > now.saturating_add(cfg.leeway) || nbf.is_some_and(|nbf| nbf > now.saturating_add(cfg.leeway)) {
        return Err(ErrorKind::TxnTokenNotYetValid.into());
    }
    if exp <= iat {
        return Err(Error::with_detail(ErrorKind::TxnTokenMalformed, "exp is not after iat"));
    }
    if exp.saturating_sub(iat) > cfg.max_lifetime
        || exp > now.saturating_add(cfg.max_lifetime).saturating_add(cfg.leeway)
    {
        return Err(Error::with_detail(
            ErrorKind::TxnTokenLifetimeTooLong,
            format!("longer than {} s", cfg.max_lifetime),
        ));
    }
    let object = |name: &'static str| match claims.get(name) {
        None => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map.clone())),
        Some(_) => Err(missing(name)),
    };
    // -10: `req_wl` is one string, the latest requester; the earlier ones of a replaced token
    // travel in our `req_wl_chain` (the draft leaves the chain's form to deployments).
    let mut requesting_workloads = match claims.get(REQ_WL_CHAIN) {
        None => Vec::new(),
        Some(Value::Array(chain)) => chain
            .iter()
            .map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| missing(REQ_WL_CHAIN))?,
        Some(_) => return Err(missing(REQ_WL_CHAIN)),
    };
    requesting_workloads.push(string("req_wl")?);
    let iss = match claims.get("iss") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(missing("iss")),
    };
    let actors = delegation::actors_of(claims.get("act"))
        .map_err(|reason| Error::with_detail(ErrorKind::TxnTokenMalformed, reason))?;
    let may_act = match claims.get("may_act") {
        None => None,
        Some(value @ Value::Object(_)) => Some(value.clone()),
        Some(_) => return Err(Error::with_detail(ErrorKind::TxnTokenMalformed, "may_act is not an object")),
    };
    Ok(VerifiedTxnToken {
        txn: string("txn")?,
        sub: string("sub")?,
        scope: string("scope")?,
        iat,
        exp,
        iss,
        requesting_workloads,
        actors,
        may_act,
        tctx: object("tctx")?,
        rctx: object("rctx")?,
        hash: token_hash(token),
    })
}

/// What a new Txn-Token says; the [`TxnTokenIssuer`] adds `iat`, `exp`, `aud` and `iss`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTxnToken {
    /// `txn`; a fresh random id unless set (a replacement keeps the original's).
    pub txn: Option<String>,
    /// `sub`.
    pub sub: String,
    /// `scope`.
    pub scope: String,
    /// The requesting workloads, first first: the last becomes `req_wl`, the others
    /// [`REQ_WL_CHAIN`].
    pub requesting_workloads: Vec<String>,
    /// `tctx`.
    pub tctx: Option<Map<String, Value>>,
    /// `rctx`.
    pub rctx: Option<Map<String, Value>>,
    /// The workloads acting for `sub` (`act`), the current actor first; at most
    /// [`MAX_ACTORS`].
    pub actors: Vec<WorkloadId>,
    /// `may_act`: who the subject allowed to act for it, carried from the subject token so
    /// that a later replacement adding the first actor is held to it.
    pub may_act: Option<Value>,
    /// The latest `exp` allowed (a replacement never outlives the token it replaces).
    pub not_after: Option<u64>,
}

impl NewTxnToken {
    /// A token for `sub` with purpose `scope`.
    pub fn new(sub: impl Into<String>, scope: impl Into<String>) -> Self {
        Self {
            txn: None,
            sub: sub.into(),
            scope: scope.into(),
            requesting_workloads: Vec::new(),
            tctx: None,
            rctx: None,
            actors: Vec::new(),
            may_act: None,
            not_after: None,
        }
    }
    /// `actor` now acts for the subject, on behalf of the actors before it (it becomes the
    /// outermost `act`).
    pub fn acted_by(mut self, actor: WorkloadId) -> Self {
        self.actors.insert(0, actor);
        self
    }
    /// Appends a requesting workload (`req_wl`).
    pub fn requested_by(mut self, workload: impl Into<String>) -> Self {
        self.requesting_workloads.push(workload.into());
        self
    }
    /// Sets the transaction context (`tctx`).
    pub fn context(mut self, tctx: Map<String, Value>) -> Self {
        self.tctx = Some(tctx);
        self
    }
    /// Sets the request context (`rctx`).
    pub fn request_context(mut self, rctx: Map<String, Value>) -> Self {
        self.rctx = Some(rctx);
        self
    }
    /// The replacement of `original` (draft -10 §13.15): same `txn`, `sub` (and `aud`), `tctx`,
    /// `rctx` and actors (`act`; add one with [`acted_by`](Self::acted_by)); `requester`
    /// becomes `req_wl` and the earlier requesters stay in the chain; a
    /// `scope` whose values are all the original's. It never outlives the original (the draft
    /// lets a TTS extend it; this one does not). [`ErrorKind::InvalidScope`] if `scope` widens.
    pub fn replacing(original: &VerifiedTxnToken, scope: &str, requester: impl Into<String>) -> Result<Self> {
        let mut values = scope.split(' ').filter(|s| !s.is_empty()).peekable();
        let narrower = values.peek().is_some() && values.all(|s| original.has_scope(s));
        if !narrower {
            return Err(Error::with_detail(ErrorKind::InvalidScope, "a replacement may only narrow the scope"));
        }
        let mut requesting_workloads = original.requesting_workloads.clone();
        requesting_workloads.push(requester.into());
        Ok(Self {
            txn: Some(original.txn.clone()),
            sub: original.sub.clone(),
            scope: scope.to_owned(),
            requesting_workloads,
            tctx: original.tctx.clone(),
            rctx: original.rctx.clone(),
            actors: original.actors.clone(),
            may_act: original.may_act.clone(),
            not_after: Some(original.exp),
        })
    }
}

/// Signs Txn-Tokens: what a Transaction Token Service does (never a workload: only the TTS
/// keys are anchors for Txn-Tokens).
#[derive(Debug, Clone)]
pub struct TxnTokenIssuer {
    key: SigningKey,
    audience: String,
    iss: Option<String>,
    lifetime: u64,
    backend: Backend,
}

impl TxnTokenIssuer {
    /// Signs with `key` for `aud` = `trust_domain`, valid 5 minutes.
    pub fn new(key: SigningKey, trust_domain: &TrustDomain) -> Self {
        Self { key, audience: trust_domain.as_str().to_owned(), iss: None, lifetime: 300, backend: Backend::default() }
    }
    /// Names the TTS in `iss`.
    pub fn issuer(mut self, iss: impl Into<String>) -> Self {
        self.iss = Some(iss.into());
        self
    }
    /// Sets the lifetime (seconds).
    pub fn lifetime(mut self, secs: u64) -> Self {
        self.lifetime = secs;
        self
    }
    /// Sets the `aud` (defaults to the trust domain).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = audience.into();
        self
    }
    /// The lifetime of the tokens it signs.
    pub fn token_lifetime(&self) -> u64 {
        self.lifetime
    }

    /// Signs `token` at `now`: `req_wl` is the last requesting workload, the earlier ones (of
    /// a replacement) go in [`REQ_WL_CHAIN`].
    pub fn issue(&self, token: &NewTxnToken, now: u64) -> Result<String> {
        self.issue_signed(token, now).map(|signed| signed.token)
    }

    /// Like [`issue`](Self::issue), also saying the `txn` and `exp` it chose. Refuses a token
    /// that would already be expired (`not_after` not after `now`).
    pub fn issue_signed(&self, token: &NewTxnToken, now: u64) -> Result<SignedTxnToken> {
        if token.sub.is_empty() || token.scope.split(' ').all(str::is_empty) || token.requesting_workloads.is_empty() {
            return Err(Error::with_detail(ErrorKind::InvalidConfiguration, "a Txn-Token needs sub, scope and req_wl"));
        }
        #[derive(Serialize)]
        struct Claims<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            iss: Option<&'a str>,
            aud: &'a str,
            iat: u64,
            exp: u64,
            txn: &'a str,
            sub: &'a str,
            scope: &'a str,
            req_wl: &'a str,
            #[serde(skip_serializing_if = "<[String]>::is_empty")]
            req_wl_chain: &'a [String],
            #[serde(skip_serializing_if = "Option::is_none")]
            tctx: Option<&'a Map<String, Value>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            rctx: Option<&'a Map<String, Value>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            act: Option<Value>,
            #[serde(skip_serializing_if = "Option::is_none")]
            may_act: Option<&'a Value>,
        }
        let txn = token.txn.clone().unwrap_or_else(random_id);
        let exp = now.saturating_add(self.lifetime).min(token.not_after.unwrap_or(u64::MAX));
        if exp <= now {
            return Err(Error::with_detail(ErrorKind::ExpiredTxnToken, "it would expire before it is issued"));
        }
        if token.actors.len() > MAX_ACTORS {
            return Err(Error::with_detail(
                ErrorKind::InvalidConfiguration,
                format!("a Txn-Token names at most {MAX_ACTORS} actors"),
            ));
        }
        let Some((req_wl, req_wl_chain)) = token.requesting_workloads.split_last() else {
            return Err(Error::with_detail(ErrorKind::InvalidConfiguration, "a Txn-Token needs req_wl"));
        };
        let claims = Claims {
            iss: self.iss.as_deref(),
            aud: &self.audience,
            iat: now,
            exp,
            txn: &txn,
            sub: &token.sub,
            scope: &token.scope,
            req_wl,
            req_wl_chain,
            tctx: token.tctx.as_ref(),
            rctx: token.rctx.as_ref(),
            act: delegation::act_claim(&token.actors),
            may_act: token.may_act.as_ref(),
        };
        let signed = jws::sign(TXN_TOKEN_TYP, self.key.kid(), &claims, &self.key, self.backend)?;
        Ok(SignedTxnToken { token: signed, txn, expires_at: exp })
    }
}

/// A Txn-Token just signed, with what its issuer chose.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedTxnToken {
    /// The token (compact JWS).
    pub token: String,
    /// Its transaction id.
    pub txn: String,
    /// Its `exp`.
    pub expires_at: u64,
}

impl std::fmt::Debug for SignedTxnToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedTxnToken")
            .field("txn", &self.txn)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The Txn-Token to forward on an outbound request (a request extension for the client
/// adapters): exactly the value received, e.g. `TxnToken(caller.txn_token().unwrap().to_owned())`.
/// Sent, bound to the request's proof, only to origins of this trust domain
/// ([`TxnForwarding`]).
#[derive(Clone, PartialEq, Eq)]
pub struct TxnToken(pub String);

impl std::fmt::Debug for TxnToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token (draft -10 §15.2): its hash.
        f.debug_tuple("TxnToken").field(&token_hash(&self.0)).finish()
    }
}
