//! Who may call: authorization policies over verified callers.
//!
//! A [`Policy`] has deny rules, requirements and allow rules. Deny rules are checked first;
//! then the caller must meet every requirement and match at least one allow rule. A policy
//! without allow rules denies everyone. The first rule that refuses names the reason: a rule on
//! the Txn-Token's purpose, subject or delegation chain has its own (`txn_scope_denied`,
//! `txn_subject_denied`, `txn_delegation_denied`),
//! every other one is `policy_denied` (see [`Policy::check`]).
//! Identifiers are compared as complete URIs; a path prefix matches only at segment boundaries
//! and never across trust domains.
//!
//! ```
//! use wimse_core::server::policy::{Policy, Rule};
//!
//! let policy = Policy::named("orders-api")
//!     .allow(Rule::path_prefix("spiffe://prod.example/ns/front")?)
//!     .allow(Rule::exact("spiffe://prod.example/ns/batch/nightly")?)
//!     .deny(Rule::exact("spiffe://prod.example/ns/front/legacy")?);
//! assert!(policy.allows_id(&"spiffe://prod.example/ns/front/web".parse()?));
//! assert!(!policy.allows_id(&"spiffe://prod.example/ns/frontier".parse()?));
//! assert!(!policy.allows_id(&"spiffe://prod.example/ns/front/legacy".parse()?));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::id::{IdentifierError, TrustDomain, WorkloadId};
use crate::server::caller::VerifiedCaller;

type CallerFn = dyn Fn(&VerifiedCaller) -> bool + Send + Sync;

/// One condition on a caller.
#[derive(Clone)]
pub struct Rule(RuleKind);

#[derive(Clone)]
enum RuleKind {
    Any,
    Exact(WorkloadId),
    OneOf(BTreeSet<WorkloadId>),
    TrustDomain(TrustDomain),
    PathPrefix(WorkloadId),
    AllOf(Vec<Rule>),
    AnyOf(Vec<Rule>),
    Not(Box<Rule>),
    Fn(Arc<CallerFn>),
    Transaction,
    TxnScope(String),
    TxnSubject(String),
    TxnDelegated,
    TxnActor(WorkloadId),
    TxnMaxActors(usize),
}

impl Rule {
    /// Every verified caller.
    pub fn any() -> Self {
        Rule(RuleKind::Any)
    }

    /// Exactly the workload `id` (parsed here, like [`path_prefix`](Self::path_prefix)).
    pub fn exact(id: &str) -> std::result::Result<Self, IdentifierError> {
        Ok(Self::workload(WorkloadId::parse(id)?))
    }

    /// Exactly this (already parsed) workload.
    pub fn workload(id: WorkloadId) -> Self {
        Rule(RuleKind::Exact(id))
    }

    /// Any of these workloads.
    pub fn one_of(ids: impl IntoIterator<Item = WorkloadId>) -> Self {
        Rule(RuleKind::OneOf(ids.into_iter().collect()))
    }

    /// Every workload of a trust domain (an explicit origin-wide grant).
    pub fn trust_domain(domain: TrustDomain) -> Self {
        Rule(RuleKind::TrustDomain(domain))
    }

    /// `prefix` itself and every workload below it: `spiffe://d/ns/pay` matches `spiffe://d/ns/pay`
    /// and `spiffe://d/ns/pay/worker`, not `spiffe://d/ns/payroll`. The prefix must be a valid
    /// workload identifier, so an origin-wide prefix is refused (use [`Rule::trust_domain`]).
    pub fn path_prefix(prefix: &str) -> std::result::Result<Self, IdentifierError> {
        Ok(Rule(RuleKind::PathPrefix(WorkloadId::parse(prefix)?)))
    }

    /// All of `rules` match (true when empty).
    pub fn all_of(rules: impl IntoIterator<Item = Rule>) -> Self {
        Rule(RuleKind::AllOf(rules.into_iter().collect()))
    }

    /// At least one of `rules` matches (false when empty).
    pub fn any_of(rules: impl IntoIterator<Item = Rule>) -> Self {
        Rule(RuleKind::AnyOf(rules.into_iter().collect()))
    }

    /// `rule` does not match.
    #[allow(clippy::should_implement_trait)]
    pub fn not(rule: Rule) -> Self {
        Rule(RuleKind::Not(Box::new(rule)))
    }

    /// The request carries a verified Txn-Token (see [`crate::protocol::txn`]; the verifier must validate
    /// Txn-Tokens, else no caller has a transaction). Transaction rules need the whole caller:
    /// in [`Policy::allows_id`] they never match (so a `not(..)` of one always does).
    pub fn transaction() -> Self {
        Rule(RuleKind::Transaction)
    }

    /// The request's verified Txn-Token has `scope` among its scope values (its purpose).
    pub fn txn_scope(scope: impl Into<String>) -> Self {
        Rule(RuleKind::TxnScope(scope.into()))
    }

    /// The request's verified Txn-Token is for `subject` (its `sub`, exactly).
    pub fn txn_subject(subject: impl Into<String>) -> Self {
        Rule(RuleKind::TxnSubject(subject.into()))
    }

    /// Someone acts for the request's Txn-Token subject: its delegation chain (`act`) names at
    /// least one actor (an agent acting for a user). `not(txn_delegated())` admits only
    /// transactions without delegation.
    pub fn txn_delegated() -> Self {
        Rule(RuleKind::TxnDelegated)
    }

    /// The request's Txn-Token's delegation chain names `actor`, as the current actor or an
    /// earlier one (deny with it to keep a workload out of every chain).
    pub fn txn_actor(actor: WorkloadId) -> Self {
        Rule(RuleKind::TxnActor(actor))
    }

    /// The request's Txn-Token's delegation chain has at most `max` actors (0: no delegation).
    pub fn txn_max_actors(max: usize) -> Self {
        Rule(RuleKind::TxnMaxActors(max))
    }

    /// A custom condition.
    pub fn from_fn(f: impl Fn(&VerifiedCaller) -> bool + Send + Sync + 'static) -> Self {
        Rule(RuleKind::Fn(Arc::new(f)))
    }

    fn matches(&self, caller: Option<&VerifiedCaller>, id: &WorkloadId) -> bool {
        match &self.0 {
            RuleKind::Any => true,
            RuleKind::Exact(want) => want == id,
            RuleKind::OneOf(set) => set.contains(id),
            RuleKind::TrustDomain(domain) => id.is_in(domain),
            RuleKind::PathPrefix(prefix) => {
                id.as_str().strip_prefix(prefix.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            RuleKind::AllOf(rules) => rules.iter().all(|r| r.matches(caller, id)),
            RuleKind::AnyOf(rules) => rules.iter().any(|r| r.matches(caller, id)),
            RuleKind::Not(rule) => !rule.matches(caller, id),
            // A closure needs the whole caller; with only an identifier it cannot match.
            RuleKind::Fn(f) => caller.is_some_and(|c| f(c)),
            // So do transaction rules.
            RuleKind::Transaction => caller.is_some_and(|c| c.transaction().is_some()),
            RuleKind::TxnScope(scope) => {
                caller.and_then(VerifiedCaller::transaction).is_some_and(|t| t.has_scope(scope))
            }
            RuleKind::TxnSubject(sub) => {
                caller.and_then(VerifiedCaller::transaction).is_some_and(|t| t.subject() == sub)
            }
            RuleKind::TxnDelegated => {
                caller.and_then(VerifiedCaller::transaction).is_some_and(|t| !t.actors().is_empty())
            }
            RuleKind::TxnActor(actor) => {
                caller.and_then(VerifiedCaller::transaction).is_some_and(|t| t.actors().contains(actor))
            }
            RuleKind::TxnMaxActors(max) => {
                caller.and_then(VerifiedCaller::transaction).is_some_and(|t| t.actors().len() <= *max)
            }
        }
    }
}

/// What a rule looks at in the Txn-Token, when that is all it looks at: names a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxnFacet {
    /// Only whether the request has a transaction.
    Presence,
    /// Its purpose (`scope`), and maybe its presence.
    Scope,
    /// Its subject (`sub`), and maybe its presence.
    Subject,
    /// Its delegation chain (`act`), and maybe its presence.
    Delegation,
}

impl Rule {
    /// The facet of the Txn-Token this rule is about, or `None` when it looks at anything
    /// else (the caller's identity, a closure) or at both the purpose and the subject.
    fn txn_facet(&self) -> Option<TxnFacet> {
        match &self.0 {
            RuleKind::Transaction => Some(TxnFacet::Presence),
            RuleKind::TxnScope(_) => Some(TxnFacet::Scope),
            RuleKind::TxnSubject(_) => Some(TxnFacet::Subject),
            RuleKind::TxnDelegated | RuleKind::TxnActor(_) | RuleKind::TxnMaxActors(_) => Some(TxnFacet::Delegation),
            RuleKind::Not(rule) => rule.txn_facet(),
            RuleKind::AllOf(rules) | RuleKind::AnyOf(rules) => joined_facet(rules),
            RuleKind::Any
            | RuleKind::Exact(_)
            | RuleKind::OneOf(_)
            | RuleKind::TrustDomain(_)
            | RuleKind::PathPrefix(_)
            | RuleKind::Fn(_) => None,
        }
    }
}

/// The one facet `rules` are all about (a presence rule joins either other), if any; `None`
/// for no rules.
fn joined_facet(rules: &[Rule]) -> Option<TxnFacet> {
    let mut facets = rules.iter().map(Rule::txn_facet);
    let first = facets.next()??;
    facets.try_fold(first, |joined, facet| match (joined, facet?) {
        (TxnFacet::Presence, facet) | (facet, TxnFacet::Presence) => Some(facet),
        (a, b) => (a == b).then_some(a),
    })
}

/// The error for a refusal by a rule about `facet` of the Txn-Token, or about anything else
/// when `None` (see [`Policy::check`]).
fn refusal(facet: Option<TxnFacet>, caller: Option<&VerifiedCaller>, detail: String) -> Error {
    let Some(facet) = facet else { return Error::with_detail(ErrorKind::PolicyDenied, detail) };
    let (kind, why) = match (caller.and_then(VerifiedCaller::transaction), facet) {
        (None, _) if caller.and_then(VerifiedCaller::txn_token).is_some() => (
            ErrorKind::PolicyDenied,
            ": the request's Txn-Token is not validated by this verifier (VerifierConfig::txn_tokens), \
             so no rule on it can match",
        ),
        (None, _) => (ErrorKind::MissingTxnToken, ": the request has no Txn-Token"),
        (Some(_), TxnFacet::Scope) => (ErrorKind::TxnScopeDenied, ""),
        (Some(_), TxnFacet::Subject) => (ErrorKind::TxnSubjectDenied, ""),
        (Some(_), TxnFacet::Delegation) => (ErrorKind::TxnDelegationDenied, ""),
        // `not(transaction())`: refused for having one.
        (Some(_), TxnFacet::Presence) => (ErrorKind::PolicyDenied, ""),
    };
    Error::with_detail(kind, format!("{detail}{why}"))
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            RuleKind::Any => f.write_str("any"),
            RuleKind::Exact(id) => write!(f, "exact({id})"),
            RuleKind::OneOf(ids) => f.debug_set().entries(ids.iter().map(|i| i.as_str())).finish(),
            RuleKind::TrustDomain(d) => write!(f, "trust_domain({d})"),
            RuleKind::PathPrefix(p) => write!(f, "path_prefix({p})"),
            RuleKind::AllOf(r) => f.debug_tuple("all_of").field(r).finish(),
            RuleKind::AnyOf(r) => f.debug_tuple("any_of").field(r).finish(),
            RuleKind::Not(r) => f.debug_tuple("not").field(r).finish(),
            RuleKind::Fn(_) => f.write_str("fn"),
            RuleKind::Transaction => f.write_str("transaction"),
            RuleKind::TxnScope(s) => write!(f, "txn_scope({s})"),
            RuleKind::TxnSubject(s) => write!(f, "txn_subject({s})"),
            RuleKind::TxnDelegated => f.write_str("txn_delegated"),
            RuleKind::TxnActor(a) => write!(f, "txn_actor({a})"),
            RuleKind::TxnMaxActors(n) => write!(f, "txn_max_actors({n})"),
        }
    }
}

/// A named set of deny and allow rules, or of Cedar policies (`Policy::cedar`, feature
/// `cedar`). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Policy {
    name: Arc<str>,
    deny: Arc<Vec<Rule>>,
    require: Arc<Vec<Rule>>,
    allow: Arc<Vec<Rule>>,
    /// Decides instead of the allow rules, after the deny rules and requirements.
    #[cfg(feature = "cedar")]
    cedar: Option<Arc<crate::server::cedar::CedarPolicies>>,
}

impl Policy {
    /// An empty policy (denies everyone until an allow rule is added). The name appears in logs.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: Arc::from(name.into()),
            deny: Arc::default(),
            require: Arc::default(),
            allow: Arc::default(),
            #[cfg(feature = "cedar")]
            cedar: None,
        }
    }

    /// A policy decided by Cedar policies (deny by default; see [`crate::server::cedar`]):
    /// the action is the request's method ([`check_request`](Self::check_request)), the
    /// resource the service the policies were loaded for. Deny rules and requirements added
    /// to it are checked first; allow rules are not used.
    #[cfg(feature = "cedar")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cedar")))]
    pub fn cedar(policies: crate::server::cedar::CedarPolicies) -> Self {
        let mut policy = Self::named(policies.name().to_owned());
        policy.cedar = Some(Arc::new(policies));
        policy
    }

    /// A policy that allows every verified caller.
    pub fn allow_all() -> Self {
        Self::named("allow-all").allow(Rule::any())
    }

    /// Adds an allow rule.
    pub fn allow(mut self, rule: Rule) -> Self {
        Arc::make_mut(&mut self.allow).push(rule);
        self
    }

    /// Adds a deny rule (checked before every allow rule).
    pub fn deny(mut self, rule: Rule) -> Self {
        Arc::make_mut(&mut self.deny).push(rule);
        self
    }

    /// Adds a requirement: every caller must match it, whoever it is (checked after the deny
    /// rules, before the allow rules). E.g. `require(Rule::txn_scope("orders.purchase"))`: only
    /// calls made within a transaction for that purpose (others are refused as
    /// `txn_scope_denied`, see [`Policy::check`]).
    pub fn require(mut self, rule: Rule) -> Self {
        Arc::make_mut(&mut self.require).push(rule);
        self
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn decide(&self, caller: Option<&VerifiedCaller>, id: &WorkloadId, action: Option<(&str, &str)>) -> Result<()> {
        if let Some(deny) = self.deny.iter().find(|r| r.matches(caller, id)) {
            let detail = format!("policy `{}`: deny rule {deny:?} matched", self.name);
            return Err(refusal(deny.txn_facet(), caller, detail));
        }
        let allowed = || self.allow.iter().any(|r| r.matches(caller, id));
        if let Some(unmet) = self.require.iter().find(|r| !r.matches(caller, id)) {
            // The requirement names the refusal; the log also says if the caller was not on
            // the allow list either, so fixing the requirement alone is not expected to help.
            let also = if allowed() { "" } else { "; no allow rule matches either" };
            let detail = format!("policy `{}`: requirement {unmet:?} not met{also}", self.name);
            return Err(refusal(unmet.txn_facet(), caller, detail));
        }
        #[cfg(feature = "cedar")]
        if let Some(cedar) = &self.cedar {
            return self.decide_with_cedar(cedar, caller, action);
        }
        let _ = action;
        if allowed() {
            return Ok(());
        }
        let detail = format!("policy `{}`: no allow rule", self.name);
        Err(refusal(joined_facet(&self.allow), caller, detail))
    }

    /// Checks a verified caller; a 403 error when refused, whose detail names the policy and
    /// the rule (the adapter logs it once as the request's audit event).
    ///
    /// The rules are checked in order: deny rules, then requirements (in the order added), then
    /// the allow rules; the first rule that refuses names the reason. A rule about the
    /// Txn-Token only (built from [`Rule::txn_scope`], [`Rule::txn_subject`], the delegation
    /// rules [`Rule::txn_delegated`], [`Rule::txn_actor`], [`Rule::txn_max_actors`],
    /// [`Rule::transaction`] and the combinators) gives its own kind:
    /// [`ErrorKind::TxnScopeDenied`] for the purpose, [`ErrorKind::TxnSubjectDenied`] for the
    /// subject, [`ErrorKind::TxnDelegationDenied`] for the delegation chain, and
    /// [`ErrorKind::MissingTxnToken`] when the request has no Txn-Token at all.
    /// Every other refusal (identity rules, closures, rules mixing both) is
    /// [`ErrorKind::PolicyDenied`]. So with an allow list of workloads and
    /// `require(Rule::txn_scope(..))`, a call with the wrong purpose is `txn_scope_denied`
    /// whoever makes it (the log says if the caller is not on the allow list either), and an
    /// unlisted caller with the right purpose is `policy_denied`.
    pub fn check(&self, caller: &VerifiedCaller) -> Result<()> {
        self.decide(Some(caller), caller.id(), None)
    }

    /// [`check`](Self::check) for a request of `method` to `path`: what Cedar policies see as
    /// the action and the context's `path` (rule lists do not look at them). The server
    /// adapters call this one.
    pub fn check_request(&self, caller: &VerifiedCaller, method: &str, path: &str) -> Result<()> {
        self.decide(Some(caller), caller.id(), Some((method, path)))
    }

    /// Whether an identifier alone is allowed (closure rules never match here, nor Cedar
    /// policies, which need the whole request).
    pub fn allows_id(&self, id: &WorkloadId) -> bool {
        self.decide(None, id, None).is_ok()
    }

    #[cfg(feature = "cedar")]
    fn decide_with_cedar(
        &self,
        cedar: &crate::server::cedar::CedarPolicies,
        caller: Option<&VerifiedCaller>,
        action: Option<(&str, &str)>,
    ) -> Result<()> {
        let Some(caller) = caller else {
            let detail = format!("policy `{}`: Cedar policies decide on whole requests only", self.name);
            return Err(Error::with_detail(ErrorKind::PolicyDenied, detail));
        };
        // Cedar policies decide on the request's method and path: without them, refused rather
        // than decided on a made-up action a `forbid` on the method or path would not match.
        let Some((action, path)) = action else {
            let detail = format!("policy `{}`: Cedar policies need the request (Policy::check_request)", self.name);
            return Err(Error::with_detail(ErrorKind::PolicyDenied, detail));
        };
        if !is_canonical_path(path.split('?').next().unwrap_or_default()) {
            let detail = format!(
                "policy `{}`: the path is not canonical; Cedar policies on paths could be passed by it",
                self.name
            );
            return Err(Error::with_detail(ErrorKind::NonCanonicalPath, detail));
        }
        let decision = cedar.decide(caller, action, path);
        if decision.allowed {
            return Ok(());
        }
        let why = match decision.policies.as_slice() {
            [] => "no permit policy matched".to_owned(),
            forbids => format!("forbidden by {}", forbids.join(", ")),
        };
        let errors = match decision.errors.first() {
            Some(first) => format!(" ({} evaluation error(s), first: {first})", decision.errors.len()),
            None => String::new(),
        };
        let detail = format!("policy `{}` (cedar), action {action}: {why}{errors}", self.name);
        Err(Error::with_detail(ErrorKind::PolicyDenied, detail))
    }
}

/// A path a framework routes as written: no `%` escape, no empty segment (`//`), no `.` or `..`
/// segment. The leading `/` and a trailing one are fine.
pub fn is_canonical_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else { return path.is_empty() || path == "*" };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    !path.contains('%') && (rest.is_empty() || rest.split('/').all(|segment| !matches!(segment, "" | "." | "..")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> WorkloadId {
        s.parse().unwrap()
    }

    #[test]
    fn prefix_respects_segments_and_domains() {
        let rule = Rule::path_prefix("wimse://trust.example/service/pay").unwrap();
        let p = Policy::named("t").allow(rule);
        assert!(p.allows_id(&id("wimse://trust.example/service/pay")));
        assert!(p.allows_id(&id("wimse://trust.example/service/pay/worker")));
        assert!(!p.allows_id(&id("wimse://trust.example/service/payroll-attacker")));
        assert!(!p.allows_id(&id("wimse://attacker.example/service/pay/worker")));
        assert!(!p.allows_id(&id("spiffe://trust.example/service/pay/worker")));
        assert!(Rule::path_prefix("wimse://trust.example").is_err());
        assert!(Rule::path_prefix("wimse://trust.example/").is_err());
    }

    #[test]
    fn combinators_and_deny_first() {
        let a = id("spiffe://d/a");
        let b = id("spiffe://d/b");
        let c = id("spiffe://e/c");
        let domain: TrustDomain = "spiffe://d".parse().unwrap();
        let p = Policy::named("p")
            .allow(Rule::any_of([Rule::trust_domain(domain.clone()), Rule::workload(c.clone())]))
            .deny(Rule::all_of([Rule::trust_domain(domain), Rule::not(Rule::one_of([a.clone()]))]));
        assert!(p.allows_id(&a));
        assert!(!p.allows_id(&b), "deny wins over allow");
        assert!(p.allows_id(&c));
        assert!(!Policy::named("empty").allows_id(&a));
        assert!(Policy::allow_all().allows_id(&c));
        assert!(!Policy::named("f").allow(Rule::from_fn(|_| true)).allows_id(&a), "closures need a caller");
        assert!(Policy::named("n").allow(Rule::all_of([])).allows_id(&a));
        assert!(!Policy::named("n").allow(Rule::any_of([])).allows_id(&a));
        assert_eq!(format!("{:?}", Rule::not(Rule::any())), "not(any)");
    }

    #[test]
    fn clones_share_rules_until_one_is_extended() {
        let a = id("spiffe://d/a");
        let base = Policy::named("base").allow(Rule::workload(a.clone()));
        let stricter = base.clone().deny(Rule::workload(a.clone()));
        let wider = base.clone().allow(Rule::any());
        assert!(base.allows_id(&a) && !stricter.allows_id(&a), "a deny on a clone leaves the original alone");
        assert!(wider.allows_id(&id("spiffe://d/other")) && !base.allows_id(&id("spiffe://d/other")));
    }
}
