//! `wimse token exchange` and `wimse bundle fetch`: talking to an identity server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::Value;
use wimse_core::protocol::trust::TrustAnchors;

use crate::files::{read_signing_key, read_token, write_output};
use crate::{CliResult, Output};

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub(crate) struct ExchangeArgs {
    /// The identity server's base URL.
    #[arg(long)]
    issuer: String,
    /// File holding the subject token (`-` for standard input).
    #[arg(long)]
    subject_token: PathBuf,
    /// `access_token` (RFC 9068 JWT access token) or `jwt` (JWT-SVID, platform token).
    #[arg(long, default_value = "jwt", value_parser = ["access_token", "jwt"])]
    subject_token_type: String,
    /// The workload's private JWK; the WIT binds its public part.
    #[arg(long)]
    key: PathBuf,
    #[command(flatten)]
    output: Output,
}

pub(crate) fn exchange(args: ExchangeArgs) -> CliResult {
    let token = read_token(&args.subject_token)?;
    let key = read_signing_key(&args.key)?;
    let token_type = format!("urn:ietf:params:oauth:token-type:{}", args.subject_token_type);
    let form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange".to_owned()),
        ("subject_token", token),
        ("subject_token_type", token_type),
        ("wimse_jwk", key.public_jwk().to_json()),
    ];
    let url = format!("{}/v1/token", args.issuer.trim_end_matches('/'));
    let (status, body) = runtime()?.block_on(async {
        let response = reqwest::Client::new().post(&url).form(&form).send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| format!("{url}: {e}"))?;
        let body: Value = serde_json::from_str(&text).map_err(|e| format!("{url}: {e}"))?;
        Ok::<_, String>((status, body))
    })?;
    if !status.is_success() {
        eprintln!(
            "wimse: exchange refused: {} ({})",
            body["error"].as_str().unwrap_or("?"),
            body["error_description"].as_str().unwrap_or("")
        );
        return Ok(ExitCode::FAILURE);
    }
    let wit = body["access_token"].as_str().ok_or("the answer has no access_token")?;
    write_output(&args.output, &format!("{wit}\n"))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub(crate) struct FetchArgs {
    /// The bundle URL (e.g. `<issuer>/v1/bundle/spiffe`).
    #[arg(long)]
    url: String,
    #[command(flatten)]
    output: Output,
}

pub(crate) fn fetch(args: FetchArgs) -> CliResult {
    let text = runtime()?.block_on(async {
        let response = reqwest::get(&args.url).await.map_err(|e| format!("{}: {e}", args.url))?;
        if !response.status().is_success() {
            return Err(format!("{}: HTTP {}", args.url, response.status()));
        }
        response.text().await.map_err(|e| format!("{}: {e}", args.url))
    })?;
    // Only a bundle with usable keys is written out.
    let anchors = if text.contains("wit-svid") {
        TrustAnchors::from_spiffe_bundle_json(&text)
    } else {
        TrustAnchors::from_jwks_json(&text)
    };
    let anchors = anchors.map_err(|e| format!("{}: {e}", args.url))?;
    eprintln!("wimse: {} key(s)", anchors.keys().len());
    write_output(&args.output, &format!("{text}\n"))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub(crate) struct AssertArgs {
    /// The authorization server's token endpoint (also the assertion's expected audience).
    #[arg(long)]
    token_url: String,
    /// File holding the platform token (a projected service-account token, a CI OIDC token, a
    /// WIT; `-` for standard input), sent as the RFC 7523 assertion.
    #[arg(long)]
    assertion: PathBuf,
    /// The scope to ask for (at a WIMSE identity server: the workload identifier).
    #[arg(long)]
    scope: Option<String>,
    /// The resource the token is for (RFC 8707).
    #[arg(long)]
    resource: Option<String>,
    /// Send it as RFC 7523 client authentication (`client_credentials` with
    /// `client_assertion`) instead of as the grant.
    #[arg(long)]
    client_assertion: bool,
    /// A private JWK to prove with DPoP (RFC 9449); the token is then bound to it.
    #[arg(long)]
    dpop_key: Option<PathBuf>,
    #[command(flatten)]
    output: Output,
}

/// `wimse token assert`: an access token from any RFC 7523 authorization server. Prints
/// `{"access_token", "token_type", "expires_at", "scope"}`; exits 1 when refused.
pub(crate) fn assert(args: AssertArgs) -> CliResult {
    use wimse_reqwest::{AssertionGrant, PlatformToken};
    let assertion = read_token(&args.assertion)?;
    let mut grant = AssertionGrant::new(args.token_url.clone(), PlatformToken::Static(assertion));
    if let Some(scope) = args.scope {
        grant = grant.scope(scope);
    }
    if let Some(resource) = args.resource {
        grant = grant.resource(resource);
    }
    if args.client_assertion {
        grant = grant.as_client_assertion();
    }
    if let Some(path) = &args.dpop_key {
        grant = grant.dpop(read_signing_key(path)?);
    }
    match runtime()?.block_on(grant.request()) {
        Ok(token) => {
            let json = serde_json::json!({
                "access_token": token.token,
                "token_type": token.token_type,
                "expires_at": token.expires_at,
                "scope": token.scope,
            });
            write_output(&args.output, &format!("{json}\n"))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("wimse: token refused: {}", error.detail().unwrap_or(&error.kind().description()));
            Ok(ExitCode::FAILURE)
        }
    }
}
