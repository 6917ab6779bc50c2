//! Tamper-evident audit logs: one JSON line per decision, each carrying the hash of the line
//! before it, and at intervals a checkpoint signed with the service's audit key.
//!
//! - [`AuditLog`] writes them from a thread of its own (never on the request path: a record is
//!   handed over through a bounded queue; when it is full, the record is dropped and counted,
//!   or the request refused, as configured).
//! - [`trace`] collects one transaction's records from the logs of many services: the chain of
//!   custody, as text and as a Graphviz picture.
//! - [`check`] verifies one or more files in order against the audit keys given to it (never a
//!   key from the log) and says where a log was changed: an edited line, a removed, reordered or
//!   inserted record, a checkpoint whose signature fails, a tail cut before the newest
//!   checkpoint (known from the `.head` file the writer keeps beside the log).
//!
//! What it does not promise: records after the last checkpoint are chained but not yet signed
//! (a writer of the file could rewrite them consistently), and a log removed together with its
//! head file is only seen missing by whoever expected it. Ship the head file (or the
//! checkpoints) elsewhere to close that gap.
//!
//! The record format (version 1) is stable; see [`AuditRecord`].

mod check;
mod trace;
mod writer;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use check::{Finding, FindingKind, MAX_LINE, Report, check};
pub use trace::{LogVerdict, ServiceLog, Trace, trace};
pub use writer::{AuditLog, AuditOptions, WhenFull};

/// The version of the record format.
pub const FORMAT_VERSION: u32 = 1;

/// The `typ` of a checkpoint's signature (a compact JWS).
pub const CHECKPOINT_TYPE: &str = "wimse-audit-checkpoint+jwt";

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A decision on a request (or an issuance).
    Decision,
    /// A signed checkpoint over the chain so far.
    Checkpoint,
    /// The last checkpoint of a log closed in order.
    Close,
}

/// One decision, as a service hands it to [`AuditLog::record`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// This request's id (what the service's own outbound calls carry as their parent).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub request_id: Option<String>,
    /// The id of the request that made this one (the caller's `request_id`), when it said.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub parent_request_id: Option<String>,
    /// The transaction (the Txn-Token's `txn`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub txn: Option<String>,
    /// The acting workload (the verified caller), if it was verified.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub caller: Option<String>,
    /// The proof (`wpt`, `http-signature`, `mtls`, `none`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub proof: Option<String>,
    /// The Txn-Token's subject: for whom the request is made.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub subject: Option<String>,
    /// The Txn-Token's delegation chain, current actor first.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub actors: Vec<String>,
    /// The action (an HTTP method, `tool:<name>`, `issue`…).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub action: Option<String>,
    /// The resource (a path without its query, an identifier issued…).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resource: Option<String>,
    /// `allow` or `deny`.
    pub decision: String,
    /// The failed check's reason code, for a refusal.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// The deciding policy.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub policy: Option<String>,
}

/// One line of an audit log (format version 1). Members in this order; optional ones absent
/// when empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// [`FORMAT_VERSION`].
    pub v: u32,
    /// The record's number in the chain, from 0 without a gap (checkpoints included).
    pub seq: u64,
    /// When it was written, in milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The writing service (its workload identifier).
    pub service: String,
    /// What the record is.
    pub kind: RecordKind,
    /// The decision, for [`RecordKind::Decision`].
    #[serde(flatten, skip_serializing_if = "Option::is_none", default)]
    pub event: Option<AuditEvent>,
    /// For a checkpoint: a compact JWS by the audit key over `{service, seq, prev, ts_ms}`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub signature: Option<String>,
    /// The hash of the line before ([`line_hash`]), empty for a chain's first record.
    pub prev: String,
}

/// The payload of a checkpoint's signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CheckpointClaims {
    service: String,
    seq: u64,
    prev: String,
    ts_ms: u64,
}

/// The hash a line is chained by: base64url(SHA-256(the line's bytes, without its newline)).
pub fn line_hash(line: &[u8]) -> String {
    crate::jose::b64url_encode(Sha256::digest(line))
}

/// Where a verified request's decisions go: its verifier's log, and the request's action and
/// resource (method and path without query) as the verifier saw them.
#[derive(Clone)]
pub(crate) struct AuditContext {
    pub(crate) log: AuditLog,
    pub(crate) action: String,
    pub(crate) resource: String,
    /// The policy that decided (the pipeline's, or the route's), once one did.
    pub(crate) policy: Option<String>,
}

impl std::fmt::Debug for AuditContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditContext").field("action", &self.action).field("resource", &self.resource).finish()
    }
}

/// Two callers are equal whichever log records them.
impl PartialEq for AuditContext {
    fn eq(&self, other: &Self) -> bool {
        (&self.action, &self.resource) == (&other.action, &other.resource)
    }
}

impl Eq for AuditContext {}
