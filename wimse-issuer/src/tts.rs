//! The Transaction Token Service (draft-ietf-oauth-transaction-tokens-11 §10–11): at the edge of
//! a call chain, a workload that authenticated with its own WIT + WPT exchanges the subject of
//! the transaction (a user's access token, an ID token, a token it signs itself for work it
//! starts, or an unsigned `{"sub": …}`) for a short-lived Txn-Token of this trust domain, with
//! the purpose (`scope`) its configuration allows. A Txn-Token of the same transaction can be
//! exchanged for a narrower one (replacement).
//!
//! Refusals, each distinct: an unauthenticated requester (`invalid_client`), one not allowed to
//! request Txn-Tokens or not with this kind of subject token (`unauthorized_client`), a purpose
//! not granted or wider than the subject token's (`invalid_scope`), an invalid subject token
//! (`invalid_request`), an audience other than this trust domain (`invalid_target`).

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use wimse_core::id::{TrustDomain, WorkloadId};
use wimse_core::jose::{PublicKey, jws};
use wimse_core::protocol::trust::{TrustAnchors, TrustHandle, TrustStore};
use wimse_core::protocol::txn::{SELF_SIGNED_TYPE, TXN_TOKEN_TYPE, UNSIGNED_JSON_TYPE};
use wimse_core::replay::{Claim, ReplayClaim, ReplayStore};
use wimse_core::server::policy::{Policy, Rule};
use wimse_core::server::verify::{Verifier, VerifierConfig};
use wimse_core::time::Clock;
use wimse_core::{Error, ErrorKind, Result};

use crate::config::{ExchangeKind, IssuerConfig, SubjectIssuer, TxnRequester, TxnTokenServiceConfig, config_error};
use crate::store::KeyStorage;
use wimse_core::protocol::oauth::{ACCESS_TOKEN_TYPE, ID_TOKEN_TYPE, JWT_TOKEN_TYPE};

/// Largest `request_context` / `request_details` accepted (they become `rctx` / `tctx`).
const MAX_CONTEXT_LEN: usize = 2048;
/// Largest subject token accepted.
pub(crate) const MAX_SUBJECT_TOKEN_LEN: usize = 16 * 1024;
/// Longest lifetime of a self-signed subject token, seconds.
const MAX_SELF_SIGNED_LIFETIME: u64 = 300;
/// Most scope values in one request.
pub(crate) const MAX_SCOPE_VALUES: usize = 16;

/// The subject token types by short name (configuration) and URN (requests).
pub(crate) fn subject_type(name: &str) -> Option<&'static str> {
    Some(match name {
        "access_token" | ACCESS_TOKEN_TYPE => ACCESS_TOKEN_TYPE,
        "id_token" | ID_TOKEN_TYPE => ID_TOKEN_TYPE,
        "jwt" | JWT_TOKEN_TYPE => JWT_TOKEN_TYPE,
        "self_signed" | SELF_SIGNED_TYPE => SELF_SIGNED_TYPE,
        "unsigned_json" | UNSIGNED_JSON_TYPE => UNSIGNED_JSON_TYPE,
        "txn_token" | TXN_TOKEN_TYPE => TXN_TOKEN_TYPE,
        _ => return None,
    })
}

pub(crate) struct Requester {
    pub(crate) who: Policy,
    pub(crate) scopes: Vec<String>,
    pub(crate) types: Vec<&'static str>,
    pub(crate) issuers: Vec<String>,
    /// May act for its subjects (an agent).
    pub(crate) actor: bool,
}

/// The TTS part of an [`IdentityServer`].
pub(crate) struct Tts {
    pub(crate) lifetime: u64,
    /// The TTS identifier a self-signed subject token's `aud` names: the token endpoint.
    pub(crate) identifier: String,
    pub(crate) subject_issuers: Vec<(SubjectIssuer, TrustAnchors)>,
    pub(crate) requesters: Vec<Requester>,
    /// Authenticates requesters (WIT + WPT for the token endpoint) against this server's own
    /// keys, claiming each proof in the key storage (shared by every replica on PostgreSQL).
    pub(crate) verifier: Verifier,
    pub(crate) anchors: TrustHandle,
    /// The key state (epoch, sequence) whose keys `anchors` holds.
    pub(crate) applied: Mutex<Option<(String, u64)>>,
    /// Txn-Tokens per requester.
    pub(crate) per_requester: wimse_core::rate::RateLimiter<WorkloadId>,
    /// Prepended to subjects requesters name themselves.
    pub(crate) named_subject_prefix: String,
    /// The most actors a delegation chain may name.
    pub(crate) max_actors: usize,
}

/// Proof `jti`s claimed in the identity server's storage, so a WPT sent to one replica is
/// refused by every other.
struct StorageReplay(Arc<dyn KeyStorage>);

impl std::fmt::Debug for StorageReplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageReplay")
    }
}

impl ReplayStore for StorageReplay {
    fn claim(&self, claim: &ReplayClaim, now: u64) -> Claim {
        let (storage, claim) = (self.0.clone(), *claim);
        Claim::pending(async move { storage.claim_once(&claim, now).await })
    }
}

/// The `txn_tokens` section checked, with what checking parsed; [`Tts::new`] builds the service.
pub(crate) struct CheckedTts {
    config: TxnTokenServiceConfig,
    endpoint: String,
    subject_issuers: Vec<(SubjectIssuer, TrustAnchors)>,
    requesters: Vec<Requester>,
}

impl CheckedTts {
    /// Checks the section (its fields, its subject issuers and requesters) within `issuer`.
    pub(crate) fn check(config: &TxnTokenServiceConfig, domain: &TrustDomain, issuer: &IssuerConfig) -> Result<Self> {
        let field = |name: String| format!("txn_tokens.{name}");
        if config.rate_limit.burst == 0 || config.rate_limit.per_minute == 0 {
            return Err(config_error(field("rate_limit".into()), "burst and per_minute must be positive"));
        }
        if config.max_actors == 0 || config.max_actors > wimse_core::protocol::txn::MAX_ACTORS {
            return Err(config_error(field("max_actors".into()), "must be between 1 and 8"));
        }
        if config.lifetime == 0 || config.lifetime > 600 {
            return Err(config_error(
                field("lifetime".into()),
                "must be between 1 and 600 seconds (Txn-Tokens are short-lived)",
            ));
        }
        let endpoint = issuer.token_endpoint.clone().ok_or_else(|| {
            config_error(field("".into()).trim_end_matches('.'), "needs token_endpoint (the requesters' WPT audience)")
        })?;
        let mut subject_issuers = Vec::new();
        for (i, s) in config.subject_issuers.iter().enumerate() {
            let keys = crate::config::configured_keys(
                &field(format!("subject_issuers[{i}]")),
                s.jwks.as_ref(),
                s.jwks_file.as_deref(),
            )?;
            if s.issuer.is_empty() || s.audience.is_empty() || s.audience == endpoint {
                return Err(config_error(
                    field(format!("subject_issuers[{i}]")),
                    "issuer and audience must be set (and the audience not the token endpoint)",
                ));
            }
            if s.kind == ExchangeKind::JwtSvid {
                return Err(config_error(field(format!("subject_issuers[{i}].kind")), "access-token or jwt"));
            }
            if s.max_token_lifetime == 0 || s.max_token_lifetime > 604_800 {
                return Err(config_error(
                    field(format!("subject_issuers[{i}].max_token_lifetime")),
                    "must be between 1 and 604800 seconds",
                ));
            }
            if config.subject_issuers[..i].iter().any(|o| o.name == s.name || o.issuer == s.issuer) {
                return Err(config_error(
                    field(format!("subject_issuers[{i}]")),
                    "another has the same name or issuer",
                ));
            }
            subject_issuers.push((s.clone(), keys));
        }
        let mut requesters = Vec::new();
        for (i, r) in config.requesters.iter().enumerate() {
            requesters.push(
                requester(r, domain, &subject_issuers)
                    .map_err(|e| config_error(field(format!("requesters[{i}]")), e))?,
            );
        }
        Ok(Self { config: config.clone(), endpoint, subject_issuers, requesters })
    }
}

impl Tts {
    /// The service for a checked section, claiming its requesters' proofs in `storage`.
    pub(crate) fn new(checked: CheckedTts, storage: Arc<dyn KeyStorage>, clock: Arc<dyn Clock>) -> Result<Self> {
        let CheckedTts { config, endpoint, subject_issuers, requesters } = checked;
        let anchors = TrustHandle::default();
        // A small quota of live proofs per requester: the storage's replay claims are shared with
        // the DPoP and assertion grants, and one workload must not fill them.
        let verifier_config = VerifierConfig::new().audience(endpoint.clone()).only_wpt().caller_quota(1000);
        let verifier = Verifier::new(TrustStore::new(), verifier_config)?
            .trust_handle(anchors.clone())
            .replay_store(StorageReplay(storage))
            .clock(clock);
        Ok(Self {
            lifetime: config.lifetime,
            identifier: endpoint,
            subject_issuers,
            requesters,
            verifier,
            anchors,
            applied: Mutex::new(None),
            per_requester: wimse_core::rate::RateLimiter::new(config.rate_limit),
            named_subject_prefix: config.named_subject_prefix.clone().unwrap_or_default(),
            max_actors: config.max_actors,
        })
    }
}

fn requester(
    r: &TxnRequester,
    domain: &TrustDomain,
    issuers: &[(SubjectIssuer, TrustAnchors)],
) -> std::result::Result<Requester, String> {
    let mut rules = Vec::new();
    for id in &r.workloads {
        let id = WorkloadId::parse(id).map_err(|e| format!("workloads: {e}"))?;
        if !id.is_in(domain) {
            return Err(format!("{id} is not in {domain}"));
        }
        rules.push(Rule::workload(id));
    }
    for prefix in &r.prefixes {
        if !prefix.starts_with(&format!("{domain}/")) {
            return Err(format!("prefix {prefix} is not in {domain}"));
        }
        rules.push(Rule::path_prefix(prefix).map_err(|e| format!("prefixes: {e}"))?);
    }
    if rules.is_empty() {
        return Err("names no workload".into());
    }
    if r.scopes.is_empty() || r.scopes.iter().any(|s| s.is_empty() || s.contains(' ')) {
        return Err("scopes: at least one, each a single non-empty value".into());
    }
    let types = r
        .subject_token_types
        .iter()
        .map(|t| subject_type(t).ok_or_else(|| format!("unknown subject token type `{t}`")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if types.is_empty() {
        return Err("subject_token_types: at least one".into());
    }
    let external = types.iter().any(|t| [ACCESS_TOKEN_TYPE, ID_TOKEN_TYPE, JWT_TOKEN_TYPE].contains(t));
    if external && r.subject_issuers.is_empty() {
        return Err("external subject token types need subject_issuers".into());
    }
    if let Some(unknown) = r.subject_issuers.iter().find(|n| !issuers.iter().any(|(s, _)| &s.name == *n)) {
        return Err(format!("no subject issuer named `{unknown}`"));
    }
    Ok(Requester {
        who: Policy::named("txn-token requesters").allow(Rule::any_of(rules)),
        scopes: r.scopes.clone(),
        types,
        issuers: r.subject_issuers.clone(),
        actor: r.actor,
    })
}

/// The subject of the transaction, as the subject token established it.
pub(crate) struct Subject {
    pub(crate) sub: String,
    /// The scope the subject token carries, when it carries one: the Txn-Token's bound.
    pub(crate) scope: Option<String>,
    /// When the subject token expires: the Txn-Token never outlives it.
    pub(crate) expires_at: Option<u64>,
    /// The subject token's `may_act` (RFC 8693 §4.4): who may act for the subject.
    pub(crate) may_act: Option<Value>,
    /// A replacement: the token it replaces.
    pub(crate) replaces: Option<wimse_core::protocol::txn::VerifiedTxnToken>,
}

pub(crate) fn refused(detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::with_detail(ErrorKind::ExchangeRefused, detail)
}

pub(crate) fn json_object(text: Option<&str>, name: &'static str) -> Result<Option<Map<String, Value>>> {
    let Some(text) = text else { return Ok(None) };
    if text.len() > MAX_CONTEXT_LEN {
        return Err(refused(format!("{name} is larger than {MAX_CONTEXT_LEN} bytes")));
    }
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        _ => Err(refused(format!("{name} is not a JSON object"))),
    }
}

/// A self-signed subject token (§11.2.1): a JWT the requester signed with its WIT key, `iss` its
/// identifier, `aud` this TTS (the token endpoint), `iat` and `exp` at most 5 minutes apart.
/// Returns its `sub`.
pub(crate) fn self_signed(token: &str, requester: &WorkloadId, key: &PublicKey, tts: &str, now: u64) -> Result<String> {
    let parsed =
        jws::parse(token, MAX_SUBJECT_TOKEN_LEN).map_err(|e| refused(format!("subject_token: {}", e.reason())))?;
    parsed.reject_crit().map_err(|_| refused("subject_token has crit"))?;
    // Not another WIMSE token of the requester's (a proof, a WIT) mistaken for this one.
    let typ = parsed.header_str("typ")?.unwrap_or("jwt").to_ascii_lowercase();
    if !matches!(typ.as_str(), "jwt" | "application/jwt") {
        return Err(refused("a self-signed subject token's typ is JWT"));
    }
    let alg = parsed.algorithm().map_err(|_| refused("subject_token alg"))?;
    if !key.accepts(alg)
        || !key.verify(wimse_core::jose::Backend::default(), alg, parsed.signing_input.as_bytes(), &parsed.signature)
    {
        return Err(refused("the self-signed subject token is not signed with the requester's key"));
    }
    let claims = &parsed.claims;
    if claims.get("iss").and_then(Value::as_str) != Some(requester.as_str()) {
        return Err(refused("the self-signed subject token's iss is not the requester"));
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == tts,
        Some(Value::Array(auds)) => auds.len() == 1 && auds[0].as_str() == Some(tts),
        _ => false,
    };
    if !aud_ok {
        return Err(refused("the self-signed subject token's aud is not this service"));
    }
    let (Some(iat), Some(exp)) = (claims.get("iat").and_then(Value::as_u64), claims.get("exp").and_then(Value::as_u64))
    else {
        return Err(refused("the self-signed subject token needs iat and exp"));
    };
    if now >= exp || iat > now + 30 || exp.saturating_sub(iat) > MAX_SELF_SIGNED_LIFETIME {
        return Err(refused("the self-signed subject token is expired, not yet valid, or too long-lived"));
    }
    let sub = claims.get("sub").and_then(Value::as_str).filter(|s| !s.is_empty());
    Ok(sub.ok_or_else(|| refused("subject_token has no sub"))?.to_owned())
}
