//! `wimse audit verify | trace`: tamper-evident audit logs (`wimse_core::server::audit_log`).

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use wimse_core::jose::{Jwk, PublicKey};
use wimse_core::server::audit_log::{Report, check};

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
    /// The files are a rotated log's later part: its first record need not be the log's first.
    #[arg(long)]
    continued: bool,
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
    let first = report.first_seq.map_or("no record".to_owned(), |s| format!("from record {s}"));
    out.push_str(&format!(
        "{} records {first}, {} checkpoints, {signed}, {} records after the last checkpoint, {end}\n",
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
    let mut report = verify_files(&args.files, &keys, head.as_deref())?;
    if args.continued {
        report.findings.retain(|f| f.kind != wimse_core::server::audit_log::FindingKind::StartMissing);
    }
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

pub(crate) fn trace(args: TraceArgs) -> CliResult {
    let keys = read_keys(&args.keys)?;
    let files = args
        .files
        .iter()
        .map(|f| Ok((f.display().to_string(), std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?)))
        .collect::<Result<Vec<_>, String>>()?;
    let trace = wimse_core::server::audit_log::trace(&files, &args.txn, &keys);
    print!("{}", trace.text());
    if trace.hops.is_empty() {
        return Ok(ExitCode::from(1));
    }
    if args.dot.is_some() || args.svg.is_some() {
        let dot = trace.dot();
        if let Some(path) = &args.dot {
            std::fs::write(path, &dot).map_err(|e| format!("{}: {e}", path.display()))?;
            println!("picture (DOT): {}", path.display());
        }
        if let Some(path) = &args.svg {
            render_svg(&dot, path)?;
            println!("picture (SVG): {}", path.display());
        }
    }
    Ok(if trace.all_verified() { ExitCode::SUCCESS } else { ExitCode::from(1) })
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
