//! Where a Txn-Token may go (draft -10 §14: only within its trust domain), and saying so when
//! one is not sent: a dropped token is invisible to the caller (the next hop only answers that
//! the request has none), so the first drop per origin is a warning that names the fix.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use super::TxnToken;
use crate::error::{Error, ErrorKind, Result};

/// How many origins one forwarding configuration remembers having warned about; drops to
/// further origins are only counted (`wimse_txn_token_dropped_total`), so a client calling
/// ever new hosts cannot grow the memory or the log without bound.
pub const MAX_WARNED_ORIGINS: usize = 64;

/// Where a Txn-Token may go: the origins (`scheme://host[:port]`) of this trust domain's
/// services. A Txn-Token is valid only in its trust domain (draft -10 §14), so the client
/// adapters add it (from a [`TxnToken`] extension) to requests for these origins and remove
/// any `Txn-Token` field from requests to every other origin.
///
/// A token that is not sent is counted (`wimse_txn_token_dropped_total{reason}`) and, the first
/// time for each origin (up to [`MAX_WARNED_ORIGINS`]), logged as a warning naming the fix:
/// with no origins configured at all ([`TxnForwarding::unconfigured`], the adapters' default),
/// `trust_domain_origins` is missing; otherwise the origin is not one of them.
///
/// ```
/// use wimse_core::protocol::txn::{TxnForwarding, TxnToken};
///
/// let forwarding = TxnForwarding::new(["https://billing.prod.example"]);
/// let token = TxnToken("eyJ…".into());
/// let mut headers = http::HeaderMap::new();
/// forwarding.apply("https://billing.prod.example", &mut headers, Some(&token))?;
/// assert_eq!(headers["txn-token"], "eyJ…");
/// forwarding.apply("https://api.partner.example", &mut headers, Some(&token))?;
/// assert!(headers.get("txn-token").is_none());
/// # Ok::<(), wimse_core::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct TxnForwarding {
    /// `None`: no origins were configured.
    origins: Option<Arc<[String]>>,
    /// Shared by the clones (a client's middleware is cloned per request or per connection).
    warned: Arc<WarnedOrigins>,
}

impl PartialEq for TxnForwarding {
    fn eq(&self, other: &Self) -> bool {
        self.origins == other.origins
    }
}

impl Eq for TxnForwarding {}

impl TxnForwarding {
    /// Forwarding to these origins only: `scheme://host[:port]` (http or https; compared in
    /// lower case, without a default port or a trailing `/`). An entry that is not such an
    /// origin (a path, user info) never matches.
    pub fn new(origins: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let origins: Vec<String> = origins.into_iter().filter_map(|o| normalized_origin(&o.into())).collect();
        Self { origins: Some(origins.into()), warned: Arc::default() }
    }

    /// No origins configured (what the client adapters use until `trust_domain_origins` is
    /// set): a [`TxnToken`] extension is never sent, and says so in a warning (once per
    /// origin); a `Txn-Token` field the application set itself is left as it is.
    pub fn unconfigured() -> Self {
        Self::default()
    }

    /// Whether origins were configured (with [`TxnForwarding::new`]).
    pub fn is_configured(&self) -> bool {
        self.origins.is_some()
    }

    /// Whether `origin` is in the trust domain.
    pub fn allows(&self, origin: &str) -> bool {
        let Some(origins) = &self.origins else { return false };
        normalized_origin(origin).is_some_and(|origin| origins.contains(&origin))
    }

    /// Adds `token` to a request for `origin` inside the trust domain (replacing any field set
    /// by hand); removes the `Txn-Token` field from one outside it. Unconfigured, only notes
    /// that `token` is not sent.
    pub fn apply(&self, origin: &str, headers: &mut http::HeaderMap, token: Option<&TxnToken>) -> Result<()> {
        if !self.is_configured() {
            if token.is_some() {
                self.dropped(origin, DropReason::NoOrigins);
            }
            return Ok(());
        }
        if !self.allows(origin) {
            if headers.remove(crate::draft::TXN_TOKEN_HEADER).is_some() || token.is_some() {
                self.dropped(origin, DropReason::OutsideTrustDomain);
            }
            return Ok(());
        }
        if let Some(TxnToken(token)) = token {
            let value = http::HeaderValue::from_str(token)
                .map_err(|_| Error::with_detail(ErrorKind::InvalidHeaderValue, "the Txn-Token is not a field value"))?;
            headers.insert(crate::draft::TXN_TOKEN_HEADER, value);
        }
        Ok(())
    }

    fn dropped(&self, origin: &str, why: DropReason) {
        metrics::counter!("wimse_txn_token_dropped_total", "reason" => why.reason()).increment(1);
        let origin = normalized_origin(origin).unwrap_or_else(|| "(not an origin)".into());
        let last = match self.warned.first_time(&origin) {
            Seen::Before => return,
            Seen::First => "",
            Seen::FirstOfTheLast => " (no more origins will be logged; see wimse_txn_token_dropped_total)",
        };
        match why {
            DropReason::NoOrigins => tracing::warn!(
                origin,
                "wimse: Txn-Token not sent: this client has no trust_domain_origins, so it forwards a Txn-Token \
                 nowhere; name this trust domain's origins on the client, e.g. \
                 `.trust_domain_origins([\"{origin}\"])` on WimseSignMiddleware or WimseSignLayer{last}"
            ),
            DropReason::OutsideTrustDomain => tracing::warn!(
                origin,
                "wimse: Txn-Token not sent: {origin} is not one of this client's trust_domain_origins (a Txn-Token \
                 never leaves its trust domain); if it is a service of this trust domain, add it to \
                 trust_domain_origins{last}"
            ),
        }
    }
}

/// Why a Txn-Token was not sent.
#[derive(Debug, Clone, Copy)]
enum DropReason {
    /// The client has no `trust_domain_origins`.
    NoOrigins,
    /// The request's origin is not one of them.
    OutsideTrustDomain,
}

impl DropReason {
    fn reason(self) -> &'static str {
        match self {
            DropReason::NoOrigins => "no_trust_domain_origins",
            DropReason::OutsideTrustDomain => "outside_trust_domain",
        }
    }
}

/// The origins already warned about, as hashes: a fixed few bytes each, whatever their length.
#[derive(Debug, Default)]
struct WarnedOrigins {
    hasher: RandomState,
    seen: Mutex<HashSet<u64>>,
}

enum Seen {
    Before,
    First,
    /// The first time, and the last origin that will be remembered.
    FirstOfTheLast,
}

impl WarnedOrigins {
    fn first_time(&self, origin: &str) -> Seen {
        let hash = self.hasher.hash_one(origin);
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.len() >= MAX_WARNED_ORIGINS || !seen.insert(hash) {
            return Seen::Before;
        }
        if seen.len() == MAX_WARNED_ORIGINS { Seen::FirstOfTheLast } else { Seen::First }
    }
}

/// `scheme://host[:port]` in lower case without the scheme's default port, or `None` for
/// anything else (other schemes, user info, a path or query).
fn normalized_origin(origin: &str) -> Option<String> {
    let uri: http::Uri = origin.trim_end_matches('/').parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?;
    if authority.as_str().contains('@') || !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return None;
    }
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let host = authority.host().to_ascii_lowercase();
    Some(match authority.port_u16() {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_compared_normalized() {
        let forwarding =
            TxnForwarding::new(["https://Billing.Prod.Example:443/", "http://127.0.0.1:8080", "https://x/path"]);
        assert!(forwarding.allows("https://billing.prod.example"));
        assert!(forwarding.allows("HTTPS://billing.prod.example:443"));
        assert!(forwarding.allows("http://127.0.0.1:8080/"));
        assert!(!forwarding.allows("http://127.0.0.1:8081"));
        assert!(!forwarding.allows("https://user@billing.prod.example"), "user info");
        assert!(!forwarding.allows("https://billing.prod.example.evil"));
        assert!(!forwarding.allows("https://x"), "an entry with a path matches nothing");
        assert!(!forwarding.allows("ftp://billing.prod.example"));
        assert!(!TxnForwarding::unconfigured().allows("https://billing.prod.example"));
    }

    #[test]
    fn unconfigured_sends_no_token_and_leaves_a_field_set_by_hand() {
        let forwarding = TxnForwarding::unconfigured();
        let mut headers = http::HeaderMap::new();
        forwarding.apply("https://billing.prod.example", &mut headers, Some(&TxnToken("t".into()))).unwrap();
        assert!(headers.get("txn-token").is_none());
        headers.insert("txn-token", http::HeaderValue::from_static("by-hand"));
        forwarding.apply("https://billing.prod.example", &mut headers, None).unwrap();
        assert_eq!(headers["txn-token"], "by-hand");
    }

    #[test]
    fn warned_origins_are_bounded_and_shared_by_clones() {
        let warned = WarnedOrigins::default();
        assert!(matches!(warned.first_time("https://a"), Seen::First));
        assert!(matches!(warned.first_time("https://a"), Seen::Before));
        for i in 1..MAX_WARNED_ORIGINS - 1 {
            assert!(matches!(warned.first_time(&format!("https://h{i}")), Seen::First));
        }
        assert!(matches!(warned.first_time("https://last"), Seen::FirstOfTheLast));
        assert!(matches!(warned.first_time("https://one-too-many"), Seen::Before), "memory is full");
        assert!(matches!(warned.first_time("https://last"), Seen::Before));
        assert_eq!(warned.seen.lock().unwrap().len(), MAX_WARNED_ORIGINS);

        let forwarding = TxnForwarding::unconfigured();
        let clone = forwarding.clone();
        assert!(matches!(forwarding.warned.first_time("https://a"), Seen::First));
        assert!(matches!(clone.warned.first_time("https://a"), Seen::Before));
    }
}
