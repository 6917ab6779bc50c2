//! The gateway rows, side by side in one run: the application (`load-bench serve axum none`)
//! alone behind nginx; nginx + `auth_request` + the wimse gateway (WPT, in-memory replay
//! store); the gateway's reverse proxy in front of the application; and the gateway's
//! forward-auth endpoint asked directly, with a proof and without one (what answering costs
//! it). The gateway runs in a child process of its own (`load-bench serve-gateway`), nginx from
//! the system (skipped with a message without it). CPU per request is counted per process
//! (nginx: its master and workers); the application's own CPU is not counted.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};
use reqwest::StatusCode;
use wimse_testkit::servers::{Spawned, free_port, start_nginx};

use crate::driver::{ServerProcess, client, percentile, process_tree_cpu, proofs, send_all};
use crate::pin::{Pinning, server_command};
use crate::setup::{Deployment, ServerSetup, TRUST_DOMAIN};
use crate::{Error, Framework, Mode, Options, micros, millis};

/// One measured row.
pub(crate) struct GatewayRow {
    pub(crate) name: &'static str,
    requests_per_second: f64,
    p50: Duration,
    p99: Duration,
    /// CPU per request of each measured process, by name.
    cpu: Vec<(&'static str, Option<Duration>)>,
}

impl GatewayRow {
    fn cpu_of(&self, process: &str) -> Option<Duration> {
        self.cpu.iter().find(|(name, _)| *name == process).and_then(|(_, cpu)| *cpu)
    }
}

/// The gateway in its own process, killed when dropped.
struct GatewayProcess {
    child: Child,
}

impl GatewayProcess {
    fn start(config: &str, pinning: Option<&Pinning>) -> Result<Self, Error> {
        let mut child = server_command(pinning)?
            .arg("serve-gateway")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        child.stdin.take().ok_or("no stdin")?.write_all(config.as_bytes())?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
        if line.trim() != "listening" {
            let _ = child.kill();
            return Err(format!("the gateway did not start (it said {line:?})").into());
        }
        Ok(Self { child })
    }

    fn cpu(&self) -> Option<Duration> {
        process_tree_cpu(self.child.id())
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `load-bench serve-gateway`: the gateway of the TOML configuration on standard input.
pub(crate) fn serve(mut args: impl Iterator<Item = String>) -> Result<(), Error> {
    if let Some(extra) = args.next() {
        return Err(format!("serve-gateway takes no argument ({extra})").into());
    }
    let mut config = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut config)?;
    let config = wimse_gateway::GatewayConfig::from_toml(&config)?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let gateway = wimse_gateway::Gateway::start(config).await?;
        println!("listening");
        std::io::stdout().flush()?;
        gateway.serve(std::future::pending()).await?;
        Ok(())
    })
}

/// Where everything of one run lives.
struct Bench {
    dir: PathBuf,
    deploy: PathBuf,
    _app: ServerProcess,
    app_port: u16,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Measures the processes `measured` while `batch` is sent to `url`.
#[allow(clippy::too_many_arguments)]
async fn measure(
    name: &'static str,
    url: &reqwest::Url,
    warmup: Vec<HeaderMap>,
    batch: Vec<HeaderMap>,
    expected: StatusCode,
    measured: &[(&'static str, &dyn Fn() -> Option<Duration>)],
    options: &Options,
    client: &reqwest::Client,
) -> Result<GatewayRow, Error> {
    send_all(client, url, warmup, options.concurrency, expected).await?;
    let requests = u32::try_from(batch.len())?;
    let before: Vec<Option<Duration>> = measured.iter().map(|(_, cpu)| cpu()).collect();
    let start = Instant::now();
    let mut latencies = send_all(client, url, batch, options.concurrency, expected).await?;
    let elapsed = start.elapsed();
    let cpu = measured
        .iter()
        .zip(before)
        .map(|((process, cpu), before)| (*process, before.zip(cpu()).map(|(b, a)| a.saturating_sub(b) / requests)))
        .collect();
    latencies.sort();
    Ok(GatewayRow {
        name,
        requests_per_second: f64::from(requests) / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        cpu,
    })
}

/// nginx's original-request fields, as its `auth_request` sets them.
fn with_original(mut headers: HeaderMap, uri: &str, host: &str) -> Result<HeaderMap, Error> {
    headers.insert("x-original-method", HeaderValue::from_static("GET"));
    headers.insert("x-original-uri", HeaderValue::from_str(uri)?);
    headers.insert("x-original-host", HeaderValue::from_str(host)?);
    Ok(headers)
}

fn gateway_config(trust: &Path, forward_auth: u16, proxy: u16, site: &str, app: u16) -> String {
    format!(
        r#"
[verifier]
trust = [{{ trust_domain = "{TRUST_DOMAIN}", file = {trust:?} }}]
[forward_auth]
listen = "127.0.0.1:{forward_auth}"
trusted_proxies = ["127.0.0.1"]
[reverse_proxy]
listen = "127.0.0.1:{proxy}"
[[routes]]
origin = "{site}"
policy = {{ name = "bench", allow = {{ workloads = ["{client}"] }} }}
[[routes]]
origin = "http://127.0.0.1:{proxy}"
upstream = "http://127.0.0.1:{app}"
policy = {{ name = "bench", allow = {{ workloads = ["{client}"] }} }}
"#,
        client = crate::setup::CLIENT_ID
    )
}

/// Runs the gateway rows; `None` (with a message) without nginx.
pub(crate) async fn run(
    setup: &ServerSetup,
    deployment: &Deployment,
    options: &Options,
) -> Result<Option<Vec<GatewayRow>>, Error> {
    let dir = std::env::temp_dir().join(format!("wimse-load-bench-gateway-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let app = ServerProcess::start(Framework::Axum, Mode::None, setup, options.pinning.as_ref())?;
    let app_port = app.address.rsplit(':').next().and_then(|p| p.parse().ok()).ok_or("app port")?;
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wimse-gateway/deploy");
    let bench = Bench { dir, deploy, _app: app, app_port };
    let plain = client(Mode::None, deployment, options, false)?;
    let count = options.requests;
    let warm = options.warmup;
    let mut rows = Vec::new();

    // 1. The application alone behind nginx.
    let include = bench.dir.join("plain.conf");
    std::fs::write(
        &include,
        "location / { proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_pass http://app; }\n",
    )?;
    let site_port = free_port();
    let Some(nginx) = start_nginx(&bench.dir, site_port, &include, &[("app", bench.app_port)]) else {
        println!("skipped: the gateway rows (nginx not found)");
        return Ok(None);
    };
    let url: reqwest::Url = format!("{}/bench", nginx.origin()).parse()?;
    let nginx_cpu = || process_tree_cpu(nginx.pid());
    let none = |n: usize| vec![HeaderMap::new(); n];
    rows.push(
        measure(
            "nginx -> app",
            &url,
            none(warm),
            none(count),
            StatusCode::OK,
            &[("nginx", &nginx_cpu)],
            options,
            &plain,
        )
        .await?,
    );
    drop(nginx);

    // The gateway, for the other rows.
    let trust = bench.dir.join("trust.jwks.json");
    std::fs::write(&trust, &setup.trust_jwks)?;
    let (forward_auth, proxy, site_port) = (free_port(), free_port(), free_port());
    let site = format!("http://127.0.0.1:{site_port}");
    let gateway = GatewayProcess::start(
        &gateway_config(&trust, forward_auth, proxy, &site, bench.app_port),
        options.pinning.as_ref(),
    )?;
    let gateway_cpu = || gateway.cpu();

    // 2. nginx + auth_request + the gateway, in front of the application.
    let nginx = start_nginx(
        &bench.dir,
        site_port,
        &bench.deploy.join("nginx.conf"),
        &[("wimse_gateway", forward_auth), ("app", bench.app_port)],
    )
    .ok_or("nginx vanished")?;
    let url: reqwest::Url = format!("{site}/bench").parse()?;
    let nginx_cpu = || process_tree_cpu(nginx.pid());
    let (w, b) = (proofs(Mode::Wpt, deployment, &url, warm)?, proofs(Mode::Wpt, deployment, &url, count)?);
    let measured: [(&'static str, &dyn Fn() -> Option<Duration>); 2] =
        [("nginx", &nginx_cpu), ("gateway", &gateway_cpu)];
    rows.push(
        measure("nginx + auth_request + gateway -> app", &url, w, b, StatusCode::OK, &measured, options, &plain)
            .await?,
    );
    drop::<Spawned>(nginx);

    // 3. The gateway's reverse proxy in front of the application.
    let url: reqwest::Url = format!("http://127.0.0.1:{proxy}/bench").parse()?;
    let (w, b) = (proofs(Mode::Wpt, deployment, &url, warm)?, proofs(Mode::Wpt, deployment, &url, count)?);
    rows.push(
        measure(
            "gateway reverse proxy -> app",
            &url,
            w,
            b,
            StatusCode::OK,
            &[("gateway", &gateway_cpu)],
            options,
            &plain,
        )
        .await?,
    );

    // 4. and 5. The forward-auth endpoint asked directly: a verified request, and one without
    // credentials (what answering a subrequest costs the gateway).
    let checked: reqwest::Url = format!("{site}/bench").parse()?;
    let endpoint: reqwest::Url = format!("http://127.0.0.1:{forward_auth}/").parse()?;
    let host = format!("127.0.0.1:{site_port}");
    let signed = |n| -> Result<Vec<HeaderMap>, Error> {
        proofs(Mode::Wpt, deployment, &checked, n)?.into_iter().map(|h| with_original(h, "/bench", &host)).collect()
    };
    let (w, b) = (signed(warm)?, signed(count)?);
    rows.push(
        measure(
            "gateway forward-auth, verified",
            &endpoint,
            w,
            b,
            StatusCode::OK,
            &[("gateway", &gateway_cpu)],
            options,
            &plain,
        )
        .await?,
    );
    let anonymous = |n| -> Result<Vec<HeaderMap>, Error> {
        none(n).into_iter().map(|h| with_original(h, "/bench", &host)).collect()
    };
    let (w, b) = (anonymous(warm)?, anonymous(count)?);
    rows.push(
        measure(
            "gateway forward-auth, no credentials",
            &endpoint,
            w,
            b,
            StatusCode::UNAUTHORIZED,
            &[("gateway", &gateway_cpu)],
            options,
            &plain,
        )
        .await?,
    );
    drop(gateway);
    drop(bench);
    Ok(Some(rows))
}

/// The gateway table, and the gateway's CPU per verified request against one bare
/// verification plus answering a forward-auth request without credentials.
pub(crate) fn print_table(rows: &[GatewayRow], floor: Duration, axum_wpt: Option<Duration>) {
    println!("\n| path | requests/s | p50 | p99 | nginx CPU per request | gateway CPU per request |");
    println!("|---|---|---|---|---|---|");
    let cell = |cpu: Option<Duration>| cpu.map_or_else(|| "-".to_owned(), micros);
    for row in rows {
        println!(
            "| {} | {:.0} | {} | {} | {} | {} |",
            row.name,
            row.requests_per_second,
            millis(row.p50),
            millis(row.p99),
            cell(row.cpu_of("nginx")),
            cell(row.cpu_of("gateway")),
        );
    }
    let answering =
        rows.iter().find(|r| r.name == "gateway forward-auth, no credentials").and_then(|r| r.cpu_of("gateway"));
    if let Some(answering) = answering {
        let least = answering + floor;
        for name in
            ["nginx + auth_request + gateway -> app", "gateway forward-auth, verified", "gateway reverse proxy -> app"]
        {
            if let Some(cpu) = rows.iter().find(|r| r.name == name).and_then(|r| r.cpu_of("gateway")) {
                println!(
                    "gateway CPU per verified request ({name}): {} = {:.2}x (one bare verification {} + answering without credentials {})",
                    micros(cpu),
                    cpu.as_secs_f64() / least.as_secs_f64(),
                    micros(floor),
                    micros(answering)
                );
            }
        }
    }
    if let Some(axum) = axum_wpt {
        println!("for comparison, axum with the in-process layer (WPT, memory): {} per request", micros(axum));
    }
}
