//! The configuration checked as a whole before a server is built from it: every field, the
//! references between them (a client's platform, the token endpoint against the audiences),
//! and what checking parses (trust domain, keys, rules), which the server then keeps.

use super::*;

/// An [`IssuerConfig`] that passed every check, with what the checks parsed.
pub(super) struct Checked {
    pub(super) domain: TrustDomain,
    pub(super) alg: Algorithm,
    pub(super) platforms: Vec<Platform>,
    pub(super) clients: Vec<Client>,
    pub(super) exchanges: Vec<Exchange>,
    pub(super) tts: Option<crate::tts::CheckedTts>,
}

impl IssuerConfig {
    /// Checks the whole configuration without opening its storage: every field and the
    /// references between them, as [`IdentityServer::open`] does before it starts. The first
    /// problem is an [`ErrorKind::InvalidConfiguration`] naming its field (`clients[2].allowed`).
    pub fn validate(&self) -> Result<()> {
        self.check().map(|_| ())
    }

    pub(super) fn check(&self) -> Result<Checked> {
        let domain = TrustDomain::parse(&self.trust_domain).map_err(|e| config_error("trust_domain", e))?;
        let alg: Algorithm = self.algorithm.parse().map_err(|e: Error| config_error("algorithm", e))?;
        if self.refresh_hint == 0 || self.refresh_hint > 86_400 {
            return Err(config_error("refresh_hint", "must be between 1 and 86400 seconds"));
        }
        // A key is published two refresh hints before it signs: the period must be longer.
        if self.rotation_period <= self.refresh_hint.saturating_mul(2) {
            return Err(config_error("rotation_period", "must be longer than two refresh hints"));
        }
        let limits = &self.rate_limits;
        for (name, rate) in [
            ("per_client", limits.per_client),
            ("per_source", limits.per_source),
            ("failed_authentications", limits.failed_authentications),
        ] {
            if rate.burst == 0 || rate.per_minute == 0 {
                return Err(config_error(format!("rate_limits.{name}"), "burst and per_minute must be positive"));
            }
        }
        let mut platforms = Vec::new();
        for (i, p) in self.platforms.iter().enumerate() {
            let keys = configured_keys(&format!("platforms[{i}]"), p.jwks.as_ref(), p.jwks_file.as_deref())?;
            if p.issuer.is_empty() || p.audience.is_empty() {
                return Err(config_error(format!("platforms[{i}]"), "issuer and audience must be set"));
            }
            if p.max_token_lifetime == 0 || p.max_token_lifetime > 604_800 {
                return Err(config_error(
                    format!("platforms[{i}].max_token_lifetime"),
                    "must be between 1 and 604800 seconds",
                ));
            }
            if p.token_types.is_empty() {
                return Err(config_error(format!("platforms[{i}].token_types"), "accept at least one typ"));
            }
            platforms.push(Platform { config: p.clone(), keys });
        }
        let mut clients = Vec::new();
        for (i, c) in self.clients.iter().enumerate() {
            let field = |name: &str| format!("clients[{i}].{name}");
            for (pointer, condition) in &c.claims {
                let strings = |v: &Value| v.as_array().is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string));
                if !pointer.starts_with('/') || !(condition.is_string() || strings(condition)) {
                    return Err(config_error(
                        field(&format!("claims[{pointer:?}]")),
                        "a JSON pointer (/claim/member) to a string, or a non-empty list of strings",
                    ));
                }
            }
            match (&c.platform, &c.subject, &c.dev_secret) {
                (Some(platform), subject, None) => {
                    if !platforms.iter().any(|p| &p.config.name == platform) {
                        return Err(config_error(field("platform"), format!("no platform named `{platform}`")));
                    }
                    if subject.is_none() && c.claims.is_empty() {
                        return Err(config_error(field("subject"), "name the platform subject, or claims to match"));
                    }
                }
                (None, None, Some(secret)) => {
                    if !self.dev_mode {
                        return Err(config_error(
                            field("dev_secret"),
                            "static secrets are only accepted with dev_mode",
                        ));
                    }
                    if secret.len() < 16 {
                        return Err(config_error(field("dev_secret"), "shorter than 16 characters"));
                    }
                }
                _ => {
                    return Err(config_error(
                        format!("clients[{i}]"),
                        "set either platform (with subject or claims), or dev_secret",
                    ));
                }
            }
            let mut rules = Vec::new();
            for (j, id) in c.allowed.iter().enumerate() {
                let id = WorkloadId::parse(id).map_err(|e| config_error(field(&format!("allowed[{j}]")), e))?;
                if !id.is_in(&domain) {
                    return Err(config_error(field(&format!("allowed[{j}]")), format!("not in {domain}")));
                }
                rules.push(Rule::workload(id));
            }
            for (j, prefix) in c.allowed_prefixes.iter().enumerate() {
                let rule =
                    Rule::path_prefix(prefix).map_err(|e| config_error(field(&format!("allowed_prefixes[{j}]")), e))?;
                if !prefix.starts_with(&format!("{domain}/")) {
                    return Err(config_error(field(&format!("allowed_prefixes[{j}]")), format!("not in {domain}")));
                }
                rules.push(rule);
            }
            if rules.is_empty() {
                return Err(config_error(field("allowed"), "the client may obtain no identifier"));
            }
            if c.max_lifetime == 0 || c.max_lifetime > 86_400 {
                return Err(config_error(field("max_lifetime"), "must be between 1 and 86400 seconds"));
            }
            for (j, pattern) in c.allowed_dns_names.iter().enumerate() {
                if !valid_dns_pattern(pattern) {
                    return Err(config_error(
                        field(&format!("allowed_dns_names[{j}]")),
                        "not a DNS name or a *.suffix pattern",
                    ));
                }
            }
            for (j, ip) in c.allowed_ip_addresses.iter().enumerate() {
                if let Err(e) = wimse_core::protocol::wic::check_ip_address(*ip) {
                    return Err(config_error(field(&format!("allowed_ip_addresses[{j}]")), e));
                }
            }
            if c.max_wic_lifetime.is_some_and(|secs| secs == 0 || secs > 86_400) {
                return Err(config_error(field("max_wic_lifetime"), "must be between 1 and 86400 seconds"));
            }
            clients.push(Client { config: c.clone(), rule: Rule::any_of(rules) });
        }
        let mut exchanges = Vec::new();
        for (i, p) in self.exchange.iter().enumerate() {
            let keys = configured_keys(&format!("exchange[{i}]"), p.jwks.as_ref(), p.jwks_file.as_deref())?;
            if !p.subject_template.starts_with(&format!("{domain}/")) {
                return Err(config_error(format!("exchange[{i}].subject_template"), format!("not in {domain}")));
            }
            if p.max_lifetime == 0 || p.max_lifetime > 86_400 {
                return Err(config_error(format!("exchange[{i}].max_lifetime"), "must be between 1 and 86400 seconds"));
            }
            if p.max_token_lifetime == 0 || p.max_token_lifetime > 604_800 {
                return Err(config_error(
                    format!("exchange[{i}].max_token_lifetime"),
                    "must be between 1 and 604800 seconds",
                ));
            }
            match (p.kind, &p.subject_trust_domain) {
                (ExchangeKind::JwtSvid, None) => {
                    return Err(config_error(
                        format!("exchange[{i}].subject_trust_domain"),
                        "a jwt-svid profile names the trust domain whose SVIDs it exchanges",
                    ));
                }
                (_, Some(td)) => {
                    let td = TrustDomain::parse(td)
                        .map_err(|e| config_error(format!("exchange[{i}].subject_trust_domain"), e))?;
                    if p.kind != ExchangeKind::JwtSvid || td.scheme() != "spiffe" {
                        return Err(config_error(
                            format!("exchange[{i}].subject_trust_domain"),
                            "only for jwt-svid profiles, as spiffe://name",
                        ));
                    }
                }
                (_, None) => {}
            }
            exchanges.push(Exchange { profile: p.clone(), keys });
        }
        if let Some(endpoint) = &self.token_endpoint {
            let uri: axum::http::Uri = endpoint.parse().map_err(|e| config_error("token_endpoint", e))?;
            let loopback = uri.host().is_some_and(wimse_core::server::framing::is_loopback_host);
            let scheme_ok = uri.scheme_str() == Some("https") || (uri.scheme_str() == Some("http") && loopback);
            if !scheme_ok || uri.authority().is_none() || uri.query().is_some() {
                return Err(config_error(
                    "token_endpoint",
                    "an absolute https URI without query (http only on loopback)",
                ));
            }
            // The grant's audience must be its own: a token for the bearer bootstrap or an
            // exchange profile must not double as an RFC 7523 assertion, nor the reverse.
            let mut shared =
                self.platforms.iter().map(|p| &p.audience).chain(self.exchange.iter().map(|x| &x.audience));
            if shared.any(|audience| audience == endpoint) {
                return Err(config_error("token_endpoint", "also a platform's or exchange profile's audience"));
            }
        }
        for (i, p) in self.platforms.iter().enumerate() {
            if self.platforms[..i].iter().any(|q| q.issuer == p.issuer || q.name == p.name) {
                return Err(config_error(format!("platforms[{i}]"), "another platform has the same name or issuer"));
            }
        }
        if let Some(iss) = &self.issuer
            && domain.scheme() == "spiffe"
            && wimse_core::draft::oidc_discovery_compatible(iss)
        {
            // Allowed (creds §5.1.3 even suggests an https iss), but its WITs are WIT-SVIDs.
            tracing::warn!(trust_domain = %domain, issuer = %iss, "wimse issuer: `issuer` is an https URL without query or fragment, a value compatible with OpenID Connect Discovery, which the SPIFFE WIT-SVID profile (section 3.7) says a WIT-SVID's iss SHOULD NOT be (a relying party could take the WIT for an OIDC ID token without proof of possession); leave `issuer` unset or use another form, such as the trust domain's spiffe:// ID");
        }
        let tts = match &self.txn_tokens {
            Some(tts) => Some(crate::tts::CheckedTts::check(tts, &domain, self)?),
            None => None,
        };
        Ok(Checked { domain, alg, platforms, clients, exchanges, tts })
    }
}
