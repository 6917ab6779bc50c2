//! The gRPC example pair on loopback: `grpc-server` in its own process, `grpc-client` run with
//! the command line the server prints.

mod pair;

#[test]
fn the_client_calls_the_server_and_each_call_behaves_as_printed() {
    let server = pair::Server::start(env!("CARGO_BIN_EXE_grpc-server"));
    let listening = &server.first_line;
    assert!(listening.starts_with("grpc-server: listening on http://127.0.0.1:"), "{listening}");
    // `grpc-client: cargo run -p wimse-examples --bin grpc-client -- <origin> <dir>`
    let [origin, _dir] = &server.client_args[..] else { panic!("{:?}", server.client_args) };
    assert!(listening.ends_with(origin.as_str()), "{listening} / {origin}");
    let stdout = server.run_client(env!("CARGO_BIN_EXE_grpc-client"));
    for line in [
        "Hello as spiffe://prod.example/orders    -> Ok hello grpc, from spiffe://prod.example/orders",
        "Hello as spiffe://prod.example/intruder  -> PermissionDenied policy_denied",
        "Hello without the origin                 -> FailedPrecondition wimse: invalid_configuration:",
        "WimseSignLayer::for_origin(signer, \"http://host:port\")",
        "grpc-client: every call behaved as expected",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in\n{stdout}");
    }
}
