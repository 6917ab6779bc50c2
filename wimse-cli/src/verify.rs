//! `wimse verify`: check a raw request the way a WIMSE server would.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::json;
use wimse_core::id::TrustDomain;
use wimse_core::prelude::*;
use wimse_core::protocol::trust::TrustHandle;
use wimse_core::server::caller::ProofMethod;
use wimse_core::server::framing::Rejection;

use crate::CliResult;
use crate::files::{now_or, read_input, read_text};
use crate::inspect::utc;
use wimse_core::raw::RawRequest;

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Raw HTTP/1.1 request file (`-` for standard input). Repeat it to verify several requests
    /// with one replay store, in order: the same request twice shows the replay refused.
    #[arg(long = "request", required = true)]
    requests: Vec<PathBuf>,
    /// Issuer key of a trust domain, as DOMAIN=FILE with a JWK, a JWKS or a SPIFFE bundle
    /// (repeatable; several keys of one domain are all trusted).
    #[arg(long = "trust-anchor", value_name = "DOMAIN=FILE", required_unless_present = "config")]
    trust_anchors: Vec<String>,
    /// Verifier settings (`[verifier]` of a JSON or TOML settings file, see
    /// `wimse_core::config`), then the `WIMSE_*` variables; the options here add to them.
    #[arg(long)]
    config: Option<PathBuf>,
    /// An exact `aud` value naming this service (repeatable).
    #[arg(long = "audience")]
    audiences: Vec<String>,
    /// An external origin of this service, e.g. `https://api.example`; `aud` must be origin + path (repeatable).
    #[arg(long = "origin")]
    origins: Vec<String>,
    /// A context-token field bound through `oth` that this service understands (repeatable).
    #[arg(long = "context-token")]
    context_tokens: Vec<String>,
    /// Clock leeway in seconds [default: 30, or the settings'].
    #[arg(long)]
    leeway: Option<u64>,
    /// Refuse HTTP signatures created longer ago than this, in seconds [default: 300, or the settings'].
    #[arg(long = "max-age")]
    max_age: Option<u64>,
    /// A component HTTP signatures must cover besides the profile's, e.g. `@authority` or
    /// `x-request-id` (repeatable).
    #[arg(long = "require-component")]
    required_components: Vec<String>,
    /// Verify as of this Unix time instead of now.
    #[arg(long)]
    now: Option<u64>,
}

pub(crate) fn trust_store(specs: &[String]) -> Result<TrustStore, String> {
    add_trust_anchors(TrustStore::new(), specs)
}

fn add_trust_anchors(mut store: TrustStore, specs: &[String]) -> Result<TrustStore, String> {
    for spec in specs {
        let (domain, file) =
            spec.split_once('=').ok_or_else(|| format!("--trust-anchor {spec}: expected DOMAIN=FILE"))?;
        let domain = TrustDomain::parse(domain)
            .map_err(|e| format!("--trust-anchor {domain}: {e} (write it as scheme://name)"))?;
        let anchors = if file == "-" {
            TrustAnchors::from_json(&read_text(file.as_ref())?).map_err(|e| format!("{file}: {e}"))?
        } else {
            TrustAnchors::from_file(file).map_err(|e| e.detail().unwrap_or(file).to_owned())?
        };
        let keys = anchors.keys().to_vec();
        for key in keys {
            store.add_key(domain.clone(), key);
        }
    }
    Ok(store)
}

/// Verifies every request in order; prints one JSON result (or an array for several) and exits
/// 1 when any was refused. A configuration error is printed as JSON too, and exits 2.
pub(crate) fn run(args: VerifyArgs) -> CliResult {
    let verifier = match verifier(&args) {
        Ok(verifier) => verifier,
        Err(message) => {
            let out = json!({"verified": false, "reason": "invalid_configuration", "message": message});
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            return Ok(ExitCode::from(2));
        }
    };
    let mut results = Vec::with_capacity(args.requests.len());
    let mut all_verified = true;
    for path in &args.requests {
        let (out, verified) = match RawRequest::parse(&read_input(path)?) {
            Ok(request) => verify_one(&verifier, &request)?,
            Err(e) => (json!({"verified": false, "reason": "malformed_request", "message": e.to_string()}), false),
        };
        all_verified &= verified;
        results.push(out);
    }
    let out = if results.len() == 1 { results.remove(0) } else { serde_json::Value::Array(results) };
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(if all_verified { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn verifier(args: &VerifyArgs) -> Result<Verifier, String> {
    let mut settings = match &args.config {
        Some(path) => wimse_core::config::Settings::load(path).map_err(|e| e.to_string())?.verifier,
        None => wimse_core::config::VerifierSettings::default(),
    };
    settings.audiences.extend(args.audiences.iter().cloned());
    settings.origins.extend(args.origins.iter().cloned());
    settings.context_tokens.extend(args.context_tokens.iter().cloned());
    settings.required_components.extend(args.required_components.iter().cloned());
    settings.leeway = args.leeway.or(settings.leeway);
    settings.max_signature_age = args.max_age.or(settings.max_signature_age);
    let trust = settings.trust_store().map_err(|e| e.to_string())?;
    let trust = TrustHandle::new(add_trust_anchors(trust, &args.trust_anchors)?);
    let now = now_or(args.now);
    if settings.trust.iter().any(|entry| entry.bundle_url.is_some()) {
        // Fetched once, as of the time the run verifies at.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let fetch = wimse_reqwest::fetch_bundles(&settings, &trust, std::sync::Arc::new(FixedClock::new(now)));
        runtime.block_on(fetch).map_err(|e| e.to_string())?;
    }
    let mut verifier = Verifier::new(TrustStore::new(), settings.config())
        .map_err(|e| format!("{e} (give --audience or --origin)"))?
        .trust_handle(trust)
        .clock(FixedClock::new(now));
    if let Some(keys) = settings.txn_token_keys().map_err(|e| e.to_string())? {
        verifier = verifier.txn_token_keys(keys);
    }
    Ok(verifier)
}

fn verify_one(verifier: &Verifier, request: &RawRequest) -> Result<(serde_json::Value, bool), String> {
    let headers = request.header_map().map_err(|e| e.to_string())?;
    let authority = request.authority().unwrap_or_default();
    let view =
        RequestView::new(request.path(), &headers).method(&request.method).authority(authority).body(&request.body);
    Ok(match verifier.verify_sync(&view) {
        Ok(caller) => {
            let method = caller.method().name();
            let (jti, proof_expires) = match caller.method() {
                ProofMethod::Wpt { jti, exp } => (Some(jti.as_str()), Some(utc(*exp))),
                ProofMethod::HttpSignature { nonce, expires, .. } => (Some(nonce.as_str()), Some(utc(*expires))),
                _ => (None, None),
            };
            let sign_response = matches!(caller.method(), ProofMethod::HttpSignature { sign_response: true, .. });
            let out = json!({
                "verified": true,
                "caller": {
                    "id": caller.id(),
                    "trust_domain": caller.id().trust_domain(),
                    "method": method,
                    "proof_id": jti,
                    "signed_response_requested": sign_response,
                    "proof_expires": proof_expires,
                    "wit_expires": utc(caller.wit_expires_at()),
                    "wit_issuer": caller.wit_issuer(),
                    "key_thumbprint": caller.key_thumbprint(),
                    "txn_token_bound": caller.txn_token().is_some(),
                    "context_tokens_bound": caller.context_tokens().keys().collect::<Vec<_>>(),
                },
            });
            (out, true)
        }
        Err(e) => {
            let rejection = Rejection::from_error(&e);
            let out = json!({
                "verified": false,
                "reason": e.reason(),
                "message": e.to_string(),
                "status": rejection.status().as_u16(),
            });
            (out, false)
        }
    })
}
