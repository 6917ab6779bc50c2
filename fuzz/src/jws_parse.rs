//! Compact JWS parsing: framing, strict base64url, strict JSON with duplicate detection.

/// One input: UTF-8 text as a compact JWS.
pub fn run(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(jws) = wimse_core::jose::jws::parse(text, 64 * 1024)
    {
        let _ = jws.algorithm();
        let _ = jws.header_str("typ");
        let _ = jws.reject_crit();
    }
}
