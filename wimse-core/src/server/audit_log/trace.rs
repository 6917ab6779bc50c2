//! The chain of custody of one transaction, from the audit logs of many services.

use std::collections::BTreeMap;
use std::io::BufReader;

use super::{AuditRecord, FindingKind, RecordKind, Report, check};
use crate::jose::PublicKey;

/// How a service's log stood up to [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogVerdict {
    /// Intact, and signed by a key given.
    Verified,
    /// Signed by a key that was not given: read, not verified.
    UnknownKey,
    /// No checkpoint yet: chained, not signed.
    Unsigned,
    /// Changed: the first finding.
    Tampered(String),
}

/// One service's log.
#[derive(Debug, Clone)]
pub struct ServiceLog {
    /// The service (the writer named in its records).
    pub service: String,
    /// Its files, in the order given.
    pub files: Vec<String>,
    /// The check of its files.
    pub report: Report,
    /// What the check says.
    pub verdict: LogVerdict,
}

/// One transaction's records across services, in time order.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The transaction.
    pub txn: String,
    /// Each service's log, verified.
    pub logs: Vec<ServiceLog>,
    /// The decisions on the transaction's requests, oldest first.
    pub hops: Vec<AuditRecord>,
}

fn verdict(report: &Report) -> LogVerdict {
    // A later file of a rotated log starts mid-chain: said by `first_seq`, not tampering here.
    let tampering = |f: &&super::Finding| !matches!(f.kind, FindingKind::UnknownKey | FindingKind::StartMissing);
    if let Some(finding) = report.findings.iter().find(tampering) {
        return LogVerdict::Tampered(format!("{}:{}: {}", finding.file, finding.line, finding.message));
    }
    if report.findings.iter().any(|f| f.kind == FindingKind::UnknownKey) {
        LogVerdict::UnknownKey
    } else if report.checkpoints == 0 {
        LogVerdict::Unsigned
    } else {
        LogVerdict::Verified
    }
}

/// Collects transaction `txn` from `files` (name and content; each service's files oldest
/// first), each service's log checked against `keys`.
pub fn trace(files: &[(String, Vec<u8>)], txn: &str, keys: &[PublicKey]) -> Trace {
    let mut by_service: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut hops = Vec::new();
    for (index, (name, content)) in files.iter().enumerate() {
        let mut service = None;
        for line in content.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(record) = serde_json::from_slice::<AuditRecord>(line) else { continue };
            service.get_or_insert_with(|| record.service.clone());
            let in_txn = record.event.as_ref().and_then(|e| e.txn.as_deref()) == Some(txn);
            if record.kind == RecordKind::Decision && in_txn {
                hops.push(record);
            }
        }
        by_service.entry(service.unwrap_or_else(|| name.clone())).or_default().push(index);
    }
    let logs = by_service
        .into_iter()
        .map(|(service, indexes)| {
            let readers = indexes.iter().map(|&i| (files[i].0.clone(), BufReader::new(&files[i].1[..]))).collect();
            let report = check(readers, keys, None);
            let files = indexes.iter().map(|&i| files[i].0.clone()).collect();
            ServiceLog { service, files, verdict: verdict(&report), report }
        })
        .collect();
    hops.sort_by(|a, b| (a.ts_ms, &a.service, a.seq).cmp(&(b.ts_ms, &b.service, b.seq)));
    Trace { txn: txn.to_owned(), logs, hops }
}

fn field(value: Option<&String>) -> &str {
    value.map_or("-", String::as_str)
}

/// A DOT string's content: quotes and backslashes escaped, control characters dropped (no
/// field of a record, which the log's writer or an attacker chose, can end the string).
fn dot_escape(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

/// A field for one line of text: control characters dropped, so a record cannot add lines.
fn plain(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

impl Trace {
    /// Whether `hop` is covered by a verified checkpoint of its service's log (records after
    /// the last checkpoint are chained, not signed).
    pub fn is_signed(&self, hop: &AuditRecord) -> bool {
        self.logs.iter().any(|log| {
            log.service == hop.service
                && log.verdict == LogVerdict::Verified
                && log.report.signed_through.is_some_and(|signed| hop.seq <= signed)
        })
    }

    /// The hop `hop` was made during, as its caller said ([`super::AuditEvent::parent_request_id`]):
    /// `Ok(n)` the index of that hop here, `Err(id)` a request these logs do not hold. Only a
    /// hop served by this hop's caller (its log's service is the caller's identifier) can be
    /// its parent: a caller cannot hang its call under another service's request.
    pub fn parent(&self, hop: &AuditRecord) -> Option<std::result::Result<usize, String>> {
        let event = hop.event.as_ref()?;
        let parent = event.parent_request_id.as_ref()?;
        let found = self.hops.iter().position(|other| {
            other.event.as_ref().and_then(|e| e.request_id.as_ref()) == Some(parent)
                && event.caller.as_deref() == Some(other.service.as_str())
                && !std::ptr::eq(other, hop)
        });
        Some(found.ok_or_else(|| parent.clone()))
    }

    /// The parent of `hop` in words: `during 2`, or the request id these logs do not hold.
    fn during(&self, hop: &AuditRecord) -> Option<String> {
        match self.parent(hop)? {
            Ok(n) => Some(format!("during {}", n + 1)),
            Err(id) => Some(format!("during request {id} (not in these logs)")),
        }
    }

    /// Whether every log was verified.
    pub fn all_verified(&self) -> bool {
        self.logs.iter().all(|log| log.verdict == LogVerdict::Verified)
    }

    /// The logs' verdicts and the hops, one line each.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for log in &self.logs {
            let verdict = match &log.verdict {
                LogVerdict::Verified => "verified".to_owned(),
                LogVerdict::UnknownKey => "NOT VERIFIED: its audit key was not given".to_owned(),
                LogVerdict::Unsigned => "NOT VERIFIED: no checkpoint yet".to_owned(),
                LogVerdict::Tampered(why) => format!("TAMPERED: {why}"),
            };
            out.push_str(&format!("log of {}: {verdict}\n", log.service));
        }
        let subject = self.hops.iter().find_map(|h| h.event.as_ref().and_then(|e| e.subject.clone()));
        let subject = subject.map(|s| format!(", for {s}")).unwrap_or_default();
        out.push_str(&format!("transaction {}: {} hops{subject}\n", self.txn, self.hops.len()));
        for (n, hop) in self.hops.iter().enumerate() {
            let event = hop.event.clone().unwrap_or_default();
            let actors = if event.actors.is_empty() {
                String::new()
            } else {
                format!(" | agents {}", event.actors.join(" <- "))
            };
            let reason = event.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
            let unsigned = if self.is_signed(hop) { "" } else { " [not signed by a checkpoint]" };
            let during = self.during(hop).map(|d| format!(" | {d}")).unwrap_or_default();
            let line = format!(
                "{:>2}. {} -> {} | {} {} | {} | {}{reason}{actors}{during}{unsigned}",
                n + 1,
                field(event.caller.as_ref()),
                hop.service,
                field(event.action.as_ref()),
                field(event.resource.as_ref()),
                field(event.proof.as_ref()),
                event.decision,
            );
            out.push_str(&plain(&line));
            out.push('\n');
        }
        out
    }

    /// The chain of custody as a Graphviz graph: workloads as boxes, each hop an arrow with its
    /// order, action, proof, decision and agents (green allowed, red refused).
    pub fn dot(&self) -> String {
        let mut dot = format!(
            "digraph custody {{\n  label=\"{}\";\n  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];\n  edge [fontname=\"Helvetica\", fontsize=10];\n",
            dot_escape(&format!("transaction {}", self.txn))
        );
        for (n, hop) in self.hops.iter().enumerate() {
            let event = hop.event.clone().unwrap_or_default();
            let reason = event.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
            let mut lines = vec![
                format!("{}. {} {}", n + 1, field(event.action.as_ref()), field(event.resource.as_ref())),
                format!("{}, {}{reason}", field(event.proof.as_ref()), event.decision),
            ];
            if !event.actors.is_empty() {
                lines.push(format!("agents {}", event.actors.join(" <- ")));
            }
            if let Some(during) = self.during(hop) {
                lines.push(during);
            }
            if !self.is_signed(hop) {
                lines.push("not signed by a checkpoint".to_owned());
            }
            // Each line escaped on its own, joined by Graphviz's line break.
            let label = lines.iter().map(|l| dot_escape(l)).collect::<Vec<_>>().join("\\n");
            let colour = if event.decision == "allow" { "darkgreen" } else { "red" };
            dot.push_str(&format!(
                "  \"{}\" -> \"{}\" [label=\"{label}\", color={colour}, fontcolor={colour}];\n",
                dot_escape(field(event.caller.as_ref())),
                dot_escape(&hop.service)
            ));
        }
        dot.push_str("}\n");
        dot
    }
}
