//! `wimse sign`: add a WIT and a fresh WPT to a raw request, as a WIMSE client would.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use wimse_core::client::cred::{Credentials, StaticCredentials};
use wimse_core::client::sign::Signer;
use wimse_core::draft::{AUTHORIZATION_HEADER, TXN_TOKEN_HEADER, WIT_HEADER};
use wimse_core::jose::SigningKey;
use wimse_core::protocol::httpsig::OutgoingRequest;
use wimse_core::protocol::wpt::WptBuilder;
use wimse_core::time::FixedClock;

use crate::files::{now_or, read_input, read_signing_key, read_token};
use crate::{CliResult, Output};
use wimse_core::raw::RawRequest;

mod output;

#[derive(Debug, Args)]
pub(crate) struct SignArgs {
    /// Raw HTTP/1.1 request file (`-` for standard input).
    #[arg(long)]
    request: PathBuf,
    /// The workload's private JWK.
    #[arg(long)]
    key: PathBuf,
    /// File holding the workload's WIT.
    #[arg(long)]
    wit: PathBuf,
    /// Audience. Defaults to the request's own URL without its query, `SCHEME://AUTHORITY/PATH`:
    /// scheme and authority from an absolute-form target (`GET http://127.0.0.1:8080/orders
    /// HTTP/1.1`), else `https` and the `Host` field (an origin-form target does not say its
    /// scheme: write the absolute form for an http service).
    #[arg(long)]
    aud: Option<String>,
    /// Proof lifetime in seconds.
    #[arg(long, default_value_t = 60)]
    ttl: u64,
    /// A context-token field of the request to bind with `oth` (repeatable). `Txn-Token` is always bound.
    #[arg(long = "bind", value_name = "HEADER")]
    bind: Vec<String>,
    /// Proof mode: `wpt` (WIT + `Authorization: WPT`) or `httpsig` (WIT + HTTP message signature).
    #[arg(long, default_value = "wpt", value_parser = ["wpt", "httpsig"])]
    mode: String,
    /// With `--mode httpsig`: ask the server to sign its response (`wimse-sign-response`).
    #[arg(long)]
    sign_response: bool,
    /// Sign as of this Unix time instead of now.
    #[arg(long)]
    now: Option<u64>,
    /// What to write: `raw` (the signed HTTP/1.1 request), `curl` (a curl command line that
    /// sends it) or `headers` (its header fields, `Name: value` a line, without `Host` and
    /// `Content-Length`, for `curl -H @file` or any other client).
    #[arg(long, default_value = "raw", value_parser = ["raw", "curl", "headers"])]
    format: String,
    #[command(flatten)]
    output: Output,
}

fn header_str<'a>(request: &'a RawRequest, name: &str) -> Result<Option<&'a str>, String> {
    request.header(name).map(|v| std::str::from_utf8(v).map_err(|_| format!("{name} is not text"))).transpose()
}

pub(crate) fn run(args: SignArgs) -> CliResult {
    let mut request = RawRequest::parse(&read_input(&args.request)?).map_err(|e| e.to_string())?;
    if request.has_header(AUTHORIZATION_HEADER) {
        return Err(
            "the request already has an Authorization field; a WPT cannot travel beside another credential (wpt-02)"
                .into(),
        );
    }
    if request.has_header(WIT_HEADER) {
        return Err("the request already has a Workload-Identity-Token".into());
    }
    let key = read_signing_key(&args.key)?;
    let wit = read_token(&args.wit)?;
    let aud = match args.aud.clone() {
        Some(aud) => aud,
        None => {
            let url = request_url(&request)?;
            hint_http(&request, &url);
            url[..url.find('?').unwrap_or(url.len())].to_owned()
        }
    };
    if args.mode == "httpsig" {
        sign_httpsig(&mut request, key, wit, &aud, &args)?;
        return write_request(&request, &args);
    }
    let mut builder = WptBuilder::new(&key, &wit, &aud).lifetime(args.ttl);
    let txn_token = header_str(&request, TXN_TOKEN_HEADER)?.map(str::to_owned);
    if let Some(txn) = &txn_token {
        builder = builder.txn_token(txn);
    }
    let mut bound = Vec::new();
    for name in &args.bind {
        let value =
            header_str(&request, name)?.ok_or_else(|| format!("--bind {name}: no such field in the request"))?;
        bound.push((name.clone(), value.to_owned()));
    }
    for (name, value) in &bound {
        builder = builder.other_token(name, value);
    }
    let wpt = builder.sign(now_or(args.now)).map_err(|e| e.to_string())?;
    request.headers.push(("Workload-Identity-Token".into(), wit.into_bytes()));
    request.headers.push(("Authorization".into(), format!("WPT {wpt}").into_bytes()));
    write_request(&request, &args)
}

/// The URL the request is for: `SCHEME://AUTHORITY` + its target's path and query, the scheme
/// `https` unless an absolute-form target names another.
pub(crate) fn request_url(request: &RawRequest) -> Result<String, String> {
    let scheme = request.scheme().unwrap_or_else(|| "https".to_owned());
    if !matches!(scheme.as_str(), "http" | "https") {
        return Err(format!("the request's target is a {scheme}: URL; only http and https are signed"));
    }
    let authority = request.authority().filter(|a| !a.is_empty()).ok_or("no Host field: give --aud")?;
    Ok(format!("{scheme}://{authority}{}", request.path()))
}

/// An origin-form target to this machine is taken as https like any other, but a local service
/// is often plain http: say how to sign for that (on standard error; the output stays clean).
fn hint_http(request: &RawRequest, url: &str) {
    let local = request
        .authority()
        .and_then(|a| a.parse::<http::uri::Authority>().ok())
        .is_some_and(|a| wimse_core::server::framing::is_loopback_host(a.host()));
    if request.scheme().is_none() && local {
        let http = url.replacen("https://", "http://", 1);
        eprintln!(
            "wimse: signed for {url} (a target like `/path` does not say its scheme); for an http service, \
             write the request target as {http} or give --aud"
        );
    }
}

fn write_request(request: &RawRequest, args: &SignArgs) -> CliResult {
    let bytes = match args.format.as_str() {
        "curl" => output::curl_command(request)?.into_bytes(),
        "headers" => output::header_lines(request).into_bytes(),
        _ => request.to_bytes(),
    };
    match &args.output.out {
        Some(path) => std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))?,
        None => std::io::Write::write_all(&mut std::io::stdout(), &bytes).map_err(|e| e.to_string())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Signs with an HTTP message signature: the request's method, path, query, body and fields.
fn sign_httpsig(
    request: &mut RawRequest,
    key: SigningKey,
    wit: String,
    aud: &str,
    args: &SignArgs,
) -> Result<(), String> {
    let credentials = Credentials::new(wit, key).map_err(|e| e.to_string())?;
    let signer =
        Signer::new(StaticCredentials::new(credentials)).lifetime(args.ttl).clock(FixedClock::new(now_or(args.now)));
    let mut headers = request.header_map().map_err(|e| e.to_string())?;
    let scheme = request.scheme().unwrap_or_else(|| "https".to_owned());
    let host = request.authority().unwrap_or_default().to_owned();
    let target = request.path().to_owned();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target.as_str(), None),
    };
    let body = (!request.body.is_empty()).then_some(request.body.as_slice());
    let outgoing = OutgoingRequest {
        method: &request.method,
        scheme: &scheme,
        authority: &host,
        path,
        query,
        body,
        aud,
        sign_response: args.sign_response,
    };
    signer.sign_request_signature(&mut headers, &outgoing).map_err(|e| e.to_string())?;
    // Keep the original fields in order and append what signing added.
    for name in ["workload-identity-token", "content-digest", "signature-input", "signature"] {
        if let Some(value) = headers.get(name) {
            request.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            request.headers.push((canonical(name), value.as_bytes().to_vec()));
        }
    }
    // The signed file frames its own body (RFC 9112 §6.3), so an editor's trailing newline
    // does not become part of it.
    if !request.body.is_empty() && !request.has_header("content-length") {
        request.headers.push(("Content-Length".into(), request.body.len().to_string().into_bytes()));
    }
    Ok(())
}

pub(crate) fn canonical(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}
