//! `wimse agent fetch` pointed at a Workload API socket it cannot use says which path and what
//! is wrong with it: missing, or not allowed to this process (a real process of another uid).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use wimse_testkit::servers::TempDir;

fn my_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A copy of the `wimse` binary that every user may run.
fn runnable_binary(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = bin.join("wimse");
    std::fs::copy(env!("CARGO_BIN_EXE_wimse"), &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Runs `binary agent fetch --socket unix://<socket>` (as `uid` when given); its exit code and
/// standard error.
async fn fetch(binary: &Path, socket: &Path, uid: Option<u32>) -> (i32, String) {
    let mut command = tokio::process::Command::new(binary);
    command.args(["agent", "fetch", "--timeout", "5", "--socket", &format!("unix://{}", socket.display())]);
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    command.kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(30), command.output()).await.unwrap().unwrap();
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn a_missing_socket_is_named() {
    let dir = TempDir::new("wimse-fetch-missing");
    let socket = dir.path().join("agent.sock");
    let (code, stderr) = fetch(Path::new(env!("CARGO_BIN_EXE_wimse")), &socket, None).await;
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "wimse: no Workload API socket at {}: is the agent running? set SPIFFE_ENDPOINT_SOCKET (unix:///path) to its socket",
            socket.display()
        )
    );
}

/// A socket whose permissions leave this process out: as root, the caller runs as `nobody`
/// (root passes every permission check); otherwise the socket is made inaccessible.
#[tokio::test]
async fn a_socket_this_process_may_not_use_is_named() {
    let dir = TempDir::new("wimse-fetch-denied");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = runnable_binary(dir.path());
    let socket = dir.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let caller = if my_uid() == 0 {
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o700)).unwrap();
        Some(65534)
    } else {
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o000)).unwrap();
        None
    };
    let (code, stderr) = fetch(&binary, &socket, caller).await;
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "wimse: this process may not connect to the Workload API socket at {} (permission denied): its user needs write permission on the socket and search permission on each directory above it",
            socket.display()
        )
    );
}
