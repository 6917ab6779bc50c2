//! Workload Identifiers and trust domains (draft-ietf-wimse-identifier-03).
//!
//! Both types can only be built by strict parsing, and both compare on their complete string:
//! identical paths in different trust domains (or the same trust domain under another scheme)
//! are different workloads. Nothing is ever percent-decoded, case-folded or dot-segment-resolved:
//! a non-canonical spelling is refused, so two identifiers are the same exactly when their bytes are.
//!
//! Rules applied to every scheme, as identifier-03 §4 asks: an absolute RFC 3986 URI (checked
//! with `fluent-uri`) with a non-empty authority (the trust domain), and no query, fragment,
//! userinfo or port; at most 2048 bytes. For `spiffe` the SPIFFE-ID rules apply on top: path
//! segments of `[A-Za-z0-9._-]`. Other schemes (`wimse`, …) accept every path character
//! identifier-03 does (RFC 3986 `pchar`: unreserved, sub-delims, `:` and `@`).
//!
//! Restrictions kept for every scheme, each because identifiers are compared as exact strings
//! and one identifier must not have two spellings (a deny rule written for one spelling would
//! miss the other):
//! - the scheme and the trust domain are lower case (RFC 3986 compares them case-insensitively);
//! - the trust domain is a DNS-style name `[a-z0-9._-]` of at most 255 bytes (identifier-03: it
//!   SHOULD be a domain name the organisation owns); IP literals are refused unless
//!   [`IdentifierPolicy::allow_ip_trust_domains`] (identifier-03: legacy compatibility only);
//! - no percent-encoding (`%41` and `A` would name one workload twice; identifier-03 leaves
//!   percent-encoding and non-ASCII open, its issue #10);
//! - a path of non-empty segments without `.`/`..` (dot segments and empty segments give the same
//!   resource several spellings), so a workload identifier has a path and no trailing `/`.
//!
//! ```
//! use wimse_core::id::{WorkloadId, TrustDomain};
//!
//! let id: WorkloadId = "spiffe://prod.example/ns/payments".parse()?;
//! assert_eq!(id.trust_domain(), "spiffe://prod.example".parse::<TrustDomain>()?);
//! assert!("spiffe://prod.example/ns/%70ayments".parse::<WorkloadId>().is_err());
//! assert!("spiffe://PROD.example/ns/payments".parse::<WorkloadId>().is_err());
//! # Ok::<(), wimse_core::id::IdentifierError>(())
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use fluent_uri::Uri;
use fluent_uri::component::Host;

/// Longest identifier accepted (identifier-03: implementations handle 2048 bytes, identifiers SHOULD NOT exceed it).
pub const MAX_IDENTIFIER_LEN: usize = 2048;
/// Longest trust domain accepted (a DNS name; SPIFFE-ID's limit).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a valid identifier or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentifierError {
    /// The string is empty.
    #[error("empty identifier")]
    Empty,
    /// Longer than [`MAX_IDENTIFIER_LEN`].
    #[error("identifier longer than {MAX_IDENTIFIER_LEN} bytes")]
    TooLong,
    /// Not an RFC 3986 URI.
    #[error("not a URI")]
    NotAUri,
    /// The scheme has upper-case letters (non-canonical).
    #[error("scheme must be lower case")]
    NonCanonicalScheme,
    /// No `//authority`.
    #[error("no authority (trust domain)")]
    MissingAuthority,
    /// The authority is empty.
    #[error("empty trust domain")]
    EmptyTrustDomain,
    /// Userinfo is present.
    #[error("userinfo is not allowed")]
    Userinfo,
    /// A port is present.
    #[error("a port is not allowed")]
    Port,
    /// A query is present.
    #[error("a query is not allowed")]
    Query,
    /// A fragment is present.
    #[error("a fragment is not allowed")]
    Fragment,
    /// The trust domain is an IP address.
    #[error("IP-address trust domains are refused")]
    IpTrustDomain,
    /// The trust domain has characters outside `[a-z0-9._-]`, upper case, or empty labels.
    #[error("trust domain must be a lower-case name of [a-z0-9._-]")]
    InvalidTrustDomain,
    /// The trust domain is longer than [`MAX_TRUST_DOMAIN_LEN`].
    #[error("trust domain longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    /// Percent-encoding anywhere (never decoded; refused as non-canonical).
    #[error("percent-encoding is not allowed")]
    PercentEncoded,
    /// A workload identifier needs a path naming the workload.
    #[error("no workload path")]
    MissingPath,
    /// A path segment is empty (`//` or a trailing `/`).
    #[error("empty path segment")]
    EmptySegment,
    /// A path segment is `.` or `..`.
    #[error("dot segment in path")]
    DotSegment,
    /// A path segment has a character outside the allowed set.
    #[error("invalid character in path")]
    InvalidPathChar,
    /// A trust domain was given with a path.
    #[error("a trust domain has no path")]
    UnexpectedPath,
}

/// Knobs for identifier parsing. The defaults are the strict rules in the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentifierPolicy {
    /// Accept IPv4/IPv6 literals as trust domains. identifier-03 allows them only for legacy
    /// compatibility. Defaults to `false`.
    pub allow_ip_trust_domains: bool,
}

/// A validated Workload Identifier, e.g. `spiffe://prod.example/payments`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadId {
    uri: Arc<str>,
    /// Byte offset where the path starts (end of `scheme://authority`).
    path_start: usize,
}

/// A trust domain as a Workload Identifier Origin: scheme plus authority, e.g. `spiffe://prod.example`.
///
/// The scheme is part of it: `wimse://example.org` and `spiffe://example.org` are different trust domains.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain {
    origin: Arc<str>,
}

struct Parts<'a> {
    scheme: &'a str,
    path: &'a str,
    path_start: usize,
}

fn parse_parts<'a>(s: &'a str, policy: &IdentifierPolicy) -> Result<Parts<'a>, IdentifierError> {
    if s.is_empty() {
        return Err(IdentifierError::Empty);
    }
    if s.len() > MAX_IDENTIFIER_LEN {
        return Err(IdentifierError::TooLong);
    }
    if s.contains('%') {
        return Err(IdentifierError::PercentEncoded);
    }
    let uri = Uri::parse(s).map_err(|_| IdentifierError::NotAUri)?;
    let scheme = uri.scheme().as_str();
    if scheme.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(IdentifierError::NonCanonicalScheme);
    }
    let authority = uri.authority().ok_or(IdentifierError::MissingAuthority)?;
    if authority.has_userinfo() {
        return Err(IdentifierError::Userinfo);
    }
    if authority.has_port() {
        return Err(IdentifierError::Port);
    }
    if uri.query().is_some() {
        return Err(IdentifierError::Query);
    }
    if uri.fragment().is_some() {
        return Err(IdentifierError::Fragment);
    }
    let host = authority.host();
    match authority.host_parsed() {
        Host::RegName(_) => check_trust_domain_name(host)?,
        _ if policy.allow_ip_trust_domains => {}
        _ => return Err(IdentifierError::IpTrustDomain),
    }
    let path = uri.path().as_str();
    let path_start = s.len() - path.len();
    Ok(Parts { scheme, path, path_start })
}

fn check_trust_domain_name(host: &str) -> Result<(), IdentifierError> {
    if host.is_empty() {
        return Err(IdentifierError::EmptyTrustDomain);
    }
    if host.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdentifierError::TrustDomainTooLong);
    }
    let valid_chars =
        host.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
    if !valid_chars || host.split('.').any(str::is_empty) {
        return Err(IdentifierError::InvalidTrustDomain);
    }
    // A dotted all-numeric name is an IPv4 address in everything but the RFC 3986 grammar
    // (e.g. `999.1.1.1`); refuse it with the IP literals.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(IdentifierError::IpTrustDomain);
    }
    Ok(())
}

fn check_path(scheme: &str, path: &str) -> Result<(), IdentifierError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(IdentifierError::MissingPath);
    };
    if rest.is_empty() {
        return Err(IdentifierError::EmptySegment);
    }
    let spiffe = scheme == "spiffe";
    for segment in rest.split('/') {
        match segment {
            "" => return Err(IdentifierError::EmptySegment),
            "." | ".." => return Err(IdentifierError::DotSegment),
            _ => {}
        }
        // SPIFFE-ID: `[A-Za-z0-9._-]`. Other schemes: every RFC 3986 `pchar` identifier-03
        // allows (unreserved, sub-delims, `:`, `@`) except percent-encoding (see the module docs).
        let ok = segment.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'.' | b'_' | b'-')
                || (!spiffe
                    && matches!(
                        b,
                        b'~' | b'!'
                            | b'$'
                            | b'&'
                            | b'\''
                            | b'('
                            | b')'
                            | b'*'
                            | b'+'
                            | b','
                            | b';'
                            | b'='
                            | b':'
                            | b'@'
                    ))
        });
        if !ok {
            return Err(IdentifierError::InvalidPathChar);
        }
    }
    Ok(())
}

impl WorkloadId {
    /// Parses with the default (strict) [`IdentifierPolicy`].
    pub fn parse(s: &str) -> Result<Self, IdentifierError> {
        Self::parse_with(s, &IdentifierPolicy::default())
    }

    /// Parses with an explicit policy.
    pub fn parse_with(s: &str, policy: &IdentifierPolicy) -> Result<Self, IdentifierError> {
        let parts = parse_parts(s, policy)?;
        check_path(parts.scheme, parts.path)?;
        Ok(Self { uri: Arc::from(s), path_start: parts.path_start })
    }

    /// The complete identifier.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The URI scheme, e.g. `spiffe`.
    pub fn scheme(&self) -> &str {
        self.uri.split_once(':').map(|(s, _)| s).unwrap_or_default()
    }

    /// The trust domain name (the URI authority), e.g. `prod.example`.
    pub fn trust_domain_name(&self) -> &str {
        let origin = &self.uri[..self.path_start];
        origin.split_once("://").map(|(_, host)| host).unwrap_or_default()
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    /// The Workload Identifier Origin: scheme and trust domain.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain { origin: Arc::from(&self.uri[..self.path_start]) }
    }

    /// Whether this identifier belongs to `domain` (same scheme and same authority).
    pub fn is_in(&self, domain: &TrustDomain) -> bool {
        &self.uri[..self.path_start] == domain.as_str()
    }
}

impl TrustDomain {
    /// Parses `scheme://name` with the default policy. A bare name is refused: the scheme is part
    /// of the trust domain.
    pub fn parse(s: &str) -> Result<Self, IdentifierError> {
        Self::parse_with(s, &IdentifierPolicy::default())
    }

    /// Parses `scheme://name` with an explicit policy.
    pub fn parse_with(s: &str, policy: &IdentifierPolicy) -> Result<Self, IdentifierError> {
        let parts = parse_parts(s, policy)?;
        if !parts.path.is_empty() {
            return Err(IdentifierError::UnexpectedPath);
        }
        Ok(Self { origin: Arc::from(s) })
    }

    /// `scheme://name`.
    pub fn as_str(&self) -> &str {
        &self.origin
    }

    /// The URI scheme.
    pub fn scheme(&self) -> &str {
        self.origin.split_once(':').map(|(s, _)| s).unwrap_or_default()
    }

    /// The authority, e.g. `prod.example`.
    pub fn name(&self) -> &str {
        self.origin.split_once("://").map(|(_, n)| n).unwrap_or_default()
    }
}

macro_rules! string_like {
    ($ty:ident, $field:ident) => {
        impl FromStr for $ty {
            type Err = IdentifierError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.$field)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), &*self.$field)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.$field
            }
        }
        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                &*self.$field == other
            }
        }
        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                &*self.$field == *other
            }
        }
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.$field)
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_like!(WorkloadId, uri);
string_like!(TrustDomain, origin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_exposed() {
        let id = WorkloadId::parse("wimse://example.com/specific-workload").unwrap();
        assert_eq!(id.scheme(), "wimse");
        assert_eq!(id.trust_domain_name(), "example.com");
        assert_eq!(id.path(), "/specific-workload");
        assert_eq!(id.trust_domain().as_str(), "wimse://example.com");
        assert!(id.is_in(&TrustDomain::parse("wimse://example.com").unwrap()));
        assert!(!id.is_in(&TrustDomain::parse("spiffe://example.com").unwrap()));
        let td = TrustDomain::parse("spiffe://prod.example").unwrap();
        assert_eq!((td.scheme(), td.name()), ("spiffe", "prod.example"));
    }

    #[test]
    fn ip_trust_domains_only_by_policy() {
        assert_eq!(WorkloadId::parse("wimse://10.0.0.1/x"), Err(IdentifierError::IpTrustDomain));
        assert_eq!(WorkloadId::parse("wimse://[::1]/x"), Err(IdentifierError::IpTrustDomain));
        assert_eq!(WorkloadId::parse("wimse://999.1.1.1/x"), Err(IdentifierError::IpTrustDomain));
        let lax = IdentifierPolicy { allow_ip_trust_domains: true };
        assert!(WorkloadId::parse_with("wimse://10.0.0.1/x", &lax).is_ok());
    }

    #[test]
    fn trust_domain_forms() {
        assert!(TrustDomain::parse("example.org").is_err());
        assert_eq!(TrustDomain::parse("spiffe://example.org/x"), Err(IdentifierError::UnexpectedPath));
        assert_eq!(WorkloadId::parse("wimse://a..b/x"), Err(IdentifierError::InvalidTrustDomain));
        assert_eq!(WorkloadId::parse("wimse://a./x"), Err(IdentifierError::InvalidTrustDomain));
    }

    #[test]
    fn serde_round_trip_validates() {
        let id: WorkloadId = serde_json::from_str("\"spiffe://a.b/c\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"spiffe://a.b/c\"");
        assert!(serde_json::from_str::<WorkloadId>("\"spiffe://a.b/c?x\"").is_err());
    }
}
