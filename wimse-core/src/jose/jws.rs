//! Compact JWS serialization (RFC 7515 §7.1) with the strict rules the drafts need.

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Algorithm, Backend, SigningKey, b64url_decode, b64url_encode, json};
use crate::error::{Error, ErrorKind, Result};

/// A token split and decoded, signature not yet checked.
#[derive(Debug)]
pub struct UnverifiedJws<'a> {
    /// The decoded JOSE header.
    pub header: Map<String, Value>,
    /// The decoded payload.
    pub claims: Map<String, Value>,
    /// `base64url(header) "." base64url(payload)`: the bytes the signature covers.
    pub signing_input: &'a str,
    /// The decoded signature.
    pub signature: Vec<u8>,
}

fn is_b64url_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Splits and decodes a compact JWS of at most `max_len` bytes: three non-empty base64url parts,
/// a header and a payload that are JSON objects without duplicate members.
pub fn parse(token: &str, max_len: usize) -> Result<UnverifiedJws<'_>> {
    if token.len() > max_len {
        return Err(Error::with_detail(ErrorKind::OversizedToken, format!("{} bytes > {max_len}", token.len())));
    }
    let malformed = |d: &'static str| Error::with_detail(ErrorKind::MalformedToken, d);
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(malformed("not three dot-separated parts"));
    };
    if [h, p, s].iter().any(|part| part.is_empty() || !part.bytes().all(is_b64url_char)) {
        return Err(malformed("a part is empty or not base64url"));
    }
    let header = json::parse_object(&b64url_decode(h)?)?;
    let claims = json::parse_object(&b64url_decode(p)?)?;
    let signature = b64url_decode(s)?;
    Ok(UnverifiedJws { header, claims, signing_input: &token[..h.len() + 1 + p.len()], signature })
}

impl UnverifiedJws<'_> {
    /// A header parameter that must be a string if present.
    pub fn header_str(&self, name: &'static str) -> Result<Option<&str>> {
        match self.header.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Error::with_detail(ErrorKind::MalformedToken, format!("header `{name}` is not a string"))),
        }
    }

    /// Refuses `crit`: this crate understands no JWS extensions (RFC 7515 §4.1.11).
    pub fn reject_crit(&self) -> Result<()> {
        if self.header.contains_key("crit") {
            return Err(ErrorKind::UnsupportedCriticalHeader.into());
        }
        Ok(())
    }

    /// The header `alg`, parsed against the allowlist of asymmetric algorithms.
    pub fn algorithm(&self) -> Result<Algorithm> {
        self.header_str("alg")?.ok_or_else(|| Error::with_detail(ErrorKind::UnsupportedAlgorithm, "no alg"))?.parse()
    }
}

/// Serializes and signs a token with `key`. `typ` and `kid` go in the header with `alg`.
pub fn sign(
    typ: &str,
    kid: Option<&str>,
    claims: &impl Serialize,
    key: &SigningKey,
    backend: Backend,
) -> Result<String> {
    if kid.is_none() {
        // The common case (every WPT): the header is `{"alg":…,"typ":…}`, encoded straight into
        // the token, and the claims too, in one buffer.
        use base64::Engine as _;
        let claims = to_json(claims)?;
        let header = format!(r#"{{"alg":"{}","typ":{}}}"#, key.algorithm().as_str(), serde_json::Value::from(typ));
        let mut token = String::with_capacity((header.len() + claims.len()) * 4 / 3 + 8 + 128);
        super::B64URL.encode_string(header.as_bytes(), &mut token);
        token.push('.');
        super::B64URL.encode_string(&claims, &mut token);
        let signature = key.sign(backend, token.as_bytes())?;
        token.push('.');
        super::B64URL.encode_string(signature, &mut token);
        return Ok(token);
    }
    let mut header = Map::new();
    header.insert("typ".into(), typ.into());
    if let Some(kid) = kid {
        header.insert("kid".into(), kid.into());
    }
    sign_with_header(header, claims, key, backend)
}

/// Serializes and signs a token whose header is `header` plus `alg` (for headers other than
/// `typ` and `kid`, such as a DPoP proof's `jwk`).
pub fn sign_with_header(
    header: Map<String, Value>,
    claims: &impl Serialize,
    key: &SigningKey,
    backend: Backend,
) -> Result<String> {
    // `alg` first, as producers conventionally write it.
    let mut ordered = Map::new();
    ordered.insert("alg".into(), key.algorithm().as_str().into());
    ordered.extend(header);
    let mut token = b64url_encode(to_json(&ordered)?);
    token.push('.');
    token.push_str(&b64url_encode(to_json(claims)?));
    let signature = key.sign(backend, token.as_bytes())?;
    token.push('.');
    token.push_str(&b64url_encode(signature));
    Ok(token)
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|_| Error::with_detail(ErrorKind::Crypto, "could not serialize token"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let key = SigningKey::generate(Algorithm::ES256).unwrap();
        let token = sign("x+jwt", Some("k1"), &serde_json::json!({"a": 1}), &key, Backend::default()).unwrap();
        let jws = parse(&token, 4096).unwrap();
        assert_eq!(jws.header_str("typ").unwrap(), Some("x+jwt"));
        assert_eq!(jws.header_str("kid").unwrap(), Some("k1"));
        assert_eq!(jws.algorithm().unwrap(), Algorithm::ES256);
        assert!(key.public_key().verify(
            Backend::default(),
            Algorithm::ES256,
            jws.signing_input.as_bytes(),
            &jws.signature
        ));
        assert_eq!(parse(&token, 10).unwrap_err().kind(), &ErrorKind::OversizedToken);
    }

    #[test]
    fn framing_errors() {
        for bad in ["a.b", "a.b.c.d", "..", "e30.e30.", "e30.e30.a=", "e30.e30.a+b", "e30 .e30.AA", "e30.e30.A"] {
            assert_eq!(parse(bad, 4096).unwrap_err().kind(), &ErrorKind::MalformedToken, "{bad}");
        }
        // Non-canonical trailing bits: "AB" decodes to one byte with leftover bits set.
        assert_eq!(parse("e30.e30.AB", 4096).unwrap_err().kind(), &ErrorKind::MalformedToken);
        assert!(parse("e30.e30.AA", 4096).is_ok());
    }
}
