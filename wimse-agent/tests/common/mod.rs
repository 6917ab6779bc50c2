//! A real identity server on loopback and a real agent on a Unix socket, for the tests.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use wimse_agent::{Agent, AgentConfig};
use wimse_core::time::SystemClock;
use wimse_testkit::servers::TempDir;
use wimse_workload_api::Endpoint;

pub const DOMAIN: &str = "spiffe://prod.example";
pub const AGENT_SECRET: &str = "node-agent-dev-secret-0123456789";

/// The effective uid and gid of this process.
pub fn my_ids() -> (u32, u32) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let id = |name: &str| -> u32 {
        status.lines().find_map(|l| l.strip_prefix(name)).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (id("Uid:"), id("Gid:"))
}

/// A running identity server whose answers can be turned into 503s (an outage), and whose
/// configuration can be changed (a restart with another client entry for the agent).
pub struct Issuer {
    pub base: String,
    pub down: Arc<AtomicBool>,
    /// Every bundle request's path and answer status, in order.
    pub bundle_answers: Arc<std::sync::Mutex<Vec<(String, u16)>>>,
    /// The identity server that answers now.
    current: Arc<std::sync::Mutex<axum::Router>>,
    max_lifetime: u64,
    dir: TempDir,
}

impl Issuer {
    /// `max_lifetime`: the WITs' (and WICs') lifetime in seconds.
    pub async fn start(max_lifetime: u64) -> Self {
        let dir = TempDir::new("wimse-agent-issuer");
        let current = Arc::new(std::sync::Mutex::new(identity_server(dir.path(), max_lifetime, None).await));
        let down = Arc::new(AtomicBool::new(false));
        let flag = down.clone();
        let bundle_answers: Arc<std::sync::Mutex<Vec<(String, u16)>>> = Arc::default();
        let answers = bundle_answers.clone();
        let answering = current.clone();
        let router = axum::Router::new()
            .fallback_service(tower::service_fn(move |request: axum::extract::Request| {
                let router = answering.lock().unwrap().clone();
                async move { tower::ServiceExt::oneshot(router, request).await }
            }))
            .layer(axum::middleware::from_fn(move |request: axum::extract::Request, next: axum::middleware::Next| {
                let down = flag.load(Ordering::SeqCst);
                let answers = answers.clone();
                async move {
                    if down {
                        return axum::response::IntoResponse::into_response(
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        );
                    }
                    let path = request.uri().path().to_owned();
                    let response = next.run(request).await;
                    if path.starts_with("/v1/bundle/") {
                        answers.lock().unwrap().push((path, response.status().as_u16()));
                    }
                    response
                }
            }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { base, down, bundle_answers, current, max_lifetime, dir }
    }

    /// Restarts the identity server (same keys) with the agent's client entry allowing exactly
    /// the identifiers `allowed` instead of everything under `{DOMAIN}/ns`: an operator's change
    /// to the client entry.
    pub async fn reconfigure(&self, allowed: &[String]) {
        let server = identity_server(self.dir.path(), self.max_lifetime, Some(allowed)).await;
        *self.current.lock().unwrap() = server;
    }
}

/// The identity server on the key store in `dir`, with the agent as its one client, allowed
/// the identifiers `allowed` (`None`: every identifier under `{DOMAIN}/ns`).
async fn identity_server(dir: &std::path::Path, max_lifetime: u64, allowed: Option<&[String]>) -> axum::Router {
    let mut client = json!({"name": "node-agent", "dev_secret": AGENT_SECRET, "max_lifetime": max_lifetime,
                            "allowed_dns_names": ["*.svc.prod.example"]});
    match allowed {
        None => client["allowed_prefixes"] = json!([format!("{DOMAIN}/ns")]),
        Some(allowed) => client["allowed"] = json!(allowed),
    }
    let config: wimse_issuer::IssuerConfig = serde_json::from_value(json!({
        "trust_domain": DOMAIN,
        "issuer": "https://issuer.prod.example",
        "key_store": dir.join("keys.json"),
        "dev_mode": true,
        "clients": [client],
        "rate_limits": {"per_client": {"burst": 1000, "per_minute": 6000}}
    }))
    .unwrap();
    let server = Arc::new(wimse_issuer::IdentityServer::open(config, SystemClock).await.unwrap());
    wimse_issuer::router(server)
}

/// An agent serving on a socket in a temporary directory.
pub struct RunningAgent {
    pub agent: Arc<Agent>,
    pub endpoint: Endpoint,
    pub socket: std::path::PathBuf,
    _shutdown: tokio::sync::oneshot::Sender<()>,
    dir: TempDir,
}

impl RunningAgent {
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// The agent's configuration: `entries` as JSON, `extra` merged at the top level.
pub fn agent_config(issuer: &Issuer, dir: &std::path::Path, entries: Value, extra: Value) -> AgentConfig {
    let token = dir.join("agent-token");
    std::fs::write(&token, AGENT_SECRET).unwrap();
    let mut config = json!({
        "socket": dir.join("agent.sock"),
        "trust_domain": DOMAIN,
        "issuer": {"url": issuer.base, "token_file": token, "retry_interval_ms": 200, "timeout_ms": 2000},
        "entries": entries,
    });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    AgentConfig::from_json(&config.to_string()).unwrap()
}

/// Starts an agent with `entries` and waits until it holds every credential.
pub async fn start_agent(issuer: &Issuer, entries: Value, extra: Value) -> RunningAgent {
    let dir = TempDir::new("wimse-agent");
    let config = agent_config(issuer, dir.path(), entries, extra);
    let socket = config.socket.clone();
    let agent = Arc::new(Agent::start(config).unwrap());
    assert!(agent.ready(Duration::from_secs(20)).await, "the agent obtained its credentials");
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = agent.clone();
    tokio::spawn(async move {
        serving
            .serve(async {
                stopped.await.ok();
            })
            .await
            .unwrap();
    });
    // The socket exists once bound.
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let endpoint = Endpoint::parse(&format!("unix://{}", socket.display())).unwrap();
    RunningAgent { agent, endpoint, socket, _shutdown: shutdown, dir }
}

/// An entry for this very process (its uid).
pub fn entry_for_me(path: &str, hint: &str) -> Value {
    json!({"spiffe_id": format!("{DOMAIN}{path}"), "selectors": {"uid": my_ids().0}, "hint": hint,
           "dns_names": ["api.svc.prod.example"]})
}

/// A Python with the PyPI `spiffe` and `h2` packages: `WIMSE_SPIFFE_PYTHON`, else `python3` on
/// `PATH` (`.ci/run` makes a venv with pinned versions). Without one, prints
/// `skipped: python spiffe package not found` and returns `None`, or panics when
/// `WIMSE_REQUIRE_PYTHON_SPIFFE=1`.
pub fn spiffe_python() -> Option<std::path::PathBuf> {
    let candidates = std::env::var_os("WIMSE_SPIFFE_PYTHON")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(wimse_testkit::servers::find_binary("python3"));
    for python in candidates {
        let ok = std::process::Command::new(&python)
            .args(["-c", "import spiffe, h2, grpc"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(python);
        }
    }
    if std::env::var("WIMSE_REQUIRE_PYTHON_SPIFFE").is_ok_and(|v| v == "1") {
        panic!(
            "no Python with the spiffe and h2 packages (WIMSE_SPIFFE_PYTHON), and WIMSE_REQUIRE_PYTHON_SPIFFE=1 requires it"
        );
    }
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "skipped: python spiffe package not found");
    None
}

/// A script of `tests/python/`.
pub fn python_script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(name)
}

/// Runs `python script args...` (without blocking the runtime that serves the agent) and parses
/// the JSON it prints.
pub async fn run_python(python: &std::path::Path, script: &str, args: &[&str]) -> Value {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(python)
            .arg(python_script(script))
            .args(args)
            // The `spiffe` package's import of DSA from `cryptography` warns on every start.
            .env("PYTHONWARNINGS", "ignore")
            .output(),
    )
    .await
    .expect("the Python client finished")
    .expect("Python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{script}: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{script} printed {stdout:?}: {e}"))
}
