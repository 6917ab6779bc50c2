//! `wimse issuer serve` under an operator's signals: SIGTERM lets an issuance in flight finish
//! and exits 0; SIGHUP applies a changed configuration and refuses a broken one while serving
//! on; `wimse issuer validate` checks a file without starting.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use crate::common::{IssuerProcess, SECRET, SUB, time_until};
use serde_json::json;
use wimse_core::jose::{Algorithm, SigningKey};
use wimse_testkit::servers::TempDir;

const OTHER: &str = "spiffe://prod.example/other";

fn write_config(dir: &TempDir, allowed: &[&str]) -> std::path::PathBuf {
    let config = json!({
        "trust_domain": "spiffe://prod.example",
        "key_store": dir.path().join("keys.json"),
        "dev_mode": true,
        "clients": [{"name": "demo", "dev_secret": SECRET, "allowed": allowed, "max_lifetime": 3600}]
    });
    let path = dir.path().join("issuer.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

fn wit_request(sub: &str) -> String {
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    json!({"sub": sub, "jwk": key.public_jwk()}).to_string()
}

async fn issue(issuer: &IssuerProcess, sub: &str) -> u16 {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/wit", issuer.base()))
        .bearer_auth(SECRET)
        .header("content-type", "application/json")
        .body(wit_request(sub))
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

#[test]
fn sigterm_lets_an_issuance_in_flight_finish_and_exits_0() {
    let dir = TempDir::new("wimse-lifecycle-term");
    let mut issuer = IssuerProcess::start(&write_config(&dir, &[SUB]), &dir.path().join("issuer.log"));
    // An issuance whose body is still arriving when SIGTERM comes.
    let body = wit_request(SUB);
    let address = issuer.base().trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    let head = format!(
        "POST /v1/wit HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {SECRET}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let (first, rest) = body.split_at(body.len() / 2);
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(first.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    issuer.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(rest.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let status = issuer.wait_exit(Duration::from_secs(10)).expect("it stops");
    assert_eq!(status.code(), Some(0), "{}", issuer.log_text());
    assert!(issuer.log_text().contains("wimse issuer: stopped"), "{}", issuer.log_text());
}

#[tokio::test]
async fn sighup_applies_a_changed_configuration_and_refuses_a_broken_one() {
    let dir = TempDir::new("wimse-lifecycle-hup");
    let path = write_config(&dir, &[SUB]);
    let issuer = IssuerProcess::start(&path, &dir.path().join("issuer.log"));
    assert_eq!(issue(&issuer, SUB).await, 200);
    assert_eq!(issue(&issuer, OTHER).await, 403);
    // The client may now obtain OTHER too.
    write_config(&dir, &[SUB, OTHER]);
    issuer.signal("HUP");
    let mut allowed = false;
    for _ in 0..50 {
        if issue(&issuer, OTHER).await == 200 {
            allowed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(allowed, "{}", issuer.log_text());
    // A broken file: refused, said so, and the running configuration serves on.
    std::fs::write(&path, "{\"trust_domain\": 7}").unwrap();
    issuer.signal("HUP");
    let said = time_until(Duration::from_secs(5), || issuer.log_text().contains("new configuration refused")).await;
    assert!(said.is_some(), "{}", issuer.log_text());
    assert_eq!(issue(&issuer, OTHER).await, 200);
}

#[test]
fn validate_checks_a_file_without_starting() {
    let dir = TempDir::new("wimse-lifecycle-validate");
    let path = write_config(&dir, &[SUB]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wimse"))
        .args(["issuer", "validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("keys.json").exists(), "nothing was started");
    std::fs::write(
        &path,
        json!({"trust_domain": "not a trust domain", "key_store": "k.json", "clients": []}).to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wimse"))
        .args(["issuer", "validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("trust_domain"), "{}", String::from_utf8_lossy(&out.stderr));
}
