//! RFC 7523: platform tokens (Kubernetes, CI systems, clouds) presented as assertions, each new key proven with DPoP.

use super::*;

impl IdentityServer {
    /// Validates a platform token and finds the client it authenticates, the same way for the
    /// bearer bootstrap (`audience` None: the platform's configured audience) and for RFC 7523
    /// assertions (`audience` the token endpoint): a configured issuer (no discovery), its
    /// `typ` policy, its keys, one audience, bounded lifetime, then the client whose platform,
    /// subject and claim conditions all match. Errors are `ExchangeRefused` naming the check.
    pub(super) fn platform_token(
        &self,
        token: &str,
        audience: Option<&str>,
        now: u64,
    ) -> Result<(&Client, AcceptedPlatformToken)> {
        let refused = |d: String| Error::with_detail(ErrorKind::ExchangeRefused, d);
        let parsed = jws::parse(token, 16 * 1024).map_err(|_| refused("not a JWT".into()))?;
        let iss = parsed.claims.get("iss").and_then(Value::as_str).ok_or_else(|| refused("no iss".into()))?;
        let platform = self
            .platforms
            .iter()
            .find(|p| p.config.issuer == iss)
            .ok_or_else(|| refused("issuer not on the allowlist".into()))?;
        let typ = parsed.header_str("typ").map_err(|_| refused("typ".into()))?.unwrap_or("none");
        if !platform.config.token_types.iter().any(|t| t.eq_ignore_ascii_case(typ)) {
            return Err(refused(format!("typ {typ:?} not accepted for platform `{}`", platform.config.name)));
        }
        let audience = audience.unwrap_or(&platform.config.audience);
        let claims = validate_external(&parsed, &platform.keys, audience, platform.config.max_token_lifetime, now)
            .map_err(|d| refused(d.to_owned()))?;
        let sub = claims.get("sub").and_then(Value::as_str).ok_or_else(|| refused("no sub".into()))?;
        let claims_value = Value::Object(claims.clone());
        let conditions_hold = |c: &Client| {
            c.config.claims.iter().all(|(pointer, condition)| {
                let Some(actual) = claims_value.pointer(pointer).and_then(Value::as_str) else { return false };
                match condition {
                    Value::String(expected) => expected == actual,
                    Value::Array(allowed) => allowed.iter().any(|a| a.as_str() == Some(actual)),
                    _ => false,
                }
            })
        };
        let client = self
            .clients
            .iter()
            .find(|c| {
                c.config.platform.as_deref() == Some(&platform.config.name)
                    && c.config.subject.as_deref().is_none_or(|s| s == sub)
                    && conditions_hold(c)
            })
            .ok_or_else(|| {
                tracing::warn!(target: "wimse::audit", platform = %platform.config.name, sub, "platform token matches no client (subject or claim conditions)");
                Error::with_detail(ErrorKind::IssuanceDenied, "no client for this platform token (subject or claim conditions)")
            })?;
        let expires_at = claims.get("exp").and_then(Value::as_u64).unwrap_or(now);
        let token = AcceptedPlatformToken {
            issuer: iss.to_owned(),
            jti: claims.get("jti").and_then(Value::as_str).map(str::to_owned),
            expires_at,
            // Accepted only while `exp <= now + max_token_lifetime + 30` (validate_external).
            earliest_claim: expires_at.saturating_sub(platform.config.max_token_lifetime.saturating_add(30)),
            single_use: platform.config.single_use,
        };
        Ok((client, token))
    }

    /// RFC 7523 §2.1 (and §2.2 through `client_assertion`): a platform token as the grant, the
    /// WIT bound to the key of the request's DPoP proof (RFC 9449). `scope`, if given, names
    /// the identifier; else the client's one exact identifier. Each assertion `jti` and each
    /// proof `jti` is accepted once.
    pub async fn jwt_bearer_grant(
        &self,
        assertion: &str,
        dpop: Option<&str>,
        scope: Option<&str>,
    ) -> Result<IssuedWit> {
        let endpoint = self.config.token_endpoint.as_deref().ok_or_else(|| {
            Error::with_detail(ErrorKind::UnsupportedGrantType, "the jwt-bearer grant needs token_endpoint configured")
        })?;
        let now = self.clock.now();
        let dpop = dpop.ok_or_else(|| Error::with_detail(ErrorKind::InvalidDpopProof, "no DPoP proof"))?;
        let validation = wimse_core::protocol::dpop::DpopValidation::default();
        let proof = wimse_core::protocol::dpop::verify(dpop, "POST", endpoint, &validation, now)?;
        let (client, token) = self.platform_token(assertion, Some(endpoint), now)?;
        let refused = |d: &'static str| Error::with_detail(ErrorKind::ExchangeRefused, d);
        // Authorize and rate-limit first: a refusal must not spend a single-use assertion, and
        // the budget protects the replay store.
        self.limit(&format!("client {}", client.config.name))?;
        let sub = match scope {
            Some(scope) => scope.to_owned(),
            None => match client.config.allowed.as_slice() {
                [only] if client.config.allowed_prefixes.is_empty() => only.clone(),
                _ => return Err(Error::with_detail(ErrorKind::InvalidScope, "name the identifier in scope")),
            },
        };
        let id =
            WorkloadId::parse(&sub).map_err(|_| Error::with_detail(ErrorKind::InvalidScope, "not an identifier"))?;
        if !wimse_core::server::policy::Policy::named(&client.config.name).allow(client.rule.clone()).allows_id(&id) {
            tracing::warn!(target: "wimse::audit", client = %client.config.name, sub = %id, "issuance refused");
            return Err(Error::with_detail(
                ErrorKind::InvalidScope,
                format!("{} may not obtain {id}", client.config.name),
            ));
        }
        let single_use_jti = match (token.single_use, token.jti.as_deref()) {
            (true, None) => return Err(refused("the assertion has no jti")),
            (true, Some(jti)) => Some(jti),
            (false, _) => None,
        };
        // Signed before anything is spent, so that a signing failure (no active key) spends
        // nothing; discarded if a claim below fails.
        let lifetime = client.config.max_lifetime;
        let (wit, kid) = self.sign_wit(&id, &proof.jwk, lifetime, now)?;
        // The proof is claimed before the assertion: a replayed proof (or a replay store that
        // cannot answer) must not spend the single-use assertion, which the client keeps and
        // may present again with a fresh proof. A replayed assertion spends only its proof.
        let proof_expiry = proof.iat.saturating_add(validation.max_age + validation.leeway);
        // Times from the tokens themselves, never from now (see ReplayClaim::token).
        let claim = ReplayClaim::token("dpop", &proof.jti, proof_expiry, proof.iat.saturating_sub(validation.leeway));
        self.storage.claim_once(&claim, now).await.map_err(|e| match e.kind() {
            ErrorKind::ReplayedProof => Error::with_detail(ErrorKind::InvalidDpopProof, "DPoP proof jti already used"),
            _ => e,
        })?;
        if let Some(jti) = single_use_jti {
            let claim =
                ReplayClaim::token(&token.issuer, jti, token.expires_at.saturating_add(30), token.earliest_claim);
            self.storage.claim_once(&claim, now).await.map_err(|e| match e.kind() {
                ErrorKind::ReplayedProof => refused("assertion jti already used"),
                _ => e,
            })?;
        }
        self.record("jwt-bearer", &client.config.name, &id, lifetime, kid, now, Default::default()).await?;
        tracing::info!(target: "wimse::audit", client = %client.config.name, sub = %id, lifetime, "WIT issued for an RFC 7523 assertion");
        Ok(IssuedWit { wit, issued_at: now, expires_at: now + lifetime })
    }
}
