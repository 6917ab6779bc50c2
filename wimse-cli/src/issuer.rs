//! `wimse issuer serve`: the identity server, from a configuration file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use wimse_core::time::SystemClock;
use wimse_issuer::{IdentityServer, load_config};

use crate::CliResult;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The configuration file (JSON; see `wimse_issuer::IssuerConfig`).
    #[arg(long)]
    config: PathBuf,
    /// Address to listen on. Port 0 picks a free port; the address is printed.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: String,
}

pub(crate) fn serve(args: ServeArgs) -> CliResult {
    // Refuse to start on a bad configuration, naming the field.
    let config = load_config(&args.config).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let server = Arc::new(IdentityServer::open(config, SystemClock).await.map_err(|e| e.to_string())?);
        let listener =
            tokio::net::TcpListener::bind(&args.listen).await.map_err(|e| format!("{}: {e}", args.listen))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let (epoch, sequence) = server.key_state();
        tracing::info!(trust_domain = %server.trust_domain(), %address, %epoch, sequence, "wimse issuer: started");
        println!("wimse issuer for {} listening on http://{address}", server.trust_domain());
        // Rotation and replica synchronisation run on a timer, not on traffic.
        server.start_maintenance();
        let app = wimse_issuer::router(server);
        let served = axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await;
        served.map_err(|e| e.to_string())?;
        tracing::info!("wimse issuer: stopped");
        Ok(ExitCode::SUCCESS)
    })
}

#[derive(Debug, Args)]
pub(crate) struct ReplaceArgs {
    /// The identity server's configuration file (its key store or PostgreSQL).
    #[arg(long)]
    config: PathBuf,
}

/// Writes a new key store over the configured one and prints `{"old_epoch", "new_epoch"}`.
pub(crate) fn replace_key_store(args: ReplaceArgs) -> CliResult {
    let config = load_config(&args.config).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let server = IdentityServer::open(config, SystemClock).await.map_err(|e| e.to_string())?;
        let (old_epoch, new_epoch) = server.replace_key_store().await.map_err(|e| e.to_string())?;
        println!("{}", serde_json::json!({"old_epoch": old_epoch, "new_epoch": new_epoch}));
        Ok(ExitCode::SUCCESS)
    })
}
