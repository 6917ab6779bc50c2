//! The operations listener of the servers (`--metrics-listen ADDR`): `/metrics` in Prometheus
//! text from the recorder installed at start (every `metrics` counter, gauge and histogram the
//! libraries and servers record), `/healthz` (the process answers) and `/readyz` (it can do its
//! job now; 503 with the reason otherwise).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{StatusCode, header::CONTENT_TYPE};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the Prometheus recorder (once per process) and keeps its histograms trimmed.
pub(crate) fn install_recorder() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new().install_recorder().map_err(|e| format!("metrics recorder: {e}"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(5));
        loop {
            ticks.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Serves the operations endpoints on `listen`; `ready` says whether the server can do its
/// job. Returns the bound address.
pub(crate) async fn serve<R, F>(listen: &str, ready: R) -> Result<SocketAddr, String>
where
    R: Fn() -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<(), String>> + Send + 'static,
{
    let handle = install_recorder()?;
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("--metrics-listen {listen}: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready().await {
                        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
                    }
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}
