//! Logs redirected to a file (or a collector) are plain text: no terminal colour codes.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

struct Dir(std::path::PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wimse-cli-logs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn s(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }
    fn log(&self) -> std::fs::File {
        std::fs::File::create(self.0.join("stderr.log")).unwrap()
    }
    fn log_text(&self) -> String {
        std::fs::read_to_string(self.0.join("stderr.log")).unwrap()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wimse() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wimse"));
    // Whatever the environment running the tests asks for: colours are the terminal's business.
    command.env("RUST_LOG", "info").env_remove("NO_COLOR");
    command
}

fn assert_plain(what: &str, log: &str) {
    assert!(!log.is_empty(), "{what} logged nothing");
    assert!(!log.contains('\u{1b}'), "{what} wrote terminal escape codes into a file: {log:?}");
}

#[test]
fn a_one_shot_command_logs_plain_text() {
    let d = Dir::new("verify");
    let ok = |args: &[&str]| assert!(wimse().args(args).output().unwrap().status.success(), "{args:?}");
    ok(&["key", "generate", "--kid", "issuer-1", "-o", &d.s("issuer.jwk")]);
    ok(&["key", "public", "--key", &d.s("issuer.jwk"), "-o", &d.s("issuer.pub.jwk")]);
    std::fs::write(d.0.join("request.http"), "GET /x HTTP/1.1\r\nHost: a.example\r\n\r\n").unwrap();
    // An unsigned request: refused, and the refusal logged (warn, target wimse::audit).
    let anchor = format!("spiffe://prod.example={}", d.s("issuer.pub.jwk"));
    let status = wimse()
        .args(["verify", "--request", &d.s("request.http"), "--trust-anchor", &anchor, "--origin", "https://a.example"])
        .stdout(Stdio::null())
        .stderr(d.log())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let log = d.log_text();
    assert_plain("wimse verify", &log);
    assert!(log.contains("missing_wit"), "{log}");
}

#[test]
fn the_identity_server_logs_plain_text() {
    let d = Dir::new("issuer");
    let config = serde_json::json!({
        "trust_domain": "spiffe://prod.example",
        "key_store": d.s("keys.json"),
        "dev_mode": true,
        "clients": [{"name": "dev", "dev_secret": "0123456789abcdef0123", "allowed": ["spiffe://prod.example/dev"], "max_lifetime": 600}]
    });
    std::fs::write(d.0.join("issuer.json"), config.to_string()).unwrap();
    let mut child = wimse()
        .args(["issuer", "serve", "--config", &d.s("issuer.json"), "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(d.log())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    assert!(line.contains("listening on"), "{line}");
    // It logged its start (the key store it created) before it listened.
    assert_plain("wimse issuer serve", &d.log_text());
}
