//! The services behind the gateway: each route's origin, path prefix, pipeline (a verifier
//! whose audience is that origin, and its policy) and upstream; chosen per request by host
//! and the longest matching path prefix.

use std::sync::Arc;

use wimse_core::client::sign::Signer;
use wimse_core::config::VerifierSettings;
use wimse_core::protocol::trust::TrustHandle;
use wimse_core::replay::{CallerQuota, InMemoryReplayStore};
use wimse_core::server::pipeline::{Pipeline, is_canonical_path};
use wimse_core::server::signals::Revocations;
use wimse_core::{Error, ErrorKind};

use crate::config::{GatewayConfig, RouteSettings};
use crate::error::GatewayError;

/// One service behind the gateway, ready to check requests.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    origin: String,
    scheme: String,
    authority: String,
    prefix: String,
    pipeline: Pipeline,
    upstream: Option<http::Uri>,
}

impl Route {
    /// The origin proofs must name.
    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    /// The checks requests of this route pass.
    pub(crate) fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Where the reverse proxy sends verified requests.
    pub(crate) fn upstream(&self) -> Option<&http::Uri> {
        self.upstream.as_ref()
    }

    /// Whether a request for `authority` (`host[:port]`) and canonical `path` belongs here.
    fn matches(&self, authority: &str, path: &str) -> bool {
        normalize_authority(&self.scheme, authority).as_deref() == Some(self.authority.as_str())
            && under_prefix(path, &self.prefix)
    }
}

/// `host[:port]` lower-cased, without the default port of `scheme`; `None` if it is not an
/// authority (userinfo, a path, an empty host).
pub(crate) fn normalize_authority(scheme: &str, authority: &str) -> Option<String> {
    let parsed: http::uri::Authority = authority.parse().ok()?;
    if parsed.as_str().contains('@') || parsed.host().is_empty() {
        return None;
    }
    let host = parsed.host().to_ascii_lowercase();
    let default = match scheme {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    Some(match parsed.port_u16() {
        Some(port) if port != default => format!("{host}:{port}"),
        _ => host,
    })
}

/// `path` (no query) is `prefix` or below it, on a segment boundary.
fn under_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The routes of one configuration, longest prefix first.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Builds every route's pipeline on `trust`, sharing `claims` (kept across reloads, so a
    /// reload never forgets a claimed proof) and `revocations` (the configuration's signals).
    pub(crate) fn build(
        config: &GatewayConfig,
        trust: &TrustHandle,
        claims: &Claims,
        own: Option<&Signer>,
        revocations: Option<&Revocations>,
    ) -> Result<Self, GatewayError> {
        if !config.verifier.origins.is_empty() || !config.verifier.audiences.is_empty() {
            return Err(GatewayError::Config(
                "verifier.origins and verifier.audiences must be empty: each route names its origin".into(),
            ));
        }
        // Opened once: every route's verifier writes into the one log.
        let recording = Recording { audit: config.audit.as_ref().map(|audit| audit.open()).transpose()?, revocations };
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, route) in config.routes.iter().enumerate() {
            routes.push(build_route(config, route, trust, claims, own, &recording).map_err(|e| match e {
                GatewayError::Config(problem) => GatewayError::Config(format!("routes[{i}]: {problem}")),
                GatewayError::Setup(error) => GatewayError::Config(format!("routes[{i}]: {error}")),
                other => other,
            })?);
        }
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        Ok(Self { routes })
    }

    /// The route of a request for `authority` and `path` (with or without its query), sent
    /// with `scheme` when the proxy says which. A path an application behind the gateway might
    /// route elsewhere than the prefix it seems to be under is refused: not canonical (`%`,
    /// `//`, `.`, `..`), or with a `;` (matrix parameters: Java servlet containers route
    /// `/admin;x/users` as `/admin/users`), a `\` (read as `/` by some) or a fragment.
    pub(crate) fn find(&self, authority: &str, path: &str, scheme: Option<&str>) -> Result<(usize, &Route), Error> {
        if path.contains('#') {
            return Err(Error::with_detail(ErrorKind::NonCanonicalPath, "a request target has no fragment"));
        }
        let path = path.split('?').next().unwrap_or("");
        if !path.starts_with('/') || !is_canonical_path(path) || path.contains([';', '\\']) {
            return Err(ErrorKind::NonCanonicalPath.into());
        }
        self.routes
            .iter()
            .enumerate()
            .find(|(_, route)| {
                scheme.is_none_or(|s| s.eq_ignore_ascii_case(&route.scheme)) && route.matches(authority, path)
            })
            .ok_or_else(|| Error::with_detail(ErrorKind::NoRoute, "no gateway route for this host and path"))
    }

    /// The routes, in the order [`find`](Self::find)'s index counts them.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// How many routes there are.
    pub(crate) fn len(&self) -> usize {
        self.routes.len()
    }
}

/// What every route's verifier claims proofs in, kept across reloads so a reload forgets no
/// claim: one replay store, and one per-caller quota on it (per-route quotas would let a caller
/// allowed on several routes fill the store alone).
#[derive(Debug, Clone)]
pub(crate) struct Claims {
    pub(crate) store: Arc<InMemoryReplayStore>,
    pub(crate) quota: Arc<CallerQuota>,
}

/// What every route's verifier records into and is refused by: the audit log and the
/// revocations, the same for all.
struct Recording<'a> {
    audit: Option<wimse_core::server::audit_log::AuditLog>,
    revocations: Option<&'a Revocations>,
}

fn build_route(
    config: &GatewayConfig,
    route: &RouteSettings,
    trust: &TrustHandle,
    claims: &Claims,
    own: Option<&Signer>,
    recording: &Recording<'_>,
) -> Result<Route, GatewayError> {
    let origin = route.origin.trim_end_matches('/').to_owned();
    let (scheme, authority) = origin
        .split_once("://")
        .ok_or_else(|| GatewayError::Config(format!("origin {origin:?} is not scheme://host")))?;
    let authority = normalize_authority(scheme, authority)
        .ok_or_else(|| GatewayError::Config(format!("origin {origin:?} is not http(s)://host[:port]")))?;
    let prefix = route.path_prefix.clone().unwrap_or_else(|| "/".into());
    if !prefix.starts_with('/') || !is_canonical_path(&prefix) {
        return Err(GatewayError::Config(format!("path_prefix {prefix:?} is not a canonical absolute path")));
    }
    let verifier_settings = VerifierSettings {
        origins: vec![origin.clone()],
        proofs: route.proofs.unwrap_or(config.verifier.proofs),
        ..config.verifier.clone()
    };
    let mut verifier = verifier_settings
        .build_on(trust.clone())?
        .replay_store(claims.store.clone())
        .with_caller_quota(claims.quota.clone());
    if let Some(audit) = &recording.audit {
        verifier = verifier.audit_log(audit.clone());
    }
    if let Some(revocations) = recording.revocations {
        verifier = verifier.revocations(revocations.clone());
    }
    let mut pipeline = Pipeline::new(verifier);
    if let Some(policy) = route.policy.as_ref().or(config.policy.as_ref()) {
        pipeline = pipeline.policy(policy.build()?);
    }
    if route.sign_responses {
        let signer =
            own.ok_or_else(|| GatewayError::Config("sign_responses needs the gateway's credentials".into()))?;
        pipeline = pipeline.sign_responses(signer.clone());
    }
    let upstream = match &route.upstream {
        Some(upstream) => Some(parse_upstream(upstream)?),
        None => None,
    };
    let scheme = scheme.to_owned();
    Ok(Route { origin, scheme, authority, prefix, pipeline, upstream })
}

/// An upstream: `http://host:port` (https upstreams are not supported yet), nothing after it.
pub(crate) fn parse_upstream(upstream: &str) -> Result<http::Uri, GatewayError> {
    let uri: http::Uri = upstream.parse().map_err(|e| GatewayError::Config(format!("upstream {upstream:?}: {e}")))?;
    let plain = uri.scheme_str() == Some("http")
        && uri.authority().is_some()
        && uri.path_and_query().is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty());
    if !plain {
        return Err(GatewayError::Config(format!("upstream {upstream:?} is not http://host:port")));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_compare_without_their_scheme_default_port() {
        assert_eq!(normalize_authority("https", "Payments.Example:443").as_deref(), Some("payments.example"));
        assert_eq!(normalize_authority("https", "payments.example:80").as_deref(), Some("payments.example:80"));
        assert_eq!(normalize_authority("http", "payments.example:80").as_deref(), Some("payments.example"));
        assert_eq!(normalize_authority("http", "127.0.0.1:8080").as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(normalize_authority("https", "user@payments.example"), None);
        assert_eq!(normalize_authority("https", ""), None);
        assert_eq!(normalize_authority("ftp", "payments.example"), None);
    }

    #[test]
    fn prefixes_respect_segment_boundaries() {
        assert!(under_prefix("/api", "/api"));
        assert!(under_prefix("/api/", "/api"));
        assert!(under_prefix("/api/x", "/api/"));
        assert!(!under_prefix("/apix", "/api"));
        assert!(under_prefix("/anything", "/"));
        assert!(under_prefix("/", "/"));
    }

    #[test]
    fn upstreams_are_plain_http_origins() {
        assert!(parse_upstream("http://127.0.0.1:8080").is_ok());
        assert!(parse_upstream("http://127.0.0.1:8080/").is_ok());
        assert!(parse_upstream("http://127.0.0.1:8080/app").is_err());
        assert!(parse_upstream("https://127.0.0.1:8443").is_err());
        assert!(parse_upstream("127.0.0.1:8080").is_err());
    }
}
