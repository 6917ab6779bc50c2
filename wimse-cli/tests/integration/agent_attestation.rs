//! Attestation by `wimse agent`: processes are told apart by their executable (always) and by
//! their uid (when the tests run as root), each getting its own identity; an unregistered
//! process gets PermissionDenied. The callers are real processes (`wimse agent fetch`) on a
//! real Unix socket.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use wimse_testkit::servers::TempDir;

const DOMAIN: &str = "spiffe://prod.example";
const SECRET: &str = "node-agent-dev-secret-0123456789";

fn my_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A copy of the `wimse` binary at `dir/name/wimse`, executable by everyone.
fn copy_binary(dir: &Path, name: &str) -> PathBuf {
    let bin = dir.join(name);
    std::fs::create_dir(&bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = bin.join("wimse");
    std::fs::copy(env!("CARGO_BIN_EXE_wimse"), &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Runs `binary agent fetch` (as `(uid, gid)` when given) and returns its exit code, stdout,
/// stderr.
async fn fetch(binary: &Path, socket: &Path, ids: Option<(u32, u32)>) -> (i32, Value, String) {
    let mut command = tokio::process::Command::new(binary);
    command.args(["agent", "fetch", "--timeout", "5", "--socket", &format!("unix://{}", socket.display())]);
    if let Some((uid, gid)) = ids {
        command.uid(uid).gid(gid);
    }
    let output = tokio::time::timeout(Duration::from_secs(30), command.output()).await.unwrap().unwrap();
    let stdout = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output.status.code().unwrap_or(-1), stdout, String::from_utf8_lossy(&output.stderr).into_owned())
}

fn ids(svids: &Value) -> Vec<String> {
    svids["svids"]
        .as_array()
        .map(|a| a.iter().map(|s| s["spiffe_id"].as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_get_the_identities_of_their_entries() {
    let dir = TempDir::new("wimse-attestation");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let alpha = copy_binary(dir.path(), "alpha");
    let beta = copy_binary(dir.path(), "beta");
    let stranger = copy_binary(dir.path(), "stranger");
    let root = my_uid() == 0;

    // The identity server, with the agent as its one client.
    let issuer: wimse_issuer::IssuerConfig = serde_json::from_value(json!({
        "trust_domain": DOMAIN, "key_store": dir.path().join("keys.json"), "dev_mode": true,
        "clients": [{"name": "node-agent", "dev_secret": SECRET, "allowed_prefixes": [format!("{DOMAIN}/ns")], "max_lifetime": 600}]
    }))
    .unwrap();
    let issuer = Arc::new(wimse_issuer::IdentityServer::open(issuer, wimse_core::time::SystemClock).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, wimse_issuer::router(issuer)).await });

    let me = my_uid();
    let mut entries = vec![
        json!({"spiffe_id": format!("{DOMAIN}/ns/alpha"), "selectors": {"uid": me, "exe": alpha}}),
        json!({"spiffe_id": format!("{DOMAIN}/ns/beta"), "selectors": {"exe": beta}}),
    ];
    if root {
        entries.push(json!({"spiffe_id": format!("{DOMAIN}/ns/delta"), "selectors": {"uid": 64001}}));
        entries.push(json!({"spiffe_id": format!("{DOMAIN}/ns/epsilon"), "selectors": {"gid": 64005}}));
    }
    std::fs::write(dir.path().join("token"), SECRET).unwrap();
    let socket = dir.path().join("agent.sock");
    let config = wimse_agent::AgentConfig::from_json(
        &json!({
            "socket": socket, "trust_domain": DOMAIN, "x509": false, "entries": entries,
            "issuer": {"url": base, "token_file": dir.path().join("token")}
        })
        .to_string(),
    )
    .unwrap();
    let agent = Arc::new(wimse_agent::Agent::start(config).unwrap());
    assert!(agent.ready(Duration::from_secs(20)).await);
    let serving = agent.clone();
    tokio::spawn(async move { serving.serve(std::future::pending()).await.unwrap() });
    while !socket.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let (code, svids, stderr) = fetch(&alpha, &socket, None).await;
    assert_eq!((code, ids(&svids)), (0, vec![format!("{DOMAIN}/ns/alpha")]), "{stderr}");
    let (code, svids, stderr) = fetch(&beta, &socket, None).await;
    assert_eq!((code, ids(&svids)), (0, vec![format!("{DOMAIN}/ns/beta")]), "{stderr}");
    let (code, _, stderr) = fetch(&stranger, &socket, None).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("PermissionDenied") && stderr.contains("no registration entry"), "{stderr}");

    if root {
        // Same executable as alpha, another uid: alpha's entry (uid + exe) does not match,
        // delta's (uid 64001) does.
        let (code, svids, stderr) = fetch(&alpha, &socket, Some((64001, 64001))).await;
        assert_eq!((code, ids(&svids)), (0, vec![format!("{DOMAIN}/ns/delta")]), "{stderr}");
        let (code, _, stderr) = fetch(&alpha, &socket, Some((64002, 64002))).await;
        assert_eq!(code, 1, "uid 64002 has no entry: {stderr}");
        assert!(stderr.contains("PermissionDenied") && stderr.contains("uid 64002"), "{stderr}");
        // Another uid in group 64005: epsilon's entry (gid 64005) matches, by group alone.
        let (code, svids, stderr) = fetch(&alpha, &socket, Some((64006, 64005))).await;
        assert_eq!((code, ids(&svids)), (0, vec![format!("{DOMAIN}/ns/epsilon")]), "{stderr}");
    } else {
        wimse_testkit::servers::skipped("the different-uid and different-gid cases need root");
    }
}
