//! JSON Web Keys (RFC 7517) and their RFC 7638 thumbprints.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::b64url_encode;
use crate::error::{Error, ErrorKind, Result};

/// A JWK as it appears on the wire. Members this crate does not use are ignored on input.
///
/// `Debug` never prints private members.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Jwk {
    /// Key type: `EC`, `OKP` or `RSA`.
    pub kty: String,
    /// Curve (`P-256`, `P-384`, `Ed25519`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// Intended JWS algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Public key use (`sig`, or `wit-svid` in SPIFFE bundles).
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub key_use: Option<String>,
    /// EC/OKP public coordinate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// EC public coordinate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// RSA modulus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA public exponent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// Private scalar / seed / RSA private exponent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<String>,
    /// RSA first prime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<String>,
    /// RSA second prime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// RSA first CRT exponent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<String>,
    /// RSA second CRT exponent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dq: Option<String>,
    /// RSA CRT coefficient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qi: Option<String>,
    /// Symmetric key value: never accepted, kept only to detect it.
    #[serde(default, skip_serializing)]
    pub(crate) k: Option<Value>,
    /// RSA other primes: never accepted, kept only to detect it.
    #[serde(default, skip_serializing)]
    pub(crate) oth: Option<Value>,
}

impl Jwk {
    /// Parses a JWK from JSON text.
    pub fn from_json(json: &str) -> Result<Self> {
        let map = super::json::parse_object(json.as_bytes())
            .map_err(|e| Error::with_detail(ErrorKind::InvalidKey, format!("JWK: {e}")))?;
        Self::from_value(Value::Object(map))
    }

    pub(crate) fn from_value(value: Value) -> Result<Self> {
        serde_json::from_value(value).map_err(|e| Error::with_detail(ErrorKind::InvalidKey, format!("JWK: {e}")))
    }

    /// JSON text of this JWK (private members included if present).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether any private or symmetric member is present.
    pub fn has_private_members(&self) -> bool {
        [&self.d, &self.p, &self.q, &self.dp, &self.dq, &self.qi].iter().any(|m| m.is_some())
            || self.k.is_some()
            || self.oth.is_some()
    }

    /// The public part: private members removed.
    pub fn to_public(&self) -> Jwk {
        Jwk {
            kty: self.kty.clone(),
            crv: self.crv.clone(),
            alg: self.alg.clone(),
            kid: self.kid.clone(),
            key_use: self.key_use.clone(),
            x: self.x.clone(),
            y: self.y.clone(),
            n: self.n.clone(),
            e: self.e.clone(),
            ..Jwk::default()
        }
    }

    /// RFC 7638 SHA-256 thumbprint, base64url.
    pub fn thumbprint(&self) -> Result<String> {
        let missing = || Error::with_detail(ErrorKind::InvalidKey, "JWK lacks a required public member");
        // Members in lexicographic order, no whitespace (RFC 7638 §3.2).
        let canonical = match self.kty.as_str() {
            "EC" => serde_json::json!({
                "crv": self.crv.as_ref().ok_or_else(missing)?,
                "kty": "EC",
                "x": self.x.as_ref().ok_or_else(missing)?,
                "y": self.y.as_ref().ok_or_else(missing)?,
            }),
            "OKP" => serde_json::json!({
                "crv": self.crv.as_ref().ok_or_else(missing)?,
                "kty": "OKP",
                "x": self.x.as_ref().ok_or_else(missing)?,
            }),
            "RSA" => serde_json::json!({
                "e": self.e.as_ref().ok_or_else(missing)?,
                "kty": "RSA",
                "n": self.n.as_ref().ok_or_else(missing)?,
            }),
            _ => return Err(Error::with_detail(ErrorKind::InvalidKey, "unsupported kty")),
        };
        // serde_json's Map is a BTreeMap (no `preserve_order`), so keys serialize sorted.
        let text = serde_json::to_string(&canonical).unwrap_or_default();
        Ok(b64url_encode(Sha256::digest(text.as_bytes())))
    }
}

impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwk")
            .field("kty", &self.kty)
            .field("crv", &self.crv)
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("private", &self.has_private_members())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let jwk = Jwk::from_json(r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#).unwrap();
        assert_eq!(jwk.thumbprint().unwrap(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn private_members_are_detected_and_stripped() {
        let jwk = Jwk::from_json(r#"{"kty":"oct","k":"c2VjcmV0"}"#).unwrap();
        assert!(jwk.has_private_members());
        let jwk = Jwk::from_json(r#"{"kty":"OKP","crv":"Ed25519","x":"AA","d":"BB"}"#).unwrap();
        assert!(jwk.has_private_members());
        assert!(!jwk.to_public().has_private_members());
        assert!(!format!("{jwk:?}").contains("BB"));
    }
}
