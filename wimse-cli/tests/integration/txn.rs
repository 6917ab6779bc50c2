//! `wimse txn issue | inspect | verify`, locally and against a running `wimse issuer serve`
//! acting as the Transaction Token Service.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::{Value, json};

const NOW: &str = "1800000000";

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wimse-cli-txn-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn wimse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wimse")).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = wimse(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

#[test]
fn issue_inspect_and_verify_locally() {
    let d = dir("local");
    let p = |f: &str| d.join(f).display().to_string();
    ok(&["key", "generate", "--kid", "tts-1", "-o", &p("tts.jwk")]);
    ok(&["key", "public", "--key", &p("tts.jwk"), "-o", &p("tts.pub.jwk")]);
    let (tts_key, txn_path, keys) = (p("tts.jwk"), p("txn.jwt"), p("tts.pub.jwk"));
    let issue = |extra: &[&str]| {
        let mut args = vec!["txn", "issue", "--tts-key", &tts_key];
        args.extend_from_slice(extra);
        ok(&args)
    };
    let token = issue(&[
        "--trust-domain",
        "spiffe://prod.example",
        "--sub",
        "user-1842",
        "--scope",
        "orders.purchase",
        "--req-wl",
        "spiffe://prod.example/front",
        "--details",
        r#"{"order":"7d1f"}"#,
        "--now",
        NOW,
        "-o",
        &p("txn.jwt"),
    ]);
    assert!(token.is_empty(), "written to the file");

    let inspected: Value = serde_json::from_str(&ok(&["txn", "inspect", &p("txn.jwt"), "--now", NOW])).unwrap();
    assert_eq!(inspected["kind"], "Txn-Token");
    assert_eq!(inspected["verified"], false);
    let notes = inspected["explanation"].to_string();
    assert!(notes.contains("purpose: orders.purchase") && notes.contains("subject user-1842"), "{notes}");

    let verify = |extra: &[&str]| {
        let mut args = vec!["txn", "verify", &txn_path, "--keys", &keys];
        args.extend_from_slice(extra);
        wimse(&args)
    };
    let out = verify(&["--trust-domain", "spiffe://prod.example", "--now", NOW]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let verified = json_of(&out);
    assert_eq!((verified["sub"].as_str(), verified["scope"].as_str()), (Some("user-1842"), Some("orders.purchase")));
    assert_eq!(verified["tctx"]["order"], "7d1f");
    assert_eq!(verified["req_wl"], json!(["spiffe://prod.example/front"]));

    for (extra, reason) in [
        (vec!["--trust-domain", "spiffe://partner.example", "--now", NOW], "txn_token_audience_mismatch"),
        (vec!["--trust-domain", "spiffe://prod.example", "--now", "1800009999"], "expired_txn_token"),
        (
            vec!["--trust-domain", "spiffe://prod.example", "--now", NOW, "--max-lifetime", "60"],
            "txn_token_lifetime_too_long",
        ),
    ] {
        let out = verify(&extra);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(json_of(&out)["reason"], reason);
    }
    // A delegation chain (`--actor`, the current actor first), explained and verified.
    issue(&[
        "--trust-domain",
        "spiffe://prod.example",
        "--sub",
        "user-1842",
        "--scope",
        "orders.purchase",
        "--req-wl",
        "spiffe://prod.example/front",
        "--actor",
        "spiffe://prod.example/agents/booker",
        "--actor",
        "spiffe://prod.example/agents/planner",
        "--now",
        NOW,
        "-o",
        &p("chain.jwt"),
    ]);
    let inspected: Value = serde_json::from_str(&ok(&["txn", "inspect", &p("chain.jwt"), "--now", NOW])).unwrap();
    let notes = inspected["explanation"].to_string();
    assert!(
        notes.contains(
            "acted for by spiffe://prod.example/agents/booker, on behalf of spiffe://prod.example/agents/planner"
        ),
        "{notes}"
    );
    let chain = wimse(&[
        "txn",
        "verify",
        &p("chain.jwt"),
        "--keys",
        &keys,
        "--trust-domain",
        "spiffe://prod.example",
        "--now",
        NOW,
    ]);
    assert_eq!(
        json_of(&chain)["actors"],
        json!(["spiffe://prod.example/agents/booker", "spiffe://prod.example/agents/planner"])
    );
    assert_eq!(json_of(&verify(&["--trust-domain", "spiffe://prod.example", "--now", NOW]))["actors"], json!([]));
    let bad_actor = wimse(&[
        "txn",
        "issue",
        "--tts-key",
        &tts_key,
        "--trust-domain",
        "spiffe://prod.example",
        "--sub",
        "u",
        "--scope",
        "s",
        "--req-wl",
        "spiffe://prod.example/front",
        "--actor",
        "not-an-id",
    ]);
    assert!(!bad_actor.status.success() && String::from_utf8_lossy(&bad_actor.stderr).contains("--actor"));
    // Signed by a key that is not the TTS's.
    ok(&["key", "generate", "--kid", "tts-1", "-o", &p("other.jwk")]);
    let forged = ok(&[
        "txn",
        "issue",
        "--tts-key",
        &p("other.jwk"),
        "--trust-domain",
        "spiffe://prod.example",
        "--sub",
        "u",
        "--scope",
        "s",
        "--req-wl",
        "spiffe://prod.example/front",
        "--now",
        NOW,
    ]);
    std::fs::write(d.join("txn.jwt"), forged).unwrap();
    let out = verify(&["--trust-domain", "spiffe://prod.example", "--now", NOW]);
    assert_eq!(json_of(&out)["reason"], "invalid_txn_token_signature");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn issue_from_a_transaction_token_service() {
    let d = dir("tts");
    let p = |f: &str| d.join(f).display().to_string();
    let port = wimse_testkit::servers::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let front = "spiffe://prod.example/front";
    let config = json!({
        "trust_domain": "spiffe://prod.example", "key_store": d.join("keys.json"), "dev_mode": true,
        "token_endpoint": format!("{base}/v1/token"),
        "clients": [{"name": "front", "dev_secret": "0123456789abcdef-front", "allowed": [front], "max_lifetime": 600}],
        "txn_tokens": {"requesters": [{"workloads": [front], "scopes": ["orders.read"], "subject_token_types": ["unsigned_json", "self_signed"], "actor": true}]}
    });
    std::fs::write(d.join("issuer.json"), config.to_string()).unwrap();
    let mut issuer =
        crate::common::IssuerProcess::start_on(&d.join("issuer.json"), &d.join("issuer.log"), Vec::new(), port);
    // The workload's credentials, from the identity server.
    ok(&["key", "generate", "-o", &p("front.jwk")]);
    let key: Value = serde_json::from_str(&std::fs::read_to_string(d.join("front.jwk")).unwrap()).unwrap();
    let public =
        wimse_core::jose::SigningKey::from_jwk(&wimse_core::jose::Jwk::from_json(&key.to_string()).unwrap()).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let wit = runtime.block_on(async {
        let body = json!({"sub": front, "jwk": public.public_jwk()});
        let response = reqwest::Client::new()
            .post(format!("{base}/v1/wit"))
            .bearer_auth("0123456789abcdef-front")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        serde_json::from_str::<Value>(&response.text().await.unwrap()).unwrap()["wit"].as_str().unwrap().to_owned()
    });
    std::fs::write(d.join("front.wit"), wit).unwrap();
    let endpoint = format!("{base}/v1/token");
    let (wit_file, key_file) = (p("front.wit"), p("front.jwk"));
    let ask_with = |kind: &str, scope: &str, extra: &[&str]| {
        let mut args = vec![
            "txn",
            "issue",
            "--tts",
            &endpoint,
            "--trust-domain",
            "spiffe://prod.example",
            "--wit",
            &wit_file,
            "--key",
            &key_file,
            "--subject-token-type",
            kind,
            "--sub",
            "batch-7",
            "--scope",
            scope,
        ];
        args.extend_from_slice(extra);
        wimse(&args)
    };
    let ask = |kind: &str, scope: &str| {
        wimse(&[
            "txn",
            "issue",
            "--tts",
            &endpoint,
            "--trust-domain",
            "spiffe://prod.example",
            "--wit",
            &p("front.wit"),
            "--key",
            &p("front.jwk"),
            "--subject-token-type",
            kind,
            "--sub",
            "batch-7",
            "--scope",
            scope,
        ])
    };
    for kind in ["unsigned_json", "self_signed"] {
        let out = ask(kind, "orders.read");
        assert!(out.status.success(), "{kind}: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(d.join("txn.jwt"), &out.stdout).unwrap();
        ok(&["bundle", "fetch", "--url", &format!("{base}/v1/bundle/spiffe"), "-o", &p("bundle.json")]);
        let verified: Value = serde_json::from_str(&ok(&[
            "txn",
            "verify",
            &p("txn.jwt"),
            "--trust-domain",
            "spiffe://prod.example",
            "--keys",
            &p("bundle.json"),
        ]))
        .unwrap();
        assert_eq!((verified["sub"].as_str(), verified["req_wl"][0].as_str()), (Some("batch-7"), Some(front)));
    }
    // Acting for the subject: the Txn-Token names this workload as its actor.
    let acting = ask_with("unsigned_json", "orders.read", &["--acting"]);
    assert!(acting.status.success(), "{}", String::from_utf8_lossy(&acting.stderr));
    std::fs::write(d.join("acting.jwt"), &acting.stdout).unwrap();
    let verified: Value = serde_json::from_str(&ok(&[
        "txn",
        "verify",
        &p("acting.jwt"),
        "--trust-domain",
        "spiffe://prod.example",
        "--keys",
        &p("bundle.json"),
    ]))
    .unwrap();
    assert_eq!(verified["actors"], json!([front]));
    let refused = ask("unsigned_json", "orders.write");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("invalid_scope"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    issuer.kill();
    let _ = std::fs::remove_dir_all(&d);
}
