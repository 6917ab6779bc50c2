//! Externally issued JWTs (platform tokens, access tokens, JWT-SVIDs, subject tokens) checked
//! against the keys configured for their issuer: used by the identity server's token endpoint
//! and by the Transaction Token Service alike.

use serde_json::Value;
use wimse_core::jose::{PublicKey, jws};
use wimse_core::protocol::trust::TrustAnchors;

/// Checks an externally issued JWT (platform token, access token, JWT-SVID) whose issuer was
/// already matched: no `crit`, key from the configured keys by `kid`, signature, `exp` (and at
/// most `max_lifetime` ahead, with 30 s leeway), `nbf`, `aud`.
/// Returns the claims, or the name of the failed check.
pub(crate) fn validate_external(
    token: &jws::UnverifiedJws<'_>,
    keys: &TrustAnchors,
    audience: &str,
    max_lifetime: u64,
    now: u64,
) -> std::result::Result<serde_json::Map<String, Value>, &'static str> {
    // No JWS extension is understood, so none may be critical (RFC 7515 §4.1.11).
    token.reject_crit().map_err(|_| "unsupported crit")?;
    let alg = token.algorithm().map_err(|_| "unsupported alg")?;
    let kid = token.header_str("kid").map_err(|_| "malformed kid")?;
    let key: &PublicKey = keys.select(kid, alg).map_err(|_| "no issuer key matches")?;
    if !key.verify(wimse_core::jose::Backend::default(), alg, token.signing_input.as_bytes(), &token.signature) {
        return Err("bad signature");
    }
    let exp = token.claims.get("exp").and_then(Value::as_u64).ok_or("no exp")?;
    if now >= exp {
        return Err("expired");
    }
    if exp > now.saturating_add(max_lifetime).saturating_add(30) {
        return Err("expires too far ahead");
    }
    match token.claims.get("nbf").map(Value::as_u64) {
        Some(Some(nbf)) if nbf > now + 30 => return Err("not yet valid"),
        Some(None) => return Err("malformed nbf"),
        _ => {}
    }
    // One audience per token (workload-identity-practices): a token also meant for another
    // service is refused here.
    let audience_ok = match token.claims.get("aud") {
        Some(Value::String(aud)) => aud == audience,
        Some(Value::Array(auds)) => auds.len() == 1 && auds[0].as_str() == Some(audience),
        _ => false,
    };
    if !audience_ok {
        return Err("wrong audience");
    }
    Ok(token.claims.clone())
}
