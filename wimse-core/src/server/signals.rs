//! Revocation and risk signals from an OpenID Shared Signals transmitter: Security Event Tokens
//! (RFC 8417) received by push (RFC 8935) or poll (RFC 8936, `wimse-reqwest`'s `SsfPoller`),
//! about subjects named as RFC 9493 subject identifiers.
//!
//! [`SetReceiver`] validates each SET (signature by a configured transmitter key, `typ`, `iss`,
//! `aud`, `iat`, `jti` once, bounded size and nesting) and applies its events to
//! [`Revocations`], which a [`Verifier`](crate::server::verify::Verifier) consults on every
//! request, cached credentials included:
//! - CAEP `session-revoked` and `credential-change`: credentials of the subject issued before
//!   the event (a WIT for a workload identifier, a Txn-Token for a user) are refused;
//! - RISC `account-disabled`: everything of the subject is refused until `account-enabled`;
//! - other event types are accepted, ignored and counted (`wimse_ssf_events_ignored_total`).
//!
//! The state is bounded ([`Revocations::max_subjects`]), kept until the credentials it refuses
//! have expired ([`Revocations::hold`]), and written to a file when one is given
//! ([`Revocations::persist_to`]), so a restart does not forget a revocation.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::id::WorkloadId;
use crate::jose::{Backend, PublicKey, jws};

/// The `typ` of a Security Event Token.
pub const SET_TYPE: &str = "secevent+jwt";
/// CAEP: the subject's sessions are revoked.
pub const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
/// CAEP: the subject's credentials changed (the old ones must not be used).
pub const CREDENTIAL_CHANGE: &str = "https://schemas.openid.net/secevent/caep/event-type/credential-change";
/// RISC: the subject's account is disabled.
pub const ACCOUNT_DISABLED: &str = "https://schemas.openid.net/secevent/risc/event-type/account-disabled";
/// RISC: the subject's account is enabled again.
pub const ACCOUNT_ENABLED: &str = "https://schemas.openid.net/secevent/risc/event-type/account-enabled";

/// The largest SET accepted, in bytes.
pub const MAX_SET_LEN: usize = 16 * 1024;
/// The most events in one SET.
pub const MAX_EVENTS: usize = 8;
/// The deepest nesting of a SET's claims.
pub const MAX_DEPTH: usize = 8;

/// What is known against one subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    /// Credentials issued before this time (seconds) are refused.
    not_before: u64,
    /// Everything is refused until an `account-enabled` event.
    disabled: bool,
    /// When the entry may be forgotten (the credentials it refuses have expired), unless
    /// disabled.
    until: u64,
}

#[derive(Debug, Default)]
struct State {
    subjects: HashMap<String, Entry>,
}

/// The subjects revoked or disabled, shared by the receiver that fills it and the verifiers that
/// consult it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Revocations {
    state: Arc<RwLock<State>>,
    /// How many subjects are known: the request path skips the lock when there are none.
    count: Arc<AtomicUsize>,
    max_subjects: usize,
    hold: u64,
    persist: Option<PathBuf>,
    /// Held while the state file is written, outside the state's lock: the request path never
    /// waits for a disk, and each write takes a snapshot newer than the one before it.
    persisting: Arc<Mutex<()>>,
}

impl Default for Revocations {
    fn default() -> Self {
        Self::new()
    }
}

impl Revocations {
    /// How many clones of this state exist (the settings' registry drops an entry only it
    /// holds).
    pub(crate) fn holders(&self) -> usize {
        Arc::strong_count(&self.state)
    }

    /// The file the state is written to, if any.
    pub fn state_file(&self) -> Option<&Path> {
        self.persist.as_deref()
    }

    /// Nothing revoked; at most 100 000 subjects; each kept 24 hours (the longest credential
    /// lifetime the verifiers accept by default).
    pub fn new() -> Self {
        Self {
            state: Arc::default(),
            count: Arc::default(),
            max_subjects: 100_000,
            hold: 86_400,
            persist: None,
            persisting: Arc::default(),
        }
    }

    /// At most `n` subjects: when full, the entry that would be forgotten soonest makes room
    /// (a disabled subject is kept before any other).
    pub fn max_subjects(mut self, n: usize) -> Self {
        self.max_subjects = n.max(1);
        self
    }

    /// How long a revocation is kept: at least the longest lifetime of the credentials it
    /// refuses (WITs and Txn-Tokens), in seconds.
    pub fn hold(mut self, seconds: u64) -> Self {
        self.hold = seconds;
        self
    }

    /// Keeps the state in `path` (written at each change, read now): a restart does not
    /// forget a revocation. A file that cannot be read refuses to start.
    pub fn persist_to(mut self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_owned();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let subjects: HashMap<String, Entry> = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::with_detail(ErrorKind::InvalidConfiguration, format!("revocations {}: {e}", path.display()))
                })?;
                let mut state = self.write();
                state.subjects = subjects;
                self.count.store(state.subjects.len(), Ordering::Release);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                let detail = format!("revocations {}: {e}", path.display());
                return Err(Error::with_detail(ErrorKind::InvalidConfiguration, detail));
            }
        }
        self.persist = Some(path);
        Ok(self)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `change` to `subject`'s entry (made if new), then prunes, bounds and persists.
    fn update(&self, subject: &str, now: u64, change: impl FnOnce(&mut Entry)) -> Result<()> {
        self.change(subject, now, change);
        self.persist()
    }

    /// Applies `change` to `subject`'s entry under the state's lock.
    fn change(&self, subject: &str, now: u64, change: impl FnOnce(&mut Entry)) {
        let mut state = self.write();
        state.subjects.retain(|_, e| e.disabled || e.until > now);
        if !state.subjects.contains_key(subject) && state.subjects.len() >= self.max_subjects {
            let soonest =
                state.subjects.iter().min_by_key(|(_, e)| (e.disabled, e.until)).map(|(subject, _)| subject.clone());
            if let Some(evicted) = soonest {
                tracing::warn!(subject = %evicted, "wimse: revocations full; the entry nearest its end was dropped");
                metrics::counter!("wimse_ssf_revocations_evicted_total").increment(1);
                state.subjects.remove(&evicted);
            }
        }
        let entry =
            state.subjects.entry(subject.to_owned()).or_insert(Entry { not_before: 0, disabled: false, until: 0 });
        change(entry);
        entry.until = entry.until.max(now.saturating_add(self.hold));
        self.count.store(state.subjects.len(), Ordering::Release);
    }

    /// Writes the state file, if any: the snapshot is taken under the state's read lock, the
    /// file written after it is released.
    fn persist(&self) -> Result<()> {
        let Some(path) = &self.persist else { return Ok(()) };
        let _one_writer = self.persisting.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = serde_json::to_vec(&self.state.read().unwrap_or_else(|e| e.into_inner()).subjects)
            .map_err(|e| Error::with_detail(ErrorKind::InvalidConfiguration, e.to_string()))?;
        crate::client::cred::write_atomically(path, &bytes).map_err(|e| {
            Error::with_detail(ErrorKind::InvalidConfiguration, format!("revocations {}: {e}", path.display()))
        })
    }

    /// Refuses `subject`'s credentials issued before `at` (seconds).
    pub fn revoke_before(&self, subject: &str, at: u64, now: u64) -> Result<()> {
        self.update(subject, now, |entry| entry.not_before = entry.not_before.max(at))
    }

    /// Refuses everything of `subject` until [`enable`](Self::enable).
    pub fn disable(&self, subject: &str, now: u64) -> Result<()> {
        self.update(subject, now, |entry| entry.disabled = true)
    }

    /// Lifts [`disable`](Self::disable); credentials revoked before still are.
    pub fn enable(&self, subject: &str, now: u64) -> Result<()> {
        self.update(subject, now, |entry| entry.disabled = false)
    }

    /// Subjects known.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Nothing known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether credentials of `subject` issued at `issued_at` (unknown: refused if anything is
    /// known against the subject) are refused, and why.
    fn refuses(&self, subject: &str, issued_at: Option<u64>) -> Option<&'static str> {
        if self.is_empty() {
            return None;
        }
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let entry = state.subjects.get(subject)?;
        if entry.disabled {
            return Some("disabled");
        }
        match issued_at {
            Some(iat) if iat >= entry.not_before => None,
            _ => Some("revoked"),
        }
    }

    /// Whether a signal disabled `subject` (until `account-enabled`).
    pub fn is_disabled(&self, subject: &str) -> bool {
        !self.is_empty()
            && self.state.read().unwrap_or_else(|e| e.into_inner()).subjects.get(subject).is_some_and(|e| e.disabled)
    }

    /// Refuses a workload whose credential (issued at `issued_at`) a signal revoked
    /// ([`ErrorKind::WorkloadRevoked`]).
    pub fn check_workload(&self, id: &WorkloadId, issued_at: Option<u64>) -> Result<()> {
        match self.refuses(id.as_str(), issued_at) {
            None => Ok(()),
            Some(why) => Err(Error::with_detail(ErrorKind::WorkloadRevoked, format!("{id}: {why} by a risk signal"))),
        }
    }

    /// Refuses a Txn-Token whose subject a signal revoked or disabled
    /// ([`ErrorKind::SubjectRevoked`]).
    pub fn check_subject(&self, subject: &str, issued_at: u64) -> Result<()> {
        match self.refuses(subject, Some(issued_at)) {
            None => Ok(()),
            Some(why) => Err(Error::with_detail(
                ErrorKind::SubjectRevoked,
                format!("the Txn-Token's subject is {why} by a risk signal"),
            )),
        }
    }
}

/// Why a SET was refused, with the RFC 8935 error code a push receiver answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {description}")]
pub struct SetRefused {
    /// `invalid_request`, `invalid_key`, `invalid_issuer` or `invalid_audience`.
    pub code: &'static str,
    /// What was wrong (never the token).
    pub description: String,
}

fn refused(code: &'static str, description: impl Into<String>) -> SetRefused {
    SetRefused { code, description: description.into() }
}

/// What a SET did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The SET's `jti` (what a poll acknowledges).
    pub jti: String,
    /// The events applied: (event type, subject).
    pub applied: Vec<(String, String)>,
    /// Event types ignored (unknown here).
    pub ignored: Vec<String>,
}

/// The oldest SET a receiver accepts by default, in seconds.
pub const DEFAULT_MAX_AGE: u64 = 600;

/// Validates SETs from one transmitter and applies them (see the [module](self)).
#[derive(Debug)]
pub struct SetReceiver {
    issuer: String,
    audience: String,
    keys: Vec<PublicKey>,
    max_age: u64,
    leeway: u64,
    revocations: Revocations,
    /// Shared with the receivers made by [`with_keys`](Self::with_keys): a SET is applied once
    /// whichever of them receives it.
    seen: Arc<Mutex<Seen>>,
}

/// The `jti`s received, bounded: the oldest are forgotten first, after they are too old to be
/// accepted anyway.
#[derive(Debug, Default)]
struct Seen {
    ids: HashSet<String>,
    order: VecDeque<(u64, String)>,
}

/// The most `jti`s remembered.
const MAX_SEEN: usize = 100_000;

/// The nesting depth of a JSON value (iteratively: the value is already bounded by the parser).
fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 1)];
    while let Some((value, level)) = stack.pop() {
        deepest = deepest.max(level);
        match value {
            Value::Object(map) => stack.extend(map.values().map(|v| (v, level + 1))),
            Value::Array(items) => stack.extend(items.iter().map(|v| (v, level + 1))),
            _ => {}
        }
    }
    deepest
}

/// The subject named by an RFC 9493 subject identifier: a workload identifier (`uri`), a user
/// (`iss_sub`'s `sub`, `email`, `opaque`'s `id`, `account`'s `uri`).
fn subject_of(identifier: &Map<String, Value>) -> Option<String> {
    let member = |name: &str| identifier.get(name).and_then(Value::as_str).map(str::to_owned);
    match identifier.get("format").and_then(Value::as_str)? {
        "uri" | "account" => member("uri"),
        "iss_sub" => member("sub"),
        "email" => member("email"),
        "opaque" => member("id"),
        _ => None,
    }
}

impl SetReceiver {
    /// Accepts SETs issued by `issuer` for `audience`, signed by one of `keys` (never a key from
    /// the SET), applying them to `revocations`. SETs older than 10 minutes are refused.
    pub fn new(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        keys: Vec<PublicKey>,
        revocations: Revocations,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            keys,
            max_age: DEFAULT_MAX_AGE,
            leeway: 30,
            revocations,
            seen: Arc::default(),
        }
    }

    /// The transmitter it accepts SETs from (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audience it accepts SETs for (`aud`).
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The transmitter's keys it verifies SETs with.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// A receiver of the same stream with `keys` (the transmitter's, read again after a
    /// rotation) and `max_age`, sharing this one's revocations and the SETs already received.
    pub fn with_keys(&self, keys: Vec<PublicKey>, max_age: u64) -> Self {
        Self {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            keys,
            max_age,
            leeway: self.leeway,
            revocations: self.revocations.clone(),
            seen: self.seen.clone(),
        }
    }

    /// The oldest SET accepted, in seconds (a poll after an outage may deliver old ones: raise
    /// it to the transmitter's retention).
    pub fn max_age(mut self, seconds: u64) -> Self {
        self.max_age = seconds;
        self
    }

    /// The revocations this receiver fills.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Validates `token` and applies its events.
    pub fn receive(&self, token: &str, now: u64) -> std::result::Result<Received, SetRefused> {
        let token = token.trim();
        let parsed = jws::parse(token, MAX_SET_LEN).map_err(|e| refused("invalid_request", e.to_string()))?;
        parsed.reject_crit().map_err(|e| refused("invalid_request", e.to_string()))?;
        if parsed.header_str("typ").ok().flatten() != Some(SET_TYPE) {
            return Err(refused("invalid_request", format!("the token's typ is not {SET_TYPE}")));
        }
        let alg = parsed.algorithm().map_err(|e| refused("invalid_key", e.to_string()))?;
        let kid = parsed.header_str("kid").ok().flatten();
        let candidates: Vec<&PublicKey> =
            self.keys.iter().filter(|k| kid.is_none_or(|kid| k.kid() == Some(kid) || k.thumbprint() == kid)).collect();
        if candidates.is_empty() {
            return Err(refused("invalid_key", "no transmitter key has this kid"));
        }
        if !candidates
            .iter()
            .any(|k| k.verify(Backend::default(), alg, parsed.signing_input.as_bytes(), &parsed.signature))
        {
            return Err(refused("invalid_key", "the signature does not verify with the transmitter's keys"));
        }
        let claims = parsed.claims;
        if depth(&Value::Object(claims.clone())) > MAX_DEPTH {
            return Err(refused("invalid_request", format!("nested deeper than {MAX_DEPTH}")));
        }
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(refused("invalid_issuer", "iss is not the configured transmitter"));
        }
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => aud == &self.audience,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(self.audience.as_str())),
            _ => false,
        };
        if !audience_ok {
            return Err(refused("invalid_audience", "aud does not name this receiver"));
        }
        let iat = claims.get("iat").and_then(Value::as_u64).ok_or_else(|| refused("invalid_request", "no iat"))?;
        if iat > now.saturating_add(self.leeway) {
            return Err(refused("invalid_request", "iat is in the future"));
        }
        if now.saturating_sub(iat) > self.max_age {
            return Err(refused("invalid_request", format!("issued more than {} s ago", self.max_age)));
        }
        let jti = claims.get("jti").and_then(Value::as_str).filter(|j| !j.is_empty() && j.len() <= 256);
        let jti = jti.ok_or_else(|| refused("invalid_request", "no jti"))?.to_owned();
        let Some(Value::Object(events)) = claims.get("events") else {
            return Err(refused("invalid_request", "no events object"));
        };
        if events.is_empty() || events.len() > MAX_EVENTS {
            return Err(refused("invalid_request", format!("{} events (1 to {MAX_EVENTS})", events.len())));
        }
        // Each event's subject: SSF 1.0's `sub_id`, or an older CAEP payload's `subject`.
        let top_subject = claims.get("sub_id").and_then(Value::as_object).and_then(subject_of);
        let mut plan = Vec::new();
        let mut ignored = Vec::new();
        for (kind, payload) in events {
            let known =
                [SESSION_REVOKED, CREDENTIAL_CHANGE, ACCOUNT_DISABLED, ACCOUNT_ENABLED].contains(&kind.as_str());
            if !known {
                metrics::counter!("wimse_ssf_events_ignored_total").increment(1);
                ignored.push(kind.clone());
                continue;
            }
            let payload =
                payload.as_object().ok_or_else(|| refused("invalid_request", format!("{kind}: not an object")))?;
            let subject =
                payload.get("subject").and_then(Value::as_object).and_then(subject_of).or(top_subject.clone());
            let subject = subject
                .ok_or_else(|| refused("invalid_request", format!("{kind}: no subject this receiver understands")))?;
            let at = payload.get("event_timestamp").and_then(Value::as_u64).unwrap_or(iat);
            plan.push((kind.clone(), subject, at));
        }
        // Once: a replayed SET changes nothing (checked last, so a refused SET can be sent
        // again once mended).
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.ids.contains(&jti) {
                return Err(refused("invalid_request", "this jti was already received"));
            }
            while seen.order.len() >= MAX_SEEN
                || seen.order.front().is_some_and(|(t, _)| now.saturating_sub(*t) > self.max_age + self.leeway)
            {
                let Some((_, old)) = seen.order.pop_front() else { break };
                seen.ids.remove(&old);
            }
            seen.ids.insert(jti.clone());
            seen.order.push_back((iat, jti.clone()));
        }
        let mut applied = Vec::new();
        for (kind, subject, at) in plan {
            let outcome = match kind.as_str() {
                ACCOUNT_DISABLED => self.revocations.disable(&subject, now),
                ACCOUNT_ENABLED => self.revocations.enable(&subject, now),
                // Credentials issued up to the event are revoked, not only those before it.
                _ => self.revocations.revoke_before(&subject, at.saturating_add(1), now),
            };
            outcome.map_err(|e| refused("invalid_request", format!("could not record the revocation: {e}")))?;
            tracing::warn!(target: "wimse::audit", event = %kind, subject = %subject, "wimse: risk signal applied");
            applied.push((kind, subject));
        }
        Ok(Received { jti, applied, ignored })
    }

    /// The answer of a push endpoint (RFC 8935) to `content_type` and `body`: 202 with no body,
    /// or 400 with `{"err", "description"}`. With [`Revocations::persist_to`], a SET that
    /// applies writes the state file: from async code, call it in `spawn_blocking`.
    pub fn push(&self, content_type: Option<&str>, body: &[u8], now: u64) -> (u16, Option<String>) {
        let media = content_type.map(|c| c.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
        let outcome = if media.as_deref() != Some("application/secevent+jwt") {
            Err(refused("invalid_request", "Content-Type must be application/secevent+jwt"))
        } else {
            std::str::from_utf8(body)
                .map_err(|_| refused("invalid_request", "not UTF-8"))
                .and_then(|token| self.receive(token, now))
        };
        match outcome {
            Ok(_) => (202, None),
            Err(error) => {
                tracing::warn!(target: "wimse::audit", err = error.code, description = %error.description, "wimse: a SET was refused");
                let body = serde_json::json!({ "err": error.code, "description": error.description });
                (400, Some(body.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::{Algorithm, SigningKey};
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;
    const ISS: &str = "https://ssf.example";
    const AUD: &str = "https://orders.example";

    fn key() -> SigningKey {
        SigningKey::generate(Algorithm::ES256).unwrap().with_kid("t1")
    }

    fn set(key: &SigningKey, claims: Value) -> String {
        jws::sign(SET_TYPE, Some("t1"), &claims, key, Backend::default()).unwrap()
    }

    fn claims(jti: &str, event: &str, subject: Value) -> Value {
        json!({"iss": ISS, "aud": AUD, "iat": NOW - 5, "jti": jti, "sub_id": subject, "events": {event: {"event_timestamp": NOW - 5}}})
    }

    fn receiver(key: &SigningKey) -> SetReceiver {
        SetReceiver::new(ISS, AUD, vec![key.public_key().clone()], Revocations::new())
    }

    #[test]
    fn a_valid_set_revokes_earlier_credentials_and_only_them() {
        let key = key();
        let receiver = receiver(&key);
        let workload: WorkloadId = "spiffe://prod.example/batch".parse().unwrap();
        let token = set(&key, claims("a", CREDENTIAL_CHANGE, json!({"format": "uri", "uri": workload.as_str()})));
        let received = receiver.receive(&token, NOW).unwrap();
        assert_eq!(received.applied, [(CREDENTIAL_CHANGE.to_owned(), workload.to_string())]);
        let revocations = receiver.revocations();
        assert_eq!(
            revocations.check_workload(&workload, Some(NOW - 60)).unwrap_err().kind(),
            &ErrorKind::WorkloadRevoked
        );
        assert_eq!(
            revocations.check_workload(&workload, Some(NOW - 5)).unwrap_err().kind(),
            &ErrorKind::WorkloadRevoked,
            "issued at the event"
        );
        assert!(revocations.check_workload(&workload, Some(NOW - 4)).is_ok(), "issued after the event");
        assert!(revocations.check_workload(&workload, None).is_err(), "unknown issuance: refused");
        assert!(revocations.check_workload(&"spiffe://prod.example/other".parse().unwrap(), Some(0)).is_ok());
        // Disabled: everything, until enabled again.
        let token = set(&key, claims("b", ACCOUNT_DISABLED, json!({"format": "email", "email": "alice@example.com"})));
        receiver.receive(&token, NOW).unwrap();
        assert_eq!(
            revocations.check_subject("alice@example.com", NOW + 100).unwrap_err().kind(),
            &ErrorKind::SubjectRevoked
        );
        let token = set(&key, claims("c", ACCOUNT_ENABLED, json!({"format": "email", "email": "alice@example.com"})));
        receiver.receive(&token, NOW).unwrap();
        assert!(revocations.check_subject("alice@example.com", NOW + 100).is_ok());
    }

    #[test]
    fn forged_replayed_foreign_old_and_odd_sets_are_refused_with_their_code() {
        let key = key();
        let receiver = receiver(&key);
        let subject = json!({"format": "opaque", "id": "u1"});
        let code = |token: &str| receiver.receive(token, NOW).map(|_| "ok").unwrap_or_else(|e| e.code);
        // Forged: another key with the same kid.
        assert_eq!(code(&set(&self::key(), claims("f", SESSION_REVOKED, subject.clone()))), "invalid_key");
        let mut other = claims("i", SESSION_REVOKED, subject.clone());
        other["iss"] = json!("https://elsewhere.example");
        assert_eq!(code(&set(&key, other)), "invalid_issuer");
        let mut other = claims("a", SESSION_REVOKED, subject.clone());
        other["aud"] = json!(["https://billing.example"]);
        assert_eq!(code(&set(&key, other)), "invalid_audience");
        let mut old = claims("o", SESSION_REVOKED, subject.clone());
        old["iat"] = json!(NOW - 3600);
        assert_eq!(code(&set(&key, old)), "invalid_request");
        let mut future = claims("x", SESSION_REVOKED, subject.clone());
        future["iat"] = json!(NOW + 3600);
        assert_eq!(code(&set(&key, future)), "invalid_request");
        // The wrong typ.
        let plain =
            jws::sign("JWT", Some("t1"), &claims("t", SESSION_REVOKED, subject.clone()), &key, Backend::default())
                .unwrap();
        assert_eq!(code(&plain), "invalid_request");
        // Deeply nested, too many events, oversized.
        let mut nested = json!("leaf");
        for _ in 0..20 {
            nested = json!({ "n": nested });
        }
        let mut deep = claims("d", SESSION_REVOKED, subject.clone());
        deep["events"][SESSION_REVOKED]["extra"] = nested;
        assert_eq!(code(&set(&key, deep)), "invalid_request");
        let mut many = claims("m", SESSION_REVOKED, subject.clone());
        for i in 0..MAX_EVENTS {
            many["events"][format!("https://example.com/event/{i}")] = json!({});
        }
        assert_eq!(code(&set(&key, many)), "invalid_request");
        let mut big = claims("b", SESSION_REVOKED, subject.clone());
        big["pad"] = json!("x".repeat(MAX_SET_LEN));
        assert_eq!(code(&set(&key, big)), "invalid_request");
        // A subject format this receiver does not understand.
        assert_eq!(
            code(&set(&key, claims("s", SESSION_REVOKED, json!({"format": "phone_number", "phone_number": "+1"})))),
            "invalid_request"
        );
        // Nothing above changed anything.
        assert!(receiver.revocations().is_empty());
        // Valid once; replayed, refused.
        let token = set(&key, claims("once", SESSION_REVOKED, subject.clone()));
        assert_eq!(code(&token), "ok");
        assert_eq!(code(&token), "invalid_request");
        // Unknown events are accepted and ignored.
        let unknown = set(
            &key,
            json!({"iss": ISS, "aud": AUD, "iat": NOW, "jti": "u", "events": {"https://example.com/unknown": {}}}),
        );
        let received = receiver.receive(&unknown, NOW).unwrap();
        assert_eq!((received.applied.len(), received.ignored.len()), (0, 1));
        // A push with the wrong media type.
        assert_eq!(receiver.push(Some("application/jwt"), token.as_bytes(), NOW).0, 400);
    }

    #[test]
    fn revocations_are_bounded_kept_while_needed_and_persisted() {
        let revocations = Revocations::new().max_subjects(3).hold(100);
        for (i, subject) in ["a", "b", "c", "d"].iter().enumerate() {
            revocations.revoke_before(subject, NOW, NOW + i as u64).unwrap();
        }
        assert_eq!(revocations.len(), 3, "the entry nearest its end made room");
        assert!(revocations.check_subject("a", NOW - 1).is_ok());
        assert!(revocations.check_subject("d", NOW - 1).is_err());
        // Disabled subjects are never the ones dropped.
        let revocations = Revocations::new().max_subjects(2).hold(100);
        revocations.disable("kept", NOW).unwrap();
        revocations.revoke_before("x", NOW, NOW).unwrap();
        revocations.revoke_before("y", NOW, NOW).unwrap();
        assert!(revocations.check_subject("kept", NOW + 10).is_err());
        // Past its hold, an entry is forgotten at the next change.
        revocations.revoke_before("z", NOW, NOW + 1_000).unwrap();
        assert!(revocations.check_subject("y", NOW - 1).is_ok());
        // Persisted: a new instance reads it back; a corrupt file refuses to start.
        let dir = std::env::temp_dir().join(format!("wimse-revocations-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("state.json");
        let first = Revocations::new().persist_to(&file).unwrap();
        first.disable("spiffe://prod.example/gone", NOW).unwrap();
        let again = Revocations::new().persist_to(&file).unwrap();
        assert!(again.check_workload(&"spiffe://prod.example/gone".parse().unwrap(), Some(NOW)).is_err());
        std::fs::write(&file, "{").unwrap();
        assert!(Revocations::new().persist_to(&file).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
