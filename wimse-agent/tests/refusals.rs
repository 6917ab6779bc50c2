//! A refusal while the agent runs (its token, or an identity, no longer accepted by the
//! identity server) is logged once as the configuration or authorization error it is, counted
//! under its own reason and not retried within seconds; what is held is still served. (Each
//! test binary has one metrics recorder: these tests count, so they have their own.)

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{DOMAIN, Issuer, entry_for_me, start_agent};
use serde_json::json;

/// Counter values by name and labels (`name{label=value}`).
type Values = Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>;

/// Every counter of this test binary.
#[derive(Default)]
struct Counters(Values);

struct Counter(Arc<AtomicU64>);

impl metrics::CounterFn for Counter {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::SeqCst);
    }
}

impl metrics::Recorder for Counters {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let value = self.0.lock().unwrap().entry(name).or_default().clone();
        metrics::Counter::from_arc(Arc::new(Counter(value)))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

fn counter(name: &str) -> u64 {
    static COUNTERS: OnceLock<Values> = OnceLock::new();
    let counters = COUNTERS.get_or_init(|| {
        let recorder = Counters::default();
        let values = recorder.0.clone();
        metrics::set_global_recorder(recorder).expect("the only recorder of this test binary");
        values
    });
    counters.lock().unwrap().get(name).map_or(0, |v| v.load(Ordering::SeqCst))
}

const REFUSED: &str = "wimse_agent_issuer_failures_total{reason=issuance_denied}";
const TOKEN_REFUSED: &str = "wimse_agent_issuer_failures_total{reason=bootstrap_token_invalid}";

/// The identity server stops granting an identity the agent serves (its client entry
/// changed): the agent logs it once as an authorization error (not as an outage), counts it
/// as `issuance_denied`, keeps serving what it holds, and does not try again within seconds.
#[tokio::test]
async fn an_identity_no_longer_granted_is_an_authorization_error() {
    let logs = wimse_testkit::logs::Logs::global();
    let issuer = Issuer::start(600).await;
    let agent = start_agent(
        &issuer,
        json!([entry_for_me("/ns/revoked", ""), entry_for_me("/ns/kept", "")]),
        json!({"x509": false}),
    )
    .await;
    let revoked: wimse_core::id::WorkloadId = format!("{DOMAIN}/ns/revoked").parse().unwrap();
    let held = agent.agent.snapshot().identities[&revoked].wit.clone().unwrap();
    assert_eq!(counter(REFUSED), 0);

    issuer.reconfigure(&[format!("{DOMAIN}/ns/kept")]).await;
    agent.agent.rotate();
    for _ in 0..400 {
        if counter(REFUSED) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(counter(REFUSED), 1, "one refusal, counted as issuance_denied");
    // Forced renewals are refused too, and not logged again.
    for expected in 2..=3 {
        agent.agent.rotate();
        for _ in 0..400 {
            if counter(REFUSED) >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(counter(REFUSED), expected);
    }
    let what = format!("WIT of {DOMAIN}/ns/revoked");
    let refusals = logs.lines_with(&["ERROR", "refuses to issue this identity", "authorization error", &what]);
    assert_eq!(refusals.len(), 1, "{}", logs.text());
    assert!(logs.lines_with(&["identity server failed", "/ns/revoked"]).is_empty(), "{}", logs.text());
    assert!(logs.lines_with(&["identity server still fails", "/ns/revoked"]).is_empty(), "{}", logs.text());
    assert_eq!(counter("wimse_agent_issuer_failures_total{reason=unavailable}"), 0, "no outage counted");
    // What it holds is still served, until it expires.
    let served = agent.agent.snapshot().identities[&revoked].wit.clone().unwrap();
    assert_eq!(served.wit, held.wit);

    // No retry within seconds (an outage would be retried every 200 ms here): the next
    // attempt is on the renewal schedule, minutes away.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(counter(REFUSED), 3, "not retried at the outage's pace");

    // Granted again: the next renewal (SIGHUP, here) obtains it, and says so.
    issuer.reconfigure(&[format!("{DOMAIN}/ns/kept"), format!("{DOMAIN}/ns/revoked")]).await;
    let mut updates = agent.agent.subscribe();
    agent.agent.rotate();
    let renewed = tokio::time::timeout(
        Duration::from_secs(10),
        updates
            .wait_for(|s| s.identities.get(&revoked).and_then(|c| c.wit.as_ref()).is_some_and(|w| w.wit != held.wit)),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    assert!(renewed);
    assert!(!logs.lines_with(&["issues this identity again", &what]).is_empty(), "{}", logs.text());
}

/// The agent's token stops being accepted (a wrong secret written to its file): logged once
/// for the agent, whatever the number of identities and parts, as a configuration error.
#[tokio::test]
async fn a_token_no_longer_accepted_is_a_configuration_error() {
    let logs = wimse_testkit::logs::Logs::global();
    let issuer = Issuer::start(600).await;
    let agent =
        start_agent(&issuer, json!([entry_for_me("/ns/token-a", ""), entry_for_me("/ns/token-b", "")]), json!({}))
            .await;
    let before = counter(TOKEN_REFUSED);
    std::fs::write(agent.dir().join("agent-token"), "a-wrong-secret-0123456789abcdef").unwrap();
    agent.agent.rotate();
    // Two identities, two parts each: four refusals.
    for _ in 0..400 {
        if counter(TOKEN_REFUSED) >= before + 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(counter(TOKEN_REFUSED), before + 4);
    // Named by where the token comes from (the other tests' agents have other files).
    let token = format!("issuer.token_file ({})", agent.dir().join("agent-token").display());
    let refused = logs.lines_with(&["ERROR", "refuses the agent's token", "configuration error", &token]);
    assert_eq!(refused.len(), 1, "{}", logs.text());
    assert!(logs.lines_with(&["identity server failed", "/ns/token-"]).is_empty(), "{}", logs.text());
}
