//! Cedar policies (feature `cedar`): a policy backend beside the rule lists of
//! [`Policy`](crate::server::policy::Policy), with the [`cedar-policy`](https://docs.rs/cedar-policy)
//! crate, the Cedar language's reference implementation.
//!
//! Each request becomes one Cedar request:
//! - **principal** `Workload::"<identifier>"`, a member of `TrustDomain::"<trust domain>"`
//!   (scheme and authority, `TrustDomain::"spiffe://prod.example"`), with the attributes
//!   `trust_domain` (that String) and `path` (the identifier's path segments, a Set of String);
//! - **action** `Action::"<METHOD>"` (the HTTP method, e.g. `Action::"GET"`), or whatever the
//!   caller of [`CedarPolicies::decide`] names (an MCP tool, `Action::"tool:search"`);
//! - **resource** `Service::"<resource>"`: the service's own name, from the configuration;
//! - **context**: `proof` (`wpt`, `http-signature`, `mtls`), `path` (the request's path),
//!   `transaction` (Bool: a verified Txn-Token is present), `txn_scope` (its scope values, a
//!   Set), `txn_actors` (the workloads acting for its subject, a Set), `delegated` (Bool: anyone
//!   acts for the subject), `actor_count` (Long), `txn_subject` (String) only when there is a
//!   Txn-Token (test it with `context has txn_subject`), and `txn_actor` (String, the current
//!   actor) only when someone acts for the subject.
//!
//! With a schema, declare the context every action takes as
//! `{ proof: String, path: String, transaction: Bool, txn_scope: Set<String>, delegated: Bool,
//! actor_count: Long, txn_actors: Set<String>, txn_subject?: String, txn_actor?: String }`, and
//! the entity types
//! `TrustDomain`, `Workload in [TrustDomain] { trust_domain: String, path: Set<String> }` and
//! `Service`.
//!
//! A decision costs about 7 µs (`cargo bench -p wimse-core --bench policy`: 50 policies; the
//! rule lists take 0.3 µs): the request's context and Cedar's evaluation. Each principal's
//! entities are built once, and a request is evaluated against the policies that can apply to
//! its principal only (those naming no principal, and those naming it), whatever the number of
//! policies naming others.
//!
//! Policies are parsed (and validated against a schema, when one is given, in strict mode)
//! when loaded: a file that does not parse or breaks its schema is refused, naming the line
//! and column. Deny by default: a request no `permit` matches, or one a `forbid` matches, is
//! refused; so is one for which any policy's evaluation fails (an attribute that is missing,
//! such as `txn_subject` without a Txn-Token), since Cedar would skip a failing `forbid`. The
//! `path` is the request's path without its query; the pipeline refuses non-canonical paths
//! (`%` escapes, `//`, `.` segments) before Cedar sees them. The
//! policies that decided (their `@id` annotation, else Cedar's id) are in the audit event and
//! in the refusal's detail.
//!
//! ```
//! # #[cfg(feature = "cedar")] {
//! use wimse_core::server::cedar::CedarPolicies;
//! use wimse_core::server::policy::Policy;
//!
//! let cedar = CedarPolicies::new("orders", "orders", r#"
//!     @id("front-reads")
//!     permit(principal == Workload::"spiffe://prod.example/front", action == Action::"GET", resource);
//! "#, None)?;
//! let policy = Policy::cedar(cedar);
//! # let _ = policy;
//! # }
//! # Ok::<(), wimse_core::Error>(())
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr as _;
use std::sync::Arc;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet,
    PrincipalConstraint, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};

use crate::error::{Error, ErrorKind, Result};
use crate::id::WorkloadId;
use crate::server::caller::VerifiedCaller;

/// The largest policy or schema text read: 1 MiB.
pub const MAX_POLICY_TEXT: usize = 1 << 20;

/// A loaded, validated Cedar policy set for one service. Cheap to share (wrap it in a
/// [`Policy`](crate::server::policy::Policy) with
/// [`Policy::cedar`](crate::server::policy::Policy::cedar)).
pub struct CedarPolicies {
    name: String,
    /// The policies that may apply to any principal (no `principal ==` constraint).
    general: PolicySet,
    /// For each principal some policy names exactly (`principal == Workload::"…"`), those
    /// policies and the general ones: a request is decided over its principal's set only
    /// (a policy naming another principal can never match it), so the cost of a decision
    /// follows the policies that can apply, not the size of the file.
    by_principal: HashMap<EntityUid, PolicySet>,
    schema: Option<Schema>,
    resource: EntityUid,
    /// Each policy's name for audit (its `@id`, else Cedar's id), by Cedar's id.
    names: HashMap<String, String>,
    authorizer: Authorizer,
    /// The entities of each principal seen (its `Workload` and `TrustDomain`), built once:
    /// what a request costs besides its context. Emptied when it reaches
    /// [`MAX_CACHED_PRINCIPALS`].
    entities: std::sync::RwLock<HashMap<WorkloadId, Arc<Entities>>>,
    /// Each decision made, by everything it depends on ([`decision_key`]): the same caller
    /// doing the same thing in the same transaction is decided once. Emptied when it reaches
    /// [`MAX_CACHED_DECISIONS`].
    decisions: std::sync::RwLock<HashMap<String, CedarDecision>>,
    types: Types,
}

/// The entity types of a request, parsed once.
struct Types {
    workload: EntityTypeName,
    trust_domain: EntityTypeName,
    action: EntityTypeName,
}

/// The most principals whose entities are kept.
pub const MAX_CACHED_PRINCIPALS: usize = 10_000;

/// The most decisions kept (a few hundred bytes each): a caller varying its paths can only
/// empty the cache, and its decisions are then made again.
pub const MAX_CACHED_DECISIONS: usize = 16_384;

/// What a decision depends on, and only that: the caller, its proof, the action, the path
/// without its query, and the Txn-Token (its hash: subject, scope and actors are in it).
/// Policies never change in a set (a reload makes a new one) and read no clock.
fn decision_key(caller: &VerifiedCaller, action: &str, path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    let txn = caller.transaction().map_or("", |t| t.hash());
    // Newlines never occur in identifiers, methods, paths or hashes, so the key is unambiguous.
    format!("{}\n{}\n{action}\n{path}\n{txn}", caller.id(), caller.method().name())
}

impl std::fmt::Debug for CedarPolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CedarPolicies")
            .field("name", &self.name)
            .field("policies", &self.names.len())
            .field("principals", &self.by_principal.len())
            .field("schema", &self.schema.is_some())
            .finish_non_exhaustive()
    }
}

/// The outcome of one Cedar decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CedarDecision {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// The policies that decided it (the `permit`s that allowed it, or the `forbid`s that
    /// refused it; none when nothing matched), by `@id`.
    pub policies: Vec<String>,
    /// Evaluation errors: any one denies the request (Cedar itself would skip the failing
    /// policy, which for a `forbid` would allow).
    pub errors: Vec<String>,
}

fn invalid(detail: String) -> Error {
    Error::with_detail(ErrorKind::InvalidConfiguration, detail)
}

/// `line L, column C` of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> String {
    // Cedar's offsets are into this very text; should one not fall on a character boundary,
    // the position is approximate rather than a panic.
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}")
}

/// The first labelled position of a Cedar diagnostic in `text`, and its message.
fn located(text: &str, diagnostic: &dyn miette::Diagnostic) -> String {
    let at = diagnostic
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| format!("{}: ", position(text, label.offset())))
        .unwrap_or_default();
    let help = diagnostic.help().map(|h| format!(" ({h})")).unwrap_or_default();
    format!("{at}{diagnostic}{help}")
}

fn type_name(kind: &str) -> Result<EntityTypeName> {
    EntityTypeName::from_str(kind).map_err(|e| invalid(format!("cedar: entity type {kind}: {e}")))
}

fn uid(kind: &str, id: &str) -> Result<EntityUid> {
    Ok(EntityUid::from_type_name_and_id(type_name(kind)?, EntityId::new(id)))
}

impl CedarPolicies {
    /// Parses `policies` (Cedar policy text) for the service named `resource`, validating them
    /// against `schema` (Cedar schema text) when given. `name` names the set in logs and
    /// refusals. Refused, naming the line and column, when a text does not parse or a policy
    /// breaks the schema; refused when there is no policy at all (every request would be
    /// denied).
    pub fn new(name: &str, resource: &str, policies: &str, schema: Option<&str>) -> Result<Self> {
        if policies.len() > MAX_POLICY_TEXT || schema.is_some_and(|s| s.len() > MAX_POLICY_TEXT) {
            return Err(invalid(format!("cedar `{name}`: larger than {MAX_POLICY_TEXT} bytes")));
        }
        let parsed = PolicySet::from_str(policies).map_err(|errors| {
            let first = errors.iter().next().map(|e| located(policies, e)).unwrap_or_else(|| errors.to_string());
            invalid(format!("cedar `{name}` policies: {first}"))
        })?;
        if parsed.is_empty() {
            return Err(invalid(format!("cedar `{name}`: no policy, every request would be denied")));
        }
        let schema = schema
            .map(|text| {
                Schema::from_cedarschema_str(text)
                    .map(|(schema, _warnings)| schema)
                    .map_err(|error| invalid(format!("cedar `{name}` schema: {}", located(text, &error))))
            })
            .transpose()?;
        if let Some(schema) = &schema {
            let result = Validator::new(schema.clone()).validate(&parsed, ValidationMode::Strict);
            if let Some(error) = result.validation_errors().next() {
                return Err(invalid(format!("cedar `{name}` policies break the schema: {}", located(policies, error))));
            }
        }
        if parsed.templates().next().is_some() {
            return Err(invalid(format!(
                "cedar `{name}`: policy templates are not supported (link them, or write policies)"
            )));
        }
        let (general, by_principal) = index(&parsed).map_err(|e| invalid(format!("cedar `{name}`: {e}")))?;
        let names = parsed
            .policies()
            .map(|p| (p.id().to_string(), p.annotation("id").unwrap_or(AsRef::<str>::as_ref(p.id())).to_owned()))
            .collect();
        Ok(Self {
            name: name.to_owned(),
            general,
            by_principal,
            schema,
            resource: uid("Service", resource)?,
            names,
            authorizer: Authorizer::new(),
            entities: std::sync::RwLock::default(),
            decisions: std::sync::RwLock::default(),
            types: Types {
                workload: type_name("Workload")?,
                trust_domain: type_name("TrustDomain")?,
                action: type_name("Action")?,
            },
        })
    }

    /// [`new`](Self::new) with the texts read from files (errors name the file).
    pub fn from_files(name: &str, resource: &str, policies: &Path, schema: Option<&Path>) -> Result<Self> {
        let read = |path: &Path| -> Result<String> {
            let size = std::fs::metadata(path).map_err(|e| invalid(format!("{}: {e}", path.display())))?.len();
            if size > MAX_POLICY_TEXT as u64 {
                return Err(invalid(format!("{}: larger than {MAX_POLICY_TEXT} bytes", path.display())));
            }
            std::fs::read_to_string(path).map_err(|e| invalid(format!("{}: {e}", path.display())))
        };
        let schema_text = schema.map(read).transpose()?;
        Self::new(name, resource, &read(policies)?, schema_text.as_deref()).map_err(|e| {
            let file = match (e.detail(), schema) {
                (Some(detail), Some(schema)) if detail.contains(" schema: ") => schema.display().to_string(),
                _ => policies.display().to_string(),
            };
            invalid(format!("{file}: {}", e.detail().unwrap_or_default()))
        })
    }

    /// The set's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Decides whether `caller` may do `action` (an HTTP method, or a name such as
    /// `tool:search`) at `path` on this service. Logs the decision and the policies that made
    /// it (target `wimse::audit`).
    pub fn decide(&self, caller: &VerifiedCaller, action: &str, path: &str) -> CedarDecision {
        let key = decision_key(caller, action, path);
        let cached = self.decisions.read().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        let decision = match cached {
            Some(decision) => decision,
            None => {
                let decision = self.evaluate(caller, action, path).unwrap_or_else(|error| CedarDecision {
                    allowed: false,
                    policies: Vec::new(),
                    errors: vec![error.detail().unwrap_or_default().to_owned()],
                });
                let mut decisions = self.decisions.write().unwrap_or_else(|e| e.into_inner());
                if decisions.len() >= MAX_CACHED_DECISIONS {
                    decisions.clear();
                }
                decisions.insert(key, decision.clone());
                decision
            }
        };
        tracing::debug!(target: "wimse::audit", policy_set = %self.name, caller = %caller.id(), action,
            allowed = decision.allowed, policies = ?decision.policies, errors = decision.errors.len(), "cedar decision");
        decision
    }

    /// The entities of `id`'s request: built once per principal.
    fn entities_of(&self, id: &WorkloadId) -> Result<Arc<Entities>> {
        if let Some(entities) = self.entities.read().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Ok(entities.clone());
        }
        // The trust domain as the project names it: scheme and authority (`spiffe://prod.example`).
        let origin = id.as_str().strip_suffix(id.path()).unwrap_or(id.as_str());
        let domain = EntityUid::from_type_name_and_id(self.types.trust_domain.clone(), EntityId::new(origin));
        let principal = EntityUid::from_type_name_and_id(self.types.workload.clone(), EntityId::new(id.as_str()));
        let segments =
            id.path().split('/').filter(|s| !s.is_empty()).map(|s| RestrictedExpression::new_string(s.into()));
        let attributes = HashMap::from([
            ("trust_domain".to_owned(), RestrictedExpression::new_string(origin.into())),
            ("path".to_owned(), RestrictedExpression::new_set(segments)),
        ]);
        let cedar_error = |e: &dyn std::fmt::Display| invalid(format!("cedar `{}`: {e}", self.name));
        let workload =
            Entity::new(principal, attributes, HashSet::from([domain.clone()])).map_err(|e| cedar_error(&e))?;
        let entities =
            Entities::from_entities([workload, Entity::new_no_attrs(domain, HashSet::new())], self.schema.as_ref())
                .map_err(|e| cedar_error(&e))?;
        let entities = Arc::new(entities);
        let mut cache = self.entities.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED_PRINCIPALS {
            cache.clear();
        }
        cache.insert(id.clone(), entities.clone());
        Ok(entities)
    }

    fn evaluate(&self, caller: &VerifiedCaller, action: &str, path: &str) -> Result<CedarDecision> {
        let id = caller.id();
        let entities = self.entities_of(id)?;
        let principal = EntityUid::from_type_name_and_id(self.types.workload.clone(), EntityId::new(id.as_str()));
        let cedar_error = |e: &dyn std::fmt::Display| invalid(format!("cedar `{}`: {e}", self.name));
        let txn = caller.transaction();
        let strings = |values: Vec<&str>| {
            RestrictedExpression::new_set(values.into_iter().map(|v| RestrictedExpression::new_string(v.into())))
        };
        let actors: Vec<&str> = txn.map(|t| t.actors().iter().map(|a| a.as_str()).collect()).unwrap_or_default();
        let mut context = vec![
            ("proof".to_owned(), RestrictedExpression::new_string(caller.method().name().into())),
            // The path without its query: a policy on `/admin` must not be passed by `/admin?x`.
            ("path".to_owned(), RestrictedExpression::new_string(path.split('?').next().unwrap_or_default().into())),
            ("transaction".to_owned(), RestrictedExpression::new_bool(txn.is_some())),
            ("txn_scope".to_owned(), strings(txn.map(|t| t.scopes().collect()).unwrap_or_default())),
            ("delegated".to_owned(), RestrictedExpression::new_bool(!actors.is_empty())),
            ("actor_count".to_owned(), RestrictedExpression::new_long(actors.len() as i64)),
            ("txn_actors".to_owned(), strings(actors)),
        ];
        if let Some(txn) = txn {
            context.push(("txn_subject".to_owned(), RestrictedExpression::new_string(txn.subject().into())));
            if let Some(actor) = txn.actor() {
                // The current actor (the Set above has lost the chain's order).
                context.push(("txn_actor".to_owned(), RestrictedExpression::new_string(actor.as_str().into())));
            }
        }
        let policies = self.by_principal.get(&principal).unwrap_or(&self.general);
        let action = EntityUid::from_type_name_and_id(self.types.action.clone(), EntityId::new(action));
        let context = Context::from_pairs(context).map_err(|e| cedar_error(&e))?;
        let request = Request::new(principal, action, self.resource.clone(), context, self.schema.as_ref())
            .map_err(|e| cedar_error(&e))?;
        let response = self.authorizer.is_authorized(&request, policies, &entities);
        let name = |id: &cedar_policy::PolicyId| {
            self.names.get(AsRef::<str>::as_ref(id)).cloned().unwrap_or_else(|| id.to_string())
        };
        let errors: Vec<String> = response.diagnostics().errors().map(ToString::to_string).collect();
        Ok(CedarDecision {
            // Cedar skips a policy whose evaluation fails: a failing `forbid` would then allow
            // what it was written to refuse. Any error denies.
            allowed: response.decision() == Decision::Allow && errors.is_empty(),
            policies: response.diagnostics().reason().map(name).collect(),
            errors,
        })
    }
}

/// The general policies (any principal) and, per principal named exactly, its policies with
/// the general ones.
fn index(parsed: &PolicySet) -> std::result::Result<(PolicySet, HashMap<EntityUid, PolicySet>), String> {
    // Each principal's set holds the general policies again: when that would take more than
    // this many entries, no index (every request is decided over the whole set).
    const MAX_INDEXED: usize = 200_000;
    let general_count =
        parsed.policies().filter(|p| !matches!(p.principal_constraint(), PrincipalConstraint::Eq(_))).count();
    let exact_count = parsed.policies().count() - general_count;
    if general_count.saturating_mul(exact_count) > MAX_INDEXED {
        return Ok((parsed.clone(), HashMap::new()));
    }
    let mut general = PolicySet::new();
    let mut exact: HashMap<EntityUid, Vec<cedar_policy::Policy>> = HashMap::new();
    for policy in parsed.policies() {
        match policy.principal_constraint() {
            PrincipalConstraint::Eq(principal) => exact.entry(principal).or_default().push(policy.clone()),
            _ => general.add(policy.clone()).map_err(|e| e.to_string())?,
        }
    }
    let mut by_principal = HashMap::with_capacity(exact.len());
    for (principal, policies) in exact {
        let mut set = general.clone();
        for policy in policies {
            set.add(policy).map_err(|e| e.to_string())?;
        }
        by_principal.insert(principal, set);
    }
    Ok((general, by_principal))
}

#[cfg(test)]
mod tests {
    #[test]
    fn positions_are_lines_and_columns_even_inside_a_character() {
        let text = "permit(\n  é x";
        assert_eq!(super::position(text, 0), "line 1, column 1");
        assert_eq!(super::position(text, 10), "line 2, column 3", "the byte after `  `");
        // Byte 11 is inside `é`: the position before it, never a panic.
        assert_eq!(super::position(text, 11), "line 2, column 3");
        assert_eq!(super::position(text, 999), "line 2, column 6", "past the end: after the last character");
    }
}
