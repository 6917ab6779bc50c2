//! `wimse agent serve` under an operator's signals: SIGHUP applies a changed configuration (a
//! new registration entry is served) and refuses a broken one while serving on; SIGTERM stops
//! it within seconds although workloads hold open Workload API streams, exits 0 and removes
//! the socket.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wimse_testkit::servers::TempDir;

use crate::common::{IssuerProcess, SECRET};

const DOMAIN: &str = "spiffe://prod.example";

fn my_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn write_config(dir: &TempDir, issuer: &str, names: &[&str]) {
    let entries: Vec<Value> = names
        .iter()
        .map(|n| json!({"spiffe_id": format!("{DOMAIN}/ns/{n}"), "selectors": {"uid": my_uid()}}))
        .collect();
    let config = json!({
        "socket": dir.path().join("agent.sock"), "trust_domain": DOMAIN, "x509": false, "entries": entries,
        "issuer": {"url": issuer, "token_file": dir.path().join("token")}
    });
    std::fs::write(dir.path().join("agent.json"), config.to_string()).unwrap();
}

/// The identifiers a workload fetches from the agent now.
fn fetched(socket: &Path) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_wimse"))
        .args(["agent", "fetch", "--timeout", "5", "--socket", &format!("unix://{}", socket.display())])
        .output()
        .unwrap();
    let svids: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let mut ids: Vec<String> = svids["svids"]
        .as_array()
        .map(|a| a.iter().map(|s| s["spiffe_id"].as_str().unwrap_or_default().to_owned()).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, name: &str) {
    assert!(Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().unwrap().success());
}

#[test]
fn sighup_reloads_the_configuration_and_sigterm_stops_it_cleanly() {
    let dir = TempDir::new("wimse-agent-lifecycle");
    let issuer_config = dir.path().join("issuer.json");
    std::fs::write(
        &issuer_config,
        json!({
            "trust_domain": DOMAIN, "key_store": dir.path().join("keys.json"), "dev_mode": true,
            "clients": [{"name": "node-agent", "dev_secret": SECRET, "allowed_prefixes": [format!("{DOMAIN}/ns")], "max_lifetime": 600}]
        })
        .to_string(),
    )
    .unwrap();
    let issuer = IssuerProcess::start(&issuer_config, &dir.path().join("issuer.log"));
    std::fs::write(dir.path().join("token"), SECRET).unwrap();
    write_config(&dir, &issuer.base(), &["alpha"]);
    let log = dir.path().join("agent.log");
    let metrics = format!("127.0.0.1:{}", wimse_testkit::servers::free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_wimse"))
        .args(["agent", "serve", "--metrics-listen", &metrics, "--config"])
        .arg(dir.path().join("agent.json"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("metrics and health on"), "{line}\n{}", std::fs::read_to_string(&log).unwrap());
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("serving the Workload API"), "{line}\n{}", std::fs::read_to_string(&log).unwrap());
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let mut agent = Agent(child);
    let socket = dir.path().join("agent.sock");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(fetched(&socket), [format!("{DOMAIN}/ns/alpha")]);
    // The attested call is counted; the agent is ready (credentials current, bundles fetched).
    let get = |path: &str| {
        let out =
            Command::new("curl").args(["-s", "-w", "\n%{http_code}", &format!("http://{metrics}{path}")]).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    };
    if Command::new("curl").arg("--version").output().is_ok() {
        let exposed = get("/metrics");
        assert!(
            exposed.lines().any(|l| l.starts_with("wimse_agent_calls_total{") && l.contains("FetchWITSVID")),
            "{exposed}"
        );
        assert!(get("/readyz").ends_with("200"), "{}", get("/readyz"));
    }

    // A workload holding a stream open (it would keep a graceful stop waiting forever).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let endpoint = wimse_workload_api::Endpoint::parse(&format!("unix://{}", socket.display())).unwrap();
    let holder = runtime.block_on(wimse_workload_api::WitSvidSource::builder(endpoint).start()).unwrap();

    // A changed file: applied, its new entry served.
    write_config(&dir, &issuer.base(), &["alpha", "beta"]);
    signal(&agent.0, "HUP");
    let want = vec![format!("{DOMAIN}/ns/alpha"), format!("{DOMAIN}/ns/beta")];
    let start = Instant::now();
    while fetched(&socket) != want {
        assert!(start.elapsed() < Duration::from_secs(20), "not reloaded:\n{}", log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Served by the new agent at once; the old one stops once its streams close (5 s at most).
    while !log_text().contains("configuration reloaded") {
        assert!(start.elapsed() < Duration::from_secs(20), "{}", log_text());
        std::thread::sleep(Duration::from_millis(100));
    }

    // A broken file: refused, the running configuration serves on.
    std::fs::write(dir.path().join("agent.json"), "{ not json").unwrap();
    signal(&agent.0, "HUP");
    let start = Instant::now();
    while !log_text().contains("new configuration refused") {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(fetched(&socket), want);
    // A socket it cannot bind (its directory missing): refused the same way.
    let mut unbindable: Value = serde_json::from_str(&{
        write_config(&dir, &issuer.base(), &["alpha"]);
        std::fs::read_to_string(dir.path().join("agent.json")).unwrap()
    })
    .unwrap();
    unbindable["socket"] = dir.path().join("missing/agent.sock").display().to_string().into();
    std::fs::write(dir.path().join("agent.json"), unbindable.to_string()).unwrap();
    signal(&agent.0, "HUP");
    let start = Instant::now();
    while log_text().matches("new configuration refused").count() < 2 {
        assert!(start.elapsed() < Duration::from_secs(15), "{}", log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(fetched(&socket), want, "still the running configuration");

    // SIGTERM: stops within seconds although a stream is open; exit 0, socket removed.
    signal(&agent.0, "TERM");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = agent.0.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "still running:\n{}", log_text());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}\n{}", log_text());
    assert!(log_text().contains("wimse agent: stopped"), "{}", log_text());
    assert!(!socket.exists(), "the socket is removed");
    drop(holder);
}
