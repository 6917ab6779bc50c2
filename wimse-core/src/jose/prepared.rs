//! EC and Ed25519 keys in the form each backend computes with, prepared once per key.
//!
//! jsonwebtoken's providers take raw key bytes and parse them (and, for private keys, rederive
//! the public key) on every call; a verifier serving many requests from one WIT would redo that
//! work per request. Here the RustCrypto key objects built while the key is imported and checked
//! are kept, and aws-lc-rs keys are parsed once, on first use. RSA keys (issuers only, whose
//! signatures the verified-WIT cache already saves) still go through jsonwebtoken.

#[cfg(feature = "aws-lc-rs")]
use std::sync::{Arc, OnceLock};

// ed25519-dalek, p256 and p384 share these traits (the `signature` crate).
#[cfg(feature = "rust-crypto")]
use p256::ecdsa::signature::{Signer as _, Verifier as _};

use super::Backend;
use crate::error::{Error, ErrorKind, Result};

/// A checked EC or Ed25519 public key.
#[derive(Clone, Debug)]
pub(super) enum ParsedPublic {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// A public key ready for either backend.
#[derive(Clone, Debug)]
pub(super) struct PreparedPublic {
    parsed: ParsedPublic,
    #[cfg(feature = "aws-lc-rs")]
    aws_lc: OnceLock<Option<Arc<aws_lc_rs::signature::ParsedPublicKey>>>,
}

impl PreparedPublic {
    pub(super) fn new(parsed: ParsedPublic) -> Self {
        Self {
            parsed,
            #[cfg(feature = "aws-lc-rs")]
            aws_lc: OnceLock::new(),
        }
    }

    /// Whether `signature` is valid over `message` (fixed-size `r || s` for ECDSA).
    pub(super) fn verify(&self, backend: Backend, message: &[u8], signature: &[u8]) -> bool {
        match backend {
            #[cfg(feature = "aws-lc-rs")]
            Backend::AwsLc => self
                .aws_lc
                .get_or_init(|| aws_lc_public(&self.parsed).map(Arc::new))
                .as_ref()
                .is_some_and(|key| key.verify_sig(message, signature).is_ok()),
            #[cfg(feature = "rust-crypto")]
            Backend::RustCrypto => match &self.parsed {
                ParsedPublic::P256(key) => {
                    p256::ecdsa::Signature::from_slice(signature).is_ok_and(|s| key.verify(message, &s).is_ok())
                }
                ParsedPublic::P384(key) => {
                    p384::ecdsa::Signature::from_slice(signature).is_ok_and(|s| key.verify(message, &s).is_ok())
                }
                ParsedPublic::Ed25519(key) => {
                    ed25519_dalek::Signature::from_slice(signature).is_ok_and(|s| key.verify(message, &s).is_ok())
                }
            },
        }
    }
}

#[cfg(feature = "aws-lc-rs")]
fn aws_lc_public(parsed: &ParsedPublic) -> Option<aws_lc_rs::signature::ParsedPublicKey> {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ED25519, ParsedPublicKey};
    match parsed {
        ParsedPublic::P256(key) => {
            ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.to_encoded_point(false).as_bytes()).ok()
        }
        ParsedPublic::P384(key) => {
            ParsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, key.to_encoded_point(false).as_bytes()).ok()
        }
        ParsedPublic::Ed25519(key) => ParsedPublicKey::new(&ED25519, key.as_bytes()).ok(),
    }
}

/// A checked EC or Ed25519 private key.
#[derive(Clone)]
pub(super) enum ParsedSecret {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

#[cfg(feature = "aws-lc-rs")]
enum AwsLcKeyPair {
    Ecdsa(aws_lc_rs::signature::EcdsaKeyPair),
    Ed25519(aws_lc_rs::signature::Ed25519KeyPair),
}

/// A private key ready for either backend. Built at import, so a key a backend refuses fails
/// there and not on the first request.
#[derive(Clone)]
pub(super) struct PreparedSecret {
    #[cfg_attr(not(feature = "rust-crypto"), allow(dead_code))]
    parsed: ParsedSecret,
    #[cfg(feature = "aws-lc-rs")]
    aws_lc: Arc<AwsLcKeyPair>,
}

fn crypto(detail: &'static str) -> Error {
    Error::with_detail(ErrorKind::Crypto, detail)
}

impl PreparedSecret {
    pub(super) fn new(parsed: ParsedSecret) -> Result<Self> {
        Ok(Self {
            #[cfg(feature = "aws-lc-rs")]
            aws_lc: Arc::new(aws_lc_key_pair(&parsed)?),
            parsed,
        })
    }

    /// Signs `message`: fixed-size `r || s` for ECDSA, 64 bytes for Ed25519.
    pub(super) fn sign(&self, backend: Backend, message: &[u8]) -> Result<Vec<u8>> {
        match backend {
            #[cfg(feature = "aws-lc-rs")]
            Backend::AwsLc => match self.aws_lc.as_ref() {
                AwsLcKeyPair::Ecdsa(pair) => pair
                    .sign(&aws_lc_rs::rand::SystemRandom::new(), message)
                    .map(|s| s.as_ref().to_vec())
                    .map_err(|_| crypto("signing failed")),
                AwsLcKeyPair::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            },
            #[cfg(feature = "rust-crypto")]
            Backend::RustCrypto => match &self.parsed {
                ParsedSecret::P256(key) => key
                    .try_sign(message)
                    .map(|s: p256::ecdsa::Signature| s.to_vec())
                    .map_err(|_| crypto("signing failed")),
                ParsedSecret::P384(key) => key
                    .try_sign(message)
                    .map(|s: p384::ecdsa::Signature| s.to_vec())
                    .map_err(|_| crypto("signing failed")),
                ParsedSecret::Ed25519(key) => Ok(key.sign(message).to_bytes().to_vec()),
            },
        }
    }
}

#[cfg(feature = "aws-lc-rs")]
fn aws_lc_key_pair(parsed: &ParsedSecret) -> Result<AwsLcKeyPair> {
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    };
    // The scalar's temporary copy is wiped once aws-lc-rs has its own.
    use p256::elliptic_curve::zeroize::Zeroizing;
    let refused = |_| crypto("aws-lc-rs refused the private key");
    Ok(match parsed {
        ParsedSecret::P256(key) => AwsLcKeyPair::Ecdsa(
            EcdsaKeyPair::from_private_key_and_public_key(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &Zeroizing::new(key.to_bytes()),
                key.verifying_key().to_encoded_point(false).as_bytes(),
            )
            .map_err(refused)?,
        ),
        ParsedSecret::P384(key) => AwsLcKeyPair::Ecdsa(
            EcdsaKeyPair::from_private_key_and_public_key(
                &ECDSA_P384_SHA384_FIXED_SIGNING,
                &Zeroizing::new(key.to_bytes()),
                key.verifying_key().to_encoded_point(false).as_bytes(),
            )
            .map_err(refused)?,
        ),
        ParsedSecret::Ed25519(key) => AwsLcKeyPair::Ed25519(
            Ed25519KeyPair::from_seed_and_public_key(key.as_bytes(), key.verifying_key().as_bytes())
                .map_err(refused)?,
        ),
    })
}
