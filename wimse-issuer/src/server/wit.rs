//! WIT issuance: to an authenticated workload (`/v1/wit`), and by RFC 8693 token exchange.

use super::*;

impl IdentityServer {
    /// Issues a WIT for `sub` bound to `public_jwk`, for the client `presented` authenticates
    /// (a bootstrap credential as `&str`, or a [`ClientAuthentication::Wic`]). The lifetime is
    /// capped at the client's maximum; a lifetime of 0 is refused ([`ErrorKind::InvalidLifetime`]).
    pub async fn issue_wit<'a>(
        &self,
        presented: impl Into<ClientAuthentication<'a>>,
        sub: &str,
        public_jwk: &Jwk,
        lifetime: Option<u64>,
    ) -> Result<IssuedWit> {
        let (client, id) = self.authorize(presented.into(), sub)?;
        refuse_zero_lifetime(lifetime)?;
        if public_jwk.has_private_members() {
            return Err(Error::with_detail(ErrorKind::InvalidKey, "send the public key only"));
        }
        let lifetime = lifetime.unwrap_or(client.config.max_lifetime).min(client.config.max_lifetime);
        let now = self.clock.now();
        let (wit, kid) = self.sign_wit(&id, public_jwk, lifetime, now)?;
        self.record("wit", &client.config.name, &id, lifetime, kid, now, Default::default()).await?;
        tracing::info!(target: "wimse::audit", client = %client.config.name, sub = %id, lifetime, "WIT issued");
        Ok(IssuedWit { wit, issued_at: now, expires_at: now + lifetime })
    }

    /// Token exchange (RFC 8693): validates `subject_token` (of `subject_token_type`) against the
    /// profile of its issuer, maps its subject onto an identifier of this trust domain, and
    /// issues a WIT for it bound to `public_jwk`.
    pub async fn exchange(&self, subject_token: &str, subject_token_type: &str, public_jwk: &Jwk) -> Result<IssuedWit> {
        let refused = |d: String| Error::with_detail(ErrorKind::ExchangeRefused, d);
        let accepted: &[ExchangeKind] = match subject_token_type {
            ACCESS_TOKEN_TYPE => &[ExchangeKind::AccessToken],
            JWT_TOKEN_TYPE => &[ExchangeKind::Jwt, ExchangeKind::JwtSvid],
            _ => return Err(Error::with_detail(ErrorKind::UnsupportedTokenType, "subject_token_type")),
        };
        let token = jws::parse(subject_token, 16 * 1024).map_err(|e| refused(format!("subject_token: {e}")))?;
        let iss = token.claims.get("iss").and_then(Value::as_str).ok_or_else(|| refused("no iss".into()))?;
        let exchange = self
            .exchanges
            .iter()
            .find(|x| x.profile.issuer == iss && accepted.contains(&x.profile.kind))
            .ok_or_else(|| refused("no exchange profile for this issuer and token type".into()))?;
        let typ = token.header_str("typ")?.map(str::to_ascii_lowercase);
        let typ_ok = match exchange.profile.kind {
            ExchangeKind::AccessToken => matches!(typ.as_deref(), Some("at+jwt" | "application/at+jwt")),
            ExchangeKind::JwtSvid => matches!(typ.as_deref(), None | Some("jwt" | "jose")),
            ExchangeKind::Jwt => true,
        };
        if !typ_ok {
            return Err(refused(format!("typ {typ:?} does not fit profile `{}`", exchange.profile.name)));
        }
        let claims = validate_external(
            &token,
            &exchange.keys,
            &exchange.profile.audience,
            exchange.profile.max_token_lifetime,
            self.clock.now(),
        )
        .map_err(|d| refused(d.to_owned()))?;
        // Counted only once the token verified: a caller who merely knows the issuer's name
        // cannot spend the profile's budget (failed attempts count against its address).
        self.limit(&format!("exchange {}", exchange.profile.name))?;
        let sub = claims.get("sub").and_then(Value::as_str).ok_or_else(|| refused("no sub".into()))?;
        let safe =
            |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        let mut mapped = exchange.profile.subject_template.clone();
        if exchange.profile.kind == ExchangeKind::JwtSvid {
            let svid = WorkloadId::parse(sub).map_err(|e| refused(format!("JWT-SVID sub: {e}")))?;
            if svid.scheme() != "spiffe" {
                return Err(refused("JWT-SVID sub is not a SPIFFE ID".into()));
            }
            // Checked at start: a jwt-svid profile names its trust domain.
            if exchange.profile.subject_trust_domain.as_deref() != Some(svid.trust_domain().as_str()) {
                return Err(refused(format!(
                    "profile `{}` exchanges SVIDs of {}, not of {}",
                    exchange.profile.name,
                    exchange.profile.subject_trust_domain.as_deref().unwrap_or("no trust domain"),
                    svid.trust_domain()
                )));
            }
            mapped = mapped
                .replace("{trust_domain}", svid.trust_domain_name())
                .replace("{path}", svid.path().trim_start_matches('/'));
        }
        if mapped.contains("{sub}") {
            if !safe(sub) {
                return Err(refused("sub is not a single safe path segment".into()));
            }
            mapped = mapped.replace("{sub}", sub);
        }
        let id = WorkloadId::parse(&mapped).map_err(|e| refused(format!("mapped identifier: {e}")))?;
        if !id.is_in(&self.domain) {
            return Err(refused(format!("{id} is not in {}", self.domain)));
        }
        if public_jwk.has_private_members() {
            return Err(Error::with_detail(ErrorKind::InvalidKey, "send the public key only"));
        }
        let lifetime = exchange.profile.max_lifetime;
        let now = self.clock.now();
        let (wit, kid) = self.sign_wit(&id, public_jwk, lifetime, now)?;
        self.record("exchange", &exchange.profile.name, &id, lifetime, kid, now, Default::default()).await?;
        tracing::info!(target: "wimse::audit", profile = %exchange.profile.name, subject = sub, issued = %id, "token exchanged for a WIT");
        Ok(IssuedWit { wit, issued_at: now, expires_at: now + lifetime })
    }
}

/// A credential asked for with a lifetime of 0 seconds would be dead on arrival: refused.
pub(super) fn refuse_zero_lifetime(lifetime: Option<u64>) -> Result<()> {
    match lifetime {
        Some(0) => Err(Error::with_detail(ErrorKind::InvalidLifetime, "lifetime: at least 1 second, or leave it out")),
        _ => Ok(()),
    }
}
