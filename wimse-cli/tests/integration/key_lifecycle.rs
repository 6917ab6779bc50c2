//! An operator's key lifecycle on a real PostgreSQL, with `wimse issuer` commands beside a
//! running replica: two-step rotation (`keys prepare`, `keys activate`) reaching the replica
//! within seconds; a change of key-encryption key (`previous_kek_files`, `reseal`); a lost
//! key-encryption key (`replace-key-store --kek-lost`). Skipped without PostgreSQL unless
//! `WIMSE_REQUIRE_POSTGRES=1`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use wimse_core::protocol::trust::STORE_EPOCH_MEMBER;
use wimse_testkit::servers::{PostgresServer, TempDir};

use crate::common::{IssuerProcess, SECRET, SUB};

/// A KEK file (mode 0600) of 32 bytes of `byte`.
fn kek_file(dir: &TempDir, name: &str, byte: u8) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.path().join(name);
    std::fs::write(&path, base64::engine::general_purpose::STANDARD.encode([byte; 32])).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// An identity-server configuration on `postgres` sealing with `kek`, opening with `previous`.
fn config(dir: &TempDir, name: &str, postgres: &PostgresServer, kek: &Path, previous: &[&Path]) -> PathBuf {
    let path = dir.path().join(name);
    let config = json!({
        "trust_domain": "spiffe://prod.example",
        "postgres": {"url": postgres.url(), "kek_file": kek, "previous_kek_files": previous, "timeout_ms": 2000},
        "refresh_hint": 1,
        "dev_mode": true,
        "clients": [{"name": "demo", "dev_secret": SECRET, "allowed": [SUB], "max_lifetime": 600}]
    });
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

/// `wimse issuer <args…> --config <config>`: (success, stdout as JSON or Null, stderr).
fn wimse(args: &[&str], config: &Path) -> (bool, Value, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wimse"))
        .arg("issuer")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let stdout = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The `kid` of a WIT the replica issues now.
async fn signing_kid(issuer: &IssuerProcess) -> String {
    let wit = issuer.issue_wit().await;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(wit.split('.').next().unwrap()).unwrap();
    serde_json::from_slice::<Value>(&header).unwrap()["kid"].as_str().unwrap().to_owned()
}

async fn bundle(issuer: &IssuerProcess) -> Value {
    issuer.bundle().await
}

fn kids(bundle: &Value) -> Vec<String> {
    bundle["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
}

/// Polls `check` every 100 ms for up to 5 s.
async fn within_5s<F: AsyncFnMut() -> bool>(mut check: F) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn roles(status: &Value) -> Vec<(String, String)> {
    status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["kid"].as_str().unwrap().to_owned(), k["role"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test]
async fn two_step_rotation_reaches_a_running_replica_within_seconds() {
    let Some(postgres) = PostgresServer::start() else { return };
    let dir = TempDir::new("wimse-key-rotation");
    let path = config(&dir, "issuer.json", &postgres, &kek_file(&dir, "issuer.kek", 1), &[]);
    let issuer = IssuerProcess::start(&path, &dir.path().join("issuer.log"));
    let first = signing_kid(&issuer).await;

    // Prepare: published by the running replica within seconds, signing nothing.
    let (ok, prepared, stderr) = wimse(&["keys", "prepare"], &path);
    assert!(ok, "{stderr}");
    let prepared = prepared["prepared"].as_str().unwrap().to_owned();
    let prepared_at = Instant::now();
    assert_ne!(prepared, first);
    // Not activated before verifiers can have it (two refresh hints, 2 s: asked at once).
    let (ok, _, stderr) = wimse(&["keys", "activate"], &path);
    assert!(!ok && stderr.contains("has been published for"), "{stderr}");
    assert!(within_5s(async || kids(&bundle(&issuer).await).contains(&prepared)).await, "{}", issuer.log_text());
    assert_eq!(signing_kid(&issuer).await, first, "a prepared key signs nothing");
    let (_, status, _) = wimse(&["keys", "status"], &path);
    assert_eq!(roles(&status), vec![(first.clone(), "active".into()), (prepared.clone(), "prepared".into())]);
    assert!(status["keys"][1]["active_from"].is_null());

    // One waiting key at a time.
    let (ok, _, stderr) = wimse(&["keys", "prepare"], &path);
    assert!(!ok && stderr.contains("already waits"), "{stderr}");

    // Two refresh hints (2 s) after it was published: activated, signing on the replica within seconds.
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(prepared_at.elapsed()) + Duration::from_millis(200)).await;
    let (ok, activated, stderr) = wimse(&["keys", "activate"], &path);
    assert!(ok, "{stderr}");
    assert_eq!(activated["activated"], prepared.as_str());
    assert!(within_5s(async || signing_kid(&issuer).await == prepared).await, "{}", issuer.log_text());
    assert!(kids(&bundle(&issuer).await).contains(&first), "the previous key stays published");
    let (_, status, _) = wimse(&["keys", "status"], &path);
    assert_eq!(roles(&status), vec![(first, "previous".into()), (prepared, "active".into())]);
    let (ok, _, stderr) = wimse(&["keys", "activate"], &path);
    assert!(!ok && stderr.contains("no key waits"), "{stderr}");
}

#[tokio::test]
async fn a_changed_kek_is_resealed_and_a_lost_one_replaced() {
    let Some(postgres) = PostgresServer::start() else { return };
    let dir = TempDir::new("wimse-kek");
    let (old, new, other) =
        (kek_file(&dir, "old.kek", 1), kek_file(&dir, "new.kek", 2), kek_file(&dir, "other.kek", 3));
    let with_old = config(&dir, "old.json", &postgres, &old, &[]);
    let (ok, status, stderr) = wimse(&["keys", "status"], &with_old);
    assert!(ok, "{stderr}");
    let kid = roles(&status)[0].0.clone();

    // The change: the new KEK seals, the old one still opens; reseal writes the row again.
    let swapped = config(&dir, "swapped.json", &postgres, &new, &[&old]);
    let (ok, resealed, stderr) = wimse(&["reseal"], &swapped);
    assert!(ok, "{stderr}");
    assert_eq!(resealed["resealed"], true);
    assert_eq!(wimse(&["reseal"], &swapped).1["resealed"], false, "already sealed with the new KEK");
    let (ok, _, stderr) = wimse(&["keys", "status"], &swapped);
    assert!(ok, "{stderr}");
    // Sealed with the new KEK only: the old one alone no longer opens it, the new one alone does.
    let (ok, _, stderr) = wimse(&["keys", "status"], &with_old);
    assert!(!ok && stderr.contains("do not open"), "{stderr}");
    let with_new = config(&dir, "new.json", &postgres, &new, &[]);
    let (ok, status, stderr) = wimse(&["keys", "status"], &with_new);
    assert!(ok, "{stderr}");
    assert_eq!(roles(&status)[0].0, kid, "the same keys");
    let issuer = IssuerProcess::start(&with_new, &dir.path().join("new.log"));
    let epoch = bundle(&issuer).await[STORE_EPOCH_MEMBER].as_str().unwrap().to_owned();
    drop(issuer);

    // The KEK is lost: an ordinary replacement cannot open the store; --kek-lost writes a new one.
    let with_other = config(&dir, "other.json", &postgres, &other, &[]);
    let (ok, _, stderr) = wimse(&["replace-key-store", "--yes"], &with_other);
    assert!(!ok && stderr.contains("do not open"), "{stderr}");
    let (ok, replaced, stderr) = wimse(&["replace-key-store", "--yes", "--kek-lost"], &with_other);
    assert!(ok, "{stderr}");
    assert_eq!(replaced["old_epoch"], epoch.as_str());
    let new_epoch = replaced["new_epoch"].as_str().unwrap().to_owned();
    assert_ne!(new_epoch, epoch);
    let issuer = IssuerProcess::start(&with_other, &dir.path().join("other.log"));
    let served = bundle(&issuer).await;
    assert_eq!(served[STORE_EPOCH_MEMBER], new_epoch.as_str());
    assert!(!kids(&served).contains(&kid), "every key is new");
    signing_kid(&issuer).await;
    // Not lost any more: --kek-lost is refused and changes nothing.
    let (ok, _, stderr) = wimse(&["replace-key-store", "--yes", "--kek-lost"], &with_other);
    assert!(!ok && stderr.contains("not lost"), "{stderr}");
    assert_eq!(bundle(&issuer).await[STORE_EPOCH_MEMBER], new_epoch.as_str());
    // A file store has no KEK to lose.
    let file_config = dir.path().join("file.json");
    std::fs::write(
        &file_config,
        json!({"trust_domain": "spiffe://prod.example", "key_store": dir.path().join("keys.json"), "dev_mode": true,
               "clients": [{"name": "demo", "dev_secret": SECRET, "allowed": [SUB], "max_lifetime": 600}]})
        .to_string(),
    )
    .unwrap();
    let (ok, _, stderr) = wimse(&["replace-key-store", "--yes", "--kek-lost"], &file_config);
    assert!(!ok && stderr.contains("not sealed"), "{stderr}");
    assert_eq!(wimse(&["reseal"], &file_config).1["resealed"], false);
}
