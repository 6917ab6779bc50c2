//! Trust-anchor key sets as a bundle endpoint serves them (JWKS and SPIFFE bundle JSON), each
//! usable key then checking a signature.

use wimse_core::prelude::*;

const ALGORITHMS: [Algorithm; 5] =
    [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA, Algorithm::RS256, Algorithm::PS256];

/// One input: key set, NUL, message, NUL, raw signature bytes.
pub fn run(data: &[u8]) {
    let mut parts = data.splitn(3, |b| *b == 0);
    let Ok(key_set) = std::str::from_utf8(parts.next().unwrap_or_default()) else { return };
    let message = parts.next().unwrap_or_default();
    let signature = parts.next().unwrap_or_default();
    for anchors in [TrustAnchors::from_jwks_json(key_set), TrustAnchors::from_spiffe_bundle_json(key_set)] {
        let Ok(anchors) = anchors else { continue };
        for key in anchors.keys() {
            let _ = key.thumbprint();
            for alg in ALGORITHMS {
                for backend in Backend::available() {
                    let _ = key.verify(backend, alg, message, signature);
                }
            }
        }
    }
}
