//! The driver side of one configuration: start the server process, check that it
//! authenticates, pre-sign the proofs, send the requests, and measure.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use rustls::pki_types::ServerName;
use wimse_core::client::sign::audience_for;
use wimse_core::protocol::httpsig::OutgoingRequest;
use wimse_core::protocol::wic::{CurrentCertificate, WicServerVerifier, client_config};

use crate::pin::{Pinning, server_command};
use crate::setup::{CLIENT_ID, Deployment, SERVER_ID, ServerSetup};
use crate::{Config, Error, Framework, Mode, Options};

/// The measurements of one configuration.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) config: Config,
    pub(crate) requests_per_second: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    /// `None` where the server's CPU time cannot be read (not Linux).
    pub(crate) cpu_per_request: Option<Duration>,
    /// How often the server's threads were switched out per request (they waited with nothing
    /// to run, or were preempted): each switch costs the server CPU time of its own.
    pub(crate) switches_per_request: Option<f64>,
}

/// A server child process, killed when dropped.
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) address: String,
}

impl ServerProcess {
    pub(crate) fn start(
        framework: Framework,
        mode: Mode,
        setup: &ServerSetup,
        pinning: Option<&Pinning>,
    ) -> Result<Self, Error> {
        let mut child = server_command(pinning)?
            .args(["serve", framework.name(), mode.name()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut server = Self { child, address: String::new() };
        stdin.write_all(serde_json::to_string(setup)?.as_bytes())?;
        drop(stdin);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        server.address = line
            .trim()
            .strip_prefix("listening ")
            .ok_or_else(|| format!("the server did not start (it said {line:?})"))?
            .to_owned();
        Ok(server)
    }

    /// CPU time (user + system, all threads) the server has used so far.
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        cpu_time_of(&stat, clock_ticks_per_second())
    }

    /// Context switches (voluntary and not) of the server's threads so far (a thread that
    /// ended meanwhile is not counted: the servers' workers live as long as they do).
    pub(crate) fn context_switches(&self) -> Option<u64> {
        let threads = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).ok()?;
        Some(
            threads
                .flatten()
                .filter_map(|thread| std::fs::read_to_string(thread.path().join("status")).ok())
                .filter_map(|status| context_switches_of(&status))
                .sum(),
        )
    }
}

/// The voluntary and non-voluntary context switches a `/proc/<pid>/task/<tid>/status` counts.
pub(crate) fn context_switches_of(status: &str) -> Option<u64> {
    let count = |name: &str| status.lines().find_map(|line| line.strip_prefix(name)?.trim().parse::<u64>().ok());
    Some(count("voluntary_ctxt_switches:")? + count("nonvoluntary_ctxt_switches:")?)
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system time from the text of `/proc/<pid>/stat`: fields 14 and 15, counted after
/// the parenthesised command name (which may itself contain spaces and parentheses).
pub(crate) fn cpu_time_of(stat: &str, ticks_per_second: u64) -> Option<Duration> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) as f64 / ticks_per_second.max(1) as f64))
}

/// CPU time of process `pid` and of its children (nginx's master and its workers).
pub(crate) fn process_tree_cpu(pid: u32) -> Option<Duration> {
    let ticks = clock_ticks_per_second();
    let mut total = cpu_time_of(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?, ticks)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // Field 4, after the parenthesised command name, is the parent's pid.
        let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if parent == Some(pid.to_string().as_str()) {
            total += cpu_time_of(&stat, ticks).unwrap_or_default();
        }
    }
    Some(total)
}

/// `getconf CLK_TCK`: the unit of `/proc/<pid>/stat`'s times (100 when it cannot be read).
pub(crate) fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100)
}

/// A client for `mode`: keep-alive connections, and for mTLS the client's WIC, expecting the
/// server's identity. With `anonymous`, an mTLS client presents no certificate.
pub(crate) fn client(
    mode: Mode,
    deployment: &Deployment,
    options: &Options,
    anonymous: bool,
) -> Result<reqwest::Client, Error> {
    let builder = if mode == Mode::Mtls {
        let expected = SERVER_ID.parse::<wimse_core::id::WorkloadId>()?;
        let verifier = WicServerVerifier::new(deployment.wic_anchors.clone())
            .expect(move |name| matches!(name, ServerName::IpAddress(_)).then(|| expected.clone()));
        let config = if anonymous {
            rustls::ClientConfig::builder_with_provider(deployment.wic_anchors.provider().clone())
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        } else {
            let current = CurrentCertificate::new(&deployment.client_wic, deployment.wic_anchors.provider().clone())?;
            client_config(verifier, current)?
        };
        wimse_reqwest::mtls_client_builder(config)
    } else {
        reqwest::Client::builder()
    };
    Ok(builder.pool_max_idle_per_host(options.concurrency).build()?)
}

/// The authentication fields of `count` requests, signed now.
pub(crate) fn proofs(
    mode: Mode,
    deployment: &Deployment,
    url: &reqwest::Url,
    count: usize,
) -> Result<Vec<HeaderMap>, Error> {
    let aud = audience_for(&url.as_str().parse()?).ok_or("no audience")?;
    let authority = format!("{}:{}", url.host_str().ok_or("no host")?, url.port().ok_or("no port")?);
    (0..count)
        .map(|_| {
            let mut headers = HeaderMap::new();
            match mode {
                Mode::Wpt => deployment.signer.sign_headers(&mut headers, &aud)?,
                Mode::HttpSignature => {
                    let request = OutgoingRequest {
                        method: "GET",
                        scheme: url.scheme(),
                        authority: &authority,
                        path: url.path(),
                        query: None,
                        body: None,
                        aud: &aud,
                        sign_response: false,
                    };
                    deployment.signer.sign_request_signature(&mut headers, &request)?;
                }
                Mode::None | Mode::Mtls => {}
            }
            Ok(headers)
        })
        .collect()
}

/// Sends each request of `batch` (one per header map) over `concurrency` connections and
/// returns each request's latency; any answer but `expected` stops the run.
pub(crate) async fn send_all(
    client: &reqwest::Client,
    url: &reqwest::Url,
    batch: Vec<HeaderMap>,
    concurrency: usize,
    expected: reqwest::StatusCode,
) -> Result<Vec<Duration>, Error> {
    let mut lanes: Vec<Vec<HeaderMap>> = (0..concurrency).map(|_| Vec::new()).collect();
    for (i, headers) in batch.into_iter().enumerate() {
        lanes[i % concurrency].push(headers);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for lane in lanes {
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(lane.len());
            for headers in lane {
                let start = Instant::now();
                let response = client.get(url.clone()).headers(headers).send().await?;
                let status = response.status();
                let body = response.bytes().await?;
                if status != expected {
                    return Err(format!("answered {status}: {}", String::from_utf8_lossy(&body)).into());
                }
                latencies.push(start.elapsed());
            }
            Ok::<_, Error>(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(lane) = tasks.join_next().await {
        latencies.extend(lane??);
    }
    Ok(latencies)
}

/// The server refuses a caller without credentials and names the authenticated one.
async fn check_authentication(
    mode: Mode,
    deployment: &Deployment,
    options: &Options,
    url: &reqwest::Url,
) -> Result<(), Error> {
    let anonymous = client(mode, deployment, options, true)?.get(url.clone()).send().await;
    match (mode, anonymous) {
        (Mode::None, Ok(response)) if response.status() == 200 => {}
        (Mode::Wpt | Mode::HttpSignature, Ok(response)) if response.status() == 401 => {}
        // Without a client certificate the handshake fails (or the request is refused).
        (Mode::Mtls, Err(_)) => {}
        (Mode::Mtls, Ok(response)) if response.status() == 401 => {}
        (_, answer) => return Err(format!("a request without credentials was not refused: {answer:?}").into()),
    }
    let headers = proofs(mode, deployment, url, 1)?.remove(0);
    let response = client(mode, deployment, options, false)?.get(url.clone()).headers(headers).send().await?;
    let body = response.text().await?;
    let expected = match mode {
        Mode::None => "anonymous".to_owned(),
        _ => format!("{CLIENT_ID} {}", mode.name()),
    };
    if body != expected {
        return Err(format!("an authenticated request answered {body:?}, expected {expected:?}").into());
    }
    Ok(())
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(index).copied().unwrap_or_default()
}

/// Runs one configuration.
pub(crate) async fn run(
    config: Config,
    setup: &ServerSetup,
    deployment: &Deployment,
    options: &Options,
) -> Result<Row, Error> {
    let mode = config.mode;
    let server = ServerProcess::start(config.framework, mode, setup, options.pinning.as_ref())?;
    let url: reqwest::Url = format!("{}://{}/bench", mode.scheme(), server.address).parse()?;
    check_authentication(mode, deployment, options, &url).await?;

    let client = client(mode, deployment, options, false)?;
    let warmup = proofs(mode, deployment, &url, options.warmup)?;
    send_all(&client, &url, warmup, options.concurrency, reqwest::StatusCode::OK).await?;

    let batch = proofs(mode, deployment, &url, options.requests)?;
    let cpu_before = server.cpu_time();
    let switches_before = server.context_switches();
    let start = Instant::now();
    let mut latencies = send_all(&client, &url, batch, options.concurrency, reqwest::StatusCode::OK).await?;
    let elapsed = start.elapsed();
    let cpu_after = server.cpu_time();
    let switches_after = server.context_switches();
    latencies.sort();
    let requests = u32::try_from(options.requests)?;
    Ok(Row {
        config,
        requests_per_second: options.requests as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        cpu_per_request: cpu_before.zip(cpu_after).map(|(before, after)| after.saturating_sub(before) / requests),
        switches_per_request: switches_before
            .zip(switches_after)
            .map(|(before, after)| after.saturating_sub(before) as f64 / f64::from(requests)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        // A command name with spaces and parentheses; utime 250 and stime 50 ticks.
        let stat = "4242 (load (bench) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 3 0 100 0 0";
        assert_eq!(cpu_time_of(stat, 100), Some(Duration::from_secs(3)));
        assert_eq!(cpu_time_of("4242 (truncated) S 1 2", 100), None);
        assert_eq!(cpu_time_of("no parenthesis", 100), None);
    }

    #[test]
    fn context_switches_are_both_kinds_added() {
        let status = "Name:\tload-bench\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(context_switches_of(status), Some(127));
        assert_eq!(context_switches_of("voluntary_ctxt_switches:\t120\n"), None);
    }

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.99), Duration::ZERO);
    }
}
