//! The gRPC example pair on loopback: `grpc-server` in its own process, `grpc-client` run with
//! the command line the server prints.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The server process, killed (and its demo directory removed) when dropped.
struct Server {
    child: Child,
    dir: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Killed, the server does not clean up after itself.
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn the_client_calls_the_server_and_each_call_behaves_as_printed() {
    let child = Command::new(env!("CARGO_BIN_EXE_grpc-server"))
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut server = Server { child, dir: None };
    let mut lines = BufReader::new(server.child.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    assert!(listening.starts_with("grpc-server: listening on http://127.0.0.1:"), "{listening}");
    let command = lines.next().unwrap().unwrap();
    // `grpc-client: cargo run -p wimse-examples --bin grpc-client -- <origin> <dir>`
    let args: Vec<&str> = command.rsplit_once(" -- ").expect(&command).1.split(' ').collect();
    let [origin, dir] = args[..] else { panic!("{command}") };
    assert!(listening.ends_with(origin), "{listening} / {command}");
    server.dir = Some(dir.to_owned());

    let out = Command::new(env!("CARGO_BIN_EXE_grpc-client")).args([origin, dir]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
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
