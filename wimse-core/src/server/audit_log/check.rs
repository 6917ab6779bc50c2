//! Verifying audit logs: the chain, the checkpoints, and the head.

use std::io::{BufRead, Read};

use super::{AuditRecord, CHECKPOINT_TYPE, CheckpointClaims, FORMAT_VERSION, RecordKind, line_hash};
use crate::jose::{Backend, PublicKey, jws};

/// The longest line read as a record (a record is far shorter).
pub const MAX_LINE: usize = 1 << 20;

/// What is wrong at a place in a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// The file could not be read.
    Unreadable,
    /// A line is not a record of this format (edited, or cut short).
    NotARecord,
    /// A record was edited (the next one names another hash for it, or its number is off).
    Changed,
    /// Records are missing (deleted) before this line.
    Missing,
    /// Records are out of order (swapped, moved or repeated).
    Reordered,
    /// A checkpoint whose signature does not verify, or signs something else.
    BadCheckpoint,
    /// A checkpoint signed by a key that was not given.
    UnknownKey,
    /// The log ends before its newest checkpoint (the tail was cut).
    Truncated,
    /// The first record given is not a log's first: the records before it were deleted, or are
    /// in an older file not given (a rotated log's later file).
    StartMissing,
}

/// One finding: where, what, and a sentence saying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file (as named to [`check`]).
    pub file: String,
    /// The line, from 1 (0: the file as a whole, or the head).
    pub line: usize,
    /// What is wrong.
    pub kind: FindingKind,
    /// What is wrong, in a sentence.
    pub message: String,
}

/// The outcome of [`check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Records read (checkpoints included).
    pub records: u64,
    /// Checkpoints whose signature verified.
    pub checkpoints: u64,
    /// The number of the newest verified checkpoint: every record up to it is protected.
    pub signed_through: Option<u64>,
    /// Records after the newest verified checkpoint (chained, not yet signed).
    pub unsigned_tail: u64,
    /// The first record's number (not 0 when the files given start mid-chain, after rotation).
    pub first_seq: Option<u64>,
    /// The log ends with a closing checkpoint.
    pub closed: bool,
    /// What is wrong, in order; none for an intact log.
    pub findings: Vec<Finding>,
}

impl Report {
    /// No finding.
    pub fn is_intact(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Verifies a checkpoint's signature against `keys` (by thumbprint): `Err` says why not.
fn verify_checkpoint(record: &AuditRecord, keys: &[PublicKey]) -> Result<(), (FindingKind, String)> {
    let bad = |why: &str| (FindingKind::BadCheckpoint, format!("checkpoint {}: {why}", record.seq));
    let token = record.signature.as_deref().ok_or_else(|| bad("no signature"))?;
    let parsed = jws::parse(token, 8 * 1024).map_err(|_| bad("the signature is not a compact JWS"))?;
    if parsed.header_str("typ").ok().flatten() != Some(CHECKPOINT_TYPE) {
        return Err(bad("the signature's typ is not an audit checkpoint's"));
    }
    let kid = parsed.header_str("kid").ok().flatten().unwrap_or_default();
    let Some(key) = keys.iter().find(|k| k.thumbprint() == kid) else {
        let message = format!("checkpoint {} is signed by key {kid:?}, which was not given", record.seq);
        return Err((FindingKind::UnknownKey, message));
    };
    let alg = parsed.algorithm().map_err(|_| bad("unsupported alg"))?;
    if !key.verify(Backend::default(), alg, parsed.signing_input.as_bytes(), &parsed.signature) {
        return Err(bad("the signature does not verify"));
    }
    let claims: CheckpointClaims = serde_json::from_value(serde_json::Value::Object(parsed.claims))
        .map_err(|_| bad("the signature's payload is not a checkpoint"))?;
    let expected = CheckpointClaims {
        service: record.service.clone(),
        seq: record.seq,
        prev: record.prev.clone(),
        ts_ms: record.ts_ms,
    };
    if claims != expected {
        return Err(bad("the signature is for another checkpoint (its record was changed)"));
    }
    Ok(())
}

/// The chain as read so far.
#[derive(Default)]
struct Chain {
    prev_hash: Option<String>,
    prev_seq: Option<u64>,
    /// The head checkpoint's number and hash, and whether the line at that number matched.
    head: Option<(u64, String)>,
    head_seen: Option<bool>,
    last_seq: Option<u64>,
    since_checkpoint: u64,
    /// Where the line before is: (file, line).
    prev_place: Option<(String, usize)>,
}

/// Verifies `files` (their lines, in the order written: a rotated log's older files first)
/// against the audit `keys`, and `head` (the `.head` file's checkpoint line) when given.
pub fn check<R: BufRead>(files: Vec<(String, R)>, keys: &[PublicKey], head: Option<&[u8]>) -> Report {
    let mut report = Report::default();
    let mut chain = Chain::default();
    let head = head.map(|h| h.strip_suffix(b"\n").unwrap_or(h));
    let head_record = match head.map(serde_json::from_slice::<AuditRecord>) {
        Some(Ok(record)) if record.kind != RecordKind::Decision => Some(record),
        Some(_) => {
            let message = "the head file is not a checkpoint".to_owned();
            report.findings.push(Finding { file: "head".into(), line: 0, kind: FindingKind::NotARecord, message });
            None
        }
        None => None,
    };
    if let (Some(record), Some(head)) = (&head_record, head) {
        chain.head = Some((record.seq, line_hash(head)));
    }
    for (name, mut reader) in files {
        let mut number = 0;
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = (&mut reader).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line);
            match read {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    report.findings.push(Finding {
                        file: name.clone(),
                        line: 0,
                        kind: FindingKind::Unreadable,
                        message: e.to_string(),
                    });
                    break;
                }
            }
            number += 1;
            let finding = |kind, message: String| Finding { file: name.clone(), line: number, kind, message };
            let Some(body) = line.strip_suffix(b"\n") else {
                let message = if line.len() > MAX_LINE {
                    format!("line {number} is longer than {MAX_LINE} bytes: not a record")
                } else {
                    format!("line {number} is cut short (no newline): the file was truncated mid-record")
                };
                report.findings.push(finding(FindingKind::NotARecord, message));
                break;
            };
            report.records += 1;
            let hash = line_hash(body);
            let record = match serde_json::from_slice::<AuditRecord>(body) {
                Ok(record) if record.v == FORMAT_VERSION => record,
                _ => {
                    let message = format!("line {number} is not an audit record: it was changed");
                    report.findings.push(finding(FindingKind::NotARecord, message));
                    chain.prev_hash = Some(hash);
                    chain.prev_seq = chain.prev_seq.map(|s| s.saturating_add(1));
                    chain.prev_place = Some((name.clone(), number));
                    continue;
                }
            };
            if report.first_seq.is_none() {
                report.first_seq = Some(record.seq);
                if record.seq != 0 || !record.prev.is_empty() {
                    let message = format!(
                        "the first record given is record {}: the records before it are missing (deleted, or in an older file not given)",
                        record.seq
                    );
                    report.findings.push(finding(FindingKind::StartMissing, message));
                }
            }
            if let Some(problem) = chain_problem(&chain, &record, number) {
                report.findings.push(finding(problem.0, problem.1));
            }
            if let Some((head_seq, head_hash)) = &chain.head
                && record.seq == *head_seq
            {
                chain.head_seen = Some(chain.head_seen.unwrap_or(true) && &hash == head_hash);
            }
            chain.prev_hash = Some(hash);
            chain.prev_seq = Some(record.seq);
            chain.prev_place = Some((name.clone(), number));
            chain.last_seq = Some(record.seq);
            match record.kind {
                RecordKind::Decision => {
                    chain.since_checkpoint += 1;
                    report.closed = false;
                }
                RecordKind::Checkpoint | RecordKind::Close => match verify_checkpoint(&record, keys) {
                    Ok(()) => {
                        report.checkpoints += 1;
                        report.signed_through = Some(record.seq);
                        chain.since_checkpoint = 0;
                        report.closed = record.kind == RecordKind::Close;
                    }
                    Err((kind, message)) => report.findings.push(finding(kind, format!("line {number}: {message}"))),
                },
            }
        }
    }
    report.unsigned_tail = chain.since_checkpoint;
    if let Some(record) = &head_record {
        check_head(&mut report, &chain, record, keys);
    }
    report
}

/// How `record` (at `line`) fails to follow the chain, if it does.
fn chain_problem(chain: &Chain, record: &AuditRecord, line: usize) -> Option<(FindingKind, String)> {
    let (Some(prev_hash), Some(prev_seq)) = (&chain.prev_hash, chain.prev_seq) else {
        // The first record read: whether it starts a log is checked apart (`StartMissing`).
        return None;
    };
    let expected = prev_seq.saturating_add(1);
    if &record.prev == prev_hash {
        return (record.seq != expected).then(|| {
            let message = format!("line {line} was changed: its number is {}, {expected} expected", record.seq);
            (FindingKind::Changed, message)
        });
    }
    let before = match &chain.prev_place {
        Some((file, number)) if line == 1 => format!("line {number} of {file}"),
        Some((_, number)) => format!("line {number}"),
        None => "the line before".to_owned(),
    };
    Some(if record.seq == expected {
        (FindingKind::Changed, format!("{before} was changed: line {line} names another hash for it"))
    } else if record.seq > expected {
        let missing = if record.seq - 1 == expected {
            format!("record {expected} is")
        } else {
            format!("records {expected} to {} are", record.seq - 1)
        };
        (FindingKind::Missing, format!("{missing} missing before line {line}: deleted"))
    } else {
        let message = format!(
            "line {line} (record {}) comes after record {prev_seq}: records were reordered or repeated",
            record.seq
        );
        (FindingKind::Reordered, message)
    })
}

/// The head file's checkpoint must be in the log: else the tail was cut (or the head is not
/// this log's).
fn check_head(report: &mut Report, chain: &Chain, record: &AuditRecord, keys: &[PublicKey]) {
    let head_finding = |kind, message| Finding { file: "head".into(), line: 0, kind, message };
    if let Err((kind, message)) = verify_checkpoint(record, keys) {
        report.findings.push(head_finding(kind, format!("head: {message}")));
        return;
    }
    // A head older than the files given (a rotated log's later file, checked alone).
    if report.first_seq.is_some_and(|first| record.seq < first) {
        return;
    }
    match chain.head_seen {
        Some(true) => {}
        Some(false) => report.findings.push(head_finding(
            FindingKind::Changed,
            format!("the log's record {} is not the checkpoint the head file holds: it was changed", record.seq),
        )),
        None => {
            let last = chain.last_seq.map_or("no record".to_owned(), |s| format!("record {s}"));
            report.findings.push(head_finding(
                FindingKind::Truncated,
                format!(
                    "the log ends at {last}, before its newest checkpoint (record {}, in the head file): the tail was cut",
                    record.seq
                ),
            ));
        }
    }
}
