//! The identity server of the scale harness, in a child process of its own (so its CPU time
//! and memory are measured apart from the simulated clients), with a counter of bundle answers
//! (whole, 304, per second) the harness reads at `GET /__counts`.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::{DOMAIN, Error, SECRET};

/// Bundle answers so far.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counts {
    pub(crate) whole: u64,
    pub(crate) not_modified: u64,
    /// Bundle requests in each second since the server started.
    pub(crate) per_second: Vec<u64>,
    /// WIT requests (answered or refused) in each second since the server started.
    pub(crate) wit_per_second: Vec<u64>,
    /// `/v1/wit` answers 503 (the harness's outage).
    pub(crate) down: bool,
}

/// The server child process, killed when dropped.
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) base: String,
    _dir: wimse_testkit::servers::TempDir,
}

impl ServerProcess {
    /// Starts an identity server with `settings` (refresh hint, rotation period) on a file key
    /// store and one dev client for every identifier under `DOMAIN/ns`.
    pub(crate) fn start(settings: Value) -> Result<Self, Error> {
        Self::start_with(settings, &[])
    }

    /// [`start`](Self::start) with environment variables (the KEK of a PostgreSQL store).
    pub(crate) fn start_with(settings: Value, env: &[(&str, &str)]) -> Result<Self, Error> {
        let dir = wimse_testkit::servers::TempDir::new("wimse-scale");
        let mut config = json!({
            "trust_domain": DOMAIN,
            "key_store": dir.path().join("keys.json"),
            "dev_mode": true,
            "clients": [{"name": "fleet", "dev_secret": SECRET, "allowed_prefixes": [format!("{DOMAIN}/ns")], "max_lifetime": 3600}],
            "rate_limits": {"per_client": {"burst": 1000000, "per_minute": 100000000},
                            "per_source": {"burst": 1000000, "per_minute": 100000000}}
        });
        if let (Some(config), Some(settings)) = (config.as_object_mut(), settings.as_object()) {
            if settings.contains_key("postgres") {
                config.remove("key_store");
            }
            config.extend(settings.clone());
        }
        let path = dir.path().join("issuer.json");
        std::fs::write(&path, config.to_string())?;
        let mut child = Command::new(std::env::current_exe()?)
            .arg("serve")
            .arg(&path)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
        let base =
            line.trim().strip_prefix("listening ").ok_or_else(|| format!("the server said {line:?}"))?.to_owned();
        Ok(Self { child, base, _dir: dir })
    }

    /// Its CPU time so far.
    pub(crate) fn cpu_time(&self) -> Duration {
        cpu_time_of(self.child.id())
    }

    /// Its resident memory, MiB.
    pub(crate) fn rss_mib(&self) -> f64 {
        rss_mib_of(self.child.id())
    }

    /// Its bundle answers so far.
    pub(crate) async fn counts(&self) -> Result<Counts, Error> {
        let value: Value = reqwest::get(format!("{}/__counts", self.base)).await?.json().await?;
        let number = |v: &Value| v.as_u64().unwrap_or(0);
        Ok(Counts {
            whole: number(&value["whole"]),
            not_modified: number(&value["not_modified"]),
            per_second: value["per_second"].as_array().map(|a| a.iter().map(number).collect()).unwrap_or_default(),
            wit_per_second: value["wit_per_second"]
                .as_array()
                .map(|a| a.iter().map(number).collect())
                .unwrap_or_default(),
            down: false,
        })
    }

    /// Makes `/v1/wit` answer 503 (an outage) or answer again.
    pub(crate) async fn set_down(&self, down: bool) -> Result<(), Error> {
        let path = if down { "__down" } else { "__up" };
        reqwest::Client::new().post(format!("{}/{path}", self.base)).send().await?.error_for_status()?;
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CPU time of process `pid` so far (user + system, from `/proc`; zero where that cannot
/// be read).
pub(crate) fn cpu_time_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // `getconf CLK_TCK` is 100 on every Linux this runs on.
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / 100.0)
}

/// The resident memory of process `pid`, MiB (`VmRSS`).
pub(crate) fn rss_mib_of(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn set_down(counts: Arc<Mutex<Counts>>, down: bool) -> &'static str {
    counts.lock().unwrap_or_else(|e| e.into_inner()).down = down;
    "ok"
}

/// `serve CONFIG`: the identity server on a loopback port, printing `listening http://ADDR`.
pub(crate) async fn serve(config: String) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut config = wimse_issuer::load_config(std::path::Path::new(&config))?;
    // Token exchange and Txn-Tokens are served at the token endpoint, which names this address.
    config.token_endpoint = Some(format!("http://{}/v1/token", listener.local_addr()?));
    let server = Arc::new(wimse_issuer::IdentityServer::open(config, wimse_core::time::SystemClock).await?);
    let counts = Arc::new(Mutex::new(Counts::default()));
    let started = std::time::Instant::now();
    let counting = {
        let counts = counts.clone();
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let counts = counts.clone();
            async move {
                let bundle = request.uri().path().starts_with("/v1/bundle/");
                if request.uri().path() == "/v1/wit" {
                    let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
                    let second = started.elapsed().as_secs() as usize;
                    if counts.wit_per_second.len() <= second {
                        counts.wit_per_second.resize(second + 1, 0);
                    }
                    counts.wit_per_second[second] += 1;
                    if counts.down {
                        return axum::response::IntoResponse::into_response(
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        );
                    }
                }
                let response = next.run(request).await;
                if bundle {
                    let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
                    match response.status().as_u16() {
                        304 => counts.not_modified += 1,
                        _ => counts.whole += 1,
                    }
                    let second = started.elapsed().as_secs() as usize;
                    if counts.per_second.len() <= second {
                        counts.per_second.resize(second + 1, 0);
                    }
                    counts.per_second[second] += 1;
                }
                response
            }
        }
    };
    let (down_state, up_state) = (counts.clone(), counts.clone());
    let report = move || {
        let counts = counts.lock().unwrap_or_else(|e| e.into_inner()).clone();
        async move {
            axum::Json(
                json!({"whole": counts.whole, "not_modified": counts.not_modified, "per_second": counts.per_second,
                       "wit_per_second": counts.wit_per_second}),
            )
        }
    };
    let app = wimse_issuer::router(server)
        .layer(axum::middleware::from_fn(counting))
        .route("/__counts", axum::routing::get(report))
        .route("/__down", axum::routing::post(move || set_down(down_state.clone(), true)))
        .route("/__up", axum::routing::post(move || set_down(up_state.clone(), false)));
    println!("listening http://{}", listener.local_addr()?);
    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await?;
    Ok(())
}
