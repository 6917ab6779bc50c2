//! Bootstrap authentication and rate limits: which client a bootstrap credential names, what it may obtain, and how often a source or client may ask.

use super::*;

impl IdentityServer {
    pub(super) fn authenticate(&self, presented: ClientAuthentication<'_>) -> Result<&Client> {
        let bootstrap = match presented {
            ClientAuthentication::Bootstrap(bootstrap) => bootstrap,
            ClientAuthentication::Wic(id) => {
                // The WIC's issuance time is not known here: a workload a signal revoked (or
                // disabled) renews with its bootstrap credential, never with a WIC that may be
                // the revoked one.
                if let Some(revocations) = &self.revocations {
                    revocations.check_workload(id, None).map_err(|e| {
                        tracing::warn!(target: "wimse::audit", sub = %id, "WIC renewal refused: revoked by a risk signal");
                        Error::with_detail(ErrorKind::BootstrapTokenInvalid, e.detail().unwrap_or_default().to_owned())
                    })?;
                }
                let policy =
                    |c: &Client| wimse_core::server::policy::Policy::named(&c.config.name).allow(c.rule.clone());
                return self.clients.iter().find(|c| c.config.wic_renewal && policy(c).allows_id(id)).ok_or_else(
                    || {
                        Error::with_detail(
                            ErrorKind::BootstrapTokenInvalid,
                            format!("no client renews {id} with its WIC"),
                        )
                    },
                );
            }
        };
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

    /// The address a request from `peer` comes from: `peer`, or the client a trusted proxy
    /// names (see [`IssuerConfig::trusted_proxies`](crate::IssuerConfig::trusted_proxies)).
    pub fn client_address(&self, peer: std::net::IpAddr, headers: &axum::http::HeaderMap) -> std::net::IpAddr {
        client_address(peer, headers, &self.config.trusted_proxies)
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
        self.failures.would_allow(&source, 1, now).map_err(|retry| {
            if self.quiet.first_in_interval(&format!("lockout {source}"), now) {
                metrics::counter!("wimse_issuer_lockouts_total").increment(1);
                tracing::warn!(target: "wimse::audit", %source, retry_after = retry, "source refused after repeated failed authentications (logged once a minute per source)");
            }
            limited(retry, "too many failed authentications")
        })?;
        self.per_source.take(&source, 1, now).map_err(|retry| limited(retry, "too many requests"))
    }

    /// Counts a failed authentication from `source`.
    pub fn record_failed_authentication(&self, source: std::net::IpAddr) {
        let source = source_key(source);
        metrics::counter!("wimse_issuer_failed_authentications_total").increment(1);
        if self.quiet.first_in_interval(&format!("auth {source}"), self.clock.now()) {
            tracing::warn!(target: "wimse::audit", %source, "authentication failed (logged once a minute per source)");
        }
        // Over the budget, the next request is refused (and logged) in `admit_source`.
        let _ = self.failures.take(&source, 1, self.clock.now());
    }

    /// The client `bootstrap` authenticates, if it may obtain `sub`.
    pub(super) fn authorize(&self, presented: ClientAuthentication<'_>, sub: &str) -> Result<(&Client, WorkloadId)> {
        let client = self.authenticate(presented)?;
        self.limit(&format!("client {}", client.config.name))?;
        let id = WorkloadId::parse(sub).map_err(|e| Error::new(ErrorKind::InvalidSubject(e)))?;
        // A WIC renews its own identifier, never another the client could obtain.
        if let ClientAuthentication::Wic(renewing) = presented
            && *renewing != id
        {
            tracing::warn!(target: "wimse::audit", client = %client.config.name, sub = %id, wic = %renewing, "issuance refused");
            return Err(Error::with_detail(
                ErrorKind::IssuanceDenied,
                format!("a WIC of {renewing} renews {renewing} only"),
            ));
        }
        if !wimse_core::server::policy::Policy::named(&client.config.name).allow(client.rule.clone()).allows_id(&id) {
            tracing::warn!(target: "wimse::audit", client = %client.config.name, sub = %id, "issuance refused");
            return Err(Error::with_detail(
                ErrorKind::IssuanceDenied,
                format!("{} may not obtain {id}", client.config.name),
            ));
        }
        // On the request's span (exported over OTLP when configured).
        let span = tracing::Span::current();
        span.record("wimse.caller", client.config.name.as_str());
        span.record("wimse.workload", tracing::field::display(&id));
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

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is the IPv4 address.
fn canonical(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    }
}

/// One address of `X-Forwarded-For` or a `Forwarded` `for=` parameter: `a.b.c.d`,
/// `a.b.c.d:port`, `[v6]`, `[v6]:port`, `v6`, quoted or not.
fn forwarded_address(text: &str) -> Option<std::net::IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok()).map(canonical);
    }
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Some(canonical(ip));
    }
    text.parse::<std::net::SocketAddr>().ok().map(|a| canonical(a.ip()))
}

/// The client's address: `peer`, unless `peer` is one of `trusted`; then the rightmost
/// address the proxies appended that is not itself trusted. A field that cannot be read (or
/// names only proxies) leaves the proxy's own address, never one the client wrote further
/// left.
pub(crate) fn client_address(
    peer: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[std::net::IpAddr],
) -> std::net::IpAddr {
    let peer = canonical(peer);
    if !trusted.contains(&peer) {
        return peer;
    }
    let mut hops: Vec<&str> =
        headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).collect();
    if hops.is_empty() {
        hops = headers
            .get_all("forwarded")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (name, value) = pair.split_once('=')?;
                    name.trim().eq_ignore_ascii_case("for").then_some(value)
                })
            })
            .collect();
    }
    for hop in hops.iter().rev() {
        match forwarded_address(hop) {
            Some(ip) if trusted.contains(&ip) => continue,
            Some(ip) => return ip,
            None => return peer,
        }
    }
    peer
}

#[cfg(test)]
mod client_address_tests {
    use super::client_address;
    use axum::http::{HeaderMap, HeaderValue};

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_client_is_the_rightmost_address_a_trusted_proxy_appended() {
        let proxy = "10.0.0.1".parse().unwrap();
        let trusted = ["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        // The client wrote a spoofed address first; the proxies appended the real one.
        let xff = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.7, 10.0.0.2")]);
        assert_eq!(client_address(proxy, &xff, &trusted), ip("203.0.113.7"));
        // Only from a trusted proxy.
        assert_eq!(client_address(ip("198.51.100.9"), &xff, &trusted), ip("198.51.100.9"));
        // RFC 7239, with a port and an IPv6 address.
        let forwarded = headers(&[("forwarded", "for=\"[2001:db8::1]:4711\";proto=https, for=10.0.0.2")]);
        assert_eq!(client_address(proxy, &forwarded, &trusted), ip("2001:db8::1"));
        // Unreadable: the proxy itself, never an address further left.
        let garbage = headers(&[("x-forwarded-for", "1.2.3.4, not-an-address")]);
        assert_eq!(client_address(proxy, &garbage, &trusted), proxy);
        assert_eq!(client_address(proxy, &HeaderMap::new(), &trusted), proxy);
        // An IPv4 peer on a dual-stack socket.
        assert_eq!(client_address(ip("::ffff:10.0.0.1"), &xff, &trusted), ip("203.0.113.7"));
    }
}
