//! Workload Proof Tokens (draft-ietf-wimse-wpt-02): creating and validating.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::draft::WPT_TYP;
use crate::error::{Error, ErrorKind, Result};
use crate::jose::random_id;
use crate::jose::{Backend, SigningKey, b64url_decode_into, jws};
use crate::protocol::wit::{DEFAULT_MAX_TOKEN_LEN, VerifiedWit, token_hash};
use crate::replay::MAX_PROOF_ID_LEN;

mod token;
use token::{Number, Text};

/// Longest `jti` accepted, in bytes.
pub const MAX_JTI_LEN: usize = MAX_PROOF_ID_LEN;

/// Builds a WPT for one request.
///
/// ```
/// use wimse_core::jose::{Algorithm, SigningKey};
/// use wimse_core::protocol::wpt::WptBuilder;
///
/// let key = SigningKey::generate(Algorithm::ES256)?;
/// let wit = "eyJ…the WIT string as sent…";
/// let wpt = WptBuilder::new(&key, wit, "https://api.example/orders")
///     .txn_token("txn-token-value")
///     .sign(1_800_000_000)?;
/// assert_eq!(wpt.split('.').count(), 3);
/// # Ok::<(), wimse_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct WptBuilder<'a> {
    key: &'a SigningKey,
    wit: &'a str,
    wit_hash: Option<&'a str>,
    aud: &'a str,
    lifetime: u64,
    txn_token: Option<&'a str>,
    other_tokens: Vec<(String, &'a str)>,
    backend: Backend,
}

impl<'a> WptBuilder<'a> {
    /// A proof by `key` (the WIT's confirmation key) for `wit`, addressed to `aud` (the target
    /// URI without query and fragment, or the audience the recipient configured).
    pub fn new(key: &'a SigningKey, wit: &'a str, aud: &'a str) -> Self {
        Self {
            key,
            wit,
            wit_hash: None,
            aud,
            lifetime: 60,
            txn_token: None,
            other_tokens: Vec::new(),
            backend: Backend::default(),
        }
    }

    /// The WIT's hash (`wth`), when the caller keeps it (see
    /// [`Credentials::wit_hash`](crate::client::cred::Credentials::wit_hash)); computed from the WIT
    /// otherwise.
    pub fn wit_hash(mut self, hash: &'a str) -> Self {
        self.wit_hash = Some(hash);
        self
    }

    /// Lifetime in seconds (default 60; keep it short).
    pub fn lifetime(mut self, secs: u64) -> Self {
        self.lifetime = secs;
        self
    }

    /// Binds the request's `Txn-Token` field value (`tth`).
    pub fn txn_token(mut self, value: &'a str) -> Self {
        self.txn_token = Some(value);
        self
    }

    /// Binds another context-token field (`oth`), by header name and value as sent.
    pub fn other_token(mut self, header_name: &str, value: &'a str) -> Self {
        self.other_tokens.push((header_name.to_ascii_lowercase(), value));
        self
    }

    /// Chooses the crypto backend.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Signs the proof, valid from `now` for the lifetime, with a fresh 128-bit `jti`.
    pub fn sign(&self, now: u64) -> Result<String> {
        #[derive(Serialize)]
        struct Claims<'a> {
            aud: &'a str,
            exp: u64,
            jti: String,
            wth: std::borrow::Cow<'a, str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            tth: Option<String>,
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            oth: BTreeMap<&'a str, String>,
        }
        let claims = Claims {
            aud: self.aud,
            exp: now.saturating_add(self.lifetime),
            jti: random_id(),
            wth: match self.wit_hash {
                Some(hash) => std::borrow::Cow::Borrowed(hash),
                None => std::borrow::Cow::Owned(token_hash(self.wit)),
            },
            tth: self.txn_token.map(token_hash),
            oth: self.other_tokens.iter().map(|(n, v)| (n.as_str(), token_hash(trim_ows(v)))).collect(),
        };
        jws::sign(WPT_TYP, None, &claims, self.key, self.backend)
    }
}

/// Trims leading and trailing spaces and tabs (the `oth` default profile hashes the trimmed value).
pub(crate) fn trim_ows(value: &str) -> &str {
    value.trim_matches([' ', '\t'])
}

/// How WPTs are validated.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WptValidation {
    /// Clock leeway for `exp`, in seconds. Defaults to 30.
    pub leeway: u64,
    /// Proofs expiring more than this many seconds from now are refused. Defaults to 300.
    pub max_lifetime: u64,
    /// Largest token accepted, in bytes.
    pub max_token_len: usize,
    /// Lower-case names of context-token fields this service understands in `oth`.
    pub context_tokens: Vec<String>,
    /// Crypto backend.
    pub backend: Backend,
}

impl Default for WptValidation {
    fn default() -> Self {
        Self {
            leeway: 30,
            max_lifetime: 300,
            max_token_len: DEFAULT_MAX_TOKEN_LEN,
            context_tokens: Vec::new(),
            backend: Backend::default(),
        }
    }
}

/// What the request around a WPT carries, as the recipient sees it.
#[derive(Debug, Clone, Default)]
pub struct ProofContext<'a> {
    /// The `Txn-Token` field value, if present.
    pub txn_token: Option<&'a str>,
    /// Values of the configured context-token fields present in the request, by lower-case name.
    pub other_tokens: BTreeMap<String, &'a str>,
}

/// The checked claims of a WPT.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedWpt {
    /// The audience the proof was addressed to.
    pub aud: String,
    /// Expiry.
    pub exp: u64,
    /// The proof id.
    pub jti: String,
}

/// Validates a WPT against an already validated WIT, in the order of wpt-02 §2 with explicit
/// typing first: `typ`, `alg` = `cnf.jwk.alg`, signature, `exp` and maximum lifetime, `aud`,
/// `wth`, `tth`, `oth` and the `jti`'s presence and length.
///
/// It does not check for replay: the caller claims
/// [`ReplayClaim::wpt`](crate::replay::ReplayClaim::wpt) in a
/// [`ReplayStore`](crate::replay::ReplayStore) afterwards (the [`Verifier`](crate::server::verify::Verifier)
/// does, after the policy), so a bad proof or a refused caller never uses up a slot.
///
/// An `audience_mismatch` naming the proof's audience `parameter` (a WPT's `aud`, a
/// signature's `wimse-aud`) and the value received (quoted and cut at 128 characters: it is
/// the sender's, not a secret, but it goes to logs).
pub(crate) fn audience_mismatch(parameter: &str, aud: &str) -> Error {
    let shown: String = aud.chars().take(128).collect();
    Error::with_detail(ErrorKind::AudienceMismatch, format!("received {parameter} {shown:?}"))
}

/// `audience_ok` decides whether an `aud` value names this service; it must come from
/// configuration, never from the request's `Host`.
pub fn validate_wpt(
    token: &str,
    wit: &VerifiedWit,
    context: &ProofContext<'_>,
    audience_ok: impl Fn(&str) -> bool,
    cfg: &WptValidation,
    now: u64,
) -> Result<VerifiedWpt> {
    let mut aud = String::new();
    let (exp, jti) = check(token, wit, context, |a| audience_ok(a).then(|| aud.push_str(a)).is_some(), cfg, now)?;
    Ok(VerifiedWpt { aud, exp, jti })
}

/// [`validate_wpt`] for the verifier's hot path: the proof's expiry and `jti` only.
pub(crate) fn check(
    token: &str,
    wit: &VerifiedWit,
    context: &ProofContext<'_>,
    mut audience_ok: impl FnMut(&str) -> bool,
    cfg: &WptValidation,
    now: u64,
) -> Result<(u64, String)> {
    if token.len() > cfg.max_token_len {
        return Err(Error::with_detail(
            ErrorKind::OversizedToken,
            format!("{} bytes > {}", token.len(), cfg.max_token_len),
        ));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Error::with_detail(ErrorKind::MalformedToken, "not three dot-separated parts"));
    };
    // Decoded on the stack: a typical proof needs no allocation to be read.
    let (mut header_buf, mut claims_buf, mut signature_buf) = ([0u8; 256], [0u8; 1024], [0u8; 512]);
    let header_bytes = b64url_decode_into(h, &mut header_buf)?;
    let claims_bytes = b64url_decode_into(p, &mut claims_buf)?;
    let signature = b64url_decode_into(s, &mut signature_buf)?;
    let header = token::header(&header_bytes)?;
    let claims = token::claims(&claims_bytes)?;

    let not_a_string =
        |name: &str| Error::with_detail(ErrorKind::MalformedToken, format!("header `{name}` is not a string"));
    match &header.typ {
        Text::Str(typ) if crate::draft::typ_is(typ, WPT_TYP) => {}
        Text::Other => return Err(not_a_string("typ")),
        _ => return Err(ErrorKind::WptWrongType.into()),
    }
    if header.crit {
        return Err(ErrorKind::UnsupportedCriticalHeader.into());
    }
    // String equality with cnf.jwk.alg, before the value is interpreted at all.
    match &header.alg {
        Text::Str(alg) if alg == wit.cnf_algorithm().as_str() => {}
        Text::Other => return Err(not_a_string("alg")),
        _ => return Err(ErrorKind::WptAlgorithmMismatch.into()),
    }
    let signing_input = &token[..h.len() + 1 + p.len()];
    if !wit.cnf_key().verify(cfg.backend, wit.cnf_algorithm(), signing_input.as_bytes(), &signature) {
        return Err(ErrorKind::InvalidWptSignature.into());
    }

    let Number::U64(exp) = claims.exp else { return Err(ErrorKind::MissingClaim("exp").into()) };
    if now >= exp.saturating_add(cfg.leeway) {
        return Err(ErrorKind::ExpiredWpt.into());
    }
    if exp > now.saturating_add(cfg.max_lifetime).saturating_add(cfg.leeway) {
        return Err(ErrorKind::WptLifetimeTooLong.into());
    }

    // A WPT names one recipient: an array `aud` is refused (the draft shows only strings).
    let Some(aud) = claims.aud.as_str() else { return Err(ErrorKind::MissingClaim("aud").into()) };
    if !audience_ok(aud) {
        return Err(audience_mismatch("aud", aud));
    }

    match &claims.wth {
        Text::Str(wth) if wth == wit.hash() => {}
        Text::Str(_) => return Err(ErrorKind::WitBindingMismatch.into()),
        _ => return Err(ErrorKind::MissingClaim("wth").into()),
    }

    check_tth(&claims.tth, context.txn_token)?;
    check_oth(claims.oth.as_ref(), context, &cfg.context_tokens)?;

    match claims.jti.as_str() {
        Some(jti) if !jti.is_empty() && jti.len() <= MAX_JTI_LEN => Ok((exp, jti.to_owned())),
        _ => Err(ErrorKind::MissingClaim("jti").into()),
    }
}

fn check_tth(tth: &Text<'_>, txn_token: Option<&str>) -> Result<()> {
    let mismatch = |d: &'static str| Error::with_detail(ErrorKind::TxnTokenBindingMismatch, d);
    match (tth, txn_token) {
        (Text::Absent, None) => Ok(()),
        (Text::Str(tth), Some(token)) if *tth == token_hash(token) => Ok(()),
        (Text::Str(_), Some(_)) => Err(mismatch("tth differs from the Txn-Token hash")),
        (_, None) => Err(mismatch("tth present but no Txn-Token field")),
        (Text::Absent, Some(_)) => Err(mismatch("Txn-Token present but not bound by tth")),
        (Text::Other, Some(_)) => Err(mismatch("tth is not a string")),
    }
}

fn check_oth(oth: Option<&Value>, context: &ProofContext<'_>, understood: &[String]) -> Result<()> {
    let mismatch = |d: String| Error::with_detail(ErrorKind::OtherTokenBindingMismatch, d);
    let entries = match oth {
        None => &serde_json::Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(ErrorKind::MissingClaim("oth").into()),
    };
    for (name, hash) in entries {
        if !understood.iter().any(|u| u == name) {
            let shown: String = name.chars().take(64).collect();
            return Err(Error::with_detail(ErrorKind::UnsupportedOtherToken, format!("oth entry `{shown}`")));
        }
        let Some(value) = context.other_tokens.get(name) else {
            return Err(mismatch(format!("oth entry `{name}` but no such field")));
        };
        if hash.as_str() != Some(token_hash(trim_ows(value)).as_str()) {
            return Err(mismatch(format!("oth entry `{name}` does not match its field")));
        }
    }
    // A context token that is present but not bound must not ride along unchecked.
    if let Some(name) = context.other_tokens.keys().find(|name| !entries.contains_key(name.as_str())) {
        return Err(mismatch(format!("`{name}` field present but not bound by oth")));
    }
    Ok(())
}
