//! `cargo run --manifest-path wimse-workload-api/codegen/Cargo.toml`: compiles
//! `proto/workload.proto` with protox (pure Rust) and writes the prost messages and tonic
//! client and server to `src/proto/generated.rs`.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")).parent().ok_or("no parent")?;
    let proto_dir = crate_dir.join("proto");
    let descriptors = protox::compile([proto_dir.join("workload.proto")], [&proto_dir])?;
    let out = tempdir()?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .out_dir(&out)
        .compile_fds(descriptors)?;
    // No `package`: prost names the file after the empty package.
    let generated = std::fs::read_to_string(out.join("_.rs"))?;
    let header = "// @generated from proto/workload.proto by wimse-workload-api/codegen; do not edit.\n\n";
    std::fs::write(crate_dir.join("src/proto/generated.rs"), format!("{header}{generated}"))?;
    std::fs::remove_dir_all(&out)?;
    Ok(())
}

fn tempdir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("wimse-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
