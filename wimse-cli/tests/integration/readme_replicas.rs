//! The README's replica configuration ("Several replicas: keys in PostgreSQL"), run as written:
//! its shell block is taken from the README and run by `sh` twice (two replicas, the second
//! with the first one's KEK), with only what names the reader's site replaced (the database
//! address, `/etc/wimse`, the listening address). `kubectl` and `wimse` are found on `PATH`:
//! `kubectl` is a script printing a test cluster's JWKS, `wimse` the binary under test. A
//! token as a Kubernetes cluster projects it then gets a WIT over TLS from both replicas.
//! Skipped without PostgreSQL (or curl) unless `WIMSE_REQUIRE_POSTGRES=1`.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{Map, Value, json};
use wimse_core::jose::{Algorithm, Backend, SigningKey, jws};
use wimse_core::protocol::trust::{TrustAnchors, TrustStore};
use wimse_core::protocol::wit::{WitValidation, validate_wit};
use wimse_core::time::{Clock as _, SystemClock};
use wimse_testkit::servers::{PostgresServer, TempDir, free_port};

const README: &str = include_str!("../../../README.md");
const ACCOUNT: &str = "system:serviceaccount:prod:payments";
const WORKLOAD: &str = "spiffe://prod.example/ns/prod/sa/payments";

/// The shell block after the README's "Several replicas" paragraph.
fn replica_block() -> &'static str {
    let from = README.find("**Several replicas: keys in PostgreSQL.**").expect("the README's replica paragraph");
    let start = from + README[from..].find("```sh\n").expect("its shell block") + "```sh\n".len();
    let end = start + README[start..].find("```").expect("the block's end");
    &README[start..end]
}

/// `text` with each `(from, to)` replaced; every `from` must be there (so the README cannot
/// drift away from what this test replaces).
fn replaced(text: &str, substitutions: &[(&str, String)]) -> String {
    let mut text = text.to_owned();
    for (from, to) in substitutions {
        assert!(text.contains(from), "the README block no longer contains {from:?}:\n{text}");
        text = text.replace(from, to);
    }
    text
}

/// A CA and a certificate for `localhost` it signed: (CA PEM, chain PEM, key PEM).
fn postgres_tls() -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, &issuer).unwrap();
    (ca.pem(), server.pem(), key.serialize_pem())
}

/// A replica: `sh` running the block in its own process group, killed with it when dropped.
struct Replica {
    child: Child,
    log: std::path::PathBuf,
}

impl Replica {
    fn start(script: &str, dir: &Path, path: &str) -> Self {
        use std::os::unix::process::CommandExt as _;
        let log = dir.join("replica.log");
        let mut child = Command::new("sh")
            .args(["-e", "-c", script])
            .current_dir(dir)
            .env("PATH", path)
            .env("RUST_LOG", "info")
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let replica = Self { child, log };
        assert!(line.contains("listening on"), "the README's replica did not start: {line:?}\n{}", replica.log());
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        replica
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// `curl` over TLS trusting `ca`: (status, body).
fn curl(ca: &Path, args: &[&str]) -> (u16, String) {
    let out =
        Command::new("curl").args(["-sS", "-w", "\n%{http_code}", "--cacert"]).arg(ca).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.parse().unwrap_or(0), body.to_owned())
}

#[test]
fn the_readme_replica_configuration_starts_as_written() {
    if Command::new("curl").arg("--version").output().is_err() {
        println!("skipped: curl not found");
        return;
    }
    let Some(mut postgres) = PostgresServer::start() else { return };
    let root = TempDir::new("wimse-readme-replicas");
    let etc = root.path().join("etc");
    let bin = root.path().join("bin");
    for dir in [&etc, &bin, &root.path().join("a"), &root.path().join("b")] {
        std::fs::create_dir_all(dir).unwrap();
    }

    // The database over TLS, its CA where the README says.
    let (ca, chain, key) = postgres_tls();
    postgres.enable_tls(&chain, &key);
    std::fs::write(etc.join("postgres-ca.pem"), ca).unwrap();
    // The listener's certificate.
    let listener = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    std::fs::write(etc.join("issuer.pem"), listener.cert.pem()).unwrap();
    std::fs::write(etc.join("issuer.key.pem"), listener.signing_key.serialize_pem()).unwrap();
    // The cluster: its key, and `kubectl` printing its JWKS.
    let cluster = SigningKey::generate(Algorithm::ES256).unwrap().with_kid("cluster-key-1");
    let jwks = root.path().join("cluster-jwks.source.json");
    std::fs::write(&jwks, json!({"keys": [cluster.public_jwk()]}).to_string()).unwrap();
    let kubectl = bin.join("kubectl");
    std::fs::write(
        &kubectl,
        format!("#!/bin/sh\n[ \"$*\" = \"get --raw /openid/v1/jwks\" ] || exit 64\ncat '{}'\n", jwks.display()),
    )
    .unwrap();
    std::fs::set_permissions(&kubectl, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_wimse"), bin.join("wimse")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());

    let block = replica_block();
    let script = |port: u16| {
        replaced(
            block,
            &[
                (
                    "host=db.internal dbname=wimse user=wimse",
                    format!("host=localhost port={} dbname=postgres user=wimse", postgres.port()),
                ),
                ("/etc/wimse/", format!("{}/", etc.display())),
                ("0.0.0.0:8443", format!("127.0.0.1:{port}")),
            ],
        )
    };
    let (port_a, port_b) = (free_port(), free_port());
    let a = Replica::start(&script(port_a), &root.path().join("a"), &path);
    // The second replica: the first one's KEK, the block without the line that makes one.
    std::fs::copy(root.path().join("a/issuer.kek"), root.path().join("b/issuer.kek")).unwrap();
    let second = script(port_b);
    let (first_line, rest) = second.split_once('\n').unwrap();
    assert!(first_line.contains("> issuer.kek") && first_line.contains("once"), "{first_line}");
    let b = Replica::start(rest, &root.path().join("b"), &path);

    // A token as the cluster projects it: no `typ`, presented again to either replica.
    let now = SystemClock.now();
    let mut header = Map::new();
    header.insert("kid".into(), "cluster-key-1".into());
    let claims = json!({"iss": "https://kubernetes.default.svc", "sub": ACCOUNT, "aud": ["wimse-issuer"],
                        "iat": now, "nbf": now, "exp": now + 3600,
                        "kubernetes.io": {"namespace": "prod", "serviceaccount": {"name": "payments"}}});
    let token = jws::sign_with_header(header, &claims, &cluster, Backend::default()).unwrap();
    let workload = SigningKey::generate(Algorithm::ES256).unwrap();
    let body = json!({"sub": WORKLOAD, "jwk": workload.public_jwk()}).to_string();
    let ca_file = etc.join("issuer.pem");
    let mut wits = Vec::new();
    for port in [port_a, port_b] {
        let authorization = format!("Authorization: Bearer {token}");
        let url = format!("https://127.0.0.1:{port}/v1/wit");
        let (status, answer) =
            curl(&ca_file, &["-H", &authorization, "-H", "content-type: application/json", "-d", &body, &url]);
        assert_eq!(status, 200, "{answer}\n{}\n{}", a.log(), b.log());
        let answer: Value = serde_json::from_str(&answer).unwrap();
        wits.push(answer["wit"].as_str().unwrap().to_owned());
    }
    // Each replica's WIT verifies against the other one's bundle: one key store.
    for (wit, port) in wits.iter().zip([port_b, port_a]) {
        let (status, bundle) = curl(&ca_file, &[&format!("https://127.0.0.1:{port}/v1/bundle/spiffe")]);
        assert_eq!(status, 200, "{bundle}");
        let anchors = TrustAnchors::from_spiffe_bundle_json(&bundle).unwrap();
        let store = TrustStore::new().with(crate::common::domain(), anchors);
        let verified = validate_wit(wit, &store, &WitValidation::default(), SystemClock.now()).unwrap();
        assert_eq!(verified.subject().to_string(), WORKLOAD);
    }
    // The cluster's key came from the file `kubectl` wrote.
    assert!(etc.join("cluster-jwks.json").is_file());
}
