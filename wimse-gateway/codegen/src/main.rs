//! `cargo run --manifest-path wimse-gateway/codegen/Cargo.toml`: compiles `proto/ext_authz.proto`
//! (and the trimmed Envoy and Google types it imports) with protox (pure Rust) and writes the
//! prost messages and the tonic client and server to `src/envoy/generated.rs`, one module per
//! protobuf package.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")).parent().ok_or("no parent")?;
    let proto_dir = crate_dir.join("proto");
    let descriptors = protox::compile([proto_dir.join("ext_authz.proto")], [&proto_dir])?;
    let out = std::env::temp_dir().join(format!("wimse-gateway-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&out)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .out_dir(&out)
        .compile_fds(descriptors)?;
    let mut generated = String::from("// @generated from proto/*.proto by wimse-gateway/codegen; do not edit.\n");
    // Nested as the packages are, so the generated `super::` paths between them resolve.
    let module = |file: &str| std::fs::read_to_string(out.join(file));
    generated.push_str(&format!(
        "pub mod envoy {{\n pub mod config {{ pub mod core {{ pub mod v3 {{\n{}\n}} }} }}\n pub mod r#type {{ pub mod v3 {{\n{}\n}} }}\n pub mod service {{ pub mod auth {{ pub mod v3 {{\n{}\n}} }} }}\n}}\npub mod google {{ pub mod rpc {{\n{}\n}} }}\n",
        module("envoy.config.core.v3.rs")?,
        module("envoy.r#type.v3.rs").or_else(|_| module("envoy.type.v3.rs"))?,
        module("envoy.service.auth.v3.rs")?,
        module("google.rpc.rs")?,
    ));
    std::fs::write(crate_dir.join("src/envoy/generated.rs"), generated)?;
    std::fs::remove_dir_all(&out)?;
    Ok(())
}
