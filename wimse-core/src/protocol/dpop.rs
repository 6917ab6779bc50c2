//! DPoP proofs (RFC 9449): a client shows it holds a key when it asks a token endpoint for a
//! token bound to that key. The identity server's RFC 7523 grant binds the issued WIT's `cnf` to
//! the proof's key; `wimse-reqwest` creates the proofs.
//!
//! ```
//! use wimse_core::protocol::dpop::{self, DpopValidation};
//! use wimse_core::jose::{Algorithm, SigningKey};
//!
//! let key = SigningKey::generate(Algorithm::ES256)?;
//! let url = "https://issuer.prod.example/v1/token";
//! let proof = dpop::proof(&key, "POST", url, 1_800_000_000)?;
//! let verified = dpop::verify(&proof, "POST", url, &DpopValidation::default(), 1_800_000_000)?;
//! assert_eq!(verified.jwk.thumbprint()?, key.public_jwk().thumbprint()?);
//! # Ok::<(), wimse_core::Error>(())
//! ```

use serde_json::{Map, Value, json};

use crate::error::{Error, ErrorKind, Result};
use crate::jose::{Algorithm, Backend, Jwk, PublicKey, SigningKey, jws};

/// The `typ` of a DPoP proof.
pub const DPOP_TYP: &str = "dpop+jwt";

/// Largest proof accepted, in bytes.
const MAX_PROOF_LEN: usize = 8 * 1024;

/// How proofs are checked.
#[derive(Debug, Clone)]
pub struct DpopValidation {
    /// Oldest `iat` accepted, in seconds before now. Default 60.
    pub max_age: u64,
    /// Clock leeway, in seconds. Default 5.
    pub leeway: u64,
    /// Algorithms a proof may use. Default ES256, ES384, EdDSA.
    pub algorithms: Vec<Algorithm>,
    /// Crypto backend.
    pub backend: Backend,
}

impl Default for DpopValidation {
    fn default() -> Self {
        Self {
            max_age: 60,
            leeway: 5,
            algorithms: vec![Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA],
            backend: Backend::default(),
        }
    }
}

/// A proof that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDpop {
    /// The public key the client proved it holds (what a bound token's `cnf` names), with
    /// `alg` set to the proof's algorithm.
    pub jwk: Jwk,
    /// Its `jti`, for the replay check (the caller remembers it for `max_age` + leeway).
    pub jti: String,
    /// Its `iat`.
    pub iat: u64,
}

fn invalid(check: &'static str) -> Error {
    Error::with_detail(ErrorKind::InvalidDpopProof, check)
}

/// The URI without query and fragment (RFC 9449 §4.3: `htu` is compared without them).
fn without_query(uri: &str) -> &str {
    &uri[..uri.find(['?', '#']).unwrap_or(uri.len())]
}

/// A proof for a `htm` request to `htu`, signed with `key`, its public key in the header.
pub fn proof(key: &SigningKey, htm: &str, htu: &str, now: u64) -> Result<String> {
    sign_proof(key, htm, htu, now, None)
}

/// A proof for a request to a resource server that carries the DPoP-bound `access_token`
/// (with `ath`, its SHA-256 hash, RFC 9449 §4.2).
pub fn proof_for_token(key: &SigningKey, htm: &str, htu: &str, now: u64, access_token: &str) -> Result<String> {
    use sha2::{Digest as _, Sha256};
    let ath = crate::jose::b64url_encode(Sha256::digest(access_token.as_bytes()));
    sign_proof(key, htm, htu, now, Some(&ath))
}

fn sign_proof(key: &SigningKey, htm: &str, htu: &str, now: u64, ath: Option<&str>) -> Result<String> {
    use rand_core::{OsRng, RngCore};
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    let mut header = Map::new();
    header.insert("typ".into(), DPOP_TYP.into());
    header.insert("jwk".into(), serde_json::to_value(key.public_jwk()).map_err(|_| ErrorKind::Crypto)?);
    let mut claims = json!({"jti": crate::jose::b64url_encode(id), "htm": htm, "htu": without_query(htu), "iat": now});
    if let Some(ath) = ath {
        claims["ath"] = ath.into();
    }
    jws::sign_with_header(header, &claims, key, Backend::default())
}

/// Checks a proof for a `htm` request to `htu` (RFC 9449 §4.3): `typ`, an allowed asymmetric
/// `alg`, a public `jwk` in the header that verifies the signature, `jti`, `htm`, `htu` and a
/// recent `iat`. The detail of an error names the failed check.
pub fn verify(proof: &str, htm: &str, htu: &str, cfg: &DpopValidation, now: u64) -> Result<VerifiedDpop> {
    let token = jws::parse(proof, MAX_PROOF_LEN).map_err(|_| invalid("not a compact JWS"))?;
    token.reject_crit().map_err(|_| invalid("crit"))?;
    if !token.header_str("typ").ok().flatten().is_some_and(|t| t.eq_ignore_ascii_case(DPOP_TYP)) {
        return Err(invalid("typ is not dpop+jwt"));
    }
    let alg = token.algorithm().map_err(|_| invalid("alg"))?;
    if !cfg.algorithms.contains(&alg) {
        return Err(invalid("alg not allowed"));
    }
    let jwk = token.header.get("jwk").cloned().ok_or_else(|| invalid("no jwk"))?;
    let mut jwk = Jwk::from_value(jwk).map_err(|_| invalid("jwk"))?;
    if jwk.has_private_members() {
        return Err(invalid("jwk holds private key material"));
    }
    // Clients rarely put `alg` in the proof's jwk; the proof's own `alg` is what the key
    // signs with (and what a bound WIT's `cnf.jwk` must name).
    match jwk.alg.as_deref() {
        None => jwk.alg = Some(alg.as_str().to_owned()),
        Some(named) if named == alg.as_str() => {}
        Some(_) => return Err(invalid("jwk alg differs from the proof's alg")),
    }
    let key = PublicKey::from_jwk(&jwk).map_err(|_| invalid("jwk"))?;
    if !key.verify(cfg.backend, alg, token.signing_input.as_bytes(), &token.signature) {
        return Err(invalid("signature"));
    }
    let text = |name: &'static str| token.claims.get(name).and_then(Value::as_str);
    let jti = text("jti").filter(|j| !j.is_empty() && j.len() <= 256).ok_or_else(|| invalid("jti"))?;
    if text("htm") != Some(htm) {
        return Err(invalid("htm"));
    }
    if text("htu").map(without_query) != Some(without_query(htu)) {
        return Err(invalid("htu"));
    }
    let iat = token.claims.get("iat").and_then(Value::as_u64).ok_or_else(|| invalid("no iat"))?;
    if iat > now.saturating_add(cfg.leeway) {
        return Err(invalid("iat in the future"));
    }
    if iat.saturating_add(cfg.max_age).saturating_add(cfg.leeway) < now {
        return Err(invalid("iat too old"));
    }
    // The caller's `kid` and `use` say nothing this server vouches for: not copied into a
    // bound token's `cnf`.
    let mut jwk = jwk.to_public();
    jwk.kid = None;
    jwk.key_use = None;
    Ok(VerifiedDpop { jwk, jti: jti.to_owned(), iat })
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://issuer.example/v1/token";
    const NOW: u64 = 1_800_000_000;

    fn detail(result: Result<VerifiedDpop>) -> String {
        let err = result.unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidDpopProof);
        err.detail().unwrap().to_owned()
    }

    #[test]
    fn each_check_refuses_what_it_should() {
        let key = SigningKey::generate(Algorithm::ES256).unwrap();
        let cfg = DpopValidation::default();
        let good = proof(&key, "POST", &format!("{URL}?x=1"), NOW).unwrap();
        let verified = verify(&good, "POST", URL, &cfg, NOW + 10).unwrap();
        assert_eq!(verified.jwk.thumbprint().unwrap(), key.public_jwk().thumbprint().unwrap());
        assert_eq!(verified.jwk.alg.as_deref(), Some("ES256"));
        assert_eq!(detail(verify(&good, "GET", URL, &cfg, NOW)), "htm");
        assert_eq!(detail(verify(&good, "POST", "https://other.example/v1/token", &cfg, NOW)), "htu");
        assert_eq!(detail(verify(&good, "POST", URL, &cfg, NOW + 66)), "iat too old");
        assert_eq!(detail(verify(&good, "POST", URL, &cfg, NOW - 6)), "iat in the future");
        // A character inside the signature (the last one also carries padding bits).
        let mut tampered = good.clone().into_bytes();
        let at = tampered.len() - 5;
        tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(detail(verify(&tampered, "POST", URL, &cfg, NOW)), "signature");
        // A proof signed by one key carrying another's jwk.
        let other = SigningKey::generate(Algorithm::ES256).unwrap();
        let mut header = Map::new();
        header.insert("typ".into(), DPOP_TYP.into());
        header.insert("jwk".into(), serde_json::to_value(other.public_jwk()).unwrap());
        let claims = json!({"jti": "j", "htm": "POST", "htu": URL, "iat": NOW});
        let swapped = jws::sign_with_header(header.clone(), &claims, &key, Backend::default()).unwrap();
        assert_eq!(detail(verify(&swapped, "POST", URL, &cfg, NOW)), "signature");
        // Wrong typ, private jwk, no jti.
        let wrong_typ = jws::sign("JWT", None, &claims, &key, Backend::default()).unwrap();
        assert_eq!(detail(verify(&wrong_typ, "POST", URL, &cfg, NOW)), "typ is not dpop+jwt");
        header.insert("jwk".into(), serde_json::to_value(key.to_private_jwk()).unwrap());
        let private = jws::sign_with_header(header.clone(), &claims, &key, Backend::default()).unwrap();
        assert_eq!(detail(verify(&private, "POST", URL, &cfg, NOW)), "jwk holds private key material");
        header.insert("jwk".into(), serde_json::to_value(key.public_jwk()).unwrap());
        let no_jti =
            jws::sign_with_header(header, &json!({"htm": "POST", "htu": URL, "iat": NOW}), &key, Backend::default())
                .unwrap();
        assert_eq!(detail(verify(&no_jti, "POST", URL, &cfg, NOW)), "jti");
        assert_eq!(detail(verify("a.b", "POST", URL, &cfg, NOW)), "not a compact JWS");
    }
}
