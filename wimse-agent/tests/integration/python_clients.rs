//! Workload API clients not written in Go, against a real agent: the PyPI `spiffe` package
//! (gRPC C core, which sends the socket path percent-encoded as `:authority`) and a raw HTTP/2
//! client sending the other forms (grpc-java's raw path, grpc-swift's percent-encoded one).
//! Skipped without a Python that has `spiffe` and `h2`, unless `WIMSE_REQUIRE_PYTHON_SPIFFE=1`.

use crate::common::{DOMAIN, Issuer, entry_for_me, my_ids, run_python, spiffe_python, start_agent};
use serde_json::json;

/// `WorkloadApiClient().fetch_x509_svid()` and `fetch_x509_bundles()` from Python.
#[tokio::test]
async fn python_spiffe_fetches_x509_svid_and_bundles() {
    let Some(python) = spiffe_python() else { return };
    let issuer = Issuer::start(600).await;
    let agent = start_agent(&issuer, json!([entry_for_me("/ns/payments", "internal")]), json!({})).await;
    let endpoint = format!("unix://{}", agent.socket.display());
    let result = run_python(&python, "spiffe_fetch.py", &[&endpoint]).await;
    assert_eq!(result["spiffe_id"], format!("{DOMAIN}/ns/payments"), "{result}");
    assert_eq!(result["chain"], 2, "leaf and the identity server's CA: {result}");
    assert_eq!(result["trust_domains"], json!(["prod.example"]), "{result}");
    assert!(result["authorities"].as_u64().is_some_and(|n| n >= 1), "{result}");
}

/// A process no entry matches gets PermissionDenied, named as such, through the same client.
#[tokio::test]
async fn python_spiffe_unregistered_process_is_permission_denied() {
    let Some(python) = spiffe_python() else { return };
    let issuer = Issuer::start(600).await;
    let someone_else = my_ids().0.wrapping_add(4242);
    let entries = json!([{"spiffe_id": format!("{DOMAIN}/ns/payments"), "selectors": {"uid": someone_else}}]);
    let agent = start_agent(&issuer, entries, json!({})).await;
    let endpoint = format!("unix://{}", agent.socket.display());
    let result = run_python(&python, "spiffe_fetch.py", &[&endpoint]).await;
    assert_eq!(result["error"], "FetchX509SvidError", "{result}");
    assert_eq!(result["code"], "PERMISSION_DENIED", "{result}");
    assert!(result["details"].as_str().is_some_and(|d| d.contains("no registration entry")), "{result}");
}

/// Every authority form on one connection, Huffman-coded and indexed by the client's encoder
/// (the repeated raw path goes out as a dynamic-table reference), plain and re-framed as
/// HEADERS(PADDED) + CONTINUATIONs: all served.
#[tokio::test]
async fn raw_http2_clients_with_socket_path_authorities_are_served() {
    let Some(python) = spiffe_python() else { return };
    let issuer = Issuer::start(600).await;
    let agent = start_agent(&issuer, json!([entry_for_me("/ns/payments", "")]), json!({})).await;
    let path = agent.socket.display().to_string();
    let encoded = path.trim_start_matches('/').replace('/', "%2F");
    let authorities = [
        path.clone(),                   // grpc-java
        format!("%2F{encoded}"),        // grpc-swift
        encoded.clone(),                // gRPC C core
        path.clone(),                   // again: a dynamic-table reference
        "localhost".to_owned(),         // grpc-go
        "workload.example:8443".into(), // a valid authority, kept
    ];
    let served = json!({"status": "0", "spiffe_ids": [format!("{DOMAIN}/ns/payments")]});
    for reframe in [false, true] {
        let mut args = vec!["authorities", &path];
        if reframe {
            args.push("--reframe");
        }
        args.extend(authorities.iter().map(String::as_str));
        let results = run_python(&python, "h2_client.py", &args).await;
        assert_eq!(results, json!(vec![served.clone(); authorities.len()]), "reframe {reframe}");
    }
}
