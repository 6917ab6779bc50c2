//! `wimse wit issue` and `wimse wpt new`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use wimse_core::id::WorkloadId;
use wimse_core::protocol::wit::WitIssuer;
use wimse_core::protocol::wpt::WptBuilder;

use crate::files::{now_or, read_jwk, read_signing_key, read_token, write_output};
use crate::{CliResult, Output};

#[derive(Debug, Args)]
pub(crate) struct WitIssueArgs {
    /// The identity server's private JWK.
    #[arg(long)]
    issuer_key: PathBuf,
    /// The workload identifier, e.g. spiffe://prod.example/payments.
    #[arg(long)]
    sub: String,
    /// The workload's key (public or private JWK; only the public part is used). Needs `alg`.
    #[arg(long)]
    workload_key: PathBuf,
    /// `iss` claim.
    #[arg(long)]
    iss: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Issue as of this Unix time instead of now.
    #[arg(long)]
    now: Option<u64>,
    #[command(flatten)]
    output: Output,
}

#[derive(Debug, Args)]
pub(crate) struct WptNewArgs {
    /// The workload's private JWK (the WIT's confirmation key).
    #[arg(long)]
    key: PathBuf,
    /// File holding the WIT the proof is for.
    #[arg(long)]
    wit: PathBuf,
    /// Audience: the target URI without query and fragment.
    #[arg(long)]
    aud: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 60)]
    ttl: u64,
    /// Value of the request's Txn-Token field, to bind with `tth`.
    #[arg(long)]
    txn_token: Option<String>,
    /// Another context token to bind with `oth`, as NAME=VALUE (repeatable).
    #[arg(long = "other", value_name = "NAME=VALUE")]
    others: Vec<String>,
    /// Create as of this Unix time instead of now.
    #[arg(long)]
    now: Option<u64>,
    #[command(flatten)]
    output: Output,
}

pub(crate) fn wit_issue(args: WitIssueArgs) -> CliResult {
    let issuer_key = read_signing_key(&args.issuer_key)?;
    let sub = WorkloadId::parse(&args.sub).map_err(|e| format!("--sub: {e}"))?;
    let workload_jwk = read_jwk(&args.workload_key)?.to_public();
    let mut issuer = WitIssuer::new(issuer_key).lifetime(args.ttl);
    if let Some(iss) = args.iss {
        issuer = issuer.issuer(iss);
    }
    let wit = issuer.issue(&sub, &workload_jwk, now_or(args.now)).map_err(|e| e.to_string())?;
    write_output(&args.output, &format!("{wit}\n"))?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn wpt_new(args: WptNewArgs) -> CliResult {
    let key = read_signing_key(&args.key)?;
    let wit = read_token(&args.wit)?;
    let others = args
        .others
        .iter()
        .map(|o| o.split_once('=').ok_or_else(|| format!("--other {o}: expected NAME=VALUE")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut builder = WptBuilder::new(&key, &wit, &args.aud).lifetime(args.ttl);
    if let Some(txn) = &args.txn_token {
        builder = builder.txn_token(txn);
    }
    for (name, value) in others {
        builder = builder.other_token(name, value);
    }
    let wpt = builder.sign(now_or(args.now)).map_err(|e| e.to_string())?;
    write_output(&args.output, &format!("{wpt}\n"))?;
    Ok(ExitCode::SUCCESS)
}
