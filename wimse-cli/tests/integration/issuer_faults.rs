//! The identity server's faults, reproduced against a real `wimse issuer serve` process:
//! it hangs, it is down past the WITs' expiry, it loses its key store. Clients (renewal) and
//! verifiers (bundle refresh) must recover within one retry interval / one refresh hint of its
//! return, and the issuer must rotate on its own and say what it does.

use std::time::Duration;

use crate::common::{IssuerProcess, SECRET, SUB, domain, time_until, verifies};
use serde_json::{Value, json};
use wimse_core::client::cred::CredentialSource as _;
use wimse_core::protocol::trust::TrustHandle;
use wimse_core::time::{Clock as _, SystemClock};
use wimse_reqwest::{Bootstrap, BundleSource, IssuerCredentials};
use wimse_testkit::servers::TempDir;

/// The clients' per-call timeout and longest wait between attempts.
const TIMEOUT: Duration = Duration::from_secs(1);
const RETRY: Duration = Duration::from_secs(1);
/// Scheduling, a TLS-free loopback round trip and the 50 ms polling: generous, so a slow CI
/// machine does not fail the test, and far below what the faults cost before (no recovery at
/// all while hung; a 32 s backoff; a minute of refused keys).
const SLACK: Duration = Duration::from_secs(2);

fn write_config(dir: &TempDir, rotation_period: u64) -> std::path::PathBuf {
    write_config_with(dir, rotation_period, 4)
}

fn write_config_with(dir: &TempDir, rotation_period: u64, max_lifetime: u64) -> std::path::PathBuf {
    let config = json!({
        "trust_domain": "spiffe://prod.example",
        "key_store": dir.path().join("keys.json"),
        "rotation_period": rotation_period,
        "refresh_hint": 1,
        "dev_mode": true,
        "clients": [{"name": "demo", "dev_secret": SECRET, "allowed": [SUB], "max_lifetime": max_lifetime}]
    });
    let path = dir.path().join("issuer.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

async fn credentials(issuer: &IssuerProcess) -> IssuerCredentials {
    IssuerCredentials::builder(issuer.base(), SUB, Bootstrap::Token(SECRET.into()))
        .timeout(TIMEOUT)
        .retry_interval(RETRY)
        .connect()
        .await
        .unwrap()
}

fn bundle_source(issuer: &IssuerProcess) -> BundleSource {
    BundleSource::new(domain(), format!("{}/v1/bundle/spiffe", issuer.base())).timeout(TIMEOUT).min_interval(1)
}

/// The current WIT verifies against the anchors the verifier holds.
fn healthy(credentials: &IssuerCredentials, trust: &TrustHandle) -> bool {
    credentials.credentials(SystemClock.now()).is_ok_and(|c| verifies(trust, c.wit()))
}

#[tokio::test]
async fn a_hung_issuer_does_not_wedge_renewal_or_bundle_refresh() {
    let logs = wimse_testkit::logs::Logs::global();
    let dir = TempDir::new("wimse-fault-hung");
    let issuer = IssuerProcess::start(&write_config(&dir, 3600), &dir.path().join("issuer.log"));
    let credentials = credentials(&issuer).await;
    let _renewal = credentials.spawn_renewal();
    let trust = TrustHandle::default();
    let _refresh = bundle_source(&issuer).max_stale(3).spawn(trust.clone());
    assert!(time_until(Duration::from_secs(5), || healthy(&credentials, &trust)).await.is_some());

    // Hung for longer than the WIT lives and the anchors stay usable: connections are accepted
    // by the kernel and never answered.
    issuer.pause();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(credentials.credentials(SystemClock.now()).is_err(), "the WIT expired meanwhile");
    assert!(!trust.read(|s| s.get(&domain()).is_some_and(|a| a.usable_at(SystemClock.now()))), "stale anchors");

    issuer.resume();
    let recovery = time_until(Duration::from_secs(20), || healthy(&credentials, &trust)).await;
    let recovery = recovery.expect("clients never recovered from a hung issuer");
    eprintln!("hung issuer: recovered {recovery:?} after it answered again");
    assert!(recovery <= RETRY + TIMEOUT + SLACK, "recovered after {recovery:?}");
    // One event per state change, not one per attempt: the outage took ~10 attempts of each.
    // (Other tests of this binary may log too, but none hangs its issuer this long.)
    assert_eq!(logs.lines_with(&["trust bundle is stale"]).len(), 1, "{}", logs.text());
    assert!(logs.lines_with(&["WIT renewal failed; retrying"]).len() <= 4, "at most one per test: {}", logs.text());
    assert!(!logs.lines_with(&["trust bundle refreshed again"]).is_empty(), "{}", logs.text());
    assert!(!logs.lines_with(&["WIT renewal works again"]).is_empty(), "{}", logs.text());
}

#[tokio::test]
async fn clients_recover_within_one_retry_interval_after_an_outage_past_expiry() {
    let dir = TempDir::new("wimse-fault-down");
    let mut issuer = IssuerProcess::start(&write_config(&dir, 3600), &dir.path().join("issuer.log"));
    let credentials = credentials(&issuer).await;
    let _renewal = credentials.spawn_renewal();
    let trust = TrustHandle::default();
    let _refresh = bundle_source(&issuer).spawn(trust.clone());
    assert!(time_until(Duration::from_secs(5), || healthy(&credentials, &trust)).await.is_some());

    // Down for twice the WIT's lifetime: backoff must not have grown past the retry interval.
    issuer.kill();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(credentials.credentials(SystemClock.now()).is_err());
    issuer.restart();
    let recovery = time_until(Duration::from_secs(20), || healthy(&credentials, &trust)).await;
    let recovery = recovery.expect("clients never recovered");
    eprintln!("issuer down past expiry: recovered {recovery:?} after it came back");
    assert!(recovery <= RETRY + SLACK, "recovered after {recovery:?}");
}

#[tokio::test]
async fn verifiers_follow_a_new_key_store_and_the_issuer_rotates_on_its_own() {
    let dir = TempDir::new("wimse-fault-lost");
    let store = dir.path().join("keys.json");
    // Rotation every 3 s, pre-published 2 s ahead: the sequence climbs with no request at all.
    let mut issuer = IssuerProcess::start(&write_config(&dir, 3), &dir.path().join("issuer.log"));
    let sequence = || {
        let state: Value = serde_json::from_str(&std::fs::read_to_string(&store).unwrap()).unwrap();
        state["sequence"].as_u64().unwrap()
    };
    let first = sequence();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let before_loss = sequence();
    assert!(before_loss >= first + 2, "rotated on a timer: {first} → {before_loss}");
    let log = issuer.log_text();
    assert!(log.contains("wimse issuer: started"), "{log}");
    assert!(log.matches("signing key created").count() >= 2, "{log}");

    let trust = TrustHandle::default();
    let _refresh = bundle_source(&issuer).spawn(trust.clone());
    let credentials = credentials(&issuer).await;
    let _renewal = credentials.spawn_renewal();
    assert!(time_until(Duration::from_secs(5), || healthy(&credentials, &trust)).await.is_some());

    // The disk is lost: a new store, its sequence back at 1, every key new.
    issuer.kill();
    std::fs::remove_file(&store).unwrap();
    issuer.restart();
    assert!(sequence() < before_loss);
    assert!(issuer.log_text().contains("no key store found"));
    let fresh = IssuerCredentials::connect(issuer.base(), SUB, Bootstrap::Token(SECRET.into())).await.unwrap();
    let wit = fresh.credentials(SystemClock.now()).unwrap().wit().to_owned();
    // Within one refresh hint (1 s) the verifier holds the new store's keys.
    let followed = time_until(Duration::from_secs(15), || verifies(&trust, &wit)).await;
    let followed = followed.expect("the verifier never accepted the new key store");
    eprintln!("key store lost: the verifier followed the new store after {followed:?}");
    assert!(followed <= Duration::from_secs(1) + SLACK, "followed after {followed:?}");
    // And the renewing client is back too.
    assert!(time_until(Duration::from_secs(10), || healthy(&credentials, &trust)).await.is_some());
}

/// `wimse issuer replace-key-store` under a running issuer: the issuer follows the new epoch at
/// its next maintenance, and the verifier follows it too.
#[tokio::test]
async fn replacing_the_key_store_under_a_running_issuer() {
    let dir = TempDir::new("wimse-fault-replace");
    let config = write_config(&dir, 3600);
    let issuer = IssuerProcess::start(&config, &dir.path().join("issuer.log"));
    let trust = TrustHandle::default();
    let _refresh = bundle_source(&issuer).spawn(trust.clone());
    let old = IssuerCredentials::connect(issuer.base(), SUB, Bootstrap::Token(SECRET.into())).await.unwrap();
    let old_wit = old.credentials(SystemClock.now()).unwrap().wit().to_owned();
    assert!(time_until(Duration::from_secs(5), || verifies(&trust, &old_wit)).await.is_some());

    // Without --yes (and no terminal to ask on): refused, nothing changed.
    let store = std::fs::read(dir.path().join("keys.json")).unwrap();
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_wimse"))
        .args(["issuer", "replace-key-store", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"), "{}", String::from_utf8_lossy(&refused.stderr));
    assert_eq!(std::fs::read(dir.path().join("keys.json")).unwrap(), store, "the key store is untouched");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wimse"))
        .args(["issuer", "replace-key-store", "--yes", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let epochs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(epochs["old_epoch"], epochs["new_epoch"]);

    // The running issuer follows within its maintenance interval; new WITs verify, the old one
    // no longer does once the verifier refreshed.
    let new_epoch = epochs["new_epoch"].as_str().unwrap().to_owned();
    let mut followed = false;
    for _ in 0..100 {
        let bundle = reqwest::get(format!("{}/v1/bundle/spiffe", issuer.base())).await.unwrap().text().await.unwrap();
        if bundle.contains(&new_epoch) {
            followed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(followed, "{}", issuer.log_text());
    let new = IssuerCredentials::connect(issuer.base(), SUB, Bootstrap::Token(SECRET.into())).await.unwrap();
    let new_wit = new.credentials(SystemClock.now()).unwrap().wit().to_owned();
    assert!(
        time_until(Duration::from_secs(10), || verifies(&trust, &new_wit) && !verifies(&trust, &old_wit))
            .await
            .is_some()
    );
    assert!(issuer.log_text().contains("the key store was replaced"), "{}", issuer.log_text());
}

/// After a key-store loss, a workload holding a long-lived WIT signed by a lost key renews as
/// soon as its renewal task sees that the identity server no longer publishes that key (here
/// checked every second), not at its scheduled renewal half an hour later: every verifier
/// refuses that WIT as `unknown_key` meanwhile.
#[tokio::test]
async fn a_wit_signed_by_a_lost_key_is_renewed_at_once() {
    let logs = wimse_testkit::logs::Logs::global();
    let dir = TempDir::new("wimse-fault-lost-long");
    let store = dir.path().join("keys.json");
    let mut issuer = IssuerProcess::start(&write_config_with(&dir, 3600, 3600), &dir.path().join("issuer.log"));
    let trust = TrustHandle::default();
    let _refresh = bundle_source(&issuer).spawn(trust.clone());
    let credentials = IssuerCredentials::builder(issuer.base(), SUB, Bootstrap::Token(SECRET.into()))
        .timeout(TIMEOUT)
        .retry_interval(RETRY)
        .key_check_interval(Some(Duration::from_secs(1)))
        .connect()
        .await
        .unwrap();
    let _renewal = credentials.spawn_renewal();
    assert!(time_until(Duration::from_secs(5), || healthy(&credentials, &trust)).await.is_some());
    let before = credentials.credentials(SystemClock.now()).unwrap();
    assert!(before.expires_at() > SystemClock.now() + 3000, "an hour-long WIT, renewed in 30-40 minutes");

    issuer.kill();
    std::fs::remove_file(&store).unwrap();
    issuer.restart();
    // The verifier follows the new store and refuses the old WIT...
    let lost = time_until(Duration::from_secs(15), || !verifies(&trust, before.wit())).await;
    assert!(lost.is_some(), "the verifier never followed the new store");
    // ...and the workload is accepted again soon after.
    let recovery = time_until(Duration::from_secs(20), || healthy(&credentials, &trust)).await;
    let recovery = recovery.expect("the workload kept a WIT no verifier accepts");
    eprintln!("key store lost: the workload was accepted again {recovery:?} after the verifier followed");
    assert!(recovery <= Duration::from_secs(1) + TIMEOUT + SLACK, "renewed after {recovery:?}");
    let after = credentials.credentials(SystemClock.now()).unwrap();
    assert_ne!(after.issuer_kid(), before.issuer_kid());
    assert!(logs.text().contains("no longer publishes the key that signed this WIT"), "the renewal says why");
}
