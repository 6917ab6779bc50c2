//! The identity server's Transaction Token Service endpoints: authenticating a requester and
//! issuing to it, with the [`Tts`] the configuration built.

use serde_json::Value;
use wimse_core::jose::jws;
use wimse_core::protocol::trust::TrustAnchors;
use wimse_core::protocol::txn::{
    NewTxnToken, SELF_SIGNED_TYPE, TXN_TOKEN_TYPE, TxnTokenIssuer, TxnTokenValidation, UNSIGNED_JSON_TYPE,
};
use wimse_core::server::caller::VerifiedCaller;
use wimse_core::server::verify::RequestView;
use wimse_core::{Error, ErrorKind, Result};

use super::IdentityServer;
use crate::ACCESS_TOKEN_TYPE;
use crate::config::ExchangeKind;
use crate::external::validate_external;
use crate::tts::{
    MAX_SCOPE_VALUES, MAX_SUBJECT_TOKEN_LEN, Requester, Subject, Tts, json_object, refused, self_signed, subject_type,
};
use wimse_core::protocol::oauth::JWT_TOKEN_TYPE;
use wimse_core::protocol::txn::{IssuedTxnToken, TxnActor, TxnSubject, TxnTokenRequest, may_act_allows};
use wimse_core::protocol::wit::token_hash;

impl IdentityServer {
    fn tts(&self) -> Result<&Tts> {
        self.tts.as_ref().ok_or_else(|| {
            Error::with_detail(ErrorKind::UnsupportedTokenType, "this identity server is no Transaction Token Service")
        })
    }

    /// Authenticates a workload asking the Transaction Token Service: its WIT (from this
    /// server) and a WPT for the token endpoint, claimed once across replicas.
    pub async fn authenticate_requester(&self, headers: &axum::http::HeaderMap) -> Result<VerifiedCaller> {
        let tts = self.tts()?;
        {
            let mut applied = tts.applied.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            // The state and its keys read together, so the anchors always match the state noted;
            // the bundle is built only when the state changed (a rotation), not per request.
            let changed = self.read_keys(|loaded| {
                let unchanged = applied.as_ref().is_some_and(|(epoch, sequence)| {
                    epoch == loaded.state.epoch() && *sequence == loaded.state.sequence()
                });
                (!unchanged).then(|| {
                    ((loaded.state.epoch().to_owned(), loaded.state.sequence()), self.spiffe_bundle_of(loaded))
                })
            });
            if let Some((state, bundle)) = changed {
                tts.anchors.set(self.domain.clone(), TrustAnchors::from_spiffe_bundle_json(&bundle.to_string())?);
                *applied = Some(state);
            }
        }
        let pending = tts.verifier.authenticate(&RequestView::new("/v1/token", headers).method("POST"))?;
        // Only a workload that may ask at all spends a replay claim.
        if !tts.requesters.iter().any(|r| r.who.allows_id(pending.id())) {
            tracing::warn!(target: "wimse::audit", requester = %pending.id(), "Txn-Token refused: not a requester");
            let detail = format!("{} may not request Txn-Tokens", pending.id());
            return Err(Error::with_detail(ErrorKind::IssuanceDenied, detail));
        }
        let requester = tts.verifier.confirm(pending).await?;
        // A requester whose WIT a signal revoked (or disabled) gets no Txn-Token.
        if let Some(revocations) = &self.revocations {
            revocations.check_workload(requester.id(), requester.wit().and_then(|wit| wit.claims().iat))?;
        }
        Ok(requester)
    }

    /// Issues a Txn-Token to `requester` (authenticated with
    /// [`authenticate_requester`](Self::authenticate_requester)) as the configuration allows.
    pub async fn issue_txn_token(
        &self,
        requester: &VerifiedCaller,
        request: &TxnTokenRequest,
    ) -> Result<IssuedTxnToken> {
        let tts = self.tts()?;
        if request.audience.as_deref() != Some(self.domain.as_str()) {
            return Err(Error::with_detail(
                ErrorKind::InvalidTarget,
                format!("this service issues for {}", self.domain),
            ));
        }
        let TxnSubject::Token { token: subject_token, token_type: subject_token_type } = &request.subject else {
            // A client signs a self-signed subject before it sends the request.
            return Err(Error::with_detail(ErrorKind::UnsupportedTokenType, "an unsigned self-signed subject"));
        };
        let who = requester.id();
        let denied = |detail: String| {
            tracing::warn!(target: "wimse::audit", requester = %who, refused = %detail, "Txn-Token refused");
            Error::with_detail(ErrorKind::IssuanceDenied, detail)
        };
        let entries: Vec<&Requester> = tts.requesters.iter().filter(|r| r.who.allows_id(who)).collect();
        if entries.is_empty() {
            return Err(denied(format!("{who} may not request Txn-Tokens")));
        }
        // Requests name types by URN (RFC 8693 §3); refresh tokens are never subjects (§13.3).
        let token_type = subject_type(subject_token_type)
            .filter(|_| subject_token_type.starts_with("urn:"))
            .ok_or_else(|| Error::with_detail(ErrorKind::UnsupportedTokenType, "subject_token_type"))?;
        let entries: Vec<&Requester> = entries.into_iter().filter(|r| r.types.contains(&token_type)).collect();
        if entries.is_empty() {
            return Err(denied(format!("{who} may not present subject tokens of type {token_type}")));
        }
        let scopes: Vec<&str> = request.scope.split(' ').filter(|s| !s.is_empty()).collect();
        if scopes.is_empty() || scopes.len() > MAX_SCOPE_VALUES || scopes.iter().any(|s| s.len() > 128) {
            return Err(Error::with_detail(ErrorKind::InvalidScope, "scope: 1 to 16 values"));
        }
        // Counted once the requester is known to be allowed, before the subject token's work;
        // a budget of its own (an edge asks once per external request).
        tts.per_requester.take(who, 1, self.clock.now()).map_err(|retry| {
            tracing::warn!(target: "wimse::audit", requester = %who, "Txn-Token requests rate limited");
            Error::with_detail(ErrorKind::RateLimited, format!("{who}: too many Txn-Token requests"))
                .with_retry_after(retry)
        })?;
        let now = self.clock.now();
        let (subject, issuer) = self.subject(tts, requester, token_type, subject_token, now)?;
        let entries: Vec<&&Requester> =
            entries.iter().filter(|r| issuer.is_none_or(|name| r.issuers.iter().any(|n| n == name))).collect();
        if entries.is_empty() {
            return Err(denied(format!(
                "{who} may not present tokens of subject issuer `{}`",
                issuer.unwrap_or_default()
            )));
        }
        if !entries.iter().any(|r| scopes.iter().all(|s| r.scopes.iter().any(|g| g == s))) {
            tracing::warn!(target: "wimse::audit", requester = %who, scope = %request.scope, "Txn-Token scope refused");
            return Err(Error::with_detail(ErrorKind::InvalidScope, format!("{who} may not request this scope")));
        }
        // Never wider than what the subject token carries (§13.6).
        if let Some(bound) = &subject.scope
            && let Some(wider) = scopes.iter().find(|s| !bound.split(' ').any(|b| b == **s))
        {
            return Err(Error::with_detail(
                ErrorKind::InvalidScope,
                format!("`{wider}` is not in the subject token's scope"),
            ));
        }
        let scope = scopes.join(" ");
        // A user (or workload) a risk signal disabled gets no transaction, new or replaced.
        self.refuse_disabled(&subject.sub)?;
        self.refuse_disabled(who.as_str())?;
        let actor = self.actor(tts, requester, request, &entries, &scopes, &subject)?;
        let token = match &subject.replaces {
            Some(_) if request.request_details.is_some() || request.request_context.is_some() => {
                return Err(refused("a replacement keeps the original's tctx and rctx"));
            }
            Some(original) => NewTxnToken::replacing(original, &scope, who.as_str())?,
            None => {
                let mut token = NewTxnToken::new(subject.sub.clone(), scope.clone()).requested_by(who.as_str());
                // Carried, so that whoever later adds the first actor is held to it.
                token.may_act = subject.may_act.clone();
                if let Some(tctx) = json_object(request.request_details.as_deref(), "request_details")? {
                    token = token.context(tctx);
                }
                // The TTS is authoritative for `rctx`: what vouched for the subject is asserted
                // here, over anything the requester sent, so a receiver can tell a user's access
                // token from a subject a workload named itself.
                let mut rctx = json_object(request.request_context.as_deref(), "request_context")?.unwrap_or_default();
                rctx.insert("subject_token_type".into(), Value::from(token_type));
                match issuer {
                    Some(name) => rctx.insert("subject_issuer".into(), Value::from(name)),
                    None => rctx.remove("subject_issuer"),
                };
                token = token.request_context(rctx);
                token.not_after = subject.expires_at;
                token
            }
        };
        let token = match actor {
            Some(actor) => token.acted_by(actor),
            None => token,
        };
        let actors: Vec<&str> = token.actors.iter().map(|a| a.as_str()).collect();
        let key = self.read_keys(|loaded| loaded.active_key(now).cloned())?;
        let kid = key.kid().unwrap_or_default().to_owned();
        let mut issuer = TxnTokenIssuer::new(key, &self.domain).lifetime(tts.lifetime);
        if let Some(iss) = &self.config.issuer {
            issuer = issuer.issuer(iss.clone());
        }
        let signed = issuer.issue_signed(&token, now).map_err(|e| match e.kind() {
            ErrorKind::ExpiredTxnToken => refused("the subject token expires now"),
            _ => e,
        })?;
        let expires_in = signed.expires_at.saturating_sub(now);
        let event = wimse_core::server::audit_log::AuditEvent {
            txn: Some(signed.txn.clone()),
            caller: Some(who.to_string()),
            subject: Some(token.sub.clone()),
            actors: actors.iter().map(|a| (*a).to_owned()).collect(),
            resource: Some(scope.to_owned()),
            ..Default::default()
        };
        self.record("txn-token", who.as_str(), who, expires_in, kid, now, event).await?;
        let span = tracing::Span::current();
        span.record("wimse.caller", who.as_str());
        span.record("wimse.txn", signed.txn.as_str());
        tracing::info!(target: "wimse::audit", requester = %who, txn = signed.txn, scope, subject_token_type = token_type,
            replacement = subject.replaces.is_some(), actors = ?actors, expires_in, "Txn-Token issued");
        Ok(IssuedTxnToken { token: signed.token, expires_in, txn: Some(signed.txn) })
    }

    /// The actor a request names (RFC 8693 `actor_token`), checked: it must be the WIT the
    /// requester proved (an agent acts only as itself), the requester's entries must let it act,
    /// the subject token's `may_act` (if any) must name it, and the chain (the replaced token's
    /// actors and this one) must stay within `max_actors`. `None` when no one acts.
    fn actor(
        &self,
        tts: &Tts,
        requester: &VerifiedCaller,
        request: &TxnTokenRequest,
        entries: &[&&Requester],
        scopes: &[&str],
        subject: &Subject,
    ) -> Result<Option<wimse_core::id::WorkloadId>> {
        let who = requester.id();
        let invalid = |detail: &'static str| Error::with_detail(ErrorKind::ActorTokenInvalid, detail);
        let token = match &request.actor {
            TxnActor::None => return Ok(None),
            TxnActor::Requester => return Err(invalid("the request names an actor but carries no actor_token")),
            TxnActor::Token { token, token_type } => {
                if token_type != JWT_TOKEN_TYPE {
                    return Err(invalid("actor_token_type must be urn:ietf:params:oauth:token-type:jwt (a WIT)"));
                }
                token
            }
        };
        let wit = requester.wit().ok_or_else(|| invalid("the requester did not prove a WIT"))?;
        if token.len() > MAX_SUBJECT_TOKEN_LEN || token_hash(token) != wit.hash() {
            return Err(invalid("actor_token is not the WIT the request was proven with"));
        }
        let denied = |detail: String| {
            tracing::warn!(target: "wimse::audit", requester = %who, refused = %detail, "Txn-Token delegation refused");
            Error::with_detail(ErrorKind::DelegationDenied, detail)
        };
        // The entry that lets it act must also grant the purpose.
        if !entries.iter().any(|r| r.actor && scopes.iter().all(|s| r.scopes.iter().any(|g| g == s))) {
            return Err(denied(format!(
                "{who} may not act for subjects for this scope (no requester entry with `actor: true` grants it)"
            )));
        }
        let chain = subject.replaces.as_ref().map_or(&[][..], |original| original.actors());
        if chain.first() == Some(who) {
            return Err(denied(format!("{who} already acts for this subject")));
        }
        // The subject's `may_act` names its first actor: from the subject token, or carried in
        // the Txn-Token being replaced (a workload that did not act could otherwise pass the
        // user's token on to an agent the user did not name).
        if chain.is_empty() {
            let issuer = self.config.issuer.as_deref().unwrap_or(self.domain.as_str());
            match may_act_allows(subject.may_act.as_ref(), who, issuer) {
                Err(reason) => return Err(refused(format!("subject_token: {reason}"))),
                Ok(Some(false)) => return Err(denied(format!("the subject's may_act does not name {who}"))),
                Ok(_) => {}
            }
        }
        let before = chain.len();
        if before + 1 > tts.max_actors {
            tracing::warn!(target: "wimse::audit", requester = %who, actors = before, "Txn-Token delegation too deep");
            return Err(Error::with_detail(
                ErrorKind::DelegationTooDeep,
                format!(
                    "the chain already names {before} actor(s); this Transaction Token Service allows {}",
                    tts.max_actors
                ),
            ));
        }
        Ok(Some(who.clone()))
    }

    /// Validates the subject token; returns the subject and the name of its issuer, if external.
    fn subject<'t>(
        &self,
        tts: &'t Tts,
        requester: &VerifiedCaller,
        token_type: &'static str,
        token: &str,
        now: u64,
    ) -> Result<(Subject, Option<&'t str>)> {
        if token.len() > MAX_SUBJECT_TOKEN_LEN {
            return Err(refused("subject_token is too large"));
        }
        match token_type {
            UNSIGNED_JSON_TYPE => {
                let Ok(Value::Object(object)) = serde_json::from_str::<Value>(token) else {
                    return Err(refused("subject_token is not a JSON object"));
                };
                let sub = object.get("sub").and_then(Value::as_str).filter(|s| !s.is_empty());
                let sub =
                    format!("{}{}", tts.named_subject_prefix, sub.ok_or_else(|| refused("subject_token has no sub"))?);
                Ok((Subject { sub, scope: None, expires_at: None, replaces: None, may_act: None }, None))
            }
            SELF_SIGNED_TYPE => {
                let wit = requester
                    .wit()
                    .ok_or_else(|| refused("self-signed subject tokens need a WIT-authenticated requester"))?;
                let sub = self_signed(token, requester.id(), wit.cnf_key(), &tts.identifier, now)?;
                let sub = format!("{}{sub}", tts.named_subject_prefix);
                Ok((Subject { sub, scope: None, expires_at: None, replaces: None, may_act: None }, None))
            }
            TXN_TOKEN_TYPE => {
                // No leeway: an expired Txn-Token is never replaced (§13.15). The keys are the
                // ones the requester was just authenticated with.
                let strict = TxnTokenValidation::new(self.domain.clone()).leeway(0);
                let original = tts
                    .anchors
                    .read(|keys| wimse_core::protocol::txn::validate(token, keys, &strict, now))
                    .map_err(|e| refused(format!("subject Txn-Token: {}", e.reason())))?;
                let sub = original.subject().to_owned();
                Ok((
                    Subject {
                        sub,
                        scope: Some(original.scope().to_owned()),
                        expires_at: Some(original.expires_at()),
                        may_act: original.may_act().cloned(),
                        replaces: Some(original),
                    },
                    None,
                ))
            }
            _ => {
                let parsed = jws::parse(token, MAX_SUBJECT_TOKEN_LEN)
                    .map_err(|e| refused(format!("subject_token: {}", e.reason())))?;
                let iss = parsed
                    .claims
                    .get("iss")
                    .and_then(Value::as_str)
                    .ok_or_else(|| refused("subject_token has no iss"))?;
                let (issuer, keys) = tts
                    .subject_issuers
                    .iter()
                    .find(|(s, _)| s.issuer == iss)
                    .ok_or_else(|| refused("no subject issuer is configured for this iss"))?;
                let access = issuer.kind == ExchangeKind::AccessToken;
                if access != (token_type == ACCESS_TOKEN_TYPE) {
                    return Err(refused(format!("subject issuer `{}` does not issue this token type", issuer.name)));
                }
                let typ = parsed.header_str("typ")?.map(str::to_ascii_lowercase);
                if access && !matches!(typ.as_deref(), Some("at+jwt" | "application/at+jwt")) {
                    return Err(refused("an access token's typ must be at+jwt"));
                }
                // Never a WIMSE token (explicit typing keeps them apart).
                if typ.as_deref().is_some_and(|t| ["wit+jwt", "wpt+jwt", "txntoken+jwt"].iter().any(|w| t.ends_with(w)))
                {
                    return Err(refused("a WIMSE token is not a subject token of this type"));
                }
                let claims = validate_external(&parsed, keys, &issuer.audience, issuer.max_token_lifetime, now)
                    .map_err(|d| refused(format!("subject_token: {d}")))?;
                // Delegation chains come from this TTS only: one claimed by another issuer
                // would let it name who acted in this trust domain.
                if claims.contains_key("act") {
                    return Err(Error::with_detail(
                        ErrorKind::DelegationDenied,
                        "the subject token names actors (act): delegation chains come only from this Transaction Token Service",
                    ));
                }
                let sub = claims.get("sub").and_then(Value::as_str).filter(|s| !s.is_empty());
                let sub = sub.ok_or_else(|| refused("subject_token has no sub"))?;
                let sub = format!("{}{sub}", issuer.subject_prefix.as_deref().unwrap_or_default());
                let scope = match (access, claims.get("scope")) {
                    (_, Some(Value::String(scope))) => Some(scope.clone()),
                    // An access token whose scope is unknown bounds nothing: refused (§13.14).
                    (true, _) => {
                        return Err(Error::with_detail(ErrorKind::InvalidScope, "the access token carries no scope"));
                    }
                    (false, None) => None,
                    (false, Some(_)) => return Err(refused("subject_token scope is not a string")),
                };
                let expires_at = claims.get("exp").and_then(Value::as_u64);
                let may_act = claims.get("may_act").cloned();
                // Carried into the Txn-Token: a malformed one would make it unverifiable.
                if may_act.as_ref().is_some_and(|m| m.get("sub").and_then(Value::as_str).is_none()) {
                    return Err(refused("subject_token: may_act is not an object with a sub"));
                }
                Ok((Subject { sub, scope, expires_at, replaces: None, may_act }, Some(issuer.name.as_str())))
            }
        }
    }
}
