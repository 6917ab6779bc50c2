//! Tamper-evident audit logs: a log written by `AuditLog` verifies intact, and every kind of
//! tampering the format promises to show is shown where it happened: one byte changed, a record
//! deleted, two records swapped, the tail cut before a checkpoint; a foreign key, a forged
//! checkpoint, rotation, restart, and a full queue.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

use wimse_core::jose::{Algorithm, PublicKey, SigningKey};
use wimse_core::server::audit_log::{
    AuditEvent, AuditLog, AuditOptions, FindingKind, Report, WhenFull, check, line_hash,
};

const SERVICE: &str = "spiffe://prod.example/orders";

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wimse-audit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn event(i: usize) -> AuditEvent {
    AuditEvent {
        request_id: Some(format!("req-{i}")),
        txn: Some("txn-1".into()),
        caller: Some("spiffe://prod.example/front".into()),
        proof: Some("wpt".into()),
        subject: Some("alice".into()),
        actors: vec!["spiffe://prod.example/agents/planner".into()],
        action: Some("POST".into()),
        resource: Some("/orders".into()),
        decision: if i.is_multiple_of(3) { "deny".into() } else { "allow".into() },
        reason: i.is_multiple_of(3).then(|| "policy_denied".into()),
        ..Default::default()
    }
}

/// Writes `records` decisions, a checkpoint every 5, and closes the log.
fn write_log(path: &Path, key: &SigningKey, records: usize) {
    let options = AuditOptions { checkpoint_every: 5, ..Default::default() };
    let log = AuditLog::open(path, SERVICE, key.clone(), options).unwrap();
    for i in 0..records {
        log.record(event(i)).unwrap();
    }
    log.close().unwrap();
}

fn verify(lines: &[Vec<u8>], key: &PublicKey, head: Option<&[u8]>) -> Report {
    let mut text = Vec::new();
    for line in lines {
        text.extend_from_slice(line);
        text.push(b'\n');
    }
    check(vec![("log".to_owned(), BufReader::new(&text[..]))], std::slice::from_ref(key), head)
}

fn lines(path: &Path) -> Vec<Vec<u8>> {
    std::fs::read(path).unwrap().split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect()
}

fn kinds(report: &Report) -> Vec<(usize, FindingKind)> {
    report.findings.iter().map(|f| (f.line, f.kind)).collect()
}

#[test]
fn an_untouched_log_is_intact_and_signed_to_its_end() {
    let dir = dir("intact");
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let path = dir.join("orders.audit.jsonl");
    write_log(&path, &key, 12);
    let lines = lines(&path);
    // 12 decisions, checkpoints after the 5th and 10th, and the closing one.
    assert_eq!(lines.len(), 15);
    let head = std::fs::read(dir.join("orders.audit.jsonl.head")).unwrap();
    let report = verify(&lines, key.public_key(), Some(&head));
    assert!(report.is_intact(), "{:?}", report.findings);
    assert_eq!(
        (report.records, report.checkpoints, report.signed_through, report.unsigned_tail, report.closed),
        (15, 3, Some(14), 0, true)
    );
    // The format: each record names the hash of the line before it.
    let second: serde_json::Value = serde_json::from_slice(&lines[1]).unwrap();
    assert_eq!(second["prev"], line_hash(&lines[0]));
    assert_eq!(second["caller"], "spiffe://prod.example/front");
    assert_eq!(second["actors"][0], "spiffe://prod.example/agents/planner");
    let first: serde_json::Value = serde_json::from_slice(&lines[0]).unwrap();
    assert_eq!((first["v"].as_u64(), first["seq"].as_u64(), first["prev"].as_str()), (Some(1), Some(0), Some("")));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn each_kind_of_tampering_is_found_where_it_happened() {
    let dir = dir("tamper");
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let path = dir.join("orders.audit.jsonl");
    write_log(&path, &key, 12);
    let original = lines(&path);
    let head = std::fs::read(dir.join("orders.audit.jsonl.head")).unwrap();

    // One byte changed in line 3 (a decision: allow -> alloW): line 4 no longer chains to it.
    let mut changed = original.clone();
    let at = changed[2].windows(5).position(|w| w == b"allow").unwrap();
    changed[2][at + 4] = b'W';
    assert_eq!(kinds(&verify(&changed, key.public_key(), Some(&head))), [(4, FindingKind::Changed)]);
    // One byte changed that breaks the JSON: the line itself is named.
    let mut broken = original.clone();
    broken[1][0] = b'[';
    assert_eq!(kinds(&verify(&broken, key.public_key(), Some(&head)))[0], (2, FindingKind::NotARecord));

    // The start deleted (the first two lines): the first record given is not a log's first.
    let headless = original[2..].to_vec();
    assert_eq!(kinds(&verify(&headless, key.public_key(), Some(&head))), [(1, FindingKind::StartMissing)]);

    // One record deleted (line 3): the next is found missing its predecessor.
    let mut deleted = original.clone();
    deleted.remove(2);
    let report = verify(&deleted, key.public_key(), Some(&head));
    assert_eq!(kinds(&report), [(3, FindingKind::Missing)]);
    assert!(report.findings[0].message.contains("record 2 is missing"), "{:?}", report.findings);

    // Two records swapped (lines 2 and 3).
    let mut swapped = original.clone();
    swapped.swap(1, 2);
    let found = kinds(&verify(&swapped, key.public_key(), Some(&head)));
    assert!(found.contains(&(2, FindingKind::Missing)) && found.contains(&(3, FindingKind::Reordered)), "{found:?}");

    // The tail cut before a checkpoint: the log alone is consistent, the head file shows the cut.
    let cut = original[..8].to_vec();
    let alone = verify(&cut, key.public_key(), None);
    assert!(alone.is_intact() && !alone.closed && alone.unsigned_tail == 2, "{alone:?}");
    let report = verify(&cut, key.public_key(), Some(&head));
    assert_eq!(kinds(&report), [(0, FindingKind::Truncated)]);
    assert!(report.findings[0].message.contains("the log ends at record 7"), "{:?}", report.findings);

    // A checkpoint whose record was edited (its prev) no longer matches its signature, and a
    // checkpoint signed by another key is named as such.
    let mut forged = original.clone();
    let checkpoint = String::from_utf8(forged[5].clone()).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&checkpoint).unwrap();
    value["ts_ms"] = (value["ts_ms"].as_u64().unwrap() + 1).into();
    forged[5] = serde_json::to_vec(&value).unwrap();
    let found = kinds(&verify(&forged, key.public_key(), Some(&head)));
    assert!(found.contains(&(6, FindingKind::BadCheckpoint)), "{found:?}");
    let stranger = SigningKey::generate(Algorithm::ES256).unwrap();
    let report = verify(&original, stranger.public_key(), None);
    assert!(
        report.findings.iter().all(|f| f.kind == FindingKind::UnknownKey) && report.findings.len() == 3,
        "{report:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_restart_continues_the_chain_and_a_rotation_splits_it_across_files() {
    let dir = dir("rotate");
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let path = dir.join("orders.audit.jsonl");
    write_log(&path, &key, 3);
    // Restarted: the chain goes on from the last line.
    write_log(&path, &key, 3);
    let report = verify(&lines(&path), key.public_key(), None);
    assert!(report.is_intact() && report.records == 8, "{report:?}");

    // Rotated while running (moved away, as logrotate does): the writer reopens the path.
    let options = AuditOptions { checkpoint_every: 2, ..Default::default() };
    let log = AuditLog::open(&path, SERVICE, key.clone(), options).unwrap();
    log.record(event(1)).unwrap();
    log.record(event(2)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let rotated = dir.join("orders.audit.jsonl.1");
    std::fs::rename(&path, &rotated).unwrap();
    log.record(event(3)).unwrap();
    log.close().unwrap();
    let older = std::fs::read(&rotated).unwrap();
    let newer = std::fs::read(&path).unwrap();
    let files = vec![("old".to_owned(), BufReader::new(&older[..])), ("new".to_owned(), BufReader::new(&newer[..]))];
    let report = check(files, std::slice::from_ref(key.public_key()), None);
    assert!(report.is_intact() && report.closed, "{report:?}");
    // The newer file alone starts mid-chain: said, and nothing else is wrong.
    let alone =
        check(vec![("new".to_owned(), BufReader::new(&newer[..]))], std::slice::from_ref(key.public_key()), None);
    assert_eq!(kinds(&alone), [(1, FindingKind::StartMissing)], "{alone:?}");
    assert!(alone.first_seq > Some(0));
    // Given in the wrong order, the files do not chain.
    let files = vec![("new".to_owned(), BufReader::new(&newer[..])), ("old".to_owned(), BufReader::new(&older[..]))];
    assert!(!check(files, std::slice::from_ref(key.public_key()), None).is_intact());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_log_cut_mid_record_is_not_continued() {
    let dir = dir("cut");
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let path = dir.join("orders.audit.jsonl");
    write_log(&path, &key, 3);
    let mut text = std::fs::read(&path).unwrap();
    text.truncate(text.len() - 10);
    std::fs::write(&path, &text).unwrap();
    let refused = AuditLog::open(&path, SERVICE, key.clone(), AuditOptions::default()).unwrap_err();
    assert_eq!(refused.reason(), "audit_log_unavailable");
    assert!(refused.detail().unwrap().contains("not a whole record"), "{refused:?}");
    let report =
        check(vec![("log".to_owned(), BufReader::new(&text[..]))], std::slice::from_ref(key.public_key()), None);
    assert_eq!(kinds(&report).last(), Some(&(4, FindingKind::NotARecord)), "{report:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_full_queue_drops_and_counts_or_refuses_as_configured() {
    let dir = dir("full");
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    // A queue of one, flooded faster than a checkpointing writer drains it.
    for when_full in [WhenFull::Drop, WhenFull::Refuse] {
        let path = dir.join(format!("{when_full:?}.jsonl"));
        let options = AuditOptions { checkpoint_every: 1, queue: 1, when_full, ..Default::default() };
        let log = AuditLog::open(&path, SERVICE, key.clone(), options).unwrap();
        let outcomes: Vec<_> = (0..2_000).map(|i| log.record(event(i))).collect();
        let refused = outcomes.iter().filter(|o| o.is_err()).count();
        match when_full {
            WhenFull::Drop => assert!(refused == 0 && log.dropped() > 0, "dropped {}", log.dropped()),
            WhenFull::Refuse => {
                assert!(refused > 0 && log.dropped() == 0);
                let error = outcomes.into_iter().find_map(Result::err).unwrap();
                assert_eq!(error.reason(), "audit_log_unavailable");
            }
        }
        log.close().unwrap();
        // What was written is intact whatever was dropped.
        let report = verify(&lines(&path), key.public_key(), None);
        assert!(report.is_intact(), "{report:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A verifier with an audit log records each decision on the requests it sees: the allowed
/// caller with its transaction and delegation chain, a refusal before any caller was verified,
/// and a policy's refusal; each named by the proof's id.
#[test]
fn a_verifier_records_every_decision_in_its_audit_log() {
    use crate::common::*;
    use http::HeaderValue;
    use wimse_core::prelude::*;
    use wimse_core::protocol::txn::{NewTxnToken, TxnTokenIssuer, TxnTokenValidation};
    use wimse_core::server::pipeline::Pipeline;

    let dir = dir("verifier");
    let f = Fixture::new();
    let audit_key = SigningKey::generate(Algorithm::ES256).unwrap();
    let path = dir.join("orders.audit.jsonl");
    let log = AuditLog::open(&path, SERVICE, audit_key.clone(), AuditOptions::default()).unwrap();
    let domain: TrustDomain = "spiffe://prod.example".parse().unwrap();
    let verifier =
        f.verifier_with(f.config().txn_tokens(TxnTokenValidation::new(domain.clone()))).audit_log(log.clone());

    // Allowed, in alice's transaction, with an agent acting for her.
    let mut token = NewTxnToken::new("alice", "orders.read").requested_by("spiffe://prod.example/front");
    token.actors = vec!["spiffe://prod.example/agents/planner".parse().unwrap()];
    let txn = TxnTokenIssuer::new(f.issuer_key.clone(), &domain).issue(&token, NOW - 5).unwrap();
    let wpt = WptBuilder::new(&f.workload_key, &f.wit, &format!("{ORIGIN}{PATH}")).txn_token(&txn).sign(NOW).unwrap();
    let mut headers = f.headers(&f.wit, &wpt);
    headers.insert("txn-token", HeaderValue::from_str(&txn).unwrap());
    let caller = verifier.verify_sync(&RequestView::new(PATH, &headers).method("POST")).unwrap();
    // Refused before any caller: no proof.
    let mut bare = http::HeaderMap::new();
    bare.insert("workload-identity-token", HeaderValue::from_str(&f.wit).unwrap());
    assert!(verifier.verify_sync(&RequestView::new("/refunds?id=7", &bare)).is_err());
    // Refused by the pipeline's policy.
    let pipeline = Pipeline::new(verifier.clone()).policy(Policy::named("nobody"));
    let fresh = f.headers(&f.wit, &f.wpt());
    assert!(pipeline.admit(&RequestView::new(PATH, &fresh), None).is_err());
    log.close().unwrap();

    let records: Vec<serde_json::Value> = lines(&path).iter().map(|l| serde_json::from_slice(l).unwrap()).collect();
    let decisions: Vec<&serde_json::Value> = records.iter().filter(|r| r["kind"] == "decision").collect();
    assert_eq!(decisions.len(), 3, "{records:?}");
    let allowed = decisions[0];
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["caller"], f.id.as_str());
    assert_eq!(
        (allowed["action"].as_str(), allowed["resource"].as_str(), allowed["proof"].as_str()),
        (Some("POST"), Some(PATH), Some("wpt"))
    );
    assert_eq!(
        (allowed["subject"].as_str(), allowed["actors"][0].as_str()),
        (Some("alice"), Some("spiffe://prod.example/agents/planner"))
    );
    let verified = caller.transaction().unwrap();
    assert_eq!(allowed["txn"], verified.txn());
    assert_eq!(allowed["request_id"].as_str(), caller.method().proof_id());
    let unverified = decisions[1];
    assert_eq!(
        (unverified["decision"].as_str(), unverified["reason"].as_str(), unverified["resource"].as_str()),
        (Some("deny"), Some("missing_wpt"), Some("/refunds"))
    );
    assert!(unverified.get("caller").is_none(), "{unverified}");
    let by_policy = decisions[2];
    assert_eq!(
        (by_policy["decision"].as_str(), by_policy["reason"].as_str(), by_policy["caller"].as_str()),
        (Some("deny"), Some("policy_denied"), Some(f.id.as_str()))
    );
    assert_eq!(by_policy["policy"], "nobody", "the deciding policy is named");
    assert!(allowed.get("policy").is_none(), "no policy decided the first request: {allowed}");
    // And the log verifies.
    assert!(verify(&lines(&path), audit_key.public_key(), None).is_intact());
    let _ = std::fs::remove_dir_all(dir);
}

/// Opened twice in one process, a log has one writer (two would each chain onto their own last
/// line); settings files name the log, its service and key, relative to the file.
#[test]
fn one_writer_per_file_and_settings_name_the_log() {
    let dir = dir("settings");
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let path = dir.join("shared.audit.jsonl");
    let first = AuditLog::open(&path, SERVICE, key.clone(), AuditOptions::default()).unwrap();
    let second =
        AuditLog::open(dir.join(".").join("shared.audit.jsonl"), SERVICE, key.clone(), AuditOptions::default())
            .unwrap();
    let other = AuditLog::open(&path, "spiffe://prod.example/other", key.clone(), AuditOptions::default()).unwrap_err();
    assert!(other.detail().unwrap().contains("already written by"), "{other:?}");
    for i in 0..4 {
        first.record(event(i)).unwrap();
        second.record(event(i)).unwrap();
    }
    drop(second);
    first.close().unwrap();
    let report = verify(&lines(&path), key.public_key(), None);
    assert!(report.is_intact() && report.records == 9, "{report:?}");

    // From a settings file: the verifier it builds records into the log.
    std::fs::write(dir.join("audit.key.jwk"), serde_json::to_string(&key.to_private_jwk()).unwrap()).unwrap();
    std::fs::write(dir.join("issuer.pub.jwk"), serde_json::to_string(key.public_jwk()).unwrap()).unwrap();
    let settings = format!(
        r#"{{"verifier": {{"origins": ["https://orders.example"], "trust": [{{"trust_domain": "spiffe://prod.example", "file": "issuer.pub.jwk"}}]}},
            "audit": {{"file": "orders.audit.jsonl", "service": "{SERVICE}", "key": "audit.key.jwk", "checkpoint_every": 2, "when_full": "refuse"}}}}"#
    );
    std::fs::write(dir.join("service.json"), settings).unwrap();
    let loaded = wimse_core::config::Settings::from_file(dir.join("service.json")).unwrap();
    assert_eq!(loaded.audit.as_ref().unwrap().file, dir.join("orders.audit.jsonl"));
    let verifier = loaded.verifier().unwrap();
    let headers = http::HeaderMap::new();
    assert!(verifier.verify_sync(&wimse_core::server::verify::RequestView::new("/orders", &headers)).is_err());
    let log = loaded.audit.as_ref().unwrap().open().unwrap();
    log.close().unwrap();
    let written = lines(&dir.join("orders.audit.jsonl"));
    let first_record: serde_json::Value = serde_json::from_slice(&written[0]).unwrap();
    assert_eq!(
        (first_record["decision"].as_str(), first_record["reason"].as_str()),
        (Some("deny"), Some("missing_wit"))
    );
    // A bad choice is named.
    let bad = format!(
        r#"{{"verifier": {{"origins": ["https://orders.example"], "trust": [{{"trust_domain": "spiffe://prod.example", "file": "issuer.pub.jwk"}}]}}, "audit": {{"file": "x.jsonl", "service": "{SERVICE}", "key": "audit.key.jwk", "when_full": "block"}}}}"#
    );
    std::fs::write(dir.join("bad.json"), bad).unwrap();
    let refused = wimse_core::config::Settings::from_file(dir.join("bad.json")).unwrap().verifier().unwrap_err();
    assert!(refused.detail().unwrap().contains("audit.when_full"), "{refused:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A log cut before its newest checkpoint is not continued on restart (the next checkpoint
/// would hide the cut), a second close does not hang, and a log that refuses records when its
/// writer is behind refuses the requests it cannot record.
#[test]
fn a_cut_log_is_not_resumed_and_a_refusing_log_refuses_requests() {
    use crate::common::*;
    use wimse_core::prelude::*;
    let dir = dir("resume");
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let path = dir.join("orders.audit.jsonl");
    write_log(&path, &key, 12);
    let mut cut = Vec::new();
    for line in &lines(&path)[..8] {
        cut.extend_from_slice(line);
        cut.push(b'\n');
    }
    std::fs::write(&path, &cut).unwrap();
    let refused = AuditLog::open(&path, SERVICE, key.clone(), AuditOptions::default()).unwrap_err();
    assert!(refused.detail().unwrap().contains("does not hold its newest checkpoint"), "{refused:?}");

    // Closed twice (by two clones): the second answers at once.
    let fresh = dir.join("twice.audit.jsonl");
    let first = AuditLog::open(&fresh, SERVICE, key.clone(), AuditOptions::default()).unwrap();
    let second = first.clone();
    first.close().unwrap();
    assert_eq!(second.close().unwrap_err().reason(), "audit_log_unavailable");
    // And reopened, the chain goes on.
    let again = AuditLog::open(&fresh, SERVICE, key.clone(), AuditOptions::default()).unwrap();
    again.record(event(1)).unwrap();
    again.close().unwrap();
    let head = std::fs::read(dir.join("twice.audit.jsonl.head")).unwrap();
    assert!(verify(&lines(&fresh), key.public_key(), Some(&head)).is_intact());

    // A log that can take no record and refuses when full: every request is refused, as the
    // ones beyond a full queue are.
    let f = Fixture::new();
    let options = AuditOptions { queue: 0, when_full: WhenFull::Refuse, ..Default::default() };
    let log = AuditLog::open(dir.join("refusing.audit.jsonl"), SERVICE, key.clone(), options).unwrap();
    let verifier = f.verifier().audit_log(log.clone());
    for _ in 0..3 {
        let refused = verifier.verify_sync(&RequestView::new(PATH, &f.headers(&f.wit, &f.wpt()))).unwrap_err();
        assert_eq!(refused.reason(), "audit_log_unavailable");
    }
    log.close().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn traces_mark_unsigned_hops_and_escape_what_records_say() {
    use wimse_core::server::audit_log::trace;
    let dir = dir("trace");
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let path = dir.join("orders.audit.jsonl");
    // A resource written to break out of the DOT label, and a control character.
    let mut hostile = event(1);
    hostile.resource = Some(r#"/x" ] ; evil [label="owned\"#.into());
    hostile.caller = Some("spiffe://prod.example/front\nforged line".into());
    let log = AuditLog::open(&path, SERVICE, key.clone(), AuditOptions::default()).unwrap();
    log.record(hostile).unwrap();
    log.close().unwrap();
    // A record appended after the closing checkpoint (by whoever can write the file).
    let mut text = std::fs::read(&path).unwrap();
    let last = lines(&path).last().unwrap().clone();
    let appended = serde_json::json!({"v": 1, "seq": 2, "ts_ms": 1, "service": SERVICE, "kind": "decision",
        "txn": "txn-1", "caller": "spiffe://prod.example/ghost", "decision": "allow", "prev": line_hash(&last)});
    text.extend_from_slice(serde_json::to_string(&appended).unwrap().as_bytes());
    text.push(b'\n');
    let files = vec![("orders".to_owned(), text)];
    let custody = trace(&files, "txn-1", std::slice::from_ref(key.public_key()));
    assert_eq!(custody.hops.len(), 2);
    let (ghost, real) = if custody.hops[0].seq == 2 {
        (&custody.hops[0], &custody.hops[1])
    } else {
        (&custody.hops[1], &custody.hops[0])
    };
    assert!(custody.is_signed(real) && !custody.is_signed(ghost));
    let text = custody.text();
    assert!(
        text.contains("spiffe://prod.example/ghost -> ") && text.contains("[not signed by a checkpoint]"),
        "{text}"
    );
    assert!(!text.contains("\nforged line"), "a record adds no line: {text}");
    let dot = custody.dot();
    assert!(dot.contains(r#"/x\" ] ; evil [label=\"owned\\"#), "{dot}");
    // Every quote inside a label is escaped: the labels' own quotes pair up.
    for line in dot.lines().filter(|l| l.contains("->")) {
        let unescaped = line.replace(r"\\", "").replace(r#"\""#, "");
        assert_eq!(unescaped.matches('"').count(), 6, "{line}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A hop's record names its parent request only when the caller bound it: in the WPT's `oth`,
/// or covered by its HTTP signature. Unbound, changed, repeated or malformed, the field is
/// refused, never recorded.
#[test]
fn a_hop_records_its_parent_request_only_when_the_caller_bound_it() {
    use crate::common::*;
    use http::HeaderValue;
    use wimse_core::draft::PARENT_REQUEST_HEADER;
    use wimse_core::prelude::*;

    let dir = dir("parent");
    let f = Fixture::new();
    let audit_key = SigningKey::generate(Algorithm::ES256).unwrap();
    let path = dir.join("orders.audit.jsonl");
    let log = AuditLog::open(&path, SERVICE, audit_key.clone(), AuditOptions::default()).unwrap();
    let verifier = f.verifier_with(f.config()).audit_log(log.clone());
    let verify = |headers: &http::HeaderMap| verifier.verify_sync(&RequestView::new(PATH, headers).method("GET"));
    let with_parent = |headers: &mut http::HeaderMap, parent: &str| {
        headers.insert(PARENT_REQUEST_HEADER, HeaderValue::from_str(parent).unwrap());
    };
    let bound_wpt = |parent: &str| {
        WptBuilder::new(&f.workload_key, &f.wit, &format!("{ORIGIN}{PATH}"))
            .other_token(PARENT_REQUEST_HEADER, parent)
            .sign(NOW)
            .unwrap()
    };

    // Bound in the WPT's `oth`: recorded.
    let mut headers = f.headers(&f.wit, &bound_wpt("parent-1"));
    with_parent(&mut headers, "parent-1");
    verify(&headers).expect("a bound parent");
    // Covered by an HTTP signature: recorded.
    let mut signed = http::HeaderMap::new();
    with_parent(&mut signed, "parent.2~x");
    verify(&f.sign_headers(signed, "GET", None, false)).expect("a covered parent");

    let refusals: Vec<(http::HeaderMap, &str)> = vec![
        // Not in the WPT's `oth`.
        (
            {
                let mut h = f.headers(&f.wit, &f.wpt());
                with_parent(&mut h, "parent-3");
                h
            },
            "other_token_binding_mismatch",
        ),
        // Bound, then changed on the way.
        (
            {
                let mut h = f.headers(&f.wit, &bound_wpt("parent-4"));
                with_parent(&mut h, "parent-5");
                h
            },
            "other_token_binding_mismatch",
        ),
        // Added after the HTTP signature.
        (
            {
                let mut h = f.signed_request("GET", None, false);
                with_parent(&mut h, "parent-6");
                h
            },
            "missing_required_component",
        ),
        // Two fields.
        (
            {
                let mut h = f.headers(&f.wit, &bound_wpt("parent-7"));
                with_parent(&mut h, "parent-7");
                h.append(PARENT_REQUEST_HEADER, HeaderValue::from_static("parent-8"));
                h
            },
            "duplicate_context_token",
        ),
        // Not a proof id, even bound.
        (
            {
                let mut h = f.headers(&f.wit, &bound_wpt("a b"));
                with_parent(&mut h, "a b");
                h
            },
            "invalid_header_value",
        ),
        (
            {
                let long = "p".repeat(257);
                let mut h = f.headers(&f.wit, &bound_wpt(&long));
                with_parent(&mut h, &long);
                h
            },
            "oversized_token",
        ),
    ];
    for (headers, reason) in &refusals {
        let refused = verify(headers).expect_err(reason);
        assert_eq!(refused.reason(), *reason, "{refused}");
    }
    log.close().unwrap();

    let records: Vec<serde_json::Value> = lines(&path).iter().map(|l| serde_json::from_slice(l).unwrap()).collect();
    let decisions: Vec<&serde_json::Value> = records.iter().filter(|r| r["kind"] == "decision").collect();
    assert_eq!(decisions.len(), 2 + refusals.len(), "{records:?}");
    assert_eq!(decisions[0]["parent_request_id"], "parent-1");
    assert_eq!(
        (decisions[1]["proof"].as_str(), decisions[1]["parent_request_id"].as_str()),
        (Some("http-signature"), Some("parent.2~x"))
    );
    for refused in &decisions[2..] {
        assert_eq!(refused["decision"], "deny");
        assert!(refused.get("parent_request_id").is_none(), "{refused}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A trace links each hop to the one it was made during (its parent request), across services'
/// logs, and says when the parent is in none of the logs given.
#[test]
fn traces_link_each_hop_to_the_request_it_was_made_during() {
    use wimse_core::server::audit_log::trace;
    let dir = dir("trace-parents");
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let write = |service: &str, events: Vec<AuditEvent>| {
        let path = dir.join(format!("{}.audit.jsonl", service.rsplit('/').next().unwrap()));
        let log = AuditLog::open(&path, service, key.clone(), AuditOptions::default()).unwrap();
        for event in events {
            log.record(event).unwrap();
            // Distinct times, so the hops' order is the calls' order.
            std::thread::sleep(Duration::from_millis(3));
        }
        log.close().unwrap();
        (service.to_owned(), std::fs::read(&path).unwrap())
    };
    let hop = |request: &str, parent: Option<&str>, caller: &str| AuditEvent {
        request_id: Some(request.into()),
        parent_request_id: parent.map(Into::into),
        caller: Some(caller.into()),
        decision: "allow".into(),
        ..event(1)
    };
    // Each log's service is its workload's identifier, as callers are named.
    let (front, orders, stock) =
        ("spiffe://prod.example/front", "spiffe://prod.example/orders", "spiffe://prod.example/stock");
    let files = vec![
        write(front, vec![hop("r-front", None, "spiffe://prod.example/edge")]),
        write(orders, vec![hop("r-orders", Some("r-front"), front)]),
        write(stock, vec![hop("r-stock", Some("r-elsewhere"), orders)]),
        // Naming a request that its caller (orders) did not serve: not linked.
        write("spiffe://prod.example/ledger", vec![hop("r-ledger", Some("r-front"), orders)]),
    ];
    let custody = trace(&files, "txn-1", std::slice::from_ref(key.public_key()));
    assert_eq!(custody.hops.len(), 4);
    assert_eq!(custody.parent(&custody.hops[0]), None);
    assert_eq!(custody.parent(&custody.hops[1]), Some(Ok(0)));
    assert_eq!(custody.parent(&custody.hops[2]), Some(Err("r-elsewhere".to_owned())));
    assert_eq!(custody.parent(&custody.hops[3]), Some(Err("r-front".to_owned())), "a request of another service");
    let text = custody.text();
    let linked = format!(" 2. {front} -> {orders}");
    assert!(text.lines().any(|l| l.starts_with(&linked) && l.contains("| during 1")), "{text}");
    assert!(text.contains("during request r-elsewhere (not in these logs)"), "{text}");
    assert!(custody.dot().contains(r"\nduring 1"), "{}", custody.dot());
    let _ = std::fs::remove_dir_all(dir);
}
