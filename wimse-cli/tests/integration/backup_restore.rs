//! Backup and restore as the README's "Operations" describes them, on a real PostgreSQL: a
//! `pg_dump` of the database with the KEK kept apart; keys change and issuances happen after
//! it; `pg_restore` puts the older snapshot back under a running replica, which writes its keys
//! back within seconds (with the default one-minute maintenance), so no published key is lost
//! and the bundle's sequence never goes back; the audit table rolls back with the snapshot; a
//! replica started alone on a restored snapshot serves the snapshot's keys. Skipped without
//! PostgreSQL unless `WIMSE_REQUIRE_POSTGRES=1`.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use wimse_testkit::servers::{PostgresServer, TempDir};

use crate::common::{IssuerProcess, SECRET, SUB};

async fn issue(issuer: &IssuerProcess) {
    issuer.issue_wit().await;
}

async fn bundle(issuer: &IssuerProcess) -> Value {
    issuer.bundle().await
}

fn has_kid(bundle: &Value, kid: &str) -> bool {
    bundle["keys"].as_array().unwrap().iter().any(|k| k["kid"] == kid)
}

async fn audit_rows(postgres: &PostgresServer) -> i64 {
    let (client, connection) = tokio_postgres::connect(&postgres.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.query_one("SELECT count(*) FROM wimse_issuer_audit", &[]).await.unwrap().get(0)
}

fn run(mut command: std::process::Command) {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn a_restored_snapshot_under_a_running_replica_loses_no_key() {
    let Some(postgres) = PostgresServer::start() else { return };
    let dir = TempDir::new("wimse-backup");
    let config = dir.path().join("issuer.json");
    // The KEK from the environment: kept apart from the database and its dump.
    let kek = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    std::fs::write(
        &config,
        json!({
            "trust_domain": "spiffe://prod.example",
            "postgres": {"url": postgres.url(), "timeout_ms": 2000},
            "dev_mode": true,
            "clients": [{"name": "demo", "dev_secret": SECRET, "allowed": [SUB], "max_lifetime": 600}]
        })
        .to_string(),
    )
    .unwrap();
    let env = vec![("WIMSE_ISSUER_KEK".to_owned(), kek)];
    let mut replica = IssuerProcess::start_with_env(&config, &dir.path().join("a.log"), env.clone());
    issue(&replica).await;
    let snapshot = bundle(&replica).await;

    // The backup.
    let dump = dir.path().join("wimse.dump");
    let mut pg_dump = postgres.client("pg_dump");
    pg_dump.args(["-d", "postgres", "-Fc", "-f"]).arg(&dump);
    run(pg_dump);

    // After it: another issuance, and a key prepared (published, in the stored row).
    issue(&replica).await;
    assert_eq!(audit_rows(&postgres).await, 2);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wimse"))
        .args(["issuer", "keys", "prepare", "--config"])
        .arg(&config)
        .envs(env.clone())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let prepared = serde_json::from_slice::<Value>(&out.stdout).unwrap()["prepared"].as_str().unwrap().to_owned();
    let start = Instant::now();
    while !has_kid(&bundle(&replica).await, &prepared) {
        assert!(start.elapsed() < Duration::from_secs(5), "{}", replica.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let published = bundle(&replica).await["spiffe_sequence"].as_u64().unwrap();

    // The restore, under the running replica: the row and the audit table go back.
    let mut pg_restore = postgres.client("pg_restore");
    pg_restore.args(["-d", "postgres", "--clean", "--if-exists"]).arg(&dump);
    run(pg_restore);
    assert_eq!(audit_rows(&postgres).await, 1, "the audit table rolls back with the snapshot");
    // Within seconds (not at the next one-minute maintenance) the replica writes its keys back
    // with a higher sequence: the prepared key stays published, verifiers never see a rollback.
    let start = Instant::now();
    loop {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wimse"))
            .args(["issuer", "keys", "status", "--config"])
            .arg(&config)
            .envs(env.clone())
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains(&prepared) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "not written back:\n{}", replica.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = bundle(&replica).await;
    assert!(has_kid(&after, &prepared));
    assert!(after["spiffe_sequence"].as_u64().unwrap() > published, "{after}");
    assert!(replica.log_text().contains("wrote back the union"), "{}", replica.log_text());

    // Restored alone (no replica running): the snapshot's keys and sequence, as they were.
    replica.kill();
    let mut pg_restore = postgres.client("pg_restore");
    pg_restore.args(["-d", "postgres", "--clean", "--if-exists"]).arg(&dump);
    run(pg_restore);
    let alone = IssuerProcess::start_with_env(&config, &dir.path().join("b.log"), env);
    let served = bundle(&alone).await;
    assert!(!has_kid(&served, &prepared), "a key made after the snapshot is gone");
    assert_eq!(served["keys"], snapshot["keys"]);
    assert_eq!(served["spiffe_sequence"], snapshot["spiffe_sequence"], "behind what verifiers saw: see the README");
    issue(&alone).await;
}
