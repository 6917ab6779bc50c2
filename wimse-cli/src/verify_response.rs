//! `wimse verify-response`: check a signed response the way the client that sent the request would.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::json;
use wimse_core::client::response::ResponseVerifier;
use wimse_core::draft::HTTPSIG_TAG;
use wimse_core::id::WorkloadId;
use wimse_core::protocol::httpsig::{RequestParts, ResponseParts, parse_signatures};
use wimse_core::time::FixedClock;
use wimse_core::{Error, ErrorKind};

use crate::CliResult;
use crate::files::{now_or, read_input};
use crate::verify::trust_store;
use wimse_core::raw::{RawHttpError, RawRequest, RawResponse};

#[derive(Debug, Args)]
pub(crate) struct VerifyResponseArgs {
    /// The signed request as it was sent (its signature's nonce must come back).
    #[arg(long)]
    request: PathBuf,
    /// The raw HTTP/1.1 response.
    #[arg(long)]
    response: PathBuf,
    /// Issuer key of a trust domain, as DOMAIN=FILE (repeatable).
    #[arg(long = "trust-anchor", value_name = "DOMAIN=FILE", required = true)]
    trust_anchors: Vec<String>,
    /// The request signature's nonce, when the request file does not carry its signature.
    #[arg(long)]
    nonce: Option<String>,
    /// The workload identifier the server must have.
    #[arg(long)]
    expect_server: Option<String>,
    /// Verify as of this Unix time instead of now.
    #[arg(long)]
    now: Option<u64>,
}

/// What a response signature covers of the request it answers, read from a request file (its
/// `Host` is the authority; the scheme is `https`).
pub(crate) fn request_parts<'a>(
    request: &'a RawRequest,
    headers: &'a http::HeaderMap,
) -> RequestParts<'a, http::HeaderMap> {
    let host = request.header("host").and_then(|h| std::str::from_utf8(h).ok()).unwrap_or_default();
    let target = request.path();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    RequestParts { method: &request.method, scheme: "https", authority: host, path, query, headers }
}

pub(crate) fn request_nonce(request: &RawRequest) -> Result<String, Error> {
    let values = |name: &str| -> Vec<&str> {
        request
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .collect()
    };
    let signatures = parse_signatures(&values("signature-input"), &values("signature"))?;
    let ours = signatures.iter().find(|s| s.str_param("tag").ok().flatten() == Some(HTTPSIG_TAG));
    ours.and_then(|s| s.str_param("nonce").ok().flatten())
        .map(str::to_owned)
        .ok_or_else(|| Error::with_detail(ErrorKind::NoWimseSignature, "the request has no WIMSE signature"))
}

fn check(args: &VerifyResponseArgs, request: &RawRequest, response: &RawResponse) -> Result<WorkloadId, Error> {
    let trust = trust_store(&args.trust_anchors).map_err(|e| Error::with_detail(ErrorKind::InvalidConfiguration, e))?;
    let verifier = ResponseVerifier::new(trust).clock(FixedClock::new(now_or(args.now)));
    let bad = |e: RawHttpError| Error::with_detail(ErrorKind::InvalidHeaderValue, e.to_string());
    let req_headers = request.header_map().map_err(bad)?;
    let res_headers = response.header_map().map_err(bad)?;
    let expected = args
        .expect_server
        .as_deref()
        .map(WorkloadId::parse)
        .transpose()
        .map_err(|e| Error::with_detail(ErrorKind::InvalidConfiguration, format!("--expect-server: {e}")))?;
    let req = request_parts(request, &req_headers);
    let res = ResponseParts { status: response.status, headers: &res_headers };
    let nonce = match &args.nonce {
        Some(nonce) => nonce.clone(),
        None => request_nonce(request)?,
    };
    verifier.verify(&req, &res, &response.body, &nonce, expected.as_ref())
}

pub(crate) fn run(args: VerifyResponseArgs) -> CliResult {
    let request = RawRequest::parse(&read_input(&args.request)?).map_err(|e| e.to_string())?;
    let response = RawResponse::parse(&read_input(&args.response)?).map_err(|e| e.to_string())?;
    let (out, code) = match check(&args, &request, &response) {
        Ok(server) => (json!({"verified": true, "server": server}), ExitCode::SUCCESS),
        Err(e) => (json!({"verified": false, "reason": e.reason(), "message": e.to_string()}), ExitCode::FAILURE),
    };
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(code)
}
