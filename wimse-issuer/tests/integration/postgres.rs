//! PostgreSQL storage against a real, throwaway PostgreSQL cluster: sealed keys, one rotation
//! across replicas, audit rows, a lost row, a wrong key-encryption key, and PostgreSQL down
//! (issuance 503, bundles still served). Skipped without PostgreSQL unless
//! `WIMSE_REQUIRE_POSTGRES=1`.

use std::sync::Arc;

use serde_json::{Value, json};
use wimse_core::ErrorKind;
use wimse_core::jose::{Algorithm, SigningKey};
use wimse_core::time::FixedClock;
use wimse_issuer::{IdentityServer, IssuerConfig};
use wimse_testkit::servers::{PostgresServer, TempDir};

const NOW: u64 = 1_800_000_000;
const SECRET: &str = "a-dev-secret-for-tests";
const SUB: &str = "spiffe://prod.example/demo";

fn kek_file(dir: &TempDir, byte: u8) -> std::path::PathBuf {
    use base64::Engine as _;
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.path().join(format!("kek-{byte}"));
    std::fs::write(&path, base64::engine::general_purpose::STANDARD.encode([byte; 32])).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn config(postgres: &PostgresServer, kek: &std::path::Path) -> IssuerConfig {
    serde_json::from_value(json!({
        "trust_domain": "spiffe://prod.example",
        "postgres": {"url": postgres.url(), "kek_file": kek, "timeout_ms": 1500},
        "rotation_period": 3600,
        "refresh_hint": 60,
        "dev_mode": true,
        "clients": [{"name": "demo", "dev_secret": SECRET, "allowed": [SUB], "max_lifetime": 600}]
    }))
    .unwrap()
}

async fn sql(postgres: &PostgresServer) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&postgres.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Opens a replica, retrying while a just-started PostgreSQL does not accept queries yet.
async fn replica(config: IssuerConfig, clock: Arc<FixedClock>) -> IdentityServer {
    for _ in 0..50 {
        match IdentityServer::open(config.clone(), clock.clone()).await {
            Ok(server) => return server,
            Err(e) if e.kind() == &ErrorKind::KeyStoreUnavailable => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    panic!("PostgreSQL did not come up")
}

fn kids(bundle: &Value) -> Vec<String> {
    bundle["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn replicas_share_sealed_keys_rotate_once_and_audit_every_issuance() {
    let Some(postgres) = PostgresServer::start() else { return };
    let dir = TempDir::new("wimse-issuer-pg");
    let kek = kek_file(&dir, 1);
    let clock = Arc::new(FixedClock::new(NOW));
    let a = replica(config(&postgres, &kek), clock.clone()).await;
    let b = replica(config(&postgres, &kek), clock.clone()).await;
    assert_eq!(a.key_state(), b.key_state(), "one store, one epoch");
    assert_eq!(kids(&a.spiffe_bundle()), kids(&b.spiffe_bundle()));

    // Private keys are sealed: the row holds neither a JWK's `d` nor the CA's PEM key.
    let db = sql(&postgres).await;
    let row = db.query_one("SELECT sealed, epoch, sequence FROM wimse_issuer_state", &[]).await.unwrap();
    let sealed: Vec<u8> = row.get(0);
    // Not the key state in clear, which is JSON naming every key by its id and holding the
    // CA's PEM key. (Looking for three-byte markers like `"d"` in the ciphertext instead
    // failed at random: they turn up in a few KiB of random bytes now and then.)
    assert!(serde_json::from_slice::<Value>(&sealed).is_err(), "sealed: not JSON");
    let text = String::from_utf8_lossy(&sealed);
    assert!(!text.contains("-----BEGIN"), "sealed: no PEM");
    for kid in kids(&a.spiffe_bundle()) {
        assert!(!text.contains(&kid), "sealed: no key id in clear");
    }
    assert_eq!(row.get::<_, String>(1), a.key_state().0);

    // Rotation due on both at once: exactly one new key.
    clock.set(NOW + 3600 - 60);
    let (ra, rb) = tokio::join!(a.maintain(), b.maintain());
    assert!(ra.unwrap() | rb.unwrap());
    a.maintain().await.unwrap();
    b.maintain().await.unwrap();
    let published = kids(&a.spiffe_bundle());
    assert_eq!(published.len(), 2, "{published:?}");
    assert_eq!(published, kids(&b.spiffe_bundle()));
    assert_eq!(a.key_state(), b.key_state());

    // Issuance through either replica: one audit row each, no token in it.
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let from_a = a.issue_wit(SECRET, SUB, key.public_jwk(), Some(300)).await.unwrap();
    // Pre-published two refresh hints (120 s) ahead of signing.
    clock.set(NOW + 3540 + 120);
    let from_b = b.issue_wit(SECRET, SUB, key.public_jwk(), None).await.unwrap();
    let rows = db
        .query("SELECT kind, client, identifier, lifetime, key_id, replica FROM wimse_issuer_audit ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    // Every column holds exactly what it should, so none holds a token. (Checking instead that
    // no column value occurs inside either WIT failed at random: "wit" turns up in the
    // base64url of one of them about once in a thousand runs.)
    let kid =
        |wit: &str| wimse_core::jose::jws::parse(wit, 8192).unwrap().header_str("kid").unwrap().unwrap().to_owned();
    for (row, wit, lifetime) in [(&rows[0], &from_a.wit, 300), (&rows[1], &from_b.wit, 600)] {
        assert_eq!(row.get::<_, String>(0), "wit");
        assert_eq!(row.get::<_, String>(1), "demo");
        assert_eq!(row.get::<_, String>(2), SUB);
        assert_eq!(row.get::<_, i64>(3), lifetime);
        assert_eq!(row.get::<_, String>(4), kid(wit), "the key that signed it");
        assert_eq!(row.get::<_, String>(5).len(), 12, "a replica id");
    }
    assert_ne!(rows[0].get::<_, String>(5), rows[1].get::<_, String>(5), "two replicas");
    assert_ne!(rows[0].get::<_, String>(4), rows[1].get::<_, String>(4), "the second key signs after activation");
}

#[tokio::test]
async fn a_lost_row_is_written_back_and_a_wrong_kek_refuses_to_start() {
    let Some(postgres) = PostgresServer::start() else { return };
    let dir = TempDir::new("wimse-issuer-pg");
    let kek = kek_file(&dir, 2);
    let clock = Arc::new(FixedClock::new(NOW));
    let a = replica(config(&postgres, &kek), clock.clone()).await;
    let before = a.key_state();
    let db = sql(&postgres).await;
    db.execute("DELETE FROM wimse_issuer_state", &[]).await.unwrap();
    a.maintain().await.unwrap();
    let row = db.query_one("SELECT epoch FROM wimse_issuer_state", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), before.0, "the replica's keys, same epoch");

    let wrong = kek_file(&dir, 3);
    let err = IdentityServer::open(config(&postgres, &wrong), clock.clone()).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration);
    assert!(err.detail().unwrap().contains("key-encryption key"), "{err:?}");

    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = IdentityServer::open(config(&postgres, &kek), clock).await.unwrap_err();
    assert!(err.detail().unwrap().contains("kek_file"), "{err:?}");
}

/// PostgreSQL frozen: issuance answers 503 `key_store_unavailable` within the database timeout,
/// the bundle is still served (verification is unaffected), and issuance resumes when it thaws.
#[tokio::test]
async fn postgres_down_refuses_issuance_and_keeps_bundles() {
    let Some(postgres) = PostgresServer::start() else { return };
    let dir = TempDir::new("wimse-issuer-pg");
    let kek = kek_file(&dir, 4);
    let clock = Arc::new(FixedClock::new(NOW));
    let server = Arc::new(replica(config(&postgres, &kek), clock.clone()).await);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = wimse_issuer::router(server.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let http = reqwest::Client::new();
    let issue = || {
        http.post(format!("{base}/v1/wit"))
            .bearer_auth(SECRET)
            .json(&json!({"sub": SUB, "jwk": key.public_jwk()}))
            .send()
    };
    assert_eq!(issue().await.unwrap().status(), 200);

    postgres.pause();
    let refused = issue().await.unwrap();
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["reason"], "key_store_unavailable");
    assert!(server.maintain().await.is_err(), "maintenance fails too, and says so");
    let bundle = http.get(format!("{base}/v1/bundle/spiffe")).send().await.unwrap();
    assert_eq!(bundle.status(), 200);
    let anchors =
        wimse_core::protocol::trust::TrustAnchors::from_spiffe_bundle_json(&bundle.text().await.unwrap()).unwrap();
    assert!(!anchors.keys().is_empty());

    postgres.resume();
    let mut recovered = false;
    for _ in 0..20 {
        if issue().await.unwrap().status() == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(recovered, "issuance resumes once PostgreSQL answers");
}

/// A CA and a certificate for `localhost` signed by it: (CA PEM, chain PEM, key PEM).
fn tls_material() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&server_key, &issuer).unwrap();
    (ca.pem(), server.pem(), server_key.serialize_pem())
}

/// With `ca_file` the storage speaks TLS and checks the server's certificate; a remote server
/// without TLS settings is refused at start.
#[tokio::test]
async fn tls_to_postgres() {
    let Some(mut postgres) = PostgresServer::start() else { return };
    let dir = TempDir::new("wimse-issuer-pg-tls");
    let (ca, chain, key) = tls_material();
    postgres.enable_tls(&chain, &key);
    let ca_file = dir.write_file("ca.pem", &ca);
    let (other_ca, _, _) = tls_material();
    let other_ca_file = dir.write_file("other-ca.pem", &other_ca);
    let kek = kek_file(&dir, 5);
    let with = |url: String, ca_file: Option<&std::path::Path>| -> IssuerConfig {
        let mut config = config(&postgres, &kek);
        let postgres = config.postgres.as_mut().unwrap();
        postgres.url = url;
        postgres.ca_file = ca_file.map(Into::into);
        config
    };
    let url = format!("host=localhost port={} user=wimse dbname=postgres", postgres.port());
    let server = replica(with(url.clone(), Some(&ca_file)), Arc::new(FixedClock::new(NOW))).await;
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    server.issue_wit(SECRET, SUB, key.public_jwk(), None).await.unwrap();
    // The audit row went over TLS: PostgreSQL says which connections use it.
    let db = sql(&postgres).await;
    let tls_sessions: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE ssl AND usename = 'wimse'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(tls_sessions >= 1, "the storage's connections use TLS");

    // A certificate from another authority is refused: the same server and URL, only the CA
    // differs, and the refusal is the TLS handshake's (PostgreSQL itself is up; "down" below
    // reads differently).
    let err = IdentityServer::open(with(url.clone(), Some(&other_ca_file)), FixedClock::new(NOW)).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::KeyStoreUnavailable, "{err:?}");
    assert!(err.detail().unwrap().contains("postgres: error performing TLS handshake"), "{err:?}");
    // A remote host without TLS settings does not start (nothing is sent).
    let remote = "host=db.prod.example user=wimse dbname=wimse".to_owned();
    let err = IdentityServer::open(with(remote, None), FixedClock::new(NOW)).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::InvalidConfiguration);
    assert!(err.detail().unwrap().contains("postgres.ca_file"), "{err:?}");
    // PostgreSQL down, with the right CA: no connection at all, which says so.
    let trusted = with(url, Some(&ca_file));
    postgres.stop();
    let err = IdentityServer::open(trusted, FixedClock::new(NOW)).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::KeyStoreUnavailable, "{err:?}");
    assert!(err.detail().unwrap().contains("postgres: error connecting to server"), "{err:?}");
}

#[tokio::test]
async fn a_txn_token_request_proof_is_claimed_once_across_replicas() {
    let Some(postgres) = PostgresServer::start() else { return };
    let dir = TempDir::new("wimse-issuer-pg-tts");
    let kek = kek_file(&dir, 3);
    let clock = Arc::new(FixedClock::new(NOW));
    let endpoint = "https://issuer.prod.example/v1/token";
    let mut config = config(&postgres, &kek);
    config.token_endpoint = Some(endpoint.into());
    config.txn_tokens = Some(
        serde_json::from_value(json!({"requesters": [{"workloads": [SUB], "scopes": ["orders.read"],
                                                      "subject_token_types": ["unsigned_json"]}]}))
        .unwrap(),
    );
    let a = replica(config.clone(), clock.clone()).await;
    let b = replica(config, clock.clone()).await;
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let wit = a.issue_wit(SECRET, SUB, key.public_jwk(), None).await.unwrap().wit;
    let wpt = wimse_core::protocol::wpt::WptBuilder::new(&key, &wit, endpoint).sign(NOW).unwrap();
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("workload-identity-token", wit.parse().unwrap());
    headers.insert("authorization", format!("WPT {wpt}").parse().unwrap());
    let requester = a.authenticate_requester(&headers).await.unwrap();
    // The same proof at the other replica: already claimed in PostgreSQL.
    assert_eq!(b.authenticate_requester(&headers).await.unwrap_err().kind(), &ErrorKind::ReplayedProof);
    let request = wimse_issuer::TxnTokenRequest::unsigned("batch-7", "orders.read").audience("spiffe://prod.example");
    let issued = a.issue_txn_token(&requester, &request).await.unwrap();
    // Any replica's keys verify it; the issuance is audited in PostgreSQL.
    let keys = wimse_core::protocol::trust::TrustStore::new()
        .with("spiffe://prod.example".parse().unwrap(), b.anchors().unwrap());
    let validation = wimse_core::protocol::txn::TxnTokenValidation::new("spiffe://prod.example".parse().unwrap());
    let txn = wimse_core::protocol::txn::validate(&issued.token, &keys, &validation, NOW).unwrap();
    assert_eq!((txn.subject(), txn.txn()), ("batch-7", issued.txn.as_deref().unwrap()));
    let db = sql(&postgres).await;
    let kinds: Vec<String> =
        db.query("SELECT kind FROM wimse_issuer_audit", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert!(kinds.iter().any(|k| k == "txn-token"), "{kinds:?}");
}

/// A verifier alternating between replicas, admitting bundles as `BundleSource` does: within one
/// key-store epoch the sequence may not go backwards.
#[derive(Default)]
struct Alternating {
    epoch: Option<String>,
    seen: Vec<u64>,
}

impl Alternating {
    fn read(&mut self, replica: &IdentityServer) {
        let bundle = replica.spiffe_bundle();
        let epoch = bundle[wimse_issuer::STORE_EPOCH_MEMBER].as_str().unwrap().to_owned();
        assert_eq!(self.epoch.get_or_insert_with(|| epoch.clone()), &epoch, "one store throughout");
        self.seen.push(bundle["spiffe_sequence"].as_u64().unwrap());
    }

    fn rollbacks(&self) -> usize {
        self.seen.windows(2).filter(|pair| pair[1] < pair[0]).count()
    }
}

/// The row's sequence and its row version (`xmin` changes with every write).
async fn stored_version(db: &tokio_postgres::Client) -> (i64, String) {
    let row = db.query_one("SELECT sequence, xmin::text FROM wimse_issuer_state", &[]).await.unwrap();
    (row.get(0), row.get(1))
}

/// Issue 23 item 16: one replica's routine retirement looked like divergence to the other,
/// which logged an ERROR, wrote back the union (the retired key again) and jumped the sequence
/// by two, so that a verifier reading that replica and then the first saw the sequence fall.
/// Now a rotation and a retirement on replica A are adopted by replica B as they are: no ERROR,
/// no write by B, the sequence up by exactly the two steps taken, and no rollback for a
/// verifier reading each replica after its latest maintenance, in turn. A stale backup put back
/// is still a divergence: logged, and the union written back above every published sequence.
#[tokio::test]
async fn a_peer_retirement_is_adopted_without_a_merge() {
    let Some(postgres) = PostgresServer::start() else { return };
    let logs = wimse_testkit::logs::Logs::global();
    let dir = TempDir::new("wimse-issuer-pg-retire");
    let kek = kek_file(&dir, 6);
    let mut config = config(&postgres, &kek);
    // Its own trust domain, so the log lines checked are this test's.
    config.trust_domain = "spiffe://retire.example".into();
    config.clients[0].allowed = vec!["spiffe://retire.example/demo".into()];
    let errors = || logs.lines_with(&["ERROR", "spiffe://retire.example"]);
    let clock = Arc::new(FixedClock::new(NOW));
    let a = replica(config.clone(), clock.clone()).await;
    let b = replica(config, clock.clone()).await;
    let db = sql(&postgres).await;
    let backup = db.query_one("SELECT epoch, sequence, sealed FROM wimse_issuer_state", &[]).await.unwrap();
    let (start, _) = stored_version(&db).await;
    let mut verifier = Alternating::default();
    verifier.read(&a);
    verifier.read(&b);

    // Rotation (period 3600 s, published two refresh hints, 120 s, ahead), on A.
    clock.set(NOW + 3600 - 120);
    assert!(a.maintain().await.unwrap());
    verifier.read(&a);
    let written = stored_version(&db).await;
    assert_eq!(written.0, start + 1);
    assert!(b.maintain().await.unwrap());
    assert_eq!(stored_version(&db).await, written, "B wrote nothing");
    verifier.read(&b);
    verifier.read(&a);
    assert_eq!(kids(&a.spiffe_bundle()).len(), 2);

    // Retirement of the first key once the second has signed for the longest WIT lifetime
    // (600 s), on A; B adopts it at its next maintenance.
    clock.set(NOW + 3600 + 600);
    assert!(a.maintain().await.unwrap());
    verifier.read(&a);
    let retired = stored_version(&db).await;
    assert_eq!(retired.0, start + 2, "one step for the retirement");
    assert!(b.maintain().await.unwrap());
    assert_eq!(stored_version(&db).await, retired, "B wrote nothing back");
    verifier.read(&b);
    verifier.read(&a);
    assert!(!a.maintain().await.unwrap() && !b.maintain().await.unwrap(), "nothing left to do");
    verifier.read(&a);
    verifier.read(&b);
    assert_eq!(stored_version(&db).await, retired);
    assert_eq!(a.key_state(), b.key_state());
    assert_eq!(b.key_state().1, (start + 2) as u64);
    assert_eq!(kids(&b.spiffe_bundle()).len(), 1);
    assert_eq!(verifier.rollbacks(), 0, "sequences seen: {:?}", verifier.seen);
    assert_eq!(errors(), Vec::<String>::new());

    // A stale backup of the same store put back: a divergence, logged, the keys the replicas
    // published kept, and a sequence above everything published.
    let (epoch, sequence, sealed): (String, i64, Vec<u8>) = (backup.get(0), backup.get(1), backup.get(2));
    db.execute("UPDATE wimse_issuer_state SET epoch = $1, sequence = $2, sealed = $3", &[&epoch, &sequence, &sealed])
        .await
        .unwrap();
    let current = kids(&a.spiffe_bundle());
    a.maintain().await.unwrap();
    b.maintain().await.unwrap();
    verifier.read(&a);
    verifier.read(&b);
    let diverged = logs.lines_with(&["ERROR", "spiffe://retire.example", "diverged"]);
    assert_eq!(diverged.len(), 1, "{diverged:?}");
    assert!(stored_version(&db).await.0 > start + 2);
    assert!(kids(&b.spiffe_bundle()).iter().all(|kid| current.contains(kid)) && kids(&b.spiffe_bundle()) == current);
    assert_eq!(verifier.rollbacks(), 0, "sequences seen: {:?}", verifier.seen);
}
