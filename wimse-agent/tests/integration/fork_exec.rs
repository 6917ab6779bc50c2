//! Connect-fork-exec: a connection is served as the process that opened it, running the
//! executable it ran when the agent accepted the connection. A child holding an inherited
//! connection gets nothing once its parent has exited or run another executable (a registered
//! one included), and a stream stops when that happens; a process on its own connection, and a
//! process that re-executes the same file, are served.
//!
//! The scenarios are in `tests/python/fork_exec.py`; skipped without a Python that has
//! `spiffe` and `h2`, unless `WIMSE_REQUIRE_PYTHON_SPIFFE=1`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{DOMAIN, Issuer, RunningAgent, my_ids, python_script, spiffe_python, start_agent};
use serde_json::{Value, json};
use wimse_testkit::servers::TempDir;

/// Two registered executables, both for this uid: the Python interpreter (`/ns/python`) and a
/// copy of `sleep` that nothing else runs (`/ns/sleeper`).
struct Setup {
    python: PathBuf,
    sleeper: PathBuf,
    agent: RunningAgent,
    dir: TempDir,
    _issuer: Issuer,
}

async fn setup() -> Option<Setup> {
    let python = spiffe_python()?;
    let real_python = std::process::Command::new(&python)
        .args(["-c", "import os, sys; print(os.path.realpath(sys.executable))"])
        .output()
        .unwrap();
    let real_python = String::from_utf8(real_python.stdout).unwrap().trim().to_owned();
    let dir = TempDir::new("wimse-fork-exec");
    let sleeper = dir.path().join("sleeper");
    std::fs::copy(wimse_testkit::servers::find_binary("sleep").expect("sleep"), &sleeper).unwrap();
    let uid = my_ids().0;
    let entries = json!([
        {"spiffe_id": format!("{DOMAIN}/ns/python"), "selectors": {"uid": uid, "exe": real_python}},
        {"spiffe_id": format!("{DOMAIN}/ns/sleeper"), "selectors": {"uid": uid, "exe": sleeper}},
    ]);
    let issuer = Issuer::start(600).await;
    let agent = start_agent(&issuer, entries, json!({})).await;
    Some(Setup { python, sleeper, agent, dir, _issuer: issuer })
}

/// Runs a scenario of `fork_exec.py`; returns its result and the pid of the process that
/// connected.
async fn scenario(setup: &Setup, name: &str, binary: &Path) -> (Value, u32) {
    let result = setup.dir.path().join(format!("{name}.json"));
    let mut connector = tokio::process::Command::new(&setup.python)
        .arg(python_script("fork_exec.py"))
        .args([name, &setup.agent.socket.display().to_string(), &result.display().to_string()])
        .arg(binary)
        .env("PYTHONWARNINGS", "ignore")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = connector.id().unwrap();
    if name == "parent-exits" {
        // Reaped here, so that its pid is gone.
        assert!(connector.wait().await.unwrap().success());
    }
    if name == "stream-parent-execs" {
        wait_for(&result.with_extension("json.ready")).await;
        setup.agent.agent.rotate();
    }
    wait_for(&result).await;
    let _ = connector.start_kill();
    let _ = connector.wait().await;
    (serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap(), pid)
}

async fn wait_for(file: &Path) {
    for _ in 0..1500 {
        if file.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} never appeared", file.display());
}

fn served(path: &str) -> Value {
    json!({"status": "0", "spiffe_ids": [format!("{DOMAIN}{path}")]})
}

/// The refusal: PermissionDenied (gRPC status 7) with this message, and a log line naming the
/// reason and the connecting process.
fn assert_refused(result: &Value, message: &str, reason: &str, pid: u32) {
    assert_eq!(result["status"], "7", "{result}");
    assert!(result["message"].as_str().is_some_and(|m| m.contains(message)), "{result}");
    let logs = wimse_testkit::logs::Logs::global();
    let lines = logs.lines_with(&["call refused", &format!("reason=\"{reason}\""), &format!("pid={pid}")]);
    assert!(!lines.is_empty(), "no log line for {reason} and pid {pid}");
}

/// The finding: Python connects, forks, and execs the registered `sleeper`; the child, still
/// Python, asks over the inherited connection and used to get `/ns/sleeper`.
#[tokio::test]
async fn a_parent_exec_of_a_registered_binary_does_not_serve_the_child() {
    let _ = wimse_testkit::logs::Logs::global();
    let Some(setup) = setup().await else { return };
    let (result, pid) = scenario(&setup, "parent-execs", &setup.sleeper).await;
    assert_refused(&result, "exec after connect", "executable_changed", pid);
}

/// The parent execs an unregistered binary (`sleep` itself: another file than the copy).
#[tokio::test]
async fn a_parent_exec_of_another_binary_does_not_serve_the_child() {
    let _ = wimse_testkit::logs::Logs::global();
    let Some(setup) = setup().await else { return };
    let sleep = wimse_testkit::servers::find_binary("sleep").unwrap();
    let (result, pid) = scenario(&setup, "parent-execs", &sleep).await;
    assert_refused(&result, "exec after connect", "executable_changed", pid);
}

/// The parent exits (and is reaped): its child holding the connection gets nothing.
#[tokio::test]
async fn a_parent_exit_does_not_serve_the_child() {
    let _ = wimse_testkit::logs::Logs::global();
    let Some(setup) = setup().await else { return };
    let (result, pid) = scenario(&setup, "parent-exits", &setup.sleeper).await;
    assert_refused(&result, "has exited", "process_gone", pid);
}

/// A stream opened while the parent ran Python ends, refused, at the first update after the
/// parent execs `sleeper`, instead of carrying rotated credentials to the child.
#[tokio::test]
async fn a_stream_stops_when_the_connecting_process_execs() {
    let _ = wimse_testkit::logs::Logs::global();
    let Some(setup) = setup().await else { return };
    let (result, pid) = scenario(&setup, "stream-parent-execs", &setup.sleeper).await;
    assert_eq!(result["first"], served("/ns/python"), "{result}");
    assert_refused(&result["next"], "exec after connect", "executable_changed", pid);
}

/// Neighbours: the child on a connection of its own is served as what it runs (Python), and a
/// process that execs its own executable again keeps its connection.
#[tokio::test]
async fn own_connections_and_re_executing_the_same_file_are_served() {
    let Some(setup) = setup().await else { return };
    let (result, _) = scenario(&setup, "child-own", &setup.sleeper).await;
    assert_eq!(result, served("/ns/python"));
    let (result, _) = scenario(&setup, "reexec-self", &setup.sleeper).await;
    assert_eq!(result, served("/ns/python"));
}
