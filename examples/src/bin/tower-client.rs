//! A tower/hyper client that signs every request: `WimseSignLayer` around hyper's client, so
//! any tower-based client stack (tonic included) gets WIMSE credentials the same way. It calls a
//! verifying axum service as the allowed workload.
//!
//! Run with `cargo run -p wimse-examples --bin tower-client`.

use axum::Router;
use axum::routing::get;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt as _};
use wimse_axum::{Caller, WimseLayer};
use wimse_core::client::sign::Signer;
use wimse_core::config::Settings;
use wimse_examples::{ALLOWED, DENIED, Demo, expect};
use wimse_tower::WimseSignLayer;

async fn whoami(Caller(caller): Caller) -> String {
    format!("hello {}", caller.id())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let demo = Demo::new("tower")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let origin = format!("http://{}", listener.local_addr()?);
    let settings = Settings::load(demo.settings(&origin)?)?;
    let app = Router::new()
        .route("/whoami", get(whoami))
        .layer(WimseLayer::new(settings.verifier()?).policy(settings.policy()?));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let hyper = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    for (id, expected) in [(ALLOWED, 200), (DENIED, 403)] {
        // The layer signs with the audience taken from the (absolute) request URI.
        let client =
            ServiceBuilder::new().layer(WimseSignLayer::new(Signer::new(demo.credentials(id)?))).service(hyper.clone());
        let request = http::Request::get(format!("{origin}/whoami")).body(Empty::new())?;
        let response = client.oneshot(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        expect(&format!("GET /whoami as {id}"), status, &String::from_utf8_lossy(&body), expected)?;
    }
    println!("tower-client: every request behaved as expected");
    Ok(())
}
