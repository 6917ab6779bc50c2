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

/// How long Workload API streams may stay open once the agent stops serving (they never end on
/// their own: workloads reconnect, to the next configuration or the restarted agent).
const DRAIN: Duration = Duration::from_secs(5);

/// What ends one configuration's serving.
enum Event {
    /// SIGTERM or SIGINT.
    Stop,
    /// SIGHUP with a file that loads: its agent, credentials obtained, its socket bound.
    Reload(Agent, tokio::net::UnixListener),
}

/// The agent of the file at `path`, started, past its first issuance (so a reload never
/// replaces a working agent with one whose token or identities are refused) and bound to its
/// socket (so one it cannot bind is refused too; from then on new connections reach it).
async fn reloaded(path: &std::path::Path) -> Result<(Agent, tokio::net::UnixListener), String> {
    let config = AgentConfig::from_file(path).map_err(|e| e.to_string())?;
    let agent = Agent::start(config).map_err(|e| e.to_string())?;
    agent.check_issuance().await.map_err(|e| e.to_string())?;
    let listener = agent.bind().map_err(|e| format!("{}: {e}", agent.socket().display()))?;
    Ok((agent, listener))
}

/// Serves `agent` on `listener` in a task until told to stop (the sender), then lets its
/// streams close within [`DRAIN`].
fn serving(
    agent: std::sync::Arc<Agent>,
    listener: tokio::net::UnixListener,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<()>>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        agent
            .serve_on(listener, async move {
                let _ = stopped.await;
            })
            .await
    });
    (stop, task)
}

/// Stops one configuration's serving: no new connections, streams closed within [`DRAIN`].
async fn drain(stop: tokio::sync::oneshot::Sender<()>, mut task: tokio::task::JoinHandle<std::io::Result<()>>) {
    let _ = stop.send(());
    if tokio::time::timeout(DRAIN, &mut task).await.is_err() {
        tracing::info!(?DRAIN, "wimse agent: Workload API streams still open after the drain time; closing them");
        task.abort();
    }
}

/// Serves until SIGTERM or SIGINT (then exits 0 once Workload API streams close, within
/// [`DRAIN`]). SIGHUP reads the file again: a file that loads replaces the running
/// configuration (a new agent obtains new keys and credentials for every identity and binds the
/// socket first, then the old one stops; workloads reconnect), one that does not (or whose agent
/// cannot start or bind) is refused with a log line and the running configuration serves on.
/// Exits 3 without a token, 4 when the identity server refuses the token, 5 when it refuses
/// every identity (see [`start_exit_code`]).
pub(crate) fn serve(args: ServeArgs) -> CliResult {
    let config = AgentConfig::from_file(&args.config).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let agent = match Agent::start(config) {
            Ok(agent) => agent,
            Err(error) => return Ok(start_failed(&error)),
        };
        if let Err(error) = agent.check_issuance().await {
            return Ok(start_failed(&error));
        }
        let mut agent = std::sync::Arc::new(agent);
        let current = std::sync::Arc::new(std::sync::RwLock::new(agent.clone()));
        if let Some(listen) = &args.metrics_listen {
            let probed = current.clone();
            let ready = move || {
                let agent = probed.read().map(|a| a.clone()).unwrap_or_else(|e| e.into_inner().clone());
                async move {
                    use wimse_core::time::Clock as _;
                    agent.readiness(wimse_core::time::SystemClock.now())
                }
            };
            let address = crate::ops::serve(listen, ready).await?;
            println!("wimse agent metrics and health on http://{address}");
        }
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| format!("SIGTERM handler: {e}"))?;
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| format!("SIGHUP handler: {e}"))?;
        let (events_tx, mut events) = tokio::sync::mpsc::channel::<Event>(1);
        let path = args.config.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = terminate.recv() => break,
                    _ = hangup.recv() => {
                        tracing::info!(file = %path.display(), "wimse agent: SIGHUP; reloading the configuration");
                        // Apart, so SIGTERM is heard while the new agent obtains its credentials.
                        let (path, events) = (path.clone(), events_tx.clone());
                        tokio::spawn(async move {
                            match reloaded(&path).await {
                                Ok((agent, listener)) => {
                                    let _ = events.send(Event::Reload(agent, listener)).await;
                                }
                                Err(error) => tracing::error!(%error, "wimse agent: new configuration refused; keeping the running one"),
                            }
                        });
                    }
                }
            }
            let _ = events_tx.send(Event::Stop).await;
        });
        let listener = agent.bind().map_err(|e| format!("{}: {e}", agent.socket().display()))?;
        println!("wimse agent serving the Workload API on unix://{}", agent.socket().display());
        let (mut stop, mut task) = serving(agent.clone(), listener);
        loop {
            let event = tokio::select! {
                event = events.recv() => event.unwrap_or(Event::Stop),
                ended = &mut task => {
                    let error = match ended {
                        Ok(Err(error)) => error.to_string(),
                        _ => "the Workload API server ended".to_owned(),
                    };
                    return Err(format!("{}: {error}", agent.socket().display()));
                }
            };
            match event {
                Event::Stop => {
                    drain(stop, task).await;
                    break;
                }
                Event::Reload(next, listener) => {
                    // The new agent serves first (its socket already bound), then the old stops.
                    let next = std::sync::Arc::new(next);
                    let (next_stop, next_task) = serving(next.clone(), listener);
                    drain(stop, task).await;
                    if next.socket() != agent.socket() {
                        let _ = std::fs::remove_file(agent.socket());
                    }
                    (agent, stop, task) = (next, next_stop, next_task);
                    if let Ok(mut current) = current.write() {
                        *current = agent.clone();
                    }
                    tracing::info!("wimse agent: configuration reloaded; serving it");
                }
            }
        }
        let _ = std::fs::remove_file(agent.socket());
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
