//! `wimse sign` for real clients: the audience follows the request's own scheme, refusals name
//! the proof's own audience parameter, and the signed request comes out as a curl command line
//! or as header lines that a real service accepts.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

const NOW: &str = "1800000000";

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wimse-cli-sign-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn s(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }
    fn write(&self, file: &str, text: &str) -> String {
        std::fs::write(self.0.join(file), text).unwrap();
        self.s(file)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wimse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wimse")).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = wimse(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// An issuer key, its public key, a workload key and a WIT for `spiffe://prod.example/orders`
/// (issued at `now`, or at the system time).
fn credentials(name: &str, now: Option<&str>) -> Dir {
    let d = Dir::new(name);
    ok(&["key", "generate", "--alg", "ES256", "--kid", "issuer-1", "-o", &d.s("issuer.jwk")]);
    ok(&["key", "public", "--key", &d.s("issuer.jwk"), "-o", &d.s("issuer.pub.jwk")]);
    ok(&["key", "generate", "--alg", "ES256", "-o", &d.s("workload.jwk")]);
    let (issuer, workload, wit) = (d.s("issuer.jwk"), d.s("workload.jwk"), d.s("wit.jwt"));
    let mut args = vec!["wit", "issue", "--issuer-key", &issuer, "--sub", "spiffe://prod.example/orders"];
    args.extend(["--workload-key", &workload, "-o", &wit]);
    if let Some(now) = now {
        args.extend(["--now", now]);
    }
    ok(&args);
    d
}

fn sign(d: &Dir, request: &str, extra: &[&str]) -> String {
    let (key, wit) = (d.s("workload.jwk"), d.s("wit.jwt"));
    let mut args = vec!["sign", "--request", request, "--key", &key, "--wit", &wit];
    args.extend_from_slice(extra);
    ok(&args)
}

/// `wimse verify` of the signed request in `file` for `origin`, at [`NOW`].
fn verify(d: &Dir, file: &str, origin: &str) -> Value {
    let anchor = format!("spiffe://prod.example={}", d.s("issuer.pub.jwk"));
    let out = wimse(&["verify", "--request", file, "--trust-anchor", &anchor, "--origin", origin, "--now", NOW]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_default_audience_is_the_requests_own_url() {
    let d = credentials("audience", Some(NOW));
    // An http service: the absolute-form target says so (and names the authority; no Host).
    let local = d.write("local.http", "GET http://127.0.0.1:8080/orders?page=2 HTTP/1.1\r\n\r\n");
    for mode in ["wpt", "httpsig"] {
        let signed = d.write(&format!("local-{mode}.http"), &sign(&d, &local, &["--mode", mode, "--now", NOW]));
        let accepted = verify(&d, &signed, "http://127.0.0.1:8080");
        assert_eq!(accepted["verified"], true, "{mode}: {accepted}");
        // Against an https origin the audience differs, and the refusal names the parameter of
        // the proof the request carries: never a WPT's `aud` for a signed request.
        let signed = d.write(&format!("again-{mode}.http"), &sign(&d, &local, &["--mode", mode, "--now", NOW]));
        let refused = verify(&d, &signed, "https://127.0.0.1:8080");
        assert_eq!(refused["reason"], "audience_mismatch", "{mode}: {refused}");
        let message = refused["message"].as_str().unwrap();
        let parameter = if mode == "wpt" { "aud" } else { "wimse-aud" };
        assert!(message.contains(&format!("received {parameter} \"http://127.0.0.1:8080/orders\"")), "{message}");
        assert!(message.contains("https://127.0.0.1:8080/orders"), "what it accepts: {message}");
        if mode == "httpsig" {
            assert!(!message.contains("WPT"), "a signed request has no WPT: {message}");
        }
    }
    // An origin-form target does not say its scheme: https, at its Host.
    let remote = d.write("remote.http", "POST /charge HTTP/1.1\r\nHost: payments.example\r\n\r\n");
    let signed = d.write("remote-signed.http", &sign(&d, &remote, &["--now", NOW]));
    assert_eq!(verify(&d, &signed, "https://payments.example")["verified"], true);
    // To this machine, where services are often plain http, it says how to sign for http.
    let loopback = d.write("loopback.http", "GET /orders HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n");
    let out = wimse(&["sign", "--request", &loopback, "--key", &d.s("workload.jwk"), "--wit", &d.s("wit.jwt")]);
    assert!(out.status.success());
    let hint = String::from_utf8_lossy(&out.stderr);
    assert!(hint.contains("write the request target as http://127.0.0.1:8080/orders"), "{hint}");
    assert!(
        wimse(&["sign", "--request", &remote, "--key", &d.s("workload.jwk"), "--wit", &d.s("wit.jwt")])
            .stderr
            .is_empty()
    );
    // Neither an absolute target nor a Host: the audience must be given.
    let hostless = d.write("hostless.http", "GET /orders HTTP/1.1\r\n\r\n");
    let out = wimse(&["sign", "--request", &hostless, "--key", &d.s("workload.jwk"), "--wit", &d.s("wit.jwt")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give --aud"));
}

async fn echo(
    axum::Extension(caller): axum::Extension<wimse_core::server::caller::VerifiedCaller>,
    headers: http::HeaderMap,
    body: String,
) -> String {
    let note = headers.get("x-note").and_then(|v| v.to_str().ok()).unwrap_or("-");
    format!("{} {} {note} {body}", caller.id(), caller.method().name())
}

/// Runs `sh -c script` without blocking the runtime the service runs on.
async fn shell(script: &str) -> String {
    let out = tokio::process::Command::new("sh").args(["-c", script]).output().await.unwrap();
    assert!(out.status.success(), "{script}\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn curl_and_header_lines_reach_a_real_service() {
    if Command::new("curl").arg("--version").output().is_err() {
        println!("skipped: curl not found");
        return;
    }
    let d = credentials("curl", None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let trust = wimse_core::protocol::trust::TrustStore::new().with(
        "spiffe://prod.example".parse().unwrap(),
        wimse_core::protocol::trust::TrustAnchors::from_file(d.s("issuer.pub.jwk")).unwrap(),
    );
    let verifier = wimse_core::server::verify::Verifier::new(
        trust,
        wimse_core::server::verify::VerifierConfig::new().origin(&origin),
    )
    .unwrap();
    let app =
        axum::Router::new().route("/orders", axum::routing::post(echo)).layer(wimse_tower::WimseLayer::new(verifier));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let request = d.write(
        "request.http",
        &format!(
            "POST {origin}/orders?id=7 HTTP/1.1\r\nContent-Type: application/json\r\nX-Note: it's\r\n\r\n{{\"a\":1}}"
        ),
    );
    // A curl command line, run as printed: each proof mode, body and fields intact.
    for (mode, method) in [("wpt", "wpt"), ("httpsig", "http-signature")] {
        let command = sign(&d, &request, &["--mode", mode, "--format", "curl"]);
        assert!(command.starts_with("curl "), "{command}");
        let answer = shell(&command).await;
        assert_eq!(answer, format!("spiffe://prod.example/orders {method} it's {{\"a\":1}}"), "{command}");
    }
    // Header lines, for `curl -H @file` (or any client): the body is sent separately.
    let headers = d.write("headers.txt", &sign(&d, &request, &["--mode", "httpsig", "--format", "headers"]));
    let lines = std::fs::read_to_string(&headers).unwrap();
    assert!(lines.contains("Workload-Identity-Token: ") && lines.contains("Signature-Input: "), "{lines}");
    assert!(!lines.to_ascii_lowercase().contains("host:"), "the client sets Host from the URL: {lines}");
    d.write("body.json", "{\"a\":1}");
    let script = format!("curl -sS -H @{headers} --data-binary @{} '{origin}/orders?id=7'", d.s("body.json"));
    assert_eq!(shell(&script).await, "spiffe://prod.example/orders http-signature it's {\"a\":1}");
    // A tampered curl line is refused: the signature covers what curl sends.
    let command = sign(&d, &request, &["--mode", "httpsig", "--format", "curl"]).replace("{\"a\":1}", "{\"a\":2}");
    let answer = shell(&format!("{} -s -o /dev/null -w '%{{http_code}}'", command.trim_end())).await;
    assert_eq!(answer, "400");
}
