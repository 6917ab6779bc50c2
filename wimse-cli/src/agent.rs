//! `wimse agent serve`: the node agent; `wimse agent fetch`: what a workload gets from a
//! Workload API endpoint (ours or SPIRE's).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use wimse_agent::{Agent, AgentConfig, StartError};
use wimse_workload_api::{Endpoint, WorkloadApiClient, WorkloadApiError};

use crate::CliResult;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The configuration file (JSON; see `wimse_agent::AgentConfig`).
    #[arg(long)]
    config: PathBuf,
    /// Serve `/metrics` (Prometheus), `/healthz` and `/readyz` (every identity has credentials
    /// and the bundles are fetched) on this address.
    #[arg(long)]
    metrics_listen: Option<String>,
}

/// The exit code of a start that failed for `error`; 2 (every `wimse` command's error) for an
/// invalid configuration. The README's agent section lists them.
fn start_exit_code(error: &StartError) -> u8 {
    match error {
        StartError::NoToken(_) => 3,
        StartError::TokenRefused { .. } => 4,
        StartError::IdentitiesRefused { .. } => 5,
        _ => 2,
    }
}

fn start_failed(error: &StartError) -> ExitCode {
    eprintln!("wimse: {error}");
    ExitCode::from(start_exit_code(error))
}

/// Serves until interrupted. SIGHUP obtains new keys and credentials for every identity.
/// Exits 3 without a token, 4 when the identity server refuses the token, 5 when it refuses
/// every identity (see [`start_exit_code`]).
pub(crate) fn serve(args: ServeArgs) -> CliResult {
    let config = AgentConfig::from_file(&args.config).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let socket = config.socket.clone();
        let agent = match Agent::start(config) {
            Ok(agent) => agent,
            Err(error) => return Ok(start_failed(&error)),
        };
        if let Err(error) = agent.check_issuance().await {
            return Ok(start_failed(&error));
        }
        let agent = std::sync::Arc::new(agent);
        if let Some(listen) = &args.metrics_listen {
            let probed = agent.clone();
            let ready = move || {
                let agent = probed.clone();
                async move {
                    use wimse_core::time::Clock as _;
                    agent.readiness(wimse_core::time::SystemClock.now())
                }
            };
            let address = crate::ops::serve(listen, ready).await?;
            println!("wimse agent metrics and health on http://{address}");
        }
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| format!("SIGHUP handler: {e}"))?;
        let shutdown = async {
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return,
                    _ = hangup.recv() => {
                        tracing::info!("wimse agent: SIGHUP; renewing every identity");
                        agent.rotate();
                    }
                }
            }
        };
        println!("wimse agent serving the Workload API on unix://{}", socket.display());
        agent.serve(shutdown).await.map_err(|e| format!("{}: {e}", socket.display()))?;
        let _ = std::fs::remove_file(&socket);
        tracing::info!("wimse agent: stopped");
        Ok(ExitCode::SUCCESS)
    })
}

#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    /// The configuration file to check.
    #[arg(long)]
    config: PathBuf,
}

/// `wimse agent validate`: exit 0 and a line saying so, or the refusal (exit 2).
pub(crate) fn validate(args: ValidateArgs) -> CliResult {
    let config = AgentConfig::from_file(&args.config).map_err(|e| e.to_string())?;
    println!("{}: a valid agent configuration for {}", args.config.display(), config.trust_domain);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub(crate) struct FetchArgs {
    /// The endpoint (`unix:///path` or `tcp://IP:port`); default `SPIFFE_ENDPOINT_SOCKET`.
    #[arg(long)]
    socket: Option<String>,
    /// Fetch X.509-SVIDs instead of WIT-SVIDs.
    #[arg(long)]
    x509: bool,
    /// How long to wait for the answer, in seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

/// Prints the SVIDs this process is entitled to as JSON (identities, hints, expiry; never keys).
/// Exits 1 when the endpoint refuses (the gRPC status is printed), 2 on other errors.
pub(crate) fn fetch(args: FetchArgs) -> CliResult {
    let endpoint = match &args.socket {
        Some(address) => Endpoint::parse(address),
        None => Endpoint::from_env(),
    }
    .map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let client = WorkloadApiClient::new(endpoint);
        let timeout = Duration::from_secs(args.timeout);
        let svids = if args.x509 {
            client.fetch_x509_svids(timeout).await.map(|update| {
                update
                    .svids
                    .iter()
                    .map(|s| json!({"spiffe_id": s.spiffe_id.as_str(), "hint": s.hint, "certificates": s.certificate.chain().len()}))
                    .collect::<Vec<_>>()
            })
        } else {
            client.fetch_wit_svids(None, timeout).await.map(|svids| {
                svids
                    .iter()
                    .map(|s| json!({"spiffe_id": s.spiffe_id.as_str(), "hint": s.hint, "expires_at": s.credentials.expires_at()}))
                    .collect::<Vec<_>>()
            })
        };
        match svids {
            Ok(svids) => {
                println!("{}", serde_json::to_string_pretty(&json!({"svids": svids})).map_err(|e| e.to_string())?);
                Ok(ExitCode::SUCCESS)
            }
            Err(error @ (WorkloadApiError::PermissionDenied(_) | WorkloadApiError::Unimplemented { .. })) => {
                eprintln!("wimse: {error}");
                Ok(ExitCode::FAILURE)
            }
            Err(error) => Err(error.to_string()),
        }
    })
}
