//! The SPIFFE WIT-SVID profile of a WIT (spiffe/spiffe `standards/WIT-SVID.md`, incubating): the
//! rules it adds to a WIT's own validation ([`validate_wit`](crate::protocol::wit::validate_wit), which
//! checks the signature, times and `cnf`).
//!
//! A WIT-SVID is a WIT whose header has `typ` `wit+jwt`, a `kid`, and an `alg` from the profile's
//! list (RSA, ECDSA, RSA-PSS: no EdDSA); its `cnf.jwk.alg` comes from the same list, and it
//! carries no `aud`. Its keys are the `use` = `wit-svid` entries of the trust domain's SPIFFE
//! bundle ([`TrustAnchors::from_spiffe_bundle_json`](crate::protocol::trust::TrustAnchors::from_spiffe_bundle_json)).
//!
//! ```
//! use wimse_core::jose::{Algorithm, SigningKey, jws};
//! use wimse_core::prelude::*;
//! use wimse_core::protocol::wit_svid;
//!
//! let issuer = SigningKey::generate(Algorithm::ES256)?.with_kid("wit-1");
//! let workload = SigningKey::generate(Algorithm::ES256)?;
//! let wit = WitIssuer::new(issuer).issue(&"spiffe://prod.example/payments".parse()?, workload.public_jwk(), 1_800_000_000)?;
//! wit_svid::check_profile(&jws::parse(&wit, 8192)?)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use serde_json::Value;

use crate::draft::WIT_TYP;
use crate::error::{Error, ErrorKind, Result};
use crate::jose::jws::UnverifiedJws;

/// The algorithms the profile allows for the issuer's signature (`alg`, §2.3) and for
/// `cnf.jwk.alg` (§3.2). EdDSA is not among them.
pub const ALGORITHMS: [&str; 9] = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"];

/// Checks the profile's own rules on a parsed WIT, each failure naming its check: `typ`
/// ([`ErrorKind::WitWrongType`]), `alg` in [`ALGORITHMS`] ([`ErrorKind::DisallowedAlgorithm`]),
/// a non-empty `kid` ([`ErrorKind::MissingKeyId`]), no `aud` ([`ErrorKind::ForbiddenClaim`]) and
/// `cnf.jwk.alg` in [`ALGORITHMS`] ([`ErrorKind::InvalidConfirmationKey`]). The signature, the
/// times and the rest of `cnf` are [`validate_wit`](crate::protocol::wit::validate_wit)'s: a WIT-SVID is
/// valid when both pass.
pub fn check_profile(token: &UnverifiedJws<'_>) -> Result<()> {
    if !token.header_str("typ")?.is_some_and(|typ| crate::draft::typ_is(typ, WIT_TYP)) {
        return Err(ErrorKind::WitWrongType.into());
    }
    match token.header_str("alg")? {
        Some(alg) if ALGORITHMS.contains(&alg) => {}
        Some(alg) => {
            let shown: String = alg.chars().take(32).collect();
            return Err(Error::with_detail(
                ErrorKind::DisallowedAlgorithm,
                format!("alg {shown:?} is not one the WIT-SVID profile allows"),
            ));
        }
        None => return Err(Error::with_detail(ErrorKind::DisallowedAlgorithm, "no alg")),
    }
    if token.header_str("kid")?.is_none_or(str::is_empty) {
        return Err(ErrorKind::MissingKeyId.into());
    }
    if token.claims.contains_key("aud") {
        return Err(ErrorKind::ForbiddenClaim("aud").into());
    }
    // A missing or malformed cnf.jwk is validate_wit's to refuse; here only its algorithm.
    if let Some(alg) = token.claims.get("cnf").and_then(|c| c.get("jwk")).and_then(|j| j.get("alg"))
        && !matches!(alg, Value::String(alg) if ALGORITHMS.contains(&alg.as_str()))
    {
        return Err(Error::with_detail(
            ErrorKind::InvalidConfirmationKey,
            "cnf.jwk.alg is not one the WIT-SVID profile allows",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::jose::{Algorithm, Backend, SigningKey, jws};

    fn token(typ: &str, kid: Option<&str>, key: &SigningKey, claims: Value) -> String {
        jws::sign(typ, kid, &claims, key, Backend::default()).unwrap()
    }

    fn check(token: &str) -> Result<()> {
        check_profile(&jws::parse(token, 8192).unwrap())
    }

    #[test]
    fn each_rule_names_its_check() {
        let es = SigningKey::generate(Algorithm::ES256).unwrap();
        let ed = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let claims = |cnf: &SigningKey, extra: Value| {
            let mut c = json!({"sub": "spiffe://prod.example/a", "exp": 1, "cnf": {"jwk": cnf.public_jwk()}});
            c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            c
        };
        let kind = |t: &str| check(t).unwrap_err().into_kind();
        assert!(check(&token("wit+jwt", Some("k"), &es, claims(&es, json!({})))).is_ok());
        assert!(check(&token("application/WIT+JWT", Some("k"), &es, claims(&es, json!({})))).is_ok());
        assert_eq!(kind(&token("JWT", Some("k"), &es, claims(&es, json!({})))), ErrorKind::WitWrongType);
        assert_eq!(kind(&token("wit+jwt", Some("k"), &ed, claims(&es, json!({})))), ErrorKind::DisallowedAlgorithm);
        assert_eq!(kind(&token("wit+jwt", None, &es, claims(&es, json!({})))), ErrorKind::MissingKeyId);
        assert_eq!(kind(&token("wit+jwt", Some(""), &es, claims(&es, json!({})))), ErrorKind::MissingKeyId);
        assert_eq!(
            kind(&token("wit+jwt", Some("k"), &es, claims(&es, json!({"aud": "x"})))),
            ErrorKind::ForbiddenClaim("aud")
        );
        assert_eq!(kind(&token("wit+jwt", Some("k"), &es, claims(&ed, json!({})))), ErrorKind::InvalidConfirmationKey);
        let odd_alg = json!({"sub": "spiffe://prod.example/a", "cnf": {"jwk": {"kty": "EC", "alg": 7}}});
        assert_eq!(kind(&token("wit+jwt", Some("k"), &es, odd_alg)), ErrorKind::InvalidConfirmationKey);
        // No cnf at all is validate_wit's refusal, not the profile's.
        assert!(check(&token("wit+jwt", Some("k"), &es, json!({"sub": "spiffe://prod.example/a"}))).is_ok());
    }
}
