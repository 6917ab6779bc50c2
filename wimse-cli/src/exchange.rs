//! `wimse token exchange` and `wimse bundle fetch`: talking to an identity server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::Value;
use wimse_core::trust::TrustAnchors;

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
