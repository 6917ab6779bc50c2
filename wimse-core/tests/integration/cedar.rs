//! Cedar policies (feature `cedar`): loading refuses what does not parse or breaks its schema,
//! naming the line; decisions equal the rule lists' wherever both can say the same thing; the
//! delegation chain, the Txn-Token's subject and scope, and the proof mode are policy inputs.

use crate::common::*;
use http::{HeaderMap, HeaderValue};
use wimse_core::prelude::*;
use wimse_core::protocol::txn::{NewTxnToken, TxnTokenIssuer, TxnTokenValidation};
use wimse_core::protocol::wit::WitIssuer;
use wimse_core::server::cedar::CedarPolicies;
use wimse_core::server::policy::{Policy, Rule};

const FRONT: &str = "spiffe://prod.example/ns/front";
const INTRUDER: &str = "spiffe://prod.example/ns/intruder";
const BATCH: &str = "spiffe://prod.example/batch/nightly";
const PLANNER: &str = "spiffe://prod.example/agents/planner";
const BOOKER: &str = "spiffe://prod.example/agents/booker";

/// The context every request passes, as a Cedar schema type (what the README documents).
const SCHEMA: &str = r#"
type WimseContext = {
    proof: String, path: String, transaction: Bool, txn_scope: Set<String>,
    delegated: Bool, actor_count: Long, txn_actors: Set<String>, txn_subject?: String, txn_actor?: String,
};
entity TrustDomain;
entity Workload in [TrustDomain] { trust_domain: String, path: Set<String> };
entity Service;
action "GET", "POST", "call" appliesTo { principal: [Workload], resource: [Service], context: WimseContext };
"#;

/// Verified callers: `id`, with a Txn-Token for `scope` and `actors` when `scope` is given.
struct Callers {
    f: Fixture,
    verifier: Verifier,
}

impl Callers {
    fn new() -> Self {
        let f = Fixture::new();
        let domain: TrustDomain = "spiffe://prod.example".parse().unwrap();
        let verifier = f.verifier_with(f.config().txn_tokens(TxnTokenValidation::new(domain)));
        Self { f, verifier }
    }

    fn caller(&self, id: &str, txn: Option<(&str, &[&str])>) -> VerifiedCaller {
        let id: WorkloadId = id.parse().unwrap();
        let key = SigningKey::generate(Algorithm::ES256).unwrap();
        let wit = WitIssuer::new(self.f.issuer_key.clone()).issue(&id, key.public_jwk(), NOW - 60).unwrap();
        let audience = format!("{ORIGIN}{PATH}");
        let mut proof = WptBuilder::new(&key, &wit, &audience);
        let token = txn.map(|(scope, actors)| {
            let mut token = NewTxnToken::new("user-1842", scope).requested_by(FRONT);
            token.actors = actors.iter().map(|a| a.parse().unwrap()).collect();
            let domain: TrustDomain = "spiffe://prod.example".parse().unwrap();
            TxnTokenIssuer::new(self.f.issuer_key.clone(), &domain).issue(&token, NOW - 5).unwrap()
        });
        if let Some(token) = &token {
            proof = proof.txn_token(token);
        }
        let mut headers: HeaderMap = self.f.headers(&wit, &proof.sign(NOW).unwrap());
        if let Some(token) = &token {
            headers.insert("txn-token", HeaderValue::from_str(token).unwrap());
        }
        self.verifier.verify_sync(&RequestView::new(PATH, &headers)).unwrap()
    }
}

fn load_error(policies: &str, schema: Option<&str>) -> String {
    let error = CedarPolicies::new("orders", "orders", policies, schema).unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::InvalidConfiguration);
    error.detail().unwrap().to_owned()
}

#[test]
fn a_policy_file_that_does_not_parse_or_breaks_its_schema_is_refused_naming_the_line() {
    let broken = "permit(principal, action, resource);\n\npermit(principal, action resource);\n";
    let detail = load_error(broken, None);
    assert!(detail.contains("line 3, column"), "{detail}");
    let unknown_attribute =
        "permit(principal, action == Action::\"GET\", resource)\n  when { context.no_such_thing };\n";
    let detail = load_error(unknown_attribute, Some(SCHEMA));
    assert!(detail.contains("break the schema") && detail.contains("line 2"), "{detail}");
    let unknown_entity = "permit(principal == User::\"alice\", action, resource);";
    assert!(load_error(unknown_entity, Some(SCHEMA)).contains("break the schema"));
    let detail = load_error("permit(principal, action, resource);", Some("entity Workload {"));
    assert!(detail.contains("schema") && detail.contains("line 1"), "{detail}");
    assert!(load_error("// nothing\n", None).contains("no policy"));
    assert!(load_error(&"x".repeat(2 << 20), None).contains("larger than"));
    // Files: the error names the file.
    let dir = std::env::temp_dir().join(format!("wimse-cedar-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bad.cedar"), broken).unwrap();
    let error = CedarPolicies::from_files("orders", "orders", &dir.join("bad.cedar"), None).unwrap_err();
    assert!(error.detail().unwrap().contains("bad.cedar: cedar `orders` policies: line 3"), "{error:?}");
    assert!(CedarPolicies::from_files("orders", "orders", &dir.join("missing.cedar"), None).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cedar_decides_as_the_equivalent_rule_lists_do() {
    let callers = Callers::new();
    // Pairs of a rule-list policy and the Cedar policies that say the same.
    let pairs: Vec<(Policy, &str)> = vec![
        (
            Policy::named("p").allow(Rule::exact(FRONT).unwrap()),
            r#"permit(principal == Workload::"spiffe://prod.example/ns/front", action, resource);"#,
        ),
        (
            Policy::named("p")
                .allow(Rule::trust_domain("spiffe://prod.example".parse().unwrap()))
                .deny(Rule::exact(INTRUDER).unwrap()),
            r#"permit(principal in TrustDomain::"spiffe://prod.example", action, resource);
               forbid(principal == Workload::"spiffe://prod.example/ns/intruder", action, resource);"#,
        ),
        (
            Policy::named("p").allow(Rule::path_prefix("spiffe://prod.example/ns").unwrap()),
            r#"permit(principal, action, resource) when { principal.path.contains("ns") && principal.trust_domain == "spiffe://prod.example" };"#,
        ),
        (
            Policy::named("p").allow(Rule::any()).require(Rule::txn_scope("orders.purchase")),
            r#"permit(principal, action, resource) when { context.txn_scope.contains("orders.purchase") };"#,
        ),
        (
            Policy::named("p").allow(Rule::any()).require(Rule::txn_subject("user-1842")),
            r#"permit(principal, action, resource) when { context has txn_subject && context.txn_subject == "user-1842" };"#,
        ),
        (
            Policy::named("p").allow(Rule::any()).require(Rule::txn_delegated()).require(Rule::txn_max_actors(1)),
            r#"permit(principal, action, resource) when { context.delegated && context.actor_count <= 1 };"#,
        ),
        (
            Policy::named("p").allow(Rule::any()).deny(Rule::txn_actor(BOOKER.parse().unwrap())),
            r#"permit(principal, action, resource);
               forbid(principal, action, resource) when { context.txn_actors.contains("spiffe://prod.example/agents/booker") };"#,
        ),
        (
            Policy::named("p").allow(Rule::any()).require(Rule::not(Rule::transaction())),
            r#"permit(principal, action, resource) unless { context.transaction };"#,
        ),
    ];
    let cases: Vec<(&str, VerifiedCaller)> = vec![
        ("front, no txn", callers.caller(FRONT, None)),
        ("intruder, no txn", callers.caller(INTRUDER, None)),
        ("batch, no txn", callers.caller(BATCH, None)),
        ("front, purchase", callers.caller(FRONT, Some(("orders.purchase", &[])))),
        ("front, read", callers.caller(FRONT, Some(("orders.read", &[])))),
        ("front, agent", callers.caller(FRONT, Some(("orders.purchase", &[PLANNER])))),
        ("front, two agents", callers.caller(FRONT, Some(("orders.purchase", &[BOOKER, PLANNER])))),
        ("intruder, agent", callers.caller(INTRUDER, Some(("orders.read", &[PLANNER])))),
        ("batch, purchase", callers.caller(BATCH, Some(("orders.purchase", &[])))),
    ];
    let mut compared = 0;
    for (rules, text) in &pairs {
        for schema in [None, Some(SCHEMA)] {
            let cedar = Policy::cedar(CedarPolicies::new("p", "orders", text, schema).unwrap());
            for (name, caller) in &cases {
                let expected = rules.check_request(caller, "GET", PATH).is_ok();
                let got = cedar.check_request(caller, "GET", PATH);
                assert_eq!(got.is_ok(), expected, "{name} under {rules:?} vs {text} (schema: {})", schema.is_some());
                if let Err(error) = got {
                    assert_eq!(error.kind(), &ErrorKind::PolicyDenied);
                }
                compared += 1;
            }
        }
    }
    assert_eq!(compared, pairs.len() * 2 * cases.len());
}

#[test]
fn actions_resources_and_the_deciding_policies() {
    let callers = Callers::new();
    let text = r#"
        @id("front-reads")
        permit(principal == Workload::"spiffe://prod.example/ns/front", action == Action::"GET", resource == Service::"orders")
        when { context.path like "/charge*" };
        @id("no-http-signatures-for-posts")
        forbid(principal, action == Action::"POST", resource) when { context.proof == "http-signature" };
        @id("front-posts")
        permit(principal == Workload::"spiffe://prod.example/ns/front", action == Action::"POST", resource);
    "#;
    let policy = Policy::cedar(CedarPolicies::new("orders", "orders", text, Some(SCHEMA)).unwrap());
    let front = callers.caller(FRONT, None);
    assert!(policy.check_request(&front, "GET", "/charge").is_ok());
    assert!(policy.check_request(&front, "POST", "/charge").is_ok());
    let elsewhere = policy.check_request(&front, "GET", "/refund").unwrap_err();
    assert!(elsewhere.detail().unwrap().contains("no permit policy matched"), "{elsewhere:?}");
    // An action the schema does not declare: the request is invalid, hence denied.
    let undeclared = policy.check_request(&front, "DELETE", "/charge").unwrap_err();
    assert_eq!(undeclared.kind(), &ErrorKind::PolicyDenied);
    // Another service's policies do not apply here.
    let other = Policy::cedar(CedarPolicies::new("refunds", "refunds", text, Some(SCHEMA)).unwrap());
    assert!(other.check_request(&front, "GET", "/charge").is_err());
    // A forbid names itself.
    let cedar = CedarPolicies::new("orders", "orders", text, Some(SCHEMA)).unwrap();
    let allowed = cedar.decide(&front, "POST", "/charge");
    assert_eq!((allowed.allowed, allowed.policies.as_slice()), (true, ["front-posts".to_owned()].as_slice()));
    // `check` without the request: refused (a forbid on the method or path could not apply).
    assert!(policy.check(&front).unwrap_err().detail().unwrap().contains("check_request"));
    // The path without its query, and no non-canonical path reaches the policies.
    assert!(policy.check_request(&front, "GET", "/charge?x=%2e").is_ok());
    for odd in ["/%63harge", "//charge", "/./charge", "/x/../charge"] {
        let refused = policy.check_request(&front, "GET", odd).unwrap_err();
        assert_eq!(refused.kind(), &ErrorKind::NonCanonicalPath, "{odd}");
    }
    // Cedar decides on whole requests only: an identifier alone never passes.
    assert!(!policy.allows_id(&FRONT.parse().unwrap()));
    // Deny rules and requirements added to a Cedar policy are checked first.
    let with_requirement = policy.clone().require(Rule::transaction());
    assert_eq!(
        with_requirement.check_request(&front, "GET", "/charge").unwrap_err().kind(),
        &ErrorKind::MissingTxnToken
    );
}

#[test]
fn settings_files_name_cedar_policies() {
    let dir = std::env::temp_dir().join(format!("wimse-cedar-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("orders.cedar"),
        r#"permit(principal == Workload::"spiffe://prod.example/ns/front", action == Action::"GET", resource);"#,
    )
    .unwrap();
    std::fs::write(dir.join("orders.cedarschema"), SCHEMA).unwrap();
    std::fs::write(
        dir.join("settings.toml"),
        "[policy]\nname = \"orders\"\ncedar = { policies = \"orders.cedar\", schema = \"orders.cedarschema\", resource = \"orders\" }\n",
    )
    .unwrap();
    let settings = wimse_core::config::Settings::from_file(dir.join("settings.toml")).unwrap();
    let policy = settings.policy().unwrap();
    let callers = Callers::new();
    assert!(policy.check_request(&callers.caller(FRONT, None), "GET", "/x").is_ok());
    assert!(policy.check_request(&callers.caller(INTRUDER, None), "GET", "/x").is_err());
    // Allow rules beside Cedar policies are refused (one decides), and a broken file is named.
    std::fs::write(
        dir.join("both.toml"),
        "[policy]\nname = \"o\"\nallow = { workloads = [\"spiffe://prod.example/a\"] }\ncedar = { policies = \"orders.cedar\", resource = \"o\" }\n",
    )
    .unwrap();
    let both = wimse_core::config::Settings::from_file(dir.join("both.toml")).unwrap().policy().unwrap_err();
    assert!(both.detail().unwrap().contains("policy.allow"), "{both:?}");
    std::fs::write(dir.join("orders.cedar"), "permit(principal, action resource);").unwrap();
    let broken = wimse_core::config::Settings::from_file(dir.join("settings.toml")).unwrap().policy().unwrap_err();
    assert!(
        broken.detail().unwrap().contains("orders.cedar") && broken.detail().unwrap().contains("line 1"),
        "{broken:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_evaluation_error_never_allows() {
    let callers = Callers::new();
    // Without a schema, a forbid reading `txn_subject` errors for a request without a
    // Txn-Token; Cedar would skip it and let the permit allow.
    let text = r#"
        permit(principal, action, resource);
        @id("users-only")
        forbid(principal, action, resource) unless { context.txn_subject like "users:*" };
    "#;
    let policy = Policy::cedar(CedarPolicies::new("p", "orders", text, None).unwrap());
    let error = policy.check_request(&callers.caller(FRONT, None), "GET", PATH).unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::PolicyDenied);
    assert!(error.detail().unwrap().contains("evaluation error"), "{error:?}");
    // With a transaction, no error: the forbid decides (the subject is not a `users:` one).
    let refused = policy.check_request(&callers.caller(FRONT, Some(("orders.read", &[]))), "GET", PATH).unwrap_err();
    assert!(refused.detail().unwrap().contains("forbidden by users-only"), "{refused:?}");
    // The current actor is in the context when someone acts.
    let current = r#"permit(principal, action, resource) when { context has txn_actor && context.txn_actor == "spiffe://prod.example/agents/booker" };"#;
    let policy = Policy::cedar(CedarPolicies::new("p", "orders", current, Some(SCHEMA)).unwrap());
    assert!(policy.check_request(&callers.caller(FRONT, Some(("s", &[BOOKER, PLANNER]))), "GET", PATH).is_ok());
    assert!(policy.check_request(&callers.caller(FRONT, Some(("s", &[PLANNER, BOOKER]))), "GET", PATH).is_err());
}

/// The README's example policy ("Agents") loads, validated against the documented context.
#[test]
fn the_readme_policy_loads_against_the_documented_schema() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let policy = readme.split("```cedar\n").nth(1).and_then(|rest| rest.split("\n```").next()).expect("a cedar block");
    let schema = SCHEMA.replace(r#"action "GET", "POST", "call""#, r#"action "GET", "POST""#);
    let cedar = CedarPolicies::new("tools", "tools", policy, Some(&schema)).unwrap();
    let callers = Callers::new();
    let acting = callers.caller(PLANNER, Some(("travel.book", &[PLANNER])));
    assert!(cedar.decide(&acting, "POST", "/book").allowed);
    let legacy = callers.caller(PLANNER, Some(("travel.book", &["spiffe://prod.example/agents/legacy"])));
    let refused = cedar.decide(&legacy, "POST", "/book");
    assert_eq!(
        (refused.allowed, refused.policies.as_slice()),
        (false, ["never-the-retired-agent".to_owned()].as_slice())
    );
    assert!(!cedar.decide(&callers.caller(PLANNER, Some(("travel.book", &[]))), "POST", "/book").allowed);
}

/// Decisions are cached by everything they depend on: a decision for one transaction, proof,
/// path or action never answers for another, and the cache stays bounded.
#[test]
fn cached_decisions_never_answer_for_another_request() {
    let callers = Callers::new();
    let text = r#"
        @id("planner-reads")
        permit(principal, action == Action::"GET", resource)
        when { context.txn_scope.contains("orders.read") && context.txn_actors.contains("spiffe://prod.example/agents/planner") && context.path == "/charge" };
        @id("never-by-signature")
        forbid(principal, action, resource) when { context.proof == "http-signature" };
    "#;
    let cedar = CedarPolicies::new("orders", "orders", text, Some(SCHEMA)).unwrap();
    let reading = callers.caller(PLANNER, Some(("orders.read", &[PLANNER])));
    let writing = callers.caller(PLANNER, Some(("orders.write", &[PLANNER])));
    let by_booker = callers.caller(PLANNER, Some(("orders.read", &[BOOKER])));
    let without = callers.caller(PLANNER, None);
    for _ in 0..2 {
        // Twice: the second round answers from the cache, and must answer the same.
        assert!(cedar.decide(&reading, "GET", "/charge").allowed);
        assert!(cedar.decide(&reading, "GET", "/charge?page=2").allowed, "the query is not part of the path");
        assert!(!cedar.decide(&writing, "GET", "/charge").allowed, "another transaction's scope");
        assert!(!cedar.decide(&by_booker, "GET", "/charge").allowed, "another chain");
        assert!(!cedar.decide(&without, "GET", "/charge").allowed, "no transaction");
        assert!(!cedar.decide(&reading, "POST", "/charge").allowed, "another action");
        assert!(!cedar.decide(&reading, "GET", "/refund").allowed, "another path");
    }
    // Many distinct requests: the cache empties itself and decides on.
    for i in 0..wimse_core::server::cedar::MAX_CACHED_DECISIONS + 10 {
        assert!(!cedar.decide(&reading, "GET", &format!("/other/{i}")).allowed);
    }
    assert!(cedar.decide(&reading, "GET", "/charge").allowed);
    assert!(!cedar.decide(&writing, "GET", "/charge").allowed);
}
