//! `wimse audit verify | trace` on logs written by `AuditLog`: an intact log passes; a changed
//! byte, a deleted record, swapped records and a tail cut before a checkpoint are each reported
//! with their place; a transaction is traced across two services' logs, drawn as DOT (and SVG
//! where Graphviz is installed); a log whose key is not given is said to be unverified.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wimse_core::jose::{Jwk, SigningKey};
use wimse_core::server::audit_log::{AuditEvent, AuditLog, AuditOptions};

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wimse-cli-audit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn wimse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wimse")).args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A key made by `wimse key generate`, its public half beside it.
fn audit_key(dir: &Path, name: &str) -> SigningKey {
    let (private, public) = (dir.join(format!("{name}.jwk")), dir.join(format!("{name}.pub.jwk")));
    assert!(wimse(&["key", "generate", "-o", private.to_str().unwrap()]).status.success());
    assert!(
        wimse(&["key", "public", "--key", private.to_str().unwrap(), "-o", public.to_str().unwrap()]).status.success()
    );
    SigningKey::from_jwk(&Jwk::from_json(&std::fs::read_to_string(private).unwrap()).unwrap()).unwrap()
}

fn hop(caller: &str, txn: &str, resource: &str, decision: &str) -> AuditEvent {
    AuditEvent {
        txn: Some(txn.into()),
        caller: Some(caller.into()),
        proof: Some("wpt".into()),
        subject: Some("alice".into()),
        action: Some("POST".into()),
        resource: Some(resource.into()),
        decision: decision.into(),
        reason: (decision == "deny").then(|| "policy_denied".into()),
        ..Default::default()
    }
}

/// Writes `events` into a log of `service` at `path` (a checkpoint every 3), closed.
fn write(path: &Path, service: &str, key: &SigningKey, events: Vec<AuditEvent>) {
    let log =
        AuditLog::open(path, service, key.clone(), AuditOptions { checkpoint_every: 3, ..Default::default() }).unwrap();
    for event in events {
        log.record(event).unwrap();
    }
    log.close().unwrap();
}

fn rewrite(path: &Path, change: impl FnOnce(&mut Vec<String>)) {
    let mut lines: Vec<String> = std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect();
    change(&mut lines);
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn verify_accepts_an_intact_log_and_places_each_tampering() {
    let d = dir("verify");
    let key = audit_key(&d, "orders");
    let log = d.join("orders.audit.jsonl");
    let events = (0..7).map(|i| hop("spiffe://prod.example/front", "t1", &format!("/orders/{i}"), "allow")).collect();
    write(&log, "spiffe://prod.example/orders", &key, events);
    let pristine = std::fs::read(&log).unwrap();
    let pubkey = d.join("orders.pub.jwk");
    let verify = || wimse(&["audit", "verify", "--key", pubkey.to_str().unwrap(), log.to_str().unwrap()]);
    let out = verify();
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("intact") && stdout(&out).contains("held to the head file"), "{}", stdout(&out));

    type Change = Box<dyn Fn(&mut Vec<String>)>;
    let cases: [(&str, Change, &str); 4] = [
        (
            "a byte",
            Box::new(|l: &mut Vec<String>| l[1] = l[1].replacen("/orders/1", "/orders/9", 1)),
            ":3: line 2 was changed",
        ),
        ("a deletion", Box::new(|l: &mut Vec<String>| drop(l.remove(1))), ":2: record 1 is missing"),
        ("a swap", Box::new(|l: &mut Vec<String>| l.swap(1, 2)), "comes after record"),
        ("the tail", Box::new(|l: &mut Vec<String>| l.truncate(5)), "the tail was cut"),
    ];
    for (what, change, expected) in cases {
        std::fs::write(&log, &pristine).unwrap();
        rewrite(&log, change);
        let out = verify();
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stdout(&out));
        assert!(stdout(&out).contains("TAMPERED") && stdout(&out).contains(expected), "{what}: {}", stdout(&out));
    }
    // The start cut: refused, unless the files are said to be a rotated log's later part.
    std::fs::write(&log, &pristine).unwrap();
    rewrite(&log, |l| drop(l.remove(0)));
    let out = wimse(&["audit", "verify", "--no-head", "--key", pubkey.to_str().unwrap(), log.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("the records before it are missing"), "{}", stdout(&out));
    let args =
        ["audit", "verify", "--no-head", "--continued", "--key", pubkey.to_str().unwrap(), log.to_str().unwrap()];
    let continued = wimse(&args);
    assert!(continued.status.success() && stdout(&continued).contains("from record 1"), "{}", stdout(&continued));
    std::fs::write(&log, &pristine).unwrap();
    rewrite(&log, |l| l.truncate(5));
    // Without the head file the cut tail is not visible, and the output says so.
    let out = wimse(&["audit", "verify", "--no-head", "--key", pubkey.to_str().unwrap(), log.to_str().unwrap()]);
    assert!(
        out.status.success() && stdout(&out).contains("a tail cut before the last checkpoint cannot be seen"),
        "{}",
        stdout(&out)
    );
    // A key that is not the log's.
    std::fs::write(&log, &pristine).unwrap();
    audit_key(&d, "other");
    let out = wimse(&["audit", "verify", "--key", d.join("other.pub.jwk").to_str().unwrap(), log.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("which was not given"), "{}", stdout(&out));
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn trace_follows_a_transaction_across_services_and_draws_it() {
    let d = dir("trace");
    let (orders_key, billing_key) = (audit_key(&d, "orders"), audit_key(&d, "billing"));
    let (orders, billing) = (d.join("orders.audit.jsonl"), d.join("billing.audit.jsonl"));
    write(
        &orders,
        "spiffe://prod.example/orders",
        &orders_key,
        vec![
            hop("spiffe://prod.example/front", "t1", "/orders", "allow"),
            hop("spiffe://prod.example/front", "t2", "/orders", "allow"),
            hop("spiffe://prod.example/intruder", "t1", "/orders", "deny"),
        ],
    );
    write(
        &billing,
        "spiffe://prod.example/billing",
        &billing_key,
        vec![hop("spiffe://prod.example/orders", "t1", "/charge", "allow")],
    );
    let (dot, svg) = (d.join("t1.dot"), d.join("t1.svg"));
    let mut args = vec!["audit", "trace", "--txn", "t1"];
    let keys = [d.join("orders.pub.jwk"), d.join("billing.pub.jwk")];
    for key in &keys {
        args.extend(["--key", key.to_str().unwrap()]);
    }
    args.extend(["--dot", dot.to_str().unwrap(), orders.to_str().unwrap(), billing.to_str().unwrap()]);
    let out = wimse(&args);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        "log of spiffe://prod.example/billing: verified",
        "transaction t1: 3 hops, for alice",
        "spiffe://prod.example/front -> spiffe://prod.example/orders | POST /orders | wpt | allow",
        "spiffe://prod.example/intruder -> spiffe://prod.example/orders | POST /orders | wpt | deny (policy_denied)",
        "spiffe://prod.example/orders -> spiffe://prod.example/billing | POST /charge | wpt | allow",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
    assert!(!text.contains("t2"), "{text}");
    let drawn = std::fs::read_to_string(&dot).unwrap();
    assert!(drawn.starts_with("digraph custody") && drawn.contains("\"spiffe://prod.example/billing\""), "{drawn}");
    // SVG through Graphviz, where it is installed (CI installs it).
    let has_dot = Command::new("dot").arg("-V").output().is_ok_and(|o| o.status.success());
    if has_dot || std::env::var("WIMSE_REQUIRE_GRAPHVIZ").is_ok_and(|v| v == "1") {
        let out = wimse(&[
            "audit",
            "trace",
            "--txn",
            "t1",
            "--key",
            keys[0].to_str().unwrap(),
            "--key",
            keys[1].to_str().unwrap(),
            "--svg",
            svg.to_str().unwrap(),
            orders.to_str().unwrap(),
            billing.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    } else {
        eprintln!("skipped: graphviz not found");
    }
    // Only the orders key: billing's log is read but said to be unverified, and the exit is 1.
    let out = wimse(&[
        "audit",
        "trace",
        "--txn",
        "t1",
        "--key",
        keys[0].to_str().unwrap(),
        orders.to_str().unwrap(),
        billing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("log of spiffe://prod.example/billing: NOT VERIFIED: its audit key was not given"),
        "{}",
        stdout(&out)
    );
    // A transaction that is in no log.
    let out = wimse(&["audit", "trace", "--txn", "nope", "--key", keys[0].to_str().unwrap(), orders.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(d);
}
