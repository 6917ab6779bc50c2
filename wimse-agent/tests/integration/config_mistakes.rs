//! Configuration mistakes are not outages: no token fails the start, and the identity server
//! refusing the agent's token or every identity fails the check of its first answers. (While
//! running: tests/refusals.rs; the `wimse agent serve` exit codes:
//! wimse-cli/tests/agent_config_mistakes.rs.)

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::{AGENT_SECRET, DOMAIN, Issuer, agent_config};
use serde_json::{Value, json};
use wimse_agent::{Agent, AgentConfig, StartError};
use wimse_testkit::servers::TempDir;

/// The configuration of `agent_config` with `issuer` fields replaced.
fn with_issuer(issuer: &Issuer, dir: &std::path::Path, entries: Value, fields: Value) -> AgentConfig {
    let config = agent_config(issuer, dir, entries, json!({}));
    let mut value = serde_json::to_value(&config).unwrap();
    value["issuer"].as_object_mut().unwrap().remove("token_file");
    value["issuer"].as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    AgentConfig::from_json(&value.to_string()).unwrap()
}

fn entry(path: &str) -> Value {
    json!({"spiffe_id": format!("{DOMAIN}{path}"), "selectors": {"uid": crate::common::my_ids().0}})
}

#[tokio::test]
async fn no_token_fails_the_start() {
    let issuer = Issuer::start(600).await;
    let dir = TempDir::new("wimse-agent-no-token");
    let entries = json!([entry("/ns/no-token")]);
    let no_token = |fields: Value| match Agent::start(with_issuer(&issuer, dir.path(), entries.clone(), fields)) {
        Err(StartError::NoToken(problem)) => problem,
        other => panic!("expected NoToken, got {other:?}"),
    };
    // (A variable nobody sets. An empty one needs a process of its own, in which it is set:
    // the `wimse agent serve` tests.)
    assert_eq!(
        no_token(json!({"token_env": "WIMSE_TEST_AGENT_TOKEN_UNSET"})),
        "issuer.token_env names WIMSE_TEST_AGENT_TOKEN_UNSET, which is not set"
    );
    let missing = dir.path().join("no-such-token");
    assert_eq!(
        no_token(json!({"token_file": missing})),
        format!("issuer.token_file {}: No such file or directory (os error 2)", missing.display())
    );
    let empty = dir.write_file("empty-token", "\n");
    assert_eq!(no_token(json!({"token_file": empty})), format!("issuer.token_file {} is empty", empty.display()));
    let error = Agent::start(with_issuer(&issuer, dir.path(), entries.clone(), json!({"token_file": empty})))
        .unwrap_err()
        .to_string();
    assert_eq!(error, format!("no token for the identity server: issuer.token_file {} is empty", empty.display()));

    // Its neighbour: a token that is there starts.
    let token = dir.write_file("token", AGENT_SECRET);
    let agent = Agent::start(with_issuer(&issuer, dir.path(), entries, json!({"token_file": token}))).unwrap();
    agent.check_issuance().await.unwrap();
}

#[tokio::test]
async fn a_refused_token_or_every_identity_refused_fails_the_check() {
    let issuer = Issuer::start(600).await;
    let dir = TempDir::new("wimse-agent-refused");

    // A wrong secret: 401 for every identity and part.
    let wrong = dir.write_file("wrong-token", "not-the-agent-secret-0123456789");
    let agent = Agent::start(with_issuer(
        &issuer,
        dir.path(),
        json!([entry("/ns/wrong-secret")]),
        json!({"token_file": wrong}),
    ))
    .unwrap();
    match agent.check_issuance().await {
        Err(StartError::TokenRefused { url, source_name, detail }) => {
            assert_eq!(url, issuer.base);
            assert_eq!(source_name, format!("issuer.token_file ({})", wrong.display()));
            assert_eq!(detail, "the identity server answered 401 Unauthorized (bootstrap_token_invalid)");
        }
        other => panic!("expected TokenRefused, got {other:?}"),
    }

    // Identities the identity server does not allow (outside `/ns`): 403 for each.
    let entries = json!([entry("/other/a"), entry("/other/b")]);
    let other = TempDir::new("wimse-agent-all-refused");
    let agent = Agent::start(agent_config(&issuer, other.path(), entries, json!({"x509": false}))).unwrap();
    let error = agent.check_issuance().await.unwrap_err();
    match &error {
        StartError::IdentitiesRefused { url, refusals } => {
            assert_eq!(url, &issuer.base);
            let mut refused: Vec<_> =
                refusals.iter().map(|r| (r.spiffe_id.to_string(), r.part, r.reason, r.detail.as_str())).collect();
            refused.sort();
            let answer = "the identity server answered 403 Forbidden (issuance_denied)";
            assert_eq!(
                refused,
                [
                    (format!("{DOMAIN}/other/a"), "WIT", "issuance_denied", answer),
                    (format!("{DOMAIN}/other/b"), "WIT", "issuance_denied", answer)
                ]
            );
        }
        other => panic!("expected IdentitiesRefused, got {other:?}"),
    }
    assert!(error.to_string().starts_with(&format!("the identity server at {} refuses every identity", issuer.base)));
}

/// The neighbours of a refusal at start: one identity refused among granted ones runs (and
/// logs the refusal as such), and an identity server that is down at start is waited out.
#[tokio::test]
async fn a_partial_refusal_or_an_outage_at_start_runs() {
    let logs = wimse_testkit::logs::Logs::global();
    let issuer = Issuer::start(600).await;
    let dir = TempDir::new("wimse-agent-partial");
    let entries = json!([entry("/ns/granted-one"), entry("/other/refused-one")]);
    let agent = Agent::start(agent_config(&issuer, dir.path(), entries, json!({"x509": false}))).unwrap();
    agent.check_issuance().await.unwrap();
    let refused = format!("WIT of {DOMAIN}/other/refused-one");
    let mut lines = Vec::new();
    for _ in 0..200 {
        lines = logs.lines_with(&["ERROR", "refuses to issue this identity", &refused]);
        if !lines.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(lines.len(), 1, "{}", logs.text());
    assert!(lines[0].contains("issuance_denied"), "{}", lines[0]);
    assert!(logs.lines_with(&["identity server failed", "refused-one"]).is_empty(), "not an outage");

    issuer.down.store(true, Ordering::SeqCst);
    let down = TempDir::new("wimse-agent-down");
    let agent =
        Agent::start(agent_config(&issuer, down.path(), json!([entry("/ns/during-outage")]), json!({}))).unwrap();
    agent.check_issuance().await.unwrap();
    issuer.down.store(false, Ordering::SeqCst);
}
