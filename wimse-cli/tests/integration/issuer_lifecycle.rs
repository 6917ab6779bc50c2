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
    // The start and the reload say which replica, storage and configuration serve.
    let log = issuer.log_text();
    assert!(log.contains("summary=replica ") && log.contains("storage file ") && log.contains("1 clients"), "{log}");
    assert!(log.contains("configuration reloaded"), "{log}");
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

/// A Python with `prometheus_client`: `WIMSE_OAUTH_PYTHON` (CI installs it there), else
/// `python3`; `None` after `skipped: python prometheus_client not found` (a failure with
/// `WIMSE_REQUIRE_PYTHON_PROMETHEUS=1`).
fn prometheus_python() -> Option<String> {
    let python = std::env::var("WIMSE_OAUTH_PYTHON").unwrap_or_else(|_| "python3".into());
    let found = std::process::Command::new(&python)
        .args(["-c", "import prometheus_client.parser"])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some(python);
    }
    assert!(!wimse_testkit::servers::required("PYTHON_PROMETHEUS"), "{python} cannot import prometheus_client");
    wimse_testkit::servers::skipped("python prometheus_client not found");
    None
}

#[tokio::test]
async fn metrics_parse_and_move_and_readiness_follows_the_database() {
    use base64::Engine as _;
    let Some(mut postgres) = wimse_testkit::servers::PostgresServer::start() else { return };
    let dir = TempDir::new("wimse-lifecycle-metrics");
    let config = dir.path().join("issuer.json");
    std::fs::write(
        &config,
        json!({
            "trust_domain": "spiffe://prod.example",
            "postgres": {"url": postgres.url(), "timeout_ms": 1000},
            "dev_mode": true,
            "clients": [{"name": "demo", "dev_secret": SECRET, "allowed": [SUB], "max_lifetime": 3600}]
        })
        .to_string(),
    )
    .unwrap();
    let kek = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let ops = format!("127.0.0.1:{}", wimse_testkit::servers::free_port());
    let issuer = IssuerProcess::start_with_args(
        &config,
        &dir.path().join("issuer.log"),
        vec![("WIMSE_ISSUER_KEK".into(), kek)],
        wimse_testkit::servers::free_port(),
        vec!["--metrics-listen".into(), ops.clone()],
    );
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let status = |path: &'static str| {
        let (http, url) = (http.clone(), format!("http://{ops}{path}"));
        async move { http.get(url).send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    assert_eq!(status("/healthz").await, 200);
    let mut ready = false;
    for _ in 0..50 {
        if status("/readyz").await == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "{}", issuer.log_text());

    // An issuance moves the counters.
    assert_eq!(issue(&issuer, SUB).await, 200);
    assert_eq!(issue(&issuer, OTHER).await, 403);
    let text = http.get(format!("http://{ops}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"wimse_issuer_requests_total{endpoint="/v1/wit",status="200"} 1"#), "{text}");
    assert!(text.contains(r#"wimse_issuer_requests_total{endpoint="/v1/wit",status="403"} 1"#), "{text}");
    // A parser nobody here wrote reads the exposition.
    if let Some(python) = prometheus_python() {
        let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families\n\
                      families = {f.name: f for f in text_string_to_metric_families(sys.stdin.read())}\n\
                      samples = families['wimse_issuer_requests'].samples\n\
                      print(int(sum(s.value for s in samples if s.labels.get('endpoint') == '/v1/wit')))\n";
        let mut child = std::process::Command::new(python)
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    }

    // The database stops: not ready within seconds; back: ready again.
    postgres.stop();
    let down = time_until_async(Duration::from_secs(10), || status("/readyz"), 503).await;
    assert!(down, "{}", issuer.log_text());
    postgres.restart();
    let up = time_until_async(Duration::from_secs(20), || status("/readyz"), 200).await;
    assert!(up, "{}", issuer.log_text());
}

/// Polls `probe` every 100 ms until it answers `want`, for `limit` at most.
async fn time_until_async<F, Fut>(limit: Duration, probe: F, want: u16) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if probe().await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Behind a trusted proxy, one client's failed logins lock out that client only: its address
/// comes from the proxy's `X-Forwarded-For`, not the proxy's own.
#[tokio::test]
async fn behind_a_trusted_proxy_one_clients_failed_logins_lock_out_that_client_only() {
    let dir = TempDir::new("wimse-lifecycle-proxy");
    let path = dir.path().join("issuer.json");
    let config = json!({
        "trust_domain": "spiffe://prod.example",
        "key_store": dir.path().join("keys.json"),
        "dev_mode": true,
        "trusted_proxies": ["127.0.0.1"],
        "clients": [{"name": "demo", "dev_secret": SECRET, "allowed": [SUB], "max_lifetime": 3600}]
    });
    std::fs::write(&path, config.to_string()).unwrap();
    let issuer = IssuerProcess::start(&path, &dir.path().join("issuer.log"));
    let ask = |client: &'static str, secret: &'static str| {
        let url = format!("{}/v1/wit", issuer.base());
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(secret)
                .header("x-forwarded-for", client)
                .header("content-type", "application/json")
                .body(wit_request(SUB))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // A misconfigured workload behind the proxy: wrong secret, again and again.
    let mut locked = false;
    for _ in 0..20 {
        if ask("203.0.113.7", "a-wrong-secret-of-some-length").await == 429 {
            locked = true;
            break;
        }
    }
    assert!(locked, "the failing client is locked out");
    assert_eq!(ask("203.0.113.7", SECRET).await, 429, "even with the right secret, for a while");
    assert_eq!(ask("203.0.113.8", SECRET).await, 200, "another client behind the same proxy is not");
    // Said once, not once per attempt; never with the secret it sent.
    let logged = time_until(Duration::from_secs(5), || issuer.log_text().contains("WIT issued")).await;
    assert!(logged.is_some(), "{}", issuer.log_text());
    let log = issuer.log_text();
    let said = log.lines().filter(|l| l.contains("authentication failed") && l.contains("203.0.113.7")).count();
    assert_eq!(said, 1, "{log}");
    assert!(log.contains("source refused after repeated failed authentications"), "{log}");
    assert!(!log.contains("a-wrong-secret"), "{log}");
}

/// A self-signed certificate for 127.0.0.1 written to `dir/<name>.pem` and `<name>.key.pem`.
fn certificate(dir: &TempDir, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (chain, key) = (dir.path().join(format!("{name}.pem")), dir.path().join(format!("{name}.key.pem")));
    std::fs::write(&chain, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    (chain, key)
}

fn curl(ca: &std::path::Path, url: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(ca)
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_tls_listener_serves_curl_and_follows_a_renewed_certificate() {
    if std::process::Command::new("curl").arg("--version").output().is_err() {
        println!("skipped: curl not found");
        return;
    }
    let dir = TempDir::new("wimse-lifecycle-tls");
    let (chain, key) = certificate(&dir, "first");
    let port = wimse_testkit::servers::free_port();
    let tls = vec!["--tls-cert".into(), chain.display().to_string(), "--tls-key".into(), key.display().to_string()];
    let issuer = IssuerProcess::start_with_args(
        &write_config(&dir, &[SUB]),
        &dir.path().join("issuer.log"),
        Vec::new(),
        port,
        tls,
    );
    let url = format!("https://127.0.0.1:{}/v1/bundle/jwks", issuer.base().rsplit(':').next().unwrap());
    assert_eq!(curl(&chain, &url), "200", "{}", issuer.log_text());
    // The certificate is renewed in place: the next connection presents the new one.
    let (renewed, renewed_key) = certificate(&dir, "second");
    std::thread::sleep(Duration::from_millis(20));
    std::fs::copy(&renewed_key, &key).unwrap();
    std::fs::copy(&renewed, &chain).unwrap();
    // Checked every 2 s, off the handshakes.
    let start = std::time::Instant::now();
    while curl(&renewed, &url) != "200" {
        assert!(start.elapsed() < Duration::from_secs(10), "not renewed:\n{}", issuer.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(issuer.log_text().contains("TLS certificate reloaded"), "{}", issuer.log_text());
}

#[test]
fn plain_http_beyond_loopback_is_refused_unless_asked_for() {
    let dir = TempDir::new("wimse-lifecycle-plain");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wimse"))
        .args(["issuer", "serve", "--listen", "0.0.0.0:0", "--config"])
        .arg(write_config(&dir, &[SUB]))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without TLS"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// With the default refresh hint (maintenance every minute), a key store replaced on purpose
/// still reaches the running issuer within seconds: it stops signing with the dropped keys.
#[tokio::test]
async fn a_replaced_key_store_reaches_a_running_issuer_within_seconds() {
    let dir = TempDir::new("wimse-lifecycle-replace");
    let path = write_config(&dir, &[SUB]);
    let issuer = IssuerProcess::start(&path, &dir.path().join("issuer.log"));
    assert_eq!(issue(&issuer, SUB).await, 200);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wimse"))
        .args(["issuer", "replace-key-store", "--yes", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replaced = std::time::Instant::now();
    let epochs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let new_epoch = epochs["new_epoch"].as_str().unwrap().to_owned();
    let bundle_url = format!("{}/v1/bundle/spiffe", issuer.base());
    let mut followed = false;
    while replaced.elapsed() < Duration::from_secs(5) {
        let bundle = reqwest::get(&bundle_url).await.unwrap().text().await.unwrap();
        if bundle.contains(&new_epoch) {
            followed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(followed, "not followed within 5 s of the replacement:\n{}", issuer.log_text());
}

/// A client whose workloads renew with their WIC: over the TLS listener, a workload holding a
/// client WIC from this identity server obtains its WIT and a new WIC without a bootstrap
/// credential, for its own identifier only; a WIC of a client without `wic_renewal`, or no
/// certificate at all, is not enough; after a replaced key store its WIC no longer connects.
#[tokio::test]
async fn a_workload_renews_with_its_client_wic_over_tls() {
    use base64::Engine as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    const THIRD: &str = "spiffe://prod.example/third";
    let dir = TempDir::new("wimse-lifecycle-wic-renewal");
    let config = json!({
        "trust_domain": "spiffe://prod.example",
        "key_store": dir.path().join("keys.json"),
        "dev_mode": true,
        "clients": [
            {"name": "demo", "dev_secret": SECRET, "allowed": [SUB, OTHER], "max_lifetime": 600, "wic_renewal": true},
            {"name": "plain", "dev_secret": "another-dev-secret-for-plain", "allowed": [THIRD], "max_lifetime": 600}
        ]
    });
    let path = dir.path().join("issuer.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let (chain, key) = certificate(&dir, "listener");
    let tls = vec!["--tls-cert".into(), chain.display().to_string(), "--tls-key".into(), key.display().to_string()];
    let port = wimse_testkit::servers::free_port();
    let issuer = IssuerProcess::start_with_args(&path, &dir.path().join("issuer.log"), Vec::new(), port, tls);
    let base = format!("https://127.0.0.1:{port}");
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&chain).unwrap()).unwrap();
    let https = |identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>| {
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone());
        let config = match identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
            None => builder.with_no_client_auth(),
        };
        reqwest::Client::builder().tls_backend_preconfigured(config).build().unwrap()
    };
    // A client WIC for `sub`, obtained with `secret`.
    let client_wic = async |secret: &str, sub: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let spki =
            base64::engine::general_purpose::STANDARD.encode(rcgen::PublicKeyData::subject_public_key_info(&key));
        let answer = https(None)
            .post(format!("{base}/v1/wic"))
            .bearer_auth(secret)
            .json(&json!({"sub": sub, "spki": spki, "usage": "client"}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        let pem = answer.json::<serde_json::Value>().await.unwrap()["chain_pem"].as_str().unwrap().to_owned();
        let chain = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
        (chain, PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap())
    };
    let ask_wit = async |client: &reqwest::Client, sub: &str| {
        let answer =
            client.post(format!("{base}/v1/wit")).body(wit_request(sub)).header("content-type", "application/json");
        let answer = answer.send().await.unwrap();
        let status = answer.status().as_u16();
        (status, answer.json::<serde_json::Value>().await.unwrap())
    };

    let identity = client_wic(SECRET, SUB).await;
    let renewing = https(Some((identity.0.clone(), identity.1.clone_key())));
    let (status, issued) = ask_wit(&renewing, SUB).await;
    assert_eq!(status, 200, "{issued}\n{}", issuer.log_text());
    assert!(issued["wit"].is_string());
    // Its own identifier only, although the client may obtain OTHER with its bootstrap.
    let (status, refused) = ask_wit(&renewing, OTHER).await;
    assert_eq!((status, refused["reason"].as_str()), (403, Some("issuance_denied")));
    // A new WIC with the old one.
    let key = rcgen::KeyPair::generate().unwrap();
    let spki = base64::engine::general_purpose::STANDARD.encode(rcgen::PublicKeyData::subject_public_key_info(&key));
    let renewed =
        renewing.post(format!("{base}/v1/wic")).json(&json!({"sub": SUB, "spki": spki})).send().await.unwrap();
    assert_eq!(renewed.status(), 200);
    // No certificate and no bearer: nothing.
    let (status, refused) = ask_wit(&https(None), SUB).await;
    assert_eq!((status, refused["reason"].as_str()), (401, Some("bootstrap_token_invalid")));
    // A client without wic_renewal: its workloads' WICs do not renew.
    let third = https(Some(client_wic("another-dev-secret-for-plain", THIRD).await));
    let (status, refused) = ask_wit(&third, THIRD).await;
    assert_eq!((status, refused["reason"].as_str()), (401, Some("bootstrap_token_invalid")));

    // A replaced key store has a new WIC authority: the old WIC stops connecting within seconds.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wimse"))
        .args(["issuer", "replace-key-store", "--yes", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A connection kept open from before: its WIC is verified again for each request, so it
    // stops renewing once the authority changed (no identity: 401).
    let start = std::time::Instant::now();
    loop {
        match renewing
            .post(format!("{base}/v1/wit"))
            .body(wit_request(SUB))
            .header("content-type", "application/json")
            .send()
            .await
        {
            Ok(answer) if answer.status() == 401 => break,
            Ok(answer) => assert_eq!(answer.status(), 200),
            Err(_) => break,
        }
        assert!(start.elapsed() < Duration::from_secs(10), "a kept-alive connection still renews");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let start = std::time::Instant::now();
    loop {
        // A new connection each time: refused in the handshake.
        let client = https(Some((identity.0.clone(), identity.1.clone_key())));
        if client.post(format!("{base}/v1/wit")).body(wit_request(SUB)).send().await.is_err() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the replaced authority's WIC still connects");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
