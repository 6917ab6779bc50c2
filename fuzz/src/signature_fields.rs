//! `Signature-Input` / `Signature` / `Content-Digest` parsing.

use wimse_core::protocol::httpsig;

/// One input: UTF-8 text split at the first NUL into `Signature-Input` and `Signature` (the
/// first part is also read as `Content-Digest` of the second).
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (input, signature) = text.split_once('\0').unwrap_or((text, ""));
    if let Ok(signatures) = httpsig::parse_signatures(&[input], &[signature]) {
        for sig in signatures {
            let _ = sig.int_param("created");
            let _ = sig.str_param("nonce");
        }
    }
    let _ = httpsig::verify_content_digest(&[input], signature.as_bytes());
}
