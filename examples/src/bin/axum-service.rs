//! An axum service that verifies its callers, configured from a settings file the way an
//! operator would configure it, called by real clients: an allowed workload, a workload the
//! policy refuses, and an unsigned request.
//!
//! Run with `cargo run -p wimse-examples --bin axum-service`.

use axum::Router;
use axum::routing::get;
use reqwest_middleware::ClientBuilder;
use wimse_axum::prelude::*;
use wimse_core::config::Settings;
use wimse_examples::{ALLOWED, DENIED, Demo, expect};
use wimse_reqwest::WimseSignMiddleware;

async fn orders(Caller(caller): Caller) -> String {
    format!("hello {} ({})", caller.id(), caller.method().name())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let demo = Demo::new("axum")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let origin = format!("http://{}", listener.local_addr()?);

    // The service: origin, trust anchors and policy from `service.toml` (and `WIMSE_*`).
    let settings = Settings::load(demo.settings(&origin)?)?;
    let app = Router::new()
        .route("/orders", get(orders))
        .layer(WimseLayer::new(settings.verifier()?).policy(settings.policy()?));
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Its callers: each signs with the WIT and key files its agent keeps current.
    for (id, expected) in [(ALLOWED, 200), (DENIED, 403)] {
        let signer = Signer::new(demo.credentials(id)?);
        let client = ClientBuilder::new(reqwest::Client::new()).with(WimseSignMiddleware::new(signer)).build();
        let response = client.get(format!("{origin}/orders")).send().await?;
        let status = response.status().as_u16();
        expect(&format!("GET /orders as {id}"), status, &response.text().await?, expected)?;
    }
    let response = reqwest::get(format!("{origin}/orders")).await?;
    let status = response.status().as_u16();
    expect("GET /orders unsigned", status, &response.text().await?, 401)?;
    println!("axum-service: every request behaved as expected");
    Ok(())
}
