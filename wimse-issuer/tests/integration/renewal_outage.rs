//! Many workloads of one process renewing through an identity-server outage: one renewal
//! probes the down server, the others wait for it, and all renew within a retry interval of
//! the recovery, spread rather than in a burst. Measures the requests the outage costs and the
//! peak-to-mean ratio of the renewals after it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use wimse_core::client::cred::CredentialSource as _;
use wimse_core::time::{Clock as _, SystemClock};
use wimse_issuer::{IdentityServer, IssuerConfig};
use wimse_reqwest::{Bootstrap, IssuerCredentials};

const WORKLOADS: usize = 300;
const SECRET: &str = "a-renewal-outage-dev-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_costs_one_probe_per_interval_and_recovery_is_spread() {
    let dir = std::env::temp_dir().join(format!("wimse-issuer-outage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config: IssuerConfig = serde_json::from_value(json!({
        "trust_domain": "spiffe://prod.example",
        "key_store": dir.join("keys.json"),
        "dev_mode": true,
        "clients": [{"name": "fleet", "dev_secret": SECRET, "allowed_prefixes": ["spiffe://prod.example/ns"], "max_lifetime": 6}],
        "rate_limits": {"per_client": {"burst": 100000, "per_minute": 1000000}, "per_source": {"burst": 100000, "per_minute": 1000000}}
    }))
    .unwrap();
    let server = Arc::new(IdentityServer::open(config, SystemClock).await.unwrap());
    let down = Arc::new(AtomicBool::new(false));
    // Every WIT request: when it arrived, and whether it was answered 200.
    let requests: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let (flag, seen) = (down.clone(), requests.clone());
    let app = wimse_issuer::router(server).layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let (down, seen) = (flag.load(Ordering::SeqCst), seen.clone());
            async move {
                let wit = request.uri().path() == "/v1/wit";
                let arrived = Instant::now();
                let response = if down {
                    axum::response::IntoResponse::into_response(axum::http::StatusCode::SERVICE_UNAVAILABLE)
                } else {
                    next.run(request).await
                };
                if wit {
                    seen.lock().unwrap().push((arrived, response.status() == 200));
                }
                response
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await.unwrap()
    });

    let client = reqwest::Client::new();
    let mut fleet = Vec::new();
    for i in 0..WORKLOADS {
        let credentials = IssuerCredentials::builder(
            &base,
            format!("spiffe://prod.example/ns/w{i}"),
            Bootstrap::Token(SECRET.into()),
        )
        .client(client.clone())
        .retry_interval(Duration::from_secs(1))
        .key_check_interval(None)
        .connect()
        .await
        .unwrap();
        let renewal = credentials.spawn_renewal();
        fleet.push((credentials, renewal));
    }
    // Six-second WITs renew 3 to 4 s after issue: all of them fall due during the outage.
    down.store(true, Ordering::SeqCst);
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    down.store(false, Ordering::SeqCst);
    let recovery = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let requests = requests.lock().unwrap().clone();
    let during = requests.iter().filter(|(at, _)| *at >= outage && *at < recovery).count();
    let renewed: Vec<f64> = requests
        .iter()
        .filter(|(at, ok)| *ok && *at >= recovery)
        .map(|(at, _)| at.duration_since(recovery).as_secs_f64())
        .collect();
    // The recovery is noticed by the probe (within its retry delay); the waiting renewals then
    // spread over one retry interval. Renewals per 100 ms from the first: peak against mean
    // (on a loaded 2-core machine, CPU contention bunches them somewhat more).
    let first = renewed.iter().copied().fold(f64::INFINITY, f64::min);
    let last = renewed.iter().copied().fold(0.0, f64::max);
    let mut buckets = vec![0u32; 30];
    for at in &renewed {
        buckets[(((at - first) * 10.0) as usize).min(29)] += 1;
    }
    let busy = buckets.iter().rposition(|n| *n > 0).map_or(1, |last| last + 1);
    let mean = renewed.len() as f64 / busy as f64;
    let peak = f64::from(*buckets.iter().max().unwrap());
    println!(
        "{WORKLOADS} workloads, 8 s outage: {during} WIT requests during it ({:.3} per workload per second; \
         each retrying alone, about 1.3); recovery noticed after {first:.2} s, then {} renewals over {} ms, \
         peak/mean per 100 ms {:.2}",
        during as f64 / WORKLOADS as f64 / 8.0,
        renewed.len(),
        busy * 100,
        peak / mean
    );
    assert!(during <= 40, "{during} requests at a down server from one process");
    assert!(renewed.len() >= WORKLOADS, "every workload renewed after the recovery: {}", renewed.len());
    assert!(last <= 3.0, "all renewed within two retry intervals of the recovery: {last:.2} s");
    // Spread, not a burst (a loose bound: CPU contention on a loaded machine bunches them).
    assert!(peak <= WORKLOADS as f64 / 2.0 && busy >= 5, "a burst at the recovery: {buckets:?}");
    let now = SystemClock.now();
    for (credentials, renewal) in fleet {
        assert!(credentials.credentials(now).is_ok(), "holds a current WIT");
        renewal.abort();
    }
}
