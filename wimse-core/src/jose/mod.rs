//! JOSE: algorithms, keys, JWKs and compact JWS, over one selectable crypto backend.
//!
//! Signatures are computed by jsonwebtoken's crypto providers, called explicitly through
//! [`Backend`]. jsonwebtoken's own `encode`/`decode` are not used: they go through a process-wide
//! provider that panics when both of its backend features are enabled (which a workspace easily
//! does), and they cannot enforce the drafts' framing rules (exact `typ` before anything else,
//! `alg` taken from `cnf.jwk`, strict base64url, duplicate JSON members refused). The compact
//! serialization is small and lives in [`jws`].

mod backend;
pub(crate) mod json;
pub mod jwk;
pub mod jws;
mod key;
mod prepared;

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

pub use backend::Backend;
pub use jwk::Jwk;
pub use key::{PublicKey, SigningKey};

use crate::error::{Error, ErrorKind, Result};

/// The asymmetric JWS algorithms this crate signs and verifies with.
///
/// `none`, the HMAC algorithms and anything unknown never parse: they are refused before any
/// key is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Algorithm {
    /// ECDSA P-256 / SHA-256 (the algorithm every implementation must support).
    ES256,
    /// ECDSA P-384 / SHA-384.
    ES384,
    /// EdDSA with Ed25519.
    EdDSA,
    /// RSASSA-PKCS1-v1_5 / SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 / SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 / SHA-512.
    RS512,
    /// RSASSA-PSS / SHA-256.
    PS256,
    /// RSASSA-PSS / SHA-384.
    PS384,
    /// RSASSA-PSS / SHA-512.
    PS512,
}

impl Algorithm {
    /// Every supported algorithm.
    pub const ALL: [Algorithm; 9] = [
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ];

    /// The JOSE name, e.g. `"ES256"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
        }
    }

    /// The JWK `kty` a key for this algorithm has.
    pub fn key_type(self) -> &'static str {
        match self {
            Algorithm::ES256 | Algorithm::ES384 => "EC",
            Algorithm::EdDSA => "OKP",
            _ => "RSA",
        }
    }

    /// The JWK `crv` a key for this algorithm has, if the key type has curves.
    pub fn curve(self) -> Option<&'static str> {
        match self {
            Algorithm::ES256 => Some("P-256"),
            Algorithm::ES384 => Some("P-384"),
            Algorithm::EdDSA => Some("Ed25519"),
            _ => None,
        }
    }

    pub(crate) fn to_jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as J;
        match self {
            Algorithm::ES256 => J::ES256,
            Algorithm::ES384 => J::ES384,
            Algorithm::EdDSA => J::EdDSA,
            Algorithm::RS256 => J::RS256,
            Algorithm::RS384 => J::RS384,
            Algorithm::RS512 => J::RS512,
            Algorithm::PS256 => J::PS256,
            Algorithm::PS384 => J::PS384,
            Algorithm::PS512 => J::PS512,
        }
    }
}

impl FromStr for Algorithm {
    type Err = Error;

    /// Exact, case-sensitive JOSE names only.
    fn from_str(s: &str) -> Result<Self> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == s).ok_or_else(|| {
            // Name the refused algorithm only when it is a short printable name.
            let shown = if s.len() <= 16 && s.bytes().all(|b| b.is_ascii_graphic()) { s } else { "?" };
            Error::with_detail(ErrorKind::UnsupportedAlgorithm, format!("alg `{shown}`"))
        })
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Algorithm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Strict base64url: URL-safe alphabet, no padding, canonical trailing bits.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// 128 bits from a CSPRNG, base64url: a collision-resistant token id (`jti`, nonce).
///
/// With aws-lc-rs, its user-space DRBG (seeded and reseeded from the OS) answers without a
/// system call per id; otherwise the OS generator does.
pub(crate) fn random_id() -> String {
    let mut bytes = [0u8; 16];
    #[cfg(feature = "aws-lc-rs")]
    let filled = aws_lc_rs::rand::fill(&mut bytes).is_ok();
    #[cfg(not(feature = "aws-lc-rs"))]
    let filled = false;
    if !filled {
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    }
    b64url_encode(bytes)
}

/// base64url without padding (RFC 7515 §2).
pub fn b64url_encode(bytes: impl AsRef<[u8]>) -> String {
    B64URL.encode(bytes)
}

/// Strict base64url decoding: no padding, no whitespace, canonical trailing bits.
pub fn b64url_decode(s: &str) -> Result<Vec<u8>> {
    B64URL.decode(s).map_err(|_| Error::with_detail(ErrorKind::MalformedToken, "invalid base64url"))
}

/// Decodes base64url into `stack` when it fits (no allocation), into a new vector otherwise.
/// Empty input is refused (no JWS part may be empty).
pub(crate) fn b64url_decode_into<'b>(s: &str, stack: &'b mut [u8]) -> Result<std::borrow::Cow<'b, [u8]>> {
    let invalid = || Error::with_detail(ErrorKind::MalformedToken, "a part is empty or not base64url");
    if s.is_empty() {
        return Err(invalid());
    }
    if base64::decoded_len_estimate(s.len()) <= stack.len() {
        let len = B64URL.decode_slice(s, stack).map_err(|_| invalid())?;
        Ok(std::borrow::Cow::Borrowed(&stack[..len]))
    } else {
        B64URL.decode(s).map(std::borrow::Cow::Owned).map_err(|_| invalid())
    }
}
