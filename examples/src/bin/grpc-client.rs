//! A tonic gRPC client that signs every call: `WimseSignLayer::for_origin` around a `Channel`
//! (whose requests carry only the method's path, so the layer puts the server's origin in front
//! for the WPT's audience). It calls `grpc-server` as the allowed workload, as one its policy
//! refuses, and through a layer that was not given the origin.
//!
//! Start `cargo run -p wimse-examples --bin grpc-server` first; it prints this command:
//! `cargo run -p wimse-examples --bin grpc-client -- <origin> <credentials directory>`.

use std::path::Path;

use tower::ServiceBuilder;
use wimse_core::prelude::*;
use wimse_examples::greeter::{GreeterClient, HelloRequest};
use wimse_examples::{ALLOWED, DENIED};
use wimse_tower::WimseSignLayer;

/// The signer of `id`, from the WIT and key files its node agent keeps in `dir`.
fn signer(dir: &Path, id: &str) -> Result<Signer, wimse_core::Error> {
    let name = id.rsplit('/').next().unwrap_or_default();
    let files = FileCredentials::new(dir.join(format!("{name}.wit.jwt")), dir.join(format!("{name}.key.jwk")))?;
    Ok(Signer::new(files))
}

/// Prints one call and checks its outcome; exits non-zero on a surprise.
fn expect(label: &str, outcome: Result<String, tonic::Status>, expected: tonic::Code) -> Result<(), String> {
    let (code, text) = match outcome {
        Ok(message) => (tonic::Code::Ok, message),
        Err(status) => (status.code(), status.message().to_owned()),
    };
    println!("{label:<40} -> {code:?} {text}");
    if code != expected {
        return Err(format!("{label}: expected {expected:?}, got {code:?}"));
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: grpc-client <origin> <credentials directory> (grpc-server prints both)";
    let mut args = std::env::args().skip(1);
    let (origin, dir) = (args.next().ok_or(usage)?, args.next().ok_or(usage)?);
    let channel = tonic::transport::Endpoint::from_shared(origin.clone())?.connect().await?;

    for (id, expected) in [(ALLOWED, tonic::Code::Ok), (DENIED, tonic::Code::PermissionDenied)] {
        let layer = WimseSignLayer::for_origin(signer(Path::new(&dir), id)?, &origin)?;
        let mut client = GreeterClient::new(ServiceBuilder::new().layer(layer).service(channel.clone()));
        let reply = client.hello(HelloRequest { name: "grpc".into() }).await;
        expect(&format!("Hello as {id}"), reply.map(|r| r.into_inner().message), expected)?;
    }
    // Without the origin the layer cannot name the audience: refused before anything is sent.
    let layer = WimseSignLayer::new(signer(Path::new(&dir), ALLOWED)?);
    let mut client = GreeterClient::new(ServiceBuilder::new().layer(layer).service(channel));
    let reply = client.hello(HelloRequest { name: "grpc".into() }).await;
    expect("Hello without the origin", reply.map(|r| r.into_inner().message), tonic::Code::FailedPrecondition)?;
    println!("grpc-client: every call behaved as expected");
    Ok(())
}
