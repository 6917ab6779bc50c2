//! The quickstart demo: an identity server issues a WIT, a workload proves possession of its
//! key with a WPT, and a service verifies the request; then a replay and a forged token are
//! refused with their reasons.
//!
//! Run with `cargo run -p wimse-examples --bin wimse-demo`.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use wimse_core::prelude::*;
use wimse_core::server::framing::Rejection;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn step(text: &str) {
    println!("\n== {text}");
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();

    step("identity server for trust domain spiffe://prod.example");
    let issuer_key = SigningKey::generate(Algorithm::ES256)?.with_kid("prod-2026-11");
    let issuer = WitIssuer::new(issuer_key.clone()).issuer("https://issuer.prod.example").lifetime(3600);
    println!("issuer key (publish this as the trust anchor): {}", issuer_key.public_jwk().to_json());

    step("workload spiffe://prod.example/orders gets a key and a WIT");
    let workload_key = SigningKey::generate(Algorithm::EdDSA)?;
    let id: WorkloadId = "spiffe://prod.example/orders".parse()?;
    let wit = issuer.issue(&id, workload_key.public_jwk(), now)?;
    println!("WIT: {}...", &wit[..48]);

    step("orders calls POST https://payments.example/charge with a fresh WPT");
    let wpt = WptBuilder::new(&workload_key, &wit, "https://payments.example/charge").lifetime(60).sign(now)?;
    let mut headers = HeaderMap::new();
    headers.insert("workload-identity-token", HeaderValue::from_str(&wit)?);
    headers.insert("authorization", HeaderValue::from_str(&format!("WPT {wpt}"))?);

    step("payments verifies the caller");
    let trust = TrustStore::new().with(id.trust_domain(), TrustAnchors::new().key(issuer_key.public_key().clone()));
    let verifier = Verifier::new(trust, VerifierConfig::new().origin("https://payments.example"))?;
    let request = RequestView::new("/charge", &headers);
    let caller = verifier.verify_sync(&request)?;
    println!("verified caller: {} (key {})", caller.id(), caller.key_thumbprint());

    step("the same request again is a replay");
    let replay = verifier.verify_sync(&request).err().ok_or("replay was accepted")?;
    explain(&replay);

    step("a WIT from an untrusted issuer for the same identity");
    let rogue = WitIssuer::new(SigningKey::generate(Algorithm::ES256)?.with_kid("prod-2026-11"));
    let forged = rogue.issue(&id, workload_key.public_jwk(), now)?;
    let forged_wpt = WptBuilder::new(&workload_key, &forged, "https://payments.example/charge").sign(now)?;
    headers.insert("workload-identity-token", HeaderValue::from_str(&forged)?);
    headers.insert("authorization", HeaderValue::from_str(&format!("WPT {forged_wpt}"))?);
    let refused = verifier.verify_sync(&RequestView::new("/charge", &headers)).err().ok_or("forgery was accepted")?;
    explain(&refused);

    println!("\nall checks behaved as expected");
    Ok(())
}

fn explain(error: &Error) {
    let rejection = Rejection::from_error(error);
    println!(
        "refused: {} -> HTTP {} {}",
        error.reason(),
        rejection.status().as_u16(),
        String::from_utf8_lossy(&rejection.body())
    );
}
