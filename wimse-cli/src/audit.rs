//! `wimse audit verify | trace`: tamper-evident audit logs (`wimse_core::server::audit_log`).

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use wimse_core::jose::{Jwk, PublicKey};
use wimse_core::server::audit_log::{AuditRecord, RecordKind, Report, check};

use crate::CliResult;

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// An audit key (a public or private JWK, or a JWKS): checkpoints must be signed by one.
    /// Repeatable. Keys never come from the log itself.
    #[arg(long = "key", required = true)]
    keys: Vec<PathBuf>,
    /// The head file (the newest checkpoint) to hold the log to; by default `<last file>.head`
    /// when it exists.
    #[arg(long)]
    head: Option<PathBuf>,
    /// Do not read a head file.
    #[arg(long, conflicts_with = "head")]
    no_head: bool,
    /// The log's files, oldest first (a rotated log: `audit.jsonl.1 audit.jsonl`).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct TraceArgs {
    /// The transaction (a Txn-Token's `txn`).
    #[arg(long)]
    txn: String,
    /// The services' audit keys (JWK or JWKS files). Repeatable; a log signed by a key not given
    /// is traced but said to be unverified.
    #[arg(long = "key")]
    keys: Vec<PathBuf>,
    /// Write the chain of custody as Graphviz DOT to this file.
    #[arg(long)]
    dot: Option<PathBuf>,
    /// Write it as SVG to this file (rendered by Graphviz `dot`, which must be installed).
    #[arg(long)]
    svg: Option<PathBuf>,
    /// The audit logs of the services, each service's files oldest first.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// The audit keys in `paths`: each a JWK (its public part) or a JWKS.
fn read_keys(paths: &[PathBuf]) -> Result<Vec<PublicKey>, String> {
    let mut keys = Vec::new();
    for path in paths {
        let text = crate::files::read_text(path)?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let jwks: Vec<serde_json::Value> = match value.get("keys") {
            Some(serde_json::Value::Array(keys)) => keys.clone(),
            _ => vec![value],
        };
        for jwk in jwks {
            let jwk = Jwk::from_json(&jwk.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
            keys.push(PublicKey::from_jwk(&jwk.to_public()).map_err(|e| format!("{}: {e}", path.display()))?);
        }
    }
    Ok(keys)
}

fn open(path: &Path) -> Result<BufReader<std::fs::File>, String> {
    std::fs::File::open(path).map(BufReader::new).map_err(|e| format!("{}: {e}", path.display()))
}

fn verify_files(files: &[PathBuf], keys: &[PublicKey], head: Option<&[u8]>) -> Result<Report, String> {
    let readers = files.iter().map(|f| Ok((f.display().to_string(), open(f)?))).collect::<Result<Vec<_>, String>>()?;
    Ok(check(readers, keys, head))
}

/// What a report says, one line each; the findings first.
fn describe(report: &Report) -> String {
    let mut out = String::new();
    for finding in &report.findings {
        let place = if finding.line == 0 { finding.file.clone() } else { format!("{}:{}", finding.file, finding.line) };
        out.push_str(&format!("TAMPERED {place}: {} ({:?})\n", finding.message, finding.kind));
    }
    let signed =
        report.signed_through.map_or("no checkpoint verified".to_owned(), |s| format!("signed through record {s}"));
    let end = if report.closed { "closed" } else { "open (still being written, or not closed in order)" };
    out.push_str(&format!(
        "{} records, {} checkpoints, {signed}, {} records after the last checkpoint, {end}\n",
        report.records, report.checkpoints, report.unsigned_tail
    ));
    out
}

pub(crate) fn verify(args: VerifyArgs) -> CliResult {
    let keys = read_keys(&args.keys)?;
    let head_path = match (&args.head, args.no_head) {
        (Some(head), _) => Some(head.clone()),
        (None, false) => {
            let mut default = args.files.last().map(|f| f.as_os_str().to_owned()).unwrap_or_default();
            default.push(".head");
            Some(PathBuf::from(default)).filter(|p| p.exists())
        }
        (None, true) => None,
    };
    let head = head_path.as_deref().map(crate::files::read_input).transpose()?;
    let report = verify_files(&args.files, &keys, head.as_deref())?;
    print!("{}", describe(&report));
    match head_path {
        Some(path) => println!("held to the head file {}", path.display()),
        None => println!("no head file: a tail cut before the last checkpoint cannot be seen"),
    }
    if report.is_intact() {
        println!("intact");
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(1))
    }
}

/// One hop of a transaction: a decision record, with the service that wrote it.
struct Hop {
    record: AuditRecord,
}

impl Hop {
    fn get<'a>(&'a self, field: impl Fn(&'a wimse_core::server::audit_log::AuditEvent) -> Option<&'a str>) -> &'a str {
        self.record.event.as_ref().and_then(field).unwrap_or("-")
    }
}

pub(crate) fn trace(args: TraceArgs) -> CliResult {
    let keys = read_keys(&args.keys)?;
    // The files by service (the first record names it), each service's in the order given.
    let mut by_service: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut hops = Vec::new();
    for file in &args.files {
        let text = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let mut service = None;
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(record) = serde_json::from_slice::<AuditRecord>(line) else { continue };
            service.get_or_insert_with(|| record.service.clone());
            let in_txn = record.event.as_ref().and_then(|e| e.txn.as_deref()) == Some(args.txn.as_str());
            if record.kind == RecordKind::Decision && in_txn {
                hops.push(Hop { record });
            }
        }
        by_service.entry(service.unwrap_or_else(|| file.display().to_string())).or_default().push(file.clone());
    }
    let mut unverified = 0;
    for (service, files) in &by_service {
        let report = verify_files(files, &keys, None)?;
        let verdict = if report.is_intact() && report.checkpoints > 0 {
            "verified".to_owned()
        } else if report.findings.iter().all(|f| f.kind == wimse_core::server::audit_log::FindingKind::UnknownKey)
            && !report.findings.is_empty()
        {
            unverified += 1;
            "NOT VERIFIED: its audit key was not given".to_owned()
        } else if report.is_intact() {
            unverified += 1;
            "NOT VERIFIED: no checkpoint yet".to_owned()
        } else {
            unverified += 1;
            format!("TAMPERED: {}", report.findings.first().map_or("", |f| f.message.as_str()))
        };
        println!("log of {service}: {verdict}");
    }
    hops.sort_by_key(|h| (h.record.ts_ms, h.record.service.clone(), h.record.seq));
    if hops.is_empty() {
        println!("transaction {}: no record in these logs", args.txn);
        return Ok(ExitCode::from(1));
    }
    let subject = hops.iter().find_map(|h| h.record.event.as_ref().and_then(|e| e.subject.clone()));
    println!(
        "transaction {}: {} hops{}",
        args.txn,
        hops.len(),
        subject.map(|s| format!(", for {s}")).unwrap_or_default()
    );
    for (n, hop) in hops.iter().enumerate() {
        let event = hop.record.event.clone().unwrap_or_default();
        let actors =
            if event.actors.is_empty() { String::new() } else { format!(" | agents {}", event.actors.join(" <- ")) };
        let reason = event.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        println!(
            "{:>2}. {} -> {} | {} {} | {} | {}{reason}{actors}",
            n + 1,
            hop.get(|e| e.caller.as_deref()),
            hop.record.service,
            hop.get(|e| e.action.as_deref()),
            hop.get(|e| e.resource.as_deref()),
            hop.get(|e| e.proof.as_deref()),
            event.decision,
        );
    }
    if args.dot.is_some() || args.svg.is_some() {
        let dot = to_dot(&args.txn, &hops);
        if let Some(path) = &args.dot {
            std::fs::write(path, &dot).map_err(|e| format!("{}: {e}", path.display()))?;
            println!("picture (DOT): {}", path.display());
        }
        if let Some(path) = &args.svg {
            render_svg(&dot, path)?;
            println!("picture (SVG): {}", path.display());
        }
    }
    Ok(if unverified == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// A DOT string literal.
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The chain of custody as a Graphviz graph: workloads as boxes, each hop an arrow labelled with
/// its order, action, proof, decision and agents.
fn to_dot(txn: &str, hops: &[Hop]) -> String {
    let mut dot = format!(
        "digraph custody {{\n  label={};\n  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];\n",
        quoted(&format!("transaction {txn}"))
    );
    for (n, hop) in hops.iter().enumerate() {
        let event = hop.record.event.clone().unwrap_or_default();
        let mut label = format!(
            "{}. {} {}\\n{} · {}",
            n + 1,
            hop.get(|e| e.action.as_deref()),
            hop.get(|e| e.resource.as_deref()),
            hop.get(|e| e.proof.as_deref()),
            event.decision
        );
        if let Some(reason) = &event.reason {
            label.push_str(&format!(" ({reason})"));
        }
        if !event.actors.is_empty() {
            label.push_str(&format!("\\nagents {}", event.actors.join(" <- ")));
        }
        let colour = if event.decision == "allow" { "darkgreen" } else { "red" };
        // The label's own text is escaped; its `\n`s are Graphviz line breaks.
        let label = quoted(&label).replace("\\\\n", "\\n");
        dot.push_str(&format!(
            "  {} -> {} [label={label}, color={colour}, fontcolor={colour}];\n",
            quoted(hop.get(|e| e.caller.as_deref())),
            quoted(&hop.record.service)
        ));
    }
    dot.push_str("}\n");
    dot
}

fn render_svg(dot: &str, path: &Path) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("dot")
        .args(["-Tsvg", "-o"])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("Graphviz `dot` could not run ({e}): write --dot and render it where Graphviz is installed")
        })?;
    child.stdin.take().map(|mut stdin| stdin.write_all(dot.as_bytes())).transpose().map_err(|e| e.to_string())?;
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("Graphviz `dot` failed ({status})"));
    }
    Ok(())
}
