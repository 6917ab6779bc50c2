//! The README's CLI round trip: keys -> WIT -> signed request -> `wimse verify`, and tampering.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const NOW: &str = "1800000000";

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wimse-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
    fn s(&self, file: &str) -> String {
        self.path(file).display().to_string()
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

/// Generates keys, a WIT, and a signed request; returns the directory.
fn setup(name: &str, alg: &str) -> Dir {
    let d = Dir::new(name);
    ok(&["key", "generate", "--alg", "ES256", "--kid", "issuer-1", "-o", &d.s("issuer.jwk")]);
    ok(&["key", "public", "--key", &d.s("issuer.jwk"), "-o", &d.s("issuer.pub.jwk")]);
    ok(&["key", "generate", "--alg", alg, "-o", &d.s("workload.jwk")]);
    ok(&[
        "wit",
        "issue",
        "--issuer-key",
        &d.s("issuer.jwk"),
        "--sub",
        "spiffe://prod.example/orders",
        "--workload-key",
        &d.s("workload.jwk"),
        "--now",
        NOW,
        "-o",
        &d.s("wit.jwt"),
    ]);
    std::fs::write(d.path("request.http"), "POST /charge?id=7 HTTP/1.1\r\nHost: payments.example\r\nTxn-Token: txn-1\r\nX-Ctx: ctx-1\r\n\r\n{\"amount\":1}").unwrap();
    ok(&[
        "sign",
        "--request",
        &d.s("request.http"),
        "--key",
        &d.s("workload.jwk"),
        "--wit",
        &d.s("wit.jwt"),
        "--bind",
        "X-Ctx",
        "--now",
        NOW,
        "-o",
        &d.s("signed.http"),
    ]);
    d
}

fn verify(d: &Dir, request: &Path, extra: &[&str]) -> (bool, Value) {
    let request = request.display().to_string();
    let anchor = format!("spiffe://prod.example={}", d.s("issuer.pub.jwk"));
    let mut args = vec![
        "verify",
        "--request",
        &request,
        "--trust-anchor",
        &anchor,
        "--origin",
        "https://payments.example",
        "--context-token",
        "x-ctx",
    ];
    if !extra.contains(&"--now") {
        args.extend_from_slice(&["--now", NOW]);
    }
    args.extend_from_slice(extra);
    let out = wimse(&args);
    let json: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(json["verified"].as_bool().unwrap(), out.status.success());
    (out.status.success(), json)
}

/// Private keys are written readable by their owner only; public ones as usual.
#[cfg(unix)]
#[test]
fn private_key_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let d = setup("modes", "ES256");
    let mode = |file: &str| std::fs::metadata(d.path(file)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("issuer.jwk"), 0o600);
    assert_eq!(mode("workload.jwk"), 0o600);
    // Written again over an existing file, it stays owner-only.
    ok(&["key", "generate", "-o", &d.s("workload.jwk")]);
    assert_eq!(mode("workload.jwk"), 0o600);
    assert_ne!(mode("issuer.pub.jwk") & 0o044, 0, "public keys are not secret");
}

#[test]
fn round_trip_is_accepted() {
    for alg in ["ES256", "EdDSA", "ES384"] {
        let d = setup(&format!("ok-{alg}"), alg);
        let (accepted, json) = verify(&d, &d.path("signed.http"), &[]);
        assert!(accepted, "{json}");
        assert_eq!(json["caller"]["id"], "spiffe://prod.example/orders");
        assert_eq!(json["caller"]["txn_token_bound"], true);
        assert_eq!(json["caller"]["context_tokens_bound"][0], "x-ctx");
        // The body is passed through unchanged.
        assert!(std::fs::read_to_string(d.path("signed.http")).unwrap().ends_with("\r\n\r\n{\"amount\":1}"));
    }
}

/// Several requests in one run share one replay store: the same request twice is a replay.
#[test]
fn a_replay_shows_within_one_run() {
    let d = setup("replay", "ES256");
    let signed = d.s("signed.http");
    let anchor = format!("spiffe://prod.example={}", d.s("issuer.pub.jwk"));
    let args = [
        "verify",
        "--request",
        &signed,
        "--request",
        &signed,
        "--trust-anchor",
        &anchor,
        "--origin",
        "https://payments.example",
        "--context-token",
        "x-ctx",
        "--now",
        NOW,
    ];
    let out = wimse(&args);
    assert_eq!(out.status.code(), Some(1), "one of them was refused");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["verified"], true, "{json}");
    assert_eq!((json[1]["verified"].as_bool(), json[1]["reason"].as_str()), (Some(false), Some("replayed_proof")));
}

fn rejected_with(d: &Dir, request: &Path, extra: &[&str], reason: &str) {
    let (accepted, json) = verify(d, request, extra);
    assert!(!accepted, "accepted: {json}");
    assert_eq!(json["reason"], reason, "{json}");
}

/// Replaces `from` with `to` once in the signed request and writes it to `file`.
fn tampered(d: &Dir, from: &str, to: &str, file: &str) -> PathBuf {
    let text = std::fs::read_to_string(d.path("signed.http")).unwrap();
    assert!(text.contains(from), "{from} not in request");
    std::fs::write(d.path(file), text.replacen(from, to, 1)).unwrap();
    d.path(file)
}

#[test]
fn tampering_with_any_token_is_rejected() {
    let d = setup("tamper", "ES256");
    let signed = std::fs::read_to_string(d.path("signed.http")).unwrap();
    let wit = std::fs::read_to_string(d.path("wit.jwt")).unwrap().trim().to_owned();
    let wpt = signed.lines().find_map(|l| l.strip_prefix("Authorization: WPT ")).unwrap().trim().to_owned();

    // A changed WIT signature or payload.
    let flip = |token: &str, part: usize| {
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let first = parts[part].remove(4);
        parts[part].insert(4, if first == 'A' { 'B' } else { 'A' });
        parts.join(".")
    };
    rejected_with(&d, &tampered(&d, &wit, &flip(&wit, 2), "t1.http"), &[], "invalid_wit_signature");
    let bad_payload = tampered(&d, &wit, &flip(&wit, 1), "t2.http");
    let (accepted, json) = verify(&d, &bad_payload, &[]);
    assert!(!accepted, "{json}");
    rejected_with(&d, &tampered(&d, &wpt, &flip(&wpt, 2), "t3.http"), &[], "invalid_wpt_signature");
    rejected_with(
        &d,
        &tampered(&d, "Txn-Token: txn-1", "Txn-Token: txn-2", "t4.http"),
        &[],
        "txn_token_binding_mismatch",
    );
    rejected_with(&d, &tampered(&d, "X-Ctx: ctx-1", "X-Ctx: ctx-2", "t5.http"), &[], "other_token_binding_mismatch");
    rejected_with(&d, &tampered(&d, "POST /charge", "POST /refund", "t6.http"), &[], "audience_mismatch");
    rejected_with(&d, &d.path("signed.http"), &["--now", "1800000400"], "expired_wpt");
    rejected_with(&d, &d.path("request.http"), &[], "missing_wit");
}

#[test]
fn untrusted_issuer_is_rejected() {
    let d = setup("untrusted", "ES256");
    ok(&["key", "generate", "--kid", "issuer-1", "-o", &d.s("other.jwk")]);
    ok(&["key", "public", "--key", &d.s("other.jwk"), "-o", &d.s("issuer.pub.jwk")]);
    rejected_with(&d, &d.path("signed.http"), &[], "invalid_wit_signature");
    let out = wimse(&[
        "verify",
        "--request",
        &d.s("signed.http"),
        "--trust-anchor",
        &format!("spiffe://other.example={}", d.s("issuer.pub.jwk")),
        "--origin",
        "https://payments.example",
        "--now",
        NOW,
    ]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["reason"], "untrusted_trust_domain");
    assert_eq!(json["status"], 401);
}

#[test]
fn wpt_new_and_stdin_request() {
    let d = setup("wptnew", "EdDSA");
    let wpt = ok(&[
        "wpt",
        "new",
        "--key",
        &d.s("workload.jwk"),
        "--wit",
        &d.s("wit.jwt"),
        "--aud",
        "urn:svc:payments",
        "--now",
        NOW,
    ]);
    let wit = std::fs::read_to_string(d.path("wit.jwt")).unwrap();
    let request = format!(
        "GET /x HTTP/1.1\nHost: h\nWorkload-Identity-Token: {}\nAuthorization: WPT {}\n\n",
        wit.trim(),
        wpt.trim()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_wimse"))
        .args([
            "verify",
            "--request",
            "-",
            "--trust-anchor",
            &format!("spiffe://prod.example={}", d.s("issuer.pub.jwk")),
            "--audience",
            "urn:svc:payments",
            "--now",
            NOW,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), request.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn inspect_explains_without_verifying() {
    let d = setup("inspect", "ES256");
    let out: Value = serde_json::from_str(&ok(&["inspect", &d.s("wit.jwt"), "--now", NOW])).unwrap();
    assert_eq!(out["kind"], "WIT");
    assert_eq!(out["verified"], false);
    assert_eq!(out["claims"]["sub"], "spiffe://prod.example/orders");
    let bad = wimse(&["inspect", "not-a-token"]);
    assert!(!bad.status.success());
    let json: Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(json["error"], "malformed_token");
}

#[test]
fn usage_errors_exit_2() {
    let d = setup("usage", "ES256");
    let out =
        wimse(&["sign", "--request", &d.s("signed.http"), "--key", &d.s("workload.jwk"), "--wit", &d.s("wit.jwt")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Authorization"));
    let out = wimse(&["verify", "--request", &d.s("signed.http"), "--trust-anchor", "prod.example=x"]);
    assert_eq!(out.status.code(), Some(2));
    // A configuration the verifier refuses is reported as JSON like any other failure.
    let anchor = format!("spiffe://prod.example={}", d.s("issuer.pub.jwk"));
    let out = wimse(&["verify", "--request", &d.s("signed.http"), "--trust-anchor", &anchor]);
    assert_eq!(out.status.code(), Some(2));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((json["verified"].as_bool(), json["reason"].as_str()), (Some(false), Some("invalid_configuration")));
    assert!(json["message"].as_str().unwrap().contains("--audience or --origin"), "{json}");
    let out = wimse(&["key", "generate", "--alg", "HS256"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn http_signature_round_trip_and_signed_response() {
    let d = setup("httpsig", "ES256");
    ok(&[
        "sign",
        "--mode",
        "httpsig",
        "--sign-response",
        "--request",
        &d.s("request.http"),
        "--key",
        &d.s("workload.jwk"),
        "--wit",
        &d.s("wit.jwt"),
        "--now",
        NOW,
        "-o",
        &d.s("sig.http"),
    ]);
    let signed = std::fs::read_to_string(d.path("sig.http")).unwrap();
    assert!(signed.contains("Signature-Input: wimse=(\"@method\" \"@path\" \"@query\""), "{signed}");
    assert!(signed.contains("Content-Digest: sha-256=:"));
    assert!(signed.contains("Content-Length: 12\r\n"), "{signed}");
    // A trailing newline after the body (an editor's) is not part of it: Content-Length frames it.
    std::fs::write(d.path("sig-newline.http"), format!("{signed}\n")).unwrap();
    let (accepted, json) = verify(&d, &d.path("sig-newline.http"), &[]);
    assert!(accepted, "{json}");
    // A component the signature does not cover, when required, and a signature too old.
    rejected_with(&d, &d.path("sig.http"), &["--require-component", "x-request-id"], "missing_required_component");
    let later = (NOW.parse::<u64>().unwrap() + 30).to_string();
    rejected_with(&d, &d.path("sig.http"), &["--max-age", "10", "--now", &later, "--leeway", "0"], "too_old");
    let (accepted, json) = verify(&d, &d.path("sig.http"), &[]);
    assert!(accepted, "{json}");
    assert_eq!(json["caller"]["method"], "http-signature");
    assert_eq!(json["caller"]["signed_response_requested"], true);
    rejected_with(
        &d,
        &tampered_file(&d, "sig.http", "{\"amount\":1}", "{\"amount\":9}", "s1.http"),
        &[],
        "content_digest_mismatch",
    );
    rejected_with(
        &d,
        &tampered_file(&d, "sig.http", "POST /charge?id=7", "POST /charge?id=8", "s2.http"),
        &[],
        "invalid_signature",
    );
    rejected_with(
        &d,
        &tampered_file(&d, "sig.http", "POST /charge", "PUT /charge", "s3.http"),
        &[],
        "invalid_signature",
    );

    // The server (another workload of the same trust domain) signs its response.
    ok(&["key", "generate", "-o", &d.s("server.jwk")]);
    ok(&[
        "wit",
        "issue",
        "--issuer-key",
        &d.s("issuer.jwk"),
        "--sub",
        "spiffe://prod.example/payments",
        "--workload-key",
        &d.s("server.jwk"),
        "--now",
        NOW,
        "-o",
        &d.s("server.wit"),
    ]);
    let server_key = wimse_core::jose::SigningKey::from_jwk(
        &wimse_core::jose::Jwk::from_json(&std::fs::read_to_string(d.path("server.jwk")).unwrap()).unwrap(),
    )
    .unwrap();
    let server_wit = std::fs::read_to_string(d.path("server.wit")).unwrap().trim().to_owned();
    let nonce = signed.split("nonce=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let req_headers = {
        let mut h = http::HeaderMap::new();
        for line in signed.split("\r\n\r\n").next().unwrap().lines().skip(1) {
            let (n, v) = line.split_once(": ").unwrap();
            h.append(http::HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    };
    let req = wimse_core::protocol::httpsig::RequestParts {
        method: "POST",
        scheme: "https",
        authority: "payments.example",
        path: "/charge",
        query: Some("id=7"),
        headers: &req_headers,
    };
    let mut res_headers = http::HeaderMap::new();
    res_headers.insert("content-type", "application/json".parse().unwrap());
    let body = b"{\"charged\":true}";
    let response =
        wimse_core::protocol::httpsig::OutgoingResponse { status: 200, body: Some(body), request_nonce: &nonce };
    wimse_core::protocol::httpsig::sign_response(
        &mut res_headers,
        &response,
        &req,
        &server_wit,
        &server_key,
        &Default::default(),
        NOW.parse().unwrap(),
    )
    .unwrap();
    let mut raw = String::from("HTTP/1.1 200 OK\r\n");
    for (n, v) in &res_headers {
        raw.push_str(&format!("{n}: {}\r\n", v.to_str().unwrap()));
    }
    raw.push_str("\r\n{\"charged\":true}");
    std::fs::write(d.path("response.http"), &raw).unwrap();
    let anchor = format!("spiffe://prod.example={}", d.s("issuer.pub.jwk"));
    let signed_request = d.s("sig.http");
    let check = |response: &str, extra: &[&str]| {
        let mut args = vec![
            "verify-response",
            "--request",
            &signed_request,
            "--response",
            response,
            "--trust-anchor",
            &anchor,
            "--now",
            NOW,
        ];
        args.extend_from_slice(extra);
        let out = wimse(&args);
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["verified"].as_bool().unwrap(), out.status.success());
        json
    };
    let json = check(&d.s("response.http"), &["--expect-server", "spiffe://prod.example/payments"]);
    assert_eq!(json["verified"], true, "{json}");
    assert_eq!(json["server"], "spiffe://prod.example/payments");
    assert_eq!(
        check(&d.s("response.http"), &["--expect-server", "spiffe://prod.example/other"])["reason"],
        "unexpected_peer"
    );
    std::fs::write(d.path("r2.http"), raw.replace("HTTP/1.1 200 OK", "HTTP/1.1 201 Created")).unwrap();
    assert_eq!(check(&d.s("r2.http"), &[])["reason"], "invalid_signature");
    std::fs::write(d.path("r3.http"), raw.replace("{\"charged\":true}", "{\"charged\":false}")).unwrap();
    assert_eq!(check(&d.s("r3.http"), &[])["reason"], "content_digest_mismatch");

    // Two CLIs can exchange signed responses: `sign-response` signs what `verify-response` checks.
    std::fs::write(d.path("plain.http"), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npaid").unwrap();
    ok(&[
        "sign-response",
        "--request",
        &signed_request,
        "--response",
        &d.s("plain.http"),
        "--key",
        &d.s("server.jwk"),
        "--wit",
        &d.s("server.wit"),
        "--now",
        NOW,
        "-o",
        &d.s("cli-response.http"),
    ]);
    let signed_response = std::fs::read_to_string(d.path("cli-response.http")).unwrap();
    assert!(signed_response.contains("wimse-req-nonce=") && signed_response.contains("Content-Length: 4\r\n"));
    let json = check(&d.s("cli-response.http"), &["--expect-server", "spiffe://prod.example/payments"]);
    assert_eq!(json["verified"], true, "{json}");
    // With the nonce given on the command line, the request file need not carry its signature.
    let bare_request = d.path("bare-request.http");
    std::fs::write(&bare_request, "POST /charge?id=7 HTTP/1.1\r\nHost: payments.example\r\n\r\n").unwrap();
    let out = wimse(&[
        "verify-response",
        "--request",
        &bare_request.display().to_string(),
        "--response",
        &d.s("cli-response.http"),
        "--trust-anchor",
        &anchor,
        "--nonce",
        &nonce,
        "--now",
        NOW,
    ]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["verified"], true, "{json}");
    let wrong = wimse(&[
        "verify-response",
        "--request",
        &bare_request.display().to_string(),
        "--response",
        &d.s("cli-response.http"),
        "--trust-anchor",
        &anchor,
        "--nonce",
        "bm90LXRoZS1ub25jZQ",
        "--now",
        NOW,
    ]);
    let json: Value = serde_json::from_slice(&wrong.stdout).unwrap();
    assert_eq!(json["reason"], "request_nonce_mismatch", "{json}");
}

fn tampered_file(d: &Dir, source: &str, from: &str, to: &str, file: &str) -> PathBuf {
    let text = std::fs::read_to_string(d.path(source)).unwrap();
    assert!(text.contains(from), "{from} not in {source}");
    std::fs::write(d.path(file), text.replacen(from, to, 1)).unwrap();
    d.path(file)
}

#[test]
fn workload_identity_certificates() {
    let d = Dir::new("wic");
    let anchor = |domain: &str, file: &str| format!("{domain}={}", d.s(file));
    ok(&[
        "wic",
        "ca",
        "--trust-domain",
        "spiffe://prod.example",
        "--now",
        NOW,
        "--out-cert",
        &d.s("ca.pem"),
        "--out-key",
        &d.s("ca.key"),
    ]);
    ok(&[
        "wic",
        "ca",
        "--trust-domain",
        "spiffe://other.example",
        "--now",
        NOW,
        "--out-cert",
        &d.s("other.pem"),
        "--out-key",
        &d.s("other.key"),
    ]);
    let issue = |sub: &str, usage: &str, out: &str, extra: &[&str]| {
        let (cert, key) = (d.s(&format!("{out}.pem")), d.s(&format!("{out}.key")));
        let (ca_cert, ca_key) = (d.s("ca.pem"), d.s("ca.key"));
        let mut args = vec![
            "wic",
            "issue",
            "--ca-cert",
            &ca_cert,
            "--ca-key",
            &ca_key,
            "--trust-domain",
            "spiffe://prod.example",
            "--sub",
            sub,
            "--usage",
            usage,
            "--now",
            NOW,
            "--out-cert",
            &cert,
            "--out-key",
            &key,
        ];
        args.extend_from_slice(extra);
        let out = wimse(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    issue("spiffe://prod.example/orders", "client", "orders", &[]);
    issue("spiffe://prod.example/payments", "server", "payments", &["--dns", "payments.internal", "--ip", "127.0.0.1"]);
    let verify = |cert: &str, extra: &[&str]| {
        let prod = anchor("spiffe://prod.example", "ca.pem");
        let mut args = vec!["wic", "verify", "--cert", cert, "--trust-anchor", &prod];
        args.extend_from_slice(extra);
        let out = wimse(&args);
        let json: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(json["verified"].as_bool().unwrap(), out.status.success());
        json
    };
    let orders = d.s("orders.pem");
    let payments = d.s("payments.pem");
    let json = verify(&orders, &["--now", NOW, "--expect", "spiffe://prod.example/orders"]);
    assert_eq!(json["id"], "spiffe://prod.example/orders", "{json}");
    let server = ["--usage", "server", "--server-name", "payments.internal", "--now", NOW];
    let expect_payments = ["--expect", "spiffe://prod.example/payments"];
    assert_eq!(verify(&payments, &[&server[..], &expect_payments[..]].concat())["verified"], true);
    // A server certificate is checked against the workload expected for the name.
    let json = verify(&payments, &server);
    assert_eq!(json["reason"], "invalid_configuration", "--expect is required: {json}");
    assert_eq!(verify(&payments, &[&server[..], &["--any-workload"][..]].concat())["verified"], true);
    let json = verify(&payments, &[&server[..], &["--expect", "spiffe://prod.example/billing"][..]].concat());
    assert_eq!(json["reason"], "unexpected_peer", "{json}");
    // Wrong EKU, wrong server name, expired, unexpected identity. The certificate checks
    // rustls makes share one reason; its message names the check.
    let refused = |json: Value, check: &str| {
        assert_eq!((json["verified"].as_bool(), json["reason"].as_str()), (Some(false), Some("certificate_refused")));
        let message = json["message"].as_str().unwrap();
        assert!(message.contains(check), "{check:?} not in {message:?}");
    };
    refused(
        verify(&payments, &["--usage", "client", "--now", NOW]),
        "does not allow extended key usage for client authentication",
    );
    refused(
        verify(&payments, &["--usage", "server", "--server-name", "billing.internal", "--now", NOW, "--any-workload"]),
        "certificate not valid for name \"billing.internal\"",
    );
    refused(verify(&orders, &["--now", "1800007200"]), "certificate expired: verification time 1800007200");
    assert_eq!(verify(&orders, &["--now", NOW, "--expect", "spiffe://prod.example/x"])["reason"], "unexpected_peer");
    // Only other.example's CA trusted: prod.example is not a trusted trust domain.
    let out = wimse(&[
        "wic",
        "verify",
        "--cert",
        &orders,
        "--trust-anchor",
        &anchor("spiffe://other.example", "other.pem"),
        "--now",
        NOW,
    ]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["reason"], "untrusted_trust_domain");
}

#[test]
fn issuer_serve_refuses_bad_configuration_and_serves_bundles() {
    let d = Dir::new("issuer");
    let ci_key = wimse_core::jose::SigningKey::generate(wimse_core::jose::Algorithm::ES256).unwrap().with_kid("ci");
    let config = serde_json::json!({
        "exchange": [{"name": "ci", "kind": "jwt", "issuer": "https://ci.example", "audience": "wimse", "jwks": {"keys": [ci_key.public_jwk()]},
                      "subject_template": "spiffe://prod.example/ci/{sub}", "max_lifetime": 300}],
        "trust_domain": "spiffe://prod.example",
        "key_store": d.path("keys.json"),
        "dev_mode": true,
        "clients": [{"name": "dev", "dev_secret": "0123456789abcdef0123", "allowed": ["spiffe://prod.example/dev"], "max_lifetime": 600}]
    });
    let mut bad = config.clone();
    bad["clients"][0]["allowed"][0] = "spiffe://other.example/dev".into();
    std::fs::write(d.path("bad.json"), bad.to_string()).unwrap();
    let out = wimse(&["issuer", "serve", "--config", &d.s("bad.json"), "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("clients[0].allowed[0]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::fs::write(d.path("good.json"), config.to_string()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wimse"))
        .args(["issuer", "serve", "--config", &d.s("good.json"), "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let base = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{line}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (bundle, issued) = runtime.block_on(async {
        let bundle: Value =
            reqwest::get(format!("{base}/v1/bundle/spiffe")).await.unwrap().text().await.unwrap().parse().unwrap();
        let key = wimse_core::jose::SigningKey::generate(wimse_core::jose::Algorithm::EdDSA).unwrap();
        let body = serde_json::json!({"sub": "spiffe://prod.example/dev", "jwk": key.public_jwk()});
        let response = reqwest::Client::new()
            .post(format!("{base}/v1/wit"))
            .bearer_auth("0123456789abcdef0123")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (bundle, response.status().as_u16())
    });
    // `wimse bundle fetch` writes a checked bundle usable as a trust anchor.
    ok(&["bundle", "fetch", "--url", &format!("{base}/v1/bundle/spiffe"), "-o", &d.s("bundle.json")]);
    let fetched: Value = serde_json::from_str(&std::fs::read_to_string(d.path("bundle.json")).unwrap()).unwrap();
    assert_eq!(fetched["keys"], bundle["keys"]);
    // `wimse token exchange` with no exchange profile configured is refused.
    ok(&["key", "generate", "-o", &d.s("w.jwk")]);
    std::fs::write(d.path("subject.jwt"), "a.b.c").unwrap();
    let refused = wimse(&[
        "token",
        "exchange",
        "--issuer",
        &base,
        "--subject-token",
        &d.s("subject.jwt"),
        "--key",
        &d.s("w.jwk"),
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("invalid_grant"));
    // And a CI token is exchanged for a WIT.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({"iss": "https://ci.example", "sub": "deploy", "aud": "wimse", "exp": now + 60});
    let ci_token = wimse_core::jose::jws::sign("JWT", Some("ci"), &claims, &ci_key, Default::default()).unwrap();
    std::fs::write(d.path("ci.jwt"), ci_token).unwrap();
    ok(&[
        "token",
        "exchange",
        "--issuer",
        &base,
        "--subject-token",
        &d.s("ci.jwt"),
        "--key",
        &d.s("w.jwk"),
        "-o",
        &d.s("ci.wit"),
    ]);
    let inspected: Value = serde_json::from_str(&ok(&["inspect", &d.s("ci.wit")])).unwrap();
    assert_eq!(inspected["claims"]["sub"], "spiffe://prod.example/ci/deploy");
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(bundle["keys"].as_array().unwrap().len(), 1);
    assert_eq!(issued, 200);
    assert!(d.path("keys.json").exists(), "the key store was written");
}

/// The verifier from a settings file (TOML) and `WIMSE_*` variables instead of options.
#[test]
fn verify_reads_settings_and_the_environment() {
    let d = setup("settings", "ES256");
    let settings = format!(
        "[verifier]\ncontext_tokens = [\"x-ctx\"]\n\n[[verifier.trust]]\ntrust_domain = \"spiffe://prod.example\"\nfile = \"{}\"\n",
        d.s("issuer.pub.jwk")
    );
    std::fs::write(d.path("verifier.toml"), settings).unwrap();
    let run = |origin: &str| {
        Command::new(env!("CARGO_BIN_EXE_wimse"))
            .args(["verify", "--request", &d.s("signed.http"), "--config", &d.s("verifier.toml"), "--now", NOW])
            .env("WIMSE_ORIGINS", origin)
            .output()
            .unwrap()
    };
    let out = run("https://payments.example");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["caller"]["id"], "spiffe://prod.example/orders");
    // The environment decides the origin: another one refuses the request.
    let out = run("https://elsewhere.example");
    assert_eq!(out.status.code(), Some(1));
    // A bad settings file is a configuration error naming the file and field (exit 2).
    std::fs::write(d.path("bad.toml"), "[verifier]\naudiances = [\"x\"]\n").unwrap();
    let out = wimse(&["verify", "--request", &d.s("signed.http"), "--config", &d.s("bad.toml")]);
    assert_eq!(out.status.code(), Some(2));
    let shown = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(shown.contains("bad.toml") && shown.contains("audiances"), "{shown}");
}

/// `wimse verify --config` reads a settings file as a service does: a relative trust file is
/// relative to the settings file, wherever the command runs, and a `bundle_url` entry is fetched
/// from the identity server.
#[test]
fn verify_settings_follow_their_file_and_bundle_urls() {
    let d = setup("settings-sources", "ES256");
    std::fs::create_dir_all(d.path("conf/trust")).unwrap();
    std::fs::copy(d.path("issuer.pub.jwk"), d.path("conf/trust/issuer.pub.jwk")).unwrap();
    let relative = "[verifier]\norigins = [\"https://payments.example\"]\ncontext_tokens = [\"x-ctx\"]\n\n[[verifier.trust]]\ntrust_domain = \"spiffe://prod.example\"\nfile = \"trust/issuer.pub.jwk\"\n";
    std::fs::write(d.path("conf/service.toml"), relative).unwrap();
    let run = |config: &str| {
        Command::new(env!("CARGO_BIN_EXE_wimse"))
            .args(["verify", "--request", &d.s("signed.http"), "--config", config, "--now", NOW])
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap()
    };
    let out = run(&d.s("conf/service.toml"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // The identity server's bundle, served on loopback.
    let mut jwk: Value = serde_json::from_str(&std::fs::read_to_string(d.path("issuer.pub.jwk")).unwrap()).unwrap();
    jwk["use"] = "wit-svid".into();
    let bundle = serde_json::json!({"keys": [jwk], "spiffe_sequence": 1}).to_string();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}/v1/bundle/spiffe", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/v1/bundle/spiffe", axum::routing::get(move || async move { bundle }));
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
    let followed = format!(
        "[verifier]\norigins = [\"https://payments.example\"]\ncontext_tokens = [\"x-ctx\"]\n\n[[verifier.trust]]\ntrust_domain = \"spiffe://prod.example\"\nbundle_url = \"{url}\"\n"
    );
    std::fs::write(d.path("followed.toml"), followed).unwrap();
    let out = run(&d.s("followed.toml"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["caller"]["id"], "spiffe://prod.example/orders");
    // A bundle URL that does not answer is a configuration error naming the entry (exit 2).
    let port = wimse_testkit::servers::free_port();
    std::fs::write(
        d.path("down.toml"),
        format!(
            "[[verifier.trust]]\ntrust_domain = \"spiffe://prod.example\"\nbundle_url = \"http://127.0.0.1:{port}/b\"\n"
        ),
    )
    .unwrap();
    let out = run(&d.s("down.toml"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("verifier.trust[0].bundle_url"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
