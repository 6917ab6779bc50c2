//! `wimse gateway serve` as an operator runs it: behind a real nginx in front of a Python
//! application, called by `wimse sign --format curl` requests; SIGHUP reloads the file (a
//! broken one is refused and the running configuration kept), SIGTERM stops it cleanly.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use wimse_testkit::servers::{free_port, start_nginx, start_python};

struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("wimse-cli-gateway-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn s(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wimse(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wimse")).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../wimse-gateway/deploy").join(file)
}

fn config(d: &Dir, gateway_port: u16, site: &str, allowed: &str) -> String {
    format!(
        "[verifier]\ntrust = [{{ trust_domain = \"spiffe://prod.example\", file = {:?} }}]\n\n\
         [forward_auth]\nlisten = \"127.0.0.1:{gateway_port}\"\ntrusted_proxies = [\"127.0.0.1\"]\n\n\
         [[routes]]\norigin = \"{site}\"\npolicy = {{ name = \"app\", allow = {{ workloads = [\"{allowed}\"] }} }}\n",
        d.s("issuer.pub.jwk")
    )
}

/// Status and body of a `wimse sign --format curl` request to `url`, with a spoofed identity
/// field the signature covers too.
async fn signed_curl(d: &Dir, url: &str) -> (String, String) {
    let request = d.s("request.http");
    std::fs::write(&request, format!("GET {url} HTTP/1.1\r\nX-Wimse-Caller: spiffe://prod.example/admin\r\n\r\n"))
        .unwrap();
    let (key, wit) = (d.s("workload.jwk"), d.s("wit.jwt"));
    let command = wimse(&["sign", "--request", &request, "--key", &key, "--wit", &wit, "--format", "curl"]);
    let script = format!("{} -s -w '\\n%{{http_code}}'", command.trim_end());
    let out = tokio::process::Command::new("sh").args(["-c", &script]).output().await.unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.to_owned(), body.to_owned())
}

/// The gateway process, killed (and waited for) when dropped if it is still running.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(pid: u32, name: &str) {
    assert!(Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_behind_nginx_reloads_on_sighup_and_stops_on_sigterm() {
    if Command::new("curl").arg("--version").output().is_err() {
        println!("skipped: curl not found");
        return;
    }
    let d = Dir::new();
    let Some(app) = start_python(&d.0, "app", &deploy("echo_app.py"), &[]) else { return };
    wimse(&["key", "generate", "--alg", "ES256", "--kid", "issuer-1", "-o", &d.s("issuer.jwk")]);
    wimse(&["key", "public", "--key", &d.s("issuer.jwk"), "-o", &d.s("issuer.pub.jwk")]);
    wimse(&["key", "generate", "--alg", "ES256", "-o", &d.s("workload.jwk")]);
    let (issuer, workload, wit) = (d.s("issuer.jwk"), d.s("workload.jwk"), d.s("wit.jwt"));
    let orders = "spiffe://prod.example/orders";
    wimse(&["wit", "issue", "--issuer-key", &issuer, "--sub", orders, "--workload-key", &workload, "-o", &wit]);

    let (gateway_port, site_port) = (free_port(), free_port());
    let site = format!("http://127.0.0.1:{site_port}");
    let file = d.s("gateway.toml");
    std::fs::write(&file, config(&d, gateway_port, &site, orders)).unwrap();
    // `validate` builds it without serving.
    let validated =
        Command::new(env!("CARGO_BIN_EXE_wimse")).args(["gateway", "validate", "--config", &file]).output().unwrap();
    assert!(validated.status.success(), "{}", String::from_utf8_lossy(&validated.stderr));
    let log = std::fs::File::create(d.s("gateway.log")).unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut gateway = Running(
        Command::new(env!("CARGO_BIN_EXE_wimse"))
            .args(["--log-format", "json", "gateway", "serve", "--config", &file, "--metrics-listen", &metrics])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let mut stdout = BufReader::new(gateway.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("metrics and health on"), "{line:?}");
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("forward-auth on http://127.0.0.1"), "{line:?}");
    let Some(_nginx) =
        start_nginx(&d.0, site_port, &deploy("nginx.conf"), &[("wimse_gateway", gateway_port), ("app", app.port())])
    else {
        return;
    };

    // A curl request signed by the CLI: the application sees the verified caller only.
    let (status, body) = signed_curl(&d, &format!("{site}/orders")).await;
    assert_eq!(status, "200", "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["headers"]["x-wimse-caller"][0], orders);
    // Its decision is counted, and the gateway is ready (its anchors are a file: never stale).
    let exposed = reqwest::get(format!("http://{metrics}/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        exposed.lines().any(|l| l.starts_with("wimse_verifications_total{")
            && l.contains(r#"result="allow""#)
            && l.contains(r#"mode="wpt""#)),
        "{exposed}"
    );
    assert_eq!(reqwest::get(format!("http://{metrics}/readyz")).await.unwrap().status(), 200);

    // SIGHUP with a policy that no longer allows the caller.
    std::fs::write(&file, config(&d, gateway_port, &site, "spiffe://prod.example/other")).unwrap();
    signal(gateway.0.id(), "HUP");
    let mut refused = false;
    for _ in 0..50 {
        if signed_curl(&d, &format!("{site}/orders")).await.0 == "403" {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "the reloaded policy applies");

    // SIGHUP with a broken file: refused, the running configuration stays, the log says why.
    std::fs::write(&file, "[[routes]]\norigin = 7\n").unwrap();
    let refused =
        Command::new(env!("CARGO_BIN_EXE_wimse")).args(["gateway", "validate", "--config", &file]).output().unwrap();
    assert_eq!(refused.status.code(), Some(2), "validate refuses it too");
    signal(gateway.0.id(), "HUP");
    let log = d.s("gateway.log");
    let mut said = false;
    for _ in 0..50 {
        if std::fs::read_to_string(&log).unwrap().contains("new configuration refused") {
            said = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(said, "{}", std::fs::read_to_string(&log).unwrap());
    assert_eq!(signed_curl(&d, &format!("{site}/orders")).await.0, "403", "still the reloaded policy");
    // `--log-format json`: one JSON object per line.
    let lines = std::fs::read_to_string(&log).unwrap();
    for line in lines.lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(entry["fields"]["message"].is_string(), "{line}");
    }
    assert!(lines.contains("wimse gateway: started"), "{lines}");

    // SIGTERM: a clean stop.
    signal(gateway.0.id(), "TERM");
    let mut stopped = None;
    for _ in 0..100 {
        if let Some(status) = gateway.0.try_wait().unwrap() {
            stopped = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
    // nginx now refuses: the gateway is gone.
    assert_eq!(signed_curl(&d, &format!("{site}/orders")).await.0, "500");
}
