//! A real `wimse issuer serve` process for the fault and high-availability tests.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wimse_core::id::TrustDomain;
use wimse_core::protocol::trust::TrustHandle;
use wimse_core::protocol::wit::{WitValidation, validate_wit};
use wimse_core::time::{Clock as _, SystemClock};

pub const SECRET: &str = "a-dev-secret-for-fault-tests";
pub const SUB: &str = "spiffe://prod.example/demo";

/// One identity-server process on a fixed loopback port, its log in a file.
pub struct IssuerProcess {
    config: PathBuf,
    log: PathBuf,
    port: u16,
    env: Vec<(String, String)>,
    args: Vec<String>,
    child: Option<Child>,
}

impl IssuerProcess {
    /// Starts `wimse issuer serve --config <config>` on a free port.
    pub fn start(config: &Path, log: &Path) -> Self {
        Self::start_with_env(config, log, Vec::new())
    }

    pub fn start_with_env(config: &Path, log: &Path, env: Vec<(String, String)>) -> Self {
        Self::start_on(config, log, env, wimse_testkit::servers::free_port())
    }

    /// Starts it on `port` (for a configuration that names its own URL).
    pub fn start_on(config: &Path, log: &Path, env: Vec<(String, String)>, port: u16) -> Self {
        Self::start_with_args(config, log, env, port, Vec::new())
    }

    /// Starts it on `port` with more arguments of `wimse issuer serve`.
    pub fn start_with_args(
        config: &Path,
        log: &Path,
        env: Vec<(String, String)>,
        port: u16,
        args: Vec<String>,
    ) -> Self {
        let mut process = Self { config: config.to_owned(), log: log.to_owned(), port, env, args, child: None };
        process.restart();
        process
    }

    /// Starts it again (after [`kill`](Self::kill)) on the same port, appending to its log.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_wimse"))
            .args(["issuer", "serve", "--config"])
            .arg(&self.config)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        // The first line says it listens; anything else means it did not start.
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        assert!(line.contains("listening on"), "issuer did not start: {line:?}\n{}", self.log_text());
        // Whatever it prints later (the metrics address) must not meet a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        self.child = Some(child);
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A WIT for [`SUB`] with the dev secret [`SECRET`] (asserting it is issued).
    pub async fn issue_wit(&self) -> String {
        let key = wimse_core::jose::SigningKey::generate(wimse_core::jose::Algorithm::ES256).unwrap();
        let response = reqwest::Client::new()
            .post(format!("{}/v1/wit", self.base()))
            .bearer_auth(SECRET)
            .json(&serde_json::json!({"sub": SUB, "jwk": key.public_jwk()}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", self.log_text());
        response.json::<serde_json::Value>().await.unwrap()["wit"].as_str().unwrap().to_owned()
    }

    /// Its SPIFFE bundle.
    pub async fn bundle(&self) -> serde_json::Value {
        reqwest::get(format!("{}/v1/bundle/spiffe", self.base())).await.unwrap().json().await.unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends the signal `name` (`TERM`, `HUP`...).
    pub fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("running");
        let status = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().unwrap();
        assert!(status.success());
    }

    /// Freezes it: connections are accepted by the kernel, nothing answers.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Waits up to `limit` for it to exit; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills it (SIGKILL: no goodbye).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for IssuerProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
        }
        self.kill();
    }
}

/// Polls `check` every 50 ms until it holds; returns how long that took, or `None` after
/// `limit`.
pub async fn time_until(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Whether `wit` verifies against the anchors `trust` holds now.
pub fn verifies(trust: &TrustHandle, wit: &str) -> bool {
    trust.read(|store| validate_wit(wit, store, &WitValidation::default(), SystemClock.now()).is_ok())
}

pub fn domain() -> TrustDomain {
    "spiffe://prod.example".parse().unwrap()
}
