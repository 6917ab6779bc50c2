//! Delegation in Txn-Tokens: the RFC 8693 `act` claim (§4.1) naming the workloads that act
//! for the token's subject, and the `may_act` claim (§4.4) of a subject token naming who may.
//!
//! `act` is a JSON object whose `sub` is the current actor; a nested `act` inside it names the
//! actor before it, and so on. Only the outermost actor acts now: the nested ones are history
//! (who delegated to it) and carry no authority of their own. Here every actor is a workload
//! identifier (an agent of the trust domain, proven to the Transaction Token Service with its
//! WIT when it asked), and chains are kept short: [`MAX_ACTORS`].

use serde_json::{Map, Value};

use crate::id::WorkloadId;

/// The deepest `act` chain read (and issued): deeper ones are malformed. A Transaction Token
/// Service's configured maximum is at most this.
pub const MAX_ACTORS: usize = 8;

/// The `act` claim for `actors`, the current actor first; `None` for no actors.
pub(crate) fn act_claim(actors: &[WorkloadId]) -> Option<Value> {
    actors.iter().rev().fold(None, |inner, actor| {
        let mut object = Map::new();
        object.insert("sub".into(), Value::from(actor.as_str()));
        if let Some(inner) = inner {
            object.insert("act".into(), inner);
        }
        Some(Value::Object(object))
    })
}

/// The actors of an `act` claim, the current one first, as a verifier reads them: each level
/// an object whose `sub` is a workload identifier, at most [`MAX_ACTORS`] deep; otherwise the
/// reason it is not. For tools explaining a token they have not verified.
pub fn parse_actors(act: Option<&Value>) -> Result<Vec<WorkloadId>, &'static str> {
    actors_of(act)
}

/// The actors of an `act` claim, the current one first. Each level must be an object whose
/// `sub` is a workload identifier (other members, such as `iss`, are allowed and ignored), at
/// most [`MAX_ACTORS`] deep; otherwise the reason it is not.
pub(crate) fn actors_of(act: Option<&Value>) -> Result<Vec<WorkloadId>, &'static str> {
    let mut actors = Vec::new();
    let mut level = act;
    while let Some(value) = level {
        let Value::Object(object) = value else { return Err("act is not an object") };
        if actors.len() == MAX_ACTORS {
            return Err("act is nested deeper than 8 actors");
        }
        let sub = object.get("sub").and_then(Value::as_str).ok_or("an act level has no sub")?;
        actors.push(WorkloadId::parse(sub).map_err(|_| "an actor is not a workload identifier")?);
        level = object.get("act");
    }
    Ok(actors)
}

/// Whether a subject token's `may_act` claim (RFC 8693 §4.4) lets `actor` act for its subject:
/// `None` when the token has no `may_act` (the Transaction Token Service's configuration
/// decides alone), else whether its `sub` names `actor` exactly. An `iss` in it, when present,
/// must be `issuer` (the trust domain's issuer: the one vouching for actors). A `may_act`
/// that is not an object with a string `sub` is refused with its reason.
pub fn may_act_allows(may_act: Option<&Value>, actor: &WorkloadId, issuer: &str) -> Result<Option<bool>, &'static str> {
    let Some(may_act) = may_act else { return Ok(None) };
    let Value::Object(object) = may_act else { return Err("may_act is not an object") };
    let sub = object.get("sub").and_then(Value::as_str).ok_or("may_act has no sub")?;
    let issuer_ok = match object.get("iss") {
        None => true,
        Some(Value::String(iss)) => iss == issuer,
        Some(_) => return Err("may_act's iss is not a string"),
    };
    Ok(Some(issuer_ok && sub == actor.as_str()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{MAX_ACTORS, act_claim, actors_of, may_act_allows};
    use crate::id::WorkloadId;

    fn id(path: &str) -> WorkloadId {
        format!("spiffe://prod.example/{path}").parse().unwrap()
    }

    #[test]
    fn act_nests_the_earlier_actors_inside_the_current_one() {
        let chain = [id("agents/planner"), id("agents/booker")];
        let act = act_claim(&chain).unwrap();
        assert_eq!(
            act,
            json!({"sub": "spiffe://prod.example/agents/planner",
                   "act": {"sub": "spiffe://prod.example/agents/booker"}})
        );
        assert_eq!(actors_of(Some(&act)).unwrap(), chain, "read back in the same order");
        assert!(act_claim(&[]).is_none());
        assert!(actors_of(None).unwrap().is_empty());
    }

    #[test]
    fn malformed_and_deep_chains_are_refused() {
        let deep = act_claim(&(0..MAX_ACTORS).map(|i| id(&format!("a{i}"))).collect::<Vec<_>>()).unwrap();
        assert_eq!(actors_of(Some(&deep)).unwrap().len(), MAX_ACTORS, "the maximum is read");
        let deeper = json!({"sub": "spiffe://prod.example/top", "act": deep});
        assert_eq!(actors_of(Some(&deeper)).unwrap_err(), "act is nested deeper than 8 actors");
        assert_eq!(actors_of(Some(&json!("spiffe://prod.example/a"))).unwrap_err(), "act is not an object");
        assert_eq!(actors_of(Some(&json!({"iss": "x"}))).unwrap_err(), "an act level has no sub");
        assert_eq!(actors_of(Some(&json!({"sub": "user-1"}))).unwrap_err(), "an actor is not a workload identifier");
        assert_eq!(
            actors_of(Some(&json!({"sub": "spiffe://prod.example/a", "act": []}))).unwrap_err(),
            "act is not an object"
        );
        // Other members (an `iss`) are allowed.
        assert_eq!(actors_of(Some(&json!({"sub": "spiffe://prod.example/a", "iss": "x"}))).unwrap(), [id("a")]);
    }

    #[test]
    fn may_act_names_the_one_actor_allowed() {
        let agent = id("agents/booker");
        let issuer = "https://issuer.prod.example";
        assert_eq!(may_act_allows(None, &agent, issuer), Ok(None));
        let named = json!({"sub": agent.as_str()});
        assert_eq!(may_act_allows(Some(&named), &agent, issuer), Ok(Some(true)));
        assert_eq!(may_act_allows(Some(&named), &id("agents/other"), issuer), Ok(Some(false)));
        let with_iss = json!({"sub": agent.as_str(), "iss": issuer});
        assert_eq!(may_act_allows(Some(&with_iss), &agent, issuer), Ok(Some(true)));
        let other_iss = json!({"sub": agent.as_str(), "iss": "https://elsewhere.example"});
        assert_eq!(may_act_allows(Some(&other_iss), &agent, issuer), Ok(Some(false)));
        assert!(may_act_allows(Some(&json!("x")), &agent, issuer).is_err());
        assert!(may_act_allows(Some(&json!({"iss": issuer})), &agent, issuer).is_err());
        assert!(may_act_allows(Some(&json!({"sub": agent.as_str(), "iss": 7})), &agent, issuer).is_err());
    }
}
