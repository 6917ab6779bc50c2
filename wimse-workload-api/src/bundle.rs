//! WIT bundles as the WIT-SVID profile reads them.

use wimse_core::protocol::trust::TrustAnchors;

/// The WIT anchors of one trust domain's WIT bundle, as the WIT-SVID profile reads it: in a
/// SPIFFE bundle (keys with `use`) only the keys with `use` = `wit-svid`, else every key; each
/// with a `kid` unique within the bundle. A server checks what it serves with this too.
pub fn wit_bundle_anchors(jwks: &str) -> Result<TrustAnchors, String> {
    let anchors = wit_anchors(jwks).map_err(|e| e.to_string())?;
    let mut kids: Vec<&str> = Vec::with_capacity(anchors.keys().len());
    for key in anchors.keys() {
        match key.kid() {
            Some(kid) if !kid.is_empty() && !kids.contains(&kid) => kids.push(kid),
            Some(_) => return Err("a kid is empty or repeated".into()),
            None => return Err("a key has no kid".into()),
        }
    }
    Ok(anchors)
}

/// The WIT keys of a bundle: in a SPIFFE bundle (keys with `use`) only those with `use` =
/// `wit-svid` (its X.509 and JWT-SVID authorities are not WIT anchors), else every key.
fn wit_anchors(jwks: &str) -> wimse_core::Result<TrustAnchors> {
    let value: serde_json::Value = serde_json::from_str(jwks)
        .map_err(|e| wimse_core::Error::with_detail(wimse_core::ErrorKind::InvalidConfiguration, e.to_string()))?;
    let keys = value.get("keys").and_then(|k| k.as_array());
    if keys.is_some_and(|keys| keys.iter().any(|k| k.get("use").is_some())) {
        TrustAnchors::from_spiffe_bundle_json(jwks)
    } else {
        TrustAnchors::from_jwks_json(jwks)
    }
}
