//! The whole WPT and HTTP-signature request path with attacker-chosen header values (input
//! split at NUL bytes into WIT, Authorization, Signature-Input, Signature).
#![no_main]

use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use wimse_core::prelude::*;

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let issuer = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("k1");
        let trust = TrustStore::new()
            .with("spiffe://prod.example".parse().unwrap(), TrustAnchors::new().with_key(issuer.public_key().clone()));
        Verifier::new(trust, VerifierConfig::new().with_origin("https://api.example"))
            .unwrap()
            .with_clock(FixedClock::new(1_800_000_000))
    })
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0);
    let mut headers = HeaderMap::new();
    for name in ["workload-identity-token", "authorization", "signature-input", "signature"] {
        if let Some(value) = parts.next().and_then(|v| HeaderValue::from_bytes(v).ok()) {
            if !value.is_empty() {
                headers.insert(name, value);
            }
        }
    }
    let body = parts.next().unwrap_or_default();
    let view = RequestView::new("/x?y", &headers).method("POST").authority("api.example").body(body);
    if let Err(error) = verifier().verify_sync(&view) {
        let _ = wimse_core::http::Rejection::from_error(&error).body();
    }
});
