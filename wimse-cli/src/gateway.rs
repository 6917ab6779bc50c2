//! `wimse gateway serve`: the gateway of `wimse-gateway`, with its signals.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tokio::signal::unix::{SignalKind, signal};
use wimse_gateway::{Gateway, GatewayConfig};

use crate::CliResult;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The configuration file (TOML, or JSON for a `.json` name; see `wimse_gateway::GatewayConfig`).
    #[arg(long)]
    config: PathBuf,
    /// Serve `/metrics` (Prometheus), `/healthz` and `/readyz` on this address.
    #[arg(long)]
    metrics_listen: Option<String>,
}

/// `wimse gateway validate`: the file built as `serve` would build it, nothing served.
pub(crate) fn validate(args: ServeArgs) -> CliResult {
    let config = GatewayConfig::load(&args.config).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(wimse_gateway::validate(config)).map_err(|e| e.to_string())?;
    println!("{}: a valid gateway configuration", args.config.display());
    Ok(ExitCode::SUCCESS)
}

/// Serves until SIGTERM or SIGINT; SIGHUP reloads the file.
pub(crate) fn serve(args: ServeArgs) -> CliResult {
    let config = GatewayConfig::load(&args.config).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let gateway = Gateway::start(config).await.map_err(|e| e.to_string())?;
        if let Some(listen) = &args.metrics_listen {
            // Ready while its trust anchors are usable and its own credentials current.
            let probe = gateway.clone();
            let address = crate::ops::serve(listen, move || {
                let probe = probe.clone();
                async move { probe.ready() }
            })
            .await?;
            println!("wimse gateway metrics and health on http://{address}");
        }
        let mut hangup = signal(SignalKind::hangup()).map_err(|e| format!("SIGHUP handler: {e}"))?;
        let mut terminate = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
        let reloader = gateway.clone();
        let path = args.config.clone();
        let shutdown = async move {
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return,
                    _ = terminate.recv() => return,
                    _ = hangup.recv() => {
                        tracing::info!(file = %path.display(), "wimse gateway: SIGHUP; reloading");
                        let reloaded = match GatewayConfig::load(&path) {
                            Ok(config) => reloader.reload(config).await,
                            Err(error) => Err(error),
                        };
                        if let Err(error) = reloaded {
                            tracing::error!(%error, "wimse gateway: new configuration refused; keeping the running one");
                        }
                    }
                }
            }
        };
        for (name, address) in [
            ("forward-auth", gateway.forward_auth_address()),
            ("reverse proxy", gateway.reverse_proxy_address()),
            ("egress proxy", gateway.egress_address()),
        ] {
            if let Some(address) = address {
                println!("wimse gateway {name} on http://{address}");
            }
        }
        gateway.serve(shutdown).await.map_err(|e| e.to_string())?;
        tracing::info!("wimse gateway: stopped");
        Ok(ExitCode::SUCCESS)
    })
}
