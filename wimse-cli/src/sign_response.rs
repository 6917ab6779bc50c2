//! `wimse sign-response`: sign a raw response to a signed request, as a WIMSE server would.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use wimse_core::client::cred::{Credentials, StaticCredentials};
use wimse_core::client::sign::Signer;
use wimse_core::raw::{RawRequest, RawResponse};
use wimse_core::time::FixedClock;

use crate::files::{now_or, read_input, read_signing_key, read_token};
use crate::verify_response::{request_nonce, request_parts};
use crate::{CliResult, Output};

#[derive(Debug, Args)]
pub(crate) struct SignResponseArgs {
    /// The signed request the response answers (its method, path, query and nonce are covered).
    #[arg(long)]
    request: PathBuf,
    /// The raw HTTP/1.1 response to sign.
    #[arg(long)]
    response: PathBuf,
    /// The server's private JWK.
    #[arg(long)]
    key: PathBuf,
    /// File holding the server's WIT.
    #[arg(long)]
    wit: PathBuf,
    /// The request signature's nonce, when the request file does not carry its signature.
    #[arg(long)]
    nonce: Option<String>,
    /// Signature lifetime in seconds.
    #[arg(long, default_value_t = 60)]
    ttl: u64,
    /// Sign as of this Unix time instead of now.
    #[arg(long)]
    now: Option<u64>,
    #[command(flatten)]
    output: Output,
}

pub(crate) fn run(args: SignResponseArgs) -> CliResult {
    let request = RawRequest::parse(&read_input(&args.request)?).map_err(|e| e.to_string())?;
    let mut response = RawResponse::parse(&read_input(&args.response)?).map_err(|e| e.to_string())?;
    let nonce = match &args.nonce {
        Some(nonce) => nonce.clone(),
        None => request_nonce(&request).map_err(|e| format!("{e} (give --nonce)"))?,
    };
    let credentials =
        Credentials::new(read_token(&args.wit)?, read_signing_key(&args.key)?).map_err(|e| e.to_string())?;
    let signer =
        Signer::new(StaticCredentials::new(credentials)).lifetime(args.ttl).clock(FixedClock::new(now_or(args.now)));
    let req_headers = request.header_map().map_err(|e| e.to_string())?;
    let req = request_parts(&request, &req_headers);
    let mut headers = response.header_map().map_err(|e| e.to_string())?;
    let body = (!response.body.is_empty()).then_some(response.body.as_slice());
    signer.sign_response_headers(&mut headers, response.status, &req, body, &nonce).map_err(|e| e.to_string())?;
    for name in ["workload-identity-token", "content-digest", "signature-input", "signature"] {
        if let Some(value) = headers.get(name) {
            response.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            response.headers.push((crate::sign::canonical(name), value.as_bytes().to_vec()));
        }
    }
    if !response.body.is_empty() && !response.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("content-length")) {
        response.headers.push(("Content-Length".into(), response.body.len().to_string().into_bytes()));
    }
    let bytes = response.to_bytes();
    match &args.output.out {
        Some(path) => std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))?,
        None => std::io::Write::write_all(&mut std::io::stdout(), &bytes).map_err(|e| e.to_string())?,
    }
    Ok(ExitCode::SUCCESS)
}
