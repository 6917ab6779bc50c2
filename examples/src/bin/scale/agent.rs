//! A node agent (in a child process of its own, so its CPU time and memory are its own) holding
//! N Workload API streams (`FetchWITSVID`) of this process, while its WIT is renewed every few
//! seconds and each renewal is pushed to every stream.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use wimse_workload_api::{Endpoint, WorkloadApiClient};

use crate::server::{ServerProcess, cpu_time_of, rss_mib_of};
use crate::{DOMAIN, Error, Row, kib_per};

const AGENT_SECRET: &str = "scale-harness-node-agent-secret";
/// The WITs' lifetime: the agent renews them, and pushes each to every stream, every few seconds.
const WIT_LIFETIME: u64 = 8;
/// How long the streams are watched.
const SECONDS: u64 = 12;
/// Streams per connection (the agent's default limit).
const PER_CONNECTION: usize = 32;

/// The agent child process, killed when dropped.
struct AgentProcess {
    child: Child,
    socket: PathBuf,
    _dir: wimse_testkit::servers::TempDir,
}

impl AgentProcess {
    /// Starts an agent of `issuer` with one entry (this process's uid) and room for `streams`
    /// streams; returns once it holds its credentials and serves.
    fn start(issuer: &str, streams: usize) -> Result<Self, Error> {
        let dir = wimse_testkit::servers::TempDir::new("wimse-scale-agent");
        let token = dir.write_file("agent-token", AGENT_SECRET);
        let socket = dir.path().join("agent.sock");
        let connections = streams.div_ceil(PER_CONNECTION) + 16;
        let config = json!({
            "socket": socket,
            "trust_domain": DOMAIN,
            "issuer": {"url": issuer, "token_file": token},
            "entries": [{"spiffe_id": format!("{DOMAIN}/ns/harness"), "selectors": {"uid": own_uid()?}}],
            "limits": {"max_connections": connections, "max_connections_per_uid": connections,
                       "max_streams": streams + 64, "max_streams_per_uid": streams + 64}
        });
        let path = dir.write_file("agent.json", &config.to_string());
        let mut child = Command::new(std::env::current_exe()?)
            .arg("serve-agent")
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
        if line.trim() != "serving" {
            return Err(format!("the agent said {line:?}").into());
        }
        Ok(Self { child, socket, _dir: dir })
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This process's real uid (the agent's selector for it).
fn own_uid() -> Result<u32, Error> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().next());
    Ok(uid.ok_or("no Uid in /proc/self/status")?.parse()?)
}

/// `serve-agent CONFIG`: the node agent, printing `serving` once it holds its credentials.
pub(crate) async fn serve(config: String) -> Result<(), Error> {
    let config = wimse_agent::AgentConfig::from_file(std::path::Path::new(&config))?;
    let agent = wimse_agent::Agent::start(config)?;
    if !agent.ready(Duration::from_secs(30)).await {
        return Err("the agent got no credentials within 30 s".into());
    }
    let listener = agent.bind()?;
    // Bound: clients may connect from now on.
    println!("serving");
    agent.serve_on(listener, std::future::pending()).await?;
    Ok(())
}

/// N streams on one agent: its memory per stream, the updates it pushes per second, its CPU
/// per update delivered, and how long one renewal takes to reach every stream (the 99th
/// percentile, after the first stream had it).
pub(crate) async fn streams(size: usize) -> Result<Row, Error> {
    let issuer = ServerProcess::start(json!({"refresh_hint": 300, "rotation_period": 86400,
        "clients": [{"name": "node-agent", "dev_secret": AGENT_SECRET, "allowed_prefixes": [format!("{DOMAIN}/ns")],
                     "max_lifetime": WIT_LIFETIME}]}))?;
    let agent = AgentProcess::start(&issuer.base, size)?;
    let pid = agent.child.id();
    let endpoint = Endpoint::parse(&format!("unix://{}", agent.socket.display()))?;
    let rss_before = rss_mib_of(pid);
    // When each stream received each message after its first (stream, instant).
    let received: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
    let mut tasks = Vec::new();
    let mut client = WorkloadApiClient::new(endpoint.clone());
    for stream_index in 0..size {
        if stream_index % PER_CONNECTION == 0 {
            client = WorkloadApiClient::new(endpoint.clone());
        }
        let mut stream = client.stream_wit_svids(None).await?;
        stream.message().await?.ok_or("a stream ended before its first message")?;
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(_)) = stream.message().await {
                received.lock().unwrap_or_else(|e| e.into_inner()).push((stream_index, Instant::now()));
            }
        }));
    }
    let per_stream = kib_per(((rss_mib_of(pid) - rss_before).max(0.0) * 1024.0 * 1024.0) as usize, size);
    let (cpu_before, watched_from) = (cpu_time_of(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(SECONDS)).await;
    let cpu = cpu_time_of(pid).saturating_sub(cpu_before);
    let rss = rss_mib_of(pid);
    for task in &tasks {
        task.abort();
    }
    let received = std::mem::take(&mut *received.lock().unwrap_or_else(|e| e.into_inner()));
    let watched: Vec<&(usize, Instant)> = received.iter().filter(|(_, at)| *at >= watched_from).collect();
    // The first renewal in the window, as each stream received it.
    let mut first = vec![None::<Instant>; size];
    for (stream, at) in &watched {
        first[*stream] = Some(first[*stream].map_or(*at, |seen: Instant| seen.min(*at)));
    }
    let mut delivered: Vec<Instant> = first.into_iter().flatten().collect();
    delivered.sort();
    let spread =
        match (delivered.first(), delivered.get((delivered.len() * 99 / 100).min(delivered.len().saturating_sub(1)))) {
            (Some(earliest), Some(p99)) => p99.duration_since(*earliest).as_secs_f64() * 1e3,
            _ => 0.0,
        };
    if delivered.len() < size {
        return Err(format!("{} of {size} streams received no renewal in {SECONDS} s", size - delivered.len()).into());
    }
    Ok(Row {
        rate: watched.len() as f64 / SECONDS as f64,
        cpu_us: cpu.as_secs_f64() * 1e6 / watched.len().max(1) as f64,
        p99_or_peak: spread,
        rss_mib: rss,
        per_unit_kib: per_stream,
        ..Row::new("agent-streams", size)
    })
}
