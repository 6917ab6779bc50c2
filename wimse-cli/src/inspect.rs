//! `wimse inspect`: decode and explain a token, with no claim that anything is valid.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::{Map, Value, json};
use wimse_core::draft::{WIT_TYP, WPT_TYP, typ_is};
use wimse_core::id::WorkloadId;
use wimse_core::jose::jws;

use crate::CliResult;
use crate::files::{now_or, read_token};

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The token, a file holding it, or `-` for standard input.
    token: String,
    /// Explain times relative to this Unix time instead of now.
    #[arg(long)]
    now: Option<u64>,
}

impl InspectArgs {
    pub(crate) fn new(token: String, now: Option<u64>) -> Self {
        Self { token, now }
    }
}

pub(crate) fn run(args: InspectArgs) -> CliResult {
    let path = PathBuf::from(&args.token);
    let token = if args.token == "-" || path.is_file() { read_token(&path)? } else { args.token.trim().to_owned() };
    let parsed = match jws::parse(&token, 1 << 20) {
        Ok(parsed) => parsed,
        Err(e) => {
            let out = json!({"verified": false, "error": e.reason(), "message": e.to_string()});
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            return Ok(ExitCode::FAILURE);
        }
    };
    let now = now_or(args.now);
    let typ = parsed.header.get("typ").and_then(Value::as_str);
    let kind = match typ {
        Some(typ) if typ_is(typ, WIT_TYP) => "WIT",
        Some(typ) if typ_is(typ, WPT_TYP) => "WPT",
        Some(typ) if typ_is(typ, wimse_core::protocol::txn::TXN_TOKEN_TYP) => "Txn-Token",
        _ => "unknown",
    };
    let out = json!({
        "kind": kind,
        "verified": false,
        "note": "decoded only: no signature, key, audience or time check was made",
        "header": parsed.header,
        "claims": parsed.claims,
        "explanation": explain(kind, &parsed.header, &parsed.claims, now),
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}

fn explain(kind: &str, header: &Map<String, Value>, claims: &Map<String, Value>, now: u64) -> Vec<String> {
    let mut notes = Vec::new();
    match kind {
        "WIT" => notes.push("Workload Identity Token (workload-creds-02): binds `sub` to the key in `cnf.jwk`".into()),
        "WPT" => notes.push("Workload Proof Token (wpt-02): proves possession of a WIT's key for one request".into()),
        "Txn-Token" => {
            notes.push("Transaction Token (draft-ietf-oauth-transaction-tokens-11): the context of one call chain, valid only in its trust domain (aud)".into());
            for (name, what) in [("txn", "transaction id"), ("scope", "purpose"), ("req_wl", "requested by")] {
                if let Some(value) = claims.get(name).and_then(Value::as_str) {
                    notes.push(format!("{what}: {value}"));
                }
            }
            if let Some(sub) = claims.get("sub").and_then(Value::as_str) {
                notes.push(format!("on behalf of subject {sub}"));
            }
            notes.extend(delegation(claims.get("act")));
            return times_and_audience(notes, claims, now);
        }
        _ => notes.push(format!(
            "typ {:?} is not wit+jwt, wpt+jwt or txntoken+jwt: a WIMSE verifier refuses this token",
            header.get("typ")
        )),
    }
    if let Some(alg) = header.get("alg") {
        notes.push(format!("signed with alg {alg}"));
    }
    if let Some(kid) = header.get("kid") {
        notes.push(format!("issuer key id {kid}"));
    }
    if let Some(sub) = claims.get("sub").and_then(Value::as_str) {
        match WorkloadId::parse(sub) {
            Ok(id) => notes.push(format!("workload {id} in trust domain {}", id.trust_domain())),
            Err(e) => notes.push(format!("sub is not a valid workload identifier: {e}")),
        }
    }
    if let Some(alg) = claims.get("cnf").and_then(|c| c.get("jwk")).and_then(|j| j.get("alg")) {
        notes.push(format!("proofs must use alg {alg} (cnf.jwk.alg)"));
    }
    notes = times_and_audience(notes, claims, now);
    for (name, what) in
        [("wth", "bound to a WIT by hash"), ("tth", "bound to a Txn-Token"), ("oth", "bound to other context tokens")]
    {
        if claims.contains_key(name) {
            notes.push(format!("{what} ({name})"));
        }
    }
    if claims.contains_key("ath") {
        notes.push("has `ath` (removed in wpt-02; a wpt-02 verifier ignores it)".into());
    }
    notes
}

fn times_and_audience(mut notes: Vec<String>, claims: &Map<String, Value>, now: u64) -> Vec<String> {
    for (name, what) in [("iat", "issued"), ("nbf", "not valid before"), ("exp", "expires")] {
        if let Some(t) = claims.get(name).and_then(Value::as_u64) {
            notes.push(format!("{what} {} ({})", utc(t), relative(t, now)));
        }
    }
    if let Some(aud) = claims.get("aud") {
        notes.push(format!("audience {aud}"));
    }
    notes
}

fn relative(t: u64, now: u64) -> String {
    if t >= now { format!("in {} s", t - now) } else { format!("{} s ago", now - t) }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (proleptic Gregorian calendar).
pub(crate) fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// What an `act` claim says (RFC 8693 §4.1): who acts for the subject now, and who delegated to
/// it (unverified: a verifier refuses a malformed chain, and this says so).
fn delegation(act: Option<&Value>) -> Vec<String> {
    match wimse_core::protocol::txn::parse_actors(act) {
        Err(reason) => vec![format!("{reason}: a verifier refuses this token")],
        Ok(actors) => match actors.split_first() {
            None => Vec::new(),
            Some((current, [])) => vec![format!("acted for by {current}")],
            Some((current, earlier)) => {
                let earlier: Vec<&str> = earlier.iter().map(|a| a.as_str()).collect();
                vec![format!(
                    "acted for by {current}, on behalf of {} (delegation chain, current actor first)",
                    earlier.join(" ← ")
                )]
            }
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc(1_745_512_510), "2025-04-24T16:35:10Z");
        assert_eq!(super::utc(951_782_400), "2000-02-29T00:00:00Z");
    }
}
