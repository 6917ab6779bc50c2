//! Workload Identity Tokens (draft-ietf-wimse-workload-creds-02 §5.1): issuing and validating.

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::draft::WIT_TYP;
use crate::error::{Error, ErrorKind, Result};
use crate::id::{IdentifierPolicy, WorkloadId};
use crate::jose::random_id;
use crate::jose::{Algorithm, Backend, Jwk, PublicKey, SigningKey, b64url_encode, jws};
use crate::protocol::trust::TrustStore;

/// Largest token accepted by default, in bytes. Generous for RSA-4096 issuers and keys.
pub const DEFAULT_MAX_TOKEN_LEN: usize = 8 * 1024;
/// Largest clock leeway a configuration may set, in seconds.
pub const MAX_LEEWAY_SECS: u64 = 300;

/// base64url(SHA-256(token)): the `wth`/`tth`/`oth` hash of a token string as transmitted.
pub fn token_hash(token: &str) -> String {
    b64url_encode(Sha256::digest(token.as_bytes()))
}

/// Claims of a validated WIT.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WitClaims {
    /// The workload's identifier.
    pub sub: WorkloadId,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Issuer, for audit only (never used to find keys).
    pub iss: Option<String>,
    /// Issued-at, for audit only.
    pub iat: Option<u64>,
    /// Not-before.
    pub nbf: Option<u64>,
    /// Token id, for audit only (not a replay key).
    pub jti: Option<String>,
}

/// Issues WITs: the identity server's part.
///
/// ```
/// use wimse_core::jose::{Algorithm, SigningKey};
/// use wimse_core::protocol::wit::WitIssuer;
///
/// let issuer = WitIssuer::new(SigningKey::generate(Algorithm::ES256)?.with_kid("2026-11"))
///     .issuer("https://issuer.prod.example")
///     .lifetime(3600);
/// let workload_key = SigningKey::generate(Algorithm::EdDSA)?;
/// let wit = issuer.issue(&"spiffe://prod.example/payments".parse()?, workload_key.public_jwk(), 1_800_000_000)?;
/// assert_eq!(wit.split('.').count(), 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct WitIssuer {
    key: SigningKey,
    iss: Option<String>,
    lifetime: u64,
    backend: Backend,
}

impl WitIssuer {
    /// An issuer signing with `key` (its `kid`, if set, goes into every WIT header). Lifetime
    /// defaults to one hour.
    pub fn new(key: SigningKey) -> Self {
        Self { key, iss: None, lifetime: 3600, backend: Backend::default() }
    }

    /// Sets the `iss` claim.
    pub fn issuer(mut self, iss: impl Into<String>) -> Self {
        self.iss = Some(iss.into());
        self
    }

    /// Sets the WIT lifetime in seconds.
    pub fn lifetime(mut self, secs: u64) -> Self {
        self.lifetime = secs;
        self
    }

    /// Chooses the crypto backend.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The issuer's public key, to publish as a trust anchor.
    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    /// Issues a WIT binding `sub` to `workload_key` (a public JWK with `alg`), valid from `now`.
    pub fn issue(&self, sub: &WorkloadId, workload_key: &Jwk, now: u64) -> Result<String> {
        let cnf_key = PublicKey::from_jwk(workload_key)?;
        if workload_key.alg.is_none() {
            return Err(Error::with_detail(ErrorKind::InvalidKey, "the workload key needs `alg`"));
        }
        #[derive(Serialize)]
        struct Claims<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            iss: Option<&'a str>,
            sub: &'a str,
            iat: u64,
            exp: u64,
            jti: String,
            cnf: Cnf<'a>,
        }
        #[derive(Serialize)]
        struct Cnf<'a> {
            jwk: &'a Jwk,
        }
        let claims = Claims {
            iss: self.iss.as_deref(),
            sub: sub.as_str(),
            iat: now,
            exp: now.saturating_add(self.lifetime),
            jti: random_id(),
            cnf: Cnf { jwk: cnf_key.jwk() },
        };
        jws::sign(WIT_TYP, self.key.kid(), &claims, &self.key, self.backend)
    }
}

/// How WITs are validated. Defaults are secure; see each field.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WitValidation {
    /// Clock leeway for `exp`/`nbf`, in seconds (at most [`MAX_LEEWAY_SECS`]). Defaults to 30.
    pub leeway: u64,
    /// WITs expiring more than this many seconds from now are refused. Defaults to 24 hours.
    pub max_lifetime: u64,
    /// Algorithms a `cnf.jwk` may name. Defaults to ES256, ES384, EdDSA, PS256 and RS256.
    pub pop_algorithms: Vec<Algorithm>,
    /// Largest token accepted, in bytes. Defaults to [`DEFAULT_MAX_TOKEN_LEN`].
    pub max_token_len: usize,
    /// Identifier parsing rules for `sub`.
    pub identifier_policy: IdentifierPolicy,
    /// Crypto backend.
    pub backend: Backend,
}

impl Default for WitValidation {
    fn default() -> Self {
        Self {
            leeway: 30,
            max_lifetime: 24 * 3600,
            pop_algorithms: vec![
                Algorithm::ES256,
                Algorithm::ES384,
                Algorithm::EdDSA,
                Algorithm::PS256,
                Algorithm::RS256,
            ],
            max_token_len: DEFAULT_MAX_TOKEN_LEN,
            identifier_policy: IdentifierPolicy::default(),
            backend: Backend::default(),
        }
    }
}

/// A WIT whose signature, lifetime and confirmation key were checked. It authenticates nothing
/// by itself: only a proof of possession of [`cnf_key`](Self::cnf_key) does.
#[derive(Debug, Clone)]
pub struct VerifiedWit {
    claims: WitClaims,
    cnf_key: PublicKey,
    cnf_alg: Algorithm,
    hash: String,
    kid: Option<String>,
}

impl VerifiedWit {
    /// The claims.
    pub fn claims(&self) -> &WitClaims {
        &self.claims
    }
    /// The workload identifier (`sub`).
    pub fn subject(&self) -> &WorkloadId {
        &self.claims.sub
    }
    /// The confirmation key.
    pub fn cnf_key(&self) -> &PublicKey {
        &self.cnf_key
    }
    /// The algorithm proofs must use (`cnf.jwk.alg`).
    pub fn cnf_algorithm(&self) -> Algorithm {
        self.cnf_alg
    }
    /// base64url(SHA-256(WIT)): what a WPT's `wth` must equal.
    pub fn hash(&self) -> &str {
        &self.hash
    }
    /// The issuer key id from the header, if any.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }
}

fn claim_u64(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| Error::new(ErrorKind::MissingClaim(name))),
    }
}

fn claim_str(claims: &Map<String, Value>, name: &'static str) -> Result<Option<String>> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::new(ErrorKind::MissingClaim(name))),
    }
}

/// Validates a WIT in the order of the digest's section 2.6: framing, `typ` (`wit+jwt` or
/// `application/wit+jwt`, any case), `alg`,
/// `sub` and its trust domain, the anchor key of that trust domain, the signature, the
/// lifetime, then `cnf.jwk`. Unknown claims are ignored.
pub fn validate_wit(token: &str, trust: &TrustStore, cfg: &WitValidation, now: u64) -> Result<VerifiedWit> {
    let jws = jws::parse(token, cfg.max_token_len)?;
    if !jws.header_str("typ")?.is_some_and(|typ| crate::draft::typ_is(typ, WIT_TYP)) {
        return Err(ErrorKind::WitWrongType.into());
    }
    jws.reject_crit()?;
    let alg = jws.algorithm()?;

    let sub = match jws.claims.get("sub") {
        Some(Value::String(s)) => {
            WorkloadId::parse_with(s, &cfg.identifier_policy).map_err(|e| Error::new(ErrorKind::InvalidSubject(e)))?
        }
        _ => return Err(ErrorKind::MissingClaim("sub").into()),
    };
    let domain = sub.trust_domain();
    let anchors =
        trust.get(&domain).ok_or_else(|| Error::with_detail(ErrorKind::UntrustedTrustDomain, domain.to_string()))?;
    let kid = jws.header_str("kid")?;
    if !anchors.usable_at(now) {
        return Err(Error::with_detail(ErrorKind::TrustAnchorsUnavailable, domain.to_string()));
    }
    let key = anchors.select(kid, alg)?;
    if !key.verify(cfg.backend, alg, jws.signing_input.as_bytes(), &jws.signature) {
        return Err(ErrorKind::InvalidWitSignature.into());
    }

    let claims = &jws.claims;
    let exp = claim_u64(claims, "exp")?.ok_or_else(|| Error::new(ErrorKind::MissingClaim("exp")))?;
    if now >= exp.saturating_add(cfg.leeway) {
        return Err(ErrorKind::ExpiredWit.into());
    }
    if exp > now.saturating_add(cfg.max_lifetime).saturating_add(cfg.leeway) {
        return Err(ErrorKind::WitLifetimeTooLong.into());
    }
    let nbf = claim_u64(claims, "nbf")?;
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(cfg.leeway)) {
        return Err(ErrorKind::WitNotYetValid.into());
    }

    let (cnf_key, cnf_alg) = confirmation_key(claims, &cfg.pop_algorithms)?;
    let claims = WitClaims {
        exp,
        nbf,
        iss: claim_str(claims, "iss")?,
        iat: claim_u64(claims, "iat")?,
        jti: claim_str(claims, "jti")?,
        sub,
    };
    Ok(VerifiedWit { claims, cnf_key, cnf_alg, hash: token_hash(token), kid: kid.map(str::to_owned) })
}

fn confirmation_key(claims: &Map<String, Value>, allowed: &[Algorithm]) -> Result<(PublicKey, Algorithm)> {
    let bad = |detail: &'static str| Error::with_detail(ErrorKind::InvalidConfirmationKey, detail);
    let jwk_value = claims
        .get("cnf")
        .and_then(|cnf| cnf.get("jwk"))
        .filter(|jwk| jwk.is_object())
        .ok_or_else(|| bad("no cnf.jwk object"))?;
    let jwk = Jwk::from_value(jwk_value.clone()).map_err(|_| bad("cnf.jwk is not a JWK"))?;
    if jwk.has_private_members() {
        return Err(bad("cnf.jwk contains private key material"));
    }
    let alg: Algorithm = jwk
        .alg
        .as_deref()
        .ok_or_else(|| bad("cnf.jwk has no alg"))?
        .parse()
        .map_err(|_| bad("cnf.jwk.alg is not an accepted asymmetric algorithm"))?;
    if !allowed.contains(&alg) {
        return Err(bad("cnf.jwk.alg is not allowed"));
    }
    let key = PublicKey::from_jwk(&jwk).map_err(|_| bad("cnf.jwk is not a valid key for its alg"))?;
    Ok((key, alg))
}
