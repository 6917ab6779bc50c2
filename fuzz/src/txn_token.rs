//! Txn-Token validation with attacker-chosen tokens: raw text, and claims of any shape signed by
//! the trusted TTS key (so every claim check runs). Never a panic; an accepted token's claims
//! are what it said.

use std::sync::OnceLock;

use wimse_core::prelude::*;
use wimse_core::protocol::txn::{TxnTokenValidation, validate};

const NOW: u64 = 1_800_000_000;

fn setup() -> &'static (SigningKey, TrustStore, TxnTokenValidation) {
    static SETUP: OnceLock<(SigningKey, TrustStore, TxnTokenValidation)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let tts = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("tts-1");
        let domain: TrustDomain = "spiffe://prod.example".parse().unwrap();
        let trust = TrustStore::new().with(domain.clone(), TrustAnchors::new().key(tts.public_key().clone()));
        (tts, trust, TxnTokenValidation::new(domain))
    })
}

/// One input: UTF-8 text as a token, and as the claims of a token the TTS key signed.
pub fn run(data: &[u8]) {
    let (tts, trust, validation) = setup();
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = validate(text, trust, validation, NOW);
    // The same text as the claims of a token the TTS key signed.
    let header = r#"{"alg":"ES256","typ":"txntoken+jwt","kid":"tts-1"}"#;
    use wimse_core::jose::b64url_encode as b64;
    let input = format!("{}.{}", b64(header), b64(text));
    let Ok(signature) = tts.sign(Backend::default(), input.as_bytes()) else { return };
    if let Ok(txn) = validate(&format!("{input}.{}", b64(signature)), trust, validation, NOW) {
        assert!(!txn.txn().is_empty() && !txn.subject().is_empty() && txn.scopes().next().is_some());
        assert!(txn.expires_at() > NOW.saturating_sub(validation.leeway));
    }
}
