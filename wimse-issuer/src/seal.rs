//! Sealing the key state with a key-encryption key (AES-256-GCM) before it leaves the process:
//! what PostgreSQL stores is `1 || nonce (12 bytes) || ciphertext and tag`, bound to the trust
//! domain as associated data, so a row copied to another trust domain does not open.

use std::path::Path;

use base64::Engine as _;
use wimse_core::{Error, ErrorKind, Result};

/// A 256-bit key-encryption key. `Debug` shows nothing of it.
pub(crate) struct Kek([u8; 32]);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

const VERSION: u8 = 1;
const NONCE: usize = 12;

fn config_error(detail: impl Into<String>) -> Error {
    Error::with_detail(ErrorKind::InvalidConfiguration, detail.into())
}

impl Kek {
    /// From base64 text (standard or URL-safe, padded or not) of exactly 32 bytes.
    pub(crate) fn from_base64(text: &str, origin: &str) -> Result<Self> {
        let text = text.trim();
        let bytes = [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .ok_or_else(|| config_error(format!("{origin}: the key-encryption key is not base64")))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| config_error(format!("{origin}: the key-encryption key must be 32 bytes (AES-256)")))?;
        Ok(Self(key))
    }

    /// From a file that only its owner may read.
    pub(crate) fn from_file(path: &Path) -> Result<Self> {
        Self::from_file_for(path, "postgres.kek_file")
    }

    /// From a file that only its owner may read, named by the setting `field`.
    pub(crate) fn from_file_for(path: &Path, field: &str) -> Result<Self> {
        let origin = format!("{field} {}", path.display());
        wimse_core::client::cred::check_private_file(path).map_err(|e| config_error(format!("{origin}: {e}")))?;
        let text = std::fs::read_to_string(path).map_err(|e| config_error(format!("{origin}: {e}")))?;
        Self::from_base64(&text, &origin)
    }

    /// From an environment variable.
    pub(crate) fn from_env(variable: &str) -> Result<Self> {
        let origin = format!("postgres.kek_env {variable}");
        let text = std::env::var(variable).map_err(|_| config_error(format!("{origin}: not set")))?;
        Self::from_base64(&text, &origin)
    }

    pub(crate) fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        use rand_core::{OsRng, RngCore};
        let mut nonce = [0u8; NONCE];
        OsRng.fill_bytes(&mut nonce);
        let sealed = backend::seal(&self.0, &nonce, plaintext, aad)?;
        let mut out = Vec::with_capacity(1 + NONCE + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub(crate) fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        let refused =
            || config_error("the stored keys do not open with this key-encryption key (wrong key, or tampered row)");
        match sealed {
            [VERSION, rest @ ..] if rest.len() >= NONCE + 16 => {
                let (nonce, ciphertext) = rest.split_at(NONCE);
                let nonce: [u8; NONCE] = nonce.try_into().map_err(|_| refused())?;
                backend::open(&self.0, &nonce, ciphertext, aad).map_err(|_| refused())
            }
            _ => Err(refused()),
        }
    }
}

#[cfg(feature = "aws-lc-rs")]
mod backend {
    use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    use wimse_core::{Error, ErrorKind, Result};

    fn key(kek: &[u8; 32]) -> Result<LessSafeKey> {
        UnboundKey::new(&AES_256_GCM, kek).map(LessSafeKey::new).map_err(|_| Error::new(ErrorKind::Crypto))
    }

    pub(super) fn seal(kek: &[u8; 32], nonce: &[u8; 12], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        let mut buffer = plaintext.to_vec();
        key(kek)?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), &mut buffer)
            .map_err(|_| Error::new(ErrorKind::Crypto))?;
        Ok(buffer)
    }

    pub(super) fn open(kek: &[u8; 32], nonce: &[u8; 12], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        let mut buffer = sealed.to_vec();
        let plaintext = key(kek)?
            .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), &mut buffer)
            .map_err(|_| Error::new(ErrorKind::Crypto))?;
        Ok(plaintext.to_vec())
    }
}

#[cfg(not(feature = "aws-lc-rs"))]
mod backend {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    use aes_gcm::{Aes256Gcm, Nonce};
    use wimse_core::{Error, ErrorKind, Result};

    pub(super) fn seal(kek: &[u8; 32], nonce: &[u8; 12], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        let cipher = Aes256Gcm::new_from_slice(kek).map_err(|_| Error::new(ErrorKind::Crypto))?;
        cipher.encrypt(&Nonce::from(*nonce), Payload { msg: plaintext, aad }).map_err(|_| Error::new(ErrorKind::Crypto))
    }

    pub(super) fn open(kek: &[u8; 32], nonce: &[u8; 12], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        let cipher = Aes256Gcm::new_from_slice(kek).map_err(|_| Error::new(ErrorKind::Crypto))?;
        cipher.decrypt(&Nonce::from(*nonce), Payload { msg: sealed, aad }).map_err(|_| Error::new(ErrorKind::Crypto))
    }
}

#[cfg(test)]
mod tests {
    use super::Kek;

    #[test]
    fn seals_and_refuses_tampering_wrong_keys_and_other_domains() {
        let kek = Kek([7; 32]);
        let sealed = kek.seal(b"private keys", b"spiffe://prod.example").unwrap();
        assert!(!sealed.windows(12).any(|w| w == b"private keys"), "not in the clear");
        assert_eq!(kek.open(&sealed, b"spiffe://prod.example").unwrap(), b"private keys");
        assert_ne!(kek.seal(b"private keys", b"spiffe://prod.example").unwrap(), sealed, "fresh nonce each time");
        assert!(kek.open(&sealed, b"spiffe://other.example").is_err());
        assert!(Kek([8; 32]).open(&sealed, b"spiffe://prod.example").is_err());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(kek.open(&tampered, b"spiffe://prod.example").is_err());
        assert!(kek.open(&[1, 2, 3], b"spiffe://prod.example").is_err());
        assert!(kek.open(&[], b"").is_err());
    }

    #[test]
    fn key_encryption_keys_are_32_bytes_of_base64() {
        use base64::Engine as _;
        let good = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        assert!(Kek::from_base64(&good, "t").is_ok());
        assert!(Kek::from_base64(&format!(" {good}\n"), "t").is_ok());
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        assert!(Kek::from_base64(&short, "t").unwrap_err().detail().unwrap().contains("32 bytes"));
        assert!(Kek::from_base64("not base64!", "t").is_err());
        assert_eq!(format!("{:?}", Kek([9; 32])), "Kek(..)");
    }
}
