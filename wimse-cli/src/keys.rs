//! `wimse key …`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use wimse_core::jose::{Algorithm, SigningKey};

use crate::files::{read_signing_key, write_output, write_private};
use crate::{CliResult, Output};

#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    /// Algorithm: ES256 (default), ES384 or EdDSA.
    #[arg(long, default_value = "ES256")]
    alg: String,
    /// Key id to record in the JWK.
    #[arg(long)]
    kid: Option<String>,
    #[command(flatten)]
    output: Output,
}

#[derive(Debug, Args)]
pub(crate) struct PublicArgs {
    /// Private JWK file (`-` for standard input).
    #[arg(long)]
    key: PathBuf,
    #[command(flatten)]
    output: Output,
}

pub(crate) fn generate(args: GenerateArgs) -> CliResult {
    let alg: Algorithm = args.alg.parse().map_err(|e| format!("--alg: {e}"))?;
    let mut key = SigningKey::generate(alg).map_err(|e| e.to_string())?;
    if let Some(kid) = args.kid {
        key = key.with_kid(kid);
    }
    write_private(args.output.out.as_deref(), &format!("{}\n", key.to_private_jwk().to_json()))?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn public(args: PublicArgs) -> CliResult {
    let key = read_signing_key(&args.key)?;
    write_output(&args.output, &format!("{}\n", key.public_jwk().to_json()))?;
    Ok(ExitCode::SUCCESS)
}
