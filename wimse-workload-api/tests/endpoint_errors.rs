//! A Workload API endpoint that cannot be reached says where it looked and what is wrong: no
//! socket at the path, a path that is not a socket, a socket nobody listens on. (A socket this
//! process may not connect to is tested with real processes of another uid in
//! `wimse-cli/tests/integration/agent_endpoint_errors.rs`.)

use std::path::Path;
use std::time::Duration;

use wimse_testkit::servers::TempDir;
use wimse_workload_api::{Endpoint, WitBundleWatch, WitSvidSource, WorkloadApiClient, WorkloadApiError};

fn unix(path: &Path) -> Endpoint {
    Endpoint::parse(&format!("unix://{}", path.display())).unwrap()
}

/// A short wait at start, so the tests do not take the default 10 s.
async fn start_source(endpoint: Endpoint) -> WorkloadApiError {
    WitSvidSource::builder(endpoint)
        .timeout(Duration::from_millis(1500))
        .retry_interval(Duration::from_millis(100))
        .start()
        .await
        .unwrap_err()
}

#[tokio::test]
async fn a_missing_socket_is_named_with_what_to_do() {
    let logs = wimse_testkit::logs::Logs::global();
    let dir = TempDir::new("wimse-missing-socket");
    let path = dir.path().join("agent.sock");

    let error = WorkloadApiClient::new(unix(&path)).fetch_wit_svids(None, Duration::from_secs(5)).await.unwrap_err();
    match &error {
        WorkloadApiError::NoSocket { path: named } => assert_eq!(named, &path),
        other => panic!("expected NoSocket, got {other:?}"),
    }
    let message = error.to_string();
    assert_eq!(
        message,
        format!(
            "no Workload API socket at {}: is the agent running? set SPIFFE_ENDPOINT_SOCKET (unix:///path) to its socket",
            path.display()
        )
    );
    assert!(error.is_retryable(), "the agent may be starting");

    // The streaming sources wait for it (bounded), say so once, and end with the same error.
    let error = start_source(unix(&path)).await;
    assert!(matches!(&error, WorkloadApiError::NoSocket { path: named } if named == &path), "{error:?}");
    let waiting =
        logs.lines_with(&["INFO", "waiting up to 1.5s", "no Workload API socket at", &path.display().to_string()]);
    assert_eq!(waiting.len(), 1, "one line at the first failed attempt:\n{}", logs.text());
    let error = WitBundleWatch::start_with(
        unix(&path),
        wimse_core::protocol::trust::TrustHandle::new(wimse_core::protocol::trust::TrustStore::new()),
        Duration::from_millis(300),
        Duration::from_millis(100),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, WorkloadApiError::NoSocket { .. }), "{error:?}");

    // A directory of the path that does not exist is the same mistake.
    let deeper = dir.path().join("no-such-dir/agent.sock");
    let error = WorkloadApiClient::new(unix(&deeper)).fetch_wit_svids(None, Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(&error, WorkloadApiError::NoSocket { path } if path == &deeper), "{error:?}");
}

#[tokio::test]
async fn a_path_that_is_not_a_socket_is_reported_at_once() {
    let dir = TempDir::new("wimse-not-a-socket");
    let file = dir.write_file("agent.sock", "not a socket");
    let error = start_source(unix(&file)).await;
    match &error {
        WorkloadApiError::NotASocket { path, found } => {
            assert_eq!((path.as_path(), *found), (file.as_path(), "a regular file"))
        }
        other => panic!("expected NotASocket, got {other:?}"),
    }
    assert_eq!(
        error.to_string(),
        format!(
            "{} is not a Unix socket but a regular file: SPIFFE_ENDPOINT_SOCKET must name the Workload API agent's socket",
            file.display()
        )
    );
    assert!(!error.is_retryable(), "a file does not become a socket by waiting");

    // A directory (SPIFFE_ENDPOINT_SOCKET=unix:///run/wimse, say).
    let error =
        WorkloadApiClient::new(unix(dir.path())).fetch_wit_svids(None, Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(&error, WorkloadApiError::NotASocket { found: "a directory", .. }), "{error:?}");

    // A path through a regular file (`/run/wimse.sock/agent.sock`).
    let through = file.join("agent.sock");
    let error = WorkloadApiClient::new(unix(&through)).fetch_wit_svids(None, Duration::from_secs(5)).await.unwrap_err();
    assert!(
        matches!(&error, WorkloadApiError::NotASocket { path, found: "a regular file" } if path == &file),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_socket_nobody_listens_on_says_the_agent_stopped() {
    let dir = TempDir::new("wimse-stale-socket");
    let path = dir.path().join("agent.sock");
    // Bound, then closed: the file stays, as when an agent is killed.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let error = WorkloadApiClient::new(unix(&path)).fetch_wit_svids(None, Duration::from_secs(5)).await.unwrap_err();
    match &error {
        WorkloadApiError::NotListening { endpoint } => assert_eq!(endpoint, &unix(&path)),
        other => panic!("expected NotListening, got {other:?}"),
    }
    assert_eq!(
        error.to_string(),
        format!(
            "nothing listens on the Workload API socket at unix://{}: the agent is not running (the socket is left from an earlier run) or is restarting",
            path.display()
        )
    );
    assert!(error.is_retryable(), "an agent restarting binds it again");

    // A TCP endpoint nobody listens on names its address.
    let port = wimse_testkit::servers::free_port();
    let tcp = Endpoint::parse(&format!("tcp://127.0.0.1:{port}")).unwrap();
    let error = WorkloadApiClient::new(tcp.clone()).fetch_wit_svids(None, Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(&error, WorkloadApiError::NotListening { endpoint } if endpoint == &tcp), "{error:?}");
    assert!(error.to_string().contains(&format!("tcp://127.0.0.1:{port}")), "{error}");
}
