//! Revocation through Shared Signals while traffic flows: a transmitter written on joserfc
//! (`testkit/oauth/ssf_transmitter.py`) emits a SET revoking one workload; two replicas, each
//! polling its own stream, refuse that workload within one poll interval while another keeps
//! working; a replica restarted from its state file still refuses it; a user's revocation refuses
//! their Txn-Tokens; pushed SETs are validated the same way (forged, replayed, for another
//! audience: refused).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use wimse_axum::{Caller, WimseLayer};
use wimse_core::jose::{Jwk, PublicKey};
use wimse_core::server::signals::{ACCOUNT_DISABLED, CREDENTIAL_CHANGE, Revocations, SESSION_REVOKED, SetReceiver};
use wimse_reqwest::SsfPoller;
use wimse_testkit::servers::SsfTransmitter;
use wimse_testkit::{ALLOWED, Deployment};

const ISSUER: &str = "https://ssf.prod.example";
const REVOKED: &str = "spiffe://prod.example/batch/compromised";
const POLL: Duration = Duration::from_millis(200);

/// The transmitter's public keys, fetched once by the test (the configuration a deployment
/// would write down).
async fn transmitter_keys(base: &str) -> Vec<PublicKey> {
    let jwks: serde_json::Value = reqwest::get(format!("{base}/jwks")).await.unwrap().json().await.unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| PublicKey::from_jwk(&Jwk::from_json(&k.to_string()).unwrap()).unwrap())
        .collect()
}

/// A replica: a verifier refusing what `revocations` holds, serving `POST /work` with the
/// caller's identifier.
async fn replica(deployment: &Deployment, revocations: Revocations) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let verifier = deployment.txn_verifier(&base, false).revocations(revocations);
    let app = Router::new()
        .route("/work", post(|Caller(caller): Caller| async move { caller.id().to_string() }))
        .layer(WimseLayer::new(verifier));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

async fn status(client: &reqwest_middleware::ClientWithMiddleware, url: &str) -> (u16, String) {
    let response = client.post(url).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn emit(base: &str, event: serde_json::Value) -> serde_json::Value {
    let client = reqwest::Client::new();
    client.post(format!("{base}/emit")).json(&event).send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn a_revoked_workload_is_refused_by_every_replica_within_a_poll_and_after_a_restart() {
    let streams = [("replica-a", "https://orders.prod.example"), ("replica-b", "https://orders.prod.example")];
    let Some(transmitter) = SsfTransmitter::start(ISSUER, &streams) else { return };
    let keys = transmitter_keys(&transmitter.base()).await;
    let deployment = Deployment::new();
    let state = wimse_testkit::servers::TempDir::new("wimse-revocations");
    let mut replicas = Vec::new();
    let mut pollers = Vec::new();
    for (token, audience) in streams {
        let revocations = Revocations::new().persist_to(state.path().join(format!("{token}.json"))).unwrap();
        let receiver = Arc::new(SetReceiver::new(ISSUER, audience, keys.clone(), revocations.clone()));
        let poller =
            SsfPoller::new(format!("{}/poll", transmitter.base()), receiver).unwrap().bearer(token).interval(POLL);
        pollers.push(poller.spawn());
        replicas.push(replica(&deployment, revocations).await);
    }
    let (compromised, healthy) = (deployment.client(REVOKED), deployment.client(ALLOWED));
    for base in &replicas {
        assert_eq!(status(&compromised, &format!("{base}/work")).await.0, 200);
    }

    // Revoked: every credential issued up to now. Both replicas refuse within a few polls.
    let emitted =
        emit(&transmitter.base(), serde_json::json!({"event": CREDENTIAL_CHANGE, "format": "uri", "subject": REVOKED}))
            .await;
    assert_eq!(emitted["jtis"].as_array().unwrap().len(), 2, "{emitted}");
    for base in &replicas {
        let mut refused = None;
        for _ in 0..50 {
            let (code, body) = status(&compromised, &format!("{base}/work")).await;
            if code == 403 {
                refused = Some(body);
                break;
            }
            tokio::time::sleep(POLL / 4).await;
        }
        let body = refused.expect("refused within a few poll intervals");
        assert!(body.contains("workload_revoked"), "{body}");
        // Others keep working.
        assert_eq!(status(&healthy, &format!("{base}/work")).await, (200, ALLOWED.to_owned()));
    }
    // A WIT issued after the event is accepted again (the credential changed).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let renewed = deployment.client(REVOKED);
    assert_eq!(status(&renewed, &format!("{}/work", replicas[0])).await.0, 200);

    // A restart from the state file does not readmit the old credential.
    for poller in &pollers {
        poller.abort();
    }
    let restarted = Revocations::new().persist_to(state.path().join("replica-a.json")).unwrap();
    let base = replica(&deployment, restarted).await;
    assert_eq!(status(&compromised, &format!("{base}/work")).await.0, 403);
    assert_eq!(status(&healthy, &format!("{base}/work")).await.0, 200);

    // A forged SET (signed by a key not the transmitter's) is refused and reported back.
    let receiver = Arc::new(SetReceiver::new(ISSUER, "https://orders.prod.example", keys.clone(), Revocations::new()));
    let forged =
        serde_json::json!({"event": ACCOUNT_DISABLED, "format": "uri", "subject": ALLOWED, "sign_with": "rogue"});
    emit(&transmitter.base(), forged).await;
    let mut poller =
        SsfPoller::new(format!("{}/poll", transmitter.base()), receiver.clone()).unwrap().bearer("replica-a");
    let polled = poller.poll_once().await.unwrap();
    assert_eq!((polled.applied, polled.refused), (0, 1), "{polled:?}");
    poller.poll_once().await.unwrap();
    let errors: serde_json::Value =
        reqwest::get(format!("{}/errors", transmitter.base())).await.unwrap().json().await.unwrap();
    let reported = errors["replica-a"].as_object().unwrap();
    assert!(reported.values().any(|e| e["err"] == "invalid_key"), "{errors}");
    assert!(receiver.revocations().is_empty());
}

#[tokio::test]
async fn a_user_revoked_by_a_pushed_set_has_their_txn_tokens_refused() {
    let Some(transmitter) = SsfTransmitter::start(ISSUER, &[("push", "https://orders.prod.example")]) else { return };
    let keys = transmitter_keys(&transmitter.base()).await;
    let deployment = Deployment::new();
    let revocations = Revocations::new();
    let receiver = Arc::new(SetReceiver::new(ISSUER, "https://orders.prod.example", keys, revocations.clone()));
    // The push endpoint (RFC 8935), next to the service.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let verifier = deployment.txn_verifier(&base, false).revocations(revocations.clone());
    let pushed = receiver.clone();
    let push = post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
        let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
        let now = wimse_testkit::now();
        let (status, body) = pushed.push(content_type, &body, now);
        (axum::http::StatusCode::from_u16(status).unwrap(), body.unwrap_or_default())
    });
    let service = Router::new()
        .route("/work", post(|Caller(caller): Caller| async move { caller.id().to_string() }))
        .layer(WimseLayer::new(verifier));
    let app = Router::new().route("/ssf/push", push).merge(service);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let send = |txn: String| {
        let client = deployment.client(ALLOWED);
        let url = format!("{base}/work");
        async move {
            let response = client.post(url).header("txn-token", txn).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let before = deployment.txn_token("alice", "orders.read", false);
    assert_eq!(send(before.clone()).await.0, 200);
    let event = serde_json::json!({"event": SESSION_REVOKED, "format": "email", "subject": "alice", "push_to": format!("{base}/ssf/push")});
    let emitted = emit(&transmitter.base(), event).await;
    assert_eq!(emitted["pushed"]["status"], 202, "{emitted}");
    let (code, body) = send(before).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("subject_revoked"), "{body}");
    // Another user's transaction goes on.
    assert_eq!(send(deployment.txn_token("bob", "orders.read", false)).await.0, 200);
    // A forged push is refused with RFC 8935's error, and changes nothing.
    let forged = serde_json::json!({"event": SESSION_REVOKED, "format": "email", "subject": "bob", "sign_with": "rogue", "push_to": format!("{base}/ssf/push")});
    let emitted = emit(&transmitter.base(), forged).await;
    assert_eq!(emitted["pushed"]["status"], 400, "{emitted}");
    let answer: serde_json::Value = serde_json::from_str(emitted["pushed"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(answer["err"], "invalid_key");
    assert_eq!(send(deployment.txn_token("bob", "orders.read", false)).await.0, 200);
}

/// A service configured from a settings file alone: `[signals]` names the transmitter, its
/// keys, the state file and the stream to poll; the verifier the settings build refuses a
/// workload the transmitter revokes within a poll, and a service built again from the same file
/// (a restart) still refuses it.
#[tokio::test]
async fn a_settings_file_alone_follows_the_transmitter_and_keeps_its_revocations() {
    let streams = [("settings-replica", "https://orders.prod.example")];
    let Some(transmitter) = SsfTransmitter::start(ISSUER, &streams) else { return };
    let deployment = Deployment::new();
    let dir = wimse_testkit::servers::TempDir::new("wimse-signal-settings");
    let jwks = reqwest::get(format!("{}/jwks", transmitter.base())).await.unwrap().text().await.unwrap();
    std::fs::write(dir.path().join("transmitter.jwks.json"), jwks).unwrap();
    std::fs::write(dir.path().join("issuer.jwk"), deployment.issuer_public_jwk().to_json()).unwrap();
    std::fs::write(dir.path().join("ssf-token"), "settings-replica\n").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    // Relative paths: from the settings file's directory.
    let settings = serde_json::json!({
        "verifier": {"origins": [base], "trust": [{"trust_domain": "spiffe://prod.example", "file": "issuer.jwk"}]},
        "signals": {"issuer": ISSUER, "audience": "https://orders.prod.example", "jwks_file": "transmitter.jwks.json",
                    "state_file": "revocations.json", "poll_url": format!("{}/poll", transmitter.base()),
                    "poll_token_file": "ssf-token", "poll_interval": 1}
    });
    let path = dir.path().join("service.json");
    std::fs::write(&path, settings.to_string()).unwrap();

    let serve = |listener: tokio::net::TcpListener| {
        let settings = wimse_core::config::Settings::load(&path).unwrap();
        let feed = wimse_reqwest::signals_from_settings(settings.signals.as_ref().unwrap()).unwrap();
        assert!(feed.polls());
        let app = Router::new()
            .route("/work", post(|Caller(caller): Caller| async move { caller.id().to_string() }))
            .layer(WimseLayer::new(settings.verifier().unwrap()));
        (tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }), feed)
    };
    let (server, feed) = serve(listener);
    let (compromised, healthy) = (deployment.client(REVOKED), deployment.client(ALLOWED));
    let url = format!("{base}/work");
    assert_eq!(status(&compromised, &url).await.0, 200);
    emit(&transmitter.base(), serde_json::json!({"event": CREDENTIAL_CHANGE, "format": "uri", "subject": REVOKED}))
        .await;
    let mut refused = None;
    for _ in 0..60 {
        let (code, body) = status(&compromised, &url).await;
        if code == 403 {
            refused = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused.expect("refused within a few polls").contains("workload_revoked"));
    assert_eq!(status(&healthy, &url).await.0, 200);

    // Restarted: the old server, its verifier and its feed gone, the same file built again.
    server.abort();
    let _ = server.await;
    drop(feed);
    // The aborted poller lets go of the old state; the new service reads the state file.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let state = std::fs::read_to_string(dir.path().join("revocations.json")).unwrap();
    assert!(state.contains(REVOKED), "{state}");
    let listener = tokio::net::TcpListener::bind(base.trim_start_matches("http://")).await.unwrap();
    let (_server, _feed) = serve(listener);
    assert_eq!(status(&compromised, &url).await.0, 403, "a restart does not readmit it");
    assert_eq!(status(&healthy, &url).await.0, 200);
}
