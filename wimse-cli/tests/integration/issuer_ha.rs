//! Two `wimse issuer serve` replicas on one PostgreSQL: clients renew through both in turn,
//! rotation is forced every few seconds, one replica is killed mid-run. Every WIT verifies
//! against either live replica's bundle, each rotation makes exactly one key, no renewal fails
//! after one retry, and every issuance is an audit row. Skipped without PostgreSQL unless
//! `WIMSE_REQUIRE_POSTGRES=1`.

use std::time::{Duration, Instant};

use crate::common::{IssuerProcess, SECRET, SUB};
use base64::Engine as _;
use serde_json::{Value, json};
use wimse_core::jose::{Algorithm, SigningKey};
use wimse_core::protocol::trust::{TrustAnchors, TrustStore};
use wimse_core::protocol::wit::{WitValidation, validate_wit};
use wimse_core::time::{Clock as _, SystemClock};
use wimse_testkit::servers::{PostgresServer, TempDir};

const ROTATION: u64 = 4;

async fn bundle(http: &reqwest::Client, base: &str) -> Option<Value> {
    let response = http.get(format!("{base}/v1/bundle/spiffe")).send().await.ok()?;
    serde_json::from_str(&response.text().await.ok()?).ok()
}

fn verifies_against(bundle: &Value, wit: &str) -> bool {
    let anchors = TrustAnchors::from_spiffe_bundle_json(&bundle.to_string()).unwrap();
    let store = TrustStore::new().with(crate::common::domain(), anchors);
    validate_wit(wit, &store, &WitValidation::default(), SystemClock.now()).is_ok()
}

async fn issue(http: &reqwest::Client, base: &str, key: &SigningKey) -> Result<String, String> {
    let response = http
        .post(format!("{base}/v1/wit"))
        .bearer_auth(SECRET)
        .header("content-type", "application/json")
        .body(json!({"sub": SUB, "jwk": key.public_jwk()}).to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let text = response.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status} {text}"));
    }
    let body: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    body["wit"].as_str().map(str::to_owned).ok_or(text)
}

#[tokio::test]
async fn two_replicas_one_postgres_rotation_and_a_dead_replica() {
    let Some(postgres) = PostgresServer::start() else { return };
    let dir = TempDir::new("wimse-ha");
    let config = dir.path().join("issuer.json");
    let kek = base64::engine::general_purpose::STANDARD.encode([42u8; 32]);
    std::fs::write(
        &config,
        json!({
            "trust_domain": "spiffe://prod.example",
            "postgres": {"url": postgres.url(), "timeout_ms": 1000},
            "rotation_period": ROTATION,
            "refresh_hint": 1,
            "dev_mode": true,
            "clients": [{"name": "demo", "dev_secret": SECRET, "allowed": [SUB], "max_lifetime": 6}],
            "rate_limits": {"per_source": {"burst": 1000, "per_minute": 60000}, "per_client": {"burst": 1000, "per_minute": 60000}}
        })
        .to_string(),
    )
    .unwrap();
    // The key-encryption key from the environment (the default variable).
    let env = vec![("WIMSE_ISSUER_KEK".to_owned(), kek)];
    let a = IssuerProcess::start_with_env(&config, &dir.path().join("a.log"), env.clone());
    let mut b = IssuerProcess::start_with_env(&config, &dir.path().join("b.log"), env);
    let replicas = [a.base(), b.base()];
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let key = SigningKey::generate(Algorithm::ES256).unwrap();

    let start = Instant::now();
    let mut killed = false;
    let (mut issued, mut failed_attempts, mut failed_renewals) = (0u64, 0u64, 0u64);
    let mut kids = std::collections::BTreeSet::new();
    let mut turn = 0usize;
    while start.elapsed() < Duration::from_secs(18) {
        if !killed && start.elapsed() > Duration::from_secs(7) {
            b.kill();
            killed = true;
        }
        // A renewal: the next replica in turn, and on failure one retry at the other.
        let mut wit = None;
        for attempt in 0..2 {
            let base = &replicas[(turn + attempt) % 2];
            match issue(&http, base, &key).await {
                Ok(token) => {
                    wit = Some(token);
                    break;
                }
                Err(error) => {
                    if failed_attempts == 0 {
                        eprintln!("first failed attempt, {base} after {:?}: {error}", start.elapsed());
                    }
                    failed_attempts += 1
                }
            }
        }
        turn += 1;
        let Some(wit) = wit else {
            failed_renewals += 1;
            continue;
        };
        issued += 1;
        // Every live replica's bundle verifies it.
        let mut live = 0;
        for base in &replicas {
            if let Some(bundle) = bundle(&http, base).await {
                live += 1;
                assert!(verifies_against(&bundle, &wit), "a WIT {base} cannot verify after {:?}", start.elapsed());
                for k in bundle["keys"].as_array().unwrap() {
                    kids.insert(k["kid"].as_str().unwrap().to_owned());
                }
            }
        }
        assert!(live >= 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{issued} renewals, {failed_attempts} failed attempts, {} keys", kids.len());
    assert_eq!(failed_renewals, 0, "no renewal fails after one retry");
    assert!(failed_attempts > 0, "the killed replica was asked, and failed");

    // Exactly one new key per rotation: key ids carry their creation second; two replicas
    // rotating the same period would make two keys close together.
    let mut created: Vec<u64> = kids.iter().map(|kid| kid.split('-').nth(1).unwrap().parse().unwrap()).collect();
    created.sort();
    assert!(created.len() >= 4, "rotation was forced: {kids:?}");
    for pair in created.windows(2) {
        assert!(pair[1] - pair[0] >= ROTATION - 2, "two keys for one rotation: {kids:?}");
    }

    // One audit row per issuance, none with a token in it.
    let (db, connection) = tokio_postgres::connect(&postgres.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let rows = db.query("SELECT replica, key_id, identifier FROM wimse_issuer_audit", &[]).await.unwrap();
    assert_eq!(rows.len() as u64, issued);
    let replicas_seen: std::collections::BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(replicas_seen.len(), 2, "both replicas issued");
    assert!(rows.iter().all(|r| r.get::<_, String>(2) == SUB && !r.get::<_, String>(1).starts_with("eyJ")));
    let log = a.log_text();
    assert!(log.contains("signing key created"), "{log}");
}
