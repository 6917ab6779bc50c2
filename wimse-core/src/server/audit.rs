//! One audit event per request, with the final decision (target `wimse::audit`), and the
//! matching metrics. Never logs tokens.
//!
//! The verifier and [`Pipeline`](crate::server::pipeline::Pipeline) write these events themselves; adapters call
//! [`rejected`] for refusals they decide on their own (a route-level policy, a missing
//! configuration), so that every refusal is logged once with its reason.

use crate::error::Error;
use crate::id::WorkloadId;
use crate::server::audit_log::{AuditEvent, AuditLog};

/// The request was let through as `caller`, within transaction `txn` (its verified Txn-Token's
/// id) if any.
pub fn allowed(mode: &'static str, caller: &WorkloadId, txn: Option<&str>) {
    match txn {
        Some(txn) => {
            tracing::info!(target: "wimse::audit", caller = %caller, mode, txn, decision = "allow", "request authenticated")
        }
        None => {
            tracing::info!(target: "wimse::audit", caller = %caller, mode, decision = "allow", "request authenticated")
        }
    }
    // Literal labels make a static metrics key: no allocation per allowed request.
    macro_rules! allowed_in {
        ($mode:literal) => {
            metrics::counter!("wimse_verifications_total", "mode" => $mode, "result" => "allow", "reason" => "ok")
        };
    }
    match mode {
        "wpt" => allowed_in!("wpt"),
        "http-signature" => allowed_in!("http-signature"),
        "mtls" => allowed_in!("mtls"),
        _ => metrics::counter!("wimse_verifications_total", "mode" => mode, "result" => "allow", "reason" => "ok"),
    }
    .increment(1);
}

/// The request was refused (`caller` when the credentials had verified). `mode` is the proof
/// method's name (`wpt`, `http-signature`, `mtls`), or `none` when the request had no verified
/// credentials.
pub fn rejected(mode: &'static str, caller: Option<&WorkloadId>, error: &Error) {
    let reason = error.reason();
    match caller {
        Some(caller) => tracing::warn!(
            target: "wimse::audit", caller = %caller, mode, decision = "reject", reason, detail = error.detail(),
            "request rejected"
        ),
        None => tracing::warn!(
            target: "wimse::audit", mode, decision = "reject", reason, detail = error.detail(), "request rejected"
        ),
    }
    metrics::counter!("wimse_verifications_total", "mode" => mode, "result" => "reject", "reason" => reason)
        .increment(1);
}

/// A request refused before any caller was verified: recorded in `log` with what is known.
pub(crate) fn log_unverified(log: &AuditLog, mode: &'static str, method: &str, path: &str, error: &Error) {
    let event = AuditEvent {
        proof: Some(mode.to_owned()),
        action: Some(method.to_owned()),
        resource: Some(path.split('?').next().unwrap_or_default().to_owned()),
        decision: "deny".into(),
        reason: Some(error.reason().to_owned()),
        ..Default::default()
    };
    if let Err(failure) = log.record(event) {
        tracing::error!(error = %failure, "wimse: the decision could not be recorded in the audit log");
    }
}
