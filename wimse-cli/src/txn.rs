//! `wimse txn issue | inspect | verify`: Transaction Tokens (draft-ietf-oauth-transaction-tokens-11).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::{Map, Value, json};
use wimse_core::client::cred::{Credentials, StaticCredentials};
use wimse_core::client::sign::Signer;
use wimse_core::id::{TrustDomain, WorkloadId};
use wimse_core::protocol::trust::{TrustAnchors, TrustStore};
use wimse_core::protocol::txn::{NewTxnToken, TxnTokenIssuer, TxnTokenValidation, validate};
use wimse_reqwest::{TxnTokenRequest, TxnTokenService};

use crate::files::{now_or, read_signing_key, read_text, read_token, write_output};
use crate::{CliResult, Output};

#[derive(Debug, Args)]
pub(crate) struct IssueArgs {
    /// The trust domain (the token's `aud`), e.g. spiffe://prod.example.
    #[arg(long)]
    trust_domain: String,
    /// The purpose: space-separated scope values.
    #[arg(long)]
    scope: String,
    /// Ask this Transaction Token Service (its token endpoint URL), authenticated with `--wit`
    /// and `--key`.
    #[arg(long, conflicts_with_all = ["tts_key", "req_wl", "ttl", "now"], requires_all = ["wit", "key", "subject_token_type"])]
    tts: Option<String>,
    /// The workload's WIT (file), for `--tts`.
    #[arg(long)]
    wit: Option<PathBuf>,
    /// The workload's private JWK, for `--tts`.
    #[arg(long)]
    key: Option<PathBuf>,
    /// What the subject is, for `--tts`.
    #[arg(long, value_parser = ["access_token", "id_token", "jwt", "self_signed", "unsigned_json", "txn_token"])]
    subject_token_type: Option<String>,
    /// File holding the subject token (access token, ID token, Txn-Token to replace), for `--tts`.
    #[arg(long)]
    subject_token: Option<PathBuf>,
    /// The subject's identifier (`sub`): for `self_signed` and `unsigned_json` with `--tts`, or
    /// for a token signed locally with `--tts-key`.
    #[arg(long)]
    sub: Option<String>,
    /// `request_details` / `tctx`: a JSON object.
    #[arg(long)]
    details: Option<String>,
    /// `request_context` / `rctx`: a JSON object.
    #[arg(long)]
    context: Option<String>,
    /// Sign locally with this private JWK, as a TTS would (development and tests).
    #[arg(long, requires_all = ["sub", "req_wl"])]
    tts_key: Option<PathBuf>,
    /// The requesting workload (`req_wl`), with `--tts-key`.
    #[arg(long)]
    req_wl: Option<String>,
    /// A workload acting for the subject (`act`), with `--tts-key`; repeat for a chain, the
    /// current actor first.
    #[arg(long = "actor")]
    actors: Vec<String>,
    /// With `--tts`: this workload acts for the subject (an agent for a user); it sends its own
    /// WIT as the `actor_token`, and the Txn-Token names it as the current actor.
    #[arg(long, requires = "tts")]
    acting: bool,
    /// Lifetime in seconds, with `--tts-key`.
    #[arg(long, default_value_t = 300)]
    ttl: u64,
    /// Issue as of this Unix time, with `--tts-key`.
    #[arg(long)]
    now: Option<u64>,
    #[command(flatten)]
    output: Output,
}

fn object(text: Option<&str>, what: &str) -> Result<Option<Map<String, Value>>, String> {
    match text.map(serde_json::from_str::<Value>) {
        None => Ok(None),
        Some(Ok(Value::Object(map))) => Ok(Some(map)),
        Some(_) => Err(format!("--{what} is not a JSON object")),
    }
}

pub(crate) fn issue(args: IssueArgs) -> CliResult {
    let domain = TrustDomain::parse(&args.trust_domain).map_err(|e| format!("--trust-domain: {e}"))?;
    let details = object(args.details.as_deref(), "details")?;
    let context = object(args.context.as_deref(), "context")?;
    let token = match (&args.tts_key, &args.tts) {
        (Some(key), None) => {
            let key = read_signing_key(key)?;
            let (Some(sub), Some(req_wl)) = (&args.sub, &args.req_wl) else { return Err("--sub and --req-wl".into()) };
            let mut token = NewTxnToken::new(sub.clone(), args.scope.clone()).requested_by(req_wl.clone());
            token.tctx = details;
            token.rctx = context;
            token.actors = args
                .actors
                .iter()
                .map(|a| WorkloadId::parse(a).map_err(|e| format!("--actor {a}: {e}")))
                .collect::<Result<_, _>>()?;
            TxnTokenIssuer::new(key, &domain)
                .lifetime(args.ttl)
                .issue(&token, now_or(args.now))
                .map_err(|e| e.to_string())?
        }
        (None, Some(_)) if !args.actors.is_empty() => {
            return Err("--actor is for --tts-key; with --tts, --acting makes this workload the actor".into());
        }
        (None, Some(tts)) => request(&args, tts, &domain, details, context)?,
        _ => return Err("give --tts (ask a Transaction Token Service) or --tts-key (sign locally)".into()),
    };
    write_output(&args.output, &format!("{token}\n"))?;
    Ok(ExitCode::SUCCESS)
}

fn request(
    args: &IssueArgs,
    tts: &str,
    domain: &TrustDomain,
    details: Option<Map<String, Value>>,
    context: Option<Map<String, Value>>,
) -> Result<String, String> {
    let (Some(wit), Some(key), Some(kind)) = (&args.wit, &args.key, &args.subject_token_type) else {
        return Err("--tts needs --wit, --key and --subject-token-type".into());
    };
    let credentials = Credentials::new(read_token(wit)?, read_signing_key(key)?).map_err(|e| e.to_string())?;
    let signer = Signer::new(StaticCredentials::new(credentials));
    let service = TxnTokenService::new(signer, tts, domain).map_err(|e| e.to_string())?;
    let subject_token =
        || args.subject_token.as_ref().ok_or("--subject-token").map_err(str::to_owned).and_then(|p| read_token(p));
    let subject = || args.sub.clone().ok_or_else(|| "--sub".to_owned());
    let mut request = match kind.as_str() {
        "access_token" => TxnTokenRequest::for_access_token(subject_token()?, &args.scope),
        "txn_token" => TxnTokenRequest::replacing(subject_token()?, &args.scope),
        "unsigned_json" => TxnTokenRequest::unsigned(&subject()?, &args.scope),
        "self_signed" => TxnTokenRequest::self_signed_for(subject()?, &args.scope),
        other => {
            TxnTokenRequest::new(subject_token()?, format!("urn:ietf:params:oauth:token-type:{other}"), &args.scope)
        }
    };
    if let Some(details) = details {
        request = request.request_details(Value::Object(details));
    }
    if let Some(context) = context {
        request = request.request_context(Value::Object(context));
    }
    if args.acting {
        request = request.acting();
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let issued = runtime.block_on(service.request(&request)).map_err(|e| format!("refused: {e} [{}]", e.reason()))?;
    Ok(issued.token)
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The Txn-Token, a file holding it, or `-` for standard input.
    token: String,
    /// The trust domain whose TTS signs (and the only accepted `aud`).
    #[arg(long)]
    trust_domain: String,
    /// The TTS keys: a JWK, a JWKS or a SPIFFE bundle file (e.g. from `wimse bundle fetch`).
    #[arg(long)]
    keys: PathBuf,
    /// Accept this `aud` instead of the trust domain's name.
    #[arg(long)]
    audience: Option<String>,
    /// Longest accepted lifetime, seconds.
    #[arg(long, default_value_t = wimse_core::protocol::txn::DEFAULT_MAX_TXN_LIFETIME)]
    max_lifetime: u64,
    /// Check as of this Unix time instead of now.
    #[arg(long)]
    now: Option<u64>,
}

fn token_arg(token: &str) -> Result<String, String> {
    let path = PathBuf::from(token);
    if token == "-" || path.is_file() { read_token(&path) } else { Ok(token.trim().to_owned()) }
}

/// Prints the verified transaction as JSON, or the refusal's reason (exit 1).
pub(crate) fn verify(args: VerifyArgs) -> CliResult {
    let token = token_arg(&args.token)?;
    let domain = TrustDomain::parse(&args.trust_domain).map_err(|e| format!("--trust-domain: {e}"))?;
    let keys = TrustAnchors::from_json(&read_text(&args.keys)?).map_err(|e| format!("--keys: {e}"))?;
    let mut validation = TxnTokenValidation::new(domain.clone()).max_lifetime(args.max_lifetime);
    if let Some(audience) = args.audience {
        validation = validation.audience(audience);
    }
    let (out, code) = match validate(&token, &TrustStore::new().with(domain, keys), &validation, now_or(args.now)) {
        Ok(txn) => (
            json!({"valid": true, "txn": txn.txn(), "sub": txn.subject(), "scope": txn.scope(),
                   "req_wl": txn.requesting_workloads(), "iss": txn.issuer(), "iat": txn.issued_at(),
                   "exp": txn.expires_at(), "tctx": txn.transaction_context(), "rctx": txn.request_context(),
                   "actors": txn.actors().iter().map(WorkloadId::as_str).collect::<Vec<_>>(), "hash": txn.hash()}),
            ExitCode::SUCCESS,
        ),
        Err(e) => (json!({"valid": false, "reason": e.reason(), "message": e.to_string()}), ExitCode::FAILURE),
    };
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(code)
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The Txn-Token, a file holding it, or `-` for standard input.
    token: String,
    /// Explain times relative to this Unix time instead of now.
    #[arg(long)]
    now: Option<u64>,
}

/// Decodes a Txn-Token and explains it; verifies nothing.
pub(crate) fn inspect(args: InspectArgs) -> CliResult {
    crate::inspect::run(crate::inspect::InspectArgs::new(token_arg(&args.token)?, args.now))
}
