//! `wimse agent serve` with a configuration mistake exits at start, with the code and message
//! the README's agent section documents: 3 without a token, 4 when the identity server refuses
//! the token, 5 when it refuses every identity. An identity server that is down at start is
//! not a mistake: the agent serves and waits for it. A real identity server answers each.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;
use wimse_testkit::servers::TempDir;

const DOMAIN: &str = "spiffe://prod.example";
const SECRET: &str = "node-agent-dev-secret-0123456789";

/// An identity server on loopback whose one client, the agent, may obtain what is under
/// `{DOMAIN}/ns`. Returns its base URL.
async fn identity_server(dir: &Path) -> String {
    let config: wimse_issuer::IssuerConfig = serde_json::from_value(json!({
        "trust_domain": DOMAIN, "key_store": dir.join("keys.json"), "dev_mode": true,
        "clients": [{"name": "node-agent", "dev_secret": SECRET, "allowed_prefixes": [format!("{DOMAIN}/ns")], "max_lifetime": 600}]
    }))
    .unwrap();
    let server = Arc::new(wimse_issuer::IdentityServer::open(config, wimse_core::time::SystemClock).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, wimse_issuer::router(server)).await });
    base
}

/// Writes the agent's configuration (`issuer` fields besides the URL, identities by path) to
/// `dir/agent.json`.
fn write_config(dir: &Path, url: &str, issuer: Value, paths: &[&str]) -> std::path::PathBuf {
    let mut connection = json!({"url": url, "timeout_ms": 2000});
    connection.as_object_mut().unwrap().extend(issuer.as_object().unwrap().clone());
    let entries: Vec<Value> =
        paths.iter().map(|p| json!({"spiffe_id": format!("{DOMAIN}{p}"), "selectors": {"uid": 64123}})).collect();
    let config = json!({"socket": dir.join("agent.sock"), "trust_domain": DOMAIN, "x509": false,
                        "issuer": connection, "entries": entries});
    let path = dir.join("agent.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

/// Runs `wimse agent serve --config <config>` (with `env`) to its end: exit code and the last
/// line of standard error (the log lines before it are the agent's).
async fn serve_fails(config: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_wimse"))
            .args(["agent", "serve", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            // An agent that does not exit (the failure this tests for) is not left running.
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the agent exits at start")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let last = stderr.lines().last().unwrap_or_default().to_owned();
    (output.status.code().unwrap_or(-1), last, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_exits_3() {
    let dir = TempDir::new("wimse-agent-cli-no-token");
    let base = identity_server(dir.path()).await;
    let var = "WIMSE_TEST_AGENT_CLI_TOKEN";

    let config = write_config(dir.path(), &base, json!({"token_env": var}), &["/ns/a"]);
    let (code, last, stderr) = serve_fails(&config, &[]).await;
    assert_eq!(code, 3, "{stderr}");
    assert_eq!(
        last,
        format!("wimse: no token for the identity server: issuer.token_env names {var}, which is not set")
    );

    let (code, last, stderr) = serve_fails(&config, &[(var, "")]).await;
    assert_eq!(code, 3, "{stderr}");
    assert_eq!(last, format!("wimse: no token for the identity server: issuer.token_env names {var}, which is empty"));

    let missing = dir.path().join("no-such-token");
    let config = write_config(dir.path(), &base, json!({"token_file": missing}), &["/ns/a"]);
    let (code, last, stderr) = serve_fails(&config, &[]).await;
    assert_eq!(code, 3, "{stderr}");
    assert_eq!(
        last,
        format!(
            "wimse: no token for the identity server: issuer.token_file {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
    // Nothing was asked of the identity server, and nothing was served.
    assert!(!stderr.contains("identity server failed"), "{stderr}");
    assert!(!dir.path().join("agent.sock").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_exits_4() {
    let dir = TempDir::new("wimse-agent-cli-wrong-secret");
    let base = identity_server(dir.path()).await;
    let var = "WIMSE_TEST_AGENT_CLI_TOKEN";
    let config = write_config(dir.path(), &base, json!({"token_env": var}), &["/ns/a", "/ns/b"]);
    let (code, last, stderr) = serve_fails(&config, &[(var, "a-wrong-secret-0123456789abcdef")]).await;
    assert_eq!(code, 4, "{stderr}");
    assert_eq!(
        last,
        format!(
            "wimse: the identity server at {base} refuses the agent's token (the identity server answered 401 Unauthorized (bootstrap_token_invalid)): check the token in issuer.token_env ({var}) against the identity server's client entry for the agent"
        )
    );
    assert!(!stderr.contains("identity server failed"), "not an outage: {stderr}");
    assert!(!dir.path().join("agent.sock").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_identity_refused_exits_5() {
    let dir = TempDir::new("wimse-agent-cli-refused");
    let base = identity_server(dir.path()).await;
    let token = dir.path().join("token");
    std::fs::write(&token, SECRET).unwrap();
    let config = write_config(dir.path(), &base, json!({"token_file": token}), &["/other/a", "/other/b"]);
    let (code, last, stderr) = serve_fails(&config, &[]).await;
    assert_eq!(code, 5, "{stderr}");
    let answer = "the identity server answered 403 Forbidden (issuance_denied)";
    let (a, b) = (format!("WIT of {DOMAIN}/other/a: {answer}"), format!("WIT of {DOMAIN}/other/b: {answer}"));
    // In the order the first answers came.
    let either = |first: &str, second: &str| {
        format!(
            "wimse: the identity server at {base} refuses every identity of the entries ({first}; {second}): its client entry for the agent must allow them (allowed, allowed_prefixes; allowed_dns_names for their dns_names)"
        )
    };
    assert!(last == either(&a, &b) || last == either(&b, &a), "{last}");
    assert!(!stderr.contains("identity server failed"), "not an outage: {stderr}");
}

/// The neighbours: an identity server that is down at start, and one identity granted among
/// refused ones, are not mistakes that stop the agent: it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_or_a_partial_refusal_at_start_serves() {
    let dir = TempDir::new("wimse-agent-cli-serves");
    let base = identity_server(dir.path()).await;
    let token = dir.path().join("token");
    std::fs::write(&token, SECRET).unwrap();
    let nobody = format!("http://127.0.0.1:{}", wimse_testkit::servers::free_port());
    for (url, paths) in [(nobody.as_str(), &["/ns/a"][..]), (base.as_str(), &["/ns/a", "/other/b"][..])] {
        let config = write_config(dir.path(), url, json!({"token_file": token}), paths);
        let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_wimse"))
            .args(["agent", "serve", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdout = tokio::io::BufReader::new(agent.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), stdout.next_line()).await.unwrap().unwrap();
        assert_eq!(
            line.as_deref(),
            Some(
                format!("wimse agent serving the Workload API on unix://{}", dir.path().join("agent.sock").display())
                    .as_str()
            ),
            "{url} {paths:?}"
        );
        assert!(agent.try_wait().unwrap().is_none(), "still running");
        agent.kill().await.unwrap();
    }
}

#[test]
fn validate_checks_a_file_without_starting() {
    let dir = TempDir::new("wimse-agent-validate");
    let path = write_config(dir.path(), "http://127.0.0.1:9", json!({"token_env": "WIMSE_AGENT_TOKEN"}), &["/ns/a"]);
    let run = |path: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wimse"))
            .args(["agent", "validate", "--config"])
            .arg(path)
            .output()
            .unwrap()
    };
    let out = run(&path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("agent.sock").exists(), "nothing was started");
    // An entry outside the trust domain.
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["entries"][0]["spiffe_id"] = json!("spiffe://other.example/ns/a");
    std::fs::write(&path, config.to_string()).unwrap();
    let out = run(&path);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("entries[0]"), "{}", String::from_utf8_lossy(&out.stderr));
}
