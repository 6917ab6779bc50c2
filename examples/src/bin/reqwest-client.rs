//! A reqwest client that signs every request as its workload: a WIT and a fresh WPT by default,
//! an HTTP message signature over method, path, query and body when asked per request, and a
//! signed response verified against the server's expected identity. The server is a small
//! verifying axum service that reports how each caller proved itself.
//!
//! Run with `cargo run -p wimse-examples --bin reqwest-client`.

use axum::Router;
use axum::routing::post;
use reqwest_middleware::ClientBuilder;
use wimse_axum::{Caller, WimseLayer};
use wimse_core::client::sign::Signer;
use wimse_core::config::Settings;
use wimse_examples::{ALLOWED, Demo, expect};
use wimse_reqwest::{ProofMode, WimseSignMiddleware};

async fn pay(Caller(caller): Caller, body: String) -> String {
    format!("{} paid {body} ({})", caller.id(), caller.method().name())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let demo = Demo::new("reqwest")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let origin = format!("http://{}", listener.local_addr()?);
    let settings = Settings::load(demo.settings(&origin)?)?;
    let app =
        Router::new().route("/pay", post(pay)).layer(WimseLayer::new(settings.verifier()?).policy(settings.policy()?));
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The client: one middleware, credentials from the files the workload's agent renews.
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(WimseSignMiddleware::new(Signer::new(demo.credentials(ALLOWED)?)))
        .build();

    let response = client.post(format!("{origin}/pay")).body("5 EUR").send().await?;
    let status = response.status().as_u16();
    expect("POST /pay with a WPT", status, &response.text().await?, 200)?;

    // Per request: an HTTP message signature instead (covers the body through Content-Digest).
    let response = client
        .post(format!("{origin}/pay"))
        .body("7 EUR")
        .with_extension(ProofMode::HttpSignature { sign_response: false })
        .send()
        .await?;
    let status = response.status().as_u16();
    expect("POST /pay with an HTTP signature", status, &response.text().await?, 200)?;
    println!("reqwest-client: every request behaved as expected");
    Ok(())
}
