//! Bootstrap authentication and rate limits: which client a bootstrap credential names, what it may obtain, and how often a source or client may ask.

use super::*;

impl IdentityServer {
    pub(super) fn authenticate(&self, bootstrap: &str) -> Result<&Client> {
        if self.config.dev_mode
            && let Some(client) = self
                .clients
                .iter()
                .find(|c| c.config.dev_secret.as_deref().is_some_and(|secret| constant_time_eq(secret, bootstrap)))
        {
            return Ok(client);
        }
        let denied = |e: Error| match e.kind() {
            ErrorKind::ExchangeRefused => {
                Error::with_detail(ErrorKind::BootstrapTokenInvalid, e.detail().unwrap_or("").to_owned())
            }
            _ => e,
        };
        let (client, _) = self.platform_token(bootstrap, None, self.clock.now()).map_err(denied)?;
        Ok(client)
    }

    /// Takes one request from `key`'s issuance budget.
    pub(crate) fn limit(&self, key: &str) -> Result<()> {
        self.per_client.take(&key.to_owned(), 1, self.clock.now()).map_err(|retry| {
            tracing::warn!(target: "wimse::audit", who = key, "issuance rate limited");
            Error::with_detail(ErrorKind::RateLimited, format!("{key}: too many requests")).with_retry_after(retry)
        })
    }

    /// Admits one request from `source` (the HTTP adapter calls this with the peer address):
    /// refused while the address has spent its failed-authentication budget, or is over its
    /// request budget.
    pub fn admit_source(&self, source: std::net::IpAddr) -> Result<()> {
        let source = source_key(source);
        let now = self.clock.now();
        let limited = |retry: u64, what: &str| {
            Error::with_detail(ErrorKind::RateLimited, format!("{source}: {what}")).with_retry_after(retry)
        };
        self.failures
            .would_allow(&source, 1, now)
            .map_err(|retry| limited(retry, "too many failed authentications"))?;
        self.per_source.take(&source, 1, now).map_err(|retry| limited(retry, "too many requests"))
    }

    /// Counts a failed authentication from `source`.
    pub fn record_failed_authentication(&self, source: std::net::IpAddr) {
        let source = source_key(source);
        metrics::counter!("wimse_issuer_failed_authentications_total").increment(1);
        if self.failures.take(&source, 1, self.clock.now()).is_err() {
            metrics::counter!("wimse_issuer_lockouts_total").increment(1);
            tracing::warn!(target: "wimse::audit", %source, "source refused after repeated failed authentications");
        }
    }

    /// The client `bootstrap` authenticates, if it may obtain `sub`.
    pub(super) fn authorize(&self, bootstrap: &str, sub: &str) -> Result<(&Client, WorkloadId)> {
        let client = self.authenticate(bootstrap)?;
        self.limit(&format!("client {}", client.config.name))?;
        let id = WorkloadId::parse(sub).map_err(|e| Error::new(ErrorKind::InvalidSubject(e)))?;
        if !wimse_core::server::policy::Policy::named(&client.config.name).allow(client.rule.clone()).allows_id(&id) {
            tracing::warn!(target: "wimse::audit", client = %client.config.name, sub = %id, "issuance refused");
            return Err(Error::with_detail(
                ErrorKind::IssuanceDenied,
                format!("{} may not obtain {id}", client.config.name),
            ));
        }
        Ok((client, id))
    }
}

/// The key a source address is limited under: IPv4 addresses as they are (IPv4-mapped IPv6
/// ones too), IPv6 addresses by their /64, which one host can rotate through at will.
fn source_key(source: std::net::IpAddr) -> std::net::IpAddr {
    match source {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

/// Compares two secrets in time that depends only on their lengths, not on where they differ.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn ipv6_sources_are_limited_by_their_64() {
        let key = |s: &str| super::source_key(s.parse().unwrap()).to_string();
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff::9"));
        assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::");
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
    }
}
