//! A tonic gRPC service that verifies its callers: `WimseLayer` in front of a `Greeter`,
//! configured from a settings file like the other examples. It stands in for the whole trust
//! domain: it writes the callers' credentials (as their node agent would) next to its settings,
//! prints its origin and the command that runs `grpc-client` against it, and serves until
//! Ctrl-C. The credentials last ten minutes.
//!
//! Run with `cargo run -p wimse-examples --bin grpc-server` (listens on 127.0.0.1:50051; another
//! address as the argument), then the `grpc-client` command it prints.

use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use wimse_core::config::Settings;
use wimse_core::prelude::*;
use wimse_examples::greeter::{Greeter, GreeterServer, HelloReply, HelloRequest};
use wimse_examples::{ALLOWED, DENIED, Demo};
use wimse_tower::WimseLayer;

struct Hello;

impl Greeter for Hello {
    async fn hello(&self, request: tonic::Request<HelloRequest>) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        // The caller WimseLayer verified (and its policy let in).
        let caller = request.extensions().get::<VerifiedCaller>().map(|caller| caller.id().to_string());
        let caller = caller.ok_or_else(|| tonic::Status::unauthenticated("no verified caller"))?;
        let message = format!("hello {}, from {caller}", request.get_ref().name);
        Ok(tonic::Response::new(HelloReply { message }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:50051".to_owned());
    let demo = Demo::new("grpc")?;
    let listener = tokio::net::TcpListener::bind(&address).await?;
    // The audience of every call is this origin + `/wimse.example.Greeter/Hello`.
    let origin = format!("http://{}", listener.local_addr()?);
    let settings = Settings::load(demo.settings(&origin)?)?;
    // The callers' WIT and key files, as their node agent would keep them.
    demo.credentials(ALLOWED)?;
    demo.credentials(DENIED)?;

    println!("grpc-server: listening on {origin}");
    println!("grpc-client: cargo run -p wimse-examples --bin grpc-client -- {origin} {}", demo.dir().display());
    let layer = WimseLayer::new(settings.verifier()?).policy(settings.policy()?);
    Server::builder()
        .layer(layer)
        .add_service(GreeterServer::new(Hello))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
