//! `wimse issuer serve`: the identity server, from a configuration file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use wimse_core::issuer::{IdentityServer, load_config};
use wimse_core::time::SystemClock;

use crate::CliResult;

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The configuration file (JSON; see `wimse_core::issuer::IssuerConfig`).
    #[arg(long)]
    config: PathBuf,
    /// Address to listen on. Port 0 picks a free port; the address is printed.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: String,
}

pub(crate) fn serve(args: ServeArgs) -> CliResult {
    // Refuse to start on a bad configuration, naming the field.
    let config = load_config(&args.config).map_err(|e| e.to_string())?;
    let server = Arc::new(IdentityServer::new(config, SystemClock).map_err(|e| e.to_string())?);
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(&args.listen).await.map_err(|e| format!("{}: {e}", args.listen))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        println!("wimse issuer for {} listening on http://{address}", server.trust_domain());
        let app = wimse_axum::issuer::router(server);
        axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(ExitCode::SUCCESS)
    })
}
