//! Faults: the identity server failing while workloads hold credentials, and a Workload API
//! endpoint without the WIT-SVID profile.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Issuer, entry_for_me, start_agent};
use serde_json::json;
use wimse_core::client::cred::CredentialSource;
use wimse_core::protocol::trust::{TrustHandle, TrustStore};
use wimse_workload_api::proto::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use wimse_workload_api::proto::*;
use wimse_workload_api::{Endpoint, WitBundleWatch, WitSvidSource, WorkloadApiError};

/// The latest value of every gauge (by name, labels ignored), kept by a recorder of our own:
/// the debugging recorder's snapshots reset values as they read them.
#[derive(Default)]
struct Gauges(Arc<std::sync::Mutex<std::collections::HashMap<String, f64>>>);

struct Gauge(String, Arc<std::sync::Mutex<std::collections::HashMap<String, f64>>>);

impl metrics::GaugeFn for Gauge {
    fn increment(&self, value: f64) {
        *self.1.lock().unwrap().entry(self.0.clone()).or_default() += value;
    }
    fn decrement(&self, value: f64) {
        *self.1.lock().unwrap().entry(self.0.clone()).or_default() -= value;
    }
    fn set(&self, value: f64) {
        self.1.lock().unwrap().insert(self.0.clone(), value);
    }
}

impl metrics::Recorder for Gauges {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(Arc::new(Gauge(key.name().to_owned(), self.0.clone())))
    }
    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

fn gauges() -> &'static Arc<std::sync::Mutex<std::collections::HashMap<String, f64>>> {
    static GAUGES: std::sync::OnceLock<Arc<std::sync::Mutex<std::collections::HashMap<String, f64>>>> =
        std::sync::OnceLock::new();
    GAUGES.get_or_init(|| {
        let recorder = Gauges::default();
        let values = recorder.0.clone();
        metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");
        values
    })
}

fn gauge(name: &str) -> Option<f64> {
    gauges().lock().unwrap().get(name).copied()
}

/// The identity server fails: the agent keeps serving the credentials it holds, says so in
/// its logs and metrics, and resumes renewal when the server is back.
#[tokio::test]
async fn identity_server_outage_serves_cached_credentials() {
    let logs = wimse_testkit::logs::Logs::global();
    gauges();
    let issuer = Issuer::start(600).await;
    let agent = start_agent(&issuer, json!([entry_for_me("/ns/outage", "")]), json!({})).await;
    let source = WitSvidSource::builder(agent.endpoint.clone()).start().await.unwrap();
    let held = source.credentials(wimse_testkit::now()).unwrap();
    assert_eq!(gauge("wimse_agent_issuer_reachable"), Some(1.0));

    issuer.down.store(true, Ordering::SeqCst);
    agent.agent.rotate();
    let mut waited = 0;
    while gauge("wimse_agent_issuer_reachable") != Some(0.0) && waited < 200 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        waited += 1;
    }
    assert_eq!(gauge("wimse_agent_issuer_reachable"), Some(0.0), "the outage is visible as a metric");
    assert!(!logs.lines_with(&["serving cached credentials", "/ns/outage"]).is_empty(), "{}", logs.text());
    // Workloads keep what they hold, and new callers still get it.
    assert_eq!(source.credentials(wimse_testkit::now()).unwrap().wit(), held.wit());
    let fresh = WitSvidSource::builder(agent.endpoint.clone()).start().await.unwrap();
    assert_eq!(fresh.credentials(wimse_testkit::now()).unwrap().wit(), held.wit());
    let expiry = gauge("wimse_agent_credentials_expire_at_seconds").unwrap();
    assert_eq!(expiry as u64, held.expires_at());
    // Ready while what it serves is valid; not once it has expired (readiness at that time).
    assert_eq!(agent.agent.readiness(wimse_testkit::now()), Ok(()));
    let expired = agent.agent.readiness(held.expires_at()).unwrap_err();
    assert!(expired.contains("/ns/outage") && expired.contains("expired"), "{expired}");

    // Back: the next attempt renews, and the workload gets the new WIT through its stream.
    let mut updates = source.subscribe();
    issuer.down.store(false, Ordering::SeqCst);
    agent.agent.rotate();
    tokio::time::timeout(Duration::from_secs(10), updates.changed()).await.unwrap().unwrap();
    assert_ne!(source.credentials(wimse_testkit::now()).unwrap().wit(), held.wit());
    assert_eq!(gauge("wimse_agent_issuer_reachable"), Some(1.0));
    assert!(!logs.lines_with(&["the identity server answers again"]).is_empty());
}

/// A Workload API endpoint with only the X.509-SVID profile (a SPIRE agent without WIT-SVIDs).
struct X509Only {
    calls: Arc<AtomicUsize>,
}

type Never<M> = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<M, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for X509Only {
    type FetchX509SVIDStream = Never<X509svidResponse>;
    type FetchX509BundlesStream = Never<X509BundlesResponse>;
    type FetchWITSVIDStream = Never<WitsvidResponse>;
    type FetchWITBundlesStream = Never<WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        _: tonic::Request<X509svidRequest>,
    ) -> Result<tonic::Response<Self::FetchX509SVIDStream>, tonic::Status> {
        Ok(tonic::Response::new(Box::pin(futures_util::stream::pending())))
    }
    async fn fetch_x509_bundles(
        &self,
        _: tonic::Request<X509BundlesRequest>,
    ) -> Result<tonic::Response<Self::FetchX509BundlesStream>, tonic::Status> {
        Ok(tonic::Response::new(Box::pin(futures_util::stream::pending())))
    }
    async fn fetch_witsvid(
        &self,
        _: tonic::Request<WitsvidRequest>,
    ) -> Result<tonic::Response<Self::FetchWITSVIDStream>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(tonic::Status::unimplemented("the WIT-SVID profile is not enabled"))
    }
    async fn fetch_wit_bundles(
        &self,
        _: tonic::Request<WitBundlesRequest>,
    ) -> Result<tonic::Response<Self::FetchWITBundlesStream>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(tonic::Status::unimplemented("the WIT-SVID profile is not enabled"))
    }
}

/// `Unimplemented` is reported as such at once and never retried.
#[tokio::test]
async fn endpoint_without_the_wit_profile_is_reported_without_retries() {
    let dir = wimse_testkit::servers::TempDir::new("wimse-x509-only");
    let path = dir.path().join("api.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = SpiffeWorkloadApiServer::new(X509Only { calls: calls.clone() });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let endpoint = Endpoint::parse(&format!("unix://{}", path.display())).unwrap();
    let started = std::time::Instant::now();
    let error =
        WitSvidSource::builder(endpoint.clone()).retry_interval(Duration::from_millis(100)).start().await.unwrap_err();
    assert!(matches!(error, WorkloadApiError::Unimplemented { .. }), "{error}");
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("does not implement the WIT-SVID profile"), "{error}");
    let error = WitBundleWatch::start(endpoint, TrustHandle::new(TrustStore::new())).await.unwrap_err();
    assert!(matches!(error, WorkloadApiError::Unimplemented { .. }), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5), "reported at once, not after a timeout");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one call per profile RPC, no retries");
}

/// The identity server refuses an identity's WIC (a DNS name the agent may not ask for): its
/// WIT is still served, and the refusal is logged as one.
#[tokio::test]
async fn a_refused_wic_does_not_hold_back_the_wit() {
    let logs = wimse_testkit::logs::Logs::global();
    let issuer = Issuer::start(600).await;
    let dir = wimse_testkit::servers::TempDir::new("wimse-agent-wic-refused");
    let id: wimse_core::id::WorkloadId = format!("{}/ns/named", common::DOMAIN).parse().unwrap();
    let entries =
        json!([{"spiffe_id": id, "selectors": {"uid": common::my_ids().0}, "dns_names": ["db.evil.example"]}]);
    let agent = wimse_agent::Agent::start(common::agent_config(&issuer, dir.path(), entries, json!({}))).unwrap();
    let mut updates = agent.subscribe();
    // (`wait_for` returns a read guard of the snapshot: dropped at once, not held.)
    let served = tokio::time::timeout(
        Duration::from_secs(10),
        updates.wait_for(|s| s.identities.get(&id).is_some_and(|c| c.wit.is_some())),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    assert!(served, "the WIT is served");
    assert!(!agent.ready(Duration::from_millis(300)).await, "no X.509-SVID for it");
    let not_ready = agent.readiness(wimse_testkit::now()).unwrap_err();
    assert!(not_ready.contains("no X.509-SVID yet") && not_ready.contains("/ns/named"), "{not_ready}");
    assert!(agent.snapshot().identities[&id].x509.is_none());
    // Logged as the authorization error it is, not as an outage.
    assert_eq!(logs.lines_with(&["refuses to issue this identity", "X.509-SVID of", "/ns/named"]).len(), 1);
    assert!(logs.lines_with(&["identity server failed", "/ns/named"]).is_empty(), "{}", logs.text());
}
