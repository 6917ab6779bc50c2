//! `Content-Digest` (RFC 9530): `sha-256` and `sha-512` only; deprecated algorithms never count.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sfv::{BareItem, Item, ListEntry};
use sha2::{Digest, Sha256, Sha512};

use super::sf::parse_dictionary;
use crate::error::{Error, ErrorKind, Result};

/// The `Content-Digest` value for `body` with SHA-256: `sha-256=:<base64>:`.
pub fn content_digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(body)))
}

/// Checks `body` against the `Content-Digest` field values. Every `sha-256` or `sha-512` member
/// must match and at least one must be present; other algorithms (md5, sha, crc32c, …) are
/// ignored and never satisfy the check.
pub fn verify_content_digest(values: &[&str], body: &[u8]) -> Result<()> {
    let mismatch = |d: &'static str| Error::with_detail(ErrorKind::ContentDigestMismatch, d);
    let dict = parse_dictionary(values).map_err(|_| mismatch("Content-Digest is not a dictionary"))?;
    let mut checked = 0;
    for (algorithm, entry) in &dict {
        let expected: Vec<u8> = match algorithm.as_str() {
            "sha-256" => Sha256::digest(body).to_vec(),
            "sha-512" => Sha512::digest(body).to_vec(),
            _ => continue,
        };
        match entry {
            ListEntry::Item(Item { bare_item: BareItem::ByteSequence(got), .. }) if *got == expected => checked += 1,
            ListEntry::Item(Item { bare_item: BareItem::ByteSequence(_), .. }) => {
                return Err(mismatch("the body does not match its digest"));
            }
            _ => return Err(mismatch("a digest is not a byte sequence")),
        }
    }
    if checked == 0 {
        return Err(mismatch("no sha-256 or sha-512 digest"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers_and_refusals() {
        assert_eq!(content_digest(b""), "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:");
        // RFC 9530 / RFC 9421 test request body.
        let body = b"{\"hello\": \"world\"}";
        let sha512 =
            "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";
        verify_content_digest(&[sha512], body).unwrap();
        verify_content_digest(&[&content_digest(body), sha512], body).unwrap();
        let kind = |v: &[&str]| verify_content_digest(v, body).unwrap_err().into_kind();
        assert_eq!(kind(&["md5=:sQqNsWTgdUEFt6mb5y4/5Q==:"]), ErrorKind::ContentDigestMismatch);
        assert_eq!(kind(&[&content_digest(b"other")]), ErrorKind::ContentDigestMismatch);
        assert_eq!(kind(&["sha-256=\"text\""]), ErrorKind::ContentDigestMismatch);
        assert_eq!(kind(&["sha-256=:AAAA:, sha-256=:AAAA:"]), ErrorKind::ContentDigestMismatch);
        // RFC 9421 B.2's response shows a digest that is not the hash of its body (erratum).
        let erratum =
            "sha-512=:JlEy2bfUz7WrWIjc1qV6KVLpdr/7L5/L4h7Sxvh6sNHpDQWDCL+GauFQWcZBvVDhiyOnAQsxzZFYwi0wDH+1pw==:";
        assert_eq!(
            verify_content_digest(&[erratum], b"{\"message\": \"good dog\"}").unwrap_err().into_kind(),
            ErrorKind::ContentDigestMismatch
        );
    }
}
